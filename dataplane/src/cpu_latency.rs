//! A request to the kernel's CPU idle governor: while the data plane forwards traffic, idle
//! CPUs should poll instead of entering idle states that are slow to leave.
//!
//! Why: a frame through the fabric crosses a pipeline of processes (application → TAP →
//! data plane → UDP → the peer's data plane → TAP → application), and under load each stage
//! waits for the one before it thousands of times a second. Each wait can idle a CPU; under a
//! hypervisor the deepest idle state halts the vCPU, and waking it means the host has to
//! schedule it again (340-470 µs measured on the 2-core VM this was built on). Kernel
//! tunnels run their whole path in softirq and never pay this. The kernel's PM QoS interface
//! (`/dev/cpu_dma_latency`) lets a process bound the exit latency of idle states for as long
//! as it keeps the file open; a bound of 0 leaves only polling idle. On that VM, TCP through
//! two socket-backend nodes went from 6.4 to 7.4 Gbit/s with it (MTU 1500), while kernel VXLAN
//! did not change.
//!
//! The request is machine-wide and costs power while held, so by default ([`Mode::Busy`]) it
//! is held only while the data plane handles more than [`BusyDetector::BUSY_PER_WINDOW`]
//! units of work (a datagram or super-datagram read, a TAP read, an injected packet) per
//! [`BusyDetector::WINDOW_MS`] (bulk transfers; not pings, not a 1 kHz control loop), and
//! dropped after
//! [`BusyDetector::RELEASE_AFTER_MS`] below that. [`Mode::Always`] holds it for the data
//! plane's life (lowest idle latency, e.g. for control loops over the fabric); [`Mode::Off`]
//! never asks. The device is opened once at start (it needs root, and the data plane drops
//! its capabilities afterwards); the kernel ends the request when the process exits, however
//! it exits, so nothing outlives the data plane.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use tracing::{debug, warn};

/// The kernel's PM QoS device for the CPU latency bound.
pub const DEVICE: &str = "/dev/cpu_dma_latency";

/// The value that means "no bound" (`PM_QOS_CPU_LATENCY_DEFAULT_VALUE`, µs).
const NO_BOUND_US: i32 = 2_000_000_000;

pub use omni_shm::settings::CpuLatency as Mode;

/// Decides from the work each loop pass did whether traffic is flowing.
///
/// Time is cut in windows of [`Self::WINDOW_MS`]; a window with at least
/// [`Self::BUSY_PER_WINDOW`] units of work is busy. The request starts with the first busy window
/// and ends once no window has been busy for [`Self::RELEASE_AFTER_MS`]. Per pass this is an
/// add and a compare.
#[derive(Debug, Clone, Default)]
pub struct BusyDetector {
    window_start_ms: u64,
    packets: u64,
    last_busy_ms: u64,
    busy: bool,
}

impl BusyDetector {
    pub const WINDOW_MS: u64 = 100;
    /// 500 in 100 ms: 5,000 a second. One TCP stream at 1 Gbit/s moves ~2,000 64 KB TAP
    /// reads and as many received super-datagrams a second; a 1 kHz control loop ~2,000.
    pub const BUSY_PER_WINDOW: u64 = 500;
    pub const RELEASE_AFTER_MS: u64 = 1000;

    /// Adds a pass that did `packets` units of work at `now_ms`; returns `Some(true)` when traffic
    /// starts to flow, `Some(false)` when it has stopped.
    #[inline]
    pub fn note(&mut self, now_ms: u64, packets: usize) -> Option<bool> {
        self.packets += packets as u64;
        if now_ms.saturating_sub(self.window_start_ms) < Self::WINDOW_MS {
            return None;
        }
        let window_busy = self.packets >= Self::BUSY_PER_WINDOW;
        self.window_start_ms = now_ms;
        self.packets = 0;
        if window_busy {
            self.last_busy_ms = now_ms;
            if !self.busy {
                self.busy = true;
                return Some(true);
            }
        } else if self.busy && now_ms.saturating_sub(self.last_busy_ms) >= Self::RELEASE_AFTER_MS {
            self.busy = false;
            return Some(false);
        }
        None
    }

    pub fn busy(&self) -> bool {
        self.busy
    }
}

/// The data plane's request, per [`Mode`].
#[derive(Debug)]
pub struct CpuLatency {
    mode: Mode,
    detector: BusyDetector,
    /// The open device (`None`: off, or unavailable).
    request: Option<File>,
    held: bool,
}

impl CpuLatency {
    /// Opens [`DEVICE`] unless `mode` is off. Where it cannot be opened (no root, a
    /// container without it) the data plane runs as with `off`, after one warning.
    pub fn open(mode: Mode) -> Self {
        Self::open_at(Path::new(DEVICE), mode)
    }

    /// [`Self::open`] on another path (tests).
    pub fn open_at(path: &Path, mode: Mode) -> Self {
        let mut me = Self { mode, detector: BusyDetector::default(), request: None, held: false };
        if mode == Mode::Off {
            return me;
        }
        match std::fs::OpenOptions::new().write(true).open(path) {
            Ok(f) => me.request = Some(f),
            Err(e) => {
                warn!(
                    "cpu latency request unavailable (open {}: {e}); idle CPUs may sleep \
                     deeply between packets, which slows the fabric under a hypervisor. Run \
                     the data plane as root, or set cpu_latency = \"off\" to silence this",
                    path.display()
                );
                return me;
            }
        }
        if mode == Mode::Always {
            me.set(true);
        }
        me
    }

    /// Called once per loop pass with the packets it handled.
    #[inline]
    pub fn note(&mut self, now_ms: u64, packets: usize) {
        // The detector runs in every mode: the loop's polling asks it too.
        if let Some(busy) = self.detector.note(now_ms, packets)
            && self.mode == Mode::Busy
            && self.request.is_some()
        {
            self.set(busy);
        }
    }

    /// Whether bulk traffic flows (by the detector, whatever the mode).
    pub fn bulk_traffic(&self) -> bool {
        self.detector.busy()
    }

    /// Whether the bound of 0 is in force.
    pub fn held(&self) -> bool {
        self.held
    }

    fn set(&mut self, hold: bool) {
        let Some(f) = self.request.as_mut() else { return };
        // The device takes a binary s32 (µs) when written exactly 4 bytes.
        let value = if hold { 0 } else { NO_BOUND_US };
        match f.write_all(&value.to_ne_bytes()) {
            Ok(()) => {
                self.held = hold;
                debug!(held = hold, "cpu latency request");
            }
            Err(e) => {
                warn!("cpu latency request failed ({e}); continuing without it");
                // Closing the file ends whatever request is in force.
                self.request = None;
                self.held = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detector_starts_on_a_busy_window_and_stops_a_second_after_the_last() {
        let mut d = BusyDetector::default();
        // Light traffic (a ping every 100 ms) never counts as flowing.
        for t in (0..3000).step_by(100) {
            assert_eq!(d.note(t, 1), None, "t={t}");
        }
        // 200 packets a millisecond: busy at the end of the first full window.
        let mut started = None;
        for t in 3000..3300 {
            if let Some(b) = d.note(t, 200) {
                assert!(b);
                started.get_or_insert(t);
            }
        }
        assert_eq!(started, Some(3100), "the first window of the traffic closes at 3100");
        assert!(d.busy());
        // Traffic stops at 3300: held for RELEASE_AFTER_MS after the last busy window.
        let mut stopped = None;
        for t in 3300..6000 {
            if let Some(b) = d.note(t, 0) {
                assert!(!b);
                assert!(stopped.replace(t).is_none(), "stopped twice");
            }
        }
        let stopped = stopped.expect("released");
        assert!((4300..=4400).contains(&stopped), "released at {stopped}");
        assert!(!d.busy());
        // A pass that comes late (the loop slept in epoll for a second) closes the window
        // with what it handled.
        assert_eq!(d.note(7000, 5000), Some(true));
        assert_eq!(d.note(7100, 0), None);
    }

    #[test]
    fn a_control_loop_is_not_bulk_traffic() {
        // 1 kHz, a message each way: two units of work a millisecond.
        let mut d = BusyDetector::default();
        for t in 0..5000 {
            assert_eq!(d.note(t, 2), None, "t={t}");
        }
        // Bulk traffic (a 64 KB TAP read and a super-datagram every 200 µs, ~2.6 Gbit/s) is.
        assert!((5000..5200).any(|t| d.note(t, 10) == Some(true)));
    }

    #[test]
    fn writes_the_bound_the_kernel_expects() {
        let dir = std::env::temp_dir().join(format!("omni-cpulat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dev");
        std::fs::write(&path, b"").unwrap();

        let always = CpuLatency::open_at(&path, Mode::Always);
        assert!(always.held());
        assert_eq!(std::fs::read(&path).unwrap(), 0i32.to_ne_bytes());
        drop(always);

        std::fs::write(&path, b"").unwrap();
        let mut busy = CpuLatency::open_at(&path, Mode::Busy);
        assert!(!busy.held());
        busy.note(100, 5000);
        assert!(busy.held());
        for t in 101..1300 {
            busy.note(t, 0);
        }
        assert!(!busy.held());
        let mut expected = 0i32.to_ne_bytes().to_vec();
        expected.extend_from_slice(&NO_BOUND_US.to_ne_bytes());
        assert_eq!(std::fs::read(&path).unwrap(), expected);

        let off = CpuLatency::open_at(&path, Mode::Off);
        assert!(off.request.is_none());
        // Unavailable: inert, no panic.
        let mut missing = CpuLatency::open_at(&dir.join("absent"), Mode::Busy);
        missing.note(100, 5000);
        assert!(!missing.held());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// On the real device (root): the bound is in force while held and gone when dropped.
    #[test]
    fn the_kernel_applies_and_ends_the_request() {
        use std::io::Read;
        let read = || -> Option<i32> {
            let mut b = [0u8; 4];
            File::open(DEVICE).ok()?.read_exact(&mut b).ok()?;
            Some(i32::from_ne_bytes(b))
        };
        let Some(before) = read() else {
            eprintln!("skipped: {DEVICE} not readable (needs root)");
            return;
        };
        let held = CpuLatency::open(Mode::Always);
        assert!(held.held());
        assert_eq!(read(), Some(0));
        drop(held);
        assert_eq!(read(), Some(before));
    }
}
