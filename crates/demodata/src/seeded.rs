//! The seeded random source behind every generator of this crate.
//!
//! Demo files must be the same for the same seed on every machine and with
//! every library version, forever: a golden report is checked against them.
//! General-purpose crates do not promise that (`rand` changed its sampling
//! algorithms between versions), so this crate carries its own SplitMix64
//! (Steele, Lea and Flood, 2014), a tiny generator with a fixed, documented
//! output stream that is more than good enough for synthetic clinical data.

/// A deterministic, platform-independent pseudo-random stream.
#[derive(Debug, Clone)]
pub(crate) struct SeededRandom {
    state: u64,
}

/// The SplitMix64 increment (the golden ratio in 64-bit fixed point).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output function, a bijection on `u64`.
pub(crate) fn mix64(value: u64) -> u64 {
    let mut z = value;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SeededRandom {
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// An independent stream for one member of a family (a patient, a block),
    /// so that changing one patient's history does not shift every other's.
    pub(crate) fn derive(seed: u64, stream: u64) -> Self {
        Self::new(mix64(seed ^ mix64(stream.wrapping_add(GOLDEN_GAMMA))))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix64(self.state)
    }

    /// A value in `0..bound` (Lemire's multiply-shift; the bias is below
    /// 2^-32 for the small bounds used here). `bound` 0 gives 0.
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// A value in `low..=high` (`high` below `low` gives `low`).
    pub(crate) fn between(&mut self, low: i64, high: i64) -> i64 {
        if high <= low {
            return low;
        }
        // The span fits in u64 because both ends are i64.
        let span = high.abs_diff(low) + 1;
        low.wrapping_add(self.below(span) as i64)
    }

    /// `between` for the small unsigned quantities of clinical data.
    pub(crate) fn between_u32(&mut self, low: u32, high: u32) -> u32 {
        // Both ends are u32, so the result is within u32.
        self.between(i64::from(low), i64::from(high)) as u32
    }

    /// True with probability `percent` / 100.
    pub(crate) fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// True with probability `per_mille` / 1000.
    pub(crate) fn per_mille(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    /// One element of a non-empty slice (the first when it is empty is
    /// impossible: callers pass constant, non-empty tables).
    pub(crate) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// Fisher–Yates shuffle.
    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for index in (1..items.len()).rev() {
            let other = self.below(index as u64 + 1) as usize;
            items.swap(index, other);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_the_published_splitmix64() {
        // Reference values of SplitMix64 seeded with 1234567.
        let mut random = SeededRandom::new(1_234_567);
        assert_eq!(random.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(random.next_u64(), 3_203_168_211_198_807_973);
    }

    #[test]
    fn between_stays_in_range_and_reaches_both_ends() {
        let mut random = SeededRandom::new(7);
        let mut seen = [false; 5];
        for _ in 0..1000 {
            let value = random.between(3, 7);
            assert!((3..=7).contains(&value));
            seen[(value - 3) as usize] = true;
        }
        assert!(seen.iter().all(|&hit| hit));
        assert_eq!(random.between(5, 5), 5);
        assert_eq!(random.between(5, 2), 5);
    }
}
