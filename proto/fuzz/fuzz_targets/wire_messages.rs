//! Every wire parser on arbitrary bytes: no panic, and what parses re-emits identically.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omni_proto::wire::{
    MessageType, cookie_reply, ethernet, handshake_init, handshake_resp, macs, nucleus, path_probe,
    relay, transport,
};

fuzz_target!(|data: &[u8]| {
    let _ = MessageType::of(data);
    if let Ok(p) = handshake_init::Packet::new_checked(data) {
        assert_eq!(handshake_init::Repr::parse(&p).to_vec(), data);
    }
    if let Ok(p) = handshake_resp::Packet::new_checked(data) {
        assert_eq!(handshake_resp::Repr::parse(&p).to_vec(), data);
    }
    if let Ok(p) = cookie_reply::Packet::new_checked(data) {
        let mut out = [0u8; cookie_reply::LEN];
        cookie_reply::Repr::parse(&p).emit(&mut out);
        assert_eq!(&out[..], data);
    }
    if let Ok(p) = transport::Packet::new_checked(data) {
        let h = transport::Header::parse(&p);
        let mut out = [0u8; 16];
        h.emit(&mut out);
        assert_eq!(&out[..], &data[..16]);
        assert_eq!(p.plaintext_len() + transport::MIN_LEN, data.len());
    }
    if let Ok(f) = ethernet::Frame::new_checked(data) {
        let _ = (f.dst(), f.src(), f.ethertype(), ethernet::is_group(&f.dst()));
    }
    if let Ok(r) = nucleus::Register::parse(data) {
        let _ = r.verify(data);
        assert!(r.membership.is_none_or(|m| m.certificate.len() <= nucleus::MAX_REGISTER_CERTIFICATE));
    }
    if let Ok(s) = nucleus::Statement::parse(data) {
        assert_eq!(s.build(), data, "a statement rebuilds byte for byte");
    }
    if let Ok(r) = nucleus::NodeRequest::parse(data) {
        let _ = r.verify(data);
    }
    if let Ok(r) = nucleus::Registered::parse(data) {
        let _ = r.verify(data);
    }
    if let Ok(m) = nucleus::Members::parse(data) {
        let _ = m.verify(data);
        assert!(m.entries.iter().all(|e| e.endpoints.len() <= nucleus::MAX_MEMBER_ENDPOINTS));
    }
    if let Ok(p) = relay::Packet::new_checked(data) {
        let _ = (p.tag(), p.inner(), p.is_request());
    }
    if let Ok(p) = path_probe::Packet::new_checked(data) {
        let mut out = [0u8; path_probe::LEN];
        path_probe::Repr::parse(&p).emit(&mut out);
        // The reserved bytes are written as zero.
        assert_eq!((&out[..2], &out[4..]), (&data[..2], &data[4..path_probe::LEN]));
    }
    // A frame's class and the ECN rules: any bytes, no panic; a CE mark changes at most
    // the TOS byte (and the IPv4 checksum) of an ECN-capable IP frame.
    let classes = omni_proto::qos::ClassMap::default();
    let _ = (classes.classify(data), classes.mark(data));
    let mut marked = data.to_vec();
    if omni_proto::qos::apply_outer_ecn(&mut marked, omni_proto::qos::ecn::CE) {
        assert_eq!(marked.len(), data.len());
    }
    let mut answer = [0u8; omni_proto::wire::too_big::MAX_LEN];
    if let Some(n) = omni_proto::wire::too_big::answer(data, 1300, &mut answer) {
        assert!(n <= answer.len());
    }
    let _ = macs::verify_mac1(data, &[7; 32]);
    let _ = macs::verify_mac2(data, &[7; 16]);
    let _ = macs::mac1_of(data);
    let _ = omni_proto::tai64n::Tai64n::from_bytes(data);
});
