//! dist_selftest: checks a multi-process group end to end on CPU (no GPU needed).
//!
//! Run one process per rank with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT (or under srun). Each
//! rank meets the others (rank 0 hands out a random 128-byte blob, standing in for the NCCL
//! unique id), prints `rank R/W blob <hex>` and `ready`, then runs `--iterations` all-reduces
//! and checks every result. Exit 0 on success; on any failure it prints the error (which names
//! the rank at fault) and exits 1. Used by tests/multiprocess.rs and on clusters before a run.
//!
//! Options: `dist_selftest --help`.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::time::Duration;

use kormo_dist::rank_env::LaunchEnv;
use kormo_dist::tcp::rendezvous;
use kormo_dist::Collectives;

/// Checks a multi-process group end to end on CPU: every rank (RANK/WORLD_SIZE/MASTER_ADDR/
/// MASTER_PORT, or srun's SLURM_* variables) meets the others, then runs all-reduces and checks
/// every result. Exit 0 on success; on failure the error names the rank at fault (exit 1).
#[derive(clap::Parser)]
#[command(name = "dist_selftest", disable_version_flag = true, after_help = "\
Example (two ranks on one machine):
  RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 dist_selftest --iterations 100 &
  RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 dist_selftest --iterations 100")]
struct Options {
    /// All-reduces run and checked
    #[arg(long, value_name = "N", default_value_t = 10)]
    iterations: u64,
    /// Pause between all-reduces
    #[arg(long = "interval-ms", value_name = "MS", default_value = "0", value_parser = millis)]
    interval: Duration,
    /// How long a rank waits for the others
    #[arg(long = "timeout-secs", value_name = "S", default_value = "60", value_parser = seconds)]
    timeout: Duration,
}

fn millis(text: &str) -> Result<Duration, std::num::ParseIntError> {
    text.parse().map(Duration::from_millis)
}

fn seconds(text: &str) -> Result<Duration, std::num::ParseIntError> {
    text.parse().map(Duration::from_secs)
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
    let options = <Options as clap::Parser>::parse();
    if let Err(message) = run(&options) {
        eprintln!("dist_selftest: {message}");
        std::process::exit(1);
    }
}
