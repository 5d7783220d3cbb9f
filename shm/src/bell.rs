//! Doorbells: a Unix datagram socket per process in the run directory. A producer that
//! sees the consumer parked sends one byte to its bell; the consumer's event loop wakes on
//! it. Errors are ignored on purpose: a missing peer just means nobody is parked there.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

pub const DATAPLANE_BELL: &str = "dataplane.bell";
pub const DAEMON_BELL: &str = "daemon.bell";

pub struct Bell {
    sock: UnixDatagram,
    target: PathBuf,
}

impl Bell {
    /// Binds our bell at `own` (replacing a stale socket file) and aims at `target`.
    pub fn bind(own: &Path, target: &Path) -> io::Result<Self> {
        let _ = std::fs::remove_file(own);
        let sock = UnixDatagram::bind(own)?;
        sock.set_nonblocking(true)?;
        Ok(Self { sock, target: target.to_path_buf() })
    }

    /// Wakes the other process.
    pub fn ring(&self) {
        let _ = self.sock.send_to(&[1], &self.target);
    }

    /// Consumes pending rings.
    pub fn drain(&self) {
        let mut b = [0u8; 64];
        while self.sock.recv(&mut b).is_ok() {}
    }

    pub fn into_socket(self) -> (UnixDatagram, PathBuf) {
        (self.sock, self.target)
    }
}

impl AsRawFd for Bell {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}
