//! The per-op event timer behind `CudaOps`'s
//! [`Ops::start_op_profile`](kormo_model::Ops::start_op_profile) (see `kormo_model::profile`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaContext, CudaEvent, CudaStream};
use kormo_model::profile::OpProfile;

/// Op calls the first profile makes room for before it starts: a forward+backward makes about
/// `44 * layers` calls, `57 * layers` with activation checkpointing (~1000 for proxy-1b, ~2300
/// for kormo-10.8b), and a benchmark profiles two.
const PREALLOCATED_CALLS: usize = 8192;

/// The per-op timer of a [`CudaOps`] (see `kormo_model::profile`). While on, each op call
/// records a start and an end event on the backend's one stream around everything the call
/// enqueues, so an op's time is the device time between the two: its kernels, GEMMs, input
/// casts and copies (and any idle time between them while the host launches the next), but not
/// the host gaps before and after the call. [`EventTimer::finish`] synchronises the stream and
/// sums the intervals per label.
///
/// No allocation in a profiled step: events come from a pool created by [`EventTimer::start`]
/// (room for [`PREALLOCATED_CALLS`] calls) and kept between profiles; only a profile with more
/// calls than that grows it. Off, an op pays one relaxed atomic load. A failed event call never
/// panics the caller: it switches the timer off and keeps the reason, which `finish` returns.
#[derive(Default)]
pub(crate) struct EventTimer {
    on: AtomicBool,
    state: Mutex<EventState>,
}

#[derive(Default)]
struct EventState {
    /// Call `i` uses events `2 i` (start) and `2 i + 1` (end).
    pool: Vec<CudaEvent>,
    calls: Vec<EventCall>,
    failure: Option<String>,
}

struct EventCall {
    op: &'static str,
    flops: f64,
    ended: bool,
}

impl EventState {
    /// Makes sure the pool holds `events` events.
    fn grow(&mut self, context: &Arc<CudaContext>, events: usize) -> Result<(), String> {
        while self.pool.len() < events {
            // Timing enabled (cudarc's default flags disable timing).
            let event = context
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| format!("creating CUDA event {}: {e}", self.pool.len()))?;
            self.pool.push(event);
        }
        Ok(())
    }
}

impl EventTimer {
    fn lock(&self) -> MutexGuard<'_, EventState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Switches off and keeps the first failure's reason.
    fn fail(&self, state: &mut EventState, reason: String) {
        self.on.store(false, Ordering::Relaxed);
        state.failure.get_or_insert(reason);
    }

    /// Clears the previous profile, creates the event pool if needed and starts recording.
    pub(crate) fn start(&self, context: &Arc<CudaContext>) -> Result<(), String> {
        let mut state = self.lock();
        state.calls.clear();
        state.failure = None;
        let events = state.pool.len().max(2 * PREALLOCATED_CALLS);
        state.grow(context, events).map_err(|e| format!("op profiler not started: {e}"))?;
        state.calls.reserve(events / 2);
        self.on.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Times one op call on `stream` (doing `flops`): records the start event now and the end
    /// event when the returned guard drops, that is after the call has enqueued its work.
    pub(crate) fn time<'a>(&'a self, stream: &'a CudaStream, op: &'static str, flops: f64) -> EventTiming<'a> {
        let call = if self.on.load(Ordering::Relaxed) { self.begin(stream, op, flops) } else { None };
        EventTiming { timer: self, stream, call }
    }

    fn begin(&self, stream: &CudaStream, op: &'static str, flops: f64) -> Option<usize> {
        let mut state = self.lock();
        let i = state.calls.len();
        let recorded = state.grow(stream.context(), 2 * i + 2).and_then(|()| {
            state.pool[2 * i].record(stream).map_err(|e| format!("recording the start event of {op}: {e}"))
        });
        match recorded {
            Ok(()) => {
                state.calls.push(EventCall { op, flops, ended: false });
                Some(i)
            }
            Err(reason) => {
                self.fail(&mut state, reason);
                None
            }
        }
    }

    fn end(&self, stream: &CudaStream, i: usize) {
        let mut state = self.lock();
        // Nothing to end after a failure, or if the profile was finished in between.
        if state.failure.is_some() || i >= state.calls.len() {
            return;
        }
        match state.pool[2 * i + 1].record(stream) {
            Ok(()) => state.calls[i].ended = true,
            Err(e) => {
                let reason = format!("recording the end event of {}: {e}", state.calls[i].op);
                self.fail(&mut state, reason);
            }
        }
    }

    /// Stops recording, waits for `stream` and returns the per-op device times since
    /// [`EventTimer::start`], or why there are none.
    pub(crate) fn finish(&self, stream: &CudaStream) -> Result<OpProfile, String> {
        self.on.store(false, Ordering::Relaxed);
        let mut state = self.lock();
        let calls = std::mem::take(&mut state.calls);
        if let Some(reason) = state.failure.take() {
            return Err(format!("op profiler switched off: {reason}"));
        }
        stream.synchronize().map_err(|e| format!("op profiler: synchronising the stream: {e}"))?;
        let mut profile = OpProfile::default();
        // A call whose op panicked before its end event is left out.
        for (i, call) in calls.iter().enumerate().filter(|(_, c)| c.ended) {
            let ms = state.pool[2 * i]
                .elapsed_ms(&state.pool[2 * i + 1])
                .map_err(|e| format!("op profiler: reading the events of {}: {e}", call.op))?;
            profile.record(call.op, f64::from(ms) / 1e3, call.flops);
        }
        // Keep the vector's capacity for the next profile.
        state.calls = calls;
        state.calls.clear();
        Ok(profile)
    }
}

/// See [`EventTimer::time`].
pub(crate) struct EventTiming<'a> {
    timer: &'a EventTimer,
    stream: &'a CudaStream,
    call: Option<usize>,
}

impl Drop for EventTiming<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.call {
            self.timer.end(self.stream, i);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::CudaOps;

    #[test]
    fn op_profile_times_each_call_on_the_device() {
        use kormo_model::{MatmulShape, Ops};
        // A device check: without a usable device there is nothing to time.
        let Ok(ops) = CudaOps::new(0) else { return };
        let shape = MatmulShape::linear_fwd(256, 128, 192);
        let (a, b) = (ops.upload(&vec![0.5; 256 * 128]), ops.upload(&vec![0.25; 192 * 128]));
        let mut c = ops.zeros(256 * 192);
        ops.matmul(&a, &b, &mut c, shape); // not profiled
        ops.start_op_profile().expect("events on a working device");
        for _ in 0..3 {
            ops.matmul(&a, &b, &mut c, shape);
        }
        ops.fill(&mut c, 0.0);
        let profile = ops.finish_op_profile().expect("profile");
        let totals = profile.totals();
        assert_eq!(totals.len(), 2, "{totals:?}");
        assert_eq!((totals[0].op, totals[0].calls, totals[0].flops), ("matmul fwd", 3, 3.0 * shape.flops()));
        assert_eq!((totals[1].op, totals[1].calls), ("fill", 1));
        assert!(totals[0].seconds > 0.0 && totals.iter().all(|t| t.seconds < 1.0), "{totals:?}");
        // Finished means off; a second profile reuses the pool and starts empty.
        ops.fill(&mut c, 1.0);
        ops.start_op_profile().unwrap();
        assert!(ops.finish_op_profile().unwrap().totals().is_empty());
    }
}
