//! CoDel (RFC 8289): a queue bounded by how long packets wait in it, not by how many there
//! are. Sans-IO: time comes in as microseconds; the caller asks at each dequeue whether
//! the packet it took is dropped. Used on the access port's bulk queue, where the data
//! plane knows when each frame was read (so the wait is exact), to keep the standing queue
//! that a TCP flow builds near `target` instead of at the size of the buffers.

use omni_proto::qos;
use omni_shm::counters::{Counter, DropReason, WorkerCounters};

/// CoDel's state for one queue.
#[derive(Debug, Clone)]
pub struct Codel {
    /// Acceptable standing delay.
    pub target_us: u64,
    /// How long the delay must stay above target before dropping starts (about a round
    /// trip of the flows in the queue).
    pub interval_us: u64,
    /// When the delay went above target and the interval will have passed, if it is above.
    first_above: Option<u64>,
    dropping: bool,
    drop_next: u64,
    count: u32,
    last_count: u32,
}

impl Codel {
    pub fn new(target_us: u64, interval_us: u64) -> Self {
        Self {
            target_us,
            interval_us: interval_us.max(1),
            first_above: None,
            dropping: false,
            drop_next: 0,
            count: 0,
            last_count: 0,
        }
    }

    /// The next drop time: drops come closer as `interval / sqrt(count)` while the delay
    /// stays high.
    fn control_law(&self, t: u64) -> u64 {
        t + (self.interval_us as f64 / (self.count.max(1) as f64).sqrt()) as u64
    }

    /// A packet left the queue at `now_us` after waiting `sojourn_us`; `backlog_small`: what
    /// remains is at most one packet's worth (a queue that drains is not a standing one).
    /// Returns whether to drop it.
    pub fn on_dequeue(&mut self, now_us: u64, sojourn_us: u64, backlog_small: bool) -> bool {
        let ok_to_drop = self.ok_to_drop(now_us, sojourn_us, backlog_small);
        if self.dropping {
            if !ok_to_drop {
                self.dropping = false;
                return false;
            }
            if now_us >= self.drop_next {
                self.count = self.count.saturating_add(1);
                self.drop_next = self.control_law(self.drop_next);
                return true;
            }
            return false;
        }
        if !ok_to_drop {
            return false;
        }
        self.dropping = true;
        // Dropping again soon after the last episode: start where it left off.
        let delta = self.count.saturating_sub(self.last_count);
        let recent = now_us.saturating_sub(self.drop_next) < 16 * self.interval_us;
        self.count = if delta > 1 && recent { delta } else { 1 };
        self.last_count = self.count;
        self.drop_next = self.control_law(now_us);
        true
    }

    fn ok_to_drop(&mut self, now_us: u64, sojourn_us: u64, backlog_small: bool) -> bool {
        if sojourn_us < self.target_us || backlog_small {
            self.first_above = None;
            return false;
        }
        match self.first_above {
            None => {
                self.first_above = Some(now_us + self.interval_us);
                false
            }
            Some(t) => now_us >= t,
        }
    }

    /// Whether it is in a dropping episode.
    pub fn dropping(&self) -> bool {
        self.dropping
    }
}

/// CoDel picked `frame`, of `class`: an ECN-capable IP frame is marked CE (RFC 8289
/// section 5: mark rather than drop), anything else is dropped (counted by reason and
/// class). Returns whether it goes on.
pub fn mark_congested(frame: &mut [u8], class: qos::Class, counters: &WorkerCounters) -> bool {
    let ect = qos::inner_tos(frame).is_some_and(|t| t.value & qos::ecn::MASK != 0);
    if ect && qos::apply_outer_ecn(frame, qos::ecn::CE) {
        counters.inc(Counter::QueueCeMarked, 1);
        true
    } else {
        counters.drop(DropReason::QueueDelay);
        if let Some(c) = Counter::queue_dropped(class) {
            counters.inc(c, 1);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_queue_is_never_dropped() {
        let mut c = Codel::new(1000, 10_000);
        for t in 0..10_000 {
            assert!(!c.on_dequeue(t * 10, 999, false));
        }
        // Above target but draining (at most one packet left): no drop either.
        for t in 0..10_000 {
            assert!(!c.on_dequeue(200_000 + t * 10, 5000, true));
        }
    }

    #[test]
    fn a_standing_queue_is_dropped_after_an_interval_then_faster_and_faster() {
        let mut c = Codel::new(1000, 10_000);
        let mut drops = vec![];
        // A packet every 10 µs, each having waited 3 ms, for 100 ms.
        for t in (0..100_000).step_by(10) {
            if c.on_dequeue(t, 3000, false) {
                drops.push(t);
            }
        }
        assert_eq!(drops[0], 10_000, "the first drop comes one interval after the delay rose");
        let gaps: Vec<u64> = drops.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.windows(2).all(|g| g[1] <= g[0]), "drops come closer: {gaps:?}");
        assert!((gaps[0] as i64 - 10_000).abs() <= 10, "then interval/sqrt(2): {gaps:?}");
        assert!(c.dropping());
        // The delay falls below target: the episode ends, nothing more is dropped.
        assert!(!c.on_dequeue(100_010, 500, false));
        assert!(!c.dropping());
        assert!(!c.on_dequeue(100_020, 3000, false), "an interval must pass again");
    }

    #[test]
    fn a_new_episode_soon_after_the_last_starts_at_its_drop_rate() {
        let mut c = Codel::new(1000, 10_000);
        let mut t = 0;
        while t < 60_000 {
            c.on_dequeue(t, 3000, false);
            t += 10;
        }
        let count = c.count;
        assert!(count > 3, "{count}");
        c.on_dequeue(t, 0, false);
        // The delay rises again at once: after one interval, dropping resumes near the
        // old count rather than at 1.
        let mut first = None;
        while first.is_none() {
            t += 10;
            if c.on_dequeue(t, 3000, false) {
                first = Some(t);
            }
        }
        assert!(c.count > 1, "restarted at {}", c.count);
    }
}
