//! Who am I: rank, world size, local rank and the rendezvous address from the environment.
//!
//! Two conventions are understood, checked in this order:
//! * torchrun style: `RANK`, `WORLD_SIZE`, `LOCAL_RANK` (default 0), `MASTER_ADDR`,
//!   `MASTER_PORT` — set them by hand or from any launcher;
//! * SLURM (`srun`, one task per GPU): `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`; the
//!   address defaults to the first host of `SLURM_JOB_NODELIST` (or `SLURM_NODELIST`), e.g.
//!   `gpu[01-04,07]` -> `gpu01`, and the port to [`DEFAULT_PORT`]; `MASTER_ADDR`/`MASTER_PORT`
//!   override both.
//!
//! With neither present the process is a single rank. Bad values are errors naming the
//! variable, never panics.

use std::sync::Arc;
use std::time::Duration;

use crate::comm::{CommError, HostTransport};
use crate::local::LocalComm;
use crate::tcp::{rendezvous, RendezvousConfig};

/// Port used when no `MASTER_PORT` is given (torchrun's default).
pub const DEFAULT_PORT: u16 = 29500;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchEnv {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// `"env"` or `"slurm"`.
    pub source: &'static str,
}

impl LaunchEnv {
    /// Rendezvous settings for this launch.
    pub fn rendezvous_config(&self, timeout: Duration) -> RendezvousConfig {
        RendezvousConfig {
            rank: self.rank,
            world_size: self.world_size,
            master_addr: self.master_addr.clone(),
            master_port: self.master_port,
            timeout,
        }
    }

    /// Reads the process environment; `Ok(None)` when it describes no distributed launch.
    pub fn from_env() -> Result<Option<LaunchEnv>, CommError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Same as [`LaunchEnv::from_env`] over any variable lookup (testable).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<LaunchEnv>, CommError> {
        let number = |name: &str| -> Result<Option<usize>, CommError> {
            match var(name) {
                None => Ok(None),
                Some(text) => text.trim().parse().map(Some).map_err(|_| {
                    CommError::Setup(format!(
                        "environment variable {name} = `{text}` is not a non-negative integer"
                    ))
                }),
            }
        };
        let port = || -> Result<Option<u16>, CommError> {
            match var("MASTER_PORT") {
                None => Ok(None),
                Some(text) => text.trim().parse().map(Some).map_err(|_| {
                    CommError::Setup(format!(
                        "environment variable MASTER_PORT = `{text}` is not a port number"
                    ))
                }),
            }
        };
        let (rank, world_size, local_rank, master_addr, source) =
            if let Some(rank) = number("RANK")? {
                let world = number("WORLD_SIZE")?
                    .ok_or_else(|| CommError::Setup("RANK is set but WORLD_SIZE is not".into()))?;
                let addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
                (rank, world, number("LOCAL_RANK")?.unwrap_or(0), addr, "env")
            } else if let Some(rank) = number("SLURM_PROCID")? {
                let world = number("SLURM_NTASKS")?.ok_or_else(|| {
                    CommError::Setup("SLURM_PROCID is set but SLURM_NTASKS is not".into())
                })?;
                let addr = match var("MASTER_ADDR") {
                    Some(addr) => addr,
                    None => {
                        let (name, list) = match var("SLURM_JOB_NODELIST") {
                            Some(list) => ("SLURM_JOB_NODELIST", list),
                            None => (
                                "SLURM_NODELIST",
                                var("SLURM_NODELIST").ok_or_else(|| {
                                    CommError::Setup(
                                        "under SLURM, set MASTER_ADDR or SLURM_JOB_NODELIST".into(),
                                    )
                                })?,
                            ),
                        };
                        first_host(&list)
                            .map_err(|why| CommError::Setup(format!("{name} = `{list}`: {why}")))?
                    }
                };
                (
                    rank,
                    world,
                    number("SLURM_LOCALID")?.unwrap_or(0),
                    addr,
                    "slurm",
                )
            } else {
                return Ok(None);
            };
        if world_size == 0 || rank >= world_size {
            return Err(CommError::Setup(format!(
                "rank {rank} is not below world size {world_size} (from {source} variables)"
            )));
        }
        Ok(Some(LaunchEnv {
            rank,
            world_size,
            local_rank,
            master_addr,
            master_port: port()?.unwrap_or(DEFAULT_PORT),
            source,
        }))
    }
}

/// The host process group this process belongs to: a TCP group when the environment describes
/// a launch (see [`LaunchEnv`]), else a group of one. `timeout` bounds the rendezvous and each
/// collective. Returns the launch description too (None for a single process).
pub fn host_group_from_env(
    timeout: Duration,
) -> Result<(Option<LaunchEnv>, Arc<dyn HostTransport>), CommError> {
    match LaunchEnv::from_env()? {
        None => {
            let single = LocalComm::group(1, timeout).pop().expect("one rank");
            Ok((None, Arc::new(single)))
        }
        Some(env) => {
            let config = env.rendezvous_config(timeout);
            // The blob is unused by CPU groups; a GPU launch sends the NCCL id instead.
            let comm = rendezvous(&config, || Ok(Vec::new()))?;
            Ok((Some(env), Arc::new(comm)))
        }
    }
}

/// The first host of a SLURM node list: `a01,b02` -> `a01`; `node[01-04,07]` -> `node01`;
/// `rack[1-2]-n[3-4]` -> `rack1-n3` (the first value of every bracket, zero padding kept).
pub fn first_host(list: &str) -> Result<String, String> {
    // The first comma outside brackets ends the first entry.
    let mut depth = 0i32;
    let mut end = list.len();
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                end = i;
                break;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err("unbalanced or nested brackets".into());
        }
    }
    let entry = list[..end].trim();
    let mut host = String::new();
    let mut rest = entry;
    while let Some(open) = rest.find('[') {
        let close = rest[open..].find(']').ok_or("unclosed `[`")? + open;
        host.push_str(&rest[..open]);
        let first = rest[open + 1..close].split(',').next().unwrap_or("");
        let first = first.split('-').next().unwrap_or("");
        if first.is_empty() || !first.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!(
                "`[{}]` is not a numeric range",
                &rest[open + 1..close]
            ));
        }
        host.push_str(first);
        rest = &rest[close + 1..];
    }
    host.push_str(rest);
    if host.is_empty() || host.contains(']') {
        return Err("no host name".into());
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn first_host_of_simple_forms() {
        assert_eq!(first_host("node[01-04]").unwrap(), "node01");
        assert_eq!(first_host("gpu[07,09-12],cpu3").unwrap(), "gpu07");
        assert_eq!(first_host("a17,b[1-2]").unwrap(), "a17");
        assert_eq!(first_host("rack[2-3]-n[05-06]").unwrap(), "rack2-n05");
        assert_eq!(first_host("node[1-2]-ib").unwrap(), "node1-ib");
        assert!(first_host("node[01-04").is_err());
        assert!(first_host("node[a-b]").is_err());
        assert!(first_host("").is_err());
    }

    #[test]
    fn torchrun_variables_win_over_slurm() {
        let e = LaunchEnv::from_vars(env(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "3"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "1234"),
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "16"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (
                e.rank,
                e.world_size,
                e.local_rank,
                e.master_addr.as_str(),
                e.master_port,
                e.source
            ),
            (3, 8, 3, "10.0.0.1", 1234, "env")
        );
    }

    #[test]
    fn slurm_variables_and_nodelist() {
        let e = LaunchEnv::from_vars(env(&[
            ("SLURM_PROCID", "9"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_JOB_NODELIST", "h100-[003-004]"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (
                e.rank,
                e.world_size,
                e.local_rank,
                e.master_addr.as_str(),
                e.master_port
            ),
            (9, 16, 1, "h100-003", DEFAULT_PORT)
        );
        assert_eq!(LaunchEnv::from_vars(env(&[])).unwrap(), None);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let error =
            |pairs: &[(&str, &str)]| LaunchEnv::from_vars(env(pairs)).unwrap_err().to_string();
        let err = error(&[("RANK", "x"), ("WORLD_SIZE", "2")]);
        assert!(err.contains("RANK = `x`"), "{err}");
        let err = error(&[("RANK", "2"), ("WORLD_SIZE", "2")]);
        assert!(err.contains("rank 2 is not below world size 2"), "{err}");
        let err = error(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "99999")]);
        assert!(err.contains("MASTER_PORT"), "{err}");
        let err = error(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_JOB_NODELIST", "n[1-"),
        ]);
        assert!(err.contains("SLURM_JOB_NODELIST"), "{err}");
    }
}
