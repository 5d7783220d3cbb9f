//! The I/O worker: one run-to-completion loop over its queue pair on both ports, and the
//! AEAD jobs it hands to crypto workers.

use super::*;

/// What a crypto worker does to one packet.
pub(super) enum CryptoJob {
    /// Seal the message at `at..` of a packet whose headers are written.
    Seal { job: SealJob, at: usize, ok: bool },
    /// Open the datagram at `payload`; where it came from, for after.
    Open {
        pending: Option<PendingOpen>,
        payload: std::ops::Range<usize>,
        src: SocketAddr,
        peer_mac: [u8; 6],
        opened: Option<usize>,
    },
}

impl Job for CryptoJob {
    fn run(&mut self, bytes: &mut [u8]) {
        match self {
            CryptoJob::Seal { job, at, ok } => {
                *ok = bytes.get_mut(*at..).and_then(|b| job.run(b)).is_some();
                // Over IPv6 the UDP checksum covers the sealed payload: computed here.
                fill_udp6_checksum(bytes);
            }
            CryptoJob::Open { pending: Some(p), payload, opened, .. } => {
                *opened = bytes.get_mut(payload.clone()).and_then(|d| p.run(d));
            }
            CryptoJob::Open { pending: None, .. } => {}
        }
    }
}

/// How often the first worker looks for termination signals.
const SIGNAL_CHECK_MS: u64 = 50;

/// An I/O worker's own state: its queue pair, its mail, and what it watches.
pub(super) struct DpdkWorker<'r> {
    /// Which worker this is (0: the first, which also watches ports, signals and time).
    pub(super) index: usize,
    /// The RX and TX queue it owns on both ports.
    pub(super) queue: u16,
    pub(super) bus: &'r Bus,
    pub(super) stop: &'r AtomicBool,
    /// Mail taken from the bus, applied each pass (kept to reuse its allocation).
    pub(super) mail: Vec<BusMsg>,
    pub(super) counters: &'r WorkerCounters,
    pub(super) frame: PacketBuf,
    /// Traffic classes: a real-time frame from the access port is sealed here and sent at
    /// once, never in a crypto batch or behind the pass's other packets; a real-time
    /// datagram from the underlay is opened here and delivered before the batch it came
    /// with (docs/qos.md).
    pub(super) classes: ClassMap,
    /// The access port's queue (`[qos] lanes`; see [`AccessQueue`]).
    pub(super) access_queue: Option<AccessQueue<Mbuf<'r>>>,
    /// Real-time frames from the access queue per pass at most (`[qos] real_time_share`).
    pub(super) real_time_per_pass: usize,
    pub(super) busy_poll: bool,
    /// Passes in a row that found nothing (the idle back-off).
    pub(super) idle_passes: u32,
    /// When termination signals were last looked for.
    pub(super) last_signal_check: u64,
    /// When the underlay link went down (None: up).
    pub(super) link_down_since: Option<u64>,
    /// Kernel interfaces behind the ports (role, name, index when started): one that goes
    /// or is replaced takes its port with it.
    pub(super) watched: Vec<(&'static str, String, u32)>,
    /// Consecutive seconds the underlay port failed to report its link.
    pub(super) link_errors: u32,
    pub(super) pool: &'r Mempool,
    pub(super) underlay: &'r EthPort,
    pub(super) access: &'r EthPort,
}

/// An I/O worker with its ports, transmit side, bursts and crypto workers: the DPDK
/// backend's [`Port`] of the one worker loop.
pub(super) struct DpdkPort<'r> {
    pub(super) w: DpdkWorker<'r>,
    pub(super) tx: DpdkTx<'r>,
    pub(super) crypto: Option<Crypto<'r>>,
    pub(super) rx: MbufBurst<'r>,
    pub(super) deliver: MbufBurst<'r>,
}

impl<'r> Port for DpdkPort<'r> {
    type Tx = DpdkTx<'r>;

    fn tx(&mut self) -> &mut Self::Tx {
        &mut self.tx
    }

    /// Another worker failed or the data plane stops: so does this worker. The first reads
    /// termination signals every [`SIGNAL_CHECK_MS`] (a DPDK worker never parks, so nothing
    /// else would).
    fn stopping(&mut self, now: u64, shell: &Shell) -> anyhow::Result<Option<bool>> {
        if self.w.stop.load(Ordering::Acquire) {
            if self.w.index == 0 {
                anyhow::bail!("an I/O worker stopped");
            }
            return Ok(Some(false));
        }
        if self.crypto.as_ref().is_some_and(Crypto::failed) {
            anyhow::bail!("a crypto worker stopped");
        }
        if shell.signals.is_some()
            && now.saturating_sub(self.w.last_signal_check) >= SIGNAL_CHECK_MS
        {
            self.w.last_signal_check = now;
            // Rung only at a parked process: what came meanwhile is stale.
            shell.bell.drain();
            if shell.signalled() {
                return Ok(Some(true));
            }
        }
        Ok(None)
    }

    fn prepare(&mut self, now: u64, shell: &mut Shell) -> usize {
        self.w.read_mail(now, shell, &mut self.tx)
    }

    /// Control's packets (handshakes, Nucleus messages): framed as they come, sent with
    /// the pass's flush.
    fn inject(&mut self, now: u64, to: Endpoint, ttl: u8, _local: u8, bytes: &[u8]) -> bool {
        match to {
            Endpoint::Direct(a) => self.tx.datagram(now, a, 0, ttl, &[bytes]),
            Endpoint::Relay { via, tag } => {
                let hdr = omni_proto::wire::relay::header(false, &tag);
                self.tx.datagram(now, via, 0, ttl, &[&hdr, bytes])
            }
        }
    }

    fn bursts(&mut self, now: u64, shell: &mut Shell) -> anyhow::Result<Pass> {
        let Self { w, tx, crypto, rx, deliver } = self;
        let mut work = w.underlay_burst(now, shell, tx, rx, deliver, crypto.as_mut());
        work += w.access_burst(now, shell, tx, rx, crypto.as_mut());
        if let Some(c) = crypto.as_mut() {
            while let Some(b) = c.ready(false) {
                work += b.len();
                w.finish_batch(now, shell, c, b, tx, deliver);
            }
        }
        Ok(Pass { work, more: work > 0 })
    }

    fn flush(&mut self) {
        self.tx.flush();
    }

    /// With several workers, the others apply what this one's engine decided.
    fn published(&mut self, ev: &Event) {
        let w = &self.w;
        if w.bus.boxes.len() > 1 && !w.bus.post_others(w.index, || BusMsg::Event(ev.clone())) {
            w.counters.inc(Counter::EventsDropped, 1);
        }
    }

    fn housekeeping(&mut self, now: u64, _shell: &mut Shell) -> anyhow::Result<()> {
        self.w.watch_link(now);
        // A port that is gone cannot come back inside this process (DPDK probed it once):
        // exit with the reason, and whoever supervises the data plane (omni-daemon,
        // systemd) starts a new one, which waits for the port.
        if let Err(e) = self.w.ports_present() {
            tracing::error!(
                "{e}; stopping so that a new data plane can take the port when it returns"
            );
            anyhow::bail!(e);
        }
        Ok(())
    }

    /// Batches in flight come back within microseconds: no sleeping meanwhile (but waiting
    /// for them is not work: it stays out of the busy time). Idle: sleep a little, longer
    /// the longer it stays idle (at most 1 ms), so a shared core is not burnt; the first
    /// packet after costs up to that. Nothing rings a DPDK worker: it never parks.
    fn wait(&mut self, _now: u64, _shell: &mut Shell, pass: Pass) -> anyhow::Result<Option<bool>> {
        let waiting = self.crypto.as_ref().map_or(0, |c| c.in_flight());
        let w = &mut self.w;
        if pass.work + waiting > 0 {
            w.idle_passes = 0;
            return Ok(None);
        }
        w.idle_passes = w.idle_passes.saturating_add(1);
        if !w.busy_poll && w.idle_passes > 64 {
            let us = (w.idle_passes as u64 - 64).clamp(20, 1000);
            std::thread::sleep(Duration::from_micros(us));
        }
        Ok(None)
    }

    /// Whatever the crypto workers still hold is finished (delivered or sent) before they
    /// stop, so no packet is lost to a clean stop.
    fn finish(&mut self, shell: &mut Shell) {
        // Frames read ahead into the access queue go out too, sealed here.
        if let Some(mut q) = self.w.access_queue.take() {
            let now = monotonic_ms();
            while let Some(served) = q.next(monotonic_us()) {
                let real_time = served.class == Class::RealTime;
                let tx = &mut self.tx;
                self.w.seal_access_frame(now, shell, tx, served.frame.buf, real_time, None);
            }
        }
        if let Some(c) = self.crypto.as_mut() {
            while let Some(b) = c.ready(true) {
                let (tx, deliver) = (&mut self.tx, &mut self.deliver);
                self.w.finish_batch(monotonic_ms(), shell, c, b, tx, deliver);
            }
        }
        self.tx.flush();
    }
}

impl<'r> DpdkWorker<'r> {
    /// Once a second: logs underlay link changes; a link down for 3 s gets its port
    /// restarted (a memif client whose server came back connects again; a NIC renegotiates).
    fn watch_link(&mut self, now: u64) {
        let underlay = self.underlay;
        let up = underlay.link().map(|l| l.up).unwrap_or(false);
        match (up, self.link_down_since) {
            (true, Some(_)) => {
                info!(port = underlay.name(), "underlay link up");
                self.link_down_since = None;
            }
            (false, None) => {
                warn!(port = underlay.name(), "underlay link down");
                self.link_down_since = Some(now);
            }
            (false, Some(t)) if now.saturating_sub(t) >= 3000 => {
                info!(port = underlay.name(), "underlay link still down: restarting the port");
                if let Err(e) = underlay.restart() {
                    warn!(port = underlay.name(), "port restart failed: {e}");
                }
                self.link_down_since = Some(now);
            }
            _ => {}
        }
    }

    /// Whether the ports are still there: their kernel interfaces (same index as at start)
    /// and, for any port, a link status DPDK can still read.
    fn ports_present(&mut self) -> Result<(), String> {
        let underlay = self.underlay;
        for (role, name, index) in &self.watched {
            match omni_sys::netif::if_index(name) {
                0 => return Err(format!("the {role} port's interface {name} is gone")),
                i if i != *index => {
                    return Err(format!("the {role} port's interface {name} was replaced"));
                }
                _ => {}
            }
        }
        if underlay.link().is_err() {
            self.link_errors += 1;
            if self.link_errors >= 3 {
                return Err(format!(
                    "the underlay port {} no longer answers (removed?)",
                    underlay.name()
                ));
            }
        } else {
            self.link_errors = 0;
        }
        Ok(())
    }

    /// A burst from the underlay: ARP answered, fabric datagrams opened in place and the
    /// frames passed to the access port in the same mbufs. With crypto workers, transport
    /// messages go to them as one batch (opened there, finished here in order).
    fn underlay_burst(
        &mut self,
        now: u64,
        shell: &mut Shell,
        tx: &mut DpdkTx<'r>,
        rx: &mut MbufBurst<'r>,
        deliver: &mut MbufBurst<'r>,
        mut crypto: Option<&mut Crypto<'r>>,
    ) -> usize {
        let n = self.underlay.rx_burst(self.queue, rx, self.pool);
        if n == 0 {
            return 0;
        }
        let port = tx.udp_port;
        let mut batch = crypto.as_deref_mut().map(|c| c.batch());
        for mut m in rx.drain() {
            let data = m.data_mut();
            if Neighbours::wants(data) {
                match tx.neighbours.on_frame(now, data) {
                    ArpAction::Reply(r) => tx.raw(&r),
                    ArpAction::Learned | ArpAction::Ignore => {}
                }
                if self.bus.boxes.len() > 1 {
                    self.bus.post_others(self.index, || BusMsg::Neighbour(data.to_vec()));
                }
                if !tx.pending.is_empty() {
                    tx.retry_pending(now);
                }
                continue;
            }
            let Some(u) = underlay::parse(data, port) else {
                // Not the fabric's (other traffic on a dedicated NIC): dropped, counted.
                self.counters.drop(DropReason::Malformed);
                continue;
            };
            if u.route.our_ip != tx.neighbours.our_ip
                || u.route.vlan.map(|t| t & 0x0fff) != tx.neighbours.vlan
            {
                self.counters.drop(DropReason::Malformed);
                continue;
            }
            let (payload, src, peer_mac, tos) = (u.payload, u.src, u.route.peer_mac, u.tos);
            // The receive lane: a real-time datagram is opened here, not in a batch, and
            // delivered with this burst, ahead of the batches in flight.
            let real_time = self.classes.dscp[(tos >> 2) as usize] == Class::RealTime;
            if real_time {
                self.counters.inc(Counter::RealTimeReceived, 1);
                if let Some(q) = self.access_queue.as_mut() {
                    // Its answer may follow on the access port: read it dry for a while.
                    q.saw_real_time(monotonic_us());
                }
            }
            let verdict = match batch.as_mut() {
                Some(b) if !real_time => {
                    match shell.engine.decap_start_marked(now, src, tos, &data[payload.clone()]) {
                        DecapStart::Open(p) => {
                            let job = CryptoJob::Open {
                                pending: Some(p),
                                payload,
                                src,
                                peer_mac,
                                opened: None,
                            };
                            b.push(Item { buf: m, job });
                            continue;
                        }
                        DecapStart::Done(d) => d,
                    }
                }
                _ => shell.engine.decap_marked(now, src, tos, &mut data[payload.clone()], tx),
            };
            self.after_decap(now, shell, verdict, m, payload.start, src, peer_mac, tx, deliver);
        }
        self.deliver(deliver);
        if let (Some(c), Some(b)) = (crypto, batch) {
            self.dispatch(now, shell, c, b, tx, deliver);
        }
        n
    }

    /// Acts on the engine's verdict for the datagram at `p0..` of `m`.
    #[allow(clippy::too_many_arguments)]
    fn after_decap(
        &mut self,
        now: u64,
        shell: &mut Shell,
        verdict: Decap,
        mut m: Mbuf<'r>,
        p0: usize,
        src: SocketAddr,
        peer_mac: [u8; 6],
        tx: &mut DpdkTx<'r>,
        deliver: &mut MbufBurst<'r>,
    ) {
        match verdict {
            Decap::Deliver { offset, len, checksum } => {
                tx.neighbours.learn(now, src.ip(), peer_mac);
                if let Some(c) = checksum {
                    // The access port takes complete frames: finish what the sender left.
                    let at = p0 + offset;
                    crate::offload::csum::finish_state(&mut m.data_mut()[at..at + len], c);
                }
                let total = m.len();
                // The caller empties the burst before it can fill (at most one out per
                // packet in, bursts of at most BURST); dropped if it ever were full.
                if m.adj(p0 + offset)
                    && m.trim(total - (p0 + offset) - len)
                    && let Err(m) = deliver.push(m)
                {
                    drop(m);
                }
            }
            Decap::Keepalive => tx.neighbours.learn(now, src.ip(), peer_mac),
            Decap::Punt { from, offset, len } => {
                let bytes = &m.data()[p0 + offset..p0 + offset + len];
                shell.punt(from, bytes);
            }
            Decap::Drop(_) => {}
        }
    }

    /// Sends the frames in `deliver` to the access port (what it cannot take is counted).
    fn deliver(&mut self, deliver: &mut MbufBurst<'_>) {
        for _ in 0..4 {
            if deliver.is_empty() {
                break;
            }
            self.access.tx_burst(self.queue, deliver);
        }
        if !deliver.is_empty() {
            self.counters.drop_n(DropReason::AccessError, deliver.len() as u64);
            drop(std::mem::take(deliver));
        }
    }

    /// Hands a batch to the crypto workers, first finishing the oldest ones while all
    /// their room is taken.
    fn dispatch(
        &mut self,
        now: u64,
        shell: &mut Shell,
        c: &mut Crypto<'r>,
        b: Batch<Mbuf<'r>, CryptoJob>,
        tx: &mut DpdkTx<'r>,
        deliver: &mut MbufBurst<'r>,
    ) {
        while !c.has_room() {
            let Some(done) = c.ready(true) else { break };
            self.finish_batch(now, shell, c, done, tx, deliver);
        }
        c.dispatch(b);
    }

    /// A batch back from a crypto worker, in the order batches went out: sealed packets
    /// go to the underlay, opened ones are checked again (replay, session) and delivered.
    fn finish_batch(
        &mut self,
        now: u64,
        shell: &mut Shell,
        c: &mut Crypto<'r>,
        mut b: Batch<Mbuf<'r>, CryptoJob>,
        tx: &mut DpdkTx<'r>,
        deliver: &mut MbufBurst<'r>,
    ) {
        for Item { buf: m, job } in b.drain(..) {
            match job {
                CryptoJob::Seal { ok: true, .. } => tx.push_out(m),
                CryptoJob::Seal { ok: false, .. } => self.counters.drop(DropReason::TxError),
                CryptoJob::Open { pending, payload, src, peer_mac, opened } => {
                    let Some(p) = pending else { continue };
                    let mut m = m;
                    let data = &mut m.data_mut()[payload.clone()];
                    let verdict = shell.engine.decap_finish(now, p, opened, data, tx);
                    self.after_decap(
                        now,
                        shell,
                        verdict,
                        m,
                        payload.start,
                        src,
                        peer_mac,
                        tx,
                        deliver,
                    );
                }
            }
        }
        c.recycle(b);
        self.deliver(deliver);
        tx.send_out();
    }

    /// Frames from the access port, sealed and queued for the underlay. With an access
    /// queue (`[qos] lanes`), the port is read ahead into it and real-time frames go first
    /// ([`DpdkWorker::queued_access_burst`]); without, one burst as it comes.
    fn access_burst(
        &mut self,
        now: u64,
        shell: &mut Shell,
        tx: &mut DpdkTx<'r>,
        rx: &mut MbufBurst<'r>,
        mut crypto: Option<&mut Crypto<'r>>,
    ) -> usize {
        if self.access_queue.is_some() {
            return self.queued_access_burst(now, shell, tx, rx, crypto);
        }
        let n = self.access.rx_burst(self.queue, rx, self.pool);
        if n == 0 {
            return 0;
        }
        let mut batch = crypto.as_deref_mut().map(|c| c.batch());
        for m in rx.drain() {
            let real_time = self.classes.classify(m.data()) == Class::RealTime;
            self.seal_access_frame(now, shell, tx, m, real_time, batch.as_mut());
            if real_time {
                // Out now (with what is already sealed ahead of it).
                tx.send_out();
            }
        }
        self.dispatch_seals(now, shell, crypto, batch, tx);
        n
    }

    /// Hands the access side's batch of seals to the crypto workers (with none, everything
    /// was sealed in place already). Sealing delivers nothing to the access port.
    fn dispatch_seals(
        &mut self,
        now: u64,
        shell: &mut Shell,
        crypto: Option<&mut Crypto<'r>>,
        batch: Option<Batch<Mbuf<'r>, CryptoJob>>,
        tx: &mut DpdkTx<'r>,
    ) {
        if let (Some(c), Some(b)) = (crypto, batch) {
            self.dispatch(now, shell, c, b, tx, &mut MbufBurst::new());
        }
    }

    /// The access port with a queue: reads up to [`ACCESS_READ_MAX`] frames ahead (the
    /// port's ring is where a real-time frame could not overtake), then seals the queued
    /// real-time frames (up to their share of the pass) and a burst of bulk ones, CoDel
    /// marking or dropping those that waited too long.
    fn queued_access_burst(
        &mut self,
        now: u64,
        shell: &mut Shell,
        tx: &mut DpdkTx<'r>,
        rx: &mut MbufBurst<'r>,
        mut crypto: Option<&mut Crypto<'r>>,
    ) -> usize {
        let mut q = self.access_queue.take().expect("called with a queue");
        let now_us = monotonic_us();
        let mut read = 0;
        // A burst is read only where it fits whole (the pool holds that many for the queue).
        while read < ACCESS_READ_MAX && q.len() + BURST <= ACCESS_QUEUE_FRAMES && q.has_room(now_us)
        {
            let n = self.access.rx_burst(self.queue, rx, self.pool);
            for m in rx.drain() {
                let (sort, len) = (q.sort(m.data()), m.len());
                q.push(m, sort, len, now_us);
            }
            read += n;
            if n < BURST {
                break;
            }
        }
        let mut batch = crypto.as_deref_mut().map(|c| c.batch());
        // Real-time frames take the lane up to their share of the pass; past it they are
        // sealed as bulk ones are (and count as such), so marking everything real time
        // cannot starve the rest.
        let (mut bulk, mut on_lane, mut unsent) = (0, 0, false);
        while bulk < BURST || (q.has_real_time() && on_lane < self.real_time_per_pass) {
            let Some(mut served) = q.next(now_us) else { break };
            let lane = served.class == Class::RealTime && on_lane < self.real_time_per_pass;
            if !lane && std::mem::take(&mut unsent) {
                // The real-time run is over: out now, ahead of the bulk that follows.
                tx.send_out();
            }
            on_lane += usize::from(lane);
            bulk += usize::from(!lane);
            if served.settle(0, self.counters) {
                let (m, b) = (served.frame.buf, batch.as_mut());
                self.seal_access_frame(now, shell, tx, m, lane, b);
                unsent |= lane;
            }
        }
        if unsent {
            tx.send_out();
        }
        self.access_queue = Some(q);
        self.dispatch_seals(now, shell, crypto, batch, tx);
        read + bulk
    }

    /// Seals one frame from the access port. A unicast frame to a peer with a session is
    /// sealed where it lies: outer headers and the transport header go into the mbuf's
    /// headroom, the tag into its tailroom, and the same mbuf is sent (no copy); with
    /// crypto workers its AEAD runs there, in `batch`. A real-time frame is sealed here,
    /// never in a batch, for the caller to send at once. Anything else (flooding, staging,
    /// short rooms) takes the engine's buffer path.
    fn seal_access_frame(
        &mut self,
        now: u64,
        shell: &mut Shell,
        tx: &mut DpdkTx<'r>,
        mut m: Mbuf<'r>,
        real_time: bool,
        batch: Option<&mut Batch<Mbuf<'r>, CryptoJob>>,
    ) {
        let flen = m.len();
        if !m.is_contiguous() || flen > self.frame.frame_area().len() {
            self.counters.drop(DropReason::BadFrame);
            return;
        }
        let head = tx.outer_len + TRANSPORT_HEADER_LEN;
        if m.headroom() >= head + relay::HEADER_LEN
            && m.tailroom() >= AEAD_TAG_LEN
            && m.prepend(head)
            && m.append(AEAD_TAG_LEN)
        {
            let msg = &mut m.data_mut()[tx.outer_len..];
            let (verdict, job) = match batch {
                Some(_) if !real_time => shell.engine.encap_in_place_deferred(now, msg, flen),
                _ => (shell.engine.encap_in_place(now, msg, flen), None),
            };
            match (verdict, job, batch) {
                (InPlace::Sealed { len, to, tos }, Some(job), Some(b)) => {
                    if let Some((m, at)) = tx.frame_in_place(now, m, len, to, tos, Some(&job)) {
                        b.push(Item { buf: m, job: CryptoJob::Seal { job, at, ok: false } });
                    }
                    return;
                }
                (InPlace::Sealed { len, to, tos }, _, _) => {
                    if let Some((m, _)) = tx.frame_in_place(now, m, len, to, tos, None) {
                        tx.push_out(m);
                        if real_time {
                            self.counters.inc(Counter::RealTimeSent, 1);
                        }
                    }
                    return;
                }
                (InPlace::Dropped, _, _) => return,
                (InPlace::Fallback, _, _) => {
                    // Untouched: back to the bare frame.
                    let _ = m.adj(head) && m.trim(AEAD_TAG_LEN);
                }
            }
        }
        let f = m.data();
        self.frame.frame_area()[..f.len()].copy_from_slice(f);
        self.frame.len = f.len();
        drop(m);
        shell.engine.encap(now, &mut self.frame, tx);
    }

    /// Applies what the other workers posted. Returns how many messages there were.
    fn read_mail(&mut self, now: u64, shell: &mut Shell, tx: &mut DpdkTx<'_>) -> usize {
        self.bus.take(self.index, &mut self.mail);
        let n = self.mail.len();
        for msg in self.mail.drain(..) {
            match msg {
                BusMsg::Event(ev) => shell.engine.observe(now, &ev, tx),
                BusMsg::Neighbour(frame) => {
                    // Learning only: the worker that received it answered it.
                    let _ = tx.neighbours.on_frame(now, &frame);
                }
            }
        }
        if n > 0 && !tx.pending.is_empty() {
            tx.retry_pending(now);
        }
        n
    }
}
