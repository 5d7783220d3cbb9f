//! The underlay UDP socket with batched I/O (recvmmsg / sendmmsg).
//!
//! One socket serves IPv4 and IPv6 (an AF_INET6 socket with IPV6_V6ONLY off) unless the
//! kernel has no IPv6, in which case it is AF_INET. Received IPv4-mapped addresses are
//! turned back into IPv4 so endpoints compare equal to configured ones.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::engine::PacketBuf;
use omni_proto::wire::relay;
use omni_shm::endpoint::Endpoint;

#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    #[error(
        "UDP port {port} is already in use on {addr}; another omni-daemon (or WireGuard) may be running: stop it or choose another port with --port"
    )]
    InUse { port: u16, addr: IpAddr },
    #[error("cannot bind UDP {addr}:{port}: {source}")]
    Bind { addr: IpAddr, port: u16, source: io::Error },
    #[error("cannot create UDP socket: {0}")]
    Socket(io::Error),
    #[error(
        "uplink {iface}: {source}; check the name with `ip link` (--uplink / [network] uplinks)"
    )]
    Uplink { iface: String, source: io::Error },
}

pub struct UdpSocket {
    fd: OwnedFd,
    v6: bool,
    /// Sends with "don't fragment" whatever the kernel learned ([`UdpSocket::bind_lanes`]'s
    /// probe socket): a datagram it refuses as too big is a probe that failed, not an error.
    dont_fragment: bool,
}

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Most datagrams in one UDP GSO send.
pub const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes in one UDP GSO send.
pub const GSO_MAX_BYTES: usize = 65_000;
/// Control-message room per datagram: UDP_GRO or UDP_SEGMENT, and the IP TOS (traffic
/// class), each `CMSG_SPACE(4)` = 24 bytes at most, and the receive timestamp
/// (`CMSG_SPACE(16)` = 32).
const CTRL_LEN: usize = 96;

/// A receive buffer for [`MmsgBatch::recv`]: with UDP GRO it may hold several datagrams of
/// `seg` bytes each (the last may be shorter).
pub struct RxBuf {
    pub data: Box<[u8]>,
    /// Bytes received; `usize::MAX` when the datagram(s) did not fit (truncated).
    pub len: usize,
    pub addr: Option<SocketAddr>,
    /// Datagram size when GRO coalesced several, else 0.
    pub seg: usize,
    /// The IP TOS (IPv6 traffic class) they came with, when the socket asked for it
    /// ([`UdpSocket::enable_recv_tos`]); GRO coalesces only datagrams with the same.
    pub tos: u8,
    /// When the kernel received them (CLOCK_REALTIME, ns), when the socket asked
    /// ([`UdpSocket::enable_rx_timestamps`]); else 0.
    pub stamp_ns: u64,
}

impl RxBuf {
    pub fn new(size: usize) -> Self {
        Self {
            data: vec![0u8; size].into_boxed_slice(),
            len: 0,
            addr: None,
            seg: 0,
            tos: 0,
            stamp_ns: 0,
        }
    }
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to one c_int and its size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Converts an address for a socket of the given family (IPv4 mapped into IPv6 if needed).
pub fn to_sockaddr(
    addr: &SocketAddr,
    v6_socket: bool,
    out: &mut libc::sockaddr_storage,
) -> libc::socklen_t {
    match (addr, v6_socket) {
        (SocketAddr::V4(a), false) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin =
                unsafe { &mut *(out as *mut libc::sockaddr_storage as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) };
            sin.sin_zero = [0; 8];
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        _ => {
            let (ip, port, scope) = match addr {
                SocketAddr::V4(a) => (a.ip().to_ipv6_mapped(), a.port(), 0),
                SocketAddr::V6(a) => (*a.ip(), a.port(), a.scope_id()),
            };
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 =
                unsafe { &mut *(out as *mut libc::sockaddr_storage as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = port.to_be();
            sin6.sin6_flowinfo = 0;
            sin6.sin6_addr = libc::in6_addr { s6_addr: ip.octets() };
            sin6.sin6_scope_id = scope;
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Converts a received address; IPv4-mapped IPv6 becomes IPv4.
pub fn from_sockaddr(sa: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match sa.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin =
                unsafe { &*(sa as *const libc::sockaddr_storage as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 =
                unsafe { &*(sa as *const libc::sockaddr_storage as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
                None => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, sin6.sin6_scope_id)),
            })
        }
        _ => None,
    }
}

impl UdpSocket {
    /// Binds `addr:port` (`None`: all addresses, both families when possible), non-blocking,
    /// with socket buffers of `buf_bytes` (forced past the sysctl limit when root).
    pub fn bind(addr: Option<IpAddr>, port: u16, buf_bytes: usize) -> Result<Self, UdpError> {
        Self::bind_with(addr, port, buf_bytes, false)
    }

    /// The fabric port as sockets of one reuseport group: bulk (bound first: index 0), the
    /// real-time lane's (`rt_bytes`; index 1) and a "don't fragment" socket for path MTU
    /// probes (`df`; last, never chosen by the program, only sends), and the steering
    /// program that splits arriving datagrams between bulk and real time by outer DSCP
    /// ([`crate::steer`]; with no real-time socket it chooses bulk). The port is first bound
    /// alone, so a port another process holds is the same clear error as
    /// [`UdpSocket::bind`] (a reuseport socket would join its group instead), and port 0
    /// becomes the port the kernel chose. When the kernel refuses the group or the program
    /// (an old kernel), one socket is bound and `single` says why.
    pub fn bind_lanes(
        addr: Option<IpAddr>,
        port: u16,
        bulk_bytes: usize,
        rt_bytes: Option<usize>,
        df: bool,
        program: &[libc::sock_filter],
    ) -> Result<Lanes, UdpError> {
        let alone = Self::bind(addr, port, bulk_bytes)?;
        let port = alone.local_port().map_err(UdpError::Socket)?;
        drop(alone);
        let member = |bytes| Self::bind_with(addr, port, bytes, true).map_err(io::Error::other);
        let group = (|| -> io::Result<Lanes> {
            let bulk = member(bulk_bytes)?;
            let rt = rt_bytes.map(member).transpose()?;
            let mut df = if df { Some(member(DF_SOCKET_BUFFER)?) } else { None };
            if let Some(d) = &mut df {
                d.set_dont_fragment()?;
            }
            bulk.attach_reuseport_cbpf(program)?;
            Ok(Lanes { bulk, rt, df, single: None })
        })();
        Ok(match group {
            Ok(lanes) => lanes,
            Err(e) => Lanes {
                bulk: Self::bind(addr, port, bulk_bytes)?,
                rt: None,
                df: None,
                single: Some(e),
            },
        })
    }

    /// Sends every datagram with "don't fragment", whatever path MTU the kernel learned
    /// (`IP_PMTUDISC_PROBE`): one too big for the path is dropped on the way (or refused
    /// here, for the local link), never fragmented.
    fn set_dont_fragment(&mut self) -> io::Result<()> {
        const IP_PMTUDISC_PROBE: libc::c_int = 3;
        const IPV6_PMTUDISC_PROBE: libc::c_int = 3;
        let fd = self.fd.as_raw_fd();
        // An IPv6 socket sends IPv4 too (mapped addresses): both levels.
        setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)?;
        if self.v6 {
            setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, IPV6_PMTUDISC_PROBE)?;
        }
        self.dont_fragment = true;
        Ok(())
    }

    /// Whether it sends with "don't fragment" whatever the kernel learned (path MTU probes).
    pub fn is_dont_fragment(&self) -> bool {
        self.dont_fragment
    }

    /// Attaches a classic BPF program choosing the group member for each datagram.
    fn attach_reuseport_cbpf(&self, program: &[libc::sock_filter]) -> io::Result<()> {
        let prog =
            libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr() as *mut _ };
        // SAFETY: prog points at `program`, alive for the call; the kernel copies it.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_REUSEPORT_CBPF,
                (&prog as *const libc::sock_fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as u32,
            )
        };
        if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// A socket for uplink `iface`: bound to that interface (SO_BINDTODEVICE), so what it
    /// sends leaves by it (the interface's route to the destination, whatever the main
    /// table prefers) and it receives only what arrives there; on a port the kernel picks.
    pub fn bind_device(
        addr: Option<IpAddr>,
        iface: &str,
        buf_bytes: usize,
    ) -> Result<Self, UdpError> {
        let uplink = |source| UdpError::Uplink { iface: iface.to_string(), source };
        if iface.is_empty() || iface.len() >= libc::IFNAMSIZ || iface.contains('\0') {
            return Err(uplink(io::Error::other("not an interface name")));
        }
        let sock = Self::bind_with(addr, 0, buf_bytes, false)?;
        // SAFETY: the name's bytes are alive for the call; the kernel copies at most len.
        let r = unsafe {
            libc::setsockopt(
                sock.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                iface.as_ptr().cast(),
                iface.len() as libc::socklen_t,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            let e = match e.raw_os_error() {
                Some(libc::ENODEV) => io::Error::other("no such interface"),
                Some(libc::EPERM) => io::Error::other(
                    "binding to an interface needs CAP_NET_RAW on this kernel (run as root)",
                ),
                _ => e,
            };
            return Err(uplink(e));
        }
        Ok(sock)
    }

    fn bind_with(
        addr: Option<IpAddr>,
        port: u16,
        buf_bytes: usize,
        reuseport: bool,
    ) -> Result<Self, UdpError> {
        let want_v6 = !matches!(addr, Some(IpAddr::V4(_)));
        let (fd, v6) = match Self::socket(want_v6) {
            Ok(fd) => (fd, want_v6),
            Err(e) if want_v6 && addr.is_none() && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                (Self::socket(false).map_err(UdpError::Socket)?, false)
            }
            Err(e) => return Err(UdpError::Socket(e)),
        };
        let raw = fd.as_raw_fd();
        if v6 {
            setsockopt_int(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)
                .map_err(UdpError::Socket)?;
        }
        if reuseport {
            setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)
                .map_err(UdpError::Socket)?;
        }
        for (force, plain) in
            [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)]
        {
            if setsockopt_int(raw, libc::SOL_SOCKET, force, buf_bytes as libc::c_int).is_err() {
                let _ = setsockopt_int(raw, libc::SOL_SOCKET, plain, buf_bytes as libc::c_int);
            }
        }
        let bind_ip = addr.unwrap_or(if v6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        });
        // SAFETY: sockaddr_storage is plain data; zero is valid.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = to_sockaddr(&SocketAddr::new(bind_ip, port), v6, &mut ss);
        // SAFETY: ss holds a valid address of length len.
        if unsafe { libc::bind(raw, (&ss as *const libc::sockaddr_storage).cast(), len) } < 0 {
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EADDRINUSE) {
                UdpError::InUse { port, addr: bind_ip }
            } else {
                UdpError::Bind { addr: bind_ip, port, source: e }
            });
        }
        Ok(Self { fd, v6, dont_fragment: false })
    }

    fn socket(v6: bool) -> io::Result<OwnedFd> {
        let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        // SAFETY: creates a new descriptor that we own at once.
        let fd = unsafe {
            libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is fresh.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    pub fn local_port(&self) -> io::Result<u16> {
        // SAFETY: getsockname writes at most len bytes into ss.
        unsafe {
            let mut ss: libc::sockaddr_storage = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            if libc::getsockname(
                self.fd.as_raw_fd(),
                (&mut ss as *mut libc::sockaddr_storage).cast(),
                &mut len,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(from_sockaddr(&ss).map(|a| a.port()).unwrap_or(0))
        }
    }

    pub fn is_v6(&self) -> bool {
        self.v6
    }

    /// Asks the kernel to coalesce received datagrams of a flow (UDP GRO). False when the
    /// kernel cannot.
    pub fn enable_gro(&self) -> bool {
        setsockopt_int(self.fd.as_raw_fd(), SOL_UDP, UDP_GRO, 1).is_ok()
    }

    /// Asks the kernel for each datagram's IP TOS (IPv6 traffic class): the outer DSCP and
    /// ECN, for RFC 6040 at decapsulation. False when it cannot.
    pub fn enable_recv_tos(&self) -> bool {
        let fd = self.fd.as_raw_fd();
        let v4 = setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_RECVTOS, 1).is_ok();
        let v6 =
            !self.v6 || setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, 1).is_ok();
        v4 && v6
    }

    /// Asks the kernel for the time each datagram arrived (SO_TIMESTAMPNS): how long it
    /// then waited in the socket's queue is the receive side's queue delay. False when it
    /// cannot.
    pub fn enable_rx_timestamps(&self) -> bool {
        setsockopt_int(self.fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1).is_ok()
    }

    /// Sends one datagram to an endpoint, wrapped in a relay header for a relayed one
    /// (control traffic: the copy does not matter here), with IP TTL / hop limit `ttl`
    /// unless it is 0.
    pub fn send_via(&self, bytes: &[u8], to: &Endpoint, ttl: u8) -> io::Result<usize> {
        match to.relay_tag() {
            None => self.send_to(bytes, &to.addr(), ttl),
            Some(tag) => {
                let mut v = relay::header(false, &tag).to_vec();
                v.extend_from_slice(bytes);
                self.send_to(&v, &to.addr(), ttl)
            }
        }
    }

    /// Sends one datagram (injected control traffic); `ttl` as in [`Self::send_via`]. The
    /// TTL goes as a per-datagram option (IP_TTL / IPV6_HOPLIMIT), not a socket option: the
    /// data path shares the socket.
    pub fn send_to(&self, bytes: &[u8], addr: &SocketAddr, ttl: u8) -> io::Result<usize> {
        if !self.v6 && addr.is_ipv6() {
            return Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT));
        }
        // SAFETY: sockaddr_storage is plain data; zero is valid.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = to_sockaddr(addr, self.v6, &mut ss);
        let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut _, iov_len: bytes.len() };
        // An 8-byte-aligned buffer for one int option.
        let mut ctrl = [0u64; 4];
        // SAFETY: msghdr is plain data; zero is valid.
        let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
        h.msg_name = (&mut ss as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = len;
        h.msg_iov = &mut iov;
        h.msg_iovlen = 1;
        if ttl != 0 {
            // An IPv4-mapped destination leaves as IPv4, which takes the IPv4 option.
            let v6_dst = matches!(addr, SocketAddr::V6(a) if a.ip().to_ipv4_mapped().is_none());
            let (level, kind) = if v6_dst {
                (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT)
            } else {
                (libc::IPPROTO_IP, libc::IP_TTL)
            };
            let v = ttl as libc::c_int;
            // SAFETY: ctrl is 32 aligned bytes, more than CMSG_SPACE(4) (24); CMSG_FIRSTHDR
            // of a header whose control length covers it points at its start.
            unsafe {
                h.msg_control = ctrl.as_mut_ptr().cast();
                h.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as _;
                let c = libc::CMSG_FIRSTHDR(&h);
                (*c).cmsg_level = level;
                (*c).cmsg_type = kind;
                (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), v);
            }
        }
        // SAFETY: h points at ss, iov (over bytes) and ctrl, all alive for the call.
        let n = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &h, 0) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }
}

impl AsRawFd for UdpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The fabric port's sockets from [`UdpSocket::bind_lanes`].
pub struct Lanes {
    pub bulk: UdpSocket,
    /// The real-time lane's socket; `None` when not asked for or the kernel refused the
    /// split (`single`).
    pub rt: Option<UdpSocket>,
    /// The "don't fragment" socket for path MTU probes; `None` as `rt`.
    pub df: Option<UdpSocket>,
    pub single: Option<io::Error>,
}

/// Socket buffers of the "don't fragment" socket: it sends a few probes a second.
const DF_SOCKET_BUFFER: usize = 256 << 10;

/// Reusable headers for one recvmmsg / sendmmsg batch.
pub struct MmsgBatch {
    hdrs: Vec<libc::mmsghdr>,
    /// Two per message: [relay header, packet] (only the second for direct packets).
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    relay_hdrs: Vec<[u8; relay::HEADER_LEN]>,
    ctrl: Vec<[u8; CTRL_LEN]>,
    /// Datagrams carried by each header of the last send.
    group: Vec<usize>,
}

// SAFETY: the raw pointers inside are rebuilt before each system call and point into
// buffers the caller passes to that call.
unsafe impl Send for MmsgBatch {}

impl MmsgBatch {
    pub fn new(n: usize) -> Self {
        // SAFETY: mmsghdr, iovec and sockaddr_storage are plain data; zero is valid.
        unsafe {
            Self {
                hdrs: (0..n).map(|_| std::mem::zeroed()).collect(),
                iovs: (0..2 * n).map(|_| std::mem::zeroed()).collect(),
                addrs: (0..n).map(|_| std::mem::zeroed()).collect(),
                relay_hdrs: vec![[0; relay::HEADER_LEN]; n],
                ctrl: vec![[0; CTRL_LEN]; n],
                group: vec![0; n],
            }
        }
    }

    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Points header `i` at its iovecs (`first`, `count` of them) and address storage `i`
    /// (address length `namelen`).
    fn point(&mut self, i: usize, first: usize, count: usize, namelen: libc::socklen_t) {
        let h = &mut self.hdrs[i].msg_hdr;
        h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = namelen;
        h.msg_iov = &mut self.iovs[first];
        h.msg_iovlen = count;
        h.msg_control = std::ptr::null_mut();
        h.msg_controllen = 0;
        h.msg_flags = 0;
    }

    /// Gives header `i` its control buffer (for receiving options).
    fn with_control(&mut self, i: usize) {
        let h = &mut self.hdrs[i].msg_hdr;
        h.msg_control = self.ctrl[i].as_mut_ptr().cast();
        h.msg_controllen = CTRL_LEN as _;
    }

    /// Puts the options of a send on header `i`: UDP_SEGMENT (`seg` bytes per datagram)
    /// when given, and the IP TOS (IPv6 traffic class for an IPv6 destination) when not 0.
    fn with_options(&mut self, i: usize, seg: Option<u16>, tos: u8, v6_dst: bool) {
        let mut at = 0;
        let mut put = |level: libc::c_int, kind: libc::c_int, data: &[u8]| {
            // SAFETY: CMSG_LEN/CMSG_SPACE of at most 4 bytes; two options take at most
            // 2 * CMSG_SPACE(4) = 48 <= CTRL_LEN bytes. The buffer (an array of u8 inside
            // a Vec) may not be aligned for cmsghdr: it is written unaligned.
            unsafe {
                let buf = self.ctrl[i].as_mut_ptr().add(at);
                let hdr = libc::cmsghdr {
                    cmsg_len: libc::CMSG_LEN(data.len() as u32) as _,
                    cmsg_level: level,
                    cmsg_type: kind,
                };
                std::ptr::write_unaligned(buf.cast::<libc::cmsghdr>(), hdr);
                let dst = buf.add(std::mem::size_of::<libc::cmsghdr>());
                std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len());
                at += libc::CMSG_SPACE(data.len() as u32) as usize;
            }
        };
        if let Some(seg) = seg {
            put(SOL_UDP, UDP_SEGMENT, &seg.to_ne_bytes());
        }
        if tos != 0 {
            let v = (tos as libc::c_int).to_ne_bytes();
            if v6_dst {
                put(libc::IPPROTO_IPV6, libc::IPV6_TCLASS, &v);
            } else {
                put(libc::IPPROTO_IP, libc::IP_TOS, &v);
            }
        }
        let h = &mut self.hdrs[i].msg_hdr;
        if at > 0 {
            h.msg_control = self.ctrl[i].as_mut_ptr().cast();
            h.msg_controllen = at as _;
        }
    }

    /// The UDP_GRO segment size (0 when none), the IP TOS (traffic class; 0 when none) and
    /// the receive time (ns; 0 when none) in header `i`'s received options.
    fn options(&self, i: usize) -> (usize, u8, u64) {
        let (mut seg, mut tos, mut stamp) = (0, 0, 0);
        let h = &self.hdrs[i].msg_hdr;
        // msg_controllen is usize on glibc, u32 elsewhere: the cast is for portability.
        #[allow(clippy::unnecessary_cast)]
        let len = (h.msg_controllen as usize).min(CTRL_LEN);
        let buf = &self.ctrl[i][..len];
        let mut at = 0;
        let hdr_size = std::mem::size_of::<libc::cmsghdr>();
        while at + hdr_size <= buf.len() {
            // SAFETY: at + size_of::<cmsghdr>() <= len, read unaligned from our own buffer.
            let c: libc::cmsghdr = unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
            let clen = c.cmsg_len as usize;
            if clen < hdr_size || at + clen > buf.len() {
                break;
            }
            let data = &buf[at + hdr_size..at + clen];
            let int = || data.get(..4).map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")));
            match (c.cmsg_level, c.cmsg_type) {
                (SOL_UDP, UDP_GRO) => seg = int().unwrap_or(0).max(0) as usize,
                // IPv4 gives the byte itself, IPv6 an int.
                (libc::IPPROTO_IP, libc::IP_TOS) => tos = data.first().copied().unwrap_or(0),
                (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) => tos = int().unwrap_or(0) as u8,
                (libc::SOL_SOCKET, libc::SO_TIMESTAMPNS) if data.len() >= 16 => {
                    let word =
                        |k: usize| u64::from_ne_bytes(data[k..k + 8].try_into().expect("8 bytes"));
                    stamp = word(0).saturating_mul(1_000_000_000).saturating_add(word(8));
                }
                _ => {}
            }
            at += clen.next_multiple_of(std::mem::size_of::<usize>());
        }
        (seg, tos, stamp)
    }

    /// Receives into up to `bufs.len()` buffers; fills `len`, `addr` and `seg` of each.
    // Indexing walks parallel arrays (headers, iovecs, addresses, buffers) in step.
    #[allow(clippy::needless_range_loop)]
    pub fn recv(&mut self, sock: &UdpSocket, bufs: &mut [RxBuf]) -> io::Result<usize> {
        let n = bufs.len().min(self.hdrs.len());
        for i in 0..n {
            self.iovs[2 * i] = libc::iovec {
                iov_base: bufs[i].data.as_mut_ptr().cast(),
                iov_len: bufs[i].data.len(),
            };
            self.point(
                i,
                2 * i,
                1,
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
            );
            self.with_control(i);
        }
        // SAFETY: n headers, each pointing at a live buffer, address and control storage.
        let r = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock
                || e.kind() == io::ErrorKind::Interrupted
            {
                Ok(0)
            } else {
                Err(e)
            };
        }
        let r = r as usize;
        for i in 0..r {
            let truncated = self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            bufs[i].len = if truncated { usize::MAX } else { self.hdrs[i].msg_len as usize };
            bufs[i].addr = from_sockaddr(&self.addrs[i]);
            (bufs[i].seg, bufs[i].tos, bufs[i].stamp_ns) = self.options(i);
        }
        Ok(r)
    }

    /// Sends `bufs` (each `data[..len]` to `addr`, behind a relay header when `relay`). With
    /// `gso`, runs of datagrams to one destination of equal size (the last may be shorter)
    /// go as one UDP GSO send: the kernel cuts them, one trip through the stack for all.
    /// Returns how many datagrams the kernel took; an error on the first is returned.
    pub fn send(&mut self, sock: &UdpSocket, bufs: &[PacketBuf], gso: bool) -> io::Result<usize> {
        let cap = self.hdrs.len().min(bufs.len());
        let wire = |b: &PacketBuf| b.len + if b.relay.is_some() { relay::HEADER_LEN } else { 0 };
        let (mut h, mut i) = (0, 0);
        while i < cap {
            let first = &bufs[i];
            let seg = wire(first);
            let mut j = i;
            let mut total = 0;
            while j < cap {
                let b = &bufs[j];
                if j > i {
                    let prev_short = wire(&bufs[j - 1]) < seg;
                    if !gso
                        || prev_short
                        || b.addr != first.addr
                        || b.relay != first.relay
                        || b.tos != first.tos
                        || wire(b) > seg
                        || j - i >= GSO_MAX_SEGMENTS
                        || total + wire(b) > GSO_MAX_BYTES
                    {
                        break;
                    }
                }
                let packet =
                    libc::iovec { iov_base: b.data.as_ptr() as *mut libc::c_void, iov_len: b.len };
                match b.relay {
                    None => {
                        self.iovs[2 * j] = packet;
                        self.iovs[2 * j + 1] =
                            libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
                    }
                    Some(tag) => {
                        // The relay header goes out as its own iovec: the packet is not moved.
                        self.relay_hdrs[j] = relay::header(false, &tag);
                        self.iovs[2 * j] = libc::iovec {
                            iov_base: self.relay_hdrs[j].as_mut_ptr().cast(),
                            iov_len: relay::HEADER_LEN,
                        };
                        self.iovs[2 * j + 1] = packet;
                    }
                }
                total += wire(b);
                j += 1;
            }
            let alen = match &first.addr {
                Some(a) => to_sockaddr(a, sock.v6, &mut self.addrs[h]),
                None => 0,
            };
            self.point(h, 2 * i, 2 * (j - i), alen);
            let v6_dst = first.addr.is_some_and(|a| match a {
                SocketAddr::V4(_) => false,
                SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_none(),
            });
            self.with_options(h, (j - i > 1).then_some(seg as u16), first.tos, v6_dst);
            self.group[h] = j - i;
            h += 1;
            i = j;
        }
        // SAFETY: h headers, each pointing at live iovecs, addresses and control buffers.
        let r = unsafe {
            libc::sendmmsg(sock.as_raw_fd(), self.hdrs.as_mut_ptr(), h as u32, libc::MSG_DONTWAIT)
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.group[..r as usize].iter().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_round_trips_and_maps_ipv4() {
        for (a, v6) in [
            ("10.1.2.3:51820", false),
            ("10.1.2.3:51820", true),
            ("[2001:db8::1]:9", true),
            ("[fe80::1%2]:9", true),
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            // SAFETY: plain data.
            let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            to_sockaddr(&addr, v6, &mut ss);
            assert_eq!(from_sockaddr(&ss), Some(addr), "{a} v6={v6}");
        }
    }

    #[test]
    fn loopback_batch_round_trip() {
        let a = UdpSocket::bind(Some("127.0.0.1".parse().unwrap()), 0, 1 << 20).unwrap();
        let b = UdpSocket::bind(None, 0, 1 << 20).unwrap();
        assert!(b.enable_rx_timestamps());
        let b_addr: SocketAddr = format!("127.0.0.1:{}", b.local_port().unwrap()).parse().unwrap();
        let mut out: Vec<PacketBuf> = (0..4).map(|_| PacketBuf::new()).collect();
        for (i, p) in out.iter_mut().enumerate() {
            p.data[0] = i as u8;
            p.len = 100 + i;
            p.addr = Some(b_addr);
        }
        let mut batch = MmsgBatch::new(8);
        assert_eq!(batch.send(&a, &out, false).unwrap(), 4);
        let mut inb: Vec<RxBuf> = (0..8).map(|_| RxBuf::new(2048)).collect();
        let mut got = 0;
        for _ in 0..100 {
            got += batch.recv(&b, &mut inb[got..]).unwrap();
            if got == 4 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, 4);
        for (i, p) in inb.iter().take(4).enumerate() {
            assert_eq!((p.data[0], p.len), (i as u8, 100 + i));
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            assert!(now.abs_diff(p.stamp_ns) < 5_000_000_000, "stamped {} at {now}", p.stamp_ns);
            assert_eq!(
                p.addr.unwrap().ip(),
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "mapped back to IPv4"
            );
        }
    }

    /// The kernel runs the steering program: EF (and CS5-CS7) datagrams land on the
    /// real-time socket, the rest on the bulk one, over IPv4 and IPv6 loopback.
    #[test]
    fn lanes_split_arriving_datagrams_by_outer_dscp() {
        let prog = crate::steer::program(crate::steer::real_time_dscps(&Default::default()));
        let lanes = UdpSocket::bind_lanes(None, 0, 1 << 20, Some(1 << 18), true, &prog).unwrap();
        if let Some(e) = &lanes.single {
            panic!("this kernel refused the reuseport group: {e}");
        }
        let rt = lanes.rt.as_ref().unwrap();
        let port = lanes.bulk.local_port().unwrap();
        assert_eq!(rt.local_port().unwrap(), port, "one port, two sockets");
        // A second node on the same port is refused, as without lanes.
        assert!(matches!(
            UdpSocket::bind_lanes(None, port, 1 << 20, Some(1 << 18), false, &prog),
            Err(UdpError::InUse { .. })
        ));
        let sender = UdpSocket::bind(None, 0, 1 << 20).unwrap();
        let mut batch = MmsgBatch::new(4);
        let mut inb: Vec<RxBuf> = (0..4).map(|_| RxBuf::new(2048)).collect();
        for to in ["127.0.0.1", "::1"] {
            let to: SocketAddr = SocketAddr::new(to.parse().unwrap(), port);
            for (tos, want_rt) in [(0xb8u8, true), (0x00, false), (0xc0, true), (0x20, false)] {
                let mut p = PacketBuf::new();
                (p.len, p.addr, p.tos) = (64, Some(to), tos);
                p.data[0] = tos;
                assert_eq!(batch.send(&sender, std::slice::from_ref(&p), false).unwrap(), 1);
                let (hit, miss) = if want_rt { (rt, &lanes.bulk) } else { (&lanes.bulk, rt) };
                let mut n = 0;
                for _ in 0..200 {
                    n = batch.recv(hit, &mut inb).unwrap();
                    if n > 0 {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                assert_eq!(n, 1, "TOS {tos:#x} to {to}: not on the {} socket", want_rt);
                assert_eq!(inb[0].data[0], tos);
                assert_eq!(batch.recv(miss, &mut inb).unwrap(), 0, "TOS {tos:#x}: one copy");
            }
        }
    }

    /// Equal-size datagrams to one destination go as one GSO send; the receiver, with GRO,
    /// may get them coalesced and splits them by the segment size. Either way every
    /// datagram arrives intact.
    #[test]
    fn gso_send_and_gro_receive() {
        let a = UdpSocket::bind(Some("127.0.0.1".parse().unwrap()), 0, 1 << 22).unwrap();
        let b = UdpSocket::bind(Some("127.0.0.1".parse().unwrap()), 0, 1 << 22).unwrap();
        let gro = b.enable_gro();
        let b_addr: SocketAddr = format!("127.0.0.1:{}", b.local_port().unwrap()).parse().unwrap();
        let mut out: Vec<PacketBuf> = (0..20).map(|_| PacketBuf::new()).collect();
        for (i, p) in out.iter_mut().enumerate() {
            p.len = if i == 19 { 300 } else { 1400 };
            p.data[..p.len].fill(i as u8);
            p.addr = Some(b_addr);
        }
        out[10].relay = None;
        let mut batch = MmsgBatch::new(32);
        assert_eq!(batch.send(&a, &out, true).unwrap(), 20);
        let mut inb: Vec<RxBuf> = (0..8).map(|_| RxBuf::new(65_536)).collect();
        let mut got: Vec<Vec<u8>> = vec![];
        for _ in 0..200 {
            let n = batch.recv(&b, &mut inb).unwrap();
            for r in &inb[..n] {
                let step = if r.seg > 0 { r.seg } else { r.len };
                got.extend(r.data[..r.len].chunks(step).map(|c| c.to_vec()));
            }
            if got.len() >= 20 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got.len(), 20, "gro={gro}");
        for (i, d) in got.iter().enumerate() {
            assert_eq!(d.len(), if i == 19 { 300 } else { 1400 });
            assert!(d.iter().all(|&x| x == i as u8), "datagram {i}");
        }
    }

    #[test]
    fn port_in_use_is_a_clear_error() {
        let a = UdpSocket::bind(Some("127.0.0.1".parse().unwrap()), 0, 1 << 16).unwrap();
        let port = a.local_port().unwrap();
        let err = UdpSocket::bind(Some("127.0.0.1".parse().unwrap()), port, 1 << 16).err().unwrap();
        assert!(err.to_string().contains("already in use"), "{err}");
    }
}
