//! Session index allocation. An index is `random high bits | slot`, where the slot (low
//! bits) addresses the data plane's session table directly, so a lookup there is one
//! masked array access. A slot never gets the index its previous session had, so the data
//! plane's persisted counter state cannot be mistaken for a new session's.

pub struct IndexAllocator {
    mask: u32,
    free: Vec<u32>,
    last: Vec<u32>,
}

impl IndexAllocator {
    /// `slots` must be a power of two (the region's `max_sessions`).
    pub fn new(slots: u32) -> Self {
        assert!(slots.is_power_of_two());
        Self { mask: slots - 1, free: (0..slots).rev().collect(), last: vec![0; slots as usize] }
    }

    pub fn alloc(&mut self) -> Option<u32> {
        let slot = self.free.pop()?;
        let mut idx;
        loop {
            idx = (rand::random::<u32>() & !self.mask) | slot;
            if idx != self.last[slot as usize] {
                break;
            }
        }
        self.last[slot as usize] = idx;
        Some(idx)
    }

    pub fn release(&mut self, idx: u32) {
        let slot = idx & self.mask;
        if self.last[slot as usize] == idx && !self.free.contains(&slot) {
            self.free.push(slot);
        }
    }

    pub fn in_use(&self) -> usize {
        self.last.len() - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_distinct_slots_and_never_repeats_an_index_in_a_slot() {
        let mut a = IndexAllocator::new(4);
        let ids: Vec<u32> = (0..4).map(|_| a.alloc().unwrap()).collect();
        let slots: std::collections::BTreeSet<u32> = ids.iter().map(|i| i & 3).collect();
        assert_eq!(slots.len(), 4);
        assert_eq!(a.alloc(), None, "full");
        assert_eq!(a.in_use(), 4);
        let mut prev = ids[0];
        a.release(prev);
        for _ in 0..1000 {
            let n = a.alloc().unwrap();
            assert_eq!(n & 3, ids[0] & 3, "the freed slot is reused");
            assert_ne!(n, prev, "with a different index");
            a.release(n);
            prev = n;
        }
        // A stale index (not the slot's latest) or a double release frees nothing more.
        a.alloc().unwrap();
        a.release(ids[1] ^ 0x8000_0000);
        a.release(prev);
        assert_eq!(a.in_use(), 4);
    }
}
