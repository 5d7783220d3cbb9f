//! TAP interfaces: create or re-attach, configure (MTU, MAC, up), read and write frames.
//!
//! The TAP is made persistent so that a crashed data plane does not take the interface,
//! its addresses and its neighbour entries with it: the restarted data plane re-attaches
//! and traffic resumes. A clean shutdown clears persistence, which deletes the interface.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(
        "cannot open /dev/net/tun: {0}; the TUN/TAP driver must be loaded (modprobe tun) and omni-dataplane needs root or CAP_NET_ADMIN"
    )]
    OpenTun(io::Error),
    #[error("interface name {0:?} is invalid: 1 to 15 characters, no '/' or whitespace")]
    BadName(String),
    #[error(
        "cannot create TAP interface {name}: permission denied; run as root or grant CAP_NET_ADMIN"
    )]
    Permission { name: String },
    #[error(
        "cannot attach to interface {name}: it exists but is not a TAP with the same settings ({source}); remove it with `ip link del {name}` or choose another --tap name"
    )]
    Conflict { name: String, source: io::Error },
    #[error("cannot configure TAP {name} ({what}): {source}")]
    Configure { name: String, what: &'static str, source: io::Error },
}

pub struct Tap {
    fd: OwnedFd,
    name: String,
    ifindex: u32,
    vnet: bool,
}

/// `TUNSETOFFLOAD` bits: the reader handles partial checksums and TCP segmentation.
const TUN_F_CSUM: libc::c_ulong = 0x01;
const TUN_F_TSO4: libc::c_ulong = 0x02;
const TUN_F_TSO6: libc::c_ulong = 0x04;

fn ifreq_for(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = *s as libc::c_char;
    }
    ifr
}

/// A throwaway datagram socket for interface ioctls.
fn ctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: creates a new descriptor that we own at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ioctl_ifreq(fd: RawFd, req: libc::Ioctl, ifr: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: every request used here reads/writes one ifreq, which we pass by pointer.
    if unsafe { libc::ioctl(fd, req, ifr as *mut libc::ifreq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && !name.contains('/')
        && !name.chars().any(|c| c.is_whitespace() || c == '\0')
        && name != "."
        && name != ".."
}

impl Tap {
    /// Creates the TAP `name`, or attaches to it if a persistent one exists. With `offload`
    /// every frame carries a virtio-net header and the kernel may hand over (and accept)
    /// 64 KB TCP super-frames with partial checksums; `vnet()` says whether that took.
    pub fn open(name: &str, offload: bool) -> Result<Self, TapError> {
        if !valid_ifname(name) {
            return Err(TapError::BadName(name.to_string()));
        }
        // SAFETY: opening a device node with a valid C string; the fd is owned at once.
        let raw = unsafe {
            libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK)
        };
        if raw < 0 {
            let e = io::Error::last_os_error();
            return Err(
                if e.raw_os_error() == Some(libc::EACCES) || e.raw_os_error() == Some(libc::EPERM) {
                    TapError::Permission { name: name.to_string() }
                } else {
                    TapError::OpenTun(e)
                },
            );
        }
        // SAFETY: raw is a fresh descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut ifr = ifreq_for(name);
        let vnet = if offload { libc::IFF_VNET_HDR } else { 0 };
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | vnet) as libc::c_short;
        if let Err(e) = ioctl_ifreq(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) {
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => {
                    TapError::Permission { name: name.to_string() }
                }
                _ => TapError::Conflict { name: name.to_string(), source: e },
            });
        }
        // SAFETY: TUNSETPERSIST takes an integer argument by value.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
            return Err(TapError::Configure {
                name: name.to_string(),
                what: "persist",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: the kernel wrote a NUL-terminated name into ifr_name.
        let actual =
            unsafe { CStr::from_ptr(ifr.ifr_name.as_ptr()) }.to_string_lossy().into_owned();
        let mut tap = Self { fd, name: actual, ifindex: 0, vnet: offload };
        if offload {
            let bits = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
            // SAFETY: TUNSETOFFLOAD takes an integer argument by value.
            if unsafe { libc::ioctl(tap.fd.as_raw_fd(), libc::TUNSETOFFLOAD, bits) } < 0 {
                // Frames keep their (empty) virtio-net header; no super-frames will come.
                tracing::warn!(tap = %tap.name, "TAP offloads unavailable: {}", io::Error::last_os_error());
            }
        }
        tap.ifindex = tap.query_ifindex().map_err(|source| TapError::Configure {
            name: tap.name.clone(),
            what: "index",
            source,
        })?;
        Ok(tap)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Whether frames carry a virtio-net header.
    pub fn vnet(&self) -> bool {
        self.vnet
    }

    fn query_ifindex(&self) -> io::Result<u32> {
        let s = ctl_socket()?;
        let mut ifr = ifreq_for(&self.name);
        ioctl_ifreq(s.as_raw_fd(), libc::SIOCGIFINDEX as libc::Ioctl, &mut ifr)?;
        // SAFETY: SIOCGIFINDEX filled the ifindex member of the union.
        Ok(unsafe { ifr.ifr_ifru.ifru_ifindex } as u32)
    }

    /// Sets MTU and MAC (the MAC only when it differs: changing it on an interface that is
    /// up would disturb neighbours needlessly), then brings the interface up.
    pub fn configure(&self, mtu: u32, mac: Option<[u8; 6]>) -> Result<(), TapError> {
        let err = |what, source| TapError::Configure { name: self.name.clone(), what, source };
        let s = ctl_socket().map_err(|e| err("socket", e))?;
        let mut ifr = ifreq_for(&self.name);
        ifr.ifr_ifru.ifru_mtu = mtu as libc::c_int;
        ioctl_ifreq(s.as_raw_fd(), libc::SIOCSIFMTU as libc::Ioctl, &mut ifr)
            .map_err(|e| err("mtu", e))?;
        if let Some(mac) = mac {
            let mut ifr = ifreq_for(&self.name);
            ioctl_ifreq(s.as_raw_fd(), libc::SIOCGIFHWADDR as libc::Ioctl, &mut ifr)
                .map_err(|e| err("get mac", e))?;
            // SAFETY: SIOCGIFHWADDR filled the hwaddr member.
            let cur = unsafe { ifr.ifr_ifru.ifru_hwaddr.sa_data };
            if cur[..6].iter().zip(mac.iter()).any(|(a, b)| *a as u8 != *b) {
                let mut ifr = ifreq_for(&self.name);
                // SAFETY: writing the hwaddr member of a zeroed union.
                unsafe {
                    ifr.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
                    for (d, s) in ifr.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(mac) {
                        *d = s as libc::c_char;
                    }
                }
                ioctl_ifreq(s.as_raw_fd(), libc::SIOCSIFHWADDR as libc::Ioctl, &mut ifr)
                    .map_err(|e| err("mac", e))?;
            }
        }
        let mut ifr = ifreq_for(&self.name);
        ioctl_ifreq(s.as_raw_fd(), libc::SIOCGIFFLAGS as libc::Ioctl, &mut ifr)
            .map_err(|e| err("get flags", e))?;
        // SAFETY: SIOCGIFFLAGS filled the flags member; we set one more bit in it.
        unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        ioctl_ifreq(s.as_raw_fd(), libc::SIOCSIFFLAGS as libc::Ioctl, &mut ifr)
            .map_err(|e| err("up", e))?;
        Ok(())
    }

    /// Clears persistence: the interface disappears when this descriptor closes.
    pub fn set_persist(&self, on: bool) -> io::Result<()> {
        // SAFETY: TUNSETPERSIST takes an integer argument by value.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TUNSETPERSIST, on as libc::c_ulong) } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads one frame; `Ok(None)` when none is queued.
    #[inline]
    pub fn read(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: the kernel writes at most buf.len() bytes into buf.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
            Ok(None)
        } else {
            Err(e)
        }
    }

    /// Writes one frame (virtio-net header included when `vnet()`) gathered from `parts`.
    #[inline]
    pub fn writev(&self, parts: &[std::io::IoSlice<'_>]) -> io::Result<usize> {
        // SAFETY: IoSlice is ABI-compatible with iovec; the kernel reads the described bytes.
        let n = unsafe {
            libc::writev(self.fd.as_raw_fd(), parts.as_ptr().cast(), parts.len() as libc::c_int)
        };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    /// Writes one frame to the kernel.
    #[inline]
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: the kernel reads frame.len() bytes from frame.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::valid_ifname;

    #[test]
    fn interface_names() {
        assert!(valid_ifname("omni0"));
        assert!(valid_ifname("a23456789012345"));
        assert!(!valid_ifname("a234567890123456"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname("a/b"));
        assert!(!valid_ifname("a b"));
    }
}
