//! The keys a run has seen, to count a key repeated across pages: 8 bytes of
//! fingerprint per key, never the records.
//!
//! One hash set would double its table when it fills, holding the old and the
//! new table at once; at a million keys that peak is about 28 MB. Split into
//! 256 sets, each grows on its own and the peak of a growth is 1/256 of that.

use std::collections::HashSet;

const SHARDS: usize = 256;

#[derive(Debug)]
pub struct SeenKeys {
    shards: Vec<HashSet<u64>>,
}

impl Default for SeenKeys {
    fn default() -> Self {
        Self {
            shards: vec![HashSet::new(); SHARDS],
        }
    }
}

impl SeenKeys {
    /// Adds `fingerprint`; `false` when it was already there.
    pub fn insert(&mut self, fingerprint: u64) -> bool {
        // The fingerprint is a hash already: its top byte spreads evenly.
        let shard = (fingerprint >> 56) as usize;
        self.shards[shard].insert(fingerprint)
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(HashSet::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_is_new_once() {
        let mut seen = SeenKeys::default();
        for i in 0..10_000u64 {
            let fingerprint = xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes());
            assert!(seen.insert(fingerprint));
            assert!(!seen.insert(fingerprint));
        }
        assert_eq!(seen.len(), 10_000);
    }
}
