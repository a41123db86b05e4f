//! kormo-train: the recipe-driven training loop behind the `train` binary.
//!
//! * [`recipe`] — typed recipe files (configs/*.toml), validated with errors naming file and key.
//! * [`trainer`] — one stage, top to bottom: init or resume, phases, steps, logs, checkpoints.
//! * [`metrics`] — progress lines and RUN_DIR/STAGE/metrics.jsonl.
//! * [`backend`] — `--backend auto|cpu|cuda`: the backends and their optimizers.
//! * [`benchmark`] — `train --benchmark`: tokens/s, FLOP rate and MFU of a stage's shape.
//! * [`cli`] — the `train` command line.
//! * [`guard`] — the outlier guard that skips spiking updates.
//! * [`lock`] — one job per run directory.
//! * [`signals`] — SIGTERM/SIGUSR1: checkpoint at the end of the step and exit.
//! * `dist` — the step loop of `train --world-size N` (FSDP ranks as threads, kormo_dist).
//! * `progress` — step counters, metrics lines, eval/checkpoint steps and event lines that both
//!   step loops share.

pub mod backend;
pub mod benchmark;
pub mod cli;
mod dist;
pub mod guard;
pub mod lock;
pub mod metrics;
mod progress;
pub mod recipe;
pub mod signals;
pub mod trainer;
