//! Token buckets: [`TokenBucket`] for one flow, and [`RateLimiter`], per-source-IP buckets
//! (handshake initiations at a node, registrations at a Nucleus): `rate` per second, bursts
//! of `rate`. The table is bounded: full buckets are forgotten, and when it is still full the
//! newcomers share one overflow bucket, so a flood from many addresses cannot grow memory.

use std::collections::HashMap;
use std::net::IpAddr;

const MAX_TRACKED: usize = 65_536;

struct Bucket {
    tokens: f64,
    last_ms: u64,
}

/// A token bucket of `rate` units per second holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    pub fn new(rate: u64, burst: u64, now_ms: u64) -> Self {
        Self { rate: rate as f64, burst: burst as f64, tokens: burst as f64, last_ms: now_ms }
    }

    /// Takes `n` units if available now.
    pub fn take(&mut self, n: u64, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last_ms = now_ms;
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

pub struct RateLimiter {
    rate: f64,
    buckets: HashMap<IpAddr, Bucket>,
    overflow: Bucket,
    next_sweep_ms: u64,
    sweeps: u64,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        let rate = per_second.max(1) as f64;
        Self {
            rate,
            buckets: HashMap::new(),
            overflow: Bucket { tokens: rate, last_ms: 0 },
            next_sweep_ms: 0,
            sweeps: 0,
        }
    }

    fn take(rate: f64, b: &mut Bucket, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(b.last_ms) as f64 / 1000.0;
        b.tokens = (b.tokens + elapsed * rate).min(rate);
        b.last_ms = now_ms;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether one more handshake from `ip` is allowed now.
    pub fn allow(&mut self, ip: IpAddr, now_ms: u64) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        let rate = self.rate;
        if let Some(b) = self.buckets.get_mut(&ip) {
            return Self::take(rate, b, now_ms);
        }
        // A full table under a flood from many addresses: sweep it at most every 100 ms,
        // not per packet (a sweep walks every entry).
        if self.buckets.len() >= MAX_TRACKED && now_ms >= self.next_sweep_ms {
            self.next_sweep_ms = now_ms + 100;
            self.gc(now_ms);
        }
        if self.buckets.len() >= MAX_TRACKED {
            return Self::take(rate * 16.0, &mut self.overflow, now_ms);
        }
        let mut b = Bucket { tokens: rate, last_ms: now_ms };
        let ok = Self::take(rate, &mut b, now_ms);
        self.buckets.insert(ip, b);
        ok
    }

    /// Forgets buckets that have refilled completely (they behave like new ones).
    pub fn gc(&mut self, now_ms: u64) {
        self.sweeps += 1;
        let full_after_ms = 1000.0;
        self.buckets.retain(|_, b| (now_ms.saturating_sub(b.last_ms) as f64) < full_after_ms);
    }

    /// How many times the table was swept ([`Self::gc`]).
    pub fn sweeps(&self) -> u64 {
        self.sweeps
    }

    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_ip_per_second() {
        let mut rl = RateLimiter::new(10);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let allowed = (0..100).filter(|_| rl.allow(a, 1000)).count();
        assert_eq!(allowed, 10);
        assert!(rl.allow(b, 1000), "another source is not affected");
        // Half a second refills five.
        let allowed = (0..100).filter(|_| rl.allow(a, 1500)).count();
        assert_eq!(allowed, 5);
        // Over ten seconds at 100/s offered, about 10/s pass.
        let mut passed = 0;
        for ms in (2000..12_000).step_by(10) {
            if rl.allow(a, ms) {
                passed += 1;
            }
        }
        assert!((95..=110).contains(&passed), "{passed}");
    }

    #[test]
    fn token_bucket_rate_and_burst() {
        let mut b = TokenBucket::new(1000, 1500, 0);
        assert!(b.take(1500, 0));
        assert!(!b.take(1, 0));
        assert!(!b.take(600, 500));
        assert!(b.take(500, 500));
        let mut sent = 0;
        for ms in 1000..11_000 {
            if b.take(100, ms) {
                sent += 100;
            }
        }
        assert!((9_900..=11_600).contains(&sent), "{sent} bytes in 10 s at 1000/s");
    }

    #[test]
    fn ipv4_mapped_is_the_same_source() {
        let mut rl = RateLimiter::new(1);
        assert!(rl.allow("10.0.0.1".parse().unwrap(), 0));
        assert!(!rl.allow("::ffff:10.0.0.1".parse().unwrap(), 0));
    }

    #[test]
    fn memory_is_bounded() {
        let mut rl = RateLimiter::new(10);
        for i in 0..(MAX_TRACKED as u32 + 1000) {
            rl.allow(IpAddr::V4(i.into()), 0);
        }
        assert!(rl.tracked() <= MAX_TRACKED);
        rl.gc(5000);
        assert_eq!(rl.tracked(), 0);
    }

    #[test]
    fn a_full_table_is_not_swept_per_packet() {
        let mut rl = RateLimiter::new(10);
        // A million distinct sources in one second, as a spoofed flood sends them.
        for i in 0..1_000_000u32 {
            rl.allow(IpAddr::V4(i.into()), u64::from(i / 1000));
        }
        assert!(rl.tracked() <= MAX_TRACKED);
        assert!(rl.sweeps() <= 11, "{} sweeps of a full table", rl.sweeps());
    }
}
