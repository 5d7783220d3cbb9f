//! What the I/O workers share: the message bus that carries one worker's engine decisions
//! to the others (a flag a pass, a lock only when mail came), and the state they set up once.

use super::*;

/// What one I/O worker tells the others. Rare (events, ARP/ND), never per data packet.
pub(super) enum BusMsg {
    /// An event the worker's engine raised: the others apply it ([`Engine::observe`]).
    Event(Event),
    /// An ARP or ND frame from the underlay: the others learn from it too (the reply to
    /// one worker's request may come in on another's queue).
    Neighbour(Vec<u8>),
}

/// Messages waiting per message box before more are dropped (counted).
pub(super) const BUS_MAX: usize = 4096;

/// One message box per I/O worker. A worker looks at its flag every loop pass and takes
/// the lock only when mail came.
pub(super) struct Bus {
    pub(super) boxes: Vec<(AtomicBool, Mutex<Vec<BusMsg>>)>,
}

impl Bus {
    pub(super) fn new(workers: usize) -> Self {
        Self { boxes: (0..workers).map(|_| (AtomicBool::new(false), Mutex::new(vec![]))).collect() }
    }

    /// Posts `msg()` to every worker but `from`. Returns false if a box was full.
    pub(super) fn post_others(&self, from: usize, msg: impl Fn() -> BusMsg) -> bool {
        let mut all = true;
        for (i, (flag, q)) in self.boxes.iter().enumerate() {
            if i == from {
                continue;
            }
            let mut q = q.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() < BUS_MAX {
                q.push(msg());
                flag.store(true, Ordering::Release);
            } else {
                all = false;
            }
        }
        all
    }

    /// Takes `to`'s mail, if any came.
    pub(super) fn take(&self, to: usize, into: &mut Vec<BusMsg>) {
        let (flag, q) = &self.boxes[to];
        if flag.load(Ordering::Acquire) {
            flag.store(false, Ordering::Relaxed);
            std::mem::swap(&mut *q.lock().unwrap_or_else(|p| p.into_inner()), into);
        }
    }
}

/// What every I/O worker of one data plane shares.
pub(super) struct Shared<'r> {
    pub(super) region: &'r Region,
    pub(super) bell: &'r Bell,
    pub(super) pool: &'r Mempool,
    pub(super) underlay: &'r EthPort,
    pub(super) access: &'r EthPort,
    pub(super) cfg: &'r DpdkConfig,
    pub(super) our_mac: [u8; 6],
    pub(super) bus: &'r Bus,
    /// Set when the data plane stops (by the first worker, or one that failed).
    pub(super) stop: &'r AtomicBool,
}

impl<'r> Shared<'r> {
    /// Worker `i`'s shell: its engine and end of the control channel (the first worker
    /// is given the termination signals).
    pub(super) fn shell(&self, i: usize, signals: Option<&'r omni_sys::SignalFd>) -> Shell<'r> {
        let mut shell = Shell::new(self.region, i, self.bell, signals);
        // One I/O worker receives everything (crypto workers only run the AEAD; the
        // window is updated back on the I/O worker): no other engine shares its windows.
        shell.engine.set_sole_receiver(self.cfg.workers == 1);
        shell.engine.set_classes(self.cfg.classes.clone());
        shell
    }

    /// Worker `i`'s ports, transmit side and crypto workers.
    pub(super) fn port(&self, i: usize, crypto: Option<Crypto<'r>>) -> DpdkPort<'r> {
        let w = DpdkWorker {
            index: i,
            queue: i as u16,
            bus: self.bus,
            stop: self.stop,
            mail: Vec::new(),
            counters: self.region.counters(i),
            frame: PacketBuf::new(),
            classes: self.cfg.classes.clone(),
            real_time_per_pass: crate::backend::access_queue::real_time_per_pass(
                BURST,
                self.cfg.real_time_share,
            ),
            access_queue: self.cfg.lanes.then(|| {
                let cfg = self.cfg;
                AccessQueue::new(
                    cfg.classes.clone(),
                    ACCESS_QUEUE_FRAMES,
                    cfg.delay_target_us,
                    ACCESS_INTERVAL_US,
                )
                .with_shallow_bytes(ACCESS_SHALLOW_BYTES)
            }),
            busy_poll: self.cfg.busy_poll,
            idle_passes: 0,
            last_signal_check: 0,
            link_down_since: None,
            watched: Vec::new(),
            link_errors: 0,
            pool: self.pool,
            underlay: self.underlay,
            access: self.access,
        };
        DpdkPort { w, tx: self.tx(i), crypto, rx: MbufBurst::new(), deliver: MbufBurst::new() }
    }

    fn tx(&self, i: usize) -> DpdkTx<'r> {
        let cfg = self.cfg;
        let mut neighbours =
            Neighbours::new(cfg.underlay_ip, cfg.prefix_len, self.our_mac, cfg.gateway);
        neighbours.vlan = cfg.vlan;
        DpdkTx {
            pool: self.pool,
            port: self.underlay,
            queue: i as u16,
            out: MbufBurst::new(),
            bufs: (0..BURST).map(|_| PacketBuf::new()).collect(),
            n: 0,
            neighbours,
            udp_port: cfg.port,
            counters: self.region.counters(i),
            max_ip: cfg.underlay_mtu as usize,
            pending: std::collections::VecDeque::new(),
            outer: None,
            outer_len: if cfg.underlay_ip.is_ipv4() { OUTER_V4 } else { OUTER_V6 }
                + if cfg.vlan.is_some() { VLAN_TAG_LEN } else { 0 },
        }
    }

    /// The life of I/O worker `i` (not the first) on its own thread, pinned to `cpu`.
    pub(super) fn run_other(&self, i: usize, cpu: u32) -> anyhow::Result<bool> {
        let r = self.run_other_inner(i, cpu);
        // However it ends, the others stop too: a data plane missing a worker would drop
        // every flow the NIC hands that worker's queues.
        self.stop.store(true, Ordering::Release);
        r
    }

    fn run_other_inner(&self, i: usize, cpu: u32) -> anyhow::Result<bool> {
        if let Err(e) = omni_sys::affinity::pin_current_thread(cpu) {
            warn!(worker = i, cpu, "cannot pin the I/O worker to its core: {e}");
        }
        let lcore = omni_dpdk::register_thread()
            .with_context(|| format!("I/O worker {i} cannot register with EAL"))?;
        info!(worker = i, cpu, lcore, "I/O worker ready");
        let mut shell = self.shell(i, None);
        let mut port = self.port(i, None);
        let r = io_loop::run(&mut shell, &mut port);
        drop(port);
        omni_dpdk::unregister_thread();
        r
    }
}
