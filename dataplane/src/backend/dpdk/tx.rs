//! Sealed packets on their way to the underlay: outer headers built once per destination
//! and patched per packet, next hops from the neighbour table, datagrams held (bounded)
//! while their next hop is resolved.

use super::*;

/// Sealed packets on their way to the underlay port: a [`TxSink`] of `PacketBuf`s, flushed
/// into mbufs behind outer headers built from the neighbour table.
pub(super) struct DpdkTx<'a> {
    pub(super) pool: &'a Mempool,
    pub(super) port: &'a EthPort,
    /// This worker's TX queue on the underlay port.
    pub(super) queue: u16,
    pub(super) out: MbufBurst<'a>,
    pub(super) bufs: Vec<PacketBuf>,
    pub(super) n: usize,
    pub(super) neighbours: Neighbours,
    pub(super) udp_port: u16,
    pub(super) counters: &'a WorkerCounters,
    pub(super) max_ip: usize,
    /// Datagrams waiting for ARP: (queued at, destination, bytes).
    pub(super) pending: std::collections::VecDeque<(u64, SocketAddr, u8, u8, Vec<u8>)>,
    /// The outer headers last built for a packet sealed in place.
    pub(super) outer: Option<OuterHeaders>,
    /// Bytes of outer headers for our address family (Ethernet + IPv4/IPv6 + UDP).
    pub(super) outer_len: usize,
}

/// The crypto workers of a DPDK data plane with more than one core.
pub(super) type Crypto<'p> = CryptoPool<Batch<Mbuf<'p>, CryptoJob>>;
/// Batches with each crypto worker at most (see [`PoolConfig::depth`]).
pub(super) const CRYPTO_DEPTH: usize = 4;

impl Buf for Mbuf<'_> {
    fn bytes(&mut self) -> &mut [u8] {
        self.data_mut()
    }
}

/// Ethernet + IPv4 + UDP in front of a sealed message on the underlay.
/// RX and TX descriptors per queue.
pub(super) const PORT_DESCRIPTORS: u16 = 1024;
pub(super) const OUTER_V4: usize = ETHERNET_HEADER_LEN + ipv4::HEADER_LEN + udp::HEADER_LEN;
/// Ethernet + IPv6 + UDP.
pub(super) const OUTER_V6: usize = ETHERNET_HEADER_LEN + ipv6::HEADER_LEN + udp::HEADER_LEN;

/// Outer headers to one destination, built once and patched per packet (the lengths, and
/// over IPv4 an incremental IP checksum) while they are fresh, instead of a neighbour
/// lookup and a full header build per packet. Over IPv6 the UDP checksum, which covers the
/// sealed payload, is [`fill_udp6_checksum`]'s once the payload is final.
#[derive(Clone, Copy)]
pub(super) struct OuterHeaders {
    pub(super) dst: SocketAddr,
    pub(super) built_ms: u64,
    pub(super) bytes: [u8; OUTER_V6 + VLAN_TAG_LEN],
    pub(super) len: usize,
    /// Where the IP header starts (after a VLAN tag, if any).
    pub(super) l3: usize,
    /// IPv4: ones' complement sum of the IP header without its total length and checksum.
    pub(super) ip_sum: u64,
}

/// How long built headers are reused before the neighbour table is asked again.
pub(super) const OUTER_HEADERS_FRESH_MS: u64 = 100;

impl OuterHeaders {
    pub(super) fn new(
        route: &L2Route,
        udp_port: u16,
        dst: SocketAddr,
        now_ms: u64,
    ) -> Option<Self> {
        let len = underlay::headers_len(route, dst)?;
        let l3 =
            len - udp::HEADER_LEN - if dst.is_ipv4() { ipv4::HEADER_LEN } else { ipv6::HEADER_LEN };
        let mut bytes = [0u8; OUTER_V6 + VLAN_TAG_LEN];
        if build_headers(&mut bytes[..len], route, udp_port, dst, 0, 0)? != len {
            return None;
        }
        let mut ip_sum = 0;
        if dst.is_ipv4() {
            let mut ip = [0u8; ipv4::HEADER_LEN];
            ip.copy_from_slice(&bytes[l3..l3 + ipv4::HEADER_LEN]);
            ip[ipv4::field::LENGTH].fill(0);
            ip[ipv4::field::CHECKSUM].fill(0);
            ip_sum = checksum::add(0, &ip);
        }
        Some(Self { dst, built_ms: now_ms, bytes, len, l3, ip_sum })
    }

    pub(super) fn fresh(&self, dst: SocketAddr, now_ms: u64) -> bool {
        self.dst == dst && now_ms.saturating_sub(self.built_ms) < OUTER_HEADERS_FRESH_MS
    }

    /// Writes the headers for a payload of `payload_len` bytes into `out[..self.len]`, with
    /// IP TOS (traffic class) `tos` (the cached headers carry 0).
    pub(super) fn write(&self, out: &mut [u8], payload_len: usize, tos: u8) {
        let (l3, l4) = (self.l3, self.len - udp::HEADER_LEN);
        let udp_len = (udp::HEADER_LEN + payload_len) as u16;
        out[..self.len].copy_from_slice(&self.bytes[..self.len]);
        let (ip, udp) = out[l3..self.len].split_at_mut(l4 - l3);
        udp[udp::field::LENGTH].copy_from_slice(&udp_len.to_be_bytes());
        if ip.len() == ipv4::HEADER_LEN {
            let ip_len = ipv4::HEADER_LEN as u16 + udp_len;
            ip[ipv4::field::LENGTH].copy_from_slice(&ip_len.to_be_bytes());
            ip[ipv4::field::DSCP_ECN] = tos;
            // The TOS is the low byte of the header's first 16-bit word.
            let c = checksum::finish(self.ip_sum + ip_len as u64 + tos as u64);
            ip[ipv4::field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
        } else {
            ip[ipv6::field::PAYLOAD_LEN].copy_from_slice(&udp_len.to_be_bytes());
            // Version 6, then the traffic class across the next 8 bits (flow label 0).
            ip[0] = 0x60 | (tos >> 4);
            ip[1] = (tos << 4) | (ip[1] & 0x0f);
            udp[udp::field::CHECKSUM].fill(0);
        }
    }
}

/// Datagrams held while their next hop is being resolved.
pub(super) const PENDING_MAX: usize = 64;
pub(super) const PENDING_MAX_AGE_MS: u64 = 3_000;

impl<'a> DpdkTx<'a> {
    /// Queues a raw Ethernet frame (ARP) for the underlay.
    pub(super) fn raw(&mut self, frame: &[u8]) {
        let Some(mut m) = self.pool.alloc() else {
            self.counters.drop(DropReason::TxError);
            return;
        };
        if !m.set(frame) {
            return;
        }
        if let Err(m) = self.out.push(m) {
            self.send_out();
            let _ = self.out.push(m);
        }
    }

    /// Frames one datagram `parts` to `dst` into an mbuf, resolving the next hop; with IP
    /// TTL / hop limit `ttl` unless it is 0.
    pub(super) fn datagram(
        &mut self,
        now: u64,
        dst: SocketAddr,
        tos: u8,
        ttl: u8,
        parts: &[&[u8]],
    ) -> bool {
        if dst.is_ipv4() != self.neighbours.our_ip.is_ipv4() {
            // An endpoint of the other IP version than our underlay address.
            self.counters.drop(DropReason::TxError);
            return false;
        }
        let Some(peer_mac) = self.neighbours.lookup(now, dst.ip()) else {
            if let Some(req) = self.neighbours.request(now, dst.ip()) {
                self.raw(&req);
            }
            // Held until the answer (a first handshake is not lost to ARP/ND); bounded.
            if self.pending.len() >= PENDING_MAX {
                self.pending.pop_front();
                self.counters.drop(DropReason::TxError);
            }
            self.pending.push_back((now, dst, tos, ttl, parts.concat()));
            return false;
        };
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let ip_overhead = self.outer_len - self.l3();
        if ip_overhead + len > self.max_ip {
            self.counters.drop(DropReason::TxError);
            return false;
        }
        let route = self.route(peer_mac);
        let Some(mut m) = self.pool.alloc() else {
            self.counters.drop(DropReason::TxError);
            return false;
        };
        let total = self.outer_len + len;
        if !m.append(total) {
            self.counters.drop(DropReason::TxError);
            return false;
        }
        if build_frame(m.data_mut(), &route, self.udp_port, dst, tos, parts).is_none() {
            self.counters.drop(DropReason::TxError);
            return false;
        }
        if ttl != 0 {
            set_ttl(m.data_mut(), ttl);
        }
        if let Err(m) = self.out.push(m) {
            self.send_out();
            let _ = self.out.push(m);
        }
        true
    }

    /// Frames a message the engine sealed (or, with `job`, prepared) in place in `m`
    /// (`[outer headers][message of msg_len]`): a relay header is slid in front of it when
    /// the peer is relayed and the outer headers are written, with no copy. Returns the
    /// mbuf and where the message starts. Without a resolved next hop the message is
    /// sealed now if it was not and takes [`DpdkTx::datagram`]'s path (ARP, held while
    /// pending); `None` then, or when dropped (counted).
    pub(super) fn frame_in_place(
        &mut self,
        now: u64,
        mut m: Mbuf<'a>,
        msg_len: usize,
        to: Endpoint,
        tos: u8,
        job: Option<&SealJob>,
    ) -> Option<(Mbuf<'a>, usize)> {
        let dst = to.addr();
        let outer = self.outer_len;
        let mut payload = msg_len;
        if let Some(tag) = to.relay_tag() {
            if !m.prepend(relay::HEADER_LEN) {
                self.counters.drop(DropReason::TxError);
                return None;
            }
            m.data_mut()[outer..outer + relay::HEADER_LEN]
                .copy_from_slice(&relay::header(false, &tag));
            payload += relay::HEADER_LEN;
        }
        let at = outer + payload - msg_len;
        if outer - self.l3() + payload > self.max_ip
            || dst.is_ipv4() != self.neighbours.our_ip.is_ipv4()
        {
            self.counters.drop(DropReason::TxError);
            return None;
        }
        // Headers are used where they lie (a copy of the struct per packet costs more than
        // writing them).
        let headers = match &self.outer {
            Some(h) if h.fresh(dst, now) => h,
            _ => {
                let Some(peer_mac) = self.neighbours.lookup(now, dst.ip()) else {
                    if let Some(job) = job
                        && job.run(&mut m.data_mut()[at..]).is_none()
                    {
                        self.counters.drop(DropReason::TxError);
                        return None;
                    }
                    self.datagram(now, dst, tos, 0, &[&m.data()[outer..outer + payload]]);
                    return None;
                };
                let Some(h) = OuterHeaders::new(&self.route(peer_mac), self.udp_port, dst, now)
                else {
                    self.counters.drop(DropReason::TxError);
                    return None;
                };
                self.outer.insert(h)
            }
        };
        headers.write(m.data_mut(), payload, tos);
        if job.is_none() {
            // Sealed already: an IPv6 checksum can be computed now (else after the AEAD).
            fill_udp6_checksum(m.data_mut());
        }
        Some((m, at))
    }

    /// Our side of the underlay towards a next hop of `peer_mac`.
    fn route(&self, peer_mac: [u8; 6]) -> L2Route {
        L2Route {
            peer_mac,
            our_mac: self.neighbours.our_mac,
            our_ip: self.neighbours.our_ip,
            vlan: self.neighbours.vlan,
        }
    }

    /// Where the IP header starts in our frames.
    fn l3(&self) -> usize {
        ETHERNET_HEADER_LEN + if self.neighbours.vlan.is_some() { VLAN_TAG_LEN } else { 0 }
    }

    /// Queues a finished packet for the underlay port.
    pub(super) fn push_out(&mut self, m: Mbuf<'a>) {
        if let Err(m) = self.out.push(m) {
            self.send_out();
            let _ = self.out.push(m);
        }
    }

    /// Sends what waited for a neighbour that is now resolved; forgets what waited longer
    /// than [`PENDING_MAX_AGE_MS`] (counted).
    pub(super) fn retry_pending(&mut self, now: u64) {
        for _ in 0..self.pending.len() {
            let Some((t, dst, tos, ttl, bytes)) = self.pending.pop_front() else { break };
            if self.neighbours.lookup(now, dst.ip()).is_some() {
                self.datagram(now, dst, tos, ttl, &[&bytes]);
            } else if now.saturating_sub(t) < PENDING_MAX_AGE_MS {
                self.pending.push_back((t, dst, tos, ttl, bytes));
            } else {
                self.counters.drop(DropReason::TxError);
            }
        }
    }

    pub(super) fn send_out(&mut self) {
        // A full TX ring drops what it cannot take now (counted), like a NIC would.
        for _ in 0..4 {
            if self.out.is_empty() {
                return;
            }
            self.port.tx_burst(self.queue, &mut self.out);
        }
        let left = self.out.len();
        if left > 0 {
            self.counters.drop_n(DropReason::TxError, left as u64);
            drop(std::mem::take(&mut self.out));
        }
    }

    pub(super) fn flush(&mut self) {
        let now = monotonic_ms();
        // The buffers stay allocated: take the vector out for the loop (no copy, no alloc).
        let mut bufs = std::mem::take(&mut self.bufs);
        for pkt in &mut bufs[..self.n] {
            if let Some(job) = pkt.seal.take()
                && job.run(&mut pkt.data[..]).is_none()
            {
                self.counters.drop(DropReason::TxError);
                continue;
            }
            let Some(dst) = pkt.addr else { continue };
            let body = &pkt.data[..pkt.len.min(pkt.data.len())];
            // A packet whose next hop is not resolved yet waits (bounded) in `datagram`
            // for the ARP / ND answer; the result says only whether it left now.
            let _ = match pkt.relay {
                Some(tag) => {
                    let hdr = omni_proto::wire::relay::header(false, &tag);
                    self.datagram(now, dst, pkt.tos, 0, &[&hdr, body])
                }
                None => self.datagram(now, dst, pkt.tos, 0, &[body]),
            };
        }
        self.bufs = bufs;
        self.n = 0;
        self.send_out();
    }
}

impl TxSink for DpdkTx<'_> {
    fn buffer(&mut self) -> &mut PacketBuf {
        if self.n == self.bufs.len() {
            self.flush();
        }
        &mut self.bufs[self.n]
    }
    fn commit(&mut self) {
        self.n += 1;
    }
    fn commit_swap(&mut self, pkt: &mut PacketBuf) {
        if self.n == self.bufs.len() {
            self.flush();
        }
        std::mem::swap(&mut self.bufs[self.n], pkt);
        self.n += 1;
    }
}
