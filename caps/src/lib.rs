//! Dropping Linux capabilities once setup is done (issue 7, "Privileges"): used by the
//! data plane, the control daemon and the Nucleus. All of its `unsafe` (capget/capset,
//! prctl) is here, each with its `SAFETY` line.
//!
//! Capabilities belong to a thread, not a process: [`restrict`] changes the calling
//! thread's sets, and threads started afterwards inherit them. Call it before starting
//! any other thread ([`thread_count`] says whether that still holds).
//!
//! What each process keeps is decided by its caller; see "Privileges" in
//! docs/reliability.md for the table per backend.

use std::fmt;
use std::io;

/// The capabilities OmniNervous ever needs (numbers from `linux/capability.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Cap {
    /// Changing the bounding set: a data plane empties its own once set up.
    SetPcap = 8,
    /// Binding a fabric or metrics port below 1024.
    NetBindService = 10,
    /// Creating and configuring the TAP, forced socket buffers, attaching XDP.
    NetAdmin = 12,
    /// AF_XDP sockets.
    NetRaw = 13,
    /// UMEM registration beyond RLIMIT_MEMLOCK.
    IpcLock = 14,
    /// Port I/O (legacy virtio PCI devices under DPDK).
    SysRawio = 17,
    /// BPF on kernels without CAP_BPF; physical addresses for DPDK's PA-mode PCI drivers.
    SysAdmin = 21,
    /// A negative nice value for the data plane's I/O thread.
    SysNice = 23,
    /// The verifier accepts the XDP program's packet pointer arithmetic only with it.
    Perfmon = 38,
    /// Loading the XDP program, creating and updating its maps.
    Bpf = 39,
}

impl Cap {
    pub fn name(self) -> &'static str {
        match self {
            Cap::SetPcap => "cap_setpcap",
            Cap::NetBindService => "cap_net_bind_service",
            Cap::NetAdmin => "cap_net_admin",
            Cap::NetRaw => "cap_net_raw",
            Cap::IpcLock => "cap_ipc_lock",
            Cap::SysRawio => "cap_sys_rawio",
            Cap::SysAdmin => "cap_sys_admin",
            Cap::SysNice => "cap_sys_nice",
            Cap::Perfmon => "cap_perfmon",
            Cap::Bpf => "cap_bpf",
        }
    }

    const ALL: [Cap; 10] = [
        Cap::SetPcap,
        Cap::NetBindService,
        Cap::NetAdmin,
        Cap::NetRaw,
        Cap::IpcLock,
        Cap::SysRawio,
        Cap::SysAdmin,
        Cap::SysNice,
        Cap::Perfmon,
        Cap::Bpf,
    ];
}

/// A set of capabilities, as the kernel's 64-bit masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapSet(pub u64);

impl CapSet {
    pub const EMPTY: CapSet = CapSet(0);

    pub fn of(caps: &[Cap]) -> Self {
        CapSet(caps.iter().fold(0, |m, c| m | 1 << *c as u8))
    }

    pub fn contains(self, cap: u8) -> bool {
        self.0 & (1 << cap) != 0
    }

    pub fn union(self, other: CapSet) -> CapSet {
        CapSet(self.0 | other.0)
    }
}

impl fmt::Display for CapSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("none");
        }
        let mut first = true;
        for c in Cap::ALL.iter().filter(|c| self.contains(**c as u8)) {
            if !first {
                f.write_str(",")?;
            }
            f.write_str(c.name())?;
            first = false;
        }
        let known = CapSet::of(&Cap::ALL).0;
        if self.0 & !known != 0 {
            write!(f, "{}0x{:x}", if first { "" } else { ",+" }, self.0 & !known)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("cannot {what}: {source} (running without CAP_SETPCAP, e.g. in a container?)")]
    Syscall { what: &'static str, source: io::Error },
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAP_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The highest capability number this kernel knows.
fn last_cap() -> u8 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Whether this process runs as root (effective user 0): what decides, before anything
/// else, whether there are capabilities to drop.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether this kernel has a capability (CAP_BPF and CAP_PERFMON came in Linux 5.8).
pub fn kernel_has(cap: Cap) -> bool {
    cap as u8 <= last_cap()
}

/// Threads of this process (capabilities set now reach only this one and later ones).
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(1)
}

fn prctl(what: &'static str, op: libc::c_int, a: libc::c_ulong) -> Result<(), CapsError> {
    // SAFETY: prctl with integer arguments only; the kernel validates them.
    let r =
        unsafe { libc::prctl(op, a, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if r < 0 {
        return Err(CapsError::Syscall { what, source: io::Error::last_os_error() });
    }
    Ok(())
}

/// Leaves the calling thread (and threads it starts later) with `permitted` capabilities,
/// of which `effective` are in force; limits the bounding set (what any program this
/// process executes can get) to `bounding`; clears the ambient and inheritable sets and
/// sets no_new_privs. `effective` and `bounding` are cut to `permitted`'s and the
/// kernel's capabilities.
pub fn restrict(permitted: CapSet, effective: CapSet, bounding: CapSet) -> Result<(), CapsError> {
    let last = last_cap();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes next.
    for cap in 0..=last {
        // SAFETY: prctl with integer arguments only.
        let present = unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap)) } == 1;
        if present && !bounding.contains(cap) {
            prctl("drop from the bounding set", libc::PR_CAPBSET_DROP, cap.into())?;
        }
    }
    prctl(
        "clear the ambient set",
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    )?;
    capset(CapSet(effective.0 & permitted.0), permitted)?;
    prctl("set no_new_privs", libc::PR_SET_NO_NEW_PRIVS, 1)
}

fn capset(effective: CapSet, permitted: CapSet) -> Result<(), CapsError> {
    let header = CapHeader { version: CAP_VERSION_3, pid: 0 };
    let word = |set: CapSet, hi: bool| (if hi { set.0 >> 32 } else { set.0 }) as u32;
    let data = [false, true].map(|hi| CapData {
        effective: word(effective, hi),
        permitted: word(permitted, hi),
        inheritable: 0,
    });
    // SAFETY: capset reads one version-3 header and two data words, both live here.
    let r = unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    if r < 0 {
        let source = io::Error::last_os_error();
        return Err(CapsError::Syscall { what: "set capabilities", source });
    }
    Ok(())
}

/// The calling thread's (effective, permitted) sets.
pub fn current() -> io::Result<(CapSet, CapSet)> {
    let header = CapHeader { version: CAP_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two data words into `data`, which is large enough.
    let r =
        unsafe { libc::syscall(libc::SYS_capget, &header as *const CapHeader, data.as_mut_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |lo: u32, hi: u32| CapSet(u64::from(lo) | u64::from(hi) << 32);
    Ok((join(data[0].effective, data[1].effective), join(data[0].permitted, data[1].permitted)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_and_names() {
        let s = CapSet::of(&[Cap::NetAdmin, Cap::Bpf]);
        assert_eq!(s.0, 1 << 12 | 1 << 39);
        assert!(s.contains(39) && !s.contains(13));
        assert_eq!(s.to_string(), "cap_net_admin,cap_bpf");
        assert_eq!(CapSet::EMPTY.to_string(), "none");
        assert_eq!(CapSet(1 << 1).to_string(), "0x2");
    }

    /// In a thread of its own (capabilities are per thread): after `restrict`, the thread
    /// holds exactly what it kept, and cannot take back what it dropped.
    #[test]
    fn restrict_drops_for_good() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        std::thread::spawn(|| {
            let keep = CapSet::of(&[Cap::NetBindService]);
            restrict(keep, keep, keep).unwrap();
            let (eff, perm) = current().unwrap();
            assert_eq!((eff, perm), (keep, keep));
            // Raising a dropped capability again is refused.
            let more = CapSet::of(&[Cap::NetBindService, Cap::NetAdmin]);
            assert!(capset(more, more).is_err());
            let status = std::fs::read_to_string(format!(
                "/proc/self/task/{}/status",
                // SAFETY: gettid has no preconditions.
                unsafe { libc::gettid() }
            ))
            .unwrap();
            assert!(status.contains("NoNewPrivs:\t1"), "{status}");
            assert!(status.contains("CapBnd:\t0000000000000400"), "{status}");
        })
        .join()
        .unwrap();
        // This (the test's) thread kept its own sets.
        let (eff, _) = current().unwrap();
        assert!(eff.contains(Cap::NetAdmin as u8));
    }
}
