//! The access port's queue (with the real-time lane, docs/qos.md): frames read eagerly
//! from the access port wait here by class instead of in the port's own ring (the TAP's
//! kernel ring, a NIC's descriptors), where a real-time frame could not overtake.
//! Real-time frames leave first, then normal ones, then background ones (which keep a
//! share, so they are not starved); each bulk frame with its class's CoDel verdict on how
//! long it waited. Among normal frames, one of a flow with nothing else queued (a sparse
//! flow: an unmarked ping, a DNS query, an SSH keystroke) goes ahead of the flows that
//! keep a queue standing, as fq_codel's new flows do, on a credit those flows earn back.
//! Sans-IO and generic over the buffer (the socket backend's boxed frames, the DPDK
//! backend's mbufs): buffers come and go through the caller, time comes in as
//! microseconds.

use std::collections::VecDeque;

use omni_proto::qos::{self, Class, ClassMap};

use omni_shm::counters::{DelayQueue, WorkerCounters};

use crate::codel::{self, Codel};

/// A frame read from the access port, waiting.
pub struct Queued<B> {
    pub buf: B,
    pub len: usize,
    /// When it was read (monotonic µs): its wait is CoDel's measure.
    pub read_us: u64,
    /// Its flow's bucket ([`Sort::bucket`]).
    bucket: u16,
}

/// How the queue sorts a frame ([`AccessQueue::sort`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sort {
    pub class: Class,
    /// Its flow's bucket (of [`FLOW_BUCKETS`], by [`qos::flow_hash`]).
    pub bucket: u16,
}

/// A frame [`AccessQueue::next`] hands on.
pub struct Served<B> {
    pub frame: Queued<B>,
    pub class: Class,
    pub waited_us: u64,
    /// CoDel picked it (never a real-time frame): the caller marks it CE or drops it.
    pub congested: bool,
}

impl<B: AsMut<[u8]>> Served<B> {
    /// Records the frame's wait in its class's histogram; one CoDel picked is marked CE
    /// when ECN-capable, else it is to be dropped. Its Ethernet frame starts at `at` (after
    /// a virtio-net header). Returns whether it goes on.
    pub fn settle(&mut self, at: usize, counters: &WorkerCounters) -> bool {
        let queue = match self.class {
            Class::RealTime => DelayQueue::AccessRealTime,
            Class::Normal => DelayQueue::AccessBulk,
            Class::Background => DelayQueue::AccessBackground,
        };
        counters.delay(queue, self.waited_us);
        let frame = self.frame.buf.as_mut().get_mut(at..self.frame.len).unwrap_or_default();
        !self.congested || codel::mark_congested(frame, self.class, counters)
    }
}

/// Bytes read ahead while no real-time frame came lately. With nothing to overtake, a deep
/// queue only costs: under a saturating TCP load it stands full (128 super-frames, ~8 MB),
/// and every frame is sealed milliseconds after it was read, from a cold cache (measured:
/// 10-20 % more CPU per GB at the sender). About four super-frames, or a pass's worth of
/// full-size frames, keeps the pipeline fed.
pub const SHALLOW_BYTES: usize = 256 << 10;
/// How long after the last real-time frame (read here, or received from a peer) the queue
/// keeps reading the access port dry.
pub const REAL_TIME_RECENT_US: u64 = 1_000_000;
/// The share (per cent of bytes) background frames keep while normal ones wait too: a log
/// upload yields to everything else, but is not starved by a saturating normal flow.
pub const BACKGROUND_SHARE_PERCENT: u64 = 10;
/// Buckets flows are hashed into to tell a sparse flow (nothing else of it queued) from
/// one with a standing queue: two flows in one bucket count as one (a sparse flow that
/// shares a bulk flow's bucket waits with it).
pub const FLOW_BUCKETS: usize = 1024;
/// Frames of sparse flows queued ahead of the normal lane at most: many new flows at
/// once (a scan, a burst of short connections) queue as normal frames beyond it.
pub const SPARSE_MAX: usize = 32;
/// Bytes of sparse frames that may go ahead of a waiting normal lane; each byte the normal
/// lane sends earns one back (up to this). So a stream of new flows (a scan, random
/// source ports) takes at most half the bytes from flows with a queue, never all of them,
/// while a ping finds the whole budget.
pub const SPARSE_BURST_BYTES: i64 = 16 << 10;

/// Real-time frames handed on per pass at most beside `bulk` bulk ones, for a share of
/// `percent` of the pass: a sender marking everything real time cannot starve the rest.
pub fn real_time_per_pass(bulk: usize, percent: u8) -> usize {
    let p = usize::from(percent.clamp(1, 99));
    (bulk * p / (100 - p)).max(1)
}

pub struct AccessQueue<B> {
    classes: ClassMap,
    /// Frames it holds at most.
    capacity: usize,
    /// Bytes it reads ahead while no real-time frame came lately ([`SHALLOW_BYTES`] unless
    /// set).
    shallow_bytes: usize,
    /// Buffers the caller keeps here between frames ([`AccessQueue::slot`]; the socket
    /// backend's; DPDK's mbufs go back to their pool instead).
    spare: Vec<B>,
    /// By `Class as usize`.
    lanes: [VecDeque<Queued<B>>; 3],
    /// Normal frames of sparse flows, served before the normal lane.
    sparse: VecDeque<Queued<B>>,
    /// Normal frames queued per flow bucket (either lane).
    backlog: Box<[u16]>,
    /// Bytes sparse frames may still send ahead of a waiting normal lane
    /// ([`SPARSE_BURST_BYTES`]); below zero, what the last one overdrew, which the normal
    /// lane pays back first.
    sparse_credit: i64,
    /// Bytes of the frames queued.
    queued_bytes: usize,
    last_real_time_us: Option<u64>,
    /// One CoDel per bulk class (normal, background): a standing background queue must not
    /// get normal frames dropped.
    codel: [Codel; 2],
    /// Bytes background frames may still send ahead of normal ones: earned by the normal
    /// bytes sent while background ones wait ([`BACKGROUND_SHARE_PERCENT`]).
    background_credit: u64,
}

impl<B> AccessQueue<B> {
    /// A queue of at most `capacity` frames, sorted by `classes`, bulk delay bounded by
    /// CoDel.
    pub fn new(classes: ClassMap, capacity: usize, target_us: u64, interval_us: u64) -> Self {
        Self {
            classes,
            capacity,
            shallow_bytes: SHALLOW_BYTES,
            spare: Vec::new(),
            lanes: std::array::from_fn(|_| VecDeque::with_capacity(capacity)),
            sparse: VecDeque::with_capacity(SPARSE_MAX),
            backlog: vec![0; FLOW_BUCKETS].into_boxed_slice(),
            sparse_credit: SPARSE_BURST_BYTES,
            queued_bytes: 0,
            last_real_time_us: None,
            codel: std::array::from_fn(|_| Codel::new(target_us, interval_us)),
            background_credit: 0,
        }
    }

    /// As [`AccessQueue::new`], with one spare buffer per frame it can hold, made by `buf`.
    pub fn with_buffers(
        classes: ClassMap,
        capacity: usize,
        target_us: u64,
        interval_us: u64,
        buf: impl FnMut(usize) -> B,
    ) -> Self {
        let mut q = Self::new(classes, capacity, target_us, interval_us);
        q.spare = (0..capacity).map(buf).collect();
        q
    }

    /// Reads only `bytes` ahead while no real-time frame came lately.
    pub fn with_shallow_bytes(mut self, bytes: usize) -> Self {
        self.shallow_bytes = bytes;
        self
    }

    /// Whether a real-time frame came within [`REAL_TIME_RECENT_US`] of `now_us`: then the
    /// access port is read dry, so the next one cannot wait behind bulk in the port's ring;
    /// otherwise only [`SHALLOW_BYTES`] (or what was set) are read ahead.
    pub fn real_time_lately(&self, now_us: u64) -> bool {
        self.last_real_time_us.is_some_and(|t| now_us.saturating_sub(t) < REAL_TIME_RECENT_US)
    }

    /// A real-time frame came (from a peer: its answer may follow on the access port).
    pub fn saw_real_time(&mut self, now_us: u64) {
        self.last_real_time_us = Some(now_us);
    }

    /// Frames queued.
    pub fn len(&self) -> usize {
        self.lanes.iter().map(VecDeque::len).sum::<usize>() + self.sparse.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether to read another frame from the access port. No: the queue is full, or,
    /// without real-time traffic lately, [`SHALLOW_BYTES`] are queued; stop reading, and
    /// what comes next waits in the port's ring. (Dropping the oldest bulk frame to read
    /// on would only move the loss here, and spend the reads: measured, a UDP flow at the
    /// data plane's capacity lost a third of its datagrams that way.)
    pub fn has_room(&self, now_us: u64) -> bool {
        self.len() < self.capacity
            && (self.queued_bytes < self.shallow_bytes || self.real_time_lately(now_us))
    }

    /// A spare buffer to read the next frame into, when [`AccessQueue::has_room`].
    pub fn slot(&mut self, now_us: u64) -> Option<B> {
        if !self.has_room(now_us) {
            return None;
        }
        self.spare.pop()
    }

    /// A buffer back, unused or done with.
    pub fn recycle(&mut self, buf: B) {
        self.spare.push(buf);
    }

    /// A frame's class by the queue's map, and its flow's bucket (normal frames only:
    /// the other classes are not told apart by flow).
    #[inline]
    pub fn sort(&self, frame: &[u8]) -> Sort {
        let class = self.classes.classify(frame);
        let bucket = match class {
            Class::Normal => (qos::flow_hash(frame) as usize % FLOW_BUCKETS) as u16,
            _ => 0,
        };
        Sort { class, bucket }
    }

    /// Queues a frame of `len` bytes sorted as `sort` ([`AccessQueue::sort`]), read at
    /// `read_us`.
    pub fn push(&mut self, buf: B, sort: Sort, len: usize, read_us: u64) {
        self.queued_bytes += len;
        let frame = Queued { buf, len, read_us, bucket: sort.bucket };
        match sort.class {
            Class::RealTime => {
                self.saw_real_time(read_us);
                self.lanes[Class::RealTime as usize].push_back(frame);
            }
            Class::Normal => {
                let queued = &mut self.backlog[sort.bucket as usize];
                let sparse = *queued == 0 && self.sparse.len() < SPARSE_MAX;
                *queued = queued.saturating_add(1);
                match sparse {
                    true => self.sparse.push_back(frame),
                    false => self.lanes[Class::Normal as usize].push_back(frame),
                }
            }
            Class::Background => self.lanes[Class::Background as usize].push_back(frame),
        }
    }

    pub fn has_real_time(&self) -> bool {
        !self.lanes[Class::RealTime as usize].is_empty()
    }

    /// Whether normal or background frames wait.
    pub fn has_bulk(&self) -> bool {
        !self.sparse.is_empty() || self.lanes[1..].iter().any(|l| !l.is_empty())
    }

    /// The next frame to hand on at `now_us`: every real-time one first, then normal ones
    /// (sparse flows' first, on their credit), background ones when no normal one waits or
    /// on the credit normal ones earned them.
    pub fn next(&mut self, now_us: u64) -> Option<Served<B>> {
        let lane = self.next_lane()?;
        let frame = match lane {
            Lane::Sparse => self.sparse.pop_front()?,
            Lane::Of(class) => self.lanes[class as usize].pop_front()?,
        };
        let len = frame.len as u64;
        let waited_us = now_us.saturating_sub(frame.read_us);
        let (class, congested) = match lane {
            // Nothing else of its flow was queued: it stands in no queue, CoDel leaves it.
            Lane::Sparse => {
                self.sparse_credit -= len as i64;
                self.left_normal(&frame);
                (Class::Normal, false)
            }
            Lane::Of(Class::RealTime) => {
                self.queued_bytes -= frame.len;
                (Class::RealTime, false)
            }
            Lane::Of(Class::Normal) => {
                self.sparse_credit = (self.sparse_credit + len as i64).min(SPARSE_BURST_BYTES);
                self.left_normal(&frame);
                let drained = self.lanes[Class::Normal as usize].is_empty();
                (Class::Normal, self.codel[0].on_dequeue(now_us, waited_us, drained))
            }
            Lane::Of(Class::Background) => {
                self.queued_bytes -= frame.len;
                self.background_credit = self.background_credit.saturating_sub(len);
                let drained = self.lanes[Class::Background as usize].is_empty();
                (Class::Background, self.codel[1].on_dequeue(now_us, waited_us, drained))
            }
        };
        Some(Served { frame, class, waited_us, congested })
    }

    /// The lane the next frame leaves from.
    fn next_lane(&mut self) -> Option<Lane> {
        if self.has_real_time() {
            return Some(Lane::Of(Class::RealTime));
        }
        let normal_waits =
            !self.sparse.is_empty() || !self.lanes[Class::Normal as usize].is_empty();
        match self.lanes[Class::Background as usize].front() {
            Some(b) if !normal_waits || self.background_credit >= b.len as u64 => {
                return Some(Lane::Of(Class::Background));
            }
            _ => {}
        }
        if self.sparse_goes_next() {
            return Some(Lane::Sparse);
        }
        // Sparse frames out of credit wait for the normal lane, which is not empty then.
        (!self.lanes[Class::Normal as usize].is_empty()).then_some(Lane::Of(Class::Normal))
    }

    /// Whether a sparse flow's frame goes next: always when the normal lane is empty, else
    /// while credit is left (a frame larger than what is left, a super-frame larger than
    /// the whole budget, still goes, and takes the rest).
    fn sparse_goes_next(&mut self) -> bool {
        if self.sparse.is_empty() {
            return false;
        }
        if self.lanes[Class::Normal as usize].is_empty() {
            self.sparse_credit = SPARSE_BURST_BYTES;
            return true;
        }
        self.sparse_credit > 0
    }

    /// A normal frame left (from either lane).
    fn left_normal(&mut self, frame: &Queued<B>) {
        self.queued_bytes -= frame.len;
        let queued = &mut self.backlog[frame.bucket as usize];
        *queued = queued.saturating_sub(1);
        if !self.lanes[Class::Background as usize].is_empty() {
            self.background_credit +=
                frame.len as u64 * BACKGROUND_SHARE_PERCENT / (100 - BACKGROUND_SHARE_PERCENT);
        }
    }
}

/// Where [`AccessQueue::next`] takes a frame from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// A sparse flow's normal frame.
    Sparse,
    Of(Class),
}

#[cfg(test)]
mod tests {
    use super::*;

    type Q = AccessQueue<Box<[u8]>>;

    /// An untagged IPv4 frame with TOS `tos` and id byte `id` (at 40), `len` bytes long,
    /// read into a spare buffer and queued. Protocol 0 (one flow for all) unless `udp`
    /// gives a UDP destination port (a flow of its own; `len` at least 38).
    fn flow_frame(q: &mut Q, tos: u8, udp: Option<u16>, id: u8, len: usize, at: u64) -> Option<()> {
        let mut buf = q.slot(at)?;
        buf[..14].copy_from_slice(&[0xff; 14]);
        buf[12..14].copy_from_slice(&[0x08, 0x00]);
        buf[14] = 0x45;
        buf[15] = tos;
        buf[16..41].fill(0);
        if let Some(port) = udp {
            buf[23] = 17;
            buf[36..38].copy_from_slice(&port.to_be_bytes());
        }
        buf[40] = id;
        let sort = q.sort(&buf[..len]);
        q.push(buf, sort, len, at);
        Some(())
    }

    fn frame_of(q: &mut Q, tos: u8, id: u8, len: usize, read_us: u64) -> Option<()> {
        flow_frame(q, tos, None, id, len, read_us)
    }

    fn frame(q: &mut Q, tos: u8, id: u8, read_us: u64) {
        frame_of(q, tos, id, 41, read_us).expect("room");
    }

    fn queue(slots: usize, slot_bytes: usize) -> Q {
        AccessQueue::with_buffers(ClassMap::default(), slots, 500, 10_000, |_| {
            vec![0u8; slot_bytes].into_boxed_slice()
        })
    }

    /// Serves one frame and gives its buffer back: (class, id byte, congested).
    fn serve(q: &mut Q, now_us: u64) -> Option<(Class, u8, bool)> {
        let s = q.next(now_us)?;
        let r = (s.class, s.frame.buf[40], s.congested);
        q.recycle(s.frame.buf);
        Some(r)
    }

    #[test]
    fn real_time_frames_leave_first_then_normal_then_background_each_in_order() {
        let mut q = queue(8, 64);
        for (tos, n) in [(0, 1), (0x20, 2), (0xb8, 3), (0, 4), (0xc0, 5), (0x28, 6)] {
            frame(&mut q, tos, n, 0);
        }
        let order: Vec<_> = std::iter::from_fn(|| serve(&mut q, 10)).map(|s| (s.0, s.1)).collect();
        use Class::*;
        let want =
            [(RealTime, 3), (RealTime, 5), (Normal, 1), (Normal, 4), (Normal, 6), (Background, 2)];
        assert_eq!(order, want);
        assert!(!q.has_bulk() && !q.has_real_time() && q.is_empty());
    }

    /// A frame of a flow with nothing else queued goes ahead of a flow's standing queue
    /// (after real time), the flow's next frame behind its own; never more than
    /// [`SPARSE_MAX`] such frames at once.
    #[test]
    fn a_sparse_flow_goes_ahead_of_a_standing_queue() {
        let mut q = queue(128, 64);
        let bulk = Some(5001);
        for id in 1..=10 {
            flow_frame(&mut q, 0, bulk, id, 64, 0).expect("room");
        }
        flow_frame(&mut q, 0, Some(53), 11, 64, 1).expect("room"); // a DNS query
        flow_frame(&mut q, 0, Some(53), 12, 64, 1).expect("room"); // and its next
        flow_frame(&mut q, 0xb8, Some(9), 13, 64, 2).expect("room");
        let order: Vec<u8> = std::iter::from_fn(|| serve(&mut q, 10)).map(|s| s.1).collect();
        // The bulk flow's first frame found nothing of its own queued either.
        assert_eq!(order, [13, 1, 11, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12]);
        // Forty new flows at once: 32 go ahead, the rest queue as normal frames.
        for id in 1..=10 {
            flow_frame(&mut q, 0, bulk, id, 64, 20).expect("room");
        }
        serve(&mut q, 20).expect("the bulk flow's first");
        for port in 0..40 {
            flow_frame(&mut q, 0, Some(20_000 + port), 100 + port as u8, 64, 21).expect("room");
        }
        let order: Vec<u8> = std::iter::from_fn(|| serve(&mut q, 30)).map(|s| s.1).collect();
        let ahead = order.iter().take_while(|&&id| id >= 100).count();
        assert!((SPARSE_MAX - 2..=SPARSE_MAX).contains(&ahead), "{ahead} ahead: {order:?}");
        assert!(q.is_empty() && q.backlog.iter().all(|&b| b == 0), "backlog counts even");
    }

    /// A frame CoDel picked: an ECN-capable one is marked CE and goes on, another is
    /// dropped and counted by its class; each wait lands in its class's histogram.
    #[test]
    fn settling_a_picked_frame_marks_or_drops_it_by_class() {
        use omni_shm::counters::{Counter, DelayHistogram, DelayQueue, DropReason};
        let counters = WorkerCounters::new_for_test();
        let mut q = queue(4, 64);
        frame(&mut q, 0x20 | qos::ecn::ECT0, 1, 0);
        frame(&mut q, 0x20, 2, 0);
        frame(&mut q, 0, 3, 0);
        let mut settled = vec![];
        while let Some(mut s) = q.next(700) {
            s.congested = true; // as CoDel would have it
            settled.push((s.class, s.settle(0, &counters), s.frame.buf[15]));
        }
        use Class::*;
        assert_eq!(
            settled,
            [(Normal, false, 0), (Background, true, 0x23), (Background, false, 0x20)]
        );
        assert_eq!(counters.get(Counter::QueueDroppedBackground), 1);
        assert_eq!(counters.get(Counter::QueueDroppedNormal), 1);
        assert_eq!(counters.get_drop(DropReason::QueueDelay), 2);
        assert_eq!(counters.get(Counter::QueueCeMarked), 1);
        let slots: Vec<u64> =
            counters.slots.iter().map(|s| s.load(std::sync::atomic::Ordering::Relaxed)).collect();
        assert_eq!(DelayHistogram::of(&slots, DelayQueue::AccessBackground).count(), 2);
        assert_eq!(DelayHistogram::of(&slots, DelayQueue::AccessBulk).count(), 1);
    }

    /// A sparse super-frame larger than the whole sparse budget leaves too, whether the
    /// normal lane waits or not (it once stood there for good, and everything behind it).
    #[test]
    fn a_sparse_frame_larger_than_the_budget_is_not_stuck() {
        const BIG: usize = 64 << 10;
        let mut q = queue(8, BIG);
        flow_frame(&mut q, 0, Some(1), 1, BIG, 0).expect("room");
        flow_frame(&mut q, 0, Some(2), 2, 100, 0).expect("room");
        let order: Vec<u8> = std::iter::from_fn(|| serve(&mut q, 1)).map(|s| s.1).collect();
        assert_eq!(order, [1, 2], "alone");
        // Beside a standing flow, with the credit spent.
        for id in [3, 4, 5] {
            flow_frame(&mut q, 0, Some(7), id, 1500, 2).expect("room");
        }
        flow_frame(&mut q, 0, Some(8), 6, BIG, 2).expect("room");
        flow_frame(&mut q, 0, Some(9), 7, BIG, 2).expect("room");
        let order: Vec<u8> = std::iter::from_fn(|| serve(&mut q, 3)).map(|s| s.1).collect();
        // 3 (a flow's first) and 6 go on the credit, 6 overdrawing it by 48 KB; 7 waits
        // until the normal lane has paid that back or, as here, run dry.
        assert_eq!(order, [3, 6, 4, 5, 7]);
        assert!(q.is_empty());
    }

    /// A stream of new flows (a scan) beside a standing flow and a background one: the
    /// standing flow keeps at least half the bytes, background its share.
    #[test]
    fn new_flows_without_end_do_not_starve_the_flows_with_a_queue() {
        let mut q = queue(256, 1500);
        let mut next_port = 10_000u16;
        let mut scan = |q: &mut Q, t| {
            next_port = next_port.wrapping_add(1);
            flow_frame(q, 0, Some(next_port), 1, 1000, t)
        };
        for _ in 0..20 {
            flow_frame(&mut q, 0, Some(5001), 2, 1500, 0).expect("room");
            flow_frame(&mut q, 0x20, Some(5002), 3, 1500, 0).expect("room");
        }
        let mut bytes = [0usize; 4]; // scan, standing, background, other
        for t in 0..20_000u64 {
            while q.sparse.len() < SPARSE_MAX && scan(&mut q, t).is_some() {}
            let s = q.next(t).expect("queued");
            let id = s.frame.buf[40];
            bytes[usize::from(id.min(4)) - 1] += s.frame.len;
            q.recycle(s.frame.buf);
            if id > 1 {
                // The standing flows keep their queues.
                let tos = if id == 3 { 0x20 } else { 0 };
                flow_frame(&mut q, tos, Some(5000 + u16::from(id - 1)), id, 1500, t).expect("room");
            }
        }
        let total = bytes.iter().sum::<usize>() as f64;
        let share = |i: usize| bytes[i] as f64 * 100.0 / total;
        assert!(share(1) >= 40.0, "the standing flow got {:.1} % ({bytes:?})", share(1));
        assert!(share(2) >= 8.0, "background got {:.1} % ({bytes:?})", share(2));
        assert!(share(0) >= 30.0, "the new flows still went ahead: {:.1} %", share(0));
    }

    /// Under a saturating normal flow, background frames keep their share of the bytes
    /// (not more, and not nothing).
    #[test]
    fn background_keeps_its_share_beside_a_saturating_normal_flow() {
        let mut q = queue(64, 1500);
        let mut sent = [0usize; 3];
        // Both flows keep their frames queued: one in per frame of theirs out.
        let (normal, background) = ((0, 1500), (0x20, 1000));
        for _ in 0..32 {
            for (tos, len) in [normal, background] {
                frame_of(&mut q, tos, 0, len, 0).expect("room");
            }
        }
        for t in 0..10_000u64 {
            let (class, ..) = serve(&mut q, t).expect("queued");
            let (tos, len) = if class == Class::Background { background } else { normal };
            sent[class as usize] += len;
            frame_of(&mut q, tos, 0, len, t).expect("room");
        }
        let share = sent[2] as f64 * 100.0 / (sent[1] + sent[2]) as f64;
        let want = BACKGROUND_SHARE_PERCENT as f64;
        assert!((share - want).abs() < 1.0, "background share {share:.1} %, want {want} %");
        // Alone, background frames leave at once, credit or not.
        let mut q = queue(4, 64);
        for n in 1..=3 {
            frame(&mut q, 0x20, n, 0);
        }
        let order: Vec<_> = std::iter::from_fn(|| serve(&mut q, 1)).map(|s| (s.0, s.1)).collect();
        assert_eq!(order, [(Class::Background, 1), (Class::Background, 2), (Class::Background, 3)]);
    }

    #[test]
    fn a_full_queue_takes_no_more_until_a_frame_leaves() {
        let mut q = queue(2, 64);
        frame(&mut q, 0, 1, 0);
        frame(&mut q, 0xb8, 2, 0);
        assert!(!q.has_room(0) && q.slot(0).is_none(), "full: the caller stops reading");
        assert_eq!(serve(&mut q, 0), Some((Class::RealTime, 2, false)));
        let buf = q.slot(0).expect("a slot again");
        q.push(buf, Sort { class: Class::Normal, bucket: 0 }, 0, 0); // a runt: as normal
        assert_eq!(serve(&mut q, 0).map(|s| s.1), Some(1));
        assert!(q.has_bulk(), "the runt waits behind it");
    }

    /// Without real-time traffic the queue reads only [`SHALLOW_BYTES`] ahead (frames are
    /// sealed while in cache); a real-time frame, read or received, makes it read the port
    /// dry for [`REAL_TIME_RECENT_US`].
    #[test]
    fn the_queue_reads_deep_only_while_real_time_traffic_flows() {
        const BIG: usize = 64 << 10;
        let mut q = queue(16, BIG + 64);
        let bulk = |q: &mut Q, now| frame_of(q, 0, 0, BIG, now);
        let mut n = 0;
        while bulk(&mut q, 5).is_some() {
            n += 1;
        }
        assert_eq!(n, SHALLOW_BYTES / BIG, "shallow: {n} super-frames");
        // The next real-time frame is read once a bulk one has left.
        serve(&mut q, 8).expect("queued");
        frame(&mut q, 0xb8, 1, 10);
        assert!(q.real_time_lately(10));
        while bulk(&mut q, 20).is_some() {
            n += 1;
        }
        assert_eq!(n, 16, "deep: every slot (one bulk frame left, one real-time came)");
        // A second later, shallow again: no room until enough has left.
        let later = 10 + REAL_TIME_RECENT_US;
        assert!(!q.real_time_lately(later));
        let mut served = 0;
        while !q.has_room(later) {
            serve(&mut q, later).expect("frames queued");
            served += 1;
        }
        assert_eq!(served, 16 - SHALLOW_BYTES / BIG + 1, "down to under {SHALLOW_BYTES} B");
        // A real-time datagram from a peer turns it deep too.
        q.saw_real_time(later);
        while bulk(&mut q, later).is_some() {}
        assert!(q.slot(later).is_none() && q.queued_bytes > SHALLOW_BYTES);
    }

    /// CoDel per bulk class: a standing queue is picked after an interval; real-time
    /// frames never are; a background queue standing behind normal traffic does not get
    /// normal frames picked.
    #[test]
    fn bulk_frames_standing_past_the_target_for_an_interval_are_picked_by_codel() {
        for tos in [0, 0x20] {
            let mut q = queue(4, 64);
            let mut picked = vec![];
            // A standing queue of three: a frame in and one out every 100 µs, each having
            // waited 2 ms, for 30 ms.
            for _ in 0..3 {
                frame(&mut q, tos, 0, 0);
            }
            for t in (0..30_000).step_by(100) {
                frame(&mut q, tos, 0, t);
                let Some(s) = q.next(t + 2000) else { panic!("a bulk frame is queued") };
                assert!(s.waited_us >= 2000 && s.class != Class::RealTime);
                if s.congested {
                    picked.push(t);
                }
                q.recycle(s.frame.buf);
            }
            assert!(!picked.is_empty() && picked[0] >= 9_000, "after an interval: {picked:?}");
            frame(&mut q, 0xb8, 7, 0);
            let s = q.next(1_000_000).expect("queued");
            assert!(s.class == Class::RealTime && s.waited_us == 1_000_000 && !s.congested);
        }
        // Background standing for 30 ms; normal frames passing through quickly.
        let mut q = queue(8, 64);
        for t in (0..30_000u64).step_by(100) {
            frame(&mut q, 0x20, 1, t.saturating_sub(5000));
            frame(&mut q, 0, 2, t);
            while let Some(s) = q.next(t + 100) {
                assert!(s.class == Class::Background || !s.congested, "normal frame picked");
                q.recycle(s.frame.buf);
                if q.len() <= 1 {
                    break;
                }
            }
        }
    }
}
