//! The idempotency index: key → position, kept compact so that ten million
//! keys fit in a few hundred MiB.
//!
//! Keys are not stored: each entry is the 64-bit XXH3 hash of the key and the
//! position of the record that holds it (16 bytes, plus the table's control
//! byte). A hit is only a candidate: the writer reads the record back to
//! compare the key (and, for a duplicate, the payload). Two different keys
//! with the same hash are resolved by an exact-key overflow map that holds
//! only the later ones, which in practice stays empty.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

/// The hash of a key, as the index stores it.
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// A hasher for keys that are already uniform 64-bit hashes: passes them
/// through instead of hashing them again.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed with this hasher; fold anything else in so
        // that the hasher stays correct if that ever changes.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

pub(crate) type PassThroughBuild = BuildHasherDefault<PassThroughHasher>;

/// A fast hasher for short text (stream names) on the append path: XXH3
/// with a per-process random seed, so crafted names cannot aim at one bucket.
/// SipHash, the std default, cost more than the rest of a record's check.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TextBuild {
    seed: u64,
}

impl Default for TextBuild {
    fn default() -> Self {
        Self {
            seed: std::collections::hash_map::RandomState::new().hash_one(0x7e57_u64),
        }
    }
}

impl BuildHasher for TextBuild {
    type Hasher = TextHasher;

    fn build_hasher(&self) -> TextHasher {
        TextHasher(self.seed)
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct TextHasher(u64);

impl Hasher for TextHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }

    fn write_u8(&mut self, byte: u8) {
        // The `str` terminator: mixing it in keeps the hash well spread.
        self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Each stream's last position, by stream name.
pub(crate) type StreamVersions = HashMap<String, u64, TextBuild>;

/// Where a key may be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Candidate {
    /// The key is certainly stored at this position (exact overflow entry).
    Exact(u64),
    /// A record with the same key hash is at this position; compare keys.
    SameHash(u64),
    /// The key is not stored.
    Absent,
}

#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    by_hash: HashMap<u64, u64, PassThroughBuild>,
    /// Keys whose hash was already taken by another key when they were stored.
    overflow: HashMap<Box<[u8]>, u64>,
}

impl KeyIndex {
    pub(crate) fn candidate(&self, key: &[u8], hash: u64) -> Candidate {
        if !self.overflow.is_empty()
            && let Some(&position) = self.overflow.get(key)
        {
            return Candidate::Exact(position);
        }
        match self.by_hash.get(&hash) {
            Some(&position) => Candidate::SameHash(position),
            None => Candidate::Absent,
        }
    }

    /// Records a key the caller knows is not stored yet.
    pub(crate) fn insert_new(&mut self, key: &[u8], hash: u64, position: u64) {
        match self.by_hash.entry(hash) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(position);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.overflow.insert(key.into(), position);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_hash.len() + self.overflow.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_collision_goes_to_the_overflow_map() {
        let mut index = KeyIndex::default();
        index.insert_new(b"first", 42, 1);
        index.insert_new(b"second", 42, 2);
        assert_eq!(index.candidate(b"first", 42), Candidate::SameHash(1));
        assert_eq!(index.candidate(b"second", 42), Candidate::Exact(2));
        assert_eq!(index.candidate(b"third", 43), Candidate::Absent);
        assert_eq!(index.len(), 2);
    }
}
