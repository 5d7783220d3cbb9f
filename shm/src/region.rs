//! Mapping the region file, and the role locks that keep one process per role.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::counters::WorkerCounters;
use crate::fdb::FdbEntry;
use crate::layout::{
    HEADER_SIZE, Header, Layout, LayoutError, MAGIC, Params, PeerStats, RingId, SessionSlot,
    VERSION,
};
use crate::ring::{Consumer, Producer, RawSlots, RingCtl};
use crate::sync::Ordering;
use omni_sys::{Mapping, flock};

#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error(
        "shared-memory region {path} is incompatible ({reason}) and in use; stop the \
         omni-daemon / omni-dataplane using run directory {dir} first"
    )]
    Incompatible { path: PathBuf, dir: PathBuf, reason: String },
    #[error("{0}")]
    Layout(#[from] LayoutError),
    #[error(
        "another {role} (pid {pid}) is already running with this run directory ({path}); stop it or use another --run-dir"
    )]
    RoleHeld { role: &'static str, pid: String, path: PathBuf },
}

fn io_err<'p>(
    what: &'static str,
    path: &'p Path,
) -> impl FnOnce(std::io::Error) -> RegionError + 'p {
    move |source| RegionError::Io { what, path: path.to_path_buf(), source }
}

/// The mapped region.
pub struct Region {
    map: Mapping,
    layout: Layout,
    path: PathBuf,
    _file: File,
}

impl Region {
    /// Opens the region at `path`, creating it with `params` if the file is missing or
    /// empty. An existing file of another version or a corrupt one is recreated only when
    /// `may_reinit` (no other process can have it mapped).
    pub fn open(path: &Path, params: Params, may_reinit: bool) -> Result<Self, RegionError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(io_err("cannot open shared-memory file", path))?;
        // Serialise creation against a process opening the same file at the same moment.
        flock(file.as_raw_fd(), libc::LOCK_EX).map_err(io_err("cannot lock", path))?;
        let result = Self::open_locked(file, path, params, may_reinit);
        // The lock is released when the file is closed or explicitly here.
        if let Ok(r) = &result {
            let _ = flock(r._file.as_raw_fd(), libc::LOCK_UN);
        }
        result
    }

    fn open_locked(
        file: File,
        path: &Path,
        params: Params,
        may_reinit: bool,
    ) -> Result<Self, RegionError> {
        let len = file.metadata().map_err(io_err("cannot stat", path))?.len() as usize;
        let mut reason = String::from("empty");
        if len >= HEADER_SIZE {
            let head =
                Mapping::new(file.as_raw_fd(), HEADER_SIZE).map_err(io_err("cannot map", path))?;
            // SAFETY: the mapping is page aligned and at least HEADER_SIZE bytes, which holds
            // a Header (checked at compile time); all fields are atomics.
            let h = unsafe { &*(head.as_ptr() as *const Header) };
            if h.magic.load(Ordering::Acquire) != MAGIC {
                reason = "bad magic".into();
            } else if h.version.load(Ordering::Relaxed) != VERSION {
                reason = format!(
                    "version {} (this build uses {VERSION})",
                    h.version.load(Ordering::Relaxed)
                );
            } else {
                match Layout::from_header(h) {
                    Ok(layout) if layout.size == len => {
                        drop(head);
                        let map = Mapping::new(file.as_raw_fd(), len)
                            .map_err(io_err("cannot map", path))?;
                        return Ok(Self { map, layout, path: path.to_path_buf(), _file: file });
                    }
                    Ok(_) => reason = "size disagrees with header".into(),
                    Err(e) => reason = e.to_string(),
                }
            }
        }
        if len > 0 && !may_reinit {
            let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
            return Err(RegionError::Incompatible { path: path.to_path_buf(), dir, reason });
        }
        let layout = Layout::compute(params)?;
        file.set_len(0).map_err(io_err("cannot truncate", path))?;
        file.set_len(layout.size as u64).map_err(io_err("cannot size", path))?;
        let map =
            Mapping::new(file.as_raw_fd(), layout.size).map_err(io_err("cannot map", path))?;
        let region = Self { map, layout, path: path.to_path_buf(), _file: file };
        layout.write_header(region.header(), rand::random());
        region.header().magic.store(MAGIC, Ordering::Release);
        Ok(region)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn params(&self) -> &Params {
        &self.layout.params
    }

    /// # Safety
    /// `off` must be within the mapping, aligned for `T`, and the bytes there must be used
    /// only as a `T` (all layout offsets satisfy this).
    unsafe fn at<T>(&self, off: usize) -> &T {
        debug_assert!(off + std::mem::size_of::<T>() <= self.map.len());
        debug_assert_eq!(off % std::mem::align_of::<T>(), 0);
        // SAFETY: per the function's contract.
        unsafe { &*(self.map.as_ptr().add(off) as *const T) }
    }

    pub fn header(&self) -> &Header {
        // SAFETY: offset 0, page aligned, HEADER_SIZE >= size_of::<Header>().
        unsafe { self.at(0) }
    }

    pub fn counters(&self, worker: usize) -> &WorkerCounters {
        assert!(worker < self.layout.params.n_workers as usize);
        // SAFETY: in the counters block (layout), 128-aligned.
        unsafe {
            self.at(self.layout.off_counters + worker * std::mem::size_of::<WorkerCounters>())
        }
    }

    pub fn peer_stats(&self, worker: usize, peer: u16) -> Option<&PeerStats> {
        let p = &self.layout.params;
        if worker >= p.n_workers as usize || peer as u32 >= p.max_peers {
            return None;
        }
        let i = worker * p.max_peers as usize + peer as usize;
        // SAFETY: in the peer-stats block, 64-aligned elements.
        Some(unsafe { self.at(self.layout.off_peer_stats + i * std::mem::size_of::<PeerStats>()) })
    }

    pub fn session_slot(&self, slot: usize) -> Option<&SessionSlot> {
        if slot >= self.layout.params.max_sessions as usize {
            return None;
        }
        // SAFETY: in the session block, 8-aligned elements.
        Some(unsafe {
            self.at(self.layout.off_sessions + slot * std::mem::size_of::<SessionSlot>())
        })
    }

    pub fn fdb_entries(&self) -> &[FdbEntry] {
        let n = self.layout.params.fdb_capacity as usize;
        // SAFETY: the FDB block holds n entries at an aligned offset; FdbEntry is atomics.
        unsafe {
            std::slice::from_raw_parts(
                self.map.as_ptr().add(self.layout.off_fdb) as *const FdbEntry,
                n,
            )
        }
    }

    pub fn fdb_seed(&self) -> u64 {
        self.header().fdb_seed.load(Ordering::Relaxed)
    }

    fn ring(&self, worker: usize, id: RingId) -> (&RingCtl, RawSlots) {
        assert!(worker < self.layout.params.n_workers as usize);
        let (off, cap) = self.layout.ring(worker, id);
        // SAFETY: the ring's control block sits at a 128-aligned offset of its ring and the
        // slots follow it, all inside the mapping, used only through this ring.
        unsafe {
            let ctl = self.at::<RingCtl>(off);
            let slots = RawSlots::new(
                self.map.as_ptr().add(off + std::mem::size_of::<RingCtl>()),
                id.slot_size(),
                cap,
            );
            (ctl, slots)
        }
    }

    /// The data plane's ends of worker `w`'s rings. Only the process holding the data-plane
    /// role lock may call this.
    pub fn dataplane_ends(&self, w: usize) -> DataplaneEnds<'_> {
        let [cmd, inject, event, punt] =
            [RingId::Command, RingId::Inject, RingId::Event, RingId::Punt]
                .map(|id| self.ring(w, id));
        DataplaneEnds {
            cmd: Consumer::attach(cmd.0, cmd.1),
            inject: Consumer::attach(inject.0, inject.1),
            event: Producer::attach(event.0, event.1),
            punt: Producer::attach(punt.0, punt.1),
        }
    }

    /// Control's ends of worker `w`'s rings. Only the process holding the control role lock
    /// may call this.
    pub fn control_ends(&self, w: usize) -> ControlEnds<'_> {
        let [cmd, inject, event, punt] =
            [RingId::Command, RingId::Inject, RingId::Event, RingId::Punt]
                .map(|id| self.ring(w, id));
        ControlEnds {
            cmd: Producer::attach(cmd.0, cmd.1),
            inject: Producer::attach(inject.0, inject.1),
            event: Consumer::attach(event.0, event.1),
            punt: Consumer::attach(punt.0, punt.1),
        }
    }
}

pub struct DataplaneEnds<'a> {
    pub cmd: Consumer<'a, RawSlots>,
    pub inject: Consumer<'a, RawSlots>,
    pub event: Producer<'a, RawSlots>,
    pub punt: Producer<'a, RawSlots>,
}

pub struct ControlEnds<'a> {
    pub cmd: Producer<'a, RawSlots>,
    pub inject: Producer<'a, RawSlots>,
    pub event: Consumer<'a, RawSlots>,
    pub punt: Consumer<'a, RawSlots>,
}

/// An exclusive lock on a role (`daemon.lock`, `dataplane.lock`), held for the life of the
/// process and released by the kernel when it dies, however it dies.
pub struct RoleLock {
    _file: File,
}

impl RoleLock {
    pub fn acquire(path: &Path, role: &'static str) -> Result<Self, RegionError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(io_err("cannot open lock file", path))?;
        if !flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB)
            .map_err(io_err("cannot lock", path))?
        {
            let pid = Self::holder_pid(path).map(|p| p.to_string()).unwrap_or_else(|| "?".into());
            return Err(RegionError::RoleHeld { role, pid, path: path.to_path_buf() });
        }
        file.set_len(0).map_err(io_err("cannot write", path))?;
        let _ = file.rewind();
        let _ = writeln!(file, "{}", std::process::id());
        Ok(Self { _file: file })
    }

    /// Whether some live process holds the lock at `path`.
    pub fn is_held(path: &Path) -> bool {
        let Ok(file) = File::open(path) else { return false };
        match flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) {
            Ok(true) => false, // we got it, so nobody holds it; closing releases it
            Ok(false) => true,
            Err(_) => false,
        }
    }

    /// The pid written by the holder.
    pub fn holder_pid(path: &Path) -> Option<u32> {
        let mut s = String::new();
        File::open(path).ok()?.read_to_string(&mut s).ok()?;
        s.trim().parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("omni-region-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn create_attach_and_share() {
        let d = tmp("share");
        let p = d.join("r.shm");
        let params = Params::for_peers(16);
        let a = Region::open(&p, params, false).unwrap();
        let b = Region::open(&p, Params::for_peers(999), false).unwrap();
        assert_eq!(b.params(), &params, "attacher takes the creator's layout");
        a.header().dp_port.store(4242, Ordering::Relaxed);
        assert_eq!(b.header().dp_port.load(Ordering::Relaxed), 4242);
        let mut ce = a.control_ends(0);
        let mut de = b.dataplane_ends(0);
        ce.cmd.push(&[1, 2, 3]).unwrap();
        assert_eq!(de.cmd.pop_with(|s| s[..3].to_vec()).unwrap(), Some(vec![1, 2, 3]));
        let mode = std::fs::metadata(&p).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn incompatible_file_is_refused_or_reinitialised() {
        let d = tmp("incompat");
        let p = d.join("r.shm");
        std::fs::write(&p, vec![0xabu8; 8192]).unwrap();
        let err = Region::open(&p, Params::for_peers(4), false).err().unwrap();
        assert!(err.to_string().contains("bad magic"), "{err}");
        let r = Region::open(&p, Params::for_peers(4), true).unwrap();
        assert_eq!(r.params().max_peers, 4);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn role_lock_is_exclusive() {
        let d = tmp("lock");
        let p = d.join("x.lock");
        assert!(!RoleLock::is_held(&p));
        let l = RoleLock::acquire(&p, "test").unwrap();
        assert!(RoleLock::is_held(&p));
        assert_eq!(RoleLock::holder_pid(&p), Some(std::process::id()));
        // flock locks belong to the open file description, so a second open in the same
        // process conflicts too.
        let err = RoleLock::acquire(&p, "test").err().unwrap();
        assert!(err.to_string().contains("already running"), "{err}");
        drop(l);
        assert!(!RoleLock::is_held(&p));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
