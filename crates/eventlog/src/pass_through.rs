//! A hasher for map keys that are already uniform hashes (a key's XXH3
//! hash or its fingerprint): both logs' key indexes are keyed by one, and
//! hashing it again (SipHash, std's default) cost more than the look-up in
//! the profiles of an append.

use std::hash::{BuildHasherDefault, Hasher};

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

    fn write_u32(&mut self, value: u32) {
        // Spread the fingerprint over all 64 bits: the table takes its
        // control byte from the top bits and its bucket from the bottom ones.
        self.0 = u64::from(value).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

pub(crate) type PassThroughBuild = BuildHasherDefault<PassThroughHasher>;
