//! Shared helpers for the benchmarks: an engine pair wired back to back.

use omni_dataplane::engine::{Engine, PacketBuf, TxSink};
use omni_proto::noise::SessionKeys;
use omni_shm::records::{Command, InstallSession, SessionPlace};
use omni_shm::{Params, Region};

/// A sink that keeps the last packet (so the open benchmark can reuse it).
pub struct LastPacket {
    pub last: PacketBuf,
    pub spare: PacketBuf,
    pub count: u64,
}

impl Default for LastPacket {
    fn default() -> Self {
        Self { last: PacketBuf::new(), spare: PacketBuf::new(), count: 0 }
    }
}

impl TxSink for LastPacket {
    fn buffer(&mut self) -> &mut PacketBuf {
        &mut self.spare
    }
    fn commit(&mut self) {
        std::mem::swap(&mut self.last, &mut self.spare);
        self.count += 1;
    }
    fn commit_swap(&mut self, pkt: &mut PacketBuf) {
        std::mem::swap(&mut self.last, pkt);
        self.count += 1;
    }
}

pub fn region(tag: &str) -> &'static Region {
    let p = std::env::temp_dir().join(format!("omni-bench-{}-{tag}.shm", std::process::id()));
    let _ = std::fs::remove_file(&p);
    Box::leak(Box::new(Region::open(&p, Params::for_peers(16), true).expect("region")))
}

/// An engine with one peer (id 0) at 10.0.0.2:51820 and an installed `aead` session,
/// sealing with `send` and opening with `recv`.
pub fn engine_with_session(
    tag: &str,
    aead: omni_proto::aead::Aead,
    send: [u8; 32],
    recv: [u8; 32],
    local: u32,
    remote: u32,
) -> Engine<'static> {
    let mut e = Engine::new(region(tag), 0);
    let mut sink = LastPacket::default();
    e.apply(
        0,
        Command::SetPeer { peer: 0, endpoint: Some("10.0.0.2:51820".parse().unwrap()) },
        &mut sink,
    );
    e.apply(
        0,
        Command::InstallSession(InstallSession {
            peer: 0,
            place: SessionPlace::Current,
            local_index: local,
            remote_index: remote,
            age_ms: 1,
            initiator: false,
            keys: SessionKeys {
                send,
                recv,
                aead,
                features: omni_proto::features::Features::SUPPORTED,
            },
        }),
        &mut sink,
    );
    e
}

/// Teaches `e` that `mac` lives behind peer 0, so frames to it are known unicast.
pub fn learn(e: &Engine, mac: [u8; 6]) {
    e.fdb().learn(&mac, 0, 1);
}

/// Two node identities (`<dir>/<prefix>-a.key`, `-b.key`) made by `daemon --init`: their
/// paths and public keys.
pub fn two_identities(
    daemon: &std::path::Path,
    dir: &std::path::Path,
    prefix: &str,
) -> Vec<(std::path::PathBuf, String)> {
    ["a", "b"]
        .iter()
        .map(|n| {
            let id = dir.join(format!("{prefix}-{n}.key"));
            let out = omni_testkit::run_ok(&format!(
                "{} --init --identity {}",
                daemon.display(),
                id.display()
            ));
            (id, out.trim().trim_start_matches("Your Public Identity: ").to_string())
        })
        .collect()
}

/// `omni-daemon` arguments for a node of identity `identity` in `run_dir` with one static
/// peer (`peer` at `endpoint`), metrics off.
pub fn daemon_args(
    daemon: &std::path::Path,
    identity: &std::path::Path,
    run_dir: &std::path::Path,
    peer: &str,
    endpoint: &str,
) -> Vec<String> {
    vec![
        daemon.display().to_string(),
        "--identity".into(),
        identity.display().to_string(),
        "--run-dir".into(),
        run_dir.display().to_string(),
        "--peer".into(),
        peer.to_string(),
        "--endpoint".into(),
        endpoint.to_string(),
        "--metrics-listen".into(),
        "off".into(),
    ]
}
