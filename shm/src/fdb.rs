//! The forwarding database: source MAC of decrypted frames → peer, with aging.
//!
//! It lives in shared memory so control can show it (`status`) without asking the data
//! plane. Open addressing with linear probing over a power-of-two table; an entry is two
//! words: `kv = mac << 16 | (peer + 1)` (0 = empty) and the time it was last seen. `kv` is
//! one atomic word, so a reader never pairs a MAC with another entry's peer. Entries are
//! never removed, only left to age: an aged entry is free for reuse, which keeps probe
//! chains intact without tombstones. The writer is the data plane worker.
//!
//! Probing is bounded (`MAX_PROBE`): when every slot near a MAC's home is live, the MAC is
//! not learned (counted) and frames to it are flooded, so memory stays bounded whatever
//! source MACs a peer sends.

use crate::sync::{AtomicU64, Ordering};
use omni_proto::wire::ethernet::MacAddr;

/// One FDB entry as it lies in shared memory.
#[repr(C)]
#[derive(Default)]
pub struct FdbEntry {
    kv: AtomicU64,
    seen_ms: AtomicU64,
}

const MAX_PROBE: usize = 16;
/// Refresh an entry's timestamp at most this often (saves a cache-line write per frame).
const REFRESH_MS: u64 = 1000;

/// The result of learning a source MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learn {
    /// Already known for this peer and fresh.
    Known,
    /// New entry, or a MAC that moved from another peer.
    Learned,
    /// The neighbourhood was full of live entries; not learned.
    Full,
}

/// A live entry, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbRecord {
    pub mac: MacAddr,
    pub peer: u16,
    pub age_ms: u64,
}

pub struct Fdb<'a> {
    entries: &'a [FdbEntry],
    seed: u64,
    aging_ms: u64,
}

fn mac_bits(mac: &MacAddr) -> u64 {
    u64::from_be_bytes([0, 0, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]])
}

impl<'a> Fdb<'a> {
    /// A view over `entries` (length must be a power of two).
    pub fn new(entries: &'a [FdbEntry], seed: u64, aging_ms: u64) -> Self {
        assert!(entries.len().is_power_of_two());
        Self { entries, seed, aging_ms }
    }

    pub fn set_aging_ms(&mut self, aging_ms: u64) {
        self.aging_ms = aging_ms;
    }

    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    #[inline]
    fn home(&self, key: u64) -> usize {
        // Fibonacci hashing of the seeded key: the top bits are well mixed.
        let h = (key ^ self.seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (h >> (64 - self.entries.len().trailing_zeros().max(1))) as usize & (self.entries.len() - 1)
    }

    /// `seen == 0` marks an entry aged out on purpose (timestamps written are never 0).
    #[inline]
    fn live(&self, seen: u64, now_ms: u64) -> bool {
        seen != 0 && now_ms.saturating_sub(seen) < self.aging_ms
    }

    /// The peer a unicast MAC was last seen behind, if that was within the aging time.
    #[inline]
    pub fn lookup(&self, mac: &MacAddr, now_ms: u64) -> Option<u16> {
        let key = mac_bits(mac);
        let mask = self.entries.len() - 1;
        let mut i = self.home(key);
        for _ in 0..MAX_PROBE.min(self.entries.len()) {
            let e = &self.entries[i];
            let kv = e.kv.load(Ordering::Acquire);
            if kv == 0 {
                return None;
            }
            if kv >> 16 == key {
                let seen = e.seen_ms.load(Ordering::Relaxed);
                if self.live(seen, now_ms) {
                    return Some((kv & 0xffff) as u16 - 1);
                }
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// Records that `mac` was seen behind `peer` now. Only the owning worker calls this.
    #[inline]
    pub fn learn(&self, mac: &MacAddr, peer: u16, now_ms: u64) -> Learn {
        let now_ms = now_ms.max(1);
        let key = mac_bits(mac);
        let kv_new = key << 16 | (peer as u64 + 1);
        let mask = self.entries.len() - 1;
        let mut i = self.home(key);
        let mut free: Option<usize> = None;
        for _ in 0..MAX_PROBE.min(self.entries.len()) {
            let e = &self.entries[i];
            let kv = e.kv.load(Ordering::Relaxed);
            if kv == 0 {
                free.get_or_insert(i);
                break;
            }
            let seen = e.seen_ms.load(Ordering::Relaxed);
            if kv >> 16 == key {
                if kv == kv_new && now_ms.saturating_sub(seen) < REFRESH_MS {
                    return Learn::Known;
                }
                let moved = kv != kv_new || !self.live(seen, now_ms);
                e.seen_ms.store(now_ms, Ordering::Relaxed);
                e.kv.store(kv_new, Ordering::Release);
                return if moved { Learn::Learned } else { Learn::Known };
            }
            if free.is_none() && !self.live(seen, now_ms) {
                free = Some(i);
            }
            i = (i + 1) & mask;
        }
        match free {
            Some(j) => {
                let e = &self.entries[j];
                // Timestamp first: a reader that sees the new kv (acquire) sees this too.
                e.seen_ms.store(now_ms, Ordering::Relaxed);
                e.kv.store(kv_new, Ordering::Release);
                Learn::Learned
            }
            None => Learn::Full,
        }
    }

    /// Ages out every entry pointing at `peer` (when the peer is removed).
    pub fn forget_peer(&self, peer: u16) {
        for e in self.entries {
            let kv = e.kv.load(Ordering::Relaxed);
            if kv != 0 && (kv & 0xffff) as u16 == peer.wrapping_add(1) {
                e.seen_ms.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Ages out every entry (when the data plane state is reset).
    pub fn clear(&self) {
        for e in self.entries {
            e.seen_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Live entries with their age, for `status`.
    pub fn snapshot(&self, now_ms: u64) -> Vec<FdbRecord> {
        let mut out = Vec::new();
        for e in self.entries {
            let kv = e.kv.load(Ordering::Acquire);
            if kv == 0 {
                continue;
            }
            let seen = e.seen_ms.load(Ordering::Relaxed);
            if self.live(seen, now_ms) {
                let b = (kv >> 16).to_be_bytes();
                out.push(FdbRecord {
                    mac: [b[2], b[3], b[4], b[5], b[6], b[7]],
                    peer: (kv & 0xffff) as u16 - 1,
                    age_ms: now_ms.saturating_sub(seen),
                });
            }
        }
        out.sort_by_key(|a| a.mac);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(n: usize) -> Vec<FdbEntry> {
        (0..n).map(|_| FdbEntry::default()).collect()
    }

    fn mac(i: u32) -> MacAddr {
        let b = i.to_be_bytes();
        [0x02, 0, b[0], b[1], b[2], b[3]]
    }

    #[test]
    fn learn_lookup_move_and_age() {
        let t = table(64);
        let fdb = Fdb::new(&t, 42, 300_000);
        assert_eq!(fdb.lookup(&mac(1), 1000), None);
        assert_eq!(fdb.learn(&mac(1), 3, 1000), Learn::Learned);
        assert_eq!(fdb.lookup(&mac(1), 1000), Some(3));
        assert_eq!(fdb.learn(&mac(1), 3, 1500), Learn::Known);
        // Moves to another peer at once.
        assert_eq!(fdb.learn(&mac(1), 7, 1600), Learn::Learned);
        assert_eq!(fdb.lookup(&mac(1), 1600), Some(7));
        // Ages out 300 s after it was last seen.
        assert_eq!(fdb.lookup(&mac(1), 1600 + 299_999), Some(7));
        assert_eq!(fdb.lookup(&mac(1), 1600 + 300_000), None);
        let snap = fdb.snapshot(2600);
        assert_eq!(snap, vec![FdbRecord { mac: mac(1), peer: 7, age_ms: 1000 }]);
    }

    #[test]
    fn refresh_keeps_entries_alive() {
        let t = table(64);
        let fdb = Fdb::new(&t, 1, 10_000);
        fdb.learn(&mac(5), 0, 0);
        for now in (0..100_000).step_by(2_000) {
            fdb.learn(&mac(5), 0, now);
            assert_eq!(fdb.lookup(&mac(5), now + 5_000), Some(0), "{now}");
        }
    }

    #[test]
    fn bounded_and_reuses_aged_slots() {
        let t = table(16);
        let fdb = Fdb::new(&t, 7, 1000);
        let mut learned = 0;
        for i in 0..100 {
            if fdb.learn(&mac(i), 1, 0) == Learn::Learned {
                learned += 1;
            }
        }
        assert_eq!(learned, 16, "a 16-entry table holds 16 live MACs");
        assert_eq!(fdb.learn(&mac(1000), 1, 10), Learn::Full);
        // After aging, new MACs take the old slots.
        for i in 200..216 {
            assert_eq!(fdb.learn(&mac(i), 2, 5000), Learn::Learned, "{i}");
        }
        for i in 200..216 {
            assert_eq!(fdb.lookup(&mac(i), 5000), Some(2));
        }
        assert_eq!(fdb.snapshot(5000).len(), 16);
    }

    #[test]
    fn forget_peer_and_clear() {
        let t = table(64);
        let fdb = Fdb::new(&t, 3, 300_000);
        fdb.learn(&mac(1), 1, 10);
        fdb.learn(&mac(2), 2, 10);
        fdb.forget_peer(1);
        assert_eq!(fdb.lookup(&mac(1), 20), None);
        assert_eq!(fdb.lookup(&mac(2), 20), Some(2));
        fdb.clear();
        assert_eq!(fdb.lookup(&mac(2), 20), None);
    }

    #[test]
    fn many_macs_in_a_large_table() {
        let t = table(8192);
        let fdb = Fdb::new(&t, 99, 300_000);
        for i in 0..4000 {
            assert_eq!(fdb.learn(&mac(i * 7919), (i % 100) as u16, 1), Learn::Learned);
        }
        for i in 0..4000 {
            assert_eq!(fdb.lookup(&mac(i * 7919), 2), Some((i % 100) as u16));
        }
    }
}
