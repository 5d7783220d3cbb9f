//! The data plane's end of the control channel, the same for every backend: commands
//! applied to the engine, events published, messages punted to control, and the packets
//! control injects taken out for the backend to send.

use tracing::warn;

use crate::engine::{Engine, TxSink};
use omni_shm::clock::monotonic_ms;
use omni_shm::counters::{Counter, DropReason, WorkerCounters};
use omni_shm::endpoint::Endpoint;
use omni_shm::layout::Header;
use omni_shm::records::{Command, PacketRecord, decode_record, encode_packet};
use omni_shm::region::DataplaneEnds;
use std::sync::atomic::Ordering;

/// Records taken from a ring per call: the loop gets back to packets in between.
const PER_CALL: usize = 256;

/// Applies pending commands. `Some(remove_access)` when control asked for shutdown.
pub fn apply_commands(
    engine: &mut Engine,
    ends: &mut DataplaneEnds,
    counters: &WorkerCounters,
    now: u64,
    tx: &mut impl TxSink,
) -> Option<bool> {
    for _ in 0..PER_CALL {
        match ends.cmd.pop_with(Command::decode_and_scrub) {
            Ok(Some(Ok(cmd))) => {
                if let Some(remove) = engine.apply(now, cmd, tx) {
                    return Some(remove);
                }
            }
            Ok(Some(Err(e))) => {
                warn!("undecodable command: {e}");
                counters.inc(Counter::BadCommands, 1);
            }
            Ok(None) => break,
            Err(e) => {
                warn!("command ring: {e}");
                counters.inc(Counter::RingCorrupt, 1);
                break;
            }
        }
    }
    None
}

/// Takes the packets control injected and hands each to `send`, which returns whether it
/// went (and counts its own failures). Returns how many were taken.
pub fn take_injects(
    ends: &mut DataplaneEnds,
    counters: &WorkerCounters,
    mut send: impl FnMut(PacketRecord<'_>) -> bool,
) -> usize {
    let mut n = 0;
    for _ in 0..PER_CALL {
        let r = ends.inject.pop_with(|slot| match decode_record(slot) {
            Ok(record) => {
                if send(record) {
                    counters.inc(Counter::Injected, 1);
                }
            }
            Err(_) => counters.inc(Counter::BadCommands, 1),
        });
        match r {
            Ok(Some(())) => n += 1,
            Ok(None) => break,
            Err(_) => {
                counters.inc(Counter::RingCorrupt, 1);
                break;
            }
        }
    }
    n
}

/// Moves the engine's events into the event ring. Returns whether any were published.
pub fn publish_events(
    engine: &mut Engine,
    ends: &mut DataplaneEnds,
    counters: &WorkerCounters,
) -> bool {
    publish_events_with(engine, ends, counters, |_| {})
}

/// As [`publish_events`], showing each event to `also` first (a backend with several
/// workers passes them on to the others).
pub fn publish_events_with(
    engine: &mut Engine,
    ends: &mut DataplaneEnds,
    counters: &WorkerCounters,
    mut also: impl FnMut(&omni_shm::records::Event),
) -> bool {
    let mut any = false;
    for ev in engine.drain_events() {
        also(&ev);
        match ends.event.push_with(|slot| ev.encode(slot)) {
            Ok(()) => any = true,
            Err(_) => counters.inc(Counter::EventsDropped, 1),
        }
    }
    any
}

/// Hands a message for control to the punt ring. Returns whether it went.
pub fn punt(
    ends: &mut DataplaneEnds,
    counters: &WorkerCounters,
    from: Endpoint,
    bytes: &[u8],
) -> bool {
    match ends.punt.push_with(|slot| {
        encode_packet(slot, from, 0, bytes);
    }) {
        Ok(()) => {
            counters.inc(Counter::Punted, 1);
            true
        }
        Err(_) => {
            counters.drop(DropReason::PuntRingFull);
            false
        }
    }
}

/// Tells control a data plane is up (set up, about to serve): its pid, fabric port, access
/// interface index (0 when the kernel has none), whether its daemon started it, how many
/// workers it runs, a first heartbeat, and a new generation, published last: control
/// replays its state (to every worker) when the generation changes. Returns the generation.
pub fn announce(h: &Header, port: u16, access_ifindex: u32, supervised: bool, workers: u32) -> u32 {
    h.dp_pid.store(std::process::id(), Ordering::Relaxed);
    h.dp_workers.store(workers, Ordering::Relaxed);
    h.dp_port.store(port as u32, Ordering::Relaxed);
    h.dp_access_ifindex.store(access_ifindex, Ordering::Relaxed);
    h.dp_supervised.store(supervised as u32, Ordering::Relaxed);
    h.dp_heartbeat_ms.store(monotonic_ms(), Ordering::Relaxed);
    let generation = h.dp_generation.load(Ordering::Relaxed).wrapping_add(1);
    h.dp_generation.store(generation, Ordering::Release);
    generation
}
