//! AEAD on other cores for an I/O worker, in the manner of WireGuard's parallel
//! encryption with in-order sending: the one crypto pool of every backend (the DPDK
//! backend's crypto lcores, the socket backend's crypto thread).
//!
//! The I/O worker keeps every piece of state (sessions, counters, replay windows, FDB,
//! neighbours); per burst it hands a batch of work (packets whose AEAD is still to run, or
//! for the socket backend packets to seal and send) to the next crypto worker (round
//! robin, over a bounded channel: one channel operation per burst, none per packet) and
//! takes batches back **in the order it handed them out**, so packets leave in the order
//! they came even though several cores worked on them. A crypto worker touches nothing but
//! its batch and what its own runner holds: no shared state.
//!
//! Batches are recycled between the two sides: after the first bursts nothing is allocated.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::Scope;
use std::time::Duration;

/// A batch of work for one crypto worker.
pub trait Work: Send + Default {
    /// Nothing to do: such a batch is recycled, not handed out.
    fn is_empty(&self) -> bool;
    /// Empties the batch for its next use (its allocations stay).
    fn clear(&mut self);
}

/// Bytes a job works on in place (an mbuf's data, or a plain buffer in tests).
pub trait Buf: Send {
    fn bytes(&mut self) -> &mut [u8];
}

impl Buf for Vec<u8> {
    fn bytes(&mut self) -> &mut [u8] {
        self
    }
}

/// The AEAD (or any in-place transformation) of one packet, with room for its outcome.
pub trait Job: Send {
    fn run(&mut self, bytes: &mut [u8]);
}

pub struct Item<B, J> {
    pub buf: B,
    pub job: J,
}

/// The common batch: packets, each with its job.
pub type Batch<B, J> = Vec<Item<B, J>>;

impl<B: Buf, J: Job> Work for Batch<B, J> {
    fn is_empty(&self) -> bool {
        Vec::is_empty(self)
    }
    fn clear(&mut self) {
        Vec::clear(self)
    }
}

/// The runner of a pool of [`Batch`]es: each item's job on its bytes.
pub fn run_jobs<B: Buf, J: Job>(batch: &mut Batch<B, J>) {
    for item in batch {
        item.job.run(item.buf.bytes());
    }
}

/// What a crypto worker does while no batch is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// Spin (a core of its own, `--busy-poll`).
    Spin,
    /// Spin a little, then sleep in growing steps up to 1 ms (a shared core is not burnt,
    /// and the I/O worker never makes a system call to wake it).
    Sleep,
    /// Spin a little, then block until a batch comes (nothing runs while idle; handing out
    /// the first batch after a pause wakes the worker).
    Block,
}

/// Where crypto workers run and how they wait.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// One entry per crypto worker: the CPUs it may run on (one: pinned; none: those it
    /// inherits).
    pub cpus: Vec<Vec<u32>>,
    /// Batches handed out and not yet taken back, per worker, at most: the depth of the
    /// pipeline, and so what it can hold up (latency) against how long a burst may take.
    pub depth: usize,
    pub idle: Idle,
}

pub struct CryptoPool<W> {
    to: Vec<SyncSender<W>>,
    from: Vec<Receiver<W>>,
    /// The worker each handed-out batch went to, oldest first.
    outstanding: VecDeque<usize>,
    depth: usize,
    idle: Idle,
    next: usize,
    spare: Vec<W>,
    /// A worker died (a panic) or stopped taking work: its batches are lost.
    failed: bool,
}

impl<W: Work> CryptoPool<W> {
    /// Starts one crypto worker per entry of `cfg.cpus` in `scope`; each makes its runner
    /// with `runner()` on its own thread and runs it on every batch it is handed. They exit
    /// when the pool is dropped.
    pub fn start<'scope, 'env, F, R>(
        scope: &'scope Scope<'scope, 'env>,
        cfg: &PoolConfig,
        runner: F,
    ) -> std::io::Result<Self>
    where
        W: 'scope,
        F: Fn() -> R + Send + Clone + 'scope,
        R: FnMut(&mut W),
    {
        let depth = cfg.depth.max(1);
        let mut to = vec![];
        let mut from = vec![];
        for (i, cpus) in cfg.cpus.iter().enumerate() {
            // Capacity for every batch that can be outstanding: sends never block.
            let (tx_in, rx_in) = sync_channel(depth);
            let (tx_out, rx_out) = sync_channel(depth);
            let (cpus, idle, runner) = (cpus.clone(), cfg.idle, runner.clone());
            std::thread::Builder::new().name(format!("omni-crypto{}", i + 1)).spawn_scoped(
                scope,
                move || {
                    if !cpus.is_empty()
                        && let Err(e) = omni_sys::affinity::set_current_thread(&cpus)
                    {
                        tracing::warn!(?cpus, "cannot place crypto worker: {e}");
                    }
                    crypto_worker(rx_in, tx_out, idle, runner())
                },
            )?;
            to.push(tx_in);
            from.push(rx_out);
        }
        Ok(Self {
            to,
            from,
            outstanding: VecDeque::new(),
            depth,
            idle: cfg.idle,
            next: 0,
            spare: vec![],
            failed: false,
        })
    }

    pub fn workers(&self) -> usize {
        self.to.len()
    }

    /// An empty batch to fill.
    pub fn batch(&mut self) -> W {
        self.spare.pop().unwrap_or_default()
    }

    /// Gives back a batch taken back from [`CryptoPool::ready`] (or from
    /// [`CryptoPool::batch`] and not used).
    pub fn recycle(&mut self, mut b: W) {
        b.clear();
        self.spare.push(b);
    }

    pub fn in_flight(&self) -> usize {
        self.outstanding.len()
    }

    /// Whether a worker died or stopped taking work (the data plane should stop: what it
    /// hands out is lost).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Whether another batch may be handed out now (else take one back first).
    pub fn has_room(&self) -> bool {
        self.outstanding.len() < self.to.len() * self.depth
    }

    /// Hands `b` to the next worker. The caller checked [`CryptoPool::has_room`]; an empty
    /// batch is just recycled.
    pub fn dispatch(&mut self, b: W) {
        if b.is_empty() {
            self.recycle(b);
            return;
        }
        let w = self.next;
        self.next = (self.next + 1) % self.to.len();
        match self.to[w].try_send(b) {
            Ok(()) => self.outstanding.push_back(w),
            // Cannot happen while has_room was checked (the channel holds every batch
            // that can be outstanding) and the worker lives; its packets are dropped.
            Err(e) => {
                tracing::error!(worker = w, "crypto worker not taking work: {e}");
                self.failed = true;
            }
        }
    }

    /// The oldest batch handed out, if it is back (`wait`: until it is; spinning, or
    /// blocked for a pool whose workers block). Batches come back in the order they were
    /// handed out.
    pub fn ready(&mut self, wait: bool) -> Option<W> {
        let &w = self.outstanding.front()?;
        let got = match self.from[w].try_recv() {
            Err(TryRecvError::Empty) if wait && self.idle == Idle::Block => {
                self.from[w].recv().map_err(|_| TryRecvError::Disconnected)
            }
            Err(TryRecvError::Empty) if wait => loop {
                std::hint::spin_loop();
                match self.from[w].try_recv() {
                    Err(TryRecvError::Empty) => continue,
                    other => break other,
                }
            },
            other => other,
        };
        match got {
            Ok(b) => {
                self.outstanding.pop_front();
                Some(b)
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                // A worker that died (a panic) takes its batches with it.
                tracing::error!(worker = w, "a crypto worker died; its batches are lost");
                self.outstanding.pop_front();
                self.failed = true;
                None
            }
        }
    }
}

/// Empty polls before a worker that does not spin sleeps or blocks.
const SPINS: u32 = 256;

fn crypto_worker<W: Work>(
    work: Receiver<W>,
    done: SyncSender<W>,
    idle: Idle,
    mut run: impl FnMut(&mut W),
) {
    let mut empty_polls = 0u32;
    loop {
        let next = match work.try_recv() {
            Ok(b) => Some(b),
            Err(TryRecvError::Disconnected) => return,
            Err(TryRecvError::Empty) => {
                empty_polls = empty_polls.saturating_add(1);
                match idle {
                    _ if idle == Idle::Spin || empty_polls <= SPINS => {
                        std::hint::spin_loop();
                        None
                    }
                    Idle::Block => match work.recv() {
                        Ok(b) => Some(b),
                        Err(_) => return,
                    },
                    _ => {
                        // As an idle I/O worker: a shared core is not burnt.
                        let us = (empty_polls as u64 - SPINS as u64).clamp(20, 1000);
                        std::thread::sleep(Duration::from_micros(us));
                        None
                    }
                }
            }
        };
        if let Some(mut batch) = next {
            empty_polls = 0;
            run(&mut batch);
            if done.send(batch).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adds one to every byte, slowly for odd tags, so batches finish out of order.
    struct Slow(u8);

    impl Job for Slow {
        fn run(&mut self, bytes: &mut [u8]) {
            if self.0 % 2 == 1 {
                std::thread::sleep(Duration::from_micros(300));
            }
            for b in bytes {
                *b = b.wrapping_add(1);
            }
        }
    }

    fn config(workers: usize, idle: Idle) -> PoolConfig {
        PoolConfig { cpus: vec![vec![]; workers], depth: 4, idle }
    }

    #[test]
    fn batches_come_back_in_the_order_they_went_out_with_the_work_done() {
        std::thread::scope(|s| {
            let mut pool: CryptoPool<Batch<Vec<u8>, Slow>> =
                CryptoPool::start(s, &config(3, Idle::Sleep), || run_jobs).unwrap();
            assert_eq!(pool.workers(), 3);
            let mut seen = vec![];
            for round in 0u8..40 {
                while !pool.has_room() {
                    let b = pool.ready(true).expect("outstanding");
                    seen.extend(b.iter().map(|i| i.buf[0]));
                    pool.recycle(b);
                }
                let mut b = pool.batch();
                for k in 0..4u8 {
                    b.push(Item { buf: vec![round * 4 + k; 8], job: Slow(round) });
                }
                pool.dispatch(b);
            }
            while pool.in_flight() > 0 {
                let b = pool.ready(true).unwrap();
                assert!(b.iter().all(|i| i.buf.iter().all(|&x| x == i.buf[0])));
                seen.extend(b.iter().map(|i| i.buf[0]));
                pool.recycle(b);
            }
            // Every packet once, transformed, in the order handed out.
            let want: Vec<u8> = (0u8..160).map(|x| x + 1).collect();
            assert_eq!(seen, want);
            assert!(pool.ready(false).is_none());
        });
    }

    #[test]
    fn a_blocked_worker_wakes_for_work_after_a_pause_and_keeps_its_runner() {
        std::thread::scope(|s| {
            let runner = || {
                let mut batches = 0u8;
                move |b: &mut Batch<Vec<u8>, Slow>| {
                    batches += 1;
                    for item in b.iter_mut() {
                        item.buf[0] = batches;
                    }
                }
            };
            let mut pool = CryptoPool::start(s, &config(1, Idle::Block), runner).unwrap();
            for round in 1..=3u8 {
                // Long past its spins: the worker is blocked when the batch comes.
                std::thread::sleep(Duration::from_millis(20));
                let mut b = pool.batch();
                b.push(Item { buf: vec![0], job: Slow(0) });
                pool.dispatch(b);
                let t = std::time::Instant::now();
                let b = loop {
                    if let Some(b) = pool.ready(false) {
                        break b;
                    }
                    assert!(t.elapsed() < Duration::from_secs(5), "the blocked worker never woke");
                    std::thread::yield_now();
                };
                assert_eq!(b[0].buf[0], round, "one runner, kept across batches");
                pool.recycle(b);
            }
        });
    }

    #[test]
    fn a_worker_that_dies_marks_the_pool_failed() {
        let r = std::panic::catch_unwind(|| {
            std::thread::scope(|s| {
                let die =
                    || |_: &mut Batch<Vec<u8>, Slow>| panic!("a crypto worker dies (expected)");
                let mut pool = CryptoPool::start(s, &config(1, Idle::Block), die).unwrap();
                let mut b = pool.batch();
                b.push(Item { buf: vec![1], job: Slow(0) });
                pool.dispatch(b);
                assert!(!pool.failed());
                assert!(pool.ready(true).is_none(), "the batch died with it");
                assert!(pool.failed());
            })
        });
        assert!(r.is_err(), "the scope reports the worker's panic");
    }

    #[test]
    fn dropping_the_pool_stops_its_workers_however_they_wait() {
        for idle in [Idle::Spin, Idle::Sleep, Idle::Block] {
            let t = std::time::Instant::now();
            std::thread::scope(|s| {
                let mut pool: CryptoPool<Batch<Vec<u8>, Slow>> =
                    CryptoPool::start(s, &config(1, idle), || run_jobs).unwrap();
                let b = pool.batch();
                pool.dispatch(b); // empty: recycled, not sent
                assert_eq!(pool.in_flight(), 0);
                // Past the spins: a sleeping or blocked worker.
                std::thread::sleep(Duration::from_millis(10));
            });
            // The scope joined the worker: it saw the channel close.
            assert!(t.elapsed() < Duration::from_secs(5), "{idle:?}");
        }
    }
}
