//! AEAD on other cores for a run-to-completion I/O worker (the DPDK backend's extra
//! lcores), in the manner of WireGuard's parallel encryption with in-order sending.
//!
//! The I/O worker keeps every piece of state (sessions, counters, replay windows, FDB,
//! neighbours) and all port I/O; per burst it hands a batch of packets whose AEAD is
//! still to run to the next crypto worker (round robin, over a bounded lock-free channel:
//! one channel operation per burst, none per packet) and takes batches back **in the
//! order it handed them out**, so packets leave in the order they came even though
//! several cores sealed or opened them. A crypto worker touches nothing but the bytes of
//! its batch: no DPDK call, no allocation, no shared state.
//!
//! Batches are `Vec`s recycled between the two sides: after start-up nothing is allocated.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::Scope;
use std::time::Duration;

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

pub type Batch<B, J> = Vec<Item<B, J>>;

/// Batches handed out and not yet taken back, per worker, at most.
const MAX_OUTSTANDING_PER_WORKER: usize = 4;

pub struct CryptoPool<B, J> {
    to: Vec<SyncSender<Batch<B, J>>>,
    from: Vec<Receiver<Batch<B, J>>>,
    /// The worker each handed-out batch went to, oldest first.
    outstanding: VecDeque<usize>,
    next: usize,
    spare: Vec<Batch<B, J>>,
}

impl<B: Buf, J: Job> CryptoPool<B, J> {
    /// Starts one crypto worker per entry of `cpus` (pinned to that CPU when given) in
    /// `scope`. They exit when the pool is dropped.
    pub fn start<'scope, 'env>(
        scope: &'scope Scope<'scope, 'env>,
        cpus: &[Option<u32>],
        busy_poll: bool,
    ) -> std::io::Result<Self>
    where
        B: 'scope,
        J: 'scope,
    {
        let mut to = vec![];
        let mut from = vec![];
        for (i, cpu) in cpus.iter().copied().enumerate() {
            // Capacity for every batch that can be outstanding: sends never block.
            let (tx_in, rx_in) = sync_channel(MAX_OUTSTANDING_PER_WORKER);
            let (tx_out, rx_out) = sync_channel(MAX_OUTSTANDING_PER_WORKER);
            std::thread::Builder::new().name(format!("omni-crypto{}", i + 1)).spawn_scoped(
                scope,
                move || {
                    if let Some(cpu) = cpu
                        && let Err(e) = omni_sys::pin_current_thread(cpu)
                    {
                        tracing::warn!(cpu, "cannot pin crypto worker: {e}");
                    }
                    crypto_worker(rx_in, tx_out, busy_poll)
                },
            )?;
            to.push(tx_in);
            from.push(rx_out);
        }
        let n = cpus.len();
        let spare =
            (0..n * MAX_OUTSTANDING_PER_WORKER + 2).map(|_| Vec::with_capacity(32)).collect();
        Ok(Self { to, from, outstanding: VecDeque::new(), next: 0, spare })
    }

    pub fn workers(&self) -> usize {
        self.to.len()
    }

    /// An empty batch to fill.
    pub fn batch(&mut self) -> Batch<B, J> {
        self.spare.pop().unwrap_or_else(|| Vec::with_capacity(32))
    }

    /// Gives back a batch emptied by the caller.
    pub fn recycle(&mut self, mut b: Batch<B, J>) {
        b.clear();
        self.spare.push(b);
    }

    pub fn in_flight(&self) -> usize {
        self.outstanding.len()
    }

    /// Whether another batch may be handed out now (else take one back first).
    pub fn has_room(&self) -> bool {
        self.outstanding.len() < self.to.len() * MAX_OUTSTANDING_PER_WORKER
    }

    /// Hands `b` to the next worker. The caller checked [`CryptoPool::has_room`]; an empty
    /// batch is just recycled.
    pub fn dispatch(&mut self, b: Batch<B, J>) {
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
                tracing::warn!(worker = w, "crypto worker not taking work: {e}");
            }
        }
    }

    /// The oldest batch handed out, if it is back (`wait`: spin until it is). Batches
    /// come back in the order they were handed out.
    pub fn ready(&mut self, wait: bool) -> Option<Batch<B, J>> {
        let &w = self.outstanding.front()?;
        loop {
            match self.from[w].try_recv() {
                Ok(b) => {
                    self.outstanding.pop_front();
                    return Some(b);
                }
                Err(TryRecvError::Empty) if wait => std::hint::spin_loop(),
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => {
                    // A worker that died (a panic) takes its batches with it.
                    self.outstanding.pop_front();
                    return None;
                }
            }
        }
    }
}

fn crypto_worker<B: Buf, J: Job>(
    work: Receiver<Batch<B, J>>,
    done: SyncSender<Batch<B, J>>,
    busy_poll: bool,
) {
    let mut idle = 0u32;
    loop {
        match work.try_recv() {
            Ok(mut batch) => {
                idle = 0;
                for item in &mut batch {
                    item.job.run(item.buf.bytes());
                }
                if done.send(batch).is_err() {
                    return;
                }
            }
            Err(TryRecvError::Disconnected) => return,
            Err(TryRecvError::Empty) => {
                idle = idle.saturating_add(1);
                if busy_poll || idle <= 256 {
                    std::hint::spin_loop();
                } else {
                    // As the I/O worker: a shared core is not burnt while idle.
                    let us = (idle as u64 - 256).clamp(20, 1000);
                    std::thread::sleep(Duration::from_micros(us));
                }
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

    #[test]
    fn batches_come_back_in_the_order_they_went_out_with_the_work_done() {
        std::thread::scope(|s| {
            let mut pool: CryptoPool<Vec<u8>, Slow> =
                CryptoPool::start(s, &[None, None, None], false).unwrap();
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
    fn dropping_the_pool_stops_its_workers() {
        let t = std::time::Instant::now();
        std::thread::scope(|s| {
            let mut pool: CryptoPool<Vec<u8>, Slow> = CryptoPool::start(s, &[None], false).unwrap();
            let b = pool.batch();
            pool.dispatch(b); // empty: recycled, not sent
            assert_eq!(pool.in_flight(), 0);
        });
        // The scope joined the worker: it saw the channel close.
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
