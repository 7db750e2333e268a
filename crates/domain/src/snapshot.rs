//! Snapshots of the domain's projections (the audit [`Cohort`] and the
//! [`Admission`] state): each projection hands out its whole state as a plain
//! serde value and is rebuilt from one, so a service can checkpoint it and
//! resume after the checkpoint's position instead of refolding the log. The
//! domain only shapes the value; encoding and files are the services' (no
//! I/O here).
//!
//! A snapshot names its format version (and, for a cohort, the rule set and
//! parameters it was folded with); a snapshot of another format, rule set or
//! parameters is refused, as is one whose internal indices do not hold
//! together, so a restored projection always behaves exactly like the one
//! that was saved.
//!
//! [`Cohort`]: crate::audit::Cohort
//! [`Admission`]: crate::admission::Admission

use crate::event::{
    EventType, Guidance, Product, Rating, ReferralTarget, ResistanceMethod, ResistanceResult,
};

/// Why a snapshot cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot is of format {found}, this build reads format {expected}")]
    Format { found: u32, expected: u32 },
    #[error("snapshot was folded with rule set {found}, this build runs {expected}")]
    RuleSet { found: String, expected: String },
    #[error("snapshot was folded with other rule parameters ({found}) than these ({expected})")]
    Parameters { found: String, expected: String },
    #[error("snapshot does not hold together: {0}")]
    Inconsistent(String),
}

/// A closed vocabulary stored in a snapshot as its index in `ALL`.
pub(crate) trait Coded: Copy + PartialEq + 'static {
    fn all() -> &'static [Self];
}

macro_rules! coded {
    ($($name:ident),+) => {
        $(impl Coded for $name {
            fn all() -> &'static [Self] {
                $name::ALL
            }
        })+
    };
}

coded!(
    EventType,
    Guidance,
    Product,
    Rating,
    ReferralTarget,
    ResistanceMethod,
    ResistanceResult
);

/// `#[serde(with = "crate::snapshot::code")]`: a vocabulary value as one
/// byte, its index in the vocabulary's `ALL` (every vocabulary has far fewer
/// than 256 values).
pub(crate) mod code {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use super::Coded;

    pub fn serialize<T: Coded, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
        // Every value of a vocabulary is in its ALL, so the search finds it.
        let index = T::all()
            .iter()
            .position(|candidate| candidate == value)
            .unwrap_or(usize::MAX);
        let code = u8::try_from(index)
            .map_err(|_| serde::ser::Error::custom("a vocabulary value has no code"))?;
        serializer.serialize_u8(code)
    }

    pub fn deserialize<'de, T: Coded, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<T, D::Error> {
        let code = u8::deserialize(deserializer)?;
        T::all()
            .get(usize::from(code))
            .copied()
            .ok_or_else(|| D::Error::custom(format!("unknown vocabulary code {code}")))
    }
}
