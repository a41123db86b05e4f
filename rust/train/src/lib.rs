//! kormo-train: the recipe-driven training loop behind the `train` binary.
//!
//! * [`recipe`] — typed recipe files (configs/*.toml), validated with errors naming file and key.
//! * [`trainer`] — one stage, top to bottom: init or resume, phases, steps, logs, checkpoints.
//! * [`metrics`] — progress lines and RUN_DIR/STAGE/metrics.jsonl.
//! * [`backend`] — `--backend auto|cpu|cuda`: the backends and their optimizers.
//! * [`benchmark`] — `train --benchmark`: tokens/s, FLOP rate and MFU of a stage's shape.
//! * [`cli`] — the `train` command line.
//! * [`guard`] — the outlier guard that skips spiking updates.
//! * [`launch`] — `--launcher`: one process per rank (torchrun-style variables or SLURM).
//! * [`lock`] — one job per run directory.
//! * `run_state` — a resumed checkpoint's run state checked against the recipe and the data.
//! * [`signals`] — SIGTERM/SIGUSR1/SIGINT: checkpoint at the end of the step and exit; a second
//!   Ctrl-C exits at once.
//! * `dist` — the FSDP step loop (kormo_dist): ranks as threads (`--world-size N`, CPU) or one
//!   rank per process (`--launcher`, CPU over TCP or CUDA over NCCL).
//! * `progress` — step counters, metrics lines, eval/checkpoint steps and event lines that both
//!   step loops share.

pub mod backend;
pub mod benchmark;
pub mod cli;
mod dist;
pub mod guard;
pub mod launch;
pub mod lock;
pub mod metrics;
mod progress;
pub mod recipe;
mod run_state;
pub mod signals;
pub mod trainer;
