//! How long the socket/xdp event loop keeps polling after traffic before it sleeps.
//!
//! Why: a ping through the fabric wakes a data plane three times (the request from the
//! TAP, the request from the peer, the reply from the peer) where a kernel tunnel wakes
//! nobody; each wake-up of a sleeping data plane costs tens to hundreds of microseconds
//! (scheduler, a halted vCPU, cold caches). A data plane that has just sent a request often
//! gets the answer within a couple of hundred microseconds; polling that long catches it
//! without a wake-up.
//!
//! Each poll yields the CPU (`sched_yield`), so a woken application runs at once: spinning
//! without yielding made the same ping slower (0.38 ms p50), because on two CPUs both data
//! planes spun while ping waited for a CPU.
//!
//! Polling that finds nothing is wasted, so it backs off: after
//! [`SpinPolicy::MISSES_BEFORE_OFF`] windows in a row that caught nothing the loop sleeps at
//! once, and tries a window again every [`SpinPolicy::PROBE_EVERY`] parks. What a window
//! waits for depends on what the work before it did, so the two kinds are tracked apart
//! ([`Awaits`]): after sending to a peer, the peer's answer; after only delivering to the
//! local host, the local application's answer. A requester's windows after a send catch
//! the replies while its windows after delivering a reply catch nothing: one shared count
//! turned polling off for both, and since such a node parks exactly twice per exchange, the
//! probes (every 32nd park, an even number) then always fell on the window that could not
//! catch anything, so polling never came back (measured: the requester parked after every
//! send and paid a wake-up for every reply). The node that only answers, or one-way
//! traffic, stops polling either way. While bulk traffic flows the loop does not poll at
//! all (the caller asks only when idle CPUs are not already kept polling for it).

pub use omni_shm::settings::{SPIN_DEFAULT_US as DEFAULT_US, SPIN_MAX_US as MAX_US};

/// What a polling window waits for, from the work that came before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awaits {
    /// Packets went to a peer: its answer comes back over the underlay.
    Peer,
    /// Frames were only delivered to the host: a local application may answer.
    Local,
}

impl Awaits {
    /// The kind of a stretch of work that sent `to_peer` packets to the underlay.
    pub fn after(to_peer: usize) -> Self {
        if to_peer > 0 { Self::Peer } else { Self::Local }
    }
}

/// Misses and probes of one kind of window.
#[derive(Debug, Clone, Default)]
struct Track {
    /// Windows in a row that expired without work.
    misses: u32,
    /// Parks of this kind since polling for it stopped (for the probes).
    parks_off: u32,
}

/// Decides the polling window before each park.
#[derive(Debug, Clone)]
pub struct SpinPolicy {
    max_us: u64,
    peer: Track,
    local: Track,
}

impl SpinPolicy {
    pub const MISSES_BEFORE_OFF: u32 = 4;
    pub const PROBE_EVERY: u32 = 32;

    /// `max_us` = 0 never polls.
    pub fn new(max_us: u64) -> Self {
        Self { max_us, peer: Track::default(), local: Track::default() }
    }

    fn track(&mut self, kind: Awaits) -> &mut Track {
        match kind {
            Awaits::Peer => &mut self.peer,
            Awaits::Local => &mut self.local,
        }
    }

    /// The polling window (µs after the last work) for the idle stretch that starts now,
    /// after work of `kind`.
    pub fn window_us(&self, kind: Awaits) -> u64 {
        let t = match kind {
            Awaits::Peer => &self.peer,
            Awaits::Local => &self.local,
        };
        if t.misses < Self::MISSES_BEFORE_OFF || t.parks_off.is_multiple_of(Self::PROBE_EVERY) {
            self.max_us
        } else {
            0
        }
    }

    /// Work came during a window of `kind`: a wake-up saved.
    pub fn caught(&mut self, kind: Awaits) {
        *self.track(kind) = Track::default();
    }

    /// The loop parks after work of `kind`: `polled` says whether a window ran (and
    /// expired) first.
    pub fn parked(&mut self, kind: Awaits, polled: bool) {
        let t = self.track(kind);
        if polled {
            t.misses = t.misses.saturating_add(1);
        }
        if t.misses >= Self::MISSES_BEFORE_OFF {
            t.parks_off = t.parks_off.wrapping_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One park: runs the window the policy gives, `answer` says whether work comes
    /// within it. Returns whether a window ran.
    fn park(p: &mut SpinPolicy, kind: Awaits, answer: bool) -> bool {
        let polled = p.window_us(kind) > 0;
        if polled && answer {
            p.caught(kind);
            return true;
        }
        p.parked(kind, polled);
        polled
    }

    #[test]
    fn zero_never_polls() {
        let mut p = SpinPolicy::new(0);
        for _ in 0..100 {
            assert_eq!(p.window_us(Awaits::Peer), 0);
            assert_eq!(p.window_us(Awaits::Local), 0);
            p.parked(Awaits::Peer, false);
            p.parked(Awaits::Local, false);
        }
    }

    #[test]
    fn requester_keeps_polling_for_replies_and_stops_after_deliveries() {
        // The requester: the window after its send catches the reply; the one after it
        // delivers the reply to the host expires (ping does not answer).
        let mut p = SpinPolicy::new(200);
        let mut local_windows = 0;
        for _ in 0..200 {
            assert_eq!(p.window_us(Awaits::Peer), 200);
            assert!(park(&mut p, Awaits::Peer, true));
            local_windows += park(&mut p, Awaits::Local, false) as u32;
        }
        // Four misses, then a probe every PROBE_EVERY parks of that kind.
        assert!(local_windows <= SpinPolicy::MISSES_BEFORE_OFF + 200 / SpinPolicy::PROBE_EVERY + 1);
    }

    #[test]
    fn responder_stops_polling() {
        // The node that only answers: after its answer goes out, nothing comes back.
        let mut p = SpinPolicy::new(200);
        let mut windows = 0;
        for _ in 0..320 {
            windows += park(&mut p, Awaits::Peer, false) as u32;
        }
        // Four misses, then one probe per PROBE_EVERY parks.
        let probes = windows - SpinPolicy::MISSES_BEFORE_OFF;
        assert!(
            (320 / SpinPolicy::PROBE_EVERY - 1..=320 / SpinPolicy::PROBE_EVERY).contains(&probes)
        );
    }

    #[test]
    fn polling_for_replies_comes_back_whatever_the_phase_of_other_parks() {
        // Replies were slow for a while (windows after sends expired), so polling for
        // them stopped. Once replies are fast again, a probe must find them although
        // every exchange also parks once after a delivery (the regression: one shared
        // count put every probe on the delivery's park).
        let mut p = SpinPolicy::new(200);
        for _ in 0..SpinPolicy::MISSES_BEFORE_OFF {
            park(&mut p, Awaits::Peer, false);
            park(&mut p, Awaits::Local, false);
        }
        assert_eq!(p.window_us(Awaits::Peer), 0);
        let mut back = None;
        for i in 0..3 * SpinPolicy::PROBE_EVERY {
            if park(&mut p, Awaits::Peer, true) && p.window_us(Awaits::Peer) > 0 {
                back = Some(i);
                break;
            }
            park(&mut p, Awaits::Local, false);
        }
        let back = back.expect("polling for replies never came back");
        assert!(back <= SpinPolicy::PROBE_EVERY, "came back only after {back} exchanges");
        // And it stays on.
        for _ in 0..100 {
            assert!(park(&mut p, Awaits::Peer, true));
            park(&mut p, Awaits::Local, false);
        }
    }

    #[test]
    fn windows_that_catch_nothing_stop_then_probe() {
        let mut p = SpinPolicy::new(200);
        for i in 0..SpinPolicy::MISSES_BEFORE_OFF {
            assert_eq!(p.window_us(Awaits::Local), 200, "miss {i}");
            p.parked(Awaits::Local, true);
        }
        // Off now, except for a probe every PROBE_EVERY parks.
        let mut windows = 0;
        for _ in 0..SpinPolicy::PROBE_EVERY * 3 {
            let w = p.window_us(Awaits::Local);
            if w > 0 {
                windows += 1;
            }
            p.parked(Awaits::Local, w > 0);
        }
        assert_eq!(windows, 3);
        // The other kind is unaffected.
        assert_eq!(p.window_us(Awaits::Peer), 200);
        // A probe that catches something turns polling back on.
        while p.window_us(Awaits::Local) == 0 {
            p.parked(Awaits::Local, false);
        }
        p.caught(Awaits::Local);
        for _ in 0..SpinPolicy::MISSES_BEFORE_OFF {
            assert_eq!(p.window_us(Awaits::Local), 200);
            p.parked(Awaits::Local, true);
        }
        assert_eq!(p.window_us(Awaits::Local), 0);
    }

    #[test]
    fn kind_of_work() {
        assert_eq!(Awaits::after(0), Awaits::Local);
        assert_eq!(Awaits::after(3), Awaits::Peer);
    }
}
