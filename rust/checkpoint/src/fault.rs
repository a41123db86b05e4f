//! A deterministic crash hook for tests of what a kill leaves on disk.
//!
//! Every filesystem step of saving and pruning calls [`point`] first. Normally that is one
//! thread-local read. A test arms [`crash_at`]`(n)` and the `n`-th point reached on this thread
//! panics instead, which stops the operation exactly there without running any cleanup code
//! (the error paths that tidy up are skipped, as they would be by SIGKILL); the test catches the
//! panic and checks what is on disk. [`points_reached`] counts the points of a run, so a test can
//! crash at each of them in turn.

use std::cell::Cell;

thread_local! {
    static CRASH_AT: Cell<Option<u64>> = const { Cell::new(None) };
    static REACHED: Cell<u64> = const { Cell::new(0) };
}

/// The panic payload of an armed crash (tests match on it).
pub const CRASH_MESSAGE: &str = "kormo_checkpoint::fault: injected crash";

/// Marks one filesystem step (`what` names it in the panic message).
pub fn point(what: &str) {
    let reached = REACHED.with(|r| {
        r.set(r.get() + 1);
        r.get()
    });
    if CRASH_AT.with(|c| c.get()) == Some(reached) {
        CRASH_AT.with(|c| c.set(None));
        panic!("{CRASH_MESSAGE} before: {what}");
    }
}

/// Crash at the `n`-th point (1-based) from now on this thread; `None` disarms. Resets the count.
pub fn crash_at(n: Option<u64>) {
    REACHED.with(|r| r.set(0));
    CRASH_AT.with(|c| c.set(n));
}

/// Points reached on this thread since the last [`crash_at`].
pub fn points_reached() -> u64 {
    REACHED.with(|r| r.get())
}
