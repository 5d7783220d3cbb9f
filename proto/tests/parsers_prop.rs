//! Property tests: no parser panics on arbitrary bytes, and every message round-trips.

use omni_proto::wire::{
    MessageType, cookie_reply, ethernet, handshake_init, handshake_resp, nucleus, relay, transport,
};
use proptest::prelude::*;

fn parse_any(buf: &[u8]) {
    let _ = MessageType::of(buf);
    if let Ok(p) = handshake_init::Packet::new_checked(buf) {
        let _ = handshake_init::Repr::parse(&p);
    }
    if let Ok(p) = handshake_resp::Packet::new_checked(buf) {
        let _ = handshake_resp::Repr::parse(&p);
    }
    if let Ok(p) = cookie_reply::Packet::new_checked(buf) {
        let _ = cookie_reply::Repr::parse(&p);
    }
    if let Ok(p) = transport::Packet::new_checked(buf) {
        let _ = (transport::Header::parse(&p), p.plaintext_len(), p.sealed_payload().len());
    }
    if let Ok(f) = ethernet::Frame::new_checked(buf) {
        let _ = (f.dst(), f.src(), f.ethertype());
    }
    if let Ok(r) = nucleus::Register::parse(buf) {
        let _ = r.verify(buf);
    }
    if let Ok(r) = nucleus::NodeRequest::parse(buf) {
        let _ = r.verify(buf);
    }
    if let Ok(r) = nucleus::Registered::parse(buf) {
        let _ = r.verify(buf);
    }
    if let Ok(r) = nucleus::Members::parse(buf) {
        let _ = r.verify(buf);
    }
    if let Ok(p) = relay::Packet::new_checked(buf) {
        let _ = (p.tag(), p.inner().len(), p.is_request());
    }
    let _ = omni_proto::cluster::parse_name_field(buf);
    let _ = omni_proto::wire::macs::verify_mac1(buf, &[0; 32]);
    let _ = omni_proto::wire::macs::verify_mac2(buf, &[0; 16]);
    let _ = omni_proto::tai64n::Tai64n::from_bytes(buf);
    let _ = std::str::from_utf8(buf).map(|s| s.parse::<omni_proto::PublicKey>());
}

proptest! {
    #[test]
    fn parsers_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..300)) {
        parse_any(&buf);
    }

    #[test]
    fn typed_prefixes_never_panic(ty in 1u8..8, rest in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut buf = vec![ty, 0, 0, 0];
        buf.extend(rest);
        parse_any(&buf);
    }

    #[test]
    fn initiation_round_trips(sender: u32, noise in proptest::array::uniform32(any::<u8>()), ext in 0..=omni_proto::noise::MAX_EXTENSIONS, m1: [u8; 16], m2: [u8; 16]) {
        let mut n = vec![0u8; omni_proto::noise::INITIATION_NOISE_LEN + ext];
        for (i, b) in n.iter_mut().enumerate() { *b = noise[i % 32] ^ i as u8; }
        let repr = handshake_init::Repr { sender_index: sender, noise: &n, mac1: m1, mac2: m2 };
        let buf = repr.to_vec();
        prop_assert_eq!(MessageType::of(&buf), Ok(MessageType::HandshakeInitiation));
        let p = handshake_init::Packet::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(handshake_init::Repr::parse(&p), repr);
    }

    #[test]
    fn response_round_trips(sender: u32, receiver: u32, m1: [u8; 16], m2: [u8; 16]) {
        let noise = [sender as u8; omni_proto::noise::RESPONSE_NOISE_LEN];
        let repr = handshake_resp::Repr { sender_index: sender, receiver_index: receiver, noise: &noise, mac1: m1, mac2: m2 };
        let buf = repr.to_vec();
        let p = handshake_resp::Packet::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(handshake_resp::Repr::parse(&p), repr);
    }

    #[test]
    fn cookie_reply_round_trips(receiver: u32, nonce: [u8; 24], sealed in proptest::array::uniform32(any::<u8>())) {
        let repr = cookie_reply::Repr { receiver_index: receiver, nonce, sealed_cookie: sealed };
        let mut buf = [0u8; cookie_reply::LEN];
        repr.emit(&mut buf);
        prop_assert_eq!(cookie_reply::Repr::parse(&cookie_reply::Packet::new_checked(&buf[..]).unwrap()), repr);
    }

    #[test]
    fn transport_header_round_trips(receiver: u32, counter: u64, payload in 0usize..2000, start in 14u16..200, offset in 1u8..=255) {
        let mut buf = vec![0u8; transport::MIN_LEN + payload];
        let fits = start as usize + offset as usize + 2 <= payload;
        let checksum = fits.then_some(transport::ChecksumPartial { start, offset });
        let h = transport::Header { receiver_index: receiver, counter, checksum, kind: transport::Kind::Frame };
        h.emit(&mut buf);
        let p = transport::Packet::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(transport::Header::parse(&p), h);
        prop_assert_eq!(p.plaintext_len(), payload);
    }
}
