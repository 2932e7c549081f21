//! The keys a run has seen, to count a key repeated across pages: 8 bytes of
//! fingerprint per key, never the records.
//!
//! A general-purpose hash set doubles its table when it fills and keeps a
//! control byte per slot: at a million keys that is 19 MB, and 28 MB while
//! it grows. Here 256 open-addressing tables of bare `u64`s (linear probing,
//! at most 80 % full) each grow by a quarter on their own: about 11 MB at a
//! million keys, and a growth only ever copies 1/256 of the set.

const SHARDS: usize = 256;

#[derive(Debug)]
pub struct SeenKeys {
    shards: Vec<Shard>,
}

impl Default for SeenKeys {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }
}

impl SeenKeys {
    /// Adds `fingerprint`; `false` when it was already there.
    pub fn insert(&mut self, fingerprint: u64) -> bool {
        // 0 marks an empty slot; the fingerprint 1 stands in for it (a
        // collision only ever changes a count, see `sync::build_batch`).
        let fingerprint = fingerprint.max(1);
        // The fingerprint is a hash already: its top byte picks the shard,
        // the rest places it within the shard.
        self.shards[(fingerprint >> 56) as usize].insert(fingerprint)
    }

    /// Whether `fingerprint` was added.
    pub fn contains(&self, fingerprint: u64) -> bool {
        let fingerprint = fingerprint.max(1);
        self.shards[(fingerprint >> 56) as usize].contains(fingerprint)
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Default)]
struct Shard {
    slots: Vec<u64>,
    len: usize,
}

impl Shard {
    fn insert(&mut self, fingerprint: u64) -> bool {
        if (self.len + 1) * 5 > self.slots.len() * 4 {
            self.grow();
        }
        let mut slot = self.home(fingerprint);
        loop {
            match self.slots[slot] {
                0 => {
                    self.slots[slot] = fingerprint;
                    self.len += 1;
                    return true;
                }
                stored if stored == fingerprint => return false,
                _ => slot = (slot + 1) % self.slots.len(),
            }
        }
    }

    fn contains(&self, fingerprint: u64) -> bool {
        if self.slots.is_empty() {
            return false;
        }
        let mut slot = self.home(fingerprint);
        loop {
            match self.slots[slot] {
                0 => return false,
                stored if stored == fingerprint => return true,
                _ => slot = (slot + 1) % self.slots.len(),
            }
        }
    }

    /// Where the probe for `fingerprint` starts: its low 56 bits scaled to
    /// the table's size (no power of two needed, so it can grow by a quarter).
    fn home(&self, fingerprint: u64) -> usize {
        let spread = fingerprint << 8;
        ((u128::from(spread) * self.slots.len() as u128) >> 64) as usize
    }

    fn grow(&mut self) {
        let size = (self.slots.len() + self.slots.len() / 4).max(16);
        let old = std::mem::replace(&mut self.slots, vec![0; size]);
        self.len = 0;
        for fingerprint in old.into_iter().filter(|&f| f != 0) {
            self.insert(fingerprint);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_is_new_once() {
        let mut seen = SeenKeys::default();
        for i in 0..100_000u64 {
            let fingerprint = xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes());
            assert!(seen.insert(fingerprint), "{i} is new");
        }
        for i in 0..100_000u64 {
            let fingerprint = xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes());
            assert!(seen.contains(fingerprint), "{i} is there");
            assert!(!seen.insert(fingerprint), "{i} was seen");
        }
        for i in 100_000..200_000u64 {
            let fingerprint = xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes());
            assert!(!seen.contains(fingerprint), "{i} was never added");
        }
        assert!(
            !SeenKeys::default().contains(7),
            "an empty set holds nothing"
        );
        assert_eq!(seen.len(), 100_000);
    }

    #[test]
    fn zero_and_one_are_the_same_fingerprint() {
        let mut seen = SeenKeys::default();
        assert!(seen.insert(0));
        assert!(!seen.insert(1));
        assert!(seen.insert(u64::MAX));
        assert!(!seen.insert(u64::MAX));
    }

    #[test]
    fn memory_stays_near_ten_bytes_a_key() {
        let mut seen = SeenKeys::default();
        for i in 0..1_000_000u64 {
            seen.insert(xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()));
        }
        let slots: usize = seen.shards.iter().map(|shard| shard.slots.len()).sum();
        assert!(slots * 8 < 14_000_000, "{slots} slots");
    }
}
