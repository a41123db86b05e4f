//! `train` as one rank of a multi-process job: which launcher's variables to read
//! (`--launcher`), the rendezvous, and the host process group the ranks agree through.
//!
//! * `--launcher=auto` (default): torchrun-style `RANK`/`WORLD_SIZE` (with `LOCAL_RANK`,
//!   `MASTER_ADDR`, `MASTER_PORT`) make this process one rank; SLURM's variables alone do not
//!   (a shell inside `salloc` or a batch script has them too), a line says they were ignored.
//! * `--launcher=env`: the same variables, required.
//! * `--launcher=slurm`: `SLURM_PROCID`/`SLURM_NTASKS`/`SLURM_LOCALID` (one task per GPU under
//!   `srun`), rendezvous on the first host of the job's node list unless `MASTER_ADDR` is set
//!   (kormo_dist::rank_env).
//! * `--launcher=none`: one process whatever the environment says.
//!
//! A partial or inconsistent environment is an error (exit 2), never a silent single-process
//! run: `WORLD_SIZE` without `RANK`, `RANK >= WORLD_SIZE`, non-numeric values, or a world size
//! above 1 without `MASTER_ADDR` (env launcher: there is no way to guess rank 0's host). The
//! detected rank, world size and rendezvous address are printed by every rank.

use kormo_dist::rank_env::{LaunchEnv, DEFAULT_PORT};
use kormo_dist::{HostTransport, LocalComm};
use std::sync::Arc;
use std::time::Duration;

/// Where `train` reads its rank from (`--launcher`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launcher {
    Auto,
    Env,
    Slurm,
    None,
}

impl Launcher {
    pub fn parse(name: &str) -> Result<Launcher, String> {
        match name {
            "auto" => Ok(Launcher::Auto),
            "env" => Ok(Launcher::Env),
            "slurm" => Ok(Launcher::Slurm),
            "none" => Ok(Launcher::None),
            other => Err(format!(
                "--launcher: `{other}` is not one of auto, env, slurm or none"
            )),
        }
    }
}

/// This process's place in a multi-process job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub env: LaunchEnv,
    /// Bound on the rendezvous and on every host collective (a missing rank is named after it).
    pub timeout: Duration,
}

impl Launch {
    /// One line for the log: who this process is and where it meets the others.
    pub fn describe(&self) -> String {
        let e = &self.env;
        let vars = if e.source == "slurm" {
            "SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID"
        } else {
            "RANK/WORLD_SIZE/LOCAL_RANK"
        };
        format!(
            "launch: rank {} of {} (local rank {}, from {vars}), rendezvous at {}:{}, timeout {}s",
            e.rank,
            e.world_size,
            e.local_rank,
            e.master_addr,
            e.master_port,
            self.timeout.as_secs()
        )
    }

    /// Meets the other ranks (TCP through MASTER_ADDR:MASTER_PORT; alone at world size 1,
    /// where nothing is opened) and returns the host group: the ranks' agreement on the step
    /// to stop at, and the CPU engine's collectives.
    pub fn connect(&self) -> Result<Arc<dyn HostTransport>, String> {
        let e = &self.env;
        if e.world_size == 1 {
            return Ok(Arc::new(
                LocalComm::group(1, self.timeout).pop().expect("one rank"),
            ));
        }
        let comm =
            kormo_dist::tcp::rendezvous(&e.rendezvous_config(self.timeout), || Ok(Vec::new()))
                .map_err(|err| format!("rank {} of {}: {err}", e.rank, e.world_size))?;
        Ok(Arc::new(comm))
    }
}

const SLURM_VARS: [&str; 3] = ["SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"];
const ENV_VARS: [&str; 3] = ["RANK", "WORLD_SIZE", "LOCAL_RANK"];

/// Reads the launch from the process environment; see the module docs. `Ok((None, note))`:
/// one process, with a line to print when variables were present but ignored.
pub fn detect(
    launcher: Launcher,
    timeout: Duration,
) -> Result<(Option<Launch>, Option<String>), String> {
    detect_from(launcher, timeout, |name| std::env::var(name).ok())
}

/// [`detect`] over any variable lookup (testable).
pub fn detect_from(
    launcher: Launcher,
    timeout: Duration,
    var: impl Fn(&str) -> Option<String>,
) -> Result<(Option<Launch>, Option<String>), String> {
    let launch = |env| Launch { env, timeout };
    match launcher {
        Launcher::None => Ok((None, None)),
        Launcher::Slurm => {
            let only_slurm = |name: &str| {
                if ENV_VARS.contains(&name) {
                    None
                } else {
                    var(name)
                }
            };
            match LaunchEnv::from_vars(only_slurm).map_err(|e| format!("--launcher=slurm: {e}"))? {
                Some(env) => Ok((Some(launch(env)), None)),
                None => Err(
                    "--launcher=slurm: SLURM_PROCID and SLURM_NTASKS are not set (start train \
                     with srun, one task per GPU)"
                        .into(),
                ),
            }
        }
        Launcher::Auto | Launcher::Env => {
            let flag = if launcher == Launcher::Env {
                "--launcher=env"
            } else {
                "launch environment"
            };
            let without_slurm = |name: &str| {
                if SLURM_VARS.contains(&name) {
                    None
                } else {
                    var(name)
                }
            };
            if var("RANK").is_none() {
                if let Some(world) = var("WORLD_SIZE") {
                    return Err(format!(
                        "{flag}: WORLD_SIZE = `{world}` is set but RANK is not (set RANK, \
                         WORLD_SIZE, MASTER_ADDR and MASTER_PORT for every process, or pass \
                         --launcher=none)"
                    ));
                }
                if launcher == Launcher::Env {
                    return Err(
                        "--launcher=env: RANK and WORLD_SIZE are not set (with MASTER_ADDR and \
                         MASTER_PORT; see docs/distributed.md)"
                            .into(),
                    );
                }
                let note = var("SLURM_NTASKS").filter(|n| n.trim() != "1").map(|n| {
                    format!(
                        "launch: SLURM_NTASKS = {n} is set but ignored; this is one process \
                             (pass --launcher=slurm to make each srun task one rank)"
                    )
                });
                return Ok((None, note));
            }
            let env = LaunchEnv::from_vars(without_slurm)
                .map_err(|e| format!("{flag}: {e}"))?
                .expect("RANK is set");
            if env.world_size > 1 && var("MASTER_ADDR").is_none() {
                return Err(format!(
                    "{flag}: WORLD_SIZE = {} but MASTER_ADDR is not set (the host of rank 0, \
                     where the ranks meet; MASTER_PORT defaults to {DEFAULT_PORT})",
                    env.world_size
                ));
            }
            Ok((Some(launch(env)), None))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn detect(
        launcher: Launcher,
        pairs: &[(&str, &str)],
    ) -> Result<(Option<Launch>, Option<String>), String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        detect_from(launcher, Duration::from_secs(7), move |k| {
            map.get(k).cloned()
        })
    }

    #[test]
    fn auto_takes_torchrun_variables_and_ignores_slurm_with_a_note() {
        let (launch, note) = detect(
            Launcher::Auto,
            &[
                ("RANK", "1"),
                ("WORLD_SIZE", "2"),
                ("LOCAL_RANK", "1"),
                ("MASTER_ADDR", "10.1.2.3"),
                ("MASTER_PORT", "4567"),
            ],
        )
        .unwrap();
        let launch = launch.unwrap();
        assert_eq!(note, None);
        assert_eq!(
            launch.describe(),
            "launch: rank 1 of 2 (local rank 1, from RANK/WORLD_SIZE/LOCAL_RANK), rendezvous at 10.1.2.3:4567, timeout 7s"
        );
        let (launch, note) = detect(
            Launcher::Auto,
            &[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "8")],
        )
        .unwrap();
        assert_eq!(launch, None);
        assert!(note.unwrap().contains("--launcher=slurm"));
        assert_eq!(detect(Launcher::Auto, &[]).unwrap(), (None, None));
        assert_eq!(
            detect(Launcher::None, &[("RANK", "0"), ("WORLD_SIZE", "9")]).unwrap(),
            (None, None)
        );
        // World size 1 needs no address.
        let (launch, _) = detect(Launcher::Env, &[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap();
        assert_eq!(launch.unwrap().env.world_size, 1);
    }

    #[test]
    fn slurm_launcher_reads_only_slurm_variables() {
        let (launch, _) = detect(
            Launcher::Slurm,
            &[
                ("RANK", "5"),
                ("WORLD_SIZE", "6"),
                ("SLURM_PROCID", "3"),
                ("SLURM_NTASKS", "4"),
                ("SLURM_LOCALID", "3"),
                ("SLURM_JOB_NODELIST", "gpu[07-08]"),
            ],
        )
        .unwrap();
        let env = launch.unwrap().env;
        assert_eq!(
            (
                env.rank,
                env.world_size,
                env.local_rank,
                env.master_addr.as_str()
            ),
            (3, 4, 3, "gpu07")
        );
        assert!(
            detect(Launcher::Slurm, &[("RANK", "0"), ("WORLD_SIZE", "1")])
                .unwrap_err()
                .contains("srun")
        );
    }

    #[test]
    fn bad_environments_are_messages() {
        let err = |launcher, pairs: &[(&str, &str)]| detect(launcher, pairs).unwrap_err();
        assert!(err(Launcher::Auto, &[("WORLD_SIZE", "2")]).contains("RANK is not"));
        assert!(err(Launcher::Env, &[]).contains("RANK and WORLD_SIZE are not set"));
        let e = err(Launcher::Auto, &[("RANK", "0"), ("WORLD_SIZE", "2")]);
        assert!(e.contains("MASTER_ADDR is not set"), "{e}");
        let e = err(
            Launcher::Auto,
            &[("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")],
        );
        assert!(e.contains("rank 2 is not below world size 2"), "{e}");
        let e = err(Launcher::Auto, &[("RANK", "one"), ("WORLD_SIZE", "2")]);
        assert!(e.contains("RANK = `one`"), "{e}");
        assert!(Launcher::parse("mpi")
            .unwrap_err()
            .contains("auto, env, slurm or none"));
    }
}
