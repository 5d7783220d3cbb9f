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

#[cfg(test)]
mod tests {
    #[test]
    fn monotonic_moves_forward() {
        let a = super::monotonic_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(super::monotonic_ms() >= a + 4);
    }
}
