use super::*;
use omni_proto::aead::Aead;
use std::time::Duration;

const A_EP: &str = "10.0.0.1:51820";
const B_EP: &str = "10.0.0.2:51820";

fn cfg() -> FabricConfig {
    FabricConfig {
        timers: Timers::default(),
        psk: Psk::none(),
        max_sessions_per_ip: 10,
        cookie_threshold: 1000,
        fdb_aging_ms: 300_000,
        flood_limit: u32::MAX,
        max_sessions: 64,
        rendezvous: RendezvousTimers::default(),
        ciphers: AeadSet::of(&Aead::ALL),
        admission: None,
    }
}

fn pair_with(cfg_a: FabricConfig, cfg_b: FabricConfig) -> (Fabric, Fabric) {
    let ia = Identity::from_seed([1; 32]);
    let ib = Identity::from_seed([2; 32]);
    let (ka, kb) = (ia.public_key(), ib.public_key());
    let mut a = Fabric::new(ia, cfg_a, 1);
    let mut b = Fabric::new(ib, cfg_b, 1);
    a.add_peer(kb, Some(B_EP.parse().unwrap()));
    b.add_peer(ka, Some(A_EP.parse().unwrap()));
    a.drain_outputs().for_each(drop);
    b.drain_outputs().for_each(drop);
    (a, b)
}

fn injects(f: &mut Fabric) -> Vec<(Endpoint, Vec<u8>)> {
    f.drain_outputs()
        .filter_map(|o| match o {
            Output::Inject { to, bytes, .. } => Some((to, bytes)),
            _ => None,
        })
        .collect()
}

fn split_outputs(f: &mut Fabric) -> (Vec<Command>, Vec<(Endpoint, Vec<u8>)>) {
    let mut c = vec![];
    let mut i = vec![];
    for o in f.drain_outputs() {
        match o {
            Output::Command(x) => c.push(x),
            Output::Inject { to, bytes, .. } => i.push((to, bytes)),
            Output::PunchRequest(_)
            | Output::Reregister
            | Output::Control { .. }
            | Output::Statement { .. } => {}
        }
    }
    (c, i)
}

fn installs(cmds: &[Command]) -> Vec<&InstallSession> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::InstallSession(s) => Some(s),
            _ => None,
        })
        .collect()
}

/// Runs a full handshake A → B; returns the sessions each installed.
fn handshake(a: &mut Fabric, b: &mut Fabric, now: u64) -> (InstallSession, InstallSession) {
    // TAI64N labels are whitened to ~16.8 ms of wall-clock time: a second handshake in the
    // same bucket would be (rightly) refused as a replay.
    std::thread::sleep(Duration::from_millis(18));
    a.initiate(now, 0);
    let init = injects(a);
    assert_eq!(init.len(), 1);
    assert_eq!(init[0].0, B_EP.parse::<Endpoint>().unwrap());
    b.on_punt(now, A_EP.parse().unwrap(), &init[0].1);
    let (bc, bi) = split_outputs(b);
    assert_eq!(bi.len(), 1, "responder answers");
    a.on_punt(now, B_EP.parse().unwrap(), &bi[0].1);
    let (ac, _) = split_outputs(a);
    let sb = installs(&bc)[0].clone();
    let sa = installs(&ac)[0].clone();
    (sa, sb)
}

#[test]
fn handshake_installs_matching_sessions() {
    let (mut a, mut b) = pair_with(cfg(), cfg());
    let (sa, sb) = handshake(&mut a, &mut b, 10);
    assert_eq!((sa.place, sb.place), (SessionPlace::Current, SessionPlace::Next));
    assert!(sa.initiator && !sb.initiator);
    assert_eq!(sa.remote_index, sb.local_index);
    assert_eq!(sb.remote_index, sa.local_index);
    assert_eq!(sa.keys.send, sb.keys.recv);
    assert_eq!(sa.keys.recv, sb.keys.send);
    assert_eq!(a.stats.handshakes_completed, 1);
    assert_eq!(b.stats.handshakes_completed, 1);
    assert!(a.peers()[0].current.is_some());
    assert!(b.peers()[0].next.is_some());
    // B's data plane confirms the session on A's first packet.
    b.on_event(11, Event::SessionConfirmed { peer: 0, local_index: sb.local_index });
    assert!(b.peers()[0].current.is_some() && b.peers()[0].next.is_none());
}

#[test]
fn the_cipher_is_negotiated_and_both_sides_install_the_same() {
    let only = |a: Aead| FabricConfig { ciphers: AeadSet::of(&[a]), ..cfg() };
    // Both accept both: the responder picks AES-256-GCM.
    let (mut a, mut b) = pair_with(cfg(), cfg());
    let (sa, sb) = handshake(&mut a, &mut b, 10);
    assert_eq!((sa.keys.aead, sb.keys.aead), (Aead::Aes256Gcm, Aead::Aes256Gcm));
    // Either side limited to ChaCha20-Poly1305: both use it.
    for (ca, cb) in [(only(Aead::ChaCha20Poly1305), cfg()), (cfg(), only(Aead::ChaCha20Poly1305))] {
        let (mut a, mut b) = pair_with(ca, cb);
        let (sa, sb) = handshake(&mut a, &mut b, 10);
        assert_eq!((sa.keys.aead, sb.keys.aead), (Aead::ChaCha20Poly1305, Aead::ChaCha20Poly1305));
    }
}

#[test]
fn no_cipher_in_common_means_no_session_and_a_counted_refusal() {
    let only = |a: Aead| FabricConfig { ciphers: AeadSet::of(&[a]), ..cfg() };
    let (mut a, mut b) = pair_with(only(Aead::ChaCha20Poly1305), only(Aead::Aes256Gcm));
    a.initiate(10, 0);
    let init = injects(&mut a);
    b.on_punt(10, A_EP.parse().unwrap(), &init[0].1);
    let (bc, bi) = split_outputs(&mut b);
    assert!(bi.is_empty() && installs(&bc).is_empty(), "no answer, no session");
    assert_eq!(b.stats.dropped_no_common_cipher, 1);
    assert_eq!(b.stats.handshakes_completed, 0);
    assert_eq!(b.peers()[0].cipher_refusal_logged_ms, Some(10), "said once");
    // Its retries are refused and counted too; the log line is not repeated within a minute.
    for (i, (now, logged)) in [(5_010, 10), (60_009, 10), (60_010, 60_010)].into_iter().enumerate()
    {
        std::thread::sleep(Duration::from_millis(18));
        a.initiate(now, 0);
        let init = injects(&mut a);
        b.on_punt(now, A_EP.parse().unwrap(), &init[0].1);
        assert_eq!(b.stats.dropped_no_common_cipher, 2 + i as u64);
        assert_eq!(b.peers()[0].cipher_refusal_logged_ms, Some(logged), "at {now} ms");
    }
}

#[test]
fn unknown_identity_gets_nothing_back() {
    let ic = Identity::from_seed([3; 32]);
    let mut b = Fabric::new(Identity::from_seed([2; 32]), cfg(), 1);
    b.add_peer(Identity::from_seed([1; 32]).public_key(), None);
    b.drain_outputs().for_each(drop);
    let mut c = Fabric::new(ic, cfg(), 1);
    c.add_peer(b.public_key(), Some(B_EP.parse().unwrap()));
    c.initiate(5, 0);
    let init = injects(&mut c);
    b.on_punt(5, "10.0.0.3:51820".parse().unwrap(), &init[0].1);
    assert!(b.drain_outputs().next().is_none(), "no reply, no command");
    assert_eq!(b.stats.dropped_unknown_peer, 1);
}

#[test]
fn replayed_initiation_is_refused() {
    let (mut a, mut b) = pair_with(cfg(), cfg());
    a.initiate(10, 0);
    let init = injects(&mut a);
    b.on_punt(10, A_EP.parse().unwrap(), &init[0].1);
    assert_eq!(injects(&mut b).len(), 1);
    b.on_punt(20, A_EP.parse().unwrap(), &init[0].1);
    assert!(injects(&mut b).is_empty());
    assert_eq!(b.stats.dropped_replayed_initiation, 1);
}

#[test]
fn psk_mismatch_means_no_session() {
    let mut ca = cfg();
    ca.psk = Psk::for_cluster("c", b"one");
    let mut cb = cfg();
    cb.psk = Psk::for_cluster("c", b"two");
    let (mut a, mut b) = pair_with(ca, cb);
    a.initiate(10, 0);
    let init = injects(&mut a);
    b.on_punt(10, A_EP.parse().unwrap(), &init[0].1);
    let (bc, bi) = split_outputs(&mut b);
    // IKpsk2: the responder cannot tell before answering; the initiator refuses the answer.
    if let Some((_, resp)) = bi.first() {
        a.on_punt(10, B_EP.parse().unwrap(), resp);
    }
    assert!(installs(&split_outputs(&mut a).0).is_empty(), "initiator installs nothing");
    assert!(a.stats.dropped_bad_handshake >= 1);
    drop(bc);
}

#[test]
fn rate_limit_per_source_ip() {
    let (mut a, mut b) = pair_with(cfg(), cfg());
    let mut answered = 0;
    for _ in 0..30 {
        // A later TAI64N label each time (they are whitened to ~16.8 ms), while the rate
        // limiter's clock stays within one second.
        std::thread::sleep(Duration::from_millis(18));
        a.initiate(100, 0);
        let init = injects(&mut a);
        b.on_punt(100, A_EP.parse().unwrap(), &init[0].1);
        answered += injects(&mut b).len();
    }
    assert_eq!(answered, 10);
    assert_eq!(b.stats.dropped_rate_limited, 20);
}

#[test]
fn cookie_under_load_then_mac2_passes() {
    let mut cb = cfg();
    cb.cookie_threshold = 1;
    let (mut a, mut b) = pair_with(cfg(), cb);
    // First initiation in the window is processed normally.
    let (_sa, _sb) = handshake(&mut a, &mut b, 10);
    // Second one: B is "under load", answers with a cookie reply.
    a.initiate(20, 0);
    let init = injects(&mut a);
    b.on_punt(20, A_EP.parse().unwrap(), &init[0].1);
    let reply = injects(&mut b);
    assert_eq!(reply.len(), 1);
    assert_eq!(reply[0].1.len(), cookie_reply::LEN);
    assert_eq!(b.stats.cookie_replies_sent, 1);
    a.on_punt(20, B_EP.parse().unwrap(), &reply[0].1);
    assert_eq!(a.stats.cookies_received, 1);
    // The retry carries mac2 and is accepted though B is still under load.
    let retry_at = 20 + 5_000 + 400;
    // TAI64N labels are whitened to ~16.8 ms: a retry must carry a later one.
    std::thread::sleep(Duration::from_millis(20));
    a.tick(retry_at, |_| Activity::default());
    let init = injects(&mut a);
    assert_eq!(init.len(), 1, "retried after the handshake timeout");
    b.on_punt(retry_at - 4_000, A_EP.parse().unwrap(), &init[0].1);
    let resp = injects(&mut b);
    assert_eq!(resp.len(), 1);
    assert_eq!(resp[0].1.len(), handshake_resp::LEN, "a response, not another cookie");
}

#[test]
fn retries_then_gives_up() {
    let mut c = cfg();
    c.timers = Timers {
        rekey_timeout: Duration::from_secs(5),
        rekey_attempt: Duration::from_secs(20),
        ..Timers::default()
    };
    let (mut a, _b) = pair_with(c, cfg());
    a.initiate(0, 0);
    assert_eq!(injects(&mut a).len(), 1);
    let mut sent = 1;
    for now in (100..40_000).step_by(100) {
        a.tick(now, |_| Activity::default());
        sent += injects(&mut a).len();
    }
    assert!((4..=5).contains(&sent), "{sent} attempts in 20 s at 5 s intervals");
    assert!(!a.peers()[0].handshaking());
}

#[test]
fn expiry_rekey_and_keepalive_timers() {
    let t = Timers {
        rekey_after: Duration::from_secs(120),
        reject_after: Duration::from_secs(180),
        keepalive: Duration::from_secs(10),
        ..Timers::default()
    };
    let mut c = cfg();
    c.timers = t;
    let (mut a, mut b) = pair_with(c, cfg());
    handshake(&mut a, &mut b, 1000);
    // Data received at 2000, nothing sent: keepalive at 12000, once.
    let act =
        Activity { last_rx_ms: 2000, last_data_rx_ms: 2000, last_tx_ms: 1000, last_data_tx_ms: 0 };
    a.tick(11_000, |_| act);
    assert!(a.drain_outputs().next().is_none());
    a.tick(12_000, |_| act);
    let (cmds, _) = split_outputs(&mut a);
    assert!(matches!(cmds[..], [Command::SendKeepalive { peer: 0 }]));
    a.tick(12_100, |_| act);
    assert!(a.drain_outputs().next().is_none(), "once per received burst");
    // Active traffic at 121 s: the initiator rekeys.
    let busy = Activity {
        last_rx_ms: 120_900,
        last_data_rx_ms: 120_900,
        last_tx_ms: 120_900,
        last_data_tx_ms: 120_900,
    };
    a.tick(121_000, |_| busy);
    assert_eq!(injects(&mut a).len(), 1, "rekey initiation");
    // An idle session just expires at 180 s.
    let (mut a, mut b) = pair_with(cfg(), cfg());
    let (sa, _) = handshake(&mut a, &mut b, 1000);
    a.tick(181_000, |_| Activity::default());
    let (cmds, inj) = split_outputs(&mut a);
    assert!(inj.is_empty(), "idle: no rekey");
    assert!(cmds.iter().any(
        |c| matches!(c, Command::RemoveSession { local_index } if *local_index == sa.local_index)
    ));
    assert!(a.peers()[0].current.is_none());
}

#[test]
fn dead_peer_triggers_a_new_handshake() {
    let (mut a, mut b) = pair_with(cfg(), cfg());
    handshake(&mut a, &mut b, 1000);
    // We send data from 2 s on, hear nothing.
    let act = |now: u64| Activity {
        last_rx_ms: 1000,
        last_tx_ms: now,
        last_data_tx_ms: now,
        last_data_rx_ms: 0,
    };
    a.tick(10_000, |_| act(10_000));
    assert!(injects(&mut a).is_empty());
    a.tick(16_100, |_| act(16_000));
    assert_eq!(injects(&mut a).len(), 1);
}

#[test]
fn replay_installs_current_before_previous() {
    let (mut a, mut b) = pair_with(cfg(), cfg());
    handshake(&mut a, &mut b, 1000);
    handshake(&mut a, &mut b, 2000);
    a.replay(3000);
    let (cmds, _) = split_outputs(&mut a);
    assert!(matches!(cmds[0], Command::ResetState));
    assert!(matches!(cmds[1], Command::Configure(_)));
    let inst = installs(&cmds);
    assert_eq!(inst.len(), 2);
    assert_eq!((inst[0].place, inst[1].place), (SessionPlace::Current, SessionPlace::Previous));
    assert_eq!(inst[0].age_ms, 1000);
}

#[test]
fn garbage_punts_are_counted_not_fatal() {
    let (_a, mut b) = pair_with(cfg(), cfg());
    let src: Endpoint = A_EP.parse().unwrap();
    for bytes in [&[][..], &[1, 0, 0, 0][..], &[2, 0, 0, 0, 1][..], &[9; 148][..]] {
        b.on_punt(1, src, bytes);
    }
    let mut junk = [0u8; handshake_init::LEN];
    junk[0] = 1;
    macs::seal(&mut junk, &mac::mac1_key(&b.public_key()), None);
    b.on_punt(1, src, &junk);
    assert!(injects(&mut b).is_empty());
    assert!(b.stats.dropped_bad_handshake >= 4);
}

fn member(key: PublicKey, eps: &[&str], punch: bool) -> MemberUpdate {
    MemberUpdate {
        key,
        present: true,
        endpoints: eps.iter().map(|e| e.parse().unwrap()).collect(),
        punch,
        relay: Endpoint::Relay { via: "192.0.2.100:51820".parse().unwrap(), tag: [7; 8] },
    }
}

#[test]
fn a_full_peer_table_counts_the_members_it_leaves_out() {
    let mut f = Fabric::new(Identity::from_seed([1; 32]), cfg(), 0);
    f.set_max_peers(1);
    let (k2, k3) =
        (Identity::from_seed([2; 32]).public_key(), Identity::from_seed([3; 32]).public_key());
    f.on_member(10, &member(k2, &["10.0.0.2:51820"], false));
    f.on_member(10, &member(k3, &["10.0.0.3:51820"], false));
    f.on_member(11, &member(k3, &["10.0.0.3:51820"], false));
    assert_eq!(f.peers().len(), 1);
    assert_eq!(f.stats.peers_refused, 2);
    // A member leaving is not one refused.
    f.on_member(12, &MemberUpdate { present: false, ..member(k3, &[], false) });
    assert_eq!(f.stats.peers_refused, 2);
}

#[test]
fn members_are_punched_on_every_candidate_then_relayed() {
    let ia = Identity::from_seed([1; 32]);
    let kb = Identity::from_seed([2; 32]).public_key();
    let mut a = Fabric::new(ia, cfg(), 1);
    a.on_member(1000, &member(kb, &["203.0.113.2:40000", "192.168.1.2:51820"], true));
    let (cmds, sent) = split_outputs(&mut a);
    assert!(matches!(cmds[0], Command::SetPeer { peer: 0, endpoint: None }));
    let dests: Vec<Endpoint> = sent.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        dests,
        vec!["203.0.113.2:40000".parse().unwrap(), "192.168.1.2:51820".parse().unwrap()]
    );
    assert_eq!(sent[0].1, sent[1].1, "one initiation, sent to every candidate at once");
    assert!(a.peers()[0].dynamic && a.peers()[0].handshaking());
    // Nothing answered for relay_after (3 s): the next attempt includes the relay.
    a.tick(4_100, |_| Activity::default());
    let sent = injects(&mut a);
    assert!(sent.iter().any(|(t, _)| t.is_relay()), "{sent:?}");
    assert!(sent.iter().any(|(t, _)| !t.is_relay()), "direct candidates stay in the race");
    // Only once per attempt round.
    a.tick(4_200, |_| Activity::default());
    assert!(injects(&mut a).is_empty());
}

/// Each attempt's datagrams as (destination, ttl).
fn sends(f: &mut Fabric) -> Vec<(Endpoint, u8)> {
    f.drain_outputs()
        .filter_map(|o| match o {
            Output::Inject { to, ttl, .. } => Some((to, ttl)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_punch_opens_the_local_nat_before_sending_at_full_ttl() {
    let ia = Identity::from_seed([1; 32]);
    let kb = Identity::from_seed([2; 32]).public_key();
    let (far, lan) = ("203.0.113.2:40000".parse().unwrap(), "192.168.1.2:51820".parse().unwrap());
    let mut a = Fabric::new(ia, cfg(), 1);
    a.on_member(1000, &member(kb, &["203.0.113.2:40000", "192.168.1.2:51820"], true));
    // First the openers, at TTL 2, to every candidate.
    assert_eq!(sends(&mut a), vec![(far, 2), (lan, 2)]);
    assert_eq!(a.stats.punch_openers_sent, 2);
    // Nothing at full TTL before the far side has had time to open its own mapping.
    a.tick(1000 + PUNCH_OPEN_MS - 100, |_| Activity::default());
    assert_eq!(sends(&mut a), vec![]);
    a.tick(1000 + PUNCH_OPEN_MS, |_| Activity::default());
    assert_eq!(sends(&mut a), vec![(far, 0), (lan, 0)]);
    a.tick(1000 + PUNCH_OPEN_MS + 100, |_| Activity::default());
    assert_eq!(sends(&mut a), vec![], "once per attempt");
    // The retry (rekey timeout, 5 s) opens again first; the relay, once tried, goes at once.
    a.tick(6_400, |_| Activity::default());
    let retry = sends(&mut a);
    assert!(retry.contains(&(far, 2)) && retry.contains(&(lan, 2)), "{retry:?}");
    assert!(retry.iter().any(|(t, ttl)| t.is_relay() && *ttl == 0), "{retry:?}");
    assert!(!retry.contains(&(far, 0)), "{retry:?}");
    // With openers off, every candidate gets the initiation at once (as before).
    let mut c = Fabric::new(
        Identity::from_seed([3; 32]),
        FabricConfig {
            rendezvous: RendezvousTimers { opener_ttl: 0, ..Default::default() },
            ..cfg()
        },
        1,
    );
    c.on_member(1000, &member(kb, &["203.0.113.2:40000"], true));
    assert_eq!(sends(&mut c), vec![(far, 0)]);
}

#[test]
fn when_both_punch_an_attempt_not_yet_sent_in_full_is_given_up_for_the_others() {
    // Both are introduced at once and send openers. A's full initiation reaches B before
    // B's own full send: whichever key is higher, B answers and gives its own up, so one
    // handshake makes the session (a second would replace it a moment later).
    for (sa, sb) in [([1; 32], [2; 32]), ([2; 32], [1; 32])] {
        let (ia, ib) = (Identity::from_seed(sa), Identity::from_seed(sb));
        let (ka, kb) = (ia.public_key(), ib.public_key());
        let mut a = Fabric::new(ia, cfg(), 1);
        let mut b = Fabric::new(ib, cfg(), 1);
        a.on_member(0, &member(kb, &["203.0.113.2:40000"], true));
        b.on_member(0, &member(ka, &["203.0.113.1:40000"], true));
        let _ = (injects(&mut a), injects(&mut b));
        a.tick(PUNCH_OPEN_MS, |_| Activity::default());
        let full = injects(&mut a);
        assert_eq!(full.len(), 1, "A's full send");
        b.on_punt(PUNCH_OPEN_MS + 10, "203.0.113.1:40000".parse().unwrap(), &full[0].1);
        let answer = injects(&mut b);
        assert_eq!(answer.len(), 1, "B answers");
        b.tick(PUNCH_OPEN_MS + 50, |_| Activity::default());
        assert_eq!(injects(&mut b), vec![], "and owes nothing of its own");
        a.on_punt(PUNCH_OPEN_MS + 20, "203.0.113.2:40000".parse().unwrap(), &answer[0].1);
        assert_eq!(a.stats.handshakes_completed + b.stats.handshakes_completed, 2, "one handshake");
    }
}

#[test]
fn an_attempt_answered_before_its_full_send_owes_nothing() {
    // On a LAN the opener arrives and is answered at once (`direct_pair`).
    let (mut a, b) = direct_pair();
    a.tick(PUNCH_OPEN_MS + 1, |_| Activity::default());
    let lan: Endpoint = "192.168.1.2:51820".parse().unwrap();
    assert!(!sends(&mut a).contains(&(lan, 0)), "no full-TTL resend of an answered attempt");
    assert_eq!(b.stats.dropped_replayed_initiation, 0);
}

/// Activity of a peer that data goes to (last at `now`) and nothing came from since 2 ms.
fn sending(now: u64) -> Activity {
    Activity { last_rx_ms: 2, last_data_rx_ms: 2, last_tx_ms: now, last_data_tx_ms: now }
}

/// A and B, Nucleus-introduced, with a session on the direct path B's LAN address.
fn direct_pair() -> (Fabric, Fabric) {
    let (ia, ib) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
    let (ka, kb) = (ia.public_key(), ib.public_key());
    let mut a = Fabric::new(ia, cfg(), 1);
    let mut b = Fabric::new(ib, cfg(), 1);
    a.on_member(0, &member(kb, &["192.168.1.2:51820"], true));
    let opener = injects(&mut a);
    b.on_member(0, &member(ka, &["192.168.1.1:51820"], false));
    b.drain_outputs().for_each(drop);
    b.on_punt(1, "192.168.1.1:51820".parse().unwrap(), &opener[0].1);
    let resp = injects(&mut b);
    a.on_punt(2, "192.168.1.2:51820".parse().unwrap(), &resp[0].1);
    a.drain_outputs().for_each(drop);
    assert!(a.peers()[0].current.is_some() && a.peers()[0].path() == "direct");
    (a, b)
}

#[test]
fn a_quiet_direct_path_has_the_node_register_again_at_most_every_ten_seconds() {
    let (mut a, _b) = direct_pair();
    let reregisters =
        |a: &mut Fabric| a.drain_outputs().filter(|o| matches!(o, Output::Reregister)).count();
    a.tick(4_000, |_| sending(4_000));
    assert_eq!(reregisters(&mut a), 0, "not yet quiet for 5 s");
    a.tick(5_100, |_| sending(5_100));
    assert_eq!(reregisters(&mut a), 1);
    a.tick(9_000, |_| sending(9_000));
    assert_eq!(reregisters(&mut a), 0, "at most every 10 s");
    a.tick(15_200, |_| sending(15_200));
    assert_eq!(reregisters(&mut a), 1);
    // Hearing back, or not sending: nothing.
    a.tick(40_000, |_| Activity { last_rx_ms: 39_000, ..sending(39_500) });
    a.tick(60_000, |_| sending(1_000));
    assert_eq!(reregisters(&mut a), 0);
}

#[test]
fn a_dead_direct_path_moves_to_the_relay_at_once_and_keeps_its_session() {
    let (mut a, _b) = direct_pair();
    let session = a.peers()[0].current.as_ref().map(|s| s.local_index);
    let relay = a.peers()[0].relay.unwrap();
    a.tick(14_000, |_| sending(14_000));
    assert_eq!(a.peers()[0].path(), "direct", "not dead yet");
    a.drain_outputs().for_each(drop);
    a.tick(15_100, |_| sending(15_100));
    assert_eq!(a.peers()[0].endpoint, Some(relay));
    assert_eq!(a.peers()[0].current.as_ref().map(|s| s.local_index), session, "same session");
    let (cmds, sent) = split_outputs(&mut a);
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::SetPeer { peer: 0, endpoint: Some(e) } if *e == relay))
    );
    assert!(sent.iter().any(|(to, _)| *to == relay), "a handshake through the relay");
    assert!(sent.iter().any(|(to, _)| !to.is_relay()), "and the direct candidates again");
}

#[test]
fn a_punch_for_a_peer_already_direct_probes_its_new_address() {
    let (mut a, _b) = direct_pair();
    let kb = Identity::from_seed([2; 32]).public_key();
    // The Nucleus saw B at a new address and says so with a punch.
    a.on_member(10_000, &member(kb, &["203.0.113.9:40000"], true));
    let moved: Endpoint = "203.0.113.9:40000".parse().unwrap();
    assert_eq!(sends(&mut a), vec![(moved, 2)], "an opener to the new address");
    a.tick(10_000 + PUNCH_OPEN_MS, |_| Activity::default());
    assert!(sends(&mut a).contains(&(moved, 0)));
    // The same list again (a second Nucleus) within the debounce: not restarted.
    a.on_member(10_600, &member(kb, &["203.0.113.9:40000"], true));
    assert_eq!(sends(&mut a), vec![]);
    // Without a punch, a list for a direct peer changes nothing.
    a.on_member(20_000, &member(kb, &["203.0.113.10:40000"], false));
    assert_eq!(sends(&mut a), vec![]);
    // A punch naming the address in use (the peer moved to another uplink and we roamed
    // with it before its new registration): nothing to find, no handshake.
    let in_use = a.peers()[0].endpoint.expect("direct").addr().to_string();
    a.on_member(30_000, &member(kb, &[&in_use, "203.0.113.11:40000"], true));
    assert_eq!(sends(&mut a), vec![]);
}

#[test]
fn a_relay_that_moves_to_tcp_takes_its_relayed_peers_along_without_a_handshake() {
    let ia = Identity::from_seed([1; 32]);
    let (kb, kc) =
        (Identity::from_seed([2; 32]).public_key(), Identity::from_seed([3; 32]).public_key());
    let mut a = Fabric::new(ia, cfg(), 1);
    a.on_member(0, &member(kb, &["203.0.113.2:40000"], true));
    a.on_member(0, &member(kc, &["203.0.113.3:40000"], true));
    let (udp, bridge): (SocketAddr, SocketAddr) =
        ("192.0.2.100:51820".parse().unwrap(), "127.0.0.1:40000".parse().unwrap());
    let tag = [9; 8];
    // B is relayed through the Nucleus; C is direct.
    a.set_endpoint(0, Endpoint::Relay { via: udp, tag });
    a.set_endpoint(1, "203.0.113.3:40000".parse().unwrap());
    a.drain_outputs().for_each(drop);
    let initiated = a.stats.handshakes_initiated;
    a.relay_moved(udp, bridge);
    let (cmds, sent) = split_outputs(&mut a);
    let moved = Endpoint::Relay { via: bridge, tag };
    assert_eq!(a.peers()[0].endpoint, Some(moved));
    assert!(matches!(cmds[..], [Command::SetPeer { peer: 0, endpoint: Some(e) }] if e == moved));
    assert_eq!(a.peers()[1].endpoint, Some("203.0.113.3:40000".parse().unwrap()), "C stays");
    assert!(a.peers()[1].relay.is_some_and(|r| r.addr() == bridge), "its fallback moves too");
    assert!(sent.is_empty() && a.stats.handshakes_initiated == initiated, "no new handshake");
}

#[test]
fn a_handshake_through_the_relay_puts_the_peer_on_the_relay_path() {
    let (ia, ib) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
    let (ka, kb) = (ia.public_key(), ib.public_key());
    let mut a = Fabric::new(ia, cfg(), 1);
    let mut b = Fabric::new(ib, cfg(), 1);
    a.on_member(0, &member(kb, &["203.0.113.2:40000"], true));
    b.on_member(0, &member(ka, &["203.0.113.1:40000"], true));
    a.drain_outputs().for_each(drop);
    b.drain_outputs().for_each(drop);
    // Direct packets never arrive (symmetric NAT); after 3 s A also tries the relay.
    a.tick(3_100, |_| Activity::default());
    let via_relay: Vec<_> = injects(&mut a).into_iter().filter(|(t, _)| t.is_relay()).collect();
    assert_eq!(via_relay.len(), 1);
    // B receives it relayed (its data plane reports the relay as the source).
    let relay_src = Endpoint::Relay { via: "192.0.2.100:51820".parse().unwrap(), tag: [9; 8] };
    b.on_punt(3_100, relay_src, &via_relay[0].1);
    let (cmds, resp) = split_outputs(&mut b);
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::SetPeer { endpoint: Some(e), .. } if *e == relay_src))
    );
    assert_eq!(resp[0].0, relay_src, "answered the way it came");
    assert_eq!(b.peers()[0].path(), "relay");
    a.on_punt(
        3_101,
        Endpoint::Relay { via: "192.0.2.100:51820".parse().unwrap(), tag: [7; 8] },
        &resp[0].1,
    );
    assert_eq!(a.peers()[0].path(), "relay");
    assert!(a.peers()[0].current.is_some());
    // While relayed, A asks the Nuclei for a punch every direct_retry (30 s).
    a.drain_outputs().for_each(drop);
    a.tick(40_000, |_| Activity::default());
    assert!(a.drain_outputs().any(|o| matches!(o, Output::PunchRequest(k) if k == kb)));
}

#[test]
fn departed_members_keep_working_sessions() {
    let (mut a, mut b) = pair_with(cfg(), cfg());
    handshake(&mut a, &mut b, 10);
    let kb = a.peers()[0].public_key;
    let mut gone = member(kb, &[], false);
    gone.present = false;
    a.on_member(20, &gone);
    assert!(a.peers()[0].current.is_some(), "losing the Nucleus never breaks a session");
    assert!(!a.drain_outputs().any(|o| matches!(
        o,
        Output::Command(Command::RemovePeer { .. })
            | Output::Command(Command::RemoveSession { .. })
    )));
}

#[test]
fn simultaneous_initiations_end_with_one_working_pair_of_sessions() {
    let (mut a, mut b) = pair_with(cfg(), cfg());
    a.initiate(10, 0);
    b.initiate(10, 0);
    let ia = injects(&mut a);
    let ib = injects(&mut b);
    // Each gets the other's initiation and answers it.
    a.on_punt(11, B_EP.parse().unwrap(), &ib[0].1);
    b.on_punt(11, A_EP.parse().unwrap(), &ia[0].1);
    let (ca, ra) = split_outputs(&mut a);
    let (cb, rb) = split_outputs(&mut b);
    // Each gets the other's answer.
    a.on_punt(12, B_EP.parse().unwrap(), &rb[0].1);
    b.on_punt(12, A_EP.parse().unwrap(), &ra[0].1);
    let (ca2, _) = split_outputs(&mut a);
    let (cb2, _) = split_outputs(&mut b);
    let current =
        |c: &[Command]| installs(c).iter().filter(|s| s.place == SessionPlace::Current).count();
    // Exactly one side completed as initiator: it has a current session, the other a next
    // one that the first packet confirms. Neither is left without a way forward.
    assert_eq!(current(&ca) + current(&ca2) + current(&cb) + current(&cb2), 1);
    let a_cur = a.peers()[0].current.is_some();
    let b_cur = b.peers()[0].current.is_some();
    assert!(a_cur ^ b_cur, "one initiator session: a {a_cur} b {b_cur}");
    assert!(!a.peers()[0].handshaking() && !b.peers()[0].handshaking(), "nothing left to retry");
}

/// A certificate from `authority` for identity `seed`, valid for unix time 100-200.
fn cert_for(
    authority: &Identity,
    seed: u8,
    cluster: &str,
    serial: u64,
) -> omni_proto::membership::cert::SignedCertificate {
    use omni_proto::membership::cert::{Certificate, SignedCertificate};
    let c = Certificate {
        serial,
        cluster: cluster.into(),
        node: Identity::from_seed([seed; 32]).public_key(),
        name: format!("node-{seed}"),
        groups: vec!["robots".into()],
        not_before: 100,
        not_after: 200,
    };
    SignedCertificate::parse(&c.sign(authority).unwrap()).unwrap()
}

/// Admission under `authority` for identity `seed`, with certificate serial `seed`.
fn certified(authority: &Identity, seed: u8, cluster: &str) -> Admission {
    Admission::new(authority.public_key(), cert_for(authority, seed, cluster, seed as u64))
}

fn certified_pair(adm_a: Option<Admission>, adm_b: Option<Admission>) -> (Fabric, Fabric) {
    let (mut a, mut b) = pair_with(
        FabricConfig { admission: adm_a, ..cfg() },
        FabricConfig { admission: adm_b, ..cfg() },
    );
    a.set_wall_clock(150);
    b.set_wall_clock(150);
    (a, b)
}

/// Runs A's initiation through B and B's answer (if any) through A; returns whether each
/// side installed a session.
fn try_handshake(a: &mut Fabric, b: &mut Fabric, now: u64) -> (bool, bool) {
    std::thread::sleep(Duration::from_millis(18));
    a.initiate(now, 0);
    let init = injects(a);
    b.on_punt(now, A_EP.parse().unwrap(), &init[0].1);
    let (bc, bi) = split_outputs(b);
    if let Some((_, resp)) = bi.first() {
        a.on_punt(now, B_EP.parse().unwrap(), resp);
    }
    let (ac, _) = split_outputs(a);
    (!installs(&ac).is_empty(), !installs(&bc).is_empty())
}

#[test]
fn certified_peers_complete_handshakes_and_learn_each_others_certificates() {
    let auth = Identity::from_seed([9; 32]);
    let (mut a, mut b) =
        certified_pair(Some(certified(&auth, 1, "fleet")), Some(certified(&auth, 2, "fleet")));
    assert_eq!(try_handshake(&mut a, &mut b, 10), (true, true));
    assert_eq!(a.peers()[0].certificate.as_ref().unwrap().name, "node-2");
    assert_eq!(b.peers()[0].certificate.as_ref().unwrap().groups, ["robots"]);
    assert_eq!((a.stats.dropped_uncertified, b.stats.dropped_uncertified), (0, 0));
}

#[test]
fn a_responder_refuses_an_initiator_without_a_valid_certificate() {
    let auth = Identity::from_seed([9; 32]);
    let other = Identity::from_seed([8; 32]);
    for (why, adm_a) in [
        ("no certificate", None),
        ("another authority", Some(certified(&other, 1, "fleet"))),
        ("another cluster", Some(certified(&auth, 1, "yard"))),
        ("someone else's certificate", Some(certified(&auth, 3, "fleet"))),
    ] {
        let (mut a, mut b) = certified_pair(adm_a, Some(certified(&auth, 2, "fleet")));
        let (_, b_installed) = try_handshake(&mut a, &mut b, 10);
        assert!(!b_installed, "{why}");
        assert_eq!(b.stats.dropped_uncertified, 1, "{why}");
        assert!(b.peers()[0].certificate.is_none());
    }
    // Out of the validity window at the responder's clock.
    let (mut a, mut b) =
        certified_pair(Some(certified(&auth, 1, "fleet")), Some(certified(&auth, 2, "fleet")));
    b.set_wall_clock(200);
    assert_eq!(try_handshake(&mut a, &mut b, 10), (false, false));
    assert_eq!(b.stats.dropped_uncertified, 1);
}

#[test]
fn an_initiator_refuses_a_responder_without_a_valid_certificate() {
    let auth = Identity::from_seed([9; 32]);
    // B has no authority (a shared-secret node): it answers, without a certificate.
    let (mut a, mut b) = certified_pair(Some(certified(&auth, 1, "fleet")), None);
    assert_eq!(try_handshake(&mut a, &mut b, 10), (false, true));
    assert_eq!(a.stats.dropped_uncertified, 1);
    assert!(a.peers()[0].current.is_none() && !a.peers()[0].handshaking());
    // Revoked by serial at A: refused even with an otherwise valid certificate.
    let (mut a, mut b) =
        certified_pair(Some(certified(&auth, 1, "fleet")), Some(certified(&auth, 2, "fleet")));
    a.admission
        .as_mut()
        .unwrap()
        .revoked
        .push(omni_proto::membership::revocation::Target::Serial(2));
    assert_eq!(try_handshake(&mut a, &mut b, 10), (false, true));
    assert_eq!(a.stats.dropped_uncertified, 1);
}

#[test]
fn a_revoked_key_loses_its_sessions_and_cannot_handshake_again() {
    use omni_proto::membership::revocation::Target;
    let auth = Identity::from_seed([9; 32]);
    let (mut a, mut b) =
        certified_pair(Some(certified(&auth, 1, "fleet")), Some(certified(&auth, 2, "fleet")));
    assert_eq!(try_handshake(&mut a, &mut b, 10), (true, true));
    let ended = b.revoke(Target::Key(a.public_key()));
    assert_eq!(ended, vec![a.public_key()]);
    let (cmds, _) = split_outputs(&mut b);
    assert!(cmds.iter().any(|c| matches!(c, Command::RevokePeer { peer: 0 })), "{cmds:?}");
    let p = &b.peers()[0];
    assert!(p.revoked && p.current.is_none() && p.next.is_none() && p.certificate.is_none());
    assert!(b.revoke(Target::Key(a.public_key())).is_empty(), "once");
    // A tries again, even with a new certificate: refused; B never starts one towards A.
    a.set_certificate(cert_for(&auth, 1, "fleet", 99));
    assert_eq!(try_handshake(&mut a, &mut b, 20), (false, false));
    assert_eq!(b.stats.dropped_uncertified, 1);
    b.request_handshake(30, 0);
    assert!(injects(&mut b).is_empty());
    // A replay of B's state to a restarted data plane leaves A out.
    b.replay(40);
    let (cmds, _) = split_outputs(&mut b);
    assert!(!cmds.iter().any(|c| matches!(c, Command::SetPeer { peer: 0, .. })));
    // Without an authority, nothing is revoked.
    let (_, mut c) = pair_with(cfg(), cfg());
    assert!(c.revoke(Target::Key(a.public_key())).is_empty());
}

#[test]
fn a_revoked_certificate_ends_the_sessions_and_only_another_certificate_gets_back_in() {
    use omni_proto::membership::revocation::Target;
    let auth = Identity::from_seed([9; 32]);
    let (mut a, mut b) =
        certified_pair(Some(certified(&auth, 1, "fleet")), Some(certified(&auth, 2, "fleet")));
    assert_eq!(try_handshake(&mut a, &mut b, 10), (true, true));
    assert_eq!(b.revoke(Target::Serial(1)), vec![a.public_key()]);
    split_outputs(&mut b);
    assert!(!b.peers()[0].revoked, "the key itself is not revoked");
    assert_eq!(try_handshake(&mut a, &mut b, 20), (false, false), "the same certificate");
    // A new certificate for A (serial 77): admitted, and B's data plane, which forgot A,
    // hears of it again before the session is installed.
    a.set_certificate(cert_for(&auth, 1, "fleet", 77));
    std::thread::sleep(Duration::from_millis(18));
    a.initiate(30, 0);
    let init = injects(&mut a);
    b.on_punt(30, A_EP.parse().unwrap(), &init[0].1);
    let (cmds, _) = split_outputs(&mut b);
    let set = cmds.iter().position(|c| matches!(c, Command::SetPeer { peer: 0, .. }));
    let install = cmds.iter().position(|c| matches!(c, Command::InstallSession(_)));
    assert!(set.is_some() && set < install, "{cmds:?}");
    assert_eq!(b.peers()[0].certificate.as_ref().unwrap().serial, 77);
}

#[test]
fn a_certificate_is_recorded_only_when_its_session_is_installed() {
    let auth = Identity::from_seed([9; 32]);
    // B accepts only ChaCha20 and A offers only AES: A's certificate passes, the
    // handshake still fails, and B records nothing of A.
    let only = |x: Aead| AeadSet::of(&[x]);
    let (mut a, mut b) = pair_with(
        FabricConfig {
            admission: Some(certified(&auth, 1, "fleet")),
            ciphers: only(Aead::Aes256Gcm),
            ..cfg()
        },
        FabricConfig {
            admission: Some(certified(&auth, 2, "fleet")),
            ciphers: only(Aead::ChaCha20Poly1305),
            ..cfg()
        },
    );
    a.set_wall_clock(150);
    b.set_wall_clock(150);
    assert_eq!(try_handshake(&mut a, &mut b, 10), (false, false));
    assert!(b.peers()[0].certificate.is_none());
}

fn signed_policy(authority: &Identity, version: u64, rules: &[(&str, &str)]) -> SignedPolicy {
    use omni_proto::membership::policy::{Policy, Rule};
    let p = Policy {
        cluster: "fleet".into(),
        version,
        issued: 100,
        rules: rules
            .iter()
            .map(|(a, b)| Rule {
                between: [a.to_string(), b.to_string()],
                ethertypes: vec![],
                vlans: vec![],
            })
            .collect(),
    };
    SignedPolicy::parse(&p.sign(authority).unwrap()).unwrap()
}

/// A `SetAccess` command: peer, all, pairs.
type AccessCmd = (u16, bool, Vec<(u16, u16)>);

fn access_cmds(cmds: &[Command]) -> Vec<AccessCmd> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::SetAccess { peer, all, pairs, .. } => Some((*peer, *all, pairs.clone())),
            _ => None,
        })
        .collect()
}

use omni_proto::membership::policy::SignedPolicy;

#[test]
fn a_policy_sets_each_admitted_peers_access_before_its_sessions() {
    let auth = Identity::from_seed([9; 32]);
    let (mut a, mut b) =
        certified_pair(Some(certified(&auth, 1, "fleet")), Some(certified(&auth, 2, "fleet")));
    // Both are "robots": robots may not talk to robots under this policy.
    assert!(a.set_policy(signed_policy(&auth, 1, &[("robots", "ops")])));
    assert!(split_outputs(&mut a).0.is_empty(), "no admitted peer yet: nothing to tell");
    std::thread::sleep(Duration::from_millis(18));
    a.initiate(10, 0);
    let init = injects(&mut a);
    b.on_punt(10, A_EP.parse().unwrap(), &init[0].1);
    let (_, bi) = split_outputs(&mut b);
    a.on_punt(10, B_EP.parse().unwrap(), &bi[0].1);
    let (cmds, _) = split_outputs(&mut a);
    let access_at = cmds.iter().position(|c| matches!(c, Command::SetAccess { .. })).unwrap();
    let install_at = cmds.iter().position(|c| matches!(c, Command::InstallSession(_))).unwrap();
    assert!(access_at < install_at, "access before the session: {cmds:?}");
    assert_eq!(access_cmds(&cmds), [(0, false, vec![])], "robots-robots: nothing");
    assert_eq!(a.access(0), Some(vec![]));
    // A newer policy lets them talk: every admitted peer is told at once.
    assert!(a.set_policy(signed_policy(&auth, 2, &[("robots", "robots")])));
    let (cmds, _) = split_outputs(&mut a);
    assert_eq!(access_cmds(&cmds), [(0, true, vec![])]);
    // A replay of the data plane carries the access after SetPeer, before the sessions.
    a.replay(11);
    let (cmds, _) = split_outputs(&mut a);
    let set_peer = cmds.iter().position(|c| matches!(c, Command::SetPeer { .. })).unwrap();
    let access = cmds.iter().position(|c| matches!(c, Command::SetAccess { .. })).unwrap();
    let install = cmds.iter().position(|c| matches!(c, Command::InstallSession(_))).unwrap();
    assert!(set_peer < access && access < install, "{cmds:?}");
    // Without an authority there is no policy.
    let (mut plain, _) = pair_with(cfg(), cfg());
    assert!(!plain.set_policy(signed_policy(&auth, 3, &[])));
    assert_eq!(plain.access(0), None);
}

#[test]
fn statements_spread_to_peers_with_sessions_and_come_back_as_outputs() {
    let auth = Identity::from_seed([9; 32]);
    let (mut a, mut b) =
        certified_pair(Some(certified(&auth, 1, "fleet")), Some(certified(&auth, 2, "fleet")));
    assert_eq!(a.spread(b"OMR1 x", None), 0, "no session yet");
    assert_eq!(try_handshake(&mut a, &mut b, 10), (true, true));
    assert_eq!(a.spread(b"OMR1 x", None), 1);
    let sent: Vec<_> = a
        .drain_outputs()
        .filter_map(|o| match o {
            Output::Control { peer, bytes } => Some((peer, bytes)),
            _ => None,
        })
        .collect();
    assert_eq!(sent, [(0, b"OMR1 x".to_vec())]);
    // Not back to where it came from.
    let b_key = Identity::from_seed([2; 32]).public_key();
    assert_eq!(a.spread(b"OMR1 x", Some(&b_key)), 0);
    // An opened control message punted by B's data plane, on the session A installed.
    let idx = a.peers()[0].current.as_ref().unwrap().remote_index;
    let mut msg = vec![4, 0, 0xff, 0xff];
    msg.extend_from_slice(&idx.to_le_bytes());
    msg.extend_from_slice(&[0; 8]);
    msg.extend_from_slice(b"OMP1 policy");
    b.on_punt(12, A_EP.parse().unwrap(), &msg);
    let got: Vec<_> = b
        .drain_outputs()
        .filter_map(|o| match o {
            Output::Statement { from, bytes } => Some((from, bytes)),
            _ => None,
        })
        .collect();
    assert_eq!(got, [(Identity::from_seed([1; 32]).public_key(), b"OMP1 policy".to_vec())]);
    // Unmarked, or on an unknown index: nothing.
    msg[2] = 0;
    b.on_punt(12, A_EP.parse().unwrap(), &msg);
    msg[2] = 0xff;
    msg[4] ^= 0xff;
    b.on_punt(12, A_EP.parse().unwrap(), &msg);
    assert!(!b.drain_outputs().any(|o| matches!(o, Output::Statement { .. })));
}
