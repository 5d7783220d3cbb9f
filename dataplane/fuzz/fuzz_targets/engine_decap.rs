//! The data plane's receive path on arbitrary datagrams, with a live session and a mac1
//! key configured: no panic, nothing delivered without authentication.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use omni_dataplane::engine::{Decap, Engine, PacketBuf, TxSink};
use omni_shm::records::{Command, DataplaneConfig, InstallSession, SessionPlace};
use omni_shm::{Params, Region};
use omni_proto::noise::SessionKeys;

struct Sink(PacketBuf);
impl TxSink for Sink {
    fn buffer(&mut self) -> &mut PacketBuf {
        &mut self.0
    }
    fn commit(&mut self) {}
    fn commit_swap(&mut self, _pkt: &mut PacketBuf) {}
}

fn region() -> &'static Region {
    static R: OnceLock<&'static Region> = OnceLock::new();
    R.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("omni-fuzz-{}.shm", std::process::id()));
        let _ = std::fs::remove_file(&p);
        Box::leak(Box::new(Region::open(&p, Params::for_peers(4), true).unwrap()))
    })
}

fuzz_target!(|data: &[u8]| {
    let mut e = Engine::new(region(), 0);
    let mut sink = Sink(PacketBuf::new());
    e.apply(1, Command::Configure(DataplaneConfig { mac1_key: [3; 32], ..Default::default() }), &mut sink);
    e.apply(1, Command::SetPeer { peer: 0, endpoint: Some("10.0.0.2:1".parse().unwrap()) }, &mut sink);
    e.apply(
        1,
        Command::InstallSession(InstallSession {
            peer: 0,
            place: SessionPlace::Current,
            local_index: 5,
            remote_index: 6,
            age_ms: 1,
            initiator: false,
            keys: SessionKeys {
                send: [1; 32],
                recv: [2; 32],
                aead: omni_proto::aead::Aead::ChaCha20Poly1305,
                features: omni_proto::features::Features::SUPPORTED,
            },
        }),
        &mut sink,
    );
    // Two uplinks: answers to path probes are looked at too (none authenticates here).
    e.set_uplinks(2, 40);
    e.set_receiving_on(data.first().map_or(0, |b| b % 3));
    let mut pkt = PacketBuf::new();
    let n = data.len().min(pkt.data.len());
    pkt.data[..n].copy_from_slice(&data[..n]);
    pkt.len = n;
    let v = e.decap(2, "10.0.0.9:9".parse().unwrap(), pkt.datagram_mut(), &mut sink);
    assert!(!matches!(v, Decap::Deliver { .. } | Decap::Keepalive), "random bytes never authenticate");
    e.probe_paths(3, &mut sink);
});
