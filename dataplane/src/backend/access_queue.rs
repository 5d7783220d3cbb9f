//! The access port's queue (with the real-time lane, docs/qos.md): frames read eagerly
//! from the TAP wait here by class instead of in the kernel's ring, where a real-time frame
//! could not overtake. Real-time frames leave first; bulk ones after them, each with
//! CoDel's verdict on how long it waited. Sans-IO: buffers come and go through the caller,
//! time comes in as microseconds.

use std::collections::VecDeque;

use omni_proto::qos::{Class, ClassMap};

use crate::codel::Codel;

/// A frame read from the TAP, waiting.
pub struct Queued {
    pub buf: Box<[u8]>,
    pub len: usize,
    /// When it was read (monotonic µs): its wait is CoDel's measure.
    pub read_us: u64,
}

/// What [`AccessQueue::next`] hands on.
pub enum Served {
    RealTime {
        frame: Queued,
        waited_us: u64,
    },
    /// `congested`: CoDel picked it (the caller marks it CE or drops it).
    Bulk {
        frame: Queued,
        waited_us: u64,
        congested: bool,
    },
}

/// Bytes read ahead while no real-time frame came lately. With nothing to overtake, a deep
/// queue only costs: under a saturating TCP load it stands full (128 super-frames, ~8 MB),
/// and every frame is sealed milliseconds after it was read, from a cold cache (measured:
/// 10-20 % more CPU per GB at the sender). About four super-frames, or a pass's worth of
/// full-size frames, keeps the pipeline fed.
pub const SHALLOW_BYTES: usize = 256 << 10;
/// How long after the last real-time frame (read here, or received from a peer) the queue
/// keeps reading the TAP dry.
pub const REAL_TIME_RECENT_US: u64 = 1_000_000;

pub struct AccessQueue {
    classes: ClassMap,
    free: Vec<Box<[u8]>>,
    rt: VecDeque<Queued>,
    bulk: VecDeque<Queued>,
    /// Bytes of the frames queued.
    queued_bytes: usize,
    last_real_time_us: Option<u64>,
    codel: Codel,
}

impl AccessQueue {
    /// A queue of `slots` buffers of `slot_bytes` each, frames sorted by `classes`, bulk
    /// delay bounded by CoDel.
    pub fn new(
        classes: ClassMap,
        slots: usize,
        slot_bytes: usize,
        target_us: u64,
        interval_us: u64,
    ) -> Self {
        Self {
            classes,
            free: (0..slots).map(|_| vec![0u8; slot_bytes].into_boxed_slice()).collect(),
            rt: VecDeque::with_capacity(slots),
            bulk: VecDeque::with_capacity(slots),
            queued_bytes: 0,
            last_real_time_us: None,
            codel: Codel::new(target_us, interval_us),
        }
    }

    /// Whether a real-time frame came within [`REAL_TIME_RECENT_US`] of `now_us`: then the
    /// TAP is read dry, so the next one cannot wait behind bulk in the kernel's ring;
    /// otherwise only [`SHALLOW_BYTES`] are read ahead.
    pub fn real_time_lately(&self, now_us: u64) -> bool {
        self.last_real_time_us.is_some_and(|t| now_us.saturating_sub(t) < REAL_TIME_RECENT_US)
    }

    /// A real-time frame came (from a peer: its answer may follow on the access port).
    pub fn saw_real_time(&mut self, now_us: u64) {
        self.last_real_time_us = Some(now_us);
    }

    /// A buffer to read the next frame into. `None`: the queue is full; stop reading, and
    /// what comes next waits in the kernel's ring. (Dropping the oldest bulk frame to read
    /// on would only move the loss here, and spend the reads: measured, a UDP flow at the
    /// data plane's capacity lost a third of its datagrams that way.)
    /// Without real-time traffic lately, also `None` once [`SHALLOW_BYTES`] are queued.
    pub fn slot(&mut self, now_us: u64) -> Option<Box<[u8]>> {
        if self.queued_bytes >= SHALLOW_BYTES && !self.real_time_lately(now_us) {
            return None;
        }
        self.free.pop()
    }

    /// A buffer back, unused or done with.
    pub fn recycle(&mut self, buf: Box<[u8]>) {
        self.free.push(buf);
    }

    /// Queues the frame read into `buf[..len]` at `read_us`; the Ethernet frame starts at
    /// `frame_at` (after a virtio-net header).
    pub fn push(&mut self, buf: Box<[u8]>, len: usize, frame_at: usize, read_us: u64) {
        let class = self.classes.classify(buf.get(frame_at..len).unwrap_or(&[]));
        let frame = Queued { buf, len, read_us };
        self.queued_bytes += len;
        match class {
            Class::RealTime => {
                self.saw_real_time(read_us);
                self.rt.push_back(frame)
            }
            _ => self.bulk.push_back(frame),
        }
    }

    pub fn has_real_time(&self) -> bool {
        !self.rt.is_empty()
    }

    pub fn has_bulk(&self) -> bool {
        !self.bulk.is_empty()
    }

    /// The next frame to hand on at `now_us`: every real-time one before any bulk one.
    pub fn next(&mut self, now_us: u64) -> Option<Served> {
        if let Some(frame) = self.rt.pop_front() {
            self.queued_bytes -= frame.len;
            let waited_us = now_us.saturating_sub(frame.read_us);
            return Some(Served::RealTime { frame, waited_us });
        }
        let frame = self.bulk.pop_front()?;
        self.queued_bytes -= frame.len;
        let waited_us = now_us.saturating_sub(frame.read_us);
        let congested = self.codel.on_dequeue(now_us, waited_us, self.bulk.is_empty());
        Some(Served::Bulk { frame, waited_us, congested })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An untagged IPv4 frame with TOS `tos`, in a buffer of 64 bytes.
    fn frame(q: &mut AccessQueue, tos: u8, id: u8, read_us: u64) {
        let mut buf = q.slot(0).expect("room");
        buf[..14].copy_from_slice(&[0xff; 14]);
        buf[12..14].copy_from_slice(&[0x08, 0x00]);
        buf[14] = 0x45;
        buf[15] = tos;
        buf[16..34].fill(0);
        buf[34] = id;
        q.push(buf, 35, 0, read_us);
    }

    fn id(s: &Served) -> (bool, u8) {
        match s {
            Served::RealTime { frame, .. } => (true, frame.buf[34]),
            Served::Bulk { frame, .. } => (false, frame.buf[34]),
        }
    }

    #[test]
    fn real_time_frames_leave_before_every_bulk_frame_each_in_order() {
        let mut q = AccessQueue::new(ClassMap::default(), 8, 64, 500, 10_000);
        for (tos, n) in [(0, 1), (0x28, 2), (0xb8, 3), (0, 4), (0xc0, 5), (0x20, 6)] {
            frame(&mut q, tos, n, 0);
        }
        let mut order = vec![];
        while let Some(s) = q.next(10) {
            order.push(id(&s));
            let (Served::RealTime { frame, .. } | Served::Bulk { frame, .. }) = s;
            q.recycle(frame.buf);
        }
        let want = [(true, 3), (true, 5), (false, 1), (false, 2), (false, 4), (false, 6)];
        assert_eq!(order, want);
        assert!(!q.has_bulk() && !q.has_real_time());
    }

    #[test]
    fn a_full_queue_takes_no_more_until_a_frame_leaves() {
        let mut q = AccessQueue::new(ClassMap::default(), 2, 64, 500, 10_000);
        frame(&mut q, 0, 1, 0);
        frame(&mut q, 0xb8, 2, 0);
        assert!(q.slot(0).is_none(), "full: the caller stops reading");
        let Some(Served::RealTime { frame: f, .. }) = q.next(0) else { panic!("real time first") };
        q.recycle(f.buf);
        let buf = q.slot(0).expect("a slot again");
        q.push(buf, 0, 0, 0); // a runt: classified normal, queued as bulk
        assert_eq!(q.next(0).map(|s| id(&s)), Some((false, 1)));
        assert!(q.has_bulk(), "the runt waits behind it");
    }

    /// Without real-time traffic the queue reads only [`SHALLOW_BYTES`] ahead (frames are
    /// sealed while in cache); a real-time frame, read or received, makes it read the TAP
    /// dry for [`REAL_TIME_RECENT_US`].
    #[test]
    fn the_queue_reads_deep_only_while_real_time_traffic_flows() {
        const BIG: usize = 64 << 10;
        let mut q = AccessQueue::new(ClassMap::default(), 16, BIG + 64, 500, 10_000);
        let bulk = |q: &mut AccessQueue, now| {
            let buf = q.slot(now)?;
            q.push(buf, BIG, 0, now);
            Some(())
        };
        let mut n = 0;
        while bulk(&mut q, 5).is_some() {
            n += 1;
        }
        assert_eq!(n, SHALLOW_BYTES / BIG, "shallow: {n} super-frames");
        // The next real-time frame is read once a bulk one has left.
        let (Served::RealTime { frame: f, .. } | Served::Bulk { frame: f, .. }) =
            q.next(8).expect("queued");
        q.recycle(f.buf);
        frame(&mut q, 0xb8, 1, 10);
        assert!(q.real_time_lately(10));
        while bulk(&mut q, 20).is_some() {
            n += 1;
        }
        assert_eq!(n - 1 + 1, 16, "deep: every slot (one bulk frame left, one real-time came)");
        // A second later, shallow again: no slot until enough has left.
        let later = 10 + REAL_TIME_RECENT_US;
        assert!(!q.real_time_lately(later));
        let mut served = 0;
        while q.slot(later).map(|b| q.recycle(b)).is_none() {
            let (Served::RealTime { frame, .. } | Served::Bulk { frame, .. }) =
                q.next(later).expect("frames queued");
            q.recycle(frame.buf);
            served += 1;
        }
        assert_eq!(served, 16 - SHALLOW_BYTES / BIG + 1, "down to under {SHALLOW_BYTES} B");
        // A real-time datagram from a peer turns it deep too.
        q.saw_real_time(later);
        while bulk(&mut q, later).is_some() {}
        assert!(q.slot(later).is_none() && q.queued_bytes > SHALLOW_BYTES);
    }

    #[test]
    fn bulk_frames_standing_past_the_target_for_an_interval_are_picked_by_codel() {
        let mut q = AccessQueue::new(ClassMap::default(), 4, 64, 500, 10_000);
        let mut picked = vec![];
        // A standing queue of three: a frame in and one out every 100 µs, each having
        // waited 2 ms, for 30 ms.
        for _ in 0..3 {
            frame(&mut q, 0, 0, 0);
        }
        for t in (0..30_000).step_by(100) {
            frame(&mut q, 0, 0, t);
            let Some(Served::Bulk { frame, waited_us, congested }) = q.next(t + 2000) else {
                panic!("a bulk frame is queued")
            };
            assert!(waited_us >= 2000);
            if congested {
                picked.push(t);
            }
            q.recycle(frame.buf);
        }
        assert!(!picked.is_empty() && picked[0] >= 9_000, "after an interval: {picked:?}");
        // Real-time frames are never picked, however long they waited.
        frame(&mut q, 0xb8, 7, 0);
        assert!(matches!(q.next(1_000_000), Some(Served::RealTime { waited_us: 1_000_000, .. })));
    }
}
