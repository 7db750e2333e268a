//! The idempotency index: key → position, kept compact so that ten million
//! keys fit in a few hundred MiB.
//!
//! Keys are not stored: each entry is a 32-bit fingerprint of the key (the
//! upper half of its 64-bit XXH3 hash) and the record's position as a u32
//! (8 bytes, plus the table's control byte: ~15 bytes per record at the
//! table's usual load, where a u64 → u64 table took ~28). A hit is only a
//! candidate: the writer reads the record back to compare the key (and, for
//! a duplicate, the payload), so a fingerprint shared by two keys costs one
//! read, never a wrong answer. The later of two keys with the same
//! fingerprint goes to an exact-key overflow map (about 12k entries at 10M
//! records). Positions beyond `u32::MAX` go to a full-hash u64 → u64 table.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

pub(crate) use crate::pass_through::PassThroughBuild;

/// The hash of a key, as the index stores it.
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

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
    /// Fingerprint → position, for positions up to `u32::MAX`.
    small: HashMap<u32, u32, PassThroughBuild>,
    /// Full hash → position, for later positions (only ever filled once the
    /// log holds more than 4.29 billion records; positions only grow, so no
    /// fingerprint enters `small` after this one is used).
    large: HashMap<u64, u64, PassThroughBuild>,
    /// Keys whose fingerprint (or hash) was already taken by another key
    /// when they were stored.
    overflow: HashMap<Box<[u8]>, u64>,
}

/// The part of a key hash the compact table keeps.
fn fingerprint(hash: u64) -> u32 {
    (hash >> 32) as u32
}

impl KeyIndex {
    pub(crate) fn candidate(&self, key: &[u8], hash: u64) -> Candidate {
        if !self.overflow.is_empty()
            && let Some(&position) = self.overflow.get(key)
        {
            return Candidate::Exact(position);
        }
        if let Some(&position) = self.small.get(&fingerprint(hash)) {
            return Candidate::SameHash(u64::from(position));
        }
        if !self.large.is_empty()
            && let Some(&position) = self.large.get(&hash)
        {
            return Candidate::SameHash(position);
        }
        Candidate::Absent
    }

    /// Records a key the caller knows is not stored yet.
    pub(crate) fn insert_new(&mut self, key: &[u8], hash: u64, position: u64) {
        let taken = match u32::try_from(position) {
            Ok(small_position) => match self.small.entry(fingerprint(hash)) {
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(small_position);
                    false
                }
                std::collections::hash_map::Entry::Occupied(_) => true,
            },
            Err(_) => {
                if self.small.contains_key(&fingerprint(hash)) || self.large.contains_key(&hash) {
                    true
                } else {
                    self.large.insert(hash, position);
                    false
                }
            }
        };
        if taken {
            self.overflow.insert(key.into(), position);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.small.len() + self.large.len() + self.overflow.len()
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
        assert_eq!(index.candidate(b"third", 43 << 32), Candidate::Absent);
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn keys_sharing_a_fingerprint_are_told_apart() {
        let mut index = KeyIndex::default();
        // Same upper half, different lower half: one fingerprint.
        index.insert_new(b"first", 0x0000_0007_0000_0001, 1);
        index.insert_new(b"second", 0x0000_0007_0000_0002, 2);
        assert_eq!(
            index.candidate(b"first", 0x0000_0007_0000_0001),
            Candidate::SameHash(1)
        );
        assert_eq!(
            index.candidate(b"second", 0x0000_0007_0000_0002),
            Candidate::Exact(2)
        );
        // A key that is not stored but shares the fingerprint is only a
        // candidate: the writer compares the stored key and finds it new.
        assert_eq!(
            index.candidate(b"third", 0x0000_0007_0000_0003),
            Candidate::SameHash(1)
        );
    }

    #[test]
    fn positions_beyond_u32_use_the_full_hash() {
        let mut index = KeyIndex::default();
        let far = u64::from(u32::MAX) + 10;
        index.insert_new(b"near", 0x0000_0001_0000_0001, 1);
        index.insert_new(b"far", 0x0000_0002_0000_0001, far);
        index.insert_new(b"far again", 0x0000_0002_0000_0001, far + 1);
        index.insert_new(b"shares near's fingerprint", 0x0000_0001_0000_0009, far + 2);
        assert_eq!(
            index.candidate(b"near", 0x0000_0001_0000_0001),
            Candidate::SameHash(1)
        );
        assert_eq!(
            index.candidate(b"far", 0x0000_0002_0000_0001),
            Candidate::SameHash(far)
        );
        assert_eq!(
            index.candidate(b"far again", 0x0000_0002_0000_0001),
            Candidate::Exact(far + 1)
        );
        assert_eq!(
            index.candidate(b"shares near's fingerprint", 0x0000_0001_0000_0009),
            Candidate::Exact(far + 2)
        );
        assert_eq!(
            index.candidate(b"absent", 0x0000_0003_0000_0001),
            Candidate::Absent
        );
        assert_eq!(index.len(), 4);
    }
}
