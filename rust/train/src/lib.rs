//! kormo-train: the recipe-driven training loop behind the `train` binary.
//!
//! * [`recipe`] — typed recipe files (configs/*.toml), validated with errors naming file and key.
//! * [`trainer`] — one stage, top to bottom: the prelude (lock, data, init or resume, metrics
//!   file), then the engine for the world size and the step loop.
//! * `step_loop` — the one step loop of every world size, over any `kormo_dist::FsdpEngine`:
//!   steps, the non-finite restore, the outlier guard, logs, held-out evaluation, checkpoints,
//!   preemption.
//! * `ranks` — the FSDP ranks (kormo_dist): threads (`--world-size N`, CPU) or one rank per
//!   process (`--launcher`, CPU over TCP or CUDA over NCCL).
//! * `phase_data` — each phase's data mixture, opened and checked up front, packed into batches.
//! * `progress` — where a run starts, step counters, metrics lines, eval/checkpoint steps,
//!   event lines and the report of a run.
//! * `run_state` — the trainer state a checkpoint holds, checked against the recipe and the
//!   data on resume.
//! * `downstream` — benchmark scores during training (the recipe's `[downstream]`).
//! * [`metrics`] — progress lines and RUN_DIR/STAGE/metrics.jsonl.
//! * [`backend`] — `--backend auto|cpu|cuda`: the backends and the engines on them.
//! * [`benchmark`] — `train --benchmark`: tokens/s, FLOP rate and MFU of a stage's shape.
//! * [`cli`] — the `train` command line.
//! * [`error`] — the crate's error type.
//! * [`guard`] — the outlier guard that skips spiking updates.
//! * [`launcher`] — `--launcher`: one process per rank (torchrun-style variables or SLURM).
//! * [`lock`] — one job per run directory.
//! * [`signals`] — SIGTERM/SIGUSR1/SIGINT: checkpoint at the end of the step and exit; a second
//!   Ctrl-C exits at once.

pub mod backend;
pub mod benchmark;
pub mod cli;
mod downstream;
pub mod error;
pub mod guard;
pub mod launcher;
pub mod lock;
pub mod metrics;
mod phase_data;
mod progress;
mod ranks;
pub mod recipe;
mod run_state;
pub mod signals;
mod step_loop;
pub mod trainer;
