//! NCCL communicator on one GPU (world size 1): every collective runs through NCCL and must
//! return exactly its input (a sum over one rank). This checks the raw NCCL calls, pointer and
//! length handling and the bf16 data type on real hardware. Without libnccl, the CUDA driver
//! or a device it prints "skipped"; under cargo it then passes, under Bazel (TEST_SRCDIR set)
//! it exits with 77, which the "gpu" test wrapper reports as skipped. Multi-GPU runs are
//! checked with srun (see docs/distributed.md).

use kormo_dist::nccl::{nccl_available, unique_id_blob, NcclComm};
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
