//! The in-memory key index of one [`super::JetStreamLog`]: which positions
//! may hold a key, for keys older than the server's duplicate window. Built
//! from the records' own `Nats-Msg-Id` headers (read headers-only), so it can
//! never disagree with the log for long and needs no writes of its own.
//!
//! It keeps a 64-bit hash per key, not the key: 10 million keys take a few
//! hundred MiB. A hash match is only a candidate; the caller reads the record
//! at the position and compares the key, so a collision costs a read, never a
//! wrong answer.
//!
//! The keys an instance appended itself need no reading back: the server's
//! acknowledgement gives their positions, so they are recorded as "own" at
//! once and the catch-up reads only the gaps between them (other writers'
//! records). Own keys wait in `own`, a run of consecutive positions per
//! append, until [`KeyIndex::settle`] moves them into the maps, which it can
//! only do once every position before them is indexed (a gap is read), so the
//! index still grows in log order without holes. An append settles the
//! previous appends' keys while it waits for the server's acknowledgement of
//! its own (the client is idle then), instead of between the acknowledgement
//! and its answer; every catch-up settles too.
//!
//! A key waiting in `own` is not found by a look-up. That is safe for the
//! same reason a key another writer stored after the last catch-up is: it
//! was stored after that catch-up started (a catch-up settles every own key
//! it can reach, and an own key recorded later has a position past the head
//! it read, or below `through` and then is dropped as read), and look-ups
//! trust a miss only while the last catch-up started less than a quarter of
//! the duplicate window ago, so the server's `Nats-Msg-Id` check still
//! catches such a key.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::time::Instant;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::pass_through::PassThroughBuild;

/// The hash of a key in one index (see [`KeyIndex::hash`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyHash(pub(crate) u64);

/// A map keyed by a key's hash ([`KeyHash`]).
pub(crate) type HashedMap<V> = HashMap<u64, V, PassThroughBuild>;

#[derive(Debug)]
pub(crate) struct KeyIndex {
    /// The seed of this index's key hash, random per index (the index lives
    /// in memory only), so nobody can choose keys that pile into one slot of
    /// the maps, which use the hash as it is.
    seed: u64,
    /// Every record at or below this position is indexed.
    through: u64,
    /// The first position whose key has this hash.
    first_with_hash: HashedMap<u64>,
    /// Later positions with an already-seen hash (a collision, or a key the
    /// non-atomic fallback stored twice), in position order.
    more_with_hash: HashedMap<Vec<u64>>,
    /// When the last catch-up that completed started.
    last_catch_up: Option<Instant>,
    /// Hashes of keys this instance stored itself past `through`, not in the
    /// maps yet: runs of consecutive positions, by the first position.
    own: BTreeMap<u64, Vec<u64>>,
    /// How many hashes `own` holds.
    own_keys: usize,
}

impl Default for KeyIndex {
    fn default() -> Self {
        Self {
            // std's RandomState is seeded from the operating system's
            // randomness; one of its hashes is a random 64-bit number.
            seed: std::collections::hash_map::RandomState::new()
                .hash_one(0x6b65_795f_696e_6465_u64),
            through: 0,
            first_with_hash: HashedMap::default(),
            more_with_hash: HashedMap::default(),
            last_catch_up: None,
            own: BTreeMap::new(),
            own_keys: 0,
        }
    }
}

impl KeyIndex {
    /// The hash of `key` in this index, for [`KeyIndex::candidates_of`] and
    /// [`KeyIndex::record_own`]: an append hashes each key once for both.
    pub(crate) fn hash(&self, key: &str) -> KeyHash {
        KeyHash(xxh3_64_with_seed(key.as_bytes(), self.seed))
    }

    /// The position the index covers through.
    #[cfg(test)]
    pub(crate) fn through(&self) -> u64 {
        self.through
    }

    /// Records the key of the record at `position`, which must be the first
    /// position neither indexed nor an own key (the first of [`KeyIndex::gaps`]):
    /// the index grows in log order, without holes.
    pub(crate) fn insert(&mut self, key: &str, position: u64) {
        let KeyHash(hash) = self.hash(key);
        self.settle();
        self.insert_hash(hash, position);
        self.settle();
    }

    fn insert_hash(&mut self, hash: u64, position: u64) {
        debug_assert_eq!(position, self.through + 1, "the key index grows in order");
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

    /// Records keys this instance just stored, by their hashes (from
    /// [`KeyIndex::hash`]) with their positions (from the server's
    /// acknowledgement, ascending), so no catch-up has to read them. They
    /// wait in `own` until [`KeyIndex::settle`] (see the module doc).
    pub(crate) fn record_own(&mut self, stored: impl IntoIterator<Item = (u64, KeyHash)>) {
        let mut run: Option<(u64, Vec<u64>)> = None;
        for (position, KeyHash(hash)) in stored {
            // At or below `through` a catch-up has already read it.
            if position <= self.through {
                continue;
            }
            match &mut run {
                Some((first, hashes)) if *first + hashes.len() as u64 == position => {
                    hashes.push(hash);
                }
                _ => {
                    if let Some((first, hashes)) = run.replace((position, vec![hash])) {
                        self.add_own_run(first, hashes);
                    }
                }
            }
        }
        if let Some((first, hashes)) = run {
            self.add_own_run(first, hashes);
        }
    }

    fn add_own_run(&mut self, first: u64, hashes: Vec<u64>) {
        self.own_keys += hashes.len();
        if let Some(replaced) = self.own.insert(first, hashes) {
            // The same position recorded twice: keep one count of it.
            self.own_keys -= replaced.len();
        }
    }

    /// How many own keys wait in `own`.
    pub(crate) fn own_waiting(&self) -> usize {
        self.own_keys
    }

    /// Moves the own keys that continue the index into it.
    pub(crate) fn settle(&mut self) {
        while let Some(entry) = self.own.first_entry() {
            let first = *entry.key();
            if first > self.through + 1 {
                break;
            }
            let hashes = entry.remove();
            self.own_keys -= hashes.len();
            for (position, hash) in (first..).zip(hashes) {
                // Positions at or below `through` were read by a catch-up.
                if position == self.through + 1 {
                    self.insert_hash(hash, position);
                }
            }
        }
    }

    /// The ranges `(from, count)` of positions up to `head` that the index
    /// neither covers nor holds as own keys: what a catch-up must read.
    pub(crate) fn gaps(&self, head: u64) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut next = self.through + 1;
        if head < next {
            return gaps;
        }
        for (&first, hashes) in self.own.range(next..=head) {
            if first > next {
                gaps.push((next, first - next));
            }
            next = next.max(first + hashes.len() as u64);
        }
        if head >= next {
            gaps.push((next, head - next + 1));
        }
        gaps
    }

    /// The positions that may hold `key`, lowest first.
    #[cfg(test)]
    pub(crate) fn candidates(&self, key: &str) -> Vec<u64> {
        self.candidates_of(self.hash(key))
    }

    /// The positions that may hold the key of this hash, lowest first.
    pub(crate) fn candidates_of(&self, KeyHash(hash): KeyHash) -> Vec<u64> {
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

    fn own<'k>(
        index: &KeyIndex,
        stored: impl IntoIterator<Item = (u64, &'k str)>,
    ) -> Vec<(u64, KeyHash)> {
        stored
            .into_iter()
            .map(|(position, key)| (position, index.hash(key)))
            .collect()
    }

    #[test]
    fn two_indexes_hash_keys_differently_and_each_finds_its_own() {
        let (mut first, mut second) = (KeyIndex::default(), KeyIndex::default());
        assert_ne!(first.hash("e-1"), second.hash("e-1"));
        first.insert("e-1", 1);
        second.insert("e-1", 1);
        assert_eq!(first.candidates("e-1"), vec![1]);
        assert_eq!(second.candidates("e-1"), vec![1]);
    }

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
    fn own_keys_past_a_gap_wait_for_it_and_leave_only_the_gap_to_read() {
        let mut index = KeyIndex::default();
        index.insert("e-1", 1);
        index.record_own(own(&index, [(4, "e-4"), (5, "e-5"), (7, "e-7")]));
        assert_eq!(index.through(), 1);
        assert_eq!(index.own_waiting(), 3);
        assert_eq!(index.gaps(8), vec![(2, 2), (6, 1), (8, 1)]);
        assert_eq!(index.gaps(5), vec![(2, 2)]);
        assert!(index.gaps(1).is_empty() && index.gaps(0).is_empty());
        index.insert("e-2", 2);
        index.insert("e-3", 3);
        assert_eq!(index.through(), 5, "own keys continuing the index join it");
        assert_eq!(index.candidates("e-5"), vec![5]);
        assert_eq!(index.gaps(7), vec![(6, 1)]);
        index.insert("e-6", 6);
        assert_eq!(index.through(), 7);
        assert!(index.gaps(7).is_empty());
        // Own keys a catch-up already read are ignored; ones continuing the
        // index wait, unseen, until they are settled.
        index.record_own(own(&index, [(7, "e-7"), (8, "e-8")]));
        assert_eq!(index.own_waiting(), 1);
        assert!(index.candidates("e-8").is_empty());
        assert!(index.gaps(8).is_empty(), "a waiting own key is not read");
        index.settle();
        assert_eq!(index.own_waiting(), 0);
        assert_eq!(index.through(), 8);
        assert_eq!(index.candidates("e-7"), vec![7]);
        assert_eq!(index.candidates("e-8"), vec![8]);
    }

    #[test]
    fn an_index_of_own_keys_equals_one_read_from_the_log() {
        // The same keys, once recorded from acknowledgements in any grouping
        // and once inserted in order, give the same candidates.
        let keys: Vec<String> = (1..=50).map(|n| format!("e-{}", n % 17)).collect();
        let mut read = KeyIndex::default();
        for (offset, key) in keys.iter().enumerate() {
            read.insert(key, offset as u64 + 1);
        }
        let mut own = KeyIndex::default();
        // Batches acknowledged out of order, one gap read by a catch-up.
        let hashes: Vec<(u64, KeyHash)> = (1..=50)
            .map(|position| (position, own.hash(&keys[position as usize - 1])))
            .collect();
        own.record_own(hashes[20..50].iter().copied());
        own.record_own(hashes[0..10].iter().copied());
        assert_eq!(own.own_waiting(), 40);
        assert_eq!(own.gaps(50), vec![(11, 10)]);
        own.settle();
        assert_eq!(own.through(), 10, "the first run continues the index");
        assert_eq!(own.gaps(50), vec![(11, 10)]);
        for position in 11..=20 {
            own.insert(&keys[position as usize - 1], position);
        }
        assert_eq!(own.through(), 50);
        for key in &keys {
            assert_eq!(own.candidates(key), read.candidates(key), "{key}");
        }
    }

    proptest::proptest! {
        /// Own keys recorded in any grouping and order (each position once),
        /// gaps read in order, settled at any moment: the index equals one
        /// read from the log, key by key.
        #[test]
        fn own_runs_settled_at_any_moment_equal_the_log_read_in_order(
            keys in proptest::collection::vec(0_u8..12, 1..60),
            own_mask in proptest::collection::vec(proptest::bool::ANY, 60),
            cuts in proptest::collection::vec(1_usize..8, 1..20),
            settle_after in proptest::collection::vec(proptest::bool::ANY, 20),
            reversed in proptest::bool::ANY,
        ) {
            let keys: Vec<String> = keys.iter().map(|key| format!("e-{key}")).collect();
            let head = keys.len() as u64;
            let mut read = KeyIndex::default();
            for (offset, key) in keys.iter().enumerate() {
                read.insert(key, offset as u64 + 1);
            }
            let mut index = KeyIndex::default();
            let owned: Vec<(u64, KeyHash)> = (1..=head)
                .filter(|position| own_mask[*position as usize - 1])
                .map(|position| (position, index.hash(&keys[position as usize - 1])))
                .collect();
            let mut batches: Vec<&[(u64, KeyHash)]> = Vec::new();
            let mut rest = owned.as_slice();
            for cut in cuts.iter().cycle().take(owned.len()) {
                if rest.is_empty() {
                    break;
                }
                let (batch, after) = rest.split_at((*cut).min(rest.len()));
                batches.push(batch);
                rest = after;
            }
            if reversed {
                batches.reverse();
            }
            for (number, batch) in batches.iter().enumerate() {
                index.record_own(batch.iter().copied());
                if settle_after[number % settle_after.len()] {
                    index.settle();
                }
            }
            // A catch-up: read every gap, in order.
            index.settle();
            for (from, count) in index.gaps(head) {
                for position in from..from + count {
                    index.insert(&keys[position as usize - 1], position);
                }
            }
            index.settle();
            proptest::prop_assert_eq!(index.through(), head);
            proptest::prop_assert_eq!(index.own_waiting(), 0);
            for key in &keys {
                proptest::prop_assert_eq!(index.candidates(key), read.candidates(key));
            }
        }
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
