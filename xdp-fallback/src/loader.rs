//! Loads the XDP program, attaches it to an interface (native mode where the driver has
//! it, generic SKB mode otherwise), and keeps its maps: the live sessions, the AF_XDP
//! socket of each queue, the settings, and the per-CPU counters.
//!
//! The program is attached through a BPF link owned by this process: it is detached when
//! the [`XdpFilter`] is dropped and also when the process dies, however it dies, so no
//! stale program stays on the NIC. A program an older version left attached the legacy
//! (netlink) way is replaced if it is ours, and refused otherwise.

use std::os::fd::AsRawFd;

use aya::Ebpf;
use aya::maps::{Array, HashMap, MapData, PerCpuArray, XskMap};
use aya::programs::{Xdp, XdpMode};
use omni_xdp_common::{XdpConfig, counter, maps};
use tracing::{info, warn};

/// The program object, when this build has it (built by `omni-ebpf-core`).
pub(crate) static OBJECT: Option<&[u8]> = omni_ebpf_core::OBJECT;

/// Whether this build carries the XDP program.
pub fn program_built() -> bool {
    OBJECT.is_some()
}

#[derive(Debug, thiserror::Error)]
pub enum XdpLoadError {
    #[error(
        "this build has no XDP program: bpf-linker or a nightly toolchain with rust-src was \
         missing when it was built. Run `scripts/setup.sh` (it installs them), rebuild with \
         `cargo build --release`, or use `--backend socket`"
    )]
    NotBuilt,
    #[error("no network interface named {0:?} (see `ip link`)")]
    NoInterface(String),
    #[error("cannot load the XDP program: {0} (needs root, or CAP_BPF + CAP_NET_ADMIN)")]
    Load(String),
    #[error("cannot attach the XDP program to {iface}: {detail}")]
    Attach { iface: String, detail: String },
    #[error("XDP map {name}: {detail}")]
    Map { name: &'static str, detail: String },
}

/// How the program runs on the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver, before any socket buffer exists.
    Native,
    /// In the kernel's generic path (any interface, slower).
    Skb,
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Skb => "skb",
        }
    }
}

/// The attached program and its maps. Dropping it detaches the program.
pub struct XdpFilter {
    // Maps before the object: they hold their own fds, the object holds the link.
    sessions: HashMap<MapData, u32, u8>,
    sockets: XskMap<MapData>,
    counters: PerCpuArray<MapData, u64>,
    _config: Array<MapData, XdpConfig>,
    /// Owns the program and its link: dropping it detaches the program.
    _ebpf: Ebpf,
    iface: String,
    mode: AttachMode,
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> XdpLoadError {
    move |e| XdpLoadError::Map { name, detail: e.to_string() }
}

impl XdpFilter {
    /// Loads the program with `cfg`, and attaches it to `iface`: in the requested mode, or
    /// (None) natively when the driver can and in SKB mode otherwise.
    pub fn attach(
        iface: &str,
        want: Option<AttachMode>,
        cfg: XdpConfig,
    ) -> Result<Self, XdpLoadError> {
        let object = OBJECT.ok_or(XdpLoadError::NotBuilt)?;
        if if_index(iface).is_none() {
            return Err(XdpLoadError::NoInterface(iface.to_string()));
        }
        let mut ebpf = Ebpf::load(object).map_err(|e| XdpLoadError::Load(e.to_string()))?;
        let mut config: Array<MapData, XdpConfig> =
            Array::try_from(ebpf.take_map(maps::CONFIG).ok_or(XdpLoadError::Map {
                name: maps::CONFIG,
                detail: "missing from the object".into(),
            })?)
            .map_err(map_err(maps::CONFIG))?;
        config.set(0, cfg, 0).map_err(map_err(maps::CONFIG))?;
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name)
                .ok_or(XdpLoadError::Map { name, detail: "missing from the object".into() })
        };
        let sessions =
            HashMap::try_from(take(&mut ebpf, maps::SESSIONS)?).map_err(map_err(maps::SESSIONS))?;
        let sockets =
            XskMap::try_from(take(&mut ebpf, maps::XSKS)?).map_err(map_err(maps::XSKS))?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, maps::COUNTERS)?)
            .map_err(map_err(maps::COUNTERS))?;
        let prog: &mut Xdp = ebpf
            .program_mut(omni_xdp_common::PROGRAM)
            .ok_or_else(|| XdpLoadError::Load("program missing from the object".into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| XdpLoadError::Load(e.to_string()))?;
        prog.load().map_err(|e| XdpLoadError::Load(format!("{e}{}", verifier_log(&e))))?;
        let mode = attach_prog(prog, iface, want)?;
        info!(iface, mode = mode.name(), "XDP program attached ({} mode)", mode.name());
        Ok(Self {
            sessions,
            sockets,
            counters,
            _config: config,
            _ebpf: ebpf,
            iface: iface.into(),
            mode,
        })
    }

    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Lets transport messages for receiver index `index` through to the AF_XDP sockets.
    pub fn add_session(&mut self, index: u32) -> Result<(), XdpLoadError> {
        self.sessions.insert(index, 1, 0).map_err(map_err(maps::SESSIONS))
    }

    /// Drops transport messages for `index` in XDP again.
    pub fn remove_session(&mut self, index: u32) {
        let _ = self.sessions.remove(&index);
    }

    /// Steers the fabric's packets arriving on `queue` to `socket`.
    pub fn set_socket(&mut self, queue: u32, socket: &impl AsRawFd) -> Result<(), XdpLoadError> {
        self.sockets.set(queue, socket.as_raw_fd(), 0).map_err(map_err(maps::XSKS))
    }

    /// Totals of each counter slot over all CPUs (see `omni_xdp_common::counter`).
    pub fn counters(&self) -> [u64; counter::COUNT as usize] {
        let mut out = [0u64; counter::COUNT as usize];
        for (i, v) in out.iter_mut().enumerate() {
            if let Ok(per_cpu) = self.counters.get(&(i as u32), 0) {
                *v = per_cpu.iter().sum();
            }
        }
        out
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        // The link goes with `_ebpf`, dropped after this; say so, since the NIC's
        // filtering changes here.
        info!(iface = self.iface, "detaching the XDP program");
    }
}

fn verifier_log(e: &aya::programs::ProgramError) -> String {
    match e {
        aya::programs::ProgramError::LoadError { verifier_log, .. } => {
            format!("; verifier log:\n{verifier_log}")
        }
        _ => String::new(),
    }
}

fn attach_prog(
    prog: &mut Xdp,
    iface: &str,
    want: Option<AttachMode>,
) -> Result<AttachMode, XdpLoadError> {
    let modes: &[AttachMode] = match want {
        Some(AttachMode::Native) => &[AttachMode::Native],
        Some(AttachMode::Skb) => &[AttachMode::Skb],
        None => &[AttachMode::Native, AttachMode::Skb],
    };
    let mut last = String::new();
    for &m in modes {
        let xm = match m {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        };
        match prog.attach(iface, xm) {
            Ok(_) => return Ok(m),
            Err(e) => {
                let detail = error_chain(&e);
                // A program attached the legacy way blocks a link: replace it if it is ours.
                if detail.contains("Device or resource busy")
                    && remove_stale(iface)?
                    && prog.attach(iface, xm).is_ok()
                {
                    return Ok(m);
                }
                if want.is_none() && m == AttachMode::Native {
                    warn!(iface, "native XDP not available ({detail}); trying SKB mode");
                }
                last = detail;
            }
        }
    }
    Err(XdpLoadError::Attach { iface: iface.into(), detail: last })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

/// Removes an XDP program left on `iface` by an earlier run of ours (attached through
/// netlink, which outlives its process). Refuses to touch anyone else's.
fn remove_stale(iface: &str) -> Result<bool, XdpLoadError> {
    let out = std::process::Command::new("ip")
        .args(["-d", "link", "show", "dev", iface])
        .output()
        .map_err(|e| XdpLoadError::Attach { iface: iface.into(), detail: format!("ip: {e}") })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(name) = text
        .split_whitespace()
        .skip_while(|w| *w != "prog/xdp")
        .skip_while(|w| *w != "name")
        .nth(1)
    else {
        return Ok(false);
    };
    if name != omni_xdp_common::PROGRAM {
        return Err(XdpLoadError::Attach {
            iface: iface.into(),
            detail: format!(
                "another XDP program ({name}) is attached; remove it with \
                 `ip link set dev {iface} xdp off` if it is not needed"
            ),
        });
    }
    warn!(iface, "removing a stale {name} program left attached by an earlier run");
    for mode in ["xdpgeneric", "xdpdrv"] {
        let _ = std::process::Command::new("ip")
            .args(["link", "set", "dev", iface, mode, "off"])
            .status();
    }
    Ok(true)
}

fn if_index(iface: &str) -> Option<u32> {
    let c = std::ffi::CString::new(iface).ok()?;
    // SAFETY: a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// The interface index of `iface`, if it exists.
pub fn interface_index(iface: &str) -> Option<u32> {
    if_index(iface)
}

#[cfg(test)]
mod tests {
    use omni_proto::wire::{cookie_reply, handshake_init, handshake_resp};
    use omni_xdp_common::wire;

    #[test]
    fn wire_constants_match_the_protocol() {
        assert_eq!(wire::HANDSHAKE_INITIATION_LEN, handshake_init::LEN);
        assert_eq!(wire::HANDSHAKE_RESPONSE_LEN, handshake_resp::LEN);
        assert_eq!(wire::HANDSHAKE_EXTENSIONS_MAX, omni_proto::noise::MAX_EXTENSIONS);
        assert_eq!(handshake_init::MAX_LEN, handshake_init::LEN + wire::HANDSHAKE_EXTENSIONS_MAX);
        assert_eq!(wire::COOKIE_REPLY_LEN, cookie_reply::LEN);
        assert_eq!(wire::RELAY_HEADER_LEN, omni_proto::wire::relay::HEADER_LEN);
        assert_eq!(wire::TRANSPORT, omni_proto::constants::MSG_TRANSPORT);
        assert_eq!(wire::RELAYED, omni_proto::constants::MSG_RELAYED);
        assert_eq!(wire::NUCLEUS, omni_proto::constants::MSG_NUCLEUS);
        assert_eq!(wire::TRANSPORT_MIN_LEN, omni_proto::constants::TRANSPORT_OVERHEAD);
    }

    #[test]
    fn the_program_is_built_when_ci_requires_it() {
        if std::env::var("OMNI_XDP_REQUIRED").is_ok_and(|v| v == "1") {
            assert!(super::program_built());
        }
    }
}
