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
//! - **STATEMENT** (for a cluster whose authority the Nucleus knows, `[[clusters]]
//!   authority`): a revocation or policy from a registered member or the operator, checked
//!   against the authority, kept ([`statements`]) and pushed to every member; a revoked
//!   member is removed. Such a cluster registers only nodes that show a valid, unrevoked
//!   certificate in their REGISTER, and a registering node that lacks the current statement
//!   set gets all of it.
//!
//! Every message that fails a check is dropped silently and counted by reason. Memory is
//! bounded: `max_members` in all, per-IP buckets with bounded tables, expiry of the silent.

use std::collections::HashMap;
use std::net::SocketAddr;

use omni_proto::cluster::relay_tag;
use omni_proto::membership::cert::SignedCertificate;
use omni_proto::rate_limiter::{RateLimiter, TokenBucket};
use omni_proto::tai64n::Tai64n;
use omni_proto::wire::nucleus::{
    self, MemberEntry, Members, NodeRequest, Register, Registered, Statement, subtype,
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
    /// A registration without a valid certificate, in a cluster with an authority.
    Uncertified,
    /// A registration by a revoked node or certificate.
    Revoked,
    /// A statement that is malformed, foreign or lapsed, or for a cluster whose
    /// authority this Nucleus does not know.
    BadStatement,
}

impl DropReason {
    pub const ALL: [DropReason; 16] = [
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
        Self::Uncertified,
        Self::Revoked,
        Self::BadStatement,
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
            Self::Uncertified => "uncertified",
            Self::Revoked => "revoked",
            Self::BadStatement => "bad_statement",
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub registrations: u64,
    pub punches: u64,
    pub relayed_packets: u64,
    pub relayed_bytes: u64,
    /// New statements accepted, and STATEMENT messages sent to members.
    pub statements_accepted: u64,
    pub statements_sent: u64,
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
    /// Its certificate's serial (clusters with an authority).
    serial: Option<u64>,
}

impl Member {
    /// Where peers may reach it directly: its reflexive address (not when it came over the
    /// TCP relay: that one is the Nucleus's own), then its local ones.
    fn endpoints(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> =
            Some(self.reflexive).filter(|r| !crate::tcp::is_virtual(r)).into_iter().collect();
        v.extend(self.locals.iter().filter(|l| **l != self.reflexive).copied());
        v.truncate(nucleus::MAX_MEMBER_ENDPOINTS);
        v
    }
}

struct ClusterState {
    name: String,
    pinned: bool,
    members: HashMap<PublicKey, Member>,
    /// The cluster's authority, when configured: certified members only, statements kept.
    authority: Option<PublicKey>,
    statements: StatementSet,
}

impl ClusterState {
    fn new(name: String, pinned: bool) -> Self {
        Self {
            name,
            pinned,
            members: HashMap::new(),
            authority: None,
            statements: StatementSet::default(),
        }
    }
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
            clusters.insert(*key, ClusterState::new(name.clone(), true));
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
                Ok((subtype::STATEMENT, _)) => self.on_statement(now_ms, wall, src, b),
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
            self.clusters
                .insert(reg.cluster_key, ClusterState::new(reg.cluster_name.clone(), false));
            self.names.insert(reg.cluster_name.clone(), reg.cluster_key);
        }
        let cluster = self.clusters.get_mut(&reg.cluster_key).expect("inserted above");
        let serial = match cluster.authority {
            None => None,
            Some(authority) => match certified(&reg, &authority, &cluster.name, wall) {
                Err(()) => return self.drop(DropReason::Uncertified),
                Ok(serial) if cluster.statements.revokes(&reg.node_key, serial) => {
                    return self.drop(DropReason::Revoked);
                }
                Ok(serial) => Some(serial),
            },
        };
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
                m.serial = serial;
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
                        serial,
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
        // Statements before members: a node learns what is revoked, and the policy, first.
        let held = reg.membership.as_ref().map(|m| m.set_id);
        if held.is_some_and(|id| id != cluster.statements.id()) {
            self.send_statements(reg.cluster_key, src);
        }
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

    /// Makes cluster `name` (pinned) one with an authority: it registers only certified
    /// nodes and keeps and spreads that authority's statements. Returns false for a
    /// cluster that is not pinned.
    pub fn set_authority(&mut self, name: &str, authority: PublicKey) -> bool {
        let Some(key) = self.names.get(name) else { return false };
        let Some(c) = self.clusters.get_mut(key).filter(|c| c.pinned) else { return false };
        c.authority = Some(authority);
        true
    }

    /// A statement from the operator (the control socket): for the cluster it names,
    /// which must have an authority here. Returns what it did, in words.
    pub fn operator_statement(&mut self, wall: Tai64n, bytes: &[u8]) -> Result<String, String> {
        let name = statement_cluster(bytes)?;
        let Some(&ck) = self.names.get(&name) else {
            return Err(format!("cluster {name:?} is not served here"));
        };
        match self.accept_statement(ck, bytes, wall)? {
            Added::Known => Ok("already held; nothing to do".into()),
            Added::Revocation(_) => Ok(format!("revocation accepted for cluster {name}")),
            Added::Policy(v) => Ok(format!("policy version {v} accepted for cluster {name}")),
        }
    }

    /// A STATEMENT from a registered member.
    fn on_statement(&mut self, now_ms: u64, wall: Tai64n, src: SocketAddr, b: &[u8]) {
        if !self.limiter.allow(src.ip(), now_ms) {
            return self.drop(DropReason::RateLimited);
        }
        let Ok(st) = Statement::parse(b) else { return self.drop(DropReason::Malformed) };
        if self.by_addr.get(&src) != Some(&(st.cluster_key, st.sender)) {
            return self.drop(DropReason::UnknownMember);
        }
        if self.accept_statement(st.cluster_key, &st.statement, wall).is_err() {
            self.drop(DropReason::BadStatement);
        }
    }

    /// Checks and keeps a statement for cluster `ck`; a new one goes to every member, and
    /// a revocation removes the members it names.
    fn accept_statement(
        &mut self,
        ck: PublicKey,
        bytes: &[u8],
        wall: Tai64n,
    ) -> Result<Added, String> {
        let Some(c) = self.clusters.get_mut(&ck) else { return Err("unknown cluster".into()) };
        let Some(authority) = c.authority else {
            return Err(format!(
                "cluster {:?} has no authority here ([[clusters]] authority in nucleus.toml)",
                c.name
            ));
        };
        let added = c.statements.add(bytes, &authority, &c.name, wall.unix_secs())?;
        if added == Added::Known {
            return Ok(added);
        }
        self.stats.statements_accepted += 1;
        if let Added::Revocation(_) = added {
            let revoked: Vec<PublicKey> = c
                .members
                .iter()
                .filter(|(k, m)| c.statements.revokes(k, m.serial.unwrap_or(u64::MAX)))
                .map(|(k, _)| *k)
                .collect();
            for k in revoked {
                self.remove_member(ck, k, wall);
            }
        }
        let c = &self.clusters[&ck];
        let (id, count) = (c.statements.id(), c.statements.all().len() as u16);
        let msg = Statement {
            cluster_key: ck,
            sender: self.own,
            set_id: id,
            index: count - 1,
            count,
            statement: bytes.to_vec(),
        }
        .build();
        let addrs: Vec<SocketAddr> = c.members.values().map(|m| m.reflexive).collect();
        self.stats.statements_sent += addrs.len() as u64;
        self.out.extend(addrs.into_iter().map(|a| (a, msg.clone())));
        Ok(added)
    }

    /// Sends every statement held for cluster `ck` to `to`.
    fn send_statements(&mut self, ck: PublicKey, to: SocketAddr) {
        let c = &self.clusters[&ck];
        let all = c.statements.all();
        let count = all.len().min(u16::MAX as usize) as u16;
        for (i, st) in all.iter().take(count as usize).enumerate() {
            let msg = Statement {
                cluster_key: ck,
                sender: self.own,
                set_id: c.statements.id(),
                index: i as u16,
                count,
                statement: st.to_vec(),
            };
            self.out.push((to, msg.build()));
        }
        self.stats.statements_sent += count as u64;
    }

    /// Per cluster with an authority: (name, revocations held, policy version).
    pub fn statements_per_cluster(&self) -> Vec<(String, usize, Option<u64>)> {
        let mut v: Vec<_> = self
            .clusters
            .values()
            .filter(|c| c.authority.is_some())
            .map(|c| (c.name.clone(), c.statements.revocations(), c.statements.policy_version()))
            .collect();
        v.sort();
        v
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
        for c in self.clusters.values_mut() {
            c.statements.prune(wall.unix_secs());
        }
        self.limiter.gc(now_ms);
    }
}

mod statements;

use statements::{Added, StatementSet};

/// The serial of the valid certificate for `authority` and `cluster` that a registration
/// shows for its own key.
fn certified(
    reg: &Register,
    authority: &PublicKey,
    cluster: &str,
    wall: Tai64n,
) -> Result<u64, ()> {
    let m = reg.membership.as_ref().ok_or(())?;
    let c = SignedCertificate::parse(&m.certificate).map_err(|_| ())?;
    c.admit(authority, cluster, wall.unix_secs()).map_err(|_| ())?;
    if c.cert.node != reg.node_key {
        return Err(());
    }
    Ok(c.cert.serial)
}

/// The cluster a revocation or policy is for.
fn statement_cluster(bytes: &[u8]) -> Result<String, String> {
    use omni_proto::membership::{policy::SignedPolicy, revocation::SignedRevocation};
    if let Ok(r) = SignedRevocation::parse(bytes) {
        return Ok(r.revocation.cluster);
    }
    SignedPolicy::parse(bytes)
        .map(|p| p.policy.cluster)
        .map_err(|e| format!("neither a revocation nor a policy: {e}"))
}

#[cfg(test)]
mod tests;
