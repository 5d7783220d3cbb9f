//! Single-producer single-consumer ring of fixed-size slots, for shared memory.
//!
//! The indices are free-running `u64`s in their own cache lines; slot `i` is `i & mask`.
//! The producer writes a slot, then publishes it with a release store of `head`; the
//! consumer acquires `head`, reads the slot, then releases it with a store of `tail`. Each
//! side caches the other's index and re-reads it only when the cached value says the ring is
//! full (producer) or empty (consumer), so a burst costs one shared load per side.
//!
//! The other process may be buggy or gone, so every index read from shared memory is
//! checked: a distance above capacity is corruption, reported as [`RingError::Corrupt`],
//! never trusted for memory access. Slot contents are bounds-checked by their readers.
//!
//! The memory ordering is checked with loom (`tests` below, `--cfg loom`) and across real
//! processes by `tests/ring_cross_process.rs`.

use crate::sync::{AtomicU64, CachePadded, Ordering};

/// Producer and consumer indices of one ring, as they lie in shared memory.
#[repr(C)]
#[derive(Default)]
pub struct RingCtl {
    /// Next index the producer writes. Written only by the producer.
    pub head: CachePadded<AtomicU64>,
    /// Next index the consumer reads. Written only by the consumer.
    pub tail: CachePadded<AtomicU64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("ring full")]
    Full,
    #[error("ring indices corrupt (head {head}, tail {tail}, capacity {cap})")]
    Corrupt { head: u64, tail: u64, cap: u64 },
    #[error("record of {len} bytes does not fit a {slot}-byte slot")]
    TooLarge { len: usize, slot: usize },
}

/// Storage for the slots. Implemented over raw shared memory and, for loom, over
/// loom-tracked cells.
///
/// # Safety
/// Implementations must hand out slot `i`'s bytes (`slot_size` of them) and nothing else,
/// and each slot must not overlap another.
pub unsafe trait Slots {
    fn slot_size(&self) -> usize;
    fn capacity(&self) -> u64;
    /// # Safety
    /// The caller must have exclusive access to slot `i` (the producer before publishing).
    unsafe fn with_mut<R>(&self, i: u64, f: impl FnOnce(&mut [u8]) -> R) -> R;
    /// # Safety
    /// The caller must have shared access to slot `i` (the consumer before releasing).
    unsafe fn with<R>(&self, i: u64, f: impl FnOnce(&[u8]) -> R) -> R;
}

/// The producing end. Exactly one may exist per ring (across all processes).
pub struct Producer<'a, S: Slots> {
    ctl: &'a RingCtl,
    slots: S,
    head: u64,
    cached_tail: u64,
}

/// The consuming end. Exactly one may exist per ring (across all processes).
pub struct Consumer<'a, S: Slots> {
    ctl: &'a RingCtl,
    slots: S,
    tail: u64,
    cached_head: u64,
}

fn check(head: u64, tail: u64, cap: u64) -> Result<u64, RingError> {
    let used = head.wrapping_sub(tail);
    if used > cap { Err(RingError::Corrupt { head, tail, cap }) } else { Ok(used) }
}

impl<'a, S: Slots> Producer<'a, S> {
    /// Takes over the producing end, continuing from the index in shared memory (so a
    /// restarted process resumes where its predecessor stopped).
    pub fn attach(ctl: &'a RingCtl, slots: S) -> Self {
        debug_assert!(slots.capacity().is_power_of_two());
        let head = ctl.head.load(Ordering::Relaxed);
        let cached_tail = ctl.tail.load(Ordering::Acquire);
        Self { ctl, slots, head, cached_tail }
    }

    pub fn slot_size(&self) -> usize {
        self.slots.slot_size()
    }

    /// Writes one record with `fill`, which gets the whole slot and returns how many bytes
    /// it used (the record must carry its own length). Publishes it at once.
    pub fn push_with(&mut self, fill: impl FnOnce(&mut [u8])) -> Result<(), RingError> {
        let cap = self.slots.capacity();
        if check(self.head, self.cached_tail, cap)? == cap {
            self.cached_tail = self.ctl.tail.load(Ordering::Acquire);
            if check(self.head, self.cached_tail, cap)? == cap {
                return Err(RingError::Full);
            }
        }
        // SAFETY: slots in [tail, tail+cap) other than those in [tail, head) belong to the
        // producer; `head` is in that range because used < cap was checked above.
        unsafe { self.slots.with_mut(self.head & (cap - 1), fill) };
        self.head = self.head.wrapping_add(1);
        self.ctl.head.store(self.head, Ordering::Release);
        Ok(())
    }

    /// Copies `bytes` into a slot.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), RingError> {
        let slot = self.slots.slot_size();
        if bytes.len() > slot {
            return Err(RingError::TooLarge { len: bytes.len(), slot });
        }
        self.push_with(|s| s[..bytes.len()].copy_from_slice(bytes))
    }

    /// Whether one more record fits now.
    pub fn has_room(&mut self) -> bool {
        self.pending() < self.slots.capacity()
    }

    /// Records waiting to be consumed, as far as this side knows.
    pub fn pending(&mut self) -> u64 {
        self.cached_tail = self.ctl.tail.load(Ordering::Acquire);
        self.head.wrapping_sub(self.cached_tail)
    }
}

impl<'a, S: Slots> Consumer<'a, S> {
    /// Takes over the consuming end, continuing from the index in shared memory.
    pub fn attach(ctl: &'a RingCtl, slots: S) -> Self {
        debug_assert!(slots.capacity().is_power_of_two());
        let tail = ctl.tail.load(Ordering::Relaxed);
        let cached_head = ctl.head.load(Ordering::Acquire);
        Self { ctl, slots, tail, cached_head }
    }

    /// Reads the oldest record with `read` and releases its slot. `Ok(None)` when empty.
    pub fn pop_with<R>(
        &mut self,
        read: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<Option<R>, RingError> {
        let cap = self.slots.capacity();
        if check(self.cached_head, self.tail, cap)? == 0 {
            self.cached_head = self.ctl.head.load(Ordering::Acquire);
            if let Err(e) = check(self.cached_head, self.tail, cap) {
                // A corrupt head must not make us read garbage forever: skip to it.
                self.resync();
                return Err(e);
            }
            if self.cached_head == self.tail {
                return Ok(None);
            }
        }
        // SAFETY: slots in [tail, head) were published by the producer (acquire above) and
        // stay untouched by it until we advance `tail`. The consumer is the only reader;
        // `read` may scrub the slot (keys), which is why it gets `&mut`.
        let r = unsafe { self.slots.with_mut(self.tail & (cap - 1), read) };
        self.tail = self.tail.wrapping_add(1);
        self.ctl.tail.store(self.tail, Ordering::Release);
        Ok(Some(r))
    }

    /// Whether a record is waiting (one shared load).
    pub fn is_empty(&mut self) -> bool {
        self.cached_head = self.ctl.head.load(Ordering::Acquire);
        self.cached_head == self.tail
    }

    /// Drops everything queued and realigns with the producer (after corruption).
    pub fn resync(&mut self) {
        self.cached_head = self.ctl.head.load(Ordering::Acquire);
        self.tail = self.cached_head;
        self.ctl.tail.store(self.tail, Ordering::Release);
    }
}

/// Slots over raw memory (shared memory in production, a heap buffer in tests).
#[derive(Clone, Copy)]
pub struct RawSlots {
    base: *mut u8,
    slot_size: usize,
    capacity: u64,
}

// SAFETY: the pointer refers to memory that outlives every user (the mapped region), and the
// ring protocol gives each slot a single accessor at a time.
unsafe impl Send for RawSlots {}

impl RawSlots {
    /// # Safety
    /// `base` must point to `slot_size * capacity` bytes valid for the lifetime of every
    /// ring built over them, used by nothing else; `capacity` must be a power of two.
    pub unsafe fn new(base: *mut u8, slot_size: usize, capacity: u64) -> Self {
        Self { base, slot_size, capacity }
    }
}

// SAFETY: slot i is the i-th `slot_size` chunk of the buffer; chunks do not overlap and
// i < capacity is guaranteed by the masking in the ring.
unsafe impl Slots for RawSlots {
    fn slot_size(&self) -> usize {
        self.slot_size
    }
    fn capacity(&self) -> u64 {
        self.capacity
    }
    unsafe fn with_mut<R>(&self, i: u64, f: impl FnOnce(&mut [u8]) -> R) -> R {
        debug_assert!(i < self.capacity);
        // SAFETY: in bounds (i < capacity) and exclusively ours per the caller's contract.
        let s = unsafe {
            std::slice::from_raw_parts_mut(
                self.base.add(i as usize * self.slot_size),
                self.slot_size,
            )
        };
        f(s)
    }
    unsafe fn with<R>(&self, i: u64, f: impl FnOnce(&[u8]) -> R) -> R {
        debug_assert!(i < self.capacity);
        // SAFETY: in bounds, and not written while shared per the caller's contract.
        let s = unsafe {
            std::slice::from_raw_parts(self.base.add(i as usize * self.slot_size), self.slot_size)
        };
        f(s)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn ring(cap: u64, slot: usize) -> (Box<RingCtl>, Vec<u8>) {
        (Box::default(), vec![0u8; cap as usize * slot])
    }

    #[test]
    fn fifo_order_and_capacity() {
        let (ctl, mut mem) = ring(4, 8);
        // SAFETY: `mem` outlives the ring ends below.
        let slots = unsafe { RawSlots::new(mem.as_mut_ptr(), 8, 4) };
        let mut p = Producer::attach(&ctl, slots);
        let mut c = Consumer::attach(&ctl, slots);
        assert_eq!(c.pop_with(|s| s[0]).unwrap(), None);
        for i in 0..4u8 {
            p.push(&[i]).unwrap();
        }
        assert_eq!(p.push(&[9]), Err(RingError::Full));
        assert_eq!(p.pending(), 4);
        for i in 0..4u8 {
            assert_eq!(c.pop_with(|s| s[0]).unwrap(), Some(i));
        }
        assert!(c.is_empty());
        assert_eq!(p.push(&[0; 9]), Err(RingError::TooLarge { len: 9, slot: 8 }));
    }

    #[test]
    fn wraps_many_times() {
        let (ctl, mut mem) = ring(8, 8);
        // SAFETY: `mem` outlives the ring ends below.
        let slots = unsafe { RawSlots::new(mem.as_mut_ptr(), 8, 8) };
        let mut p = Producer::attach(&ctl, slots);
        let mut c = Consumer::attach(&ctl, slots);
        let mut next = 0u64;
        for round in 0..1000u64 {
            for k in 0..(round % 8) + 1 {
                p.push(&(round * 8 + k).to_le_bytes()).unwrap();
            }
            while let Some(v) =
                c.pop_with(|s| u64::from_le_bytes(s[..8].try_into().unwrap())).unwrap()
            {
                assert!(v >= next);
                next = v + 1;
            }
        }
    }

    #[test]
    fn resumes_after_reattach() {
        let (ctl, mut mem) = ring(4, 8);
        // SAFETY: `mem` outlives the ring ends below.
        let slots = unsafe { RawSlots::new(mem.as_mut_ptr(), 8, 4) };
        {
            let mut p = Producer::attach(&ctl, slots);
            p.push(&[1]).unwrap();
            p.push(&[2]).unwrap();
        }
        {
            let mut c = Consumer::attach(&ctl, slots);
            assert_eq!(c.pop_with(|s| s[0]).unwrap(), Some(1));
        }
        let mut p = Producer::attach(&ctl, slots);
        p.push(&[3]).unwrap();
        let mut c = Consumer::attach(&ctl, slots);
        assert_eq!(c.pop_with(|s| s[0]).unwrap(), Some(2));
        assert_eq!(c.pop_with(|s| s[0]).unwrap(), Some(3));
    }

    #[test]
    fn corrupt_indices_are_reported_not_followed() {
        let (ctl, mut mem) = ring(4, 8);
        // SAFETY: `mem` outlives the ring ends below.
        let slots = unsafe { RawSlots::new(mem.as_mut_ptr(), 8, 4) };
        let mut c = Consumer::attach(&ctl, slots);
        ctl.head.store(1000, Ordering::Release);
        assert!(matches!(c.pop_with(|s| s[0]), Err(RingError::Corrupt { .. })));
        // After the error the consumer has resynchronised and reads new records again.
        let mut p = Producer::attach(&ctl, slots);
        p.push(&[7]).unwrap();
        assert_eq!(c.pop_with(|s| s[0]).unwrap(), Some(7));
        ctl.tail.store(5000, Ordering::Release);
        let mut p = Producer::attach(&ctl, slots);
        assert!(matches!(p.push(&[1]), Err(RingError::Corrupt { .. })));
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;

    struct LoomSlots {
        cells: Arc<Vec<UnsafeCell<[u8; 8]>>>,
    }

    // SAFETY: each cell is one slot; loom checks the accesses for races.
    unsafe impl Slots for LoomSlots {
        fn slot_size(&self) -> usize {
            8
        }
        fn capacity(&self) -> u64 {
            self.cells.len() as u64
        }
        unsafe fn with_mut<R>(&self, i: u64, f: impl FnOnce(&mut [u8]) -> R) -> R {
            // SAFETY: loom tracks this access and fails the test on a race.
            self.cells[i as usize].with_mut(|p| f(unsafe { &mut *p }))
        }
        unsafe fn with<R>(&self, i: u64, f: impl FnOnce(&[u8]) -> R) -> R {
            // SAFETY: as above.
            self.cells[i as usize].with(|p| f(unsafe { &*p }))
        }
    }

    /// The producer fills and wraps a 2-slot ring while the consumer drains it: every value
    /// arrives once, in order, and loom finds no data race on the slots.
    #[test]
    fn spsc_transfers_in_order_without_races() {
        loom::model(|| {
            let ctl = Arc::new(RingCtl::default());
            let cells = Arc::new((0..2).map(|_| UnsafeCell::new([0u8; 8])).collect::<Vec<_>>());
            let (pc, pcells) = (ctl.clone(), cells.clone());
            let producer = loom::thread::spawn(move || {
                let mut p = Producer::attach(&pc, LoomSlots { cells: pcells });
                let mut sent = 0u8;
                while sent < 3 {
                    match p.push(&[sent + 1]) {
                        Ok(()) => sent += 1,
                        Err(RingError::Full) => loom::thread::yield_now(),
                        Err(e) => panic!("{e}"),
                    }
                }
            });
            let mut c = Consumer::attach(&ctl, LoomSlots { cells });
            let mut expect = 1u8;
            while expect <= 3 {
                match c.pop_with(|s| s[0]).unwrap() {
                    Some(v) => {
                        assert_eq!(v, expect);
                        expect += 1;
                    }
                    None => loom::thread::yield_now(),
                }
            }
            producer.join().unwrap();
        });
    }

    /// A consumer that re-attaches (a restarted process) continues exactly where the
    /// previous one stopped.
    #[test]
    fn reattached_consumer_continues() {
        loom::model(|| {
            let ctl = Arc::new(RingCtl::default());
            let cells = Arc::new((0..2).map(|_| UnsafeCell::new([0u8; 8])).collect::<Vec<_>>());
            let (pc, pcells) = (ctl.clone(), cells.clone());
            let producer = loom::thread::spawn(move || {
                let mut p = Producer::attach(&pc, LoomSlots { cells: pcells });
                for v in 1..=2u8 {
                    while p.push(&[v]) == Err(RingError::Full) {
                        loom::thread::yield_now();
                    }
                }
            });
            let mut got = Vec::new();
            while got.is_empty() {
                let mut c = Consumer::attach(&ctl, LoomSlots { cells: cells.clone() });
                if let Some(v) = c.pop_with(|s| s[0]).unwrap() {
                    got.push(v);
                } else {
                    loom::thread::yield_now();
                }
            }
            while got.len() < 2 {
                let mut c = Consumer::attach(&ctl, LoomSlots { cells: cells.clone() });
                match c.pop_with(|s| s[0]).unwrap() {
                    Some(v) => got.push(v),
                    None => loom::thread::yield_now(),
                }
            }
            assert_eq!(got, vec![1, 2]);
            producer.join().unwrap();
        });
    }
}
