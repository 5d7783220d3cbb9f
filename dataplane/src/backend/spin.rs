//! How long the socket/xdp event loop keeps polling after traffic before it sleeps.
//!
//! Why: a ping through the fabric wakes a data plane three times (the request from the
//! TAP, the request from the peer, the reply from the peer) where a kernel tunnel wakes
//! nobody; each wake-up of a sleeping data plane costs tens of microseconds (scheduler,
//! cold caches). A data plane that has just sent a request often gets the answer within a
//! couple of hundred microseconds; polling that long catches it without a wake-up. Measured
//! on the 2-core VM of the benchmarks (a ping every 100 ms, two socket-backend nodes): p50 /
//! p99 0.232 / 0.45-0.81 ms sleeping at once, 0.187 / 0.26-0.28 ms polling 200 µs.
//!
//! Each poll yields the CPU (`sched_yield`), so a woken application runs at once: spinning
//! without yielding made the same ping slower (0.38 ms p50), because on two CPUs both data
//! planes spun while ping waited for a CPU. Polling that finds nothing is wasted, so it
//! backs off: after [`SpinPolicy::MISSES_BEFORE_OFF`] windows in a row that caught nothing
//! the loop sleeps at once, and tries a window again every [`SpinPolicy::PROBE_EVERY`]
//! parks (one-way traffic, or the node that only answers, stops polling; a request/response
//! exchange keeps it). While bulk traffic flows the loop does not poll at all (the caller
//! asks only when idle CPUs are not already kept polling for it).

/// The default window (`omni-dataplane --spin-us`, `[daemon] spin_us`).
pub const DEFAULT_US: u64 = 200;
/// The largest window accepted.
pub const MAX_US: u64 = 10_000;

/// Decides the polling window before each park.
#[derive(Debug, Clone)]
pub struct SpinPolicy {
    max_us: u64,
    /// Windows in a row that expired without work.
    misses: u32,
    /// Parks since polling stopped (for the probes).
    parks_off: u32,
}

impl SpinPolicy {
    pub const MISSES_BEFORE_OFF: u32 = 4;
    pub const PROBE_EVERY: u32 = 32;

    /// `max_us` = 0 never polls.
    pub fn new(max_us: u64) -> Self {
        Self { max_us, misses: 0, parks_off: 0 }
    }

    /// The polling window (µs after the last work) for the idle stretch that starts now.
    pub fn window_us(&self) -> u64 {
        if self.misses < Self::MISSES_BEFORE_OFF || self.parks_off.is_multiple_of(Self::PROBE_EVERY)
        {
            self.max_us
        } else {
            0
        }
    }

    /// Work came during a window: a wake-up saved.
    pub fn caught(&mut self) {
        self.misses = 0;
        self.parks_off = 0;
    }

    /// The loop parks: `polled` says whether a window ran (and expired) first.
    pub fn parked(&mut self, polled: bool) {
        if polled {
            self.misses = self.misses.saturating_add(1);
        }
        if self.misses >= Self::MISSES_BEFORE_OFF {
            self.parks_off = self.parks_off.wrapping_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_never_polls() {
        let mut p = SpinPolicy::new(0);
        for _ in 0..100 {
            assert_eq!(p.window_us(), 0);
            p.parked(false);
        }
    }

    #[test]
    fn request_response_keeps_polling() {
        // The requester: one window catches the answer, the next (after delivering it)
        // expires. It never stops.
        let mut p = SpinPolicy::new(200);
        for _ in 0..100 {
            assert_eq!(p.window_us(), 200);
            p.caught();
            assert_eq!(p.window_us(), 200);
            p.parked(true);
        }
    }

    #[test]
    fn windows_that_catch_nothing_stop_then_probe() {
        let mut p = SpinPolicy::new(200);
        for i in 0..SpinPolicy::MISSES_BEFORE_OFF {
            assert_eq!(p.window_us(), 200, "miss {i}");
            p.parked(true);
        }
        // Off now, except for a probe every PROBE_EVERY parks.
        let mut windows = 0;
        for _ in 0..SpinPolicy::PROBE_EVERY * 3 {
            let w = p.window_us();
            if w > 0 {
                windows += 1;
            }
            p.parked(w > 0);
        }
        assert_eq!(windows, 3);
        // A probe that catches something turns polling back on.
        while p.window_us() == 0 {
            p.parked(false);
        }
        p.caught();
        for _ in 0..SpinPolicy::MISSES_BEFORE_OFF {
            assert_eq!(p.window_us(), 200);
            p.parked(true);
        }
        assert_eq!(p.window_us(), 0);
    }
}
