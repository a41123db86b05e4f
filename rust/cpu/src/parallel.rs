//! Work distribution for CPU kernels with `std::thread::scope`.
//!
//! Work items come from an iterator shared behind a mutex, so threads take the next item as
//! they finish (causal attention rows have uneven cost). Results never depend on the thread
//! count or on scheduling: each item writes only its own outputs, and kernels that reduce across
//! items store per-item partials and sum them in item order afterwards.

use std::sync::Mutex;

/// Runs `work` on every item of `items` using up to `threads` threads (the caller included).
pub fn for_each<I>(threads: usize, items: I, work: impl Fn(I::Item) + Sync)
where
    I: Iterator + Send,
    I::Item: Send,
{
    if threads <= 1 {
        items.for_each(work);
        return;
    }
    let queue = Mutex::new(items);
    let worker = || loop {
        // The lock is held only while taking the next item, never while working on it.
        let next = queue.lock().expect("work queue poisoned").next();
        match next {
            Some(item) => work(item),
            None => break,
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..threads {
            scope.spawn(worker);
        }
        worker();
    });
}

/// How many threads to use for `work` units of elementwise work: spawning costs tens of
/// microseconds, so small jobs stay on the calling thread.
pub fn threads_for(threads: usize, work: usize) -> usize {
    const MIN_WORK_PER_THREAD: usize = 1 << 15;
    threads.min(work / MIN_WORK_PER_THREAD).max(1)
}
