//! NCCL communicator on one GPU (world size 1): every collective runs through NCCL and must
//! return exactly its input (a sum over one rank). This checks the raw NCCL calls, pointer and
//! length handling and the bf16 data type on real hardware. Without libnccl, the CUDA driver
//! or a device it prints "skipped"; under cargo it then passes, under Bazel (TEST_SRCDIR set)
//! it exits with 77, which the "gpu" test wrapper reports as skipped. Multi-GPU runs are
//! checked with srun (see docs/distributed.md). Also: `connect_groups` for `hybrid` 1 x 1 (two
//! communicators, ids through a host group) and an `NcclWatch` aborting a communicator once.

use kormo_dist::nccl::{connect_groups, nccl_available, unique_id_blob, NcclComm};
use kormo_dist::Collectives;

fn values(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013 + 0.001)
        .collect()
}

fn skip(why: &str) {
    eprintln!("skipped: {why}");
    if std::env::var_os("TEST_SRCDIR").is_some() {
        std::process::exit(77);
    }
}

#[test]
fn world_size_one_collectives_are_identities() {
    if !nccl_available() {
        return skip("no libnccl or CUDA driver library");
    }
    match cudarc::driver::CudaContext::device_count() {
        Ok(n) if n > 0 => {}
        other => return skip(&format!("no CUDA device ({other:?})")),
    }
    let stream = cudarc::driver::CudaContext::new(0)
        .unwrap()
        .default_stream();
    let comm = NcclComm::init(stream.clone(), 0, 1, &unique_id_blob().unwrap()).unwrap();
    let n = 1027;
    let host = values(n);
    let input = stream.clone_htod(&host).unwrap();
    let download = |buf: &cudarc::driver::CudaSlice<f32>| stream.clone_dtoh(buf).unwrap();

    let mut out = stream.alloc_zeros::<f32>(n).unwrap();
    comm.all_gather(&input, &mut out).unwrap();
    assert_eq!(download(&out), host, "all_gather");
    let mut out = stream.alloc_zeros::<f32>(n).unwrap();
    comm.reduce_scatter(&input, &mut out).unwrap();
    assert_eq!(download(&out), host, "reduce_scatter");
    let mut buf = stream.clone_htod(&host).unwrap();
    comm.all_reduce(&mut buf).unwrap();
    assert_eq!(download(&buf), host, "all_reduce");
    comm.broadcast(&mut buf, 0).unwrap();
    assert_eq!(download(&buf), host, "broadcast");

    let bits: Vec<u16> = host
        .iter()
        .map(|&x| kormo_model::bf16::from_f32(x))
        .collect();
    let input = stream.clone_htod(&bits).unwrap();
    let mut out = stream.alloc_zeros::<u16>(n).unwrap();
    comm.reduce_scatter_bf16(&input, &mut out).unwrap();
    assert_eq!(
        stream.clone_dtoh(&out).unwrap(),
        bits,
        "bf16 reduce_scatter"
    );

    let mut scalars = [1.5, -2.25];
    comm.all_reduce_scalars(&mut scalars).unwrap();
    assert_eq!(scalars, [1.5, -2.25]);
    comm.barrier().unwrap();
    // A wrongly sized output is refused before NCCL sees it.
    let shard = stream.clone_htod(&host).unwrap();
    let mut too_big = stream.alloc_zeros::<f32>(2 * n).unwrap();
    assert!(comm.all_gather(&shard, &mut too_big).is_err());
}

#[test]
fn hybrid_groups_connect_and_a_watch_aborts_once() {
    if !nccl_available() {
        return skip("no libnccl or CUDA driver library");
    }
    match cudarc::driver::CudaContext::device_count() {
        Ok(n) if n > 0 => {}
        other => return skip(&format!("no CUDA device ({other:?})")),
    }
    let context = cudarc::driver::CudaContext::new(0).unwrap();
    // World size 1 over an in-process host group: `hybrid` 1 x 1 makes a shard-group and a
    // replica-group communicator, each with an id of its own, on streams of their own.
    let world = kormo_dist::LocalComm::group(1, std::time::Duration::from_secs(60))
        .pop()
        .unwrap();
    let comms = connect_groups(&world, Some(1), || {
        context
            .new_stream()
            .map_err(|e| kormo_dist::CommError::Device(format!("{e:?}")))
    })
    .unwrap();
    let names: Vec<_> = comms.iter().map(|(place, _)| place.name).collect();
    assert_eq!(names, ["shard-group", "replica-group"]);
    let (_, replica) = &comms[1];
    let stream = replica.stream().clone();
    let mut buf = stream.clone_htod(&values(33)).unwrap();
    replica.all_reduce(&mut buf).unwrap();
    replica.barrier().unwrap();
    let watch = replica.watch("replica-group");
    assert_eq!(watch.async_error(), None, "a healthy communicator");
    assert!(
        watch.describe().contains("ncclAllReduce"),
        "{}",
        watch.describe()
    );
    // The watchdog's abort: once; later collectives fail instead of touching a freed
    // communicator, and dropping the NcclComm releases nothing twice.
    assert!(watch.abort(std::time::Duration::from_secs(5)));
    assert!(!watch.abort(std::time::Duration::from_secs(5)));
    let e = replica.all_reduce(&mut buf).unwrap_err().to_string();
    assert!(e.contains("aborted"), "{e}");
    drop(comms);
    assert_eq!(watch.async_error(), None);
    // The world layout: one communicator.
    let comms = connect_groups(&world, None, || {
        context
            .new_stream()
            .map_err(|e| kormo_dist::CommError::Device(format!("{e:?}")))
    })
    .unwrap();
    assert_eq!(comms.len(), 1);
    assert_eq!(comms[0].0.name, "world");
}
