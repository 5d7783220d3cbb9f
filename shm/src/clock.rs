//! The clock shared by both processes: `CLOCK_MONOTONIC` in milliseconds. It is
//! system-wide, so timestamps the data plane writes into shared memory mean the same to the
//! control daemon.

/// Milliseconds of `CLOCK_MONOTONIC`.
#[inline]
pub fn monotonic_ms() -> u64 {
    monotonic_us() / 1000
}

/// Microseconds of `CLOCK_MONOTONIC`.
#[inline]
pub fn monotonic_us() -> u64 {
    monotonic_ns() / 1000
}

/// Nanoseconds of `CLOCK_MONOTONIC`.
#[inline]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the valid pointer we pass; it cannot
    // fail for CLOCK_MONOTONIC on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The time a poll loop spends on work: a poll-mode core is always 100 % busy by its CPU
/// time, so its real load is the length of the passes that found something to do. One
/// clock read per pass serves the loop's own clock and this.
#[derive(Debug, Default)]
pub struct BusyMeter {
    /// Start of the last pass that found work, not yet accounted.
    since: Option<u64>,
}

impl BusyMeter {
    /// Called at the start of each pass with the clock (ns): the length of the previous
    /// pass if it found work (it ends where this one starts).
    #[inline]
    pub fn pass(&mut self, now_ns: u64) -> Option<u64> {
        self.since.take().map(|t| now_ns.saturating_sub(t))
    }

    /// The pass that started at `start_ns` found work.
    #[inline]
    pub fn worked(&mut self, start_ns: u64) {
        self.since = Some(start_ns);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn busy_meter_counts_only_passes_that_worked() {
        let mut m = super::BusyMeter::default();
        assert_eq!(m.pass(100), None, "nothing before the first pass");
        m.worked(100);
        assert_eq!(m.pass(130), Some(30), "a pass with work lasts until the next starts");
        assert_eq!(m.pass(500), None, "an idle pass (and the sleep after it) is not counted");
        m.worked(500);
        assert_eq!(m.pass(490), Some(0), "a clock that went back counts nothing");
    }

    #[test]
    fn monotonic_moves_forward() {
        let a = super::monotonic_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(super::monotonic_ms() >= a + 4);
    }
}
