//! Anti-replay window of 8192 bits (RFC 6479 style, as in WireGuard).
//!
//! The bitmap is a ring of 64-bit words; moving the window forward clears whole words
//! instead of shifting bits, so advancing costs at most one pass over the bitmap and usually
//! one word. One word of the ring is always "ahead" of the window, so the usable window is
//! 8192 - 64 counters behind the newest.
//!
//! `check` runs before decryption (cheap reject of stale counters, no state change);
//! `update` runs after the tag verified, so forged packets cannot move the window.

use omni_proto::constants::{REJECT_AFTER_MESSAGES, REPLAY_WINDOW_BITS};

const WORD_BITS: u64 = 64;
const WORDS: usize = (REPLAY_WINDOW_BITS / WORD_BITS) as usize;
/// How far behind the newest counter a packet may be and still be accepted once.
pub const WINDOW: u64 = REPLAY_WINDOW_BITS - WORD_BITS;

#[derive(Clone)]
pub struct ReplayWindow {
    /// One more than the greatest counter accepted (0 = none yet), so counter 0 is usable.
    next: u64,
    bitmap: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self { next: 0, bitmap: [0; WORDS] }
    }
}

impl ReplayWindow {
    /// A window that rejects every counter up to and including `max` (used when a restarted
    /// data plane resumes a session whose receive state it lost: anything it might already
    /// have delivered is refused).
    pub fn rejecting_through(max: u64) -> Self {
        Self { next: max.saturating_add(1), bitmap: [u64::MAX; WORDS] }
    }

    /// The greatest counter accepted so far.
    pub fn max_accepted(&self) -> Option<u64> {
        self.next.checked_sub(1)
    }

    /// Whether `counter` could be accepted (not too old, not seen, not past the limit).
    #[inline]
    pub fn check(&self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        let c = counter + 1;
        if c + WINDOW < self.next {
            return false;
        }
        if c > self.next {
            return true;
        }
        let (word, bit) = Self::position(c);
        self.bitmap[word] & (1 << bit) == 0
    }

    /// Marks `counter` as received. Returns false if it was a replay (or too old).
    #[inline]
    pub fn update(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        let c = counter + 1;
        if c > self.next {
            let cur = self.next / WORD_BITS;
            let new = c / WORD_BITS;
            let advance = (new - cur).min(WORDS as u64);
            for i in 1..=advance {
                self.bitmap[((cur + i) % WORDS as u64) as usize] = 0;
            }
            self.next = c;
        }
        let (word, bit) = Self::position(c);
        self.bitmap[word] |= 1 << bit;
        true
    }

    #[inline]
    fn position(c: u64) -> (usize, u64) {
        (((c / WORD_BITS) % WORDS as u64) as usize, c % WORD_BITS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_in_order_and_rejects_duplicates() {
        let mut w = ReplayWindow::default();
        for c in 0..20_000 {
            assert!(w.update(c), "{c}");
            assert!(!w.update(c), "{c} twice");
        }
        assert_eq!(w.max_accepted(), Some(19_999));
    }

    #[test]
    fn accepts_reordering_within_window_once() {
        let mut w = ReplayWindow::default();
        assert!(w.update(10_000));
        assert!(w.update(10_000 - WINDOW + 1));
        assert!(!w.update(10_000 - WINDOW + 1));
        assert!(!w.check(10_000 - WINDOW - 1));
        assert!(!w.update(10_000 - WINDOW - 1));
        for c in (9_000..10_000).rev() {
            assert!(w.update(c));
        }
        for c in 9_000..=10_000 {
            assert!(!w.update(c));
        }
    }

    #[test]
    fn big_jump_clears_the_window() {
        let mut w = ReplayWindow::default();
        for c in 0..100 {
            w.update(c);
        }
        assert!(w.update(1_000_000));
        assert!(w.update(1_000_000 - 1));
        assert!(w.update(1_000_000 - 50));
        assert!(!w.update(99));
    }

    #[test]
    fn check_does_not_mutate() {
        let mut w = ReplayWindow::default();
        assert!(w.check(5));
        assert!(w.check(5));
        assert!(w.update(5));
        assert!(!w.check(5));
    }

    #[test]
    fn limit_is_enforced() {
        let mut w = ReplayWindow::default();
        assert!(!w.update(REJECT_AFTER_MESSAGES));
        assert!(!w.update(u64::MAX));
        assert!(w.update(REJECT_AFTER_MESSAGES - 1));
    }

    #[test]
    fn resumed_window_rejects_everything_delivered() {
        let mut w = ReplayWindow::rejecting_through(500);
        for c in 0..=500 {
            assert!(!w.update(c), "{c}");
        }
        assert!(w.update(501));
        assert!(w.update(600));
        assert!(w.update(550));
        assert!(!w.update(550));
    }

    /// Against a model (a set), for pseudo-random bursts with reordering.
    #[test]
    fn matches_a_set_model() {
        let mut w = ReplayWindow::default();
        let mut seen = std::collections::BTreeSet::new();
        let mut max: i64 = -1;
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let jitter = (x % 9000) as i64 - 8500;
            let c = (max + jitter).max(0) as u64;
            let expect = !seen.contains(&c) && (c as i64) + (WINDOW as i64) >= max;
            assert_eq!(w.update(c), expect, "counter {c} max {max}");
            if expect {
                seen.insert(c);
                max = max.max(c as i64);
            }
        }
    }
}
