//! The in-memory key index of one [`super::JetStreamLog`]: which positions
//! may hold a key, for keys older than the server's duplicate window. Built
//! from the records' own `Nats-Msg-Id` headers (read headers-only), so it can
//! never disagree with the log for long and needs no writes of its own.
//!
//! It keeps a 64-bit hash per key, not the key: 10 million keys take a few
//! hundred MiB. A hash match is only a candidate; the caller reads the record
//! at the position and compares the key, so a collision costs a read, never a
//! wrong answer.

use std::collections::HashMap;
use std::time::Instant;

use xxhash_rust::xxh3::xxh3_64;

#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    /// Every record at or below this position is indexed.
    through: u64,
    /// The first position whose key has this hash.
    first_with_hash: HashMap<u64, u64>,
    /// Later positions with an already-seen hash (a collision, or a key the
    /// non-atomic fallback stored twice), in position order.
    more_with_hash: HashMap<u64, Vec<u64>>,
    /// When the last catch-up that completed started.
    last_catch_up: Option<Instant>,
}

impl KeyIndex {
    /// The position the index covers through.
    pub(crate) fn through(&self) -> u64 {
        self.through
    }

    /// Records the key of the record at `position`, which must be
    /// `through() + 1`: the index grows in log order, without holes.
    pub(crate) fn insert(&mut self, key: &str, position: u64) {
        debug_assert_eq!(position, self.through + 1, "the key index grows in order");
        let hash = xxh3_64(key.as_bytes());
        match self.first_with_hash.entry(hash) {
            std::collections::hash_map::Entry::Vacant(vacant) => {
                vacant.insert(position);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.more_with_hash.entry(hash).or_default().push(position);
            }
        }
        self.through = position;
    }

    /// The positions that may hold `key`, lowest first.
    pub(crate) fn candidates(&self, key: &str) -> Vec<u64> {
        let hash = xxh3_64(key.as_bytes());
        let mut positions: Vec<u64> = self
            .first_with_hash
            .get(&hash)
            .copied()
            .into_iter()
            .collect();
        if let Some(more) = self.more_with_hash.get(&hash) {
            positions.extend(more);
        }
        positions
    }

    /// Whether a catch-up started less than `fresh_for` ago.
    pub(crate) fn is_fresh(&self, fresh_for: std::time::Duration) -> bool {
        matches!(self.last_catch_up, Some(started) if started.elapsed() < fresh_for)
    }

    pub(crate) fn caught_up(&mut self, started: Instant) {
        self.last_catch_up = Some(started);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_at_every_position_they_hash_to() {
        let mut index = KeyIndex::default();
        index.insert("e-1", 1);
        index.insert("e-2", 2);
        index.insert("e-1", 3);
        assert_eq!(index.through(), 3);
        assert_eq!(index.candidates("e-1"), vec![1, 3]);
        assert_eq!(index.candidates("e-2"), vec![2]);
        assert!(index.candidates("e-3").is_empty());
    }

    #[test]
    fn freshness_starts_with_the_first_catch_up() {
        let mut index = KeyIndex::default();
        assert!(!index.is_fresh(std::time::Duration::from_secs(60)));
        index.caught_up(Instant::now());
        assert!(index.is_fresh(std::time::Duration::from_secs(60)));
        assert!(!index.is_fresh(std::time::Duration::ZERO));
    }
}
