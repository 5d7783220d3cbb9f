use super::*;
use omni_proto::cluster::Cluster;

fn limits() -> Limits {
    Limits {
        register_interval_secs: 20,
        member_timeout_ms: 65_000,
        max_clock_skew_secs: Some(600),
        registrations_per_ip: 1000,
        max_members: 100,
        open: true,
        relay_bytes_per_sec: 10_000,
        relay_burst_bytes: 3_000,
    }
}

const T0: u64 = 1_800_000_000;

fn cluster() -> Cluster {
    Cluster::new("fleet", "ocs1-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap()
}

fn node(i: u8) -> Identity {
    Identity::from_seed([i; 32])
}

fn wall(s: u64) -> Tai64n {
    Tai64n::from_unix(T0 + s, 0)
}

fn reg(c: &Cluster, n: &Identity, s: u64) -> Vec<u8> {
    nucleus::Register::build(c, n, None, wall(s), &["192.168.1.10:51820".parse().unwrap()])
}

fn outs(core: &mut Core) -> Vec<(SocketAddr, Vec<u8>)> {
    core.drain().collect()
}

fn members_for(msgs: &[(SocketAddr, Vec<u8>)], to: SocketAddr) -> Vec<Members> {
    msgs.iter()
        .filter(|(a, b)| *a == to && b[4] == subtype::MEMBERS)
        .map(|(_, b)| Members::parse(b).unwrap())
        .collect()
}

#[test]
fn registration_answers_and_introduces_members() {
    let mut core = Core::new(node(100), limits(), &[]);
    let c = cluster();
    let a: SocketAddr = "203.0.113.1:40001".parse().unwrap();
    let b: SocketAddr = "203.0.113.2:40002".parse().unwrap();
    core.handle(1, wall(0), a, &reg(&c, &node(1), 0));
    let o = outs(&mut core);
    let r = Registered::parse(&o[0].1).unwrap();
    assert!(r.verify(&o[0].1));
    assert_eq!((r.reflexive, r.members, r.nucleus_key), (a, 0, core.public_key()));
    core.handle(2, wall(1), b, &reg(&c, &node(2), 1));
    let o = outs(&mut core);
    // B gets REGISTERED and a member list with A, flagged PUNCH.
    let to_b = members_for(&o, b);
    assert_eq!(to_b.len(), 1);
    assert!(to_b[0].punch);
    assert_eq!(to_b[0].entries[0].key, node(1).public_key());
    assert_eq!(to_b[0].entries[0].endpoints[0], a, "reflexive first");
    assert!(to_b[0].entries[0].endpoints.contains(&"192.168.1.10:51820".parse().unwrap()));
    // A is told about B at the same time, flagged PUNCH.
    let to_a = members_for(&o, a);
    assert_eq!(to_a.len(), 1);
    assert!(
        to_a[0].punch
            && to_a[0]
                .verify(&o.iter().find(|(x, m)| *x == a && m[4] == subtype::MEMBERS).unwrap().1)
    );
    assert_eq!(to_a[0].entries[0].key, node(2).public_key());
    assert_eq!(core.stats.punches, 1);
    assert_eq!(core.members_per_cluster(), vec![("fleet".to_string(), 2)]);
    // A plain re-registration changes nothing and punches nothing.
    core.handle(3, wall(2), a, &reg(&c, &node(1), 2));
    let o = outs(&mut core);
    assert!(members_for(&o, b).is_empty());
    assert!(!members_for(&o, a)[0].punch);
}

#[test]
fn bad_registrations_are_dropped_and_counted() {
    let mut core = Core::new(node(100), limits(), &[]);
    let c = cluster();
    let a: SocketAddr = "203.0.113.1:40001".parse().unwrap();
    let good = reg(&c, &node(1), 0);
    core.handle(1, wall(0), a, &good);
    outs(&mut core);
    // Replay of the same registration.
    core.handle(2, wall(0), a, &good);
    assert_eq!(core.stats.drops[DropReason::Replay as usize], 1);
    // Tampered.
    let mut t = reg(&c, &node(1), 5);
    t[115] ^= 1; // the timestamp's nanoseconds: still well-formed, no longer signed
    core.handle(3, wall(5), a, &t);
    assert_eq!(core.stats.drops[DropReason::BadSignature as usize], 1);
    // Stale (clock far off).
    core.handle(4, wall(5000), a, &reg(&c, &node(1), 6));
    assert_eq!(core.stats.drops[DropReason::Stale as usize], 1);
    // Same name, other secret: the name is taken by the first key.
    let wrong = Cluster::new("fleet", "ocs1-BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB").unwrap();
    core.handle(5, wall(7), "198.51.100.9:1".parse().unwrap(), &reg(&wrong, &node(9), 7));
    assert_eq!(core.stats.drops[DropReason::ClusterKeyMismatch as usize], 1);
    // For another Nucleus.
    let other = node(101).public_key();
    core.handle(6, wall(8), a, &nucleus::Register::build(&c, &node(1), Some(&other), wall(8), &[]));
    assert_eq!(core.stats.drops[DropReason::WrongNucleus as usize], 1);
    // Garbage and handshake packets.
    core.handle(7, wall(8), a, &[5, 0, 0, 0, 1]);
    core.handle(7, wall(8), a, &[1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(core.stats.drops[DropReason::Malformed as usize], 2);
    assert!(outs(&mut core).is_empty(), "no reply to anything dropped");
    assert_eq!(core.members_per_cluster(), vec![("fleet".to_string(), 1)]);
}

#[test]
fn pinned_clusters_only_when_closed() {
    let c = cluster();
    let l = Limits { open: false, ..limits() };
    let mut core = Core::new(node(100), l, &[("fleet".into(), c.public_key())]);
    let other = Cluster::new("other", "x").unwrap();
    core.handle(1, wall(0), "203.0.113.1:1".parse().unwrap(), &reg(&other, &node(1), 0));
    assert_eq!(core.stats.drops[DropReason::UnknownCluster as usize], 1);
    core.handle(1, wall(0), "203.0.113.1:1".parse().unwrap(), &reg(&c, &node(1), 0));
    assert_eq!(core.stats.registrations, 1);
}

#[test]
fn registration_flood_is_rate_limited_and_memory_bounded() {
    let l = Limits { registrations_per_ip: 5, max_members: 10, ..limits() };
    let mut core = Core::new(node(100), l, &[]);
    let c = cluster();
    for i in 0..50u8 {
        core.handle(100, wall(0), "203.0.113.1:1".parse().unwrap(), &reg(&c, &node(i), 0));
    }
    assert_eq!(core.stats.registrations, 5);
    assert_eq!(core.stats.drops[DropReason::RateLimited as usize], 45);
    for i in 0..50u8 {
        core.handle(
            100,
            wall(0),
            format!("203.0.113.{}:1", i + 10).parse().unwrap(),
            &reg(&c, &node(i + 50), 0),
        );
    }
    assert_eq!(core.members_per_cluster()[0].1, 10, "capped at max_members");
    assert_eq!(core.stats.drops[DropReason::Full as usize], 45);
}

#[test]
fn relay_between_members_with_budget() {
    let mut core = Core::new(node(100), limits(), &[]);
    let c = cluster();
    let (a, b): (SocketAddr, SocketAddr) =
        ("203.0.113.1:4".parse().unwrap(), "203.0.113.2:5".parse().unwrap());
    core.handle(1, wall(0), a, &reg(&c, &node(1), 0));
    core.handle(1, wall(0), b, &reg(&c, &node(2), 0));
    outs(&mut core);
    let tag_b = relay_tag(&c.public_key(), &node(2).public_key());
    let tag_a = relay_tag(&c.public_key(), &node(1).public_key());
    let mut pkt = relay::header(false, &tag_b).to_vec();
    pkt.extend_from_slice(&[4, 0, 0, 0]);
    pkt.extend(vec![0xab; 996]);
    core.handle(2, wall(0), a, &pkt);
    let o = outs(&mut core);
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].0, b);
    let p = relay::Packet::new_checked(&o[0].1[..]).unwrap();
    assert!(!p.is_request());
    assert_eq!(p.tag(), tag_a, "source tag");
    assert_eq!(p.inner(), &pkt[12..], "inner untouched");
    assert_eq!((core.stats.relayed_packets, core.stats.relayed_bytes), (1, 1000));
    // From an address that is not a member.
    core.handle(2, wall(0), "198.51.100.1:9".parse().unwrap(), &pkt);
    assert_eq!(core.stats.drops[DropReason::UnknownRelaySource as usize], 1);
    // To a tag that is not a member.
    let mut bad = relay::header(false, &[0; 8]).to_vec();
    bad.extend_from_slice(&[4, 0, 0, 0]);
    core.handle(2, wall(0), a, &bad);
    assert_eq!(core.stats.drops[DropReason::UnknownRelayTarget as usize], 1);
    // Budget: 3000-byte burst, 10 kB/s.
    for _ in 0..10 {
        core.handle(2, wall(0), a, &pkt);
    }
    assert!(core.stats.drops[DropReason::RelayRate as usize] >= 8, "{:?}", core.stats.drops);
    outs(&mut core);
    // A relayed packet is never relayed again.
    let mut relayed = relay::header(true, &tag_b).to_vec();
    relayed.extend_from_slice(&[4, 0, 0, 0]);
    core.handle(5000, wall(0), a, &relayed);
    assert!(outs(&mut core).is_empty());
}

#[test]
fn silent_members_expire_and_others_are_told() {
    let mut core = Core::new(node(100), limits(), &[]);
    let c = cluster();
    let (a, b): (SocketAddr, SocketAddr) =
        ("203.0.113.1:4".parse().unwrap(), "203.0.113.2:5".parse().unwrap());
    core.handle(1_000, wall(0), a, &reg(&c, &node(1), 0));
    core.handle(50_000, wall(50), b, &reg(&c, &node(2), 50));
    outs(&mut core);
    core.tick(70_000, wall(70));
    let o = outs(&mut core);
    let to_b = members_for(&o, b);
    assert_eq!(
        to_b[0].entries,
        vec![MemberEntry { key: node(1).public_key(), present: false, endpoints: vec![] }]
    );
    assert_eq!(core.members_per_cluster()[0].1, 1);
    core.tick(200_000, wall(200));
    assert!(core.members_per_cluster().is_empty(), "an empty open cluster frees its name");
}

#[test]
fn punch_request_and_unregister() {
    let mut core = Core::new(node(100), limits(), &[]);
    let c = cluster();
    let (a, b): (SocketAddr, SocketAddr) =
        ("203.0.113.1:4".parse().unwrap(), "203.0.113.2:5".parse().unwrap());
    core.handle(1, wall(0), a, &reg(&c, &node(1), 0));
    core.handle(1, wall(0), b, &reg(&c, &node(2), 0));
    outs(&mut core);
    let pr = NodeRequest::build(
        subtype::PUNCH_REQUEST,
        &c.public_key(),
        &node(1),
        None,
        wall(3),
        Some(&node(2).public_key()),
    );
    core.handle(2, wall(3), a, &pr);
    let o = outs(&mut core);
    assert!(members_for(&o, a)[0].punch && members_for(&o, b)[0].punch);
    core.handle(2, wall(3), a, &pr);
    assert_eq!(core.stats.drops[DropReason::Replay as usize], 1);
    let un =
        NodeRequest::build(subtype::UNREGISTER, &c.public_key(), &node(1), None, wall(4), None);
    core.handle(3, wall(4), a, &un);
    let o = outs(&mut core);
    assert!(!members_for(&o, b)[0].entries[0].present);
    assert_eq!(core.members_per_cluster()[0].1, 1);
}

mod membership {
    use super::*;
    use omni_proto::membership::cert::Certificate;
    use omni_proto::membership::policy::{Policy, Rule};
    use omni_proto::membership::revocation::{Revocation, Target};
    use omni_proto::wire::nucleus::{RegisterMembership, Statement};

    fn authority() -> Identity {
        Identity::from_seed([77; 32])
    }

    fn cert(n: &Identity, serial: u64) -> Vec<u8> {
        Certificate {
            serial,
            cluster: "fleet".into(),
            node: n.public_key(),
            name: "n".into(),
            groups: vec![],
            not_before: T0 - 10,
            not_after: T0 + 1000,
        }
        .sign(&authority())
        .unwrap()
    }

    fn certified_reg(n: &Identity, s: u64, set_id: u64, certificate: Vec<u8>) -> Vec<u8> {
        let m = RegisterMembership { set_id, certificate };
        nucleus::Register::build_with(&cluster(), n, None, wall(s), &[], Some(&m))
    }

    fn revocation(target: Target) -> Vec<u8> {
        Revocation { cluster: "fleet".into(), target, issued: T0, until: 0 }
            .sign(&authority())
            .unwrap()
    }

    fn policy(version: u64) -> Vec<u8> {
        let rule = Rule { between: ["a".into(), "b".into()], ethertypes: vec![], vlans: vec![] };
        Policy { cluster: "fleet".into(), version, issued: T0, rules: vec![rule] }
            .sign(&authority())
            .unwrap()
    }

    fn statements_to(msgs: &[(SocketAddr, Vec<u8>)], to: SocketAddr) -> Vec<Statement> {
        msgs.iter()
            .filter(|(a, b)| *a == to && b[4] == subtype::STATEMENT)
            .map(|(_, b)| Statement::parse(b).unwrap())
            .collect()
    }

    fn core() -> Core {
        let mut core = Core::new(node(100), limits(), &[("fleet".into(), cluster().public_key())]);
        assert!(core.set_authority("fleet", authority().public_key()));
        assert!(!core.set_authority("other", authority().public_key()), "not pinned");
        core
    }

    #[test]
    fn a_cluster_with_an_authority_registers_certified_nodes_only() {
        let mut core = core();
        let a: SocketAddr = "203.0.113.1:40001".parse().unwrap();
        core.handle(1, wall(0), a, &reg(&cluster(), &node(1), 0));
        assert_eq!(core.stats.drops[DropReason::Uncertified as usize], 1, "no certificate");
        core.handle(1, wall(1), a, &certified_reg(&node(1), 1, 0, cert(&node(2), 5)));
        assert_eq!(core.stats.drops[DropReason::Uncertified as usize], 2, "another node's");
        let forged = Certificate {
            serial: 1,
            cluster: "fleet".into(),
            node: node(1).public_key(),
            name: "n".into(),
            groups: vec![],
            not_before: T0 - 10,
            not_after: T0 + 1000,
        }
        .sign(&node(50))
        .unwrap();
        core.handle(1, wall(2), a, &certified_reg(&node(1), 2, 0, forged));
        assert_eq!(core.stats.drops[DropReason::Uncertified as usize], 3, "another authority");
        core.handle(1, wall(2000), a, &certified_reg(&node(1), 2000, 0, cert(&node(1), 5)));
        assert_eq!(core.stats.drops[DropReason::Uncertified as usize], 4, "expired");
        core.handle(1, wall(3), a, &certified_reg(&node(1), 3, 0, cert(&node(1), 5)));
        assert_eq!(core.members_per_cluster(), [("fleet".to_string(), 1)]);
    }

    #[test]
    fn statements_are_kept_pushed_and_sent_to_nodes_that_lack_them() {
        let mut core = core();
        let (a, b, c): (SocketAddr, SocketAddr, SocketAddr) = (
            "203.0.113.1:40001".parse().unwrap(),
            "203.0.113.2:40002".parse().unwrap(),
            "203.0.113.3:40003".parse().unwrap(),
        );
        core.handle(1, wall(0), a, &certified_reg(&node(1), 0, 0, cert(&node(1), 1)));
        core.handle(1, wall(0), b, &certified_reg(&node(2), 0, 0, cert(&node(2), 2)));
        core.handle(1, wall(0), c, &certified_reg(&node(3), 0, 0, cert(&node(3), 3)));
        outs(&mut core);
        // The operator revokes node 3's certificate: pushed to all, node 3 removed.
        let r = revocation(Target::Serial(3));
        assert!(core.operator_statement(wall(1), &r).unwrap().contains("revocation accepted"));
        let o = outs(&mut core);
        let to_a = statements_to(&o, a);
        assert_eq!(to_a.len(), 1);
        assert_eq!(to_a[0].statement, r);
        assert_eq!((to_a[0].index, to_a[0].count), (0, 1));
        let id = to_a[0].set_id;
        assert_ne!(id, 0);
        assert!(members_for(&o, a).iter().any(|m| m.entries.iter().any(|e| !e.present)));
        assert_eq!(core.members_per_cluster(), [("fleet".to_string(), 2)]);
        assert_eq!(core.operator_statement(wall(1), &r).unwrap(), "already held; nothing to do");
        // Node 3 cannot register again with that certificate.
        core.handle(2, wall(2), c, &certified_reg(&node(3), 2, id, cert(&node(3), 3)));
        assert_eq!(core.stats.drops[DropReason::Revoked as usize], 1);
        // A member uploads a policy: accepted and pushed.
        let up = Statement {
            cluster_key: cluster().public_key(),
            sender: node(1).public_key(),
            set_id: 0,
            index: 0,
            count: 0,
            statement: policy(4),
        };
        core.handle(3, wall(3), a, &up.build());
        let o = outs(&mut core);
        let to_b = statements_to(&o, b);
        assert_eq!(to_b.len(), 1);
        assert_eq!((to_b[0].index, to_b[0].count), (1, 2));
        let id2 = to_b[0].set_id;
        assert_eq!(core.statements_per_cluster(), [("fleet".to_string(), 1, Some(4))]);
        // From an address that is not that member's: refused.
        core.handle(3, wall(3), c, &Statement { statement: policy(5), ..up.clone() }.build());
        assert_eq!(core.stats.drops[DropReason::UnknownMember as usize], 1);
        // A node holding the current set gets nothing at registration; one holding an
        // older set (or none) gets all of it, before its member list.
        core.handle(4, wall(4), b, &certified_reg(&node(2), 4, id2, cert(&node(2), 2)));
        assert!(statements_to(&outs(&mut core), b).is_empty());
        core.handle(5, wall(5), b, &certified_reg(&node(2), 5, id, cert(&node(2), 2)));
        let o = outs(&mut core);
        let got = statements_to(&o, b);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].statement.clone(), got[1].statement.clone()), (r, policy(4)));
        assert!(got.iter().all(|s| s.set_id == id2 && s.count == 2));
        let first_statement = o.iter().position(|(_, m)| m[4] == subtype::STATEMENT).unwrap();
        let first_members = o.iter().position(|(_, m)| m[4] == subtype::MEMBERS).unwrap();
        assert!(first_statement < first_members);
        // Foreign or malformed statements are refused and counted.
        let foreign =
            Revocation { cluster: "fleet".into(), target: Target::Serial(9), issued: T0, until: 0 }
                .sign(&node(60))
                .unwrap();
        core.handle(6, wall(6), a, &Statement { statement: foreign, ..up.clone() }.build());
        core.handle(6, wall(6), a, &Statement { statement: b"junk".to_vec(), ..up }.build());
        assert_eq!(core.stats.drops[DropReason::BadStatement as usize], 2);
        assert!(core.operator_statement(wall(6), &policy(3)).unwrap().contains("already"));
    }

    #[test]
    fn a_cluster_without_an_authority_keeps_no_statements() {
        let mut core = Core::new(node(100), limits(), &[]);
        let a: SocketAddr = "203.0.113.1:40001".parse().unwrap();
        core.handle(1, wall(0), a, &certified_reg(&node(1), 0, 0, cert(&node(1), 1)));
        assert_eq!(core.members_per_cluster(), [("fleet".to_string(), 1)], "trailer ignored");
        let err = core.operator_statement(wall(1), &revocation(Target::Serial(1))).unwrap_err();
        assert!(err.contains("no authority"), "{err}");
    }
}
