//! Preemption and Ctrl-C: SIGTERM (what schedulers send before killing a job), SIGUSR1 (Slurm's
//! `--signal`) and a first SIGINT (Ctrl-C) ask the trainer to checkpoint at the end of the
//! current step and exit cleanly. A second SIGINT exits at once with code 130: every checkpoint
//! already on disk stays valid (saves are atomic, a half-written one is a hidden temp directory
//! that the next save removes), and the run directory's lock is removed first, so `--resume`
//! works straight away.
//!
//! The handlers only touch atomics and call `write`, `unlink` and `_exit` (all
//! async-signal-safe); the training loop polls [`stop_requested`] once per step. Handlers are
//! installed with libc's `signal`, which std already links, so no crate is needed; glibc's
//! `signal` has BSD semantics (the handler stays installed and interrupted reads restart).

use std::ffi::{c_char, CString};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU32, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);
static SIGNAL: AtomicI32 = AtomicI32::new(0);
static INTERRUPTS: AtomicU32 = AtomicU32::new(0);
/// The lock file a second Ctrl-C removes before exiting (a leaked C string), or null.
static LOCK_FILE: AtomicPtr<c_char> = AtomicPtr::new(std::ptr::null_mut());

pub const SIGINT: i32 = 2;
pub const SIGUSR1: i32 = 10;
pub const SIGTERM: i32 = 15;
/// Exit status after a second Ctrl-C (128 + SIGINT, as shells report it).
pub const INTERRUPTED_EXIT: i32 = 130;

extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
    fn write(fd: i32, buf: *const u8, count: usize) -> isize;
    fn unlink(path: *const c_char) -> i32;
    fn _exit(status: i32) -> !;
}

fn say(message: &str) {
    // SAFETY: writes a static buffer to stderr; the result is irrelevant.
    unsafe {
        write(2, message.as_ptr(), message.len());
    }
}

extern "C" fn on_signal(signum: i32) {
    SIGNAL.store(signum, Ordering::SeqCst);
    STOP.store(true, Ordering::SeqCst);
}

extern "C" fn on_interrupt(_signum: i32) {
    if INTERRUPTS.fetch_add(1, Ordering::SeqCst) == 0 {
        on_signal(SIGINT);
        say("\ninterrupt: checkpointing at the end of this step, then exiting; press Ctrl-C again to exit now (steps since the last checkpoint are lost)\n");
        return;
    }
    let lock = LOCK_FILE.load(Ordering::SeqCst);
    if !lock.is_null() {
        // SAFETY: a NUL-terminated string that is never freed.
        unsafe {
            unlink(lock);
        }
    }
    say("\ninterrupt: second Ctrl-C, exiting now; checkpoints already written are intact (continue with --resume)\n");
    // SAFETY: ends the process without running anything else, as a signal handler must.
    unsafe { _exit(INTERRUPTED_EXIT) }
}

/// Routes SIGTERM, SIGUSR1 and SIGINT to [`stop_requested`] (the `train` binary calls this once).
pub fn install_preemption_handlers() {
    let handler: extern "C" fn(i32) = on_signal;
    let interrupt: extern "C" fn(i32) = on_interrupt;
    for (signum, handler) in [(SIGTERM, handler), (SIGUSR1, handler), (SIGINT, interrupt)] {
        // SAFETY: the handlers are async-signal-safe and live forever.
        unsafe {
            signal(signum, handler as usize);
        }
    }
}

/// The lock file that a second Ctrl-C removes before exiting (`None`: none is held). The
/// previous path's memory is leaked on purpose: a handler may be reading it.
pub(crate) fn set_lock_file(path: Option<&Path>) {
    let raw = path
        .and_then(|p| CString::new(p.as_os_str().as_encoded_bytes()).ok())
        .map_or(std::ptr::null_mut(), CString::into_raw);
    LOCK_FILE.store(raw, Ordering::SeqCst);
}

/// The name of the signal that asked to stop, if one did.
pub fn stop_requested() -> Option<&'static str> {
    STOP.load(Ordering::SeqCst)
        .then(|| match SIGNAL.load(Ordering::SeqCst) {
            SIGUSR1 => "SIGUSR1",
            SIGINT => "SIGINT",
            _ => "SIGTERM",
        })
}
