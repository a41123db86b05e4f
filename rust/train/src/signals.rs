//! Preemption: SIGTERM (what schedulers send before killing a job) and SIGUSR1 (Slurm's
//! `--signal`) ask the trainer to checkpoint at the end of the current step and exit cleanly.
//!
//! The handler only stores into an `AtomicBool` (async-signal-safe); the training loop polls
//! [`stop_requested`] once per step. Handlers are installed with libc's `signal`, which std
//! already links, so no crate is needed; glibc's `signal` has BSD semantics (the handler stays
//! installed and interrupted reads restart).

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);
static SIGNAL: AtomicI32 = AtomicI32::new(0);

pub const SIGUSR1: i32 = 10;
pub const SIGTERM: i32 = 15;

extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
}

extern "C" fn on_signal(signum: i32) {
    SIGNAL.store(signum, Ordering::SeqCst);
    STOP.store(true, Ordering::SeqCst);
}

/// Routes SIGTERM and SIGUSR1 to [`stop_requested`] (the `train` binary calls this once).
pub fn install_preemption_handlers() {
    let handler: extern "C" fn(i32) = on_signal;
    for signum in [SIGTERM, SIGUSR1] {
        // SAFETY: `on_signal` is async-signal-safe (two atomic stores) and lives forever.
        unsafe {
            signal(signum, handler as usize);
        }
    }
}

/// The name of the signal that asked to stop, if one did.
pub fn stop_requested() -> Option<&'static str> {
    STOP.load(Ordering::SeqCst)
        .then(|| match SIGNAL.load(Ordering::SeqCst) {
            SIGUSR1 => "SIGUSR1",
            _ => "SIGTERM",
        })
}
