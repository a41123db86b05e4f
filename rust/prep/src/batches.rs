//! The two kinds of parallelism of `prepare`: a file's items are read (decompressed, parsed)
//! on a thread of their own, in batches, ahead of the stages that use them ([`read_ahead`]); a
//! stage maps a batch over the worker threads, keeping the order ([`par_map`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::Scope;

use kormo_corpus::MalformedInput;

/// Up to `size` well-formed items of a file, and how many malformed ones were skipped
/// (logged as warnings) while reading them.
#[derive(Debug)]
pub(crate) struct Batch<T> {
    pub items: Vec<T>,
    pub malformed: u64,
}

/// Batches read ahead.
pub(crate) type Batches<T> = Receiver<Result<Batch<T>, String>>;

/// Batches to read ahead at most (bounding memory to a few batches).
const AHEAD: usize = 2;

/// Reads `items` in batches of `size` on a thread of `scope`, each item shown to `seen` as it
/// is read. Malformed items are counted and skipped, the first ones (up to 20 with the
/// `malformed_before` of earlier files) logged. A fatal error (the rest of the file is
/// unreadable) is the last thing sent: a file is used whole or not at all. Dropping the
/// receiver stops the reader.
pub(crate) fn read_ahead<'scope, T, I>(
    scope: &'scope Scope<'scope, '_>,
    items: I,
    size: usize,
    malformed_before: u64,
    seen: impl Fn(&T) + Send + 'scope,
) -> Batches<T>
where
    T: Send + 'scope,
    I: Iterator<Item = Result<T, MalformedInput>> + Send + 'scope,
{
    let (sender, receiver) = sync_channel(AHEAD);
    scope.spawn(move || {
        let mut malformed_total = malformed_before;
        let mut items = items;
        loop {
            let mut batch = Batch { items: Vec::with_capacity(size), malformed: 0 };
            let mut fatal = None;
            for item in items.by_ref() {
                match item {
                    Ok(x) => {
                        seen(&x);
                        batch.items.push(x);
                    }
                    Err(e) if e.fatal => {
                        fatal = Some(e.to_string());
                        break;
                    }
                    Err(e) => {
                        batch.malformed += 1;
                        malformed_total += 1;
                        if malformed_total <= 20 {
                            log::warn!("skipped malformed input: {e}");
                        }
                    }
                }
                if batch.items.len() == size {
                    break;
                }
            }
            let last = fatal.is_some() || batch.items.len() < size;
            let sent = match fatal {
                Some(e) => sender.send(Err(e)),
                None if batch.items.is_empty() && batch.malformed == 0 => break,
                None => sender.send(Ok(batch)),
            };
            if sent.is_err() || last {
                break;
            }
        }
    });
    receiver
}

/// Items each worker claims at a time.
const CLAIM: usize = 8;

/// Maps `f` over `items` on one thread per state (each with its own `&mut` state, which lives
/// on from batch to batch: a tokenizer's cache, a renderer), keeping order. Threads claim a
/// few items at a time, so documents of very different sizes still keep every thread busy.
pub(crate) fn par_map<T: Sync, S: Send, R: Send>(
    items: &[T],
    states: &mut [S],
    f: impl Fn(&mut S, &T) -> R + Sync,
) -> Vec<R> {
    if items.is_empty() {
        return Vec::new();
    }
    let threads = states.len().min(items.len().div_ceil(CLAIM)).max(1);
    if threads == 1 {
        // A batch too small to share (a file of one document: an HTML page) runs here,
        // without a thread to start and join.
        return items.iter().map(|item| f(&mut states[0], item)).collect();
    }
    let next = AtomicUsize::new(0);
    let mut parts: Vec<Vec<(usize, R)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = states[..threads]
            .iter_mut()
            .map(|state| {
                let (next, f) = (&next, &f);
                scope.spawn(move || {
                    let mut out = Vec::new();
                    loop {
                        let start = next.fetch_add(CLAIM, Ordering::Relaxed);
                        if start >= items.len() {
                            return out;
                        }
                        for (i, item) in items.iter().enumerate().skip(start).take(CLAIM) {
                            out.push((i, f(state, item)));
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("prep worker panicked")).collect()
    });
    let mut slots: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    for (i, r) in parts.iter_mut().flat_map(std::mem::take) {
        slots[i] = Some(r);
    }
    slots.into_iter().map(|r| r.expect("every item mapped")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn par_map_keeps_order_and_states() {
        let items: Vec<u64> = (0..1000).collect();
        let mut states = vec![0u64; 3];
        let out = par_map(&items, &mut states, |calls, x| {
            *calls += 1;
            x * x
        });
        assert_eq!(out, items.iter().map(|x| x * x).collect::<Vec<_>>());
        assert_eq!(states.iter().sum::<u64>(), 1000);
        assert!(par_map(&[] as &[u64], &mut states, |_, x| *x).is_empty());
    }

    #[test]
    fn read_ahead_batches_counts_malformed_and_stops_at_a_fatal_error() {
        let file = Path::new("f.jsonl");
        let items = (0..25).map(|i| match i {
            3 | 4 => Err(MalformedInput::new(file, kormo_corpus::Location::Line(i), "bad".into())),
            20 => Err(MalformedInput::fatal(file, kormo_corpus::Location::Line(i), "cut".into())),
            _ => Ok(i),
        });
        let seen = AtomicUsize::new(0);
        let got: Vec<_> = std::thread::scope(|scope| {
            read_ahead(scope, items, 8, 0, |_| {
                seen.fetch_add(1, Ordering::Relaxed);
            })
            .into_iter()
            .collect()
        });
        assert_eq!(got.len(), 3);
        let first = got[0].as_ref().unwrap();
        assert_eq!((first.items.clone(), first.malformed), ((0..10).filter(|i| !(3..5).contains(i)).collect(), 2));
        assert_eq!(got[1].as_ref().unwrap().items, (10..18).collect::<Vec<_>>());
        assert_eq!(got[2].as_ref().unwrap_err(), "f.jsonl:20: cut");
        assert_eq!(seen.load(Ordering::Relaxed), 18);
    }
}
