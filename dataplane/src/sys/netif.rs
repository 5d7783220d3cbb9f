//! The host's interface addresses (getifaddrs).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

#[cfg(test)]
mod tests {
    #[test]
    fn lists_no_loopback() {
        let a = super::local_addresses(&[]);
        assert!(a.iter().all(|ip| !ip.is_loopback()));
    }
}

/// The kernel's index of interface `name` in this network namespace, or 0 when there is
/// none (as `if_nametoindex`).
pub fn if_index(name: &str) -> u32 {
    let Ok(c) = std::ffi::CString::new(name) else { return 0 };
    // SAFETY: c is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

#[cfg(test)]
mod if_index_tests {
    use super::*;

    #[test]
    fn loopback_has_an_index_and_nonsense_has_none() {
        assert!(if_index("lo") > 0);
        assert_eq!(if_index("no-such-if0"), 0);
        assert_eq!(if_index("bad\0name"), 0);
    }
}
