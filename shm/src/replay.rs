//! Anti-replay window of 8192 counters (RFC 6479 style, as in WireGuard), lock-free and
//! shared: every worker that receives packets of a session checks and marks them in the
//! same window, which lives in the session's shared-memory slot (so a restarted data plane
//! also resumes it exactly).
//!
//! The window is a ring of 64-bit words, each covering 32 consecutive counters: the high
//! 32 bits are the word's *tag* (the counter divided by 32, which says which 32 counters the
//! word covers now), the low 32 bits a bitmap of those received. A counter is accepted by
//! one compare-and-swap on its word: setting its bit when the tag is its own, or replacing
//! an older tag with its own and only its bit. A word's tag only ever moves forward, so a
//! counter's bit, once set, stays set for as long as the word covers that counter: a
//! counter is accepted at most once, whatever the interleaving of workers (checked with
//! loom, `--cfg loom`). A separate high-water mark refuses counters older than the window.
//!
//! `check` runs before decryption (cheap reject, no state change); `update` runs after the
//! tag verified, so forged packets cannot move the window.
//!
//! A window whose session only one worker receives on ([`ReplayWindow::sole`]: one data
//! plane worker, the usual case) is updated with plain stores instead: the same words and
//! answers, without the two locked instructions per packet that sharing needs.

use omni_proto::constants::{REJECT_AFTER_MESSAGES, REPLAY_WINDOW_BITS};

use crate::sync::{AtomicU64, Ordering};

/// Counters covered by one word.
const WORD_COUNTERS: u64 = 32;
const BITS_MASK: u64 = (1 << WORD_COUNTERS) - 1;
/// Words of the window in a session slot.
pub const WORDS: usize = (REPLAY_WINDOW_BITS / WORD_COUNTERS) as usize;
/// How far behind the newest counter a packet may be and still be accepted once, for a
/// window of `words` words: the span of counters accepted must fit the ring with one
/// word to spare, so that no two live counters share a word.
pub const fn window_for(words: usize) -> u64 {
    words as u64 * WORD_COUNTERS - 2 * WORD_COUNTERS
}
/// The window of a session slot.
pub const WINDOW: u64 = window_for(WORDS);

/// A view of one session's window: `next` is one more than the greatest counter accepted
/// (0: none yet), `words` the ring.
#[derive(Clone, Copy)]
pub struct ReplayWindow<'a> {
    next: &'a AtomicU64,
    words: &'a [AtomicU64],
    window: u64,
    /// Only this thread updates the window (see [`ReplayWindow::sole`]).
    sole: bool,
}

enum Tag {
    /// The word covers older counters: it may be taken over.
    Older,
    Same,
    /// The word already covers newer counters: this one is too old.
    Newer,
}

impl<'a> ReplayWindow<'a> {
    /// `words` must not be empty; its length sets the window ([`window_for`]).
    pub fn new(next: &'a AtomicU64, words: &'a [AtomicU64]) -> Self {
        assert!(words.len() >= 4, "a replay window needs at least four words");
        Self { next, words, window: window_for(words.len()), sole: false }
    }

    /// The same window for a caller that is the only one to update it while it uses this
    /// view (no other worker receives on the session): updates are plain stores. Any
    /// number of threads may still `check` it.
    pub fn sole(self) -> Self {
        Self { sole: true, ..self }
    }

    /// Empties the window (a new session takes the slot). Only while no other worker can
    /// use it (the slot is being claimed).
    pub fn reset(&self) {
        for w in self.words {
            w.store(0, Ordering::Relaxed);
        }
        self.next.store(0, Ordering::Relaxed);
    }

    /// The greatest counter accepted so far.
    pub fn max_accepted(&self) -> Option<u64> {
        self.next.load(Ordering::Relaxed).checked_sub(1)
    }

    #[inline]
    fn position(&self, counter: u64) -> (&'a AtomicU64, u32, u64) {
        let word = counter / WORD_COUNTERS;
        let slot = &self.words[(word % self.words.len() as u64) as usize];
        (slot, word as u32, 1 << (counter % WORD_COUNTERS))
    }

    /// How the word `held` relates to the counter's word `tag`. `far_ahead`: the counter is
    /// so far past every one accepted (when the window was read) that a word with its
    /// truncated tag can only be an older one that happens to share it.
    #[inline]
    fn compare(held: u64, tag: u32, far_ahead: bool) -> Tag {
        if held & BITS_MASK == 0 || far_ahead {
            // Nothing accepted in it (a new window), or older: nothing to lose by taking it.
            return Tag::Older;
        }
        // Tags wrap after 2^37 counters; within 2^31 words of each other (a sender moves
        // through its counters in order, in blocks) the signed distance orders them.
        match (tag.wrapping_sub((held >> 32) as u32)) as i32 {
            0 => Tag::Same,
            d if d > 0 => Tag::Older,
            _ => Tag::Newer,
        }
    }

    /// `Some(far_ahead)` when `counter` is not past the limit and not older than the
    /// window; `far_ahead`: it is more than 2^30 words past the newest counter accepted.
    #[inline]
    fn in_range(&self, counter: u64) -> Option<bool> {
        let next = self.next.load(Ordering::Relaxed);
        (counter < REJECT_AFTER_MESSAGES && counter + 1 + self.window >= next)
            .then(|| counter / WORD_COUNTERS >= (next / WORD_COUNTERS).saturating_add(1 << 30))
    }

    /// Whether `counter` could be accepted (not too old, not seen, not past the limit).
    #[inline]
    pub fn check(&self, counter: u64) -> bool {
        let Some(far_ahead) = self.in_range(counter) else { return false };
        let (word, tag, bit) = self.position(counter);
        let held = word.load(Ordering::Relaxed);
        match Self::compare(held, tag, far_ahead) {
            Tag::Older => true,
            Tag::Same => held & bit == 0,
            Tag::Newer => false,
        }
    }

    /// Marks `counter` as received. Returns false if it was a replay (or too old).
    #[inline]
    pub fn update(&self, counter: u64) -> bool {
        let Some(far_ahead) = self.in_range(counter) else { return false };
        let (word, tag, bit) = self.position(counter);
        let mut held = word.load(Ordering::Relaxed);
        loop {
            let new = match Self::compare(held, tag, far_ahead) {
                Tag::Older => (tag as u64) << 32 | bit,
                Tag::Same if held & bit == 0 => held | bit,
                Tag::Same | Tag::Newer => return false,
            };
            if self.sole {
                // Nobody else writes the word: what was read is still there.
                word.store(new, Ordering::Relaxed);
                break;
            }
            match word.compare_exchange_weak(held, new, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => held = now,
            }
        }
        if counter + 1 > self.next.load(Ordering::Relaxed) {
            if self.sole {
                self.next.store(counter + 1, Ordering::Relaxed);
            } else {
                self.next.fetch_max(counter + 1, Ordering::Relaxed);
            }
        }
        true
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    struct Owned {
        next: AtomicU64,
        words: Vec<AtomicU64>,
    }

    impl Owned {
        fn new() -> Self {
            Self { next: AtomicU64::new(0), words: (0..WORDS).map(|_| AtomicU64::new(0)).collect() }
        }
        fn w(&self) -> ReplayWindow<'_> {
            ReplayWindow::new(&self.next, &self.words)
        }
    }

    /// Runs a single-threaded test on a shared view and on a sole one: both must answer
    /// alike.
    fn both(test: impl Fn(ReplayWindow<'_>)) {
        for sole in [false, true] {
            let o = Owned::new();
            let w = o.w();
            test(if sole { w.sole() } else { w });
        }
    }

    #[test]
    fn accepts_in_order_and_rejects_duplicates() {
        both(|w| {
            for c in 0..20_000 {
                assert!(w.update(c), "{c}");
                assert!(!w.update(c), "{c} twice");
            }
            assert_eq!(w.max_accepted(), Some(19_999));
        });
    }

    #[test]
    fn accepts_reordering_within_window_once() {
        both(|w| {
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
        });
    }

    #[test]
    fn big_jump_clears_the_window() {
        both(|w| {
            for c in 0..100 {
                w.update(c);
            }
            assert!(w.update(1_000_000));
            assert!(w.update(1_000_000 - 1));
            assert!(w.update(1_000_000 - 50));
            assert!(!w.update(99));
        });
    }

    #[test]
    fn check_does_not_mutate() {
        both(|w| {
            assert!(w.check(5));
            assert!(w.check(5));
            assert!(w.update(5));
            assert!(!w.check(5));
        });
    }

    #[test]
    fn limit_is_enforced() {
        both(|w| {
            assert!(!w.update(REJECT_AFTER_MESSAGES));
            assert!(!w.update(u64::MAX));
            assert!(w.update(REJECT_AFTER_MESSAGES - 1));
        });
    }

    /// A counter 2^62 past the window shares a word's truncated tag with one inside it
    /// (a forged counter; no sender jumps like that): it is still unseen, so it goes on to
    /// the AEAD, and were it genuine it would be accepted once.
    #[test]
    fn a_counter_far_ahead_is_unseen_whatever_its_truncated_tag() {
        both(|w| {
            for c in 0..40 {
                assert!(w.update(c));
            }
            let far = (1u64 << 62) + 5;
            assert!(w.check(far), "never seen");
            assert!(w.update(far));
            assert!(!w.update(far), "once");
            assert!(!w.update(5), "far behind now");
        });
    }

    #[test]
    fn reset_empties_it() {
        both(|w| {
            for c in 0..500 {
                assert!(w.update(c));
            }
            w.reset();
            assert_eq!(w.max_accepted(), None);
            assert!(w.update(3));
        });
    }

    /// Against a model (a set), for pseudo-random bursts with reordering: inside the
    /// window the answer is exact; a counter older than the window is always refused.
    #[test]
    fn matches_a_set_model() {
        both(|w| {
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
        });
    }

    /// Several threads offered the same counters in different orders: each counter is
    /// accepted exactly once in all.
    #[test]
    fn threads_accept_each_counter_once() {
        let o = Owned::new();
        let total = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (o, total) = (&o, &total);
                s.spawn(move || {
                    let w = o.w();
                    let mut n = 0;
                    for i in 0..50_000u64 {
                        // Each thread walks the counters with its own small reordering.
                        let c = i ^ (t * 5);
                        n += w.update(c) as u64;
                    }
                    total.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                });
            }
        });
        // Counters 0..50_000 (the XOR permutes within blocks of 8): each once, unless it
        // fell out of the window before its first offer (never, at this spread).
        assert_eq!(total.load(std::sync::atomic::Ordering::Relaxed), 50_000);
    }
}

/// Model checks: whatever the interleaving, a counter is accepted at most once, also
/// while another worker moves the window over its word.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    fn window() -> Arc<(AtomicU64, Vec<AtomicU64>)> {
        Arc::new((AtomicU64::new(0), (0..4).map(|_| AtomicU64::new(0)).collect()))
    }

    #[test]
    fn same_counter_twice_is_accepted_once() {
        loom::model(|| {
            let s = window();
            let s2 = s.clone();
            let t = loom::thread::spawn(move || ReplayWindow::new(&s2.0, &s2.1).update(7));
            let a = ReplayWindow::new(&s.0, &s.1).update(7);
            let b = t.join().unwrap();
            assert!(a ^ b, "accepted {a} {b}");
        });
    }

    #[test]
    fn a_counter_is_not_accepted_again_while_the_window_moves() {
        loom::model(|| {
            let s = window();
            let w = ReplayWindow::new(&s.0, &s.1);
            assert!(w.update(3));
            let s2 = s.clone();
            // Counter 3 + 128 shares counter 3's word (four words of 32): the window moves.
            let t = loom::thread::spawn(move || ReplayWindow::new(&s2.0, &s2.1).update(3 + 128));
            let again = w.update(3);
            assert!(t.join().unwrap());
            assert!(!again);
            assert!(!w.update(3));
        });
    }
}
