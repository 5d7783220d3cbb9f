//! Control's side of the shared-memory channel: queue commands and injected packets, read
//! events, punted packets, counters, per-peer statistics and the FDB, and sleep on the
//! doorbell when there is nothing to read.

use omni_shm::endpoint::Endpoint;
use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use omni_shm::Region;
use omni_shm::counters::N_COUNTERS;
use omni_shm::fdb::{Fdb, FdbRecord};
use omni_shm::layout::Header;
use omni_shm::paths;
use omni_shm::records::{Event, decode_packet, encode_control, encode_packet};
use omni_shm::region::ControlEnds;
use std::sync::atomic::{Ordering, fence};
use tracing::warn;

use crate::fabric::{Activity, Output};

/// Outputs waiting for ring space are kept up to this many; beyond, the oldest are dropped
/// (a data plane that stopped consuming gets everything again by replay when it returns).
const BACKLOG_MAX: usize = 8192;

pub struct Channel {
    region: &'static Region,
    /// Every worker's rings the region has room for; commands go to the ones running.
    ends: Vec<ControlEnds<'static>>,
    bell: tokio::net::UnixDatagram,
    dp_bell: std::path::PathBuf,
    backlog: VecDeque<Output>,
    pub dropped_outputs: u64,
}

/// One data-plane worker's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WorkerSample {
    /// Transport packets it opened.
    pub rx_packets: u64,
    /// Transport packets it sealed.
    pub tx_packets: u64,
    /// Nanoseconds of loop passes that found work (poll-mode workers; 0 for a worker
    /// that sleeps when idle, whose CPU time is its load).
    pub busy_ns: u64,
    /// Loop passes that found work.
    pub busy_passes: u64,
}

/// Per-peer traffic totals, summed over workers.
#[derive(Debug, Default, Clone, Copy)]
pub struct PeerTraffic {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// What probing found of its paths (the first worker's: path probing is a socket and
    /// xdp backend feature, which run one).
    pub paths: omni_shm::layout::PathState,
}

impl Channel {
    pub fn new(region: &'static Region, run_dir: &Path) -> std::io::Result<Self> {
        let own = run_dir.join(paths::DAEMON_BELL);
        let _ = std::fs::remove_file(&own);
        let std_sock = std::os::unix::net::UnixDatagram::bind(&own)?;
        std_sock.set_nonblocking(true)?;
        Ok(Self {
            region,
            ends: (0..region.params().n_workers as usize).map(|w| region.control_ends(w)).collect(),
            bell: tokio::net::UnixDatagram::from_std(std_sock)?,
            dp_bell: run_dir.join(paths::DATAPLANE_BELL),
            backlog: VecDeque::new(),
            dropped_outputs: 0,
        })
    }

    pub fn region(&self) -> &'static Region {
        self.region
    }

    pub fn header(&self) -> &'static Header {
        self.region.header()
    }

    pub fn generation(&self) -> u32 {
        self.header().dp_generation.load(Ordering::Acquire)
    }

    /// Workers the data plane runs (as it announced): each gets every command.
    pub fn workers(&self) -> usize {
        (self.header().dp_workers.load(Ordering::Relaxed) as usize).clamp(1, self.ends.len())
    }

    /// Queues outputs and moves as many as fit into the rings.
    pub fn send(&mut self, outputs: impl IntoIterator<Item = Output>) {
        for o in outputs {
            if self.backlog.len() >= BACKLOG_MAX {
                self.backlog.pop_front();
                self.dropped_outputs += 1;
            }
            self.backlog.push_back(o);
        }
        self.flush();
    }

    /// Drops queued outputs (before a replay, which resends everything that matters).
    pub fn clear_backlog(&mut self) {
        self.backlog.clear();
    }

    pub fn flush(&mut self) {
        let mut pushed = false;
        let workers = self.workers();
        while let Some(o) = self.backlog.front() {
            let r = match o {
                // Every worker holds the whole state: a command goes to all of them, or
                // waits until all have room.
                Output::Command(c) => {
                    if self.ends[..workers].iter_mut().all(|e| e.cmd.has_room()) {
                        self.ends[..workers]
                            .iter_mut()
                            .try_for_each(|e| e.cmd.push_with(|slot| c.encode(slot)))
                    } else {
                        Err(omni_shm::ring::RingError::Full)
                    }
                }
                // Handled by the daemon before outputs reach the channel.
                Output::PunchRequest(_) | Output::Reregister | Output::Statement { .. } => Ok(()),
                Output::Control { peer, bytes } => {
                    let (peer, bytes) = (*peer, bytes.as_slice());
                    self.ends[0].inject.push_with(|slot| {
                        if !encode_control(slot, peer, bytes) {
                            warn!(len = bytes.len(), "control message too large; dropped");
                        }
                    })
                }
                // Any worker can send a packet: the first takes them all.
                Output::Inject { to, bytes, ttl } => {
                    let (to, ttl, bytes) = (*to, *ttl, bytes.as_slice());
                    self.ends[0].inject.push_with(|slot| {
                        if !encode_packet(slot, to, ttl, bytes) {
                            warn!(
                                len = bytes.len(),
                                "packet too large for the inject ring; dropped"
                            );
                        }
                    })
                }
            };
            match r {
                Ok(()) => {
                    self.backlog.pop_front();
                    pushed = true;
                }
                Err(_) => break,
            }
        }
        if pushed {
            fence(Ordering::SeqCst);
            if self.header().dp_parked.load(Ordering::Relaxed) != 0 {
                let _ = self.bell.try_send_to(&[1], &self.dp_bell);
            }
        }
    }

    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// Reads every pending event, from every worker.
    pub fn drain_events(&mut self, mut f: impl FnMut(Event)) {
        for ends in &mut self.ends {
            for _ in 0..4096 {
                match ends.event.pop_with(|slot| Event::decode(slot)) {
                    Ok(Some(Ok(e))) => f(e),
                    Ok(Some(Err(e))) => warn!("undecodable event from the data plane: {e}"),
                    Ok(None) => break,
                    Err(e) => {
                        warn!("event ring: {e}");
                        break;
                    }
                }
            }
        }
    }

    /// Reads every pending punted packet, from every worker.
    pub fn drain_punts(&mut self, mut f: impl FnMut(Endpoint, &[u8])) {
        for ends in &mut self.ends {
            Self::drain_punts_of(ends, &mut f);
        }
    }

    fn drain_punts_of(ends: &mut ControlEnds<'static>, f: &mut impl FnMut(Endpoint, &[u8])) {
        for _ in 0..4096 {
            match ends.punt.pop_with(|slot| match decode_packet(slot) {
                Ok((src, bytes)) => {
                    f(src, bytes);
                    true
                }
                Err(_) => false,
            }) {
                Ok(Some(true)) => {}
                Ok(Some(false)) => warn!("undecodable punted packet"),
                Ok(None) => break,
                Err(e) => {
                    warn!("punt ring: {e}");
                    break;
                }
            }
        }
    }

    /// Sleeps until the data plane rings or `max` passes, unless something is waiting.
    pub async fn wait(&mut self, max: Duration) {
        let h = self.header();
        h.ctl_parked.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.ends.iter_mut().any(|e| !e.event.is_empty() || !e.punt.is_empty()) {
            h.ctl_parked.store(0, Ordering::Relaxed);
            return;
        }
        let mut buf = [0u8; 64];
        tokio::select! {
            _ = self.bell.recv(&mut buf) => {
                while self.bell.try_recv(&mut buf).is_ok() {}
            }
            _ = tokio::time::sleep(max) => {}
        }
        h.ctl_parked.store(0, Ordering::Relaxed);
    }

    /// The data plane's view of a peer's activity (latest over workers).
    pub fn activity(&self, peer: u16) -> Activity {
        let mut a = Activity::default();
        for w in 0..self.region.params().n_workers as usize {
            if let Some(s) = self.region.peer_stats(w, peer) {
                a.last_rx_ms = a.last_rx_ms.max(s.last_rx_ms.load(Ordering::Relaxed));
                a.last_tx_ms = a.last_tx_ms.max(s.last_tx_ms.load(Ordering::Relaxed));
                a.last_data_rx_ms =
                    a.last_data_rx_ms.max(s.last_data_rx_ms.load(Ordering::Relaxed));
                a.last_data_tx_ms =
                    a.last_data_tx_ms.max(s.last_data_tx_ms.load(Ordering::Relaxed));
            }
        }
        a
    }

    pub fn traffic(&self, peer: u16) -> PeerTraffic {
        let mut t = PeerTraffic::default();
        for w in 0..self.region.params().n_workers as usize {
            if let Some(s) = self.region.peer_stats(w, peer) {
                t.rx_bytes += s.rx_bytes.load(Ordering::Relaxed);
                t.tx_bytes += s.tx_bytes.load(Ordering::Relaxed);
                t.rx_packets += s.rx_packets.load(Ordering::Relaxed);
                t.tx_packets += s.tx_packets.load(Ordering::Relaxed);
                if w == 0 {
                    t.paths = omni_shm::layout::PathState::unpack(s.paths.load(Ordering::Relaxed));
                }
            }
        }
        t
    }

    /// What each worker the data plane runs has done, from its counter block.
    pub fn worker_samples(&self) -> Vec<WorkerSample> {
        use omni_shm::counters::Counter;
        (0..self.workers())
            .map(|w| {
                let c = self.region.counters(w);
                let get = |k: Counter| c.slots[k as usize].load(Ordering::Relaxed);
                WorkerSample {
                    rx_packets: get(Counter::RxPackets),
                    tx_packets: get(Counter::TxPackets),
                    busy_ns: get(Counter::BusyNs),
                    busy_passes: get(Counter::BusyPasses),
                }
            })
            .collect()
    }

    /// Every counter slot summed over workers.
    pub fn counters(&self) -> [u64; N_COUNTERS] {
        let mut out = [0u64; N_COUNTERS];
        for w in 0..self.region.params().n_workers as usize {
            let c = self.region.counters(w);
            for (o, s) in out.iter_mut().zip(c.slots.iter()) {
                *o += s.load(Ordering::Relaxed);
            }
        }
        out
    }

    pub fn fdb(&self, now_ms: u64, aging_ms: u64) -> Vec<FdbRecord> {
        Fdb::new(self.region.fdb_entries(), self.region.fdb_seed(), aging_ms).snapshot(now_ms)
    }
}
