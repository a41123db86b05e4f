//! dist_selftest: checks a multi-process group end to end on CPU (no GPU needed).
//!
//! Run one process per rank with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT (or under srun). Each
//! rank meets the others (rank 0 hands out a random 128-byte blob, standing in for the NCCL
//! unique id), prints `rank R/W blob <hex>` and `ready`, then runs `--iterations` all-reduces
//! and checks every result. Exit 0 on success; on any failure it prints the error (which names
//! the rank at fault) and exits 1. Used by tests/multiprocess.rs and on clusters before a run.
//!
//! Usage: dist_selftest [--iterations N] [--interval-ms MS] [--timeout-secs S]

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::time::Duration;

use kormo_dist::launch::LaunchEnv;
use kormo_dist::tcp::rendezvous;
use kormo_dist::Collectives;

struct Options {
    iterations: u64,
    interval: Duration,
    timeout: Duration,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        iterations: 10,
        interval: Duration::from_millis(0),
        timeout: Duration::from_secs(60),
    };
    let mut i = 0;
    while i < args.len() {
        let value = args
            .get(i + 1)
            .ok_or_else(|| format!("{} needs a value", args[i]))?;
        let number: u64 = value
            .parse()
            .map_err(|_| format!("{} = `{value}` is not a non-negative integer", args[i]))?;
        match args[i].as_str() {
            "--iterations" => options.iterations = number,
            "--interval-ms" => options.interval = Duration::from_millis(number),
            "--timeout-secs" => options.timeout = Duration::from_secs(number),
            other => return Err(format!("unknown option `{other}`")),
        }
        i += 2;
    }
    Ok(options)
}

/// 128 unpredictable bytes without a random-number dependency (std's per-process hash keys).
fn random_blob() -> Vec<u8> {
    (0..16u64)
        .flat_map(|i| {
            let mut h = RandomState::new().build_hasher();
            h.write_u64(i);
            h.finish().to_le_bytes()
        })
        .collect()
}

fn run(options: &Options) -> Result<(), String> {
    let env = LaunchEnv::from_env()
        .map_err(|e| e.to_string())?
        .ok_or("no RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS in the environment")?;
    let comm = rendezvous(
        &env.rendezvous_config(options.timeout),
        || Ok(random_blob()),
    )
    .map_err(|e| format!("rank {}: {e}", env.rank))?;
    let hex: String = comm
        .shared_blob()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut out = std::io::stdout().lock();
    writeln!(out, "rank {}/{} blob {hex}", env.rank, env.world_size)
        .and_then(|_| writeln!(out, "ready"))
        .and_then(|_| out.flush())
        .map_err(|e| e.to_string())?;
    drop(out);
    let world = env.world_size as f32;
    for i in 0..options.iterations {
        let mut values = [env.rank as f32 + 1.0, i as f32];
        comm.all_reduce(&mut values)
            .map_err(|e| format!("rank {}: {e}", env.rank))?;
        let want = [world * (world + 1.0) / 2.0, i as f32 * world];
        if values != want {
            return Err(format!(
                "rank {}: all_reduce #{i} gave {values:?}, expected {want:?}",
                env.rank
            ));
        }
        std::thread::sleep(options.interval);
    }
    comm.barrier()
        .map_err(|e| format!("rank {}: {e}", env.rank))?;
    println!(
        "rank {} ok: {} all-reduces checked",
        env.rank, options.iterations
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = parse(&args).and_then(|options| run(&options));
    if let Err(message) = result {
        eprintln!("dist_selftest: {message}");
        std::process::exit(1);
    }
}
