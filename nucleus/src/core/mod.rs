//! The Nucleus protocol, sans I/O: feed it datagrams and ticks, collect datagrams to send.
//!
//! - **REGISTER** (signed by the cluster key = membership, and by the node key = identity;
//!   timestamped): the node's reflexive endpoint is the datagram's source. The Nucleus
//!   answers REGISTERED, sends the node the member list, and pushes the newcomer (or its new
//!   endpoints) to every other member with the PUNCH flag, so both sides send at once.
//! - **PUNCH_REQUEST**: the two named members each get the other's endpoints, flagged PUNCH.
//! - **UNREGISTER** and silence (member timeout) remove a member; the others are told.
//! - **RELAY**: from a registered member's reflexive endpoint, to another member of the same
//!   cluster by tag, within the sender's byte budget; the inner message is never opened.
//!
//! Every message that fails a check is dropped silently and counted by reason. Memory is
//! bounded: `max_members` in all, per-IP buckets with bounded tables, expiry of the silent.

use std::collections::HashMap;
use std::net::SocketAddr;

use omni_proto::cluster::relay_tag;
use omni_proto::rate_limiter::{RateLimiter, TokenBucket};
use omni_proto::tai64n::Tai64n;
use omni_proto::wire::nucleus::{
    self, MemberEntry, Members, NodeRequest, Register, Registered, subtype,
};
use omni_proto::wire::{MessageType, relay};
use omni_proto::{Identity, PublicKey};

/// Why a datagram was dropped (the `reason` label of `omni_nucleus_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    Malformed,
    BadSignature,
    WrongNucleus,
    Stale,
    Replay,
    UnknownCluster,
    ClusterKeyMismatch,
    Full,
    RateLimited,
    UnknownMember,
    UnknownRelaySource,
    UnknownRelayTarget,
    RelayRate,
}

impl DropReason {
    pub const ALL: [DropReason; 13] = [
        Self::Malformed,
        Self::BadSignature,
        Self::WrongNucleus,
        Self::Stale,
        Self::Replay,
        Self::UnknownCluster,
        Self::ClusterKeyMismatch,
        Self::Full,
        Self::RateLimited,
        Self::UnknownMember,
        Self::UnknownRelaySource,
        Self::UnknownRelayTarget,
        Self::RelayRate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::BadSignature => "bad_signature",
            Self::WrongNucleus => "wrong_nucleus",
            Self::Stale => "stale",
            Self::Replay => "replay",
            Self::UnknownCluster => "unknown_cluster",
            Self::ClusterKeyMismatch => "cluster_key_mismatch",
            Self::Full => "full",
            Self::RateLimited => "rate_limited",
            Self::UnknownMember => "unknown_member",
            Self::UnknownRelaySource => "unknown_relay_source",
            Self::UnknownRelayTarget => "unknown_relay_target",
            Self::RelayRate => "relay_rate",
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub registrations: u64,
    pub punches: u64,
    pub relayed_packets: u64,
    pub relayed_bytes: u64,
    pub drops: [u64; DropReason::ALL.len()],
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub register_interval_secs: u16,
    pub member_timeout_ms: u64,
    pub max_clock_skew_secs: Option<u64>,
    pub registrations_per_ip: u32,
    pub max_members: usize,
    pub open: bool,
    pub relay_bytes_per_sec: u64,
    pub relay_burst_bytes: u64,
}

struct Member {
    reflexive: SocketAddr,
    locals: Vec<SocketAddr>,
    last_seen_ms: u64,
    last_ts: Tai64n,
    tag: [u8; 8],
    relay: TokenBucket,
}

impl Member {
    fn endpoints(&self) -> Vec<SocketAddr> {
        let mut v = vec![self.reflexive];
        v.extend(self.locals.iter().filter(|l| **l != self.reflexive).copied());
        v.truncate(nucleus::MAX_MEMBER_ENDPOINTS);
        v
    }
}

struct ClusterState {
    name: String,
    pinned: bool,
    members: HashMap<PublicKey, Member>,
}

pub struct Core {
    identity: Identity,
    own: PublicKey,
    limits: Limits,
    clusters: HashMap<PublicKey, ClusterState>,
    names: HashMap<String, PublicKey>,
    by_addr: HashMap<SocketAddr, (PublicKey, PublicKey)>,
    tags: HashMap<(PublicKey, [u8; 8]), PublicKey>,
    limiter: RateLimiter,
    total_members: usize,
    out: Vec<(SocketAddr, Vec<u8>)>,
    pub stats: Stats,
}

impl Core {
    pub fn new(identity: Identity, limits: Limits, pinned: &[(String, PublicKey)]) -> Self {
        let mut clusters = HashMap::new();
        let mut names = HashMap::new();
        for (name, key) in pinned {
            clusters.insert(
                *key,
                ClusterState { name: name.clone(), pinned: true, members: HashMap::new() },
            );
            names.insert(name.clone(), *key);
        }
        Self {
            own: identity.public_key(),
            identity,
            limiter: RateLimiter::new(limits.registrations_per_ip),
            limits,
            clusters,
            names,
            by_addr: HashMap::new(),
            tags: HashMap::new(),
            total_members: 0,
            out: Vec::new(),
            stats: Stats::default(),
        }
    }

    pub fn public_key(&self) -> PublicKey {
        self.own
    }

    pub fn drain(&mut self) -> std::vec::Drain<'_, (SocketAddr, Vec<u8>)> {
        self.out.drain(..)
    }

    fn drop(&mut self, r: DropReason) {
        self.stats.drops[r as usize] += 1;
    }

    /// Registered members per cluster name.
    pub fn members_per_cluster(&self) -> Vec<(String, usize)> {
        let mut v: Vec<_> =
            self.clusters.values().map(|c| (c.name.clone(), c.members.len())).collect();
        v.sort();
        v
    }

    /// Handles one datagram from `src`. `now_ms` is monotonic, `wall` the current time.
    pub fn handle(&mut self, now_ms: u64, wall: Tai64n, src: SocketAddr, b: &[u8]) {
        match MessageType::of(b) {
            Ok(MessageType::Nucleus) => match nucleus::classify(b) {
                Ok((subtype::REGISTER, _)) => self.on_register(now_ms, wall, src, b),
                Ok((subtype::UNREGISTER, _)) | Ok((subtype::PUNCH_REQUEST, _)) => {
                    self.on_request(now_ms, wall, src, b)
                }
                _ => self.drop(DropReason::Malformed),
            },
            Ok(MessageType::Relay) => self.on_relay(now_ms, src, b),
            _ => self.drop(DropReason::Malformed),
        }
    }

    fn fresh(&self, ts: Tai64n, wall: Tai64n) -> bool {
        match self.limits.max_clock_skew_secs {
            None => true,
            Some(skew) => ts.unix_secs().abs_diff(wall.unix_secs()) <= skew,
        }
    }

    fn on_register(&mut self, now_ms: u64, wall: Tai64n, src: SocketAddr, b: &[u8]) {
        if !self.limiter.allow(src.ip(), now_ms) {
            return self.drop(DropReason::RateLimited);
        }
        let Ok(reg) = Register::parse(b) else { return self.drop(DropReason::Malformed) };
        if !reg.verify(b) {
            return self.drop(DropReason::BadSignature);
        }
        if reg.nucleus_key.is_some_and(|k| k != self.own) {
            return self.drop(DropReason::WrongNucleus);
        }
        if !self.fresh(reg.timestamp, wall) {
            return self.drop(DropReason::Stale);
        }
        // Which cluster: pinned by key, or (open) the first key that claimed the name.
        match self.names.get(&reg.cluster_name) {
            Some(k) if *k != reg.cluster_key => return self.drop(DropReason::ClusterKeyMismatch),
            Some(_) => {}
            None if !self.limits.open => return self.drop(DropReason::UnknownCluster),
            None => {}
        }
        if !self.clusters.contains_key(&reg.cluster_key) {
            if !self.limits.open {
                return self.drop(DropReason::UnknownCluster);
            }
            self.clusters.insert(
                reg.cluster_key,
                ClusterState {
                    name: reg.cluster_name.clone(),
                    pinned: false,
                    members: HashMap::new(),
                },
            );
            self.names.insert(reg.cluster_name.clone(), reg.cluster_key);
        }
        let cluster = self.clusters.get_mut(&reg.cluster_key).expect("inserted above");
        let existing = cluster.members.get(&reg.node_key);
        if existing.is_some_and(|m| reg.timestamp <= m.last_ts) {
            return self.drop(DropReason::Replay);
        }
        if existing.is_none() && self.total_members >= self.limits.max_members {
            return self.drop(DropReason::Full);
        }
        let tag = relay_tag(&reg.cluster_key, &reg.node_key);
        let (changed, old_addr) = match cluster.members.get_mut(&reg.node_key) {
            Some(m) => {
                let changed = m.reflexive != src || m.locals != reg.locals;
                let old = (m.reflexive != src).then_some(m.reflexive);
                m.reflexive = src;
                m.locals = reg.locals.clone();
                m.last_seen_ms = now_ms;
                m.last_ts = reg.timestamp;
                (changed, old)
            }
            None => {
                cluster.members.insert(
                    reg.node_key,
                    Member {
                        reflexive: src,
                        locals: reg.locals.clone(),
                        last_seen_ms: now_ms,
                        last_ts: reg.timestamp,
                        tag,
                        relay: TokenBucket::new(
                            self.limits.relay_bytes_per_sec,
                            self.limits.relay_burst_bytes,
                            now_ms,
                        ),
                    },
                );
                self.total_members += 1;
                (true, None)
            }
        };
        if let Some(old) = old_addr {
            self.by_addr.remove(&old);
        }
        self.by_addr.insert(src, (reg.cluster_key, reg.node_key));
        self.tags.insert((reg.cluster_key, tag), reg.node_key);
        self.stats.registrations += 1;

        let cluster = &self.clusters[&reg.cluster_key];
        let others: Vec<(PublicKey, MemberEntry, SocketAddr)> = cluster
            .members
            .iter()
            .filter(|(k, _)| **k != reg.node_key)
            .map(|(k, m)| {
                (*k, MemberEntry { key: *k, present: true, endpoints: m.endpoints() }, m.reflexive)
            })
            .collect();
        let me = MemberEntry {
            key: reg.node_key,
            present: true,
            endpoints: cluster.members[&reg.node_key].endpoints(),
        };
        let reply = Registered {
            nucleus_key: self.own,
            node_key: reg.node_key,
            echo: reg.timestamp,
            reflexive: src,
            interval_secs: self.limits.register_interval_secs,
            members: others.len().min(u16::MAX as usize) as u16,
        }
        .build(&self.identity);
        self.out.push((src, reply));
        let entries: Vec<MemberEntry> = others.iter().map(|(_, e, _)| e.clone()).collect();
        for m in Members::build_all(&self.identity, &reg.node_key, wall, changed, &entries) {
            self.out.push((src, m));
        }
        if changed {
            // Tell everyone else about the newcomer (or its new address), all at once.
            for (k, _, addr) in &others {
                for m in
                    Members::build_all(&self.identity, k, wall, true, std::slice::from_ref(&me))
                {
                    self.out.push((*addr, m));
                }
            }
            self.stats.punches += others.len() as u64;
        }
    }

    fn on_request(&mut self, now_ms: u64, wall: Tai64n, src: SocketAddr, b: &[u8]) {
        if !self.limiter.allow(src.ip(), now_ms) {
            return self.drop(DropReason::RateLimited);
        }
        let Ok(req) = NodeRequest::parse(b) else { return self.drop(DropReason::Malformed) };
        if !req.verify(b) {
            return self.drop(DropReason::BadSignature);
        }
        if req.nucleus_key.is_some_and(|k| k != self.own) {
            return self.drop(DropReason::WrongNucleus);
        }
        let Some(cluster) = self.clusters.get_mut(&req.cluster_key) else {
            return self.drop(DropReason::UnknownCluster);
        };
        let Some(m) = cluster.members.get_mut(&req.node_key) else {
            return self.drop(DropReason::UnknownMember);
        };
        if req.timestamp <= m.last_ts {
            return self.drop(DropReason::Replay);
        }
        m.last_ts = req.timestamp;
        m.last_seen_ms = now_ms;
        if req.subtype == subtype::UNREGISTER {
            self.remove_member(req.cluster_key, req.node_key, wall);
            return;
        }
        let Some(target) = req.target else { return self.drop(DropReason::Malformed) };
        let cluster = &self.clusters[&req.cluster_key];
        let (Some(a), Some(t)) = (cluster.members.get(&req.node_key), cluster.members.get(&target))
        else {
            return self.drop(DropReason::UnknownMember);
        };
        let ea = MemberEntry { key: req.node_key, present: true, endpoints: a.endpoints() };
        let et = MemberEntry { key: target, present: true, endpoints: t.endpoints() };
        let (addr_a, addr_t) = (a.reflexive, t.reflexive);
        for m in Members::build_all(&self.identity, &req.node_key, wall, true, &[et]) {
            self.out.push((addr_a, m));
        }
        for m in Members::build_all(&self.identity, &target, wall, true, &[ea]) {
            self.out.push((addr_t, m));
        }
        self.stats.punches += 1;
    }

    fn on_relay(&mut self, now_ms: u64, src: SocketAddr, b: &[u8]) {
        let Ok(p) = relay::Packet::new_checked(b) else { return self.drop(DropReason::Malformed) };
        if !p.is_request() {
            return self.drop(DropReason::Malformed);
        }
        let Some(&(ck, from)) = self.by_addr.get(&src) else {
            return self.drop(DropReason::UnknownRelaySource);
        };
        let Some(&to) = self.tags.get(&(ck, p.tag())) else {
            return self.drop(DropReason::UnknownRelayTarget);
        };
        let cluster = self.clusters.get_mut(&ck).expect("by_addr entries belong to live clusters");
        let Some(sender) = cluster.members.get_mut(&from) else {
            return self.drop(DropReason::UnknownRelaySource);
        };
        if !sender.relay.take(b.len() as u64, now_ms) {
            return self.drop(DropReason::RelayRate);
        }
        let src_tag = sender.tag;
        let Some(dst) = cluster.members.get(&to) else {
            return self.drop(DropReason::UnknownRelayTarget);
        };
        let mut out = Vec::with_capacity(b.len());
        out.extend_from_slice(&relay::header(true, &src_tag));
        out.extend_from_slice(p.inner());
        self.out.push((dst.reflexive, out));
        self.stats.relayed_packets += 1;
        self.stats.relayed_bytes += p.inner().len() as u64;
    }

    fn remove_member(&mut self, ck: PublicKey, node: PublicKey, wall: Tai64n) {
        let Some(cluster) = self.clusters.get_mut(&ck) else { return };
        let Some(m) = cluster.members.remove(&node) else { return };
        self.total_members -= 1;
        self.by_addr.remove(&m.reflexive);
        self.tags.remove(&(ck, m.tag));
        let gone = MemberEntry { key: node, present: false, endpoints: vec![] };
        let others: Vec<(PublicKey, SocketAddr)> =
            cluster.members.iter().map(|(k, m)| (*k, m.reflexive)).collect();
        if cluster.members.is_empty() && !cluster.pinned {
            let name = cluster.name.clone();
            self.clusters.remove(&ck);
            self.names.remove(&name);
        }
        for (k, addr) in others {
            for msg in
                Members::build_all(&self.identity, &k, wall, false, std::slice::from_ref(&gone))
            {
                self.out.push((addr, msg));
            }
        }
    }

    /// Periodic work: forget members silent for longer than the member timeout.
    pub fn tick(&mut self, now_ms: u64, wall: Tai64n) {
        let timeout = self.limits.member_timeout_ms;
        let expired: Vec<(PublicKey, PublicKey)> = self
            .clusters
            .iter()
            .flat_map(|(ck, c)| {
                c.members
                    .iter()
                    .filter(|(_, m)| now_ms.saturating_sub(m.last_seen_ms) > timeout)
                    .map(move |(k, _)| (*ck, *k))
            })
            .collect();
        for (ck, k) in expired {
            self.remove_member(ck, k, wall);
        }
        self.limiter.gc(now_ms);
    }
}

#[cfg(test)]
mod tests;
