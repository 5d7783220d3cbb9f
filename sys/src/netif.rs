//! The host's interfaces: their addresses (getifaddrs), their indices, and the MTU of the
//! route towards an address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

/// Unicast addresses of interfaces that are up, except loopback, IPv6 link-local, and the
/// interfaces named in `exclude` (the fabric's own TAP).
pub fn local_addresses(exclude: &[&str]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we walk read-only and free exactly once below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return out;
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: cur points into the list getifaddrs returned, which lives until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null()
            || ifa.ifa_flags & libc::IFF_UP as u32 == 0
            || ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0
        {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy();
        if exclude.iter().any(|e| *e == name) {
            continue;
        }
        // SAFETY: ifa_addr is non-null and its family tells which sockaddr it is.
        let ip = unsafe {
            match (*ifa.ifa_addr).sa_family as libc::c_int {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    IpAddr::V4(Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()))
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    let a = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                    if a.segments()[0] & 0xffc0 == 0xfe80 {
                        continue;
                    }
                    IpAddr::V6(a)
                }
                _ => continue,
            }
        };
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    // SAFETY: ifap came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(ifap) };
    out
}

/// The kernel's index of interface `name` in this network namespace, or 0 when there is
/// none (as `if_nametoindex`).
pub fn if_index(name: &str) -> u32 {
    let Ok(c) = std::ffi::CString::new(name) else { return 0 };
    // SAFETY: c is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// The MTU of the route towards `addr` (IP_MTU / IPV6_MTU of a connected UDP socket: the
/// connect sends nothing), which is the underlay MTU the fabric must fit into.
pub fn route_mtu(addr: &SocketAddr) -> Option<u32> {
    let local: SocketAddr =
        if addr.is_ipv6() { "[::]:0".parse().ok()? } else { "0.0.0.0:0".parse().ok()? };
    let socket = std::net::UdpSocket::bind(local).ok()?;
    socket.connect(addr).ok()?;
    let (level, name) = if addr.is_ipv6() {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU)
    };
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes, one c_int, into `mtu`.
    let r = unsafe {
        libc::getsockopt(socket.as_raw_fd(), level, name, (&raw mut mtu).cast(), &mut len)
    };
    (r == 0 && mtu > 0).then_some(mtu as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_no_loopback() {
        assert!(local_addresses(&[]).iter().all(|ip| !ip.is_loopback()));
    }

    #[test]
    fn loopback_has_an_index_and_nonsense_has_none() {
        assert!(if_index("lo") > 0);
        assert_eq!(if_index("no-such-if0"), 0);
        assert_eq!(if_index("bad\0name"), 0);
    }

    #[test]
    fn loopback_route_has_an_mtu() {
        assert!(route_mtu(&"127.0.0.1:9".parse().unwrap()).unwrap() >= 1500);
    }
}
