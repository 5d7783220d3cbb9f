//! The Nucleus client, sans I/O: registration with every configured Nucleus (signed with
//! the cluster key and the node key, timestamped), keep-alive re-registration, and the
//! verification of what Nuclei send back (REGISTERED, MEMBERS). Member changes are handed
//! to the fabric, which punches and, failing that, relays.
//!
//! Packets go out through the data plane's inject ring from the data port, so a Nucleus
//! sees the same NAT mapping as peers do.
//!
//! Where UDP is blocked: a Nucleus that has not answered over UDP for [`TCP_AFTER_MS`] is
//! reached over its TLS/TCP relay instead, through a bridge the daemon runs on loopback
//! (`crate::tcp_bridge`): the data plane sends to the bridge's UDP address as if it were
//! the Nucleus, so registration and the relay work unchanged. While on TCP, a REGISTER also
//! goes over UDP every [`UDP_PROBE_MS`]; the first answer over UDP moves back to it.

use std::collections::VecDeque;
use std::net::SocketAddr;

use omni_proto::cluster::{Cluster, relay_tag};
use omni_proto::tai64n::Tai64n;
use omni_proto::wire::nucleus::{
    self, Members, NodeRequest, Register, RegisterMembership, Registered, Statement, subtype,
};
use omni_proto::{Identity, PublicKey};
use omni_shm::endpoint::Endpoint;
use tracing::{info, warn};

use crate::fabric::{MemberUpdate, Output};

/// A configured Nucleus, its address resolved (by the configuration, at the edge):
/// written `host[:port]` (port 51820 by default), optionally pinned as `KEY@host[:port]`.
#[derive(Debug, Clone, PartialEq)]
pub struct NucleusSpec {
    pub text: String,
    pub addr: SocketAddr,
    pub pinned: Option<PublicKey>,
    /// Its relay over TLS on TCP (`None`: UDP only).
    pub tcp: Option<SocketAddr>,
}

/// How a Nucleus is reached.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Transport {
    Udp,
    /// Asked the daemon for a TLS connection at this time.
    Connecting(u64),
    /// Through the daemon's bridge at this loopback address.
    Tcp(SocketAddr),
}

/// What the daemon is asked to do with the TLS/TCP relay of Nucleus `index`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TcpRequest {
    Connect { index: usize, to: SocketAddr },
    Close { index: usize },
}

struct NucleusState {
    spec: NucleusSpec,
    key: Option<PublicKey>,
    /// Timestamps of recent REGISTERs, to match answers to them.
    sent: VecDeque<Tai64n>,
    next_send_ms: u64,
    last_ack_ms: Option<u64>,
    interval_ms: u64,
    retry_ms: u64,
    reflexive: Option<SocketAddr>,
    last_members: Option<Tai64n>,
    members: u16,
    /// The Nucleus's statement set being received, and the last one received whole (which
    /// REGISTER names, so that the Nucleus sends a set only to a node without it).
    set: SetProgress,
    transport: Transport,
    /// When the first REGISTER went out, and when one was last answered over UDP.
    first_sent_ms: Option<u64>,
    udp_ack_ms: Option<u64>,
    /// While on TCP: when a REGISTER last went over UDP to see whether it works again.
    udp_probe_ms: u64,
    /// When the TCP relay came up, and when it last answered a REGISTER.
    tcp_since_ms: u64,
    tcp_ack_ms: u64,
    /// No new TLS connection before this (after one failed).
    tcp_retry_ms: u64,
    /// TLS connections that failed in a row.
    tcp_failures: u32,
}

impl NucleusState {
    /// Where its messages go now: the Nucleus, or the bridge to its TCP relay.
    fn via(&self) -> SocketAddr {
        match self.transport {
            Transport::Tcp(bridge) => bridge,
            _ => self.spec.addr,
        }
    }

    /// Whether UDP has gone unanswered long enough to try TCP.
    fn udp_silent(&self, now_ms: u64) -> bool {
        let Some(first) = self.first_sent_ms else { return false };
        // Answered: silent once a refresh (due an interval after the answer) is unanswered.
        let since = self.udp_ack_ms.map_or(first, |t| t + self.interval_ms);
        now_ms >= since + TCP_AFTER_MS
    }
}

#[derive(Default)]
struct SetProgress {
    id: u64,
    count: u16,
    received: std::collections::HashSet<u16>,
    complete: u64,
}

impl SetProgress {
    fn record(&mut self, id: u64, index: u16, count: u16) {
        if id != self.id || count != self.count {
            *self = Self { id, count, received: Default::default(), complete: self.complete };
        }
        if index < count {
            self.received.insert(index);
        }
        if self.received.len() == count as usize {
            self.complete = id;
        }
    }
}

/// What `status` shows of a Nucleus.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NucleusStatus {
    pub address: String,
    /// `udp`, or `tcp` while reached over its TLS/TCP relay.
    #[serde(default)]
    pub transport: String,
    pub key: Option<String>,
    pub registered: bool,
    pub reflexive: Option<String>,
    pub last_ack_secs: Option<u64>,
    pub members: u16,
}

pub struct Rendezvous {
    cluster: Cluster,
    nuclei: Vec<NucleusState>,
    locals: Vec<SocketAddr>,
    own: PublicKey,
    /// This node's certificate (a cluster with an authority), shown in every REGISTER.
    certificate: Option<Vec<u8>>,
    /// Statements Nuclei sent, for the daemon to check ([`Rendezvous::take_statements`]).
    statements: Vec<Vec<u8>>,
    /// For the daemon: TLS connections to open or close ([`Rendezvous::take_tcp_requests`]).
    tcp_requests: Vec<TcpRequest>,
    /// For the fabric: a Nucleus's relay that moved between UDP and TCP (old, new address).
    moves: Vec<(SocketAddr, SocketAddr)>,
    pub dropped: u64,
}

/// Retry an unanswered registration after this long (doubling up to the interval).
const FIRST_RETRY_MS: u64 = 1000;
/// A registration not refreshed for this many intervals counts as lost.
const LOST_AFTER_INTERVALS: u64 = 3;
/// A Nucleus silent over UDP this long is tried over its TCP relay.
pub const TCP_AFTER_MS: u64 = 4_000;
/// While on TCP, a REGISTER goes over UDP this often.
pub const UDP_PROBE_MS: u64 = 5_000;
/// After a REGISTER over UDP from the TCP relay, one over TCP this much later unless UDP
/// answered.
const UDP_PROBE_GRACE_MS: u64 = 1_000;
/// A TLS connection not up within this long is given up (and tried again after as long).
const TCP_CONNECT_MS: u64 = 10_000;
/// The longest pause between failed TLS connections.
const TCP_PAUSE_MAX_MS: u64 = 300_000;

impl Rendezvous {
    pub fn new(
        cluster: Cluster,
        own: PublicKey,
        nuclei: Vec<NucleusSpec>,
        locals: Vec<SocketAddr>,
    ) -> Self {
        Self {
            nuclei: nuclei
                .into_iter()
                .map(|spec| NucleusState {
                    key: spec.pinned,
                    spec,
                    sent: VecDeque::new(),
                    next_send_ms: 0,
                    last_ack_ms: None,
                    interval_ms: 20_000,
                    retry_ms: FIRST_RETRY_MS,
                    reflexive: None,
                    last_members: None,
                    members: 0,
                    set: SetProgress::default(),
                    transport: Transport::Udp,
                    first_sent_ms: None,
                    udp_ack_ms: None,
                    udp_probe_ms: 0,
                    tcp_since_ms: 0,
                    tcp_ack_ms: 0,
                    tcp_retry_ms: 0,
                    tcp_failures: 0,
                })
                .collect(),
            cluster,
            locals,
            own,
            certificate: None,
            statements: Vec::new(),
            tcp_requests: Vec::new(),
            moves: Vec::new(),
            dropped: 0,
        }
    }

    /// This node's certificate (signed bytes), shown to Nuclei from the next REGISTER on
    /// (and after a renewal).
    pub fn set_certificate(&mut self, certificate: Vec<u8>) {
        self.certificate = Some(certificate);
    }

    /// The statements Nuclei sent since the last call (unchecked: the caller checks them).
    pub fn take_statements(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.statements)
    }

    /// Passes a statement this node accepted on to every Nucleus (each keeps it for nodes
    /// that register later and pushes it to its members). Returns how many it went to.
    pub fn upload(&self, bytes: &[u8], out: &mut Vec<Output>) -> usize {
        for n in &self.nuclei {
            let msg = Statement {
                cluster_key: self.cluster.public_key(),
                sender: self.own,
                set_id: 0,
                index: 0,
                count: 0,
                statement: bytes.to_vec(),
            }
            .build();
            out.push(Output::Inject { to: Endpoint::Direct(n.via()), bytes: msg, ttl: 0 });
        }
        self.nuclei.len()
    }

    pub fn cluster_key(&self) -> PublicKey {
        self.cluster.public_key()
    }

    /// Whether `addr` is a Nucleus (or the bridge to one's TCP relay).
    pub fn is_nucleus(&self, addr: &SocketAddr) -> bool {
        self.nuclei.iter().any(|n| n.spec.addr == *addr || n.via() == *addr)
    }

    /// Whether `addr` is the bridge to a Nucleus's TCP relay (a peer relayed through it is
    /// on the `relay-tcp` path).
    pub fn is_tcp_bridge(&self, addr: &SocketAddr) -> bool {
        self.nuclei.iter().any(|n| n.transport == Transport::Tcp(*addr))
    }

    /// The TLS connections the daemon should open or close, since the last call.
    pub fn take_tcp_requests(&mut self) -> Vec<TcpRequest> {
        std::mem::take(&mut self.tcp_requests)
    }

    /// Relays that moved between UDP and TCP since the last call: (old, new) addresses.
    pub fn take_moves(&mut self) -> Vec<(SocketAddr, SocketAddr)> {
        std::mem::take(&mut self.moves)
    }

    /// The daemon's bridge to Nucleus `index`'s TCP relay is up at `bridge`: register
    /// through it now.
    pub fn tcp_up(&mut self, now_ms: u64, index: usize, bridge: SocketAddr) {
        let Some(n) = self.nuclei.get_mut(index) else { return };
        if !matches!(n.transport, Transport::Connecting(_)) {
            // Moved back to UDP meanwhile.
            self.tcp_requests.push(TcpRequest::Close { index });
            return;
        }
        info!(nucleus = %n.spec.text, "no answer over UDP: registering over the TLS/TCP relay");
        self.moves.push((n.spec.addr, bridge));
        n.transport = Transport::Tcp(bridge);
        n.tcp_failures = 0;
        n.udp_probe_ms = now_ms;
        n.tcp_since_ms = now_ms;
        n.next_send_ms = 0;
        n.retry_ms = FIRST_RETRY_MS;
    }

    /// The bridge to Nucleus `index`'s TCP relay failed or closed.
    pub fn tcp_down(&mut self, now_ms: u64, index: usize) {
        if index < self.nuclei.len() {
            let retry = now_ms + self.tcp_pause(index);
            self.leave_tcp(index, retry, "the TLS/TCP relay connection closed");
        }
    }

    /// How long to wait before the next TLS connection to Nucleus `index` after one failed:
    /// 10 s, doubling with each failure in a row up to 5 minutes (a Nucleus that is down, or
    /// a web server on its port 443, is not hammered by a fleet).
    fn tcp_pause(&mut self, index: usize) -> u64 {
        let n = &mut self.nuclei[index];
        let pause = (TCP_CONNECT_MS << n.tcp_failures.min(5)).min(TCP_PAUSE_MAX_MS);
        n.tcp_failures += 1;
        pause
    }

    /// Over TCP until UDP answers again, and back; a connection that stops answering is
    /// replaced (a path that died without a reset would otherwise hold it for many minutes).
    fn tick_transport(&mut self, now_ms: u64, index: usize) {
        let n = &mut self.nuclei[index];
        let Some(tcp) = n.spec.tcp else { return };
        match n.transport {
            Transport::Udp if n.udp_silent(now_ms) && now_ms >= n.tcp_retry_ms => {
                n.transport = Transport::Connecting(now_ms);
                self.tcp_requests.push(TcpRequest::Connect { index, to: tcp });
            }
            Transport::Connecting(t) if now_ms.saturating_sub(t) >= TCP_CONNECT_MS => {
                let retry = now_ms + self.tcp_pause(index);
                self.leave_tcp(index, retry, "no TLS/TCP relay connection");
            }
            Transport::Tcp(_)
                if now_ms >= n.tcp_since_ms.max(n.tcp_ack_ms) + n.interval_ms + TCP_AFTER_MS =>
            {
                self.leave_tcp(index, now_ms, "the TLS/TCP relay stopped answering; reconnecting");
            }
            _ => {}
        }
    }

    /// UDP answered Nucleus `index` again: leave its TCP relay.
    fn back_to_udp(&mut self, index: usize) {
        self.leave_tcp(index, 0, "UDP answers again: leaving the TLS/TCP relay");
    }

    /// Back to UDP for Nucleus `index` (relayed peers follow), the bridge closed, no new
    /// TLS connection before `retry_ms`.
    fn leave_tcp(&mut self, index: usize, retry_ms: u64, why: &str) {
        let n = &mut self.nuclei[index];
        match n.transport {
            Transport::Udp => return,
            Transport::Tcp(bridge) => {
                info!(nucleus = %n.spec.text, "{why}");
                self.moves.push((bridge, n.spec.addr));
            }
            Transport::Connecting(_) => {}
        }
        n.transport = Transport::Udp;
        n.tcp_retry_ms = retry_ms;
        self.tcp_requests.push(TcpRequest::Close { index });
    }

    pub fn registered_count(&self, now_ms: u64) -> usize {
        self.nuclei.iter().filter(|n| self.live(n, now_ms)).count()
    }

    fn live(&self, n: &NucleusState, now_ms: u64) -> bool {
        n.last_ack_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < LOST_AFTER_INTERVALS * n.interval_ms)
    }

    /// Registers (or re-registers) with every Nucleus that is due.
    pub fn tick(&mut self, now_ms: u64, identity: &Identity, out: &mut Vec<Output>) {
        for i in 0..self.nuclei.len() {
            self.tick_transport(now_ms, i);
        }
        for n in &mut self.nuclei {
            // On TCP, see now and then whether UDP works again.
            let probe_udp = matches!(n.transport, Transport::Tcp(_))
                && now_ms.saturating_sub(n.udp_probe_ms) >= UDP_PROBE_MS;
            if now_ms < n.next_send_ms && !probe_udp {
                continue;
            }
            let ts = Tai64n::now();
            let membership = self
                .certificate
                .as_ref()
                .map(|c| RegisterMembership { set_id: n.set.complete, certificate: c.clone() });
            let msg = Register::build_with(
                &self.cluster,
                identity,
                n.key.as_ref(),
                ts,
                &self.locals,
                membership.as_ref(),
            );
            n.sent.push_back(ts);
            if n.sent.len() > 4 {
                n.sent.pop_front();
            }
            n.first_sent_ms.get_or_insert(now_ms);
            if probe_udp {
                n.udp_probe_ms = now_ms;
                // Should the probe reach the Nucleus but its answer not come back (UDP blocked
                // one way), the Nucleus now sends to the UDP address: register over TCP again
                // soon, unless UDP answered meanwhile.
                n.next_send_ms = n.next_send_ms.min(now_ms + UDP_PROBE_GRACE_MS);
                out.push(Output::Inject { to: Endpoint::Direct(n.spec.addr), bytes: msg, ttl: 0 });
                continue;
            }
            out.push(Output::Inject { to: Endpoint::Direct(n.via()), bytes: msg, ttl: 0 });
            // Until answered, retry soon (doubling); once answered, the Nucleus's interval.
            n.next_send_ms = now_ms + n.retry_ms;
            n.retry_ms = (n.retry_ms * 2).min(n.interval_ms);
        }
    }

    /// Registers with every Nucleus at the next tick (a direct path died: this side's
    /// mapping may have changed, and a registration is how a Nucleus learns it).
    pub fn reregister_now(&mut self) {
        for n in &mut self.nuclei {
            n.next_send_ms = 0;
        }
    }

    /// Tells every Nucleus we are leaving (on shutdown).
    pub fn unregister(&self, identity: &Identity, out: &mut Vec<Output>) {
        for n in &self.nuclei {
            let msg = NodeRequest::build(
                subtype::UNREGISTER,
                &self.cluster.public_key(),
                identity,
                n.key.as_ref(),
                Tai64n::now(),
                None,
            );
            out.push(Output::Inject { to: Endpoint::Direct(n.via()), bytes: msg, ttl: 0 });
        }
    }

    /// Asks every live Nucleus to make `target` and us punch towards each other now.
    pub fn punch_request(
        &self,
        now_ms: u64,
        identity: &Identity,
        target: &PublicKey,
        out: &mut Vec<Output>,
    ) {
        for n in self.nuclei.iter().filter(|n| self.live(n, now_ms)) {
            let msg = NodeRequest::build(
                subtype::PUNCH_REQUEST,
                &self.cluster.public_key(),
                identity,
                n.key.as_ref(),
                Tai64n::now(),
                Some(target),
            );
            out.push(Output::Inject { to: Endpoint::Direct(n.via()), bytes: msg, ttl: 0 });
        }
    }

    /// Handles a Nucleus message from `from`; returns the member changes it carried.
    pub fn on_message(&mut self, now_ms: u64, from: SocketAddr, b: &[u8]) -> Vec<MemberUpdate> {
        let cluster_key = self.cluster.public_key();
        let own = self.own;
        let Some(index) = self.nuclei.iter().position(|n| n.spec.addr == from || n.via() == from)
        else {
            self.dropped += 1;
            return vec![];
        };
        let over_udp = from == self.nuclei[index].spec.addr;
        let n = &mut self.nuclei[index];
        let accept_key = |n: &mut NucleusState, key: PublicKey| -> bool {
            match (n.spec.pinned, n.key) {
                (Some(p), _) => p == key,
                (None, Some(k)) if k != key => {
                    warn!(nucleus = %n.spec.text, old = %k.short(), new = %key.short(), "Nucleus key changed (not pinned: accepting; pin with KEY@host:port to refuse)");
                    n.key = Some(key);
                    true
                }
                (None, _) => {
                    n.key = Some(key);
                    true
                }
            }
        };
        match nucleus::classify(b) {
            Ok((subtype::REGISTERED, _)) => {
                let Ok(r) = Registered::parse(b) else {
                    self.dropped += 1;
                    return vec![];
                };
                if r.node_key != own
                    || !n.sent.contains(&r.echo)
                    || !r.verify(b)
                    || !accept_key(n, r.nucleus_key)
                {
                    self.dropped += 1;
                    return vec![];
                }
                let first = n.last_ack_ms.is_none() || n.reflexive != Some(r.reflexive);
                n.last_ack_ms = Some(now_ms);
                n.interval_ms = (r.interval_secs.max(1) as u64) * 1000;
                n.retry_ms = FIRST_RETRY_MS;
                n.next_send_ms = now_ms + n.interval_ms;
                n.reflexive = Some(r.reflexive);
                n.members = r.members;
                if first {
                    info!(nucleus = %n.spec.text, reflexive = %r.reflexive, members = r.members, "registered with Nucleus");
                }
                if over_udp {
                    n.udp_ack_ms = Some(now_ms);
                    self.back_to_udp(index);
                } else {
                    n.tcp_ack_ms = now_ms;
                }
                vec![]
            }
            Ok((subtype::MEMBERS, _)) => {
                let Ok(m) = Members::parse(b) else {
                    self.dropped += 1;
                    return vec![];
                };
                if m.node_key != own || !m.verify(b) || !accept_key(n, m.nucleus_key) {
                    self.dropped += 1;
                    return vec![];
                }
                // Older than what we have: a replay or reordering; the newer one stands.
                if n.last_members.is_some_and(|t| m.timestamp < t) {
                    self.dropped += 1;
                    return vec![];
                }
                n.last_members = Some(m.timestamp);
                let via = from;
                m.entries
                    .into_iter()
                    .filter(|e| e.key != own)
                    .map(|e| MemberUpdate {
                        relay: Endpoint::Relay { via, tag: relay_tag(&cluster_key, &e.key) },
                        key: e.key,
                        present: e.present,
                        endpoints: e.endpoints,
                        punch: m.punch,
                    })
                    .collect()
            }
            Ok((subtype::STATEMENT, _)) => {
                match Statement::parse(b) {
                    Ok(st) if st.cluster_key == cluster_key && self.certificate.is_some() => {
                        n.set.record(st.set_id, st.index, st.count);
                        self.statements.push(st.statement);
                    }
                    _ => self.dropped += 1,
                }
                vec![]
            }
            _ => {
                self.dropped += 1;
                vec![]
            }
        }
    }

    pub fn status(&self, now_ms: u64) -> Vec<NucleusStatus> {
        self.nuclei
            .iter()
            .map(|n| NucleusStatus {
                address: n.spec.text.clone(),
                transport: match n.transport {
                    Transport::Tcp(_) => "tcp".into(),
                    _ => "udp".into(),
                },
                key: n.key.map(|k| k.to_base64()),
                registered: self.live(n, now_ms),
                // Over TCP the Nucleus sees the connection, not an address of this node.
                reflexive: n
                    .reflexive
                    .filter(|_| !matches!(n.transport, Transport::Tcp(_)))
                    .map(|r| r.to_string()),
                last_ack_secs: n.last_ack_ms.map(|t| now_ms.saturating_sub(t) / 1000),
                members: n.members,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use omni_proto::wire::nucleus::MemberEntry;

    fn setup() -> (Rendezvous, Identity, Identity) {
        let node = Identity::from_seed([1; 32]);
        let nucleus = Identity::from_seed([50; 32]);
        let c = Cluster::new("fleet", "s3cret").unwrap();
        let spec = NucleusSpec {
            text: "n".into(),
            addr: "192.0.2.1:51820".parse().unwrap(),
            pinned: None,
            tcp: None,
        };
        (
            Rendezvous::new(
                c,
                node.public_key(),
                vec![spec],
                vec!["10.0.0.5:51820".parse().unwrap()],
            ),
            node,
            nucleus,
        )
    }

    fn sent(out: &mut Vec<Output>) -> Vec<Vec<u8>> {
        out.drain(..)
            .map(|o| match o {
                Output::Inject { bytes, .. } => bytes,
                _ => panic!("only packets"),
            })
            .collect()
    }

    #[test]
    fn registers_retries_and_accepts_only_matching_answers() {
        let (mut r, node, nucleus) = setup();
        let mut out = vec![];
        r.tick(0, &node, &mut out);
        let reg = sent(&mut out);
        assert_eq!(reg.len(), 1);
        let p = Register::parse(&reg[0]).unwrap();
        assert!(p.verify(&reg[0]));
        assert_eq!(p.cluster_key, r.cluster_key());
        // No answer: retried after 1 s, then 2 s.
        r.tick(500, &node, &mut out);
        assert!(out.is_empty());
        r.tick(1000, &node, &mut out);
        assert_eq!(sent(&mut out).len(), 1);
        r.tick(2500, &node, &mut out);
        assert!(out.is_empty());
        r.tick(3000, &node, &mut out);
        let last = Register::parse(&sent(&mut out)[0]).unwrap();
        assert_eq!(r.registered_count(3000), 0);
        // An answer to a registration we did not send is ignored.
        let stray = Registered {
            nucleus_key: nucleus.public_key(),
            node_key: node.public_key(),
            echo: Tai64n::from_unix(1, 0),
            reflexive: "203.0.113.9:4000".parse().unwrap(),
            interval_secs: 20,
            members: 0,
        };
        r.on_message(3100, "192.0.2.1:51820".parse().unwrap(), &stray.build(&nucleus));
        assert_eq!(r.registered_count(3100), 0);
        // A real one counts; the next registration is due an interval later.
        let ok = Registered { echo: last.timestamp, ..stray };
        r.on_message(3200, "192.0.2.1:51820".parse().unwrap(), &ok.build(&nucleus));
        assert_eq!(r.registered_count(3200), 1);
        assert_eq!(r.status(3200)[0].reflexive.as_deref(), Some("203.0.113.9:4000"));
        r.tick(20_000, &node, &mut out);
        assert!(out.is_empty());
        r.tick(23_200, &node, &mut out);
        assert_eq!(sent(&mut out).len(), 1);
        // Lost after three intervals without answers.
        assert_eq!(r.registered_count(63_300), 0);
    }

    #[test]
    fn member_lists_are_verified_and_ordered() {
        let (mut r, node, nucleus) = setup();
        let from: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let peer = Identity::from_seed([2; 32]).public_key();
        let entry = MemberEntry {
            key: peer,
            present: true,
            endpoints: vec!["203.0.113.2:1".parse().unwrap()],
        };
        let msgs = Members::build_all(
            &nucleus,
            &node.public_key(),
            Tai64n::from_unix(100, 0),
            true,
            std::slice::from_ref(&entry),
        );
        let ups = r.on_message(1, from, &msgs[0]);
        assert_eq!(ups.len(), 1);
        assert!(ups[0].punch && ups[0].present);
        assert_eq!(
            ups[0].relay,
            Endpoint::Relay { via: from, tag: relay_tag(&r.cluster_key(), &peer) }
        );
        // Older list: ignored. From elsewhere: ignored. Tampered: ignored.
        let old = Members::build_all(
            &nucleus,
            &node.public_key(),
            Tai64n::from_unix(50, 0),
            false,
            std::slice::from_ref(&entry),
        );
        assert!(r.on_message(2, from, &old[0]).is_empty());
        assert!(r.on_message(2, "192.0.2.2:51820".parse().unwrap(), &msgs[0]).is_empty());
        let mut t = Members::build_all(
            &nucleus,
            &node.public_key(),
            Tai64n::from_unix(200, 0),
            false,
            &[entry],
        )[0]
        .clone();
        t[100] ^= 1;
        assert!(r.on_message(2, from, &t).is_empty());
        assert_eq!(r.dropped, 3);
        // A pinned Nucleus: another key is refused.
        let (mut r2, node2, _) = setup();
        r2.nuclei[0].spec.pinned = Some(Identity::from_seed([51; 32]).public_key());
        r2.nuclei[0].key = r2.nuclei[0].spec.pinned;
        let m =
            Members::build_all(&nucleus, &node2.public_key(), Tai64n::from_unix(100, 0), true, &[]);
        r2.on_message(1, from, &m[0]);
        assert_eq!(r2.dropped, 1);
    }

    #[test]
    fn statements_are_taken_and_the_set_held_whole_is_named_in_register() {
        let (mut r, node, nucleus) = setup();
        let from: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let cluster_key = r.cluster_key();
        let st = |index: u16, count: u16, set_id: u64| {
            Statement {
                cluster_key,
                sender: nucleus.public_key(),
                set_id,
                index,
                count,
                statement: vec![index as u8 + 1; 4],
            }
            .build()
        };
        let (s0, s1) = (st(0, 2, 7), st(1, 2, 7));
        // Without a certificate (no authority), statements are not taken.
        r.on_message(1, from, &s0);
        assert!(r.take_statements().is_empty());
        r.set_certificate(vec![9; 10]);
        r.on_message(1, from, &s0);
        assert_eq!(r.take_statements(), [vec![1; 4]]);
        let register_set = |r: &mut Rendezvous, now: u64| {
            let mut out = vec![];
            r.nuclei[0].next_send_ms = 0;
            r.tick(now, &node, &mut out);
            let b = sent(&mut out).remove(0);
            Register::parse(&b).unwrap().membership.unwrap()
        };
        assert_eq!(register_set(&mut r, 2).set_id, 0, "set 7 not whole yet");
        r.on_message(3, from, &s1);
        let m = register_set(&mut r, 4);
        assert_eq!((m.set_id, m.certificate), (7, vec![9; 10]));
        // A push of a newer set's last statement alone: the whole set stays the older one.
        r.on_message(5, from, &st(2, 3, 8));
        assert_eq!(register_set(&mut r, 6).set_id, 7);
        // From another cluster, or another address: dropped.
        let mut other = st(0, 1, 9);
        other[8] ^= 1;
        let before = r.dropped;
        r.on_message(7, from, &other);
        r.on_message(7, "192.0.2.9:1".parse().unwrap(), &s0);
        assert_eq!(r.dropped, before + 2);
        // Uploads go to every Nucleus.
        let mut out = vec![];
        assert_eq!(r.upload(b"OMR1", &mut out), 1);
        let up = Statement::parse(&sent(&mut out)[0]).unwrap();
        assert_eq!((up.sender, up.statement), (node.public_key(), b"OMR1".to_vec()));
    }

    /// Each REGISTER sent, with where it went.
    fn registers(out: &mut Vec<Output>) -> Vec<(SocketAddr, Tai64n)> {
        out.drain(..)
            .map(|o| match o {
                Output::Inject { to, bytes, .. } => {
                    (to.addr(), Register::parse(&bytes).expect("a REGISTER").timestamp)
                }
                _ => panic!("only packets"),
            })
            .collect()
    }

    #[test]
    fn silent_udp_moves_to_the_tcp_relay_and_an_answer_over_udp_moves_back() {
        let (mut r, node, nucleus) = setup();
        let (udp, tcp): (SocketAddr, SocketAddr) =
            ("192.0.2.1:51820".parse().unwrap(), "192.0.2.1:443".parse().unwrap());
        r.nuclei[0].spec.tcp = Some(tcp);
        let bridge: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let answer = |echo: Tai64n| {
            Registered {
                nucleus_key: nucleus.public_key(),
                node_key: node.public_key(),
                echo,
                reflexive: "203.0.113.9:4000".parse().unwrap(),
                interval_secs: 20,
                members: 0,
            }
            .build(&nucleus)
        };
        let mut out = vec![];
        r.tick(0, &node, &mut out);
        assert_eq!(registers(&mut out)[0].0, udp);
        // No answer over UDP for 4 s: the daemon is asked for a TLS connection, once.
        r.tick(TCP_AFTER_MS - 100, &node, &mut out);
        assert!(r.take_tcp_requests().is_empty());
        r.tick(TCP_AFTER_MS, &node, &mut out);
        assert_eq!(r.take_tcp_requests(), vec![TcpRequest::Connect { index: 0, to: tcp }]);
        r.tick(TCP_AFTER_MS + 100, &node, &mut out);
        assert!(r.take_tcp_requests().is_empty());
        out.clear();
        // Up: registration goes through the bridge at once, relayed peers move with it.
        r.tcp_up(4_100, 0, bridge);
        assert_eq!(r.take_moves(), vec![(udp, bridge)]);
        assert!(r.is_nucleus(&bridge) && r.is_tcp_bridge(&bridge) && r.is_nucleus(&udp));
        r.tick(4_200, &node, &mut out);
        let sent = registers(&mut out);
        assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), vec![bridge], "{sent:?}");
        r.on_message(4_300, bridge, &answer(sent[0].1));
        assert_eq!(r.registered_count(4_300), 1);
        assert_eq!(r.status(4_300)[0].transport, "tcp");
        // Member lists over TCP name the bridge as the relay.
        let peer = Identity::from_seed([2; 32]).public_key();
        let entry = MemberEntry { key: peer, present: true, endpoints: vec![] };
        let m = Members::build_all(
            &nucleus,
            &node.public_key(),
            Tai64n::from_unix(100, 0),
            true,
            &[entry],
        );
        assert_eq!(r.on_message(4_400, bridge, &m[0])[0].relay.addr(), bridge);
        // Every UDP_PROBE_MS a REGISTER also goes over UDP; its answer moves back to UDP.
        r.tick(4_100 + UDP_PROBE_MS - 100, &node, &mut out);
        assert!(registers(&mut out).is_empty());
        r.tick(4_100 + UDP_PROBE_MS, &node, &mut out);
        let probe = registers(&mut out);
        assert_eq!(probe.iter().map(|s| s.0).collect::<Vec<_>>(), vec![udp]);
        r.on_message(9_300, udp, &answer(probe[0].1));
        assert_eq!(r.status(9_300)[0].transport, "udp");
        assert_eq!(r.take_tcp_requests(), vec![TcpRequest::Close { index: 0 }]);
        assert_eq!(r.take_moves(), vec![(bridge, udp)]);
        assert!(!r.is_tcp_bridge(&bridge));
        r.tick(30_000, &node, &mut out);
        assert!(registers(&mut out).iter().all(|s| s.0 == udp));
    }

    #[test]
    fn a_failed_tls_connection_is_retried_after_a_pause_and_udp_only_never_tries() {
        let (mut r, node, _) = setup();
        let mut out = vec![];
        // Without a TCP relay configured: UDP only, however long it stays silent.
        r.tick(0, &node, &mut out);
        r.tick(60_000, &node, &mut out);
        assert!(r.take_tcp_requests().is_empty());
        let tcp: SocketAddr = "192.0.2.1:443".parse().unwrap();
        r.nuclei[0].spec.tcp = Some(tcp);
        r.tick(60_100, &node, &mut out);
        assert_eq!(r.take_tcp_requests(), vec![TcpRequest::Connect { index: 0, to: tcp }]);
        r.tcp_down(61_000, 0);
        assert!(r.take_moves().is_empty(), "it never came up");
        assert_eq!(r.take_tcp_requests(), vec![TcpRequest::Close { index: 0 }]);
        r.tick(61_100, &node, &mut out);
        assert!(r.take_tcp_requests().is_empty(), "a pause first");
        r.tick(61_000 + TCP_CONNECT_MS, &node, &mut out);
        assert_eq!(r.take_tcp_requests(), vec![TcpRequest::Connect { index: 0, to: tcp }]);
        // A connection that never reports is given up at the deadline; the next pause is
        // twice as long (20 s), and so on.
        r.tick(61_000 + 2 * TCP_CONNECT_MS, &node, &mut out);
        assert_eq!(r.take_tcp_requests(), vec![TcpRequest::Close { index: 0 }]);
        // Up after it was given up: closed again.
        r.tcp_up(90_000, 0, "127.0.0.1:1".parse().unwrap());
        assert_eq!(r.take_tcp_requests(), vec![TcpRequest::Close { index: 0 }]);
        r.tick(81_000 + 20_000 - 100, &node, &mut out);
        assert!(r.take_tcp_requests().is_empty(), "20 s after the second failure");
        r.tick(81_000 + 20_000, &node, &mut out);
        assert_eq!(r.take_tcp_requests(), vec![TcpRequest::Connect { index: 0, to: tcp }]);
        // Up: the pause starts again from 10 s at the next failure.
        r.tcp_up(101_500, 0, "127.0.0.1:1".parse().unwrap());
        r.tcp_down(102_000, 0);
        r.take_tcp_requests();
        r.tick(102_000 + TCP_CONNECT_MS, &node, &mut out);
        assert_eq!(r.take_tcp_requests(), vec![TcpRequest::Connect { index: 0, to: tcp }]);
    }

    #[test]
    fn a_tcp_relay_that_stops_answering_is_replaced_and_an_unanswered_probe_re_registers_over_tcp()
    {
        let (mut r, node, nucleus) = setup();
        let (udp, tcp, bridge): (SocketAddr, SocketAddr, SocketAddr) = (
            "192.0.2.1:51820".parse().unwrap(),
            "192.0.2.1:443".parse().unwrap(),
            "127.0.0.1:40000".parse().unwrap(),
        );
        r.nuclei[0].spec.tcp = Some(tcp);
        let mut out = vec![];
        r.tick(0, &node, &mut out);
        r.tick(TCP_AFTER_MS, &node, &mut out);
        r.take_tcp_requests();
        r.tcp_up(4_100, 0, bridge);
        r.take_moves();
        r.tick(4_100, &node, &mut out);
        let reg = registers(&mut out);
        let ok = Registered {
            nucleus_key: nucleus.public_key(),
            node_key: node.public_key(),
            echo: reg[0].1,
            reflexive: "[100::1]:443".parse().unwrap(),
            interval_secs: 20,
            members: 0,
        };
        r.on_message(4_200, bridge, &ok.build(&nucleus));
        assert_eq!(r.status(4_200)[0].reflexive, None, "not this node's address");
        // The UDP probe (at 9.1 s) goes unanswered: over TCP again 1 s later.
        r.tick(9_100, &node, &mut out);
        assert_eq!(registers(&mut out).iter().map(|s| s.0).collect::<Vec<_>>(), vec![udp]);
        r.tick(9_100 + UDP_PROBE_GRACE_MS, &node, &mut out);
        assert_eq!(registers(&mut out).iter().map(|s| s.0).collect::<Vec<_>>(), vec![bridge]);
        // From now on no answer over TCP either: given up an interval and 4 s after the
        // last answer, and a new connection asked for at once (UDP is still silent).
        r.tick(4_200 + 20_000 + TCP_AFTER_MS - 100, &node, &mut out);
        assert!(r.take_tcp_requests().is_empty());
        r.tick(4_200 + 20_000 + TCP_AFTER_MS, &node, &mut out);
        assert_eq!(r.take_tcp_requests(), vec![TcpRequest::Close { index: 0 }]);
        assert_eq!(r.take_moves(), vec![(bridge, udp)]);
        r.tick(4_200 + 20_000 + TCP_AFTER_MS + 100, &node, &mut out);
        assert_eq!(r.take_tcp_requests(), vec![TcpRequest::Connect { index: 0, to: tcp }]);
    }
}
