//! The one worker loop of every backend, over a narrow [`Port`] (as wireguard-go's device
//! loop over its `Bind`): a backend says how it receives, sends and waits; everything
//! else an I/O worker does is here, once.
//!
//! Each pass: the port may stop the worker (another worker failed); commands from control
//! (a shutdown ends the loop); the port's preparation (the XDP session map, mail from
//! other workers); packets control injected; a burst from each side of the port; the flush
//! of what the pass queued; the engine's events for control. The first worker also keeps
//! the heartbeat (100 ms) and the engine's time-outs and the port's health (1 s). Then the
//! port decides how to wait for more ([`Port::wait`]): poll a while, sleep, or park until a
//! descriptor, the doorbell or a termination signal wakes it ([`Shell::park`]). A port
//! that never parks reads signals itself ([`Shell::signalled`], from [`Port::stopping`]):
//! a port that parks must not pay two system calls for them on every wake-up.

use std::sync::atomic::{Ordering, fence};

use omni_shm::bell::Bell;
use omni_shm::clock::{BusyMeter, monotonic_ms, monotonic_ns};
use omni_shm::counters::{Counter, WorkerCounters};
use omni_shm::endpoint::Endpoint;
use omni_shm::layout::Header;
use omni_shm::records::{Event, PacketRecord};
use omni_shm::region::{DataplaneEnds, Region};
use omni_sys::SignalFd;
use tracing::info;

use super::channel;
use crate::engine::{Engine, TxSink};

/// How often the first worker tells control it is alive.
const HEARTBEAT_MS: u64 = 100;
/// How often the engine's time-outs run and the port's health is checked.
const HOUSEKEEPING_MS: u64 = 1000;

/// What every I/O worker holds, whatever its ports: the engine, its end of the control
/// channel and the shared header.
pub struct Shell<'r> {
    pub engine: Engine<'r>,
    pub ends: DataplaneEnds<'r>,
    pub header: &'r Header,
    pub counters: &'r WorkerCounters,
    pub bell: &'r Bell,
    /// The first worker keeps time for all: the heartbeat and the engine's time-outs
    /// (sessions it retires go to the others through its `SessionExpired` events).
    pub first: bool,
    /// Termination signals, read by the worker given them.
    pub signals: Option<&'r SignalFd>,
    /// A message was punted since control was last rung.
    punted: bool,
    /// When the worker last went to sleep in [`Shell::park`], if it did since the loop
    /// last looked: a pass with work before it ended there.
    parked_at_ns: Option<u64>,
}

impl<'r> Shell<'r> {
    /// Worker `worker`'s shell over `region`: its engine, rings and counters.
    pub fn new(
        region: &'r Region,
        worker: usize,
        bell: &'r Bell,
        signals: Option<&'r SignalFd>,
    ) -> Self {
        Self {
            engine: Engine::new(region, worker),
            ends: region.dataplane_ends(worker),
            header: region.header(),
            counters: region.counters(worker),
            bell,
            first: worker == 0,
            signals,
            punted: false,
            parked_at_ns: None,
        }
    }

    /// Hands a message for control (a handshake, a Nucleus message) to the punt ring;
    /// control is rung at the end of the pass.
    pub fn punt(&mut self, from: Endpoint, bytes: &[u8]) {
        self.punted |= channel::punt(&mut self.ends, self.counters, from, bytes);
    }

    /// Parks: marks the worker parked, so control rings the doorbell for what it sends,
    /// checks the rings once more (a command may have raced the flag) and, if they are
    /// still empty, runs `wait` (which sleeps until a descriptor, the doorbell or a signal
    /// wakes it). `None`: something came meanwhile, no wait.
    pub fn park<T>(&mut self, wait: impl FnOnce() -> T) -> Option<T> {
        self.header.dp_parked.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let woken = if !self.ends.cmd.is_empty() || !self.ends.inject.is_empty() {
            None
        } else {
            self.parked_at_ns = Some(monotonic_ns());
            Some(wait())
        };
        self.header.dp_parked.store(0, Ordering::Relaxed);
        woken
    }

    /// Reads a pending termination signal, if this worker holds them. `true`: stop.
    pub fn signalled(&self) -> bool {
        match self.signals.and_then(|s| s.read()) {
            Some(sig) => {
                info!(sig, "signal received, shutting down");
                true
            }
            None => false,
        }
    }

    fn ring_control_if_parked(&self) {
        fence(Ordering::SeqCst);
        if self.header.ctl_parked.load(Ordering::Relaxed) != 0 {
            self.bell.ring();
        }
    }
}

/// What a pass, or the bursts of one, found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Packets (and other units of work) handled.
    pub work: usize,
    /// A source may hold more than the pass took: go round again at once.
    pub more: bool,
}

/// A backend's ports as the loop sees them. `Some(remove_access)` from a method stops the
/// worker (with whether the access interface should go).
pub trait Port {
    /// The underlay transmit side the engine queues sealed packets on.
    type Tx: TxSink;

    fn tx(&mut self) -> &mut Self::Tx;

    /// Whether the worker must stop before this pass (an error: the data plane fails); a
    /// port that never parks reads termination signals here.
    fn stopping(&mut self, _now: u64, _shell: &Shell) -> anyhow::Result<Option<bool>> {
        Ok(None)
    }

    /// Before the pass's packets. Returns the work done.
    fn prepare(&mut self, _now: u64, _shell: &mut Shell) -> usize {
        0
    }

    /// Sends one packet control injected, with IP TTL / hop limit `ttl` unless it is 0, by
    /// underlay socket `local` ([`Engine::uplink_to`]; 0 where the port has one). Returns
    /// whether it went (failures counted).
    fn inject(&mut self, now: u64, to: Endpoint, ttl: u8, local: u8, bytes: &[u8]) -> bool;

    /// Receives and handles a burst from each side.
    fn bursts(&mut self, now: u64, shell: &mut Shell) -> anyhow::Result<Pass>;

    /// Sends what the pass queued.
    fn flush(&mut self);

    /// An event the engine raised, on its way to control.
    fn published(&mut self, _event: &Event) {}

    /// With the heartbeat (first worker); `since_ms`: since the last one (0 at the first).
    fn heartbeat(&mut self, _since_ms: u64) {}

    /// After the engine's time-outs (first worker). An error stops the data plane.
    fn housekeeping(&mut self, _now: u64, _shell: &mut Shell) -> anyhow::Result<()> {
        Ok(())
    }

    /// After every pass: returns at once when there is more to do, else waits (polls a
    /// while, sleeps, or parks with [`Shell::park`]) until there may be.
    fn wait(&mut self, now: u64, shell: &mut Shell, pass: Pass) -> anyhow::Result<Option<bool>>;

    /// The worker stops: finish what is in flight.
    fn finish(&mut self, _shell: &mut Shell) {}
}

/// Runs the worker until it stops. Returns whether the access interface should be removed.
pub fn run<P: Port>(shell: &mut Shell, port: &mut P) -> anyhow::Result<bool> {
    let r = passes(shell, port);
    port.finish(shell);
    r
}

fn passes<P: Port>(shell: &mut Shell, port: &mut P) -> anyhow::Result<bool> {
    let mut last_heartbeat = 0;
    let mut last_housekeeping = monotonic_ms();
    let mut busy = BusyMeter::default();
    loop {
        let start = monotonic_ns();
        if let Some(ns) = busy.pass(start) {
            shell.counters.inc(Counter::BusyNs, ns);
            shell.counters.inc(Counter::BusyPasses, 1);
        }
        let now = start / 1_000_000;
        if let Some(remove) = port.stopping(now, shell)? {
            return Ok(remove);
        }
        let Shell { engine, ends, counters, .. } = shell;
        if let Some(remove) = channel::apply_commands(engine, ends, counters, now, port.tx()) {
            port.flush();
            return Ok(remove);
        }
        let prepared = port.prepare(now, shell);
        let Shell { engine, ends, counters, .. } = shell;
        let injected = channel::take_injects(ends, counters, |record| match record {
            PacketRecord::Datagram { addr, ttl, bytes } => {
                port.inject(now, addr, ttl, engine.uplink_to(&addr), bytes)
            }
            PacketRecord::Control { peer, bytes } => {
                engine.send_control(now, peer, bytes, port.tx())
            }
        });
        let burst = port.bursts(now, shell)?;
        port.flush();
        let Shell { engine, ends, counters, .. } = shell;
        let published =
            channel::publish_events_with(engine, ends, counters, |ev| port.published(ev));
        let notify = published | std::mem::take(&mut shell.punted);
        if shell.first && now.saturating_sub(last_heartbeat) >= HEARTBEAT_MS {
            shell.header.dp_heartbeat_ms.store(now, Ordering::Relaxed);
            let since = if last_heartbeat == 0 { 0 } else { now - last_heartbeat };
            port.heartbeat(since);
            last_heartbeat = now;
        }
        if shell.first && now.saturating_sub(last_housekeeping) >= HOUSEKEEPING_MS {
            shell.engine.housekeeping(now);
            last_housekeeping = now;
            port.housekeeping(now, shell)?;
        }
        // Only what control reads (events, punts) is worth waking it for.
        if notify {
            shell.ring_control_if_parked();
        }
        let work = prepared + injected + burst.work;
        if work > 0 {
            busy.worked(start);
        }
        // Control's packets are rare: another pass when they came.
        let pass = Pass { work, more: burst.more || injected > 0 };
        if let Some(remove) = port.wait(now, shell, pass)? {
            return Ok(remove);
        }
        // A pass with work that ended in a park lasted until the park, not the next pass.
        if let Some(t) = shell.parked_at_ns.take()
            && let Some(ns) = busy.pass(t)
        {
            shell.counters.inc(Counter::BusyNs, ns);
            shell.counters.inc(Counter::BusyPasses, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::PacketBuf;
    use omni_shm::layout::Params;
    use omni_shm::records::{Command, encode_packet};
    use std::collections::VecDeque;
    use std::os::unix::net::UnixDatagram;
    use std::path::PathBuf;

    #[derive(Default)]
    struct NullTx {
        spare: PacketBuf,
    }

    impl TxSink for NullTx {
        fn buffer(&mut self) -> &mut PacketBuf {
            &mut self.spare
        }
        fn commit(&mut self) {}
        fn commit_swap(&mut self, _pkt: &mut PacketBuf) {}
    }

    /// A port with scripted bursts that records what the loop asks of it; on its third
    /// wait it asks control's side for a shutdown.
    struct Script {
        region: &'static Region,
        tx: NullTx,
        bursts: VecDeque<Pass>,
        injected: Vec<Vec<u8>>,
        waits: Vec<Pass>,
        flushes: usize,
        finished: bool,
        punt_in_first_burst: bool,
        fail: bool,
        /// Each wait parks this long (a port that sleeps in epoll).
        park_ms: u64,
    }

    impl Script {
        fn new(region: &'static Region, bursts: &[Pass]) -> Self {
            Self {
                region,
                tx: NullTx::default(),
                bursts: bursts.iter().copied().collect(),
                injected: vec![],
                waits: vec![],
                flushes: 0,
                finished: false,
                punt_in_first_burst: false,
                fail: false,
                park_ms: 0,
            }
        }
    }

    impl Port for Script {
        type Tx = NullTx;
        fn tx(&mut self) -> &mut NullTx {
            &mut self.tx
        }
        fn stopping(&mut self, _now: u64, _shell: &Shell) -> anyhow::Result<Option<bool>> {
            if self.fail {
                anyhow::bail!("a port failed");
            }
            Ok(None)
        }
        fn inject(&mut self, _now: u64, _to: Endpoint, _ttl: u8, _local: u8, bytes: &[u8]) -> bool {
            self.injected.push(bytes.to_vec());
            true
        }
        fn bursts(&mut self, _now: u64, shell: &mut Shell) -> anyhow::Result<Pass> {
            if std::mem::take(&mut self.punt_in_first_burst) {
                shell.punt(Endpoint::Direct("10.0.0.9:1".parse().unwrap()), b"hello");
            }
            Ok(self.bursts.pop_front().unwrap_or_default())
        }
        fn flush(&mut self) {
            self.flushes += 1;
        }
        fn wait(
            &mut self,
            _now: u64,
            shell: &mut Shell,
            pass: Pass,
        ) -> anyhow::Result<Option<bool>> {
            self.waits.push(pass);
            if self.park_ms > 0 {
                let ms = self.park_ms;
                shell.park(|| std::thread::sleep(std::time::Duration::from_millis(ms)));
            }
            if self.waits.len() == 3 {
                let mut ends = self.region.control_ends(0);
                let cmd = Command::Shutdown { remove_tap: true };
                ends.cmd.push_with(|slot| cmd.encode(slot)).unwrap();
            }
            assert!(self.waits.len() < 100, "the loop did not stop");
            Ok(None)
        }
        fn finish(&mut self, _shell: &mut Shell) {
            self.finished = true;
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("omni-io-loop-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A region, the data plane's doorbell, and control's end of it.
    fn setup(name: &str) -> (&'static Region, &'static Bell, UnixDatagram) {
        let d = dir(name);
        let region = Region::open(&d.join("r.shm"), Params::for_peers(4), true).unwrap();
        let bell = Bell::bind(&d.join("dp.bell"), &d.join("ctl.bell")).unwrap();
        let (control, _) =
            Bell::bind(&d.join("ctl.bell"), &d.join("dp.bell")).unwrap().into_socket();
        control.set_nonblocking(true).unwrap();
        (Box::leak(Box::new(region)), Box::leak(Box::new(bell)), control)
    }

    fn inject(region: &Region, bytes: &[u8]) {
        let to = Endpoint::Direct("10.0.0.2:51820".parse().unwrap());
        region
            .control_ends(0)
            .inject
            .push_with(|slot| {
                encode_packet(slot, to, 0, bytes);
            })
            .unwrap();
    }

    #[test]
    fn a_pass_takes_injects_and_bursts_then_waits_and_a_shutdown_flushes_and_finishes() {
        let (region, bell, _control) = setup("pass");
        inject(region, b"one");
        inject(region, b"two");
        let mut shell = Shell::new(region, 0, bell, None);
        let mut port = Script::new(region, &[Pass { work: 3, more: false }]);
        assert!(run(&mut shell, &mut port).unwrap(), "the shutdown asked to remove the TAP");
        assert_eq!(port.injected, [b"one".to_vec(), b"two".to_vec()]);
        // Injects are work and call for another pass; then nothing came.
        let idle = Pass { work: 0, more: false };
        assert_eq!(port.waits, [Pass { work: 5, more: true }, idle, idle]);
        // Every pass flushed, and the shutdown flushed before the loop ended.
        assert_eq!(port.flushes, 4);
        assert!(port.finished);
        assert!(region.header().dp_heartbeat_ms.load(Ordering::Relaxed) > 0, "first: heartbeat");
        let busy = region.counters(0).get(Counter::BusyPasses);
        assert_eq!(busy, 1, "one pass found work");
    }

    #[test]
    fn time_parked_after_a_pass_with_work_is_not_busy_time() {
        let (region, bell, _control) = setup("busy");
        let mut shell = Shell::new(region, 0, bell, None);
        let mut port = Script::new(region, &[Pass { work: 3, more: false }]);
        port.park_ms = 30;
        run(&mut shell, &mut port).unwrap();
        let c = region.counters(0);
        assert_eq!(c.get(Counter::BusyPasses), 1, "the working pass, up to its park");
        assert!(c.get(Counter::BusyNs) < 30_000_000, "{} ns", c.get(Counter::BusyNs));
    }

    #[test]
    fn a_punt_rings_control_only_while_it_is_parked() {
        for parked in [false, true] {
            let (region, bell, control) = setup(&format!("punt-{parked}"));
            region.header().ctl_parked.store(parked as u32, Ordering::Relaxed);
            let mut shell = Shell::new(region, 0, bell, None);
            let mut port = Script::new(region, &[]);
            port.punt_in_first_burst = true;
            run(&mut shell, &mut port).unwrap();
            assert!(!region.control_ends(0).punt.is_empty(), "the message reached the ring");
            let rung = control.recv(&mut [0u8; 8]).is_ok();
            assert_eq!(rung, parked, "rung only at a parked control (parked: {parked})");
        }
    }

    #[test]
    fn a_worker_that_is_not_first_keeps_no_heartbeat() {
        let (region, bell, _control) = setup("second");
        let mut shell = Shell::new(region, 1, bell, None);
        assert!(!shell.first);
        let mut port = Script::new(region, &[]);
        // Worker 1's shutdown comes on its own ring.
        let cmd = Command::Shutdown { remove_tap: false };
        region.control_ends(1).cmd.push_with(|slot| cmd.encode(slot)).unwrap();
        assert!(!run(&mut shell, &mut port).unwrap());
        assert_eq!(region.header().dp_heartbeat_ms.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_failing_port_stops_the_loop_with_its_error_and_is_still_finished() {
        let (region, bell, _control) = setup("fail");
        let mut shell = Shell::new(region, 0, bell, None);
        let mut port = Script::new(region, &[]);
        port.fail = true;
        let e = run(&mut shell, &mut port).unwrap_err();
        assert_eq!(e.to_string(), "a port failed");
        assert!(port.finished);
        assert!(port.waits.is_empty());
    }

    #[test]
    fn park_waits_only_on_empty_rings_and_says_it_is_parked_meanwhile() {
        let (region, bell, _control) = setup("park");
        let mut shell = Shell::new(region, 0, bell, None);
        let h = region.header();
        assert_eq!(shell.park(|| h.dp_parked.load(Ordering::Relaxed)), Some(1));
        assert_eq!(h.dp_parked.load(Ordering::Relaxed), 0, "unparked after the wait");
        inject(region, b"raced the flag");
        assert_eq!(shell.park(|| unreachable!("a packet is waiting: no sleep")), None::<()>);
        assert_eq!(h.dp_parked.load(Ordering::Relaxed), 0);
    }
}
