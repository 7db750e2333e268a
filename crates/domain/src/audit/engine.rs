//! The audit engine: one patient's events stored compactly, and the rules of
//! `spec/rules.md` evaluated over them. Everything the report counts and the
//! patient view explains comes from [`analyse`], so the two cannot disagree.
//!
//! A network-wide rebuild holds every patient's history at once (10 million
//! events over 100k patients must fit, with everything else, in a
//! gigabyte), so a [`PatientLog`] keeps only what the rules read, packed:
//!
//! - one 64-bit *word* per stored event: the event id's hash (upper 60 bits,
//!   to resolve responses and voids), a voided flag and the event's kind;
//! - the event's fields as variable-length integers in one byte buffer: the
//!   clinical day and the log position as differences from the previous
//!   event's, then by kind the product and guidance (one byte), the units,
//!   the (muscle, side) bit set, a response's rating with the distance back
//!   to its injection, a test's result or a referral's target.
//!
//! That is about 15 bytes an event instead of 32 for fixed-size records, and
//! both buffers grow by a quarter at a time so little capacity lies unused.
//! [`analyse`] decodes a patient's buffer into plain records before applying
//! the rules, so the rules read ordinary structs.
//!
//! Event ids are only ever compared within one patient (a response and a
//! void name an event of the same patient), where the chance that two ids
//! share a 60-bit hash is below one in 10^10 even for a patient with 10,000
//! events.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{
    audit::{RuleParameters, SnrGroup},
    date::ClinicalDate,
    event::{
        EventBody, Guidance, Muscle, Product, Rating, RecordedEvent, ReferralTarget,
        ResistanceResult, Serotype, Side,
    },
    ids::EventId,
};

/// The low bits of an event's word: its kind (bits 0–2) and the voided flag
/// (bit 3). The event id's hash fills the rest.
const KIND_MASK: u64 = 0b0111;
const VOIDED_FLAG: u64 = 0b1000;
const HASH_MASK: u64 = !0b1111;

/// The 60-bit hash that stands for an event id inside one patient's log, in
/// the upper bits of a word.
fn id_hash(event_id: &EventId) -> u64 {
    xxhash_rust::xxh3::xxh3_64(event_id.as_bytes()) & HASH_MASK
}

/// The kind of a stored event (registrations and voids are folded in, never
/// stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Injection,
    Response,
    Resistance,
    Referral,
    Discontinued,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Injection,
        Kind::Response,
        Kind::Resistance,
        Kind::Referral,
        Kind::Discontinued,
    ];

    fn of_word(word: u64) -> Option<Kind> {
        Kind::ALL.get((word & KIND_MASK) as usize).copied()
    }

    /// How many variable-length fields an event of this kind stores after
    /// its day and position (a single byte below 0x80 counts as one: it
    /// reads as a one-byte varint).
    fn fields_after_day_and_position(self) -> usize {
        match self {
            Kind::Injection => 3,
            Kind::Response | Kind::Resistance | Kind::Referral => 1,
            Kind::Discontinued => 0,
        }
    }
}

/// A vocabulary value as its index in the vocabulary's `ALL` (every one has
/// fewer than 8 values), and back.
fn code_of<T: Copy + PartialEq>(all: &[T], value: T) -> u8 {
    // Every value of a vocabulary is in its ALL, so the search finds it.
    all.iter()
        .position(|candidate| *candidate == value)
        .unwrap_or(0) as u8
}

fn value_of<T: Copy>(all: &[T], code: u8) -> Result<T, Corrupt> {
    all.get(usize::from(code)).copied().ok_or(Corrupt)
}

// Every (muscle, side) pair must have its own bit in a `u32` muscle set.
const _: () = assert!(Muscle::ALL.len() * Side::ALL.len() <= 32);
// Product and guidance share one byte (3 + 2 bits); so do rating and the
// distance of a response (2 bits).
const _: () = assert!(Product::ALL.len() <= 8 && Guidance::ALL.len() <= 4);
const _: () = assert!(Rating::ALL.len() <= 4);

/// The bit of a (muscle, side) pair in an injection's muscle set: 15 muscles
/// times 2 sides fit in 30 bits.
pub(crate) fn muscle_bit(muscle: Muscle, side: Side) -> u32 {
    1 << (muscle as u32 * 2 + side as u32)
}

/// The (muscle, side) pairs of a muscle set, in the contract's muscle order
/// (`set.count_ones()` of them).
pub(crate) fn muscles_of(set: u32) -> impl Iterator<Item = (Muscle, Side)> {
    Muscle::ALL.iter().flat_map(move |muscle| {
        Side::ALL
            .iter()
            .filter(move |side| set & muscle_bit(*muscle, **side) != 0)
            .map(move |side| (*muscle, *side))
    })
}

/// What the audit needs of one event, by type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detail {
    Injection {
        product: Product,
        guidance: Guidance,
        total_units: u32,
        /// The set of (muscle, side) pairs, see [`muscle_bit`].
        muscles: u32,
    },
    Response {
        /// Index, in the patient's event list, of the assessed injection.
        injection: u32,
        rating: Rating,
    },
    /// A resistance test: only its result matters to the rules.
    Resistance {
        result: ResistanceResult,
    },
    Referral {
        target: ReferralTarget,
    },
    Discontinued,
    /// A voided event: as if it had never been appended. Voids are final
    /// (a void cannot be voided), so its details are never needed again; the
    /// record stays so the indices responses point at do not move.
    Voided,
}

/// One stored event of a patient, as [`PatientLog::decode`] gives it back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CompactEvent {
    /// Global log position: breaks ties of clinical date, and orders
    /// re-assessments.
    pub position: u64,
    /// The clinical date, as days since 1970-01-01.
    pub day: i32,
    pub detail: Detail,
}

/// Appends `value` as a LEB128 variable-length integer (7 bits a byte).
fn put_varint(bytes: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        bytes.push((value as u8) | 0x80);
        value >>= 7;
    }
    bytes.push(value as u8);
}

/// The kind-specific fields of an event about to be stored.
#[derive(Debug, Clone, Copy)]
enum Payload {
    Nothing,
    Byte(u8),
    Varint(u64),
    /// Product and guidance codes, total units, muscle set.
    Injection(u8, u32, u32),
}

/// The most bytes one event's fields take: 5 of day, 10 of position, 11 of
/// an injection's fields.
const MAX_FIELDS_BYTES: usize = 26;

/// A signed difference as an unsigned integer, small for small magnitudes.
fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// The fields buffer ended early or holds an impossible value; which event
/// is at fault is told by [`PatientLog::decode_into`].
#[derive(Debug)]
struct Corrupt;

/// Reads what [`put_varint`] wrote.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, Corrupt> {
        let byte = *self.bytes.get(self.at).ok_or(Corrupt)?;
        self.at += 1;
        Ok(byte)
    }

    fn varint(&mut self) -> Result<u64, Corrupt> {
        let first = self.byte()?;
        if first < 0x80 {
            return Ok(u64::from(first));
        }
        let mut value = u64::from(first & 0x7f);
        for shift in (7..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(Corrupt)
    }
}

/// One patient's history as the audit keeps it (see the module header).
/// Registrations and voids are folded in rather than stored: a registration
/// sets a flag, a void sets its target's voided flag.
///
/// The buffers are behind an [`Arc`], so cloning a log (which is what
/// [`crate::audit::Cohort::snapshot`] does for every patient) copies no
/// event: a checkpoint of 10M events would otherwise hold a second copy of
/// the whole cohort while it is encoded. A log changed while a snapshot
/// still shares its buffers copies them first (copy on write).
#[derive(Debug, Clone, Default)]
pub(crate) struct PatientLog {
    pub registered: bool,
    /// The last stored event's day and position, which the next one's are
    /// encoded against (0 before the first).
    last_day: i32,
    last_position: u64,
    buffers: Arc<Buffers>,
}

#[derive(Debug, Default)]
struct Buffers {
    /// One word per stored event: id hash, voided flag, kind.
    words: Vec<u64>,
    /// Every stored event's fields, in order, variable-length encoded.
    fields: Vec<u8>,
}

/// A copy with room for the next event: buffers are only ever copied by
/// [`Arc::make_mut`], when a log that a snapshot still shares takes an
/// event (copy on write).
impl Clone for Buffers {
    fn clone(&self) -> Self {
        let mut copy = Buffers {
            words: Vec::with_capacity(self.words.len() + (self.words.len() / 4).max(8)),
            fields: Vec::with_capacity(self.fields.len() + (self.fields.len() / 4).max(128)),
        };
        copy.words.extend_from_slice(&self.words);
        copy.fields.extend_from_slice(&self.fields);
        copy
    }
}

/// A log as a snapshot stores it (borrowed to write, owned to read).
#[derive(Serialize)]
struct StoredLogRef<'a> {
    registered: bool,
    words: &'a [u64],
    fields: &'a [u8],
    last_day: i32,
    last_position: u64,
}

#[derive(Deserialize)]
struct StoredLog {
    registered: bool,
    words: Vec<u64>,
    fields: Vec<u8>,
    last_day: i32,
    last_position: u64,
}

impl Serialize for PatientLog {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        StoredLogRef {
            registered: self.registered,
            words: &self.buffers.words,
            fields: &self.buffers.fields,
            last_day: self.last_day,
            last_position: self.last_position,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PatientLog {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let stored = StoredLog::deserialize(deserializer)?;
        Ok(Self {
            registered: stored.registered,
            last_day: stored.last_day,
            last_position: stored.last_position,
            buffers: Arc::new(Buffers {
                words: stored.words,
                fields: stored.fields,
            }),
        })
    }
}

impl PatientLog {
    /// Folds one more event of this patient, in the patient's log order.
    /// Returns false when the event changes nothing the audit reads (a second
    /// registration, or a response or void naming an event this patient does
    /// not have: admission refuses both, so a valid log never has them).
    pub fn apply(&mut self, recorded: &RecordedEvent) -> bool {
        let event = &recorded.event;
        let (kind, payload) = match &event.body {
            EventBody::PatientRegistered(_) => {
                let changed = !self.registered;
                self.registered = true;
                return changed;
            }
            EventBody::EventVoided(void) => {
                let target_hash = id_hash(&void.target_event_id);
                return match self.find(target_hash, |_| true) {
                    Some(index) if self.buffers.words[index] & VOIDED_FLAG == 0 => {
                        let buffers = Arc::make_mut(&mut self.buffers);
                        buffers.words[index] |= VOIDED_FLAG;
                        true
                    }
                    _ => false,
                };
            }
            EventBody::InjectionAdministered(injection) => {
                let codes = code_of(Product::ALL, injection.product())
                    | code_of(Guidance::ALL, injection.guidance()) << 3;
                let muscles = injection
                    .muscles()
                    .iter()
                    .fold(0, |set, dose| set | muscle_bit(dose.muscle, dose.side));
                (
                    Kind::Injection,
                    Payload::Injection(codes, injection.total_units(), muscles),
                )
            }
            EventBody::ResponseAssessed(response) => {
                let target_hash = id_hash(&response.injection_event_id);
                // A voided event of any kind may be named: it stays out of
                // the cycles, so the response reaches none.
                let is_injection = |word: u64| {
                    word & VOIDED_FLAG != 0 || Kind::of_word(word) == Some(Kind::Injection)
                };
                let Some(index) = self.find(target_hash, is_injection) else {
                    return false;
                };
                if u32::try_from(index).is_err() {
                    return false;
                }
                let back = (self.buffers.words.len() - index) as u64;
                (
                    Kind::Response,
                    Payload::Varint(back << 2 | u64::from(code_of(Rating::ALL, response.rating))),
                )
            }
            EventBody::ResistanceTested(test) => (
                Kind::Resistance,
                Payload::Byte(code_of(ResistanceResult::ALL, test.result)),
            ),
            EventBody::ReferralMade(referral) => (
                Kind::Referral,
                Payload::Byte(code_of(ReferralTarget::ALL, referral.target)),
            ),
            EventBody::TreatmentDiscontinued(_) => (Kind::Discontinued, Payload::Nothing),
        };

        let (last_day, last_position) = (self.last_day, self.last_position);
        let buffers = self.buffers_mut();
        // Grow by a quarter rather than double: across 100k patients the
        // slack of doubling would be a third of the cohort's memory. The
        // minimum steps (8 words, 128 bytes: about 8 events) keep a short
        // history from being reallocated at every other event.
        if buffers.words.len() == buffers.words.capacity() {
            buffers
                .words
                .reserve_exact((buffers.words.len() / 4).max(8));
        }
        if buffers.fields.capacity() - buffers.fields.len() < MAX_FIELDS_BYTES {
            buffers
                .fields
                .reserve_exact((buffers.fields.len() / 4).max(128));
        }
        let day = event.occurred_on.days_since_epoch();
        put_varint(
            &mut buffers.fields,
            zigzag(i64::from(day) - i64::from(last_day)),
        );
        put_varint(
            &mut buffers.fields,
            zigzag(recorded.position.wrapping_sub(last_position) as i64),
        );
        match payload {
            Payload::Nothing => {}
            Payload::Byte(byte) => buffers.fields.push(byte),
            Payload::Varint(value) => put_varint(&mut buffers.fields, value),
            Payload::Injection(codes, total_units, muscles) => {
                buffers.fields.push(codes);
                put_varint(&mut buffers.fields, u64::from(total_units));
                put_varint(&mut buffers.fields, u64::from(muscles));
            }
        }
        buffers.words.push(id_hash(&event.event_id) | kind as u64);
        self.last_day = day;
        self.last_position = recorded.position;
        true
    }

    /// The buffers, to change: copied first (with room for the next event,
    /// see `Buffers::clone`) when a snapshot still shares them. One atomic
    /// compare-and-swap when they are not (checking with `Arc::get_mut`
    /// first took a second: both were ~15% of `Cohort::apply`, as a locked
    /// instruction waits for the decoder's stores to drain).
    fn buffers_mut(&mut self) -> &mut Buffers {
        Arc::make_mut(&mut self.buffers)
    }

    /// How many events are stored (registrations and voids are not).
    pub fn len(&self) -> usize {
        self.buffers.words.len()
    }

    /// The stored events in order, decoded. A log built by [`Self::apply`]
    /// or passed by [`Self::check_restored`] always decodes whole; were it
    /// not to, the events before the fault are returned.
    pub fn decode(&self) -> Vec<CompactEvent> {
        let mut events = Vec::with_capacity(self.buffers.words.len());
        // Cannot fail for a log built by apply; a restored log is checked.
        let _complete = self.decode_into(&mut events);
        events
    }

    fn decode_into(&self, events: &mut Vec<CompactEvent>) -> Result<(), String> {
        let Buffers { words, fields } = &*self.buffers;
        let mut reader = Reader {
            bytes: fields,
            at: 0,
        };
        let mut day = 0i64;
        let mut position = 0u64;
        for (index, word) in words.iter().enumerate() {
            let event = decode_one(&mut reader, index, *word, &mut day, &mut position).map_err(
                |Corrupt| {
                    format!(
                        "event {index} does not decode (or is a response to an event that does \
                         not precede it)"
                    )
                },
            )?;
            events.push(event);
        }
        if reader.at != fields.len() {
            return Err(format!(
                "{} bytes of event fields follow the last event",
                fields.len() - reader.at
            ));
        }
        if i64::from(self.last_day) != day || self.last_position != position {
            return Err("the last event's day or position does not match".to_owned());
        }
        Ok(())
    }

    /// Checks what a restored log must hold for the rules to read it: every
    /// event decodes, a response names an earlier event of this log, every
    /// day is a calendar date and every injection's muscles are known ones
    /// (so its view shows each of its facts one to one, which
    /// `audit::change` relies on: see `judged_by_analyses`).
    pub fn check_restored(&self) -> Result<(), String> {
        let mut events = Vec::with_capacity(self.len());
        self.decode_into(&mut events)?;
        let known_muscles = Muscle::ALL
            .iter()
            .flat_map(|muscle| Side::ALL.iter().map(|side| muscle_bit(*muscle, *side)))
            .fold(0, |set, bit| set | bit);
        for (index, event) in events.iter().enumerate() {
            // Years 1 to 9999 first, so the conversion cannot overflow.
            if !(-719_162..=2_932_896).contains(&event.day)
                || ClinicalDate::from_days_since_epoch(event.day).is_none()
            {
                return Err(format!("event {index} has no calendar date"));
            }
            if let Detail::Injection { muscles, .. } = event.detail
                && muscles & !known_muscles != 0
            {
                return Err(format!("event {index} names a muscle that does not exist"));
            }
        }
        Ok(())
    }

    /// For a log whose last stored event is a live response: whether it
    /// changes the current rating of the injection it names, told from the
    /// tail of the log without decoding the rest. True when the injection
    /// is live and its last earlier live response rated it otherwise (or
    /// there is none); false for a voided injection, or the same rating.
    /// `None` when the last event is not a live response (or the buffers do
    /// not read back, which a log built by [`Self::apply`] or passed by
    /// [`Self::check_restored`] never does): the caller decodes instead.
    ///
    /// Every field is a LEB128 varint or a single byte below 0x80, so each
    /// ends at a byte below 0x80 and every other byte of it is at or above
    /// 0x80: the fields read backwards as well as forwards, and the words
    /// tell how many fields each event has. The walk stops at the injection
    /// named, usually a few events back.
    pub fn last_response_changes_rating(&self) -> Option<bool> {
        let Buffers { words, fields } = &*self.buffers;
        let last = words.len().checked_sub(1)?;
        let mut end = fields.len();
        let mut named: Option<(usize, u64)> = None;
        for index in (0..=last).rev() {
            let word = words[index];
            let kind = Kind::of_word(word)?;
            let live_response = kind == Kind::Response && word & VOIDED_FLAG == 0;
            // A response's one field after day and position: the distance
            // back to its injection, then the rating's code in 2 bits.
            let response = if live_response {
                let start = field_start(fields, end)?;
                let mut reader = Reader {
                    bytes: &fields[..end],
                    at: start,
                };
                let packed = reader.varint().ok()?;
                let back = usize::try_from(packed >> 2).ok().filter(|back| *back > 0)?;
                Some((index.checked_sub(back)?, packed & 0b11))
            } else {
                None
            };
            match named {
                None => {
                    let (injection, rating) = response?;
                    let injection_word = words[injection];
                    if injection_word & VOIDED_FLAG != 0
                        || Kind::of_word(injection_word) != Some(Kind::Injection)
                    {
                        return Some(false);
                    }
                    named = Some((injection, rating));
                }
                Some((injection, rating)) => {
                    if index <= injection {
                        // No earlier live response names it: it was unrated.
                        return Some(true);
                    }
                    if let Some((earlier_injection, earlier_rating)) = response
                        && earlier_injection == injection
                    {
                        return Some(earlier_rating != rating);
                    }
                }
            }
            for _ in 0..kind.fields_after_day_and_position() + 2 {
                end = field_start(fields, end)?;
            }
        }
        // Not reached: at index 0 the walk has returned, whatever it found.
        None
    }

    /// The latest event with this id hash whose word passes `filter`.
    /// Searching from the end finds the usual targets (the last injection, a
    /// recent mistake) in a step or two.
    fn find(&self, hash: u64, filter: impl Fn(u64) -> bool) -> Option<usize> {
        self.buffers
            .words
            .iter()
            .rposition(|word| word & HASH_MASK == hash && filter(*word))
    }
}

/// Where the field that ends just before `end` begins: its last byte is
/// below 0x80 and every byte before it that belongs to it is at or above.
#[inline]
fn field_start(fields: &[u8], end: usize) -> Option<usize> {
    let last = end.checked_sub(1)?;
    if *fields.get(last)? >= 0x80 {
        return None;
    }
    let mut start = last;
    while start > 0 && fields[start - 1] >= 0x80 {
        start -= 1;
    }
    Some(start)
}

/// Decodes the event at `index`, whose word is `word`, moving the running
/// day and position on by its differences.
#[inline]
fn decode_one(
    reader: &mut Reader<'_>,
    index: usize,
    word: u64,
    day: &mut i64,
    position: &mut u64,
) -> Result<CompactEvent, Corrupt> {
    let kind = Kind::of_word(word).ok_or(Corrupt)?;
    *day += unzigzag(reader.varint()?);
    let event_day = i32::try_from(*day).map_err(|_| Corrupt)?;
    *position = position.wrapping_add(unzigzag(reader.varint()?) as u64);
    let detail = match kind {
        Kind::Injection => {
            let codes = reader.byte()?;
            let total_units = u32::try_from(reader.varint()?).map_err(|_| Corrupt)?;
            let muscles = u32::try_from(reader.varint()?).map_err(|_| Corrupt)?;
            Detail::Injection {
                product: value_of(Product::ALL, codes & 0b111)?,
                guidance: value_of(Guidance::ALL, codes >> 3)?,
                total_units,
                muscles,
            }
        }
        Kind::Response => {
            let packed = reader.varint()?;
            let back = usize::try_from(packed >> 2).map_err(|_| Corrupt)?;
            let injection = index
                .checked_sub(back)
                .filter(|_| back > 0)
                .and_then(|injection| u32::try_from(injection).ok())
                .ok_or(Corrupt)?;
            Detail::Response {
                injection,
                rating: value_of(Rating::ALL, (packed & 0b11) as u8)?,
            }
        }
        Kind::Resistance => Detail::Resistance {
            result: value_of(ResistanceResult::ALL, reader.byte()?)?,
        },
        Kind::Referral => Detail::Referral {
            target: value_of(ReferralTarget::ALL, reader.byte()?)?,
        },
        Kind::Discontinued => Detail::Discontinued,
    };
    Ok(CompactEvent {
        position: *position,
        day: event_day,
        detail: if word & VOIDED_FLAG != 0 {
            Detail::Voided
        } else {
            detail
        },
    })
}

/// One live cycle, in clinical order, with what the rules found about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CycleFacts {
    pub position: u64,
    pub day: i32,
    pub product: Product,
    pub guidance: Guidance,
    pub total_units: u32,
    pub muscles: u32,
    /// The current rating: the last live assessment by position.
    pub rating: Option<Rating>,
    /// A post-onset BoNT-A cycle that differs from the one before it.
    pub adjusted: bool,
}

impl CycleFacts {
    pub fn is_bont_a(&self) -> bool {
        self.product.serotype() == Serotype::A
    }
}

/// What the rules found after a patient's SNR onset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SnrFacts {
    /// Index of the onset cycle O in [`Analysis::cycles`].
    pub onset: usize,
    pub group: SnrGroup,
    /// Good BoNT-A cycles before O.
    pub good_cycles_before_onset: u32,
    pub first_adjusted_day: Option<i32>,
    /// Index of the first good post-onset BoNT-A cycle R, when no post-onset
    /// BoNT-B cycle comes before it.
    pub regained: Option<usize>,
    pub regained_with_adjustment: bool,
    pub first_bont_b_day: Option<i32>,
    pub first_dbs_referral_day: Option<i32>,
    pub first_resistance_test_day: Option<i32>,
    pub first_positive_test_day: Option<i32>,
    /// BNN-1 numerator: an adjusted cycle strictly before the escalation date.
    pub adjusted_before_escalation: bool,
    /// BNN-3 numerator: a post-onset test on or before the first post-onset
    /// BoNT-B cycle's date.
    pub tested_by_first_bont_b: bool,
    /// BNN-4 numerator: the earliest change of management on or after the
    /// first positive test's date.
    pub management_change_day: Option<i32>,
}

impl SnrFacts {
    /// The first escalation date: the earlier of the first post-onset BoNT-B
    /// cycle and the earliest post-onset DBS referral.
    pub fn escalation_day(&self) -> Option<i32> {
        match (self.first_bont_b_day, self.first_dbs_referral_day) {
            (Some(switch), Some(referral)) => Some(switch.min(referral)),
            (switch, referral) => switch.or(referral),
        }
    }
}

/// Everything the rules say about one patient.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Analysis {
    pub registered: bool,
    /// Live cycles in clinical order: (occurred_on, position).
    pub cycles: Vec<CycleFacts>,
    pub snr: Option<SnrFacts>,
    /// INT-1: consecutive pairs of cycles, and those far enough apart.
    pub interval_pairs: u64,
    pub interval_pairs_met: u64,
}

/// Evaluates the rules over one patient's log.
pub(crate) fn analyse(log: &PatientLog, parameters: &RuleParameters) -> Analysis {
    let decoded = log.decode();
    let events = &decoded[..];

    // The current rating of each injection: its last live assessment by
    // position. A voided injection's assessments never reach a cycle,
    // because the cycle list below holds live injections only.
    let mut latest_rating: Vec<Option<(u64, Rating)>> = vec![None; events.len()];
    for event in events {
        if let Detail::Response { injection, rating } = event.detail
            && let Some(slot) = latest_rating.get_mut(injection as usize)
            && slot.is_none_or(|(position, _)| position < event.position)
        {
            *slot = Some((event.position, rating));
        }
    }

    let mut cycles: Vec<CycleFacts> = events
        .iter()
        .zip(&latest_rating)
        .filter_map(|(event, rating)| match event.detail {
            Detail::Injection {
                product,
                guidance,
                total_units,
                muscles,
            } => Some(CycleFacts {
                position: event.position,
                day: event.day,
                product,
                guidance,
                total_units,
                muscles,
                rating: rating.map(|(_, rating)| rating),
                adjusted: false,
            }),
            _ => None,
        })
        .collect();
    cycles.sort_unstable_by_key(|cycle| (cycle.day, cycle.position));

    let mut interval_pairs = 0;
    let mut interval_pairs_met = 0;
    for pair in cycles.windows(2) {
        interval_pairs += 1;
        if i64::from(pair[1].day) - i64::from(pair[0].day)
            >= i64::from(parameters.min_interval_days)
        {
            interval_pairs_met += 1;
        }
    }

    let snr = find_onset(&cycles, parameters).map(|(onset, group, good)| {
        after_onset(events, &mut cycles, onset, group, good, parameters)
    });

    Analysis {
        registered: log.registered,
        cycles,
        snr,
        interval_pairs,
        interval_pairs_met,
    }
}

/// Walks the BoNT-A cycles for the onset cycle O: the first poor one after at
/// least `min_good_cycles_before_snr` good ones. Unrated cycles neither count
/// nor stop the walk; a poor cycle does not reset the count.
fn find_onset(
    cycles: &[CycleFacts],
    parameters: &RuleParameters,
) -> Option<(usize, SnrGroup, u32)> {
    let mut good = 0u32;
    for (index, cycle) in cycles.iter().enumerate() {
        if !cycle.is_bont_a() {
            continue;
        }
        match cycle.rating {
            None => {}
            Some(Rating::Good) => good = good.saturating_add(1),
            Some(poor) if good >= parameters.min_good_cycles_before_snr => {
                let group = if poor == Rating::None {
                    SnrGroup::NoResponse
                } else {
                    SnrGroup::Suboptimal
                };
                return Some((index, group, good));
            }
            // A poor cycle too early for SNR neither counts nor resets.
            Some(_) => {}
        }
    }
    None
}

/// True when J differs from P, the cycle before it, enough to count as an
/// adjustment: muscles, guidance, or (same product only) the dose by at least
/// `dose_change_min_pct` percent of P's, in exact integer arithmetic.
fn is_adjustment(previous: &CycleFacts, cycle: &CycleFacts, parameters: &RuleParameters) -> bool {
    if cycle.muscles != previous.muscles || cycle.guidance != previous.guidance {
        return true;
    }
    if cycle.product != previous.product {
        return false;
    }
    let change = u64::from(cycle.total_units.abs_diff(previous.total_units));
    change * 100 >= u64::from(parameters.dose_change_min_pct) * u64::from(previous.total_units)
}

/// Everything after the onset: adjusted cycles, regained, escalation, tests,
/// and the standards' numerators.
fn after_onset(
    events: &[CompactEvent],
    cycles: &mut [CycleFacts],
    onset: usize,
    group: SnrGroup,
    good_cycles_before_onset: u32,
    parameters: &RuleParameters,
) -> SnrFacts {
    let onset_day = cycles[onset].day;
    let onset_product = cycles[onset].product;

    // Adjusted cycles: each post-onset BoNT-A cycle against the one before it
    // (any product; O itself can be that one, but is never adjusted).
    for index in onset + 1..cycles.len() {
        if cycles[index].is_bont_a() {
            cycles[index].adjusted = is_adjustment(&cycles[index - 1], &cycles[index], parameters);
        }
    }
    let post_onset = &cycles[onset + 1..];
    let first_adjusted_day = post_onset
        .iter()
        .find(|cycle| cycle.adjusted)
        .map(|c| c.day);
    let first_bont_b_day = post_onset
        .iter()
        .find(|cycle| !cycle.is_bont_a())
        .map(|c| c.day);

    // Regained: the first good post-onset BoNT-A cycle R, unless a BoNT-B
    // cycle comes first; with adjustment when an adjusted cycle lies in (O, R].
    let mut regained = None;
    let mut adjusted_so_far = false;
    let mut regained_with_adjustment = false;
    for (offset, cycle) in post_onset.iter().enumerate() {
        if !cycle.is_bont_a() {
            break;
        }
        adjusted_so_far |= cycle.adjusted;
        if cycle.rating == Some(Rating::Good) {
            regained = Some(onset + 1 + offset);
            regained_with_adjustment = adjusted_so_far;
            break;
        }
    }

    // Post-onset tests and referrals go by date, not by cycle order.
    let mut first_dbs_referral_day: Option<i32> = None;
    let mut first_resistance_test_day: Option<i32> = None;
    let mut first_positive_test_day: Option<i32> = None;
    let mut tested_by_first_bont_b = false;
    for event in events.iter().filter(|event| event.day >= onset_day) {
        match event.detail {
            Detail::Referral {
                target: ReferralTarget::Dbs,
            } => first_dbs_referral_day = earliest(first_dbs_referral_day, event.day),
            Detail::Resistance { result, .. } => {
                first_resistance_test_day = earliest(first_resistance_test_day, event.day);
                if result == ResistanceResult::Positive {
                    first_positive_test_day = earliest(first_positive_test_day, event.day);
                }
                if first_bont_b_day.is_some_and(|switch| event.day <= switch) {
                    tested_by_first_bont_b = true;
                }
            }
            _ => {}
        }
    }

    let mut facts = SnrFacts {
        onset,
        group,
        good_cycles_before_onset,
        first_adjusted_day,
        regained,
        regained_with_adjustment,
        first_bont_b_day,
        first_dbs_referral_day,
        first_resistance_test_day,
        first_positive_test_day,
        adjusted_before_escalation: false,
        tested_by_first_bont_b,
        management_change_day: None,
    };
    if let Some(escalation) = facts.escalation_day() {
        facts.adjusted_before_escalation = cycles[onset + 1..]
            .iter()
            .any(|cycle| cycle.adjusted && cycle.day < escalation);
    }
    if let Some(confirmed) = first_positive_test_day {
        facts.management_change_day =
            management_change_on_or_after(events, cycles, onset_product, confirmed);
    }
    facts
}

/// BNN-4: the earliest date, on or after `confirmed`, of a BoNT-B cycle, a
/// BoNT-A cycle of another product than O's, a referral to DBS or peripheral
/// denervation, or a discontinuation. All compared by date.
fn management_change_on_or_after(
    events: &[CompactEvent],
    cycles: &[CycleFacts],
    onset_product: Product,
    confirmed: i32,
) -> Option<i32> {
    let mut change = None;
    for cycle in cycles.iter().filter(|cycle| cycle.day >= confirmed) {
        if !cycle.is_bont_a() || cycle.product != onset_product {
            change = earliest(change, cycle.day);
        }
    }
    for event in events.iter().filter(|event| event.day >= confirmed) {
        let changes_management = matches!(
            event.detail,
            Detail::Referral {
                target: ReferralTarget::Dbs | ReferralTarget::PeripheralDenervation
            } | Detail::Discontinued
        );
        if changes_management {
            change = earliest(change, event.day);
        }
    }
    change
}

fn earliest(current: Option<i32>, day: i32) -> Option<i32> {
    Some(current.map_or(day, |current| current.min(day)))
}

#[cfg(test)]
mod tests {
    //! The packed log against a plain model of the fixed-size records it
    //! replaced: every event it stores decodes to exactly the record the
    //! model keeps, whatever the dates, positions and vocabularies.

    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;
    use crate::{
        date::ClinicalDate,
        event::{
            Event, EventVoided, InjectionAdministered, MuscleDose, PatientRegistered,
            ResistanceMethod, ResistanceTested, ResponseAssessed, TreatmentDiscontinued,
        },
        ids::{Centre, Pseudonym},
    };

    /// The model: one record per stored event, by full event id.
    #[derive(Default)]
    struct Model {
        registered: bool,
        events: Vec<(String, u64, i32, Detail)>,
    }

    impl Model {
        fn find(&self, id: &str, filter: impl Fn(&Detail) -> bool) -> Option<usize> {
            self.events
                .iter()
                .rposition(|(event_id, _, _, detail)| event_id == id && filter(detail))
        }

        fn apply(&mut self, recorded: &RecordedEvent) -> bool {
            let event = &recorded.event;
            let detail = match &event.body {
                EventBody::PatientRegistered(_) => {
                    let changed = !self.registered;
                    self.registered = true;
                    return changed;
                }
                EventBody::EventVoided(void) => {
                    return match self.find(void.target_event_id.as_str(), |_| true) {
                        Some(index) if self.events[index].3 != Detail::Voided => {
                            self.events[index].3 = Detail::Voided;
                            true
                        }
                        _ => false,
                    };
                }
                EventBody::InjectionAdministered(injection) => Detail::Injection {
                    product: injection.product(),
                    guidance: injection.guidance(),
                    total_units: injection.total_units(),
                    muscles: injection
                        .muscles()
                        .iter()
                        .fold(0, |set, dose| set | muscle_bit(dose.muscle, dose.side)),
                },
                EventBody::ResponseAssessed(response) => {
                    let is_injection = |detail: &Detail| {
                        matches!(detail, Detail::Injection { .. } | Detail::Voided)
                    };
                    let Some(index) = self.find(response.injection_event_id.as_str(), is_injection)
                    else {
                        return false;
                    };
                    Detail::Response {
                        injection: index as u32,
                        rating: response.rating,
                    }
                }
                EventBody::ResistanceTested(test) => Detail::Resistance {
                    result: test.result,
                },
                EventBody::ReferralMade(referral) => Detail::Referral {
                    target: referral.target,
                },
                EventBody::TreatmentDiscontinued(_) => Detail::Discontinued,
            };
            self.events.push((
                event.event_id.as_str().to_owned(),
                recorded.position,
                event.occurred_on.days_since_epoch(),
                detail,
            ));
            true
        }
    }

    /// (kind, day, position, choice) → one event; ids are `e-<index>`, and
    /// responses and voids name an earlier (or a missing) id by `choice`.
    fn event_of(index: usize, step: (u8, i32, u64, u32)) -> RecordedEvent {
        let (kind, day, position, choice) = step;
        let named = EventId::parse(&format!("e-{}", choice as usize % (index + 2))).unwrap();
        let pick = |all_len: usize| (choice as usize) % all_len;
        let body = match kind % 7 {
            0 => EventBody::PatientRegistered(PatientRegistered::default()),
            1 | 2 => {
                let product = Product::ALL[pick(Product::ALL.len())];
                let mut muscles = Vec::new();
                let mut total = 0;
                for (bit, muscle) in Muscle::ALL.iter().enumerate() {
                    if choice >> bit & 1 == 1 {
                        // At most the product's hard maximum shared out over every
                        // muscle, so the total of any muscle set stays valid.
                        let per_muscle_cap =
                            (product.hard_maximum_units() / Muscle::ALL.len() as u32).clamp(1, 40);
                        let units = 1 + (choice >> 16) % per_muscle_cap;
                        total += units;
                        muscles.push(MuscleDose {
                            muscle: *muscle,
                            side: Side::ALL[(choice >> (bit + 1)) as usize % 2],
                            units,
                        });
                    }
                }
                if muscles.is_empty() {
                    total = 1 + choice % product.hard_maximum_units();
                    muscles.push(MuscleDose {
                        muscle: Muscle::Platysma,
                        side: Side::Right,
                        units: total,
                    });
                }
                let guidance = Guidance::ALL[(choice >> 20) as usize % Guidance::ALL.len()];
                EventBody::InjectionAdministered(
                    InjectionAdministered::new(product, total, guidance, muscles).unwrap(),
                )
            }
            3 => EventBody::ResponseAssessed(ResponseAssessed {
                injection_event_id: named,
                rating: Rating::ALL[pick(Rating::ALL.len())],
                percent_improvement: None,
                benefit_weeks: None,
                twstrs_total: None,
            }),
            4 => EventBody::ResistanceTested(ResistanceTested {
                method: ResistanceMethod::ALL[pick(ResistanceMethod::ALL.len())],
                result: ResistanceResult::ALL[(choice >> 8) as usize % 3],
                titre_mu_per_ml: None,
            }),
            5 => {
                if choice % 2 == 0 {
                    EventBody::ReferralMade(crate::event::ReferralMade {
                        target: ReferralTarget::ALL[pick(ReferralTarget::ALL.len())],
                    })
                } else {
                    EventBody::TreatmentDiscontinued(TreatmentDiscontinued {
                        reason: "stopped".to_owned(),
                    })
                }
            }
            _ => EventBody::EventVoided(EventVoided {
                target_event_id: named,
                reason: "mistake".to_owned(),
            }),
        };
        RecordedEvent {
            position,
            recorded_at_micros: 0,
            recorded_by: Default::default(),
            event: Event {
                event_id: EventId::parse(&format!("e-{index}")).unwrap(),
                centre: Centre::parse("leeds").unwrap(),
                patient: Pseudonym::parse("L-1").unwrap(),
                occurred_on: ClinicalDate::from_days_since_epoch(day).unwrap(),
                body,
            },
        }
    }

    fn day() -> impl Strategy<Value = i32> {
        prop_oneof![
            // Near each other, as in a real history...
            -800i32..800,
            // ...and anywhere in the calendar the type allows.
            -700_000i32..2_900_000,
        ]
    }

    fn position() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..5_000, any::<u64>()]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn the_packed_log_decodes_to_the_records_of_the_plain_model(
            steps in proptest::collection::vec((0u8..7, day(), position(), any::<u32>()), 0..200),
        ) {
            let mut log = PatientLog::default();
            let mut model = Model::default();
            for (index, step) in steps.into_iter().enumerate() {
                let recorded = event_of(index, step);
                prop_assert_eq!(log.apply(&recorded), model.apply(&recorded));
            }
            let decoded = log.decode();
            prop_assert_eq!(decoded.len(), model.events.len());
            for (event, (_, position, day, detail)) in decoded.iter().zip(&model.events) {
                prop_assert_eq!(event.position, *position);
                prop_assert_eq!(event.day, *day);
                prop_assert_eq!(event.detail, *detail);
            }
            prop_assert_eq!(log.registered, model.registered);
            prop_assert!(log.check_restored().is_ok());
        }
    }

    proptest! {
        /// An id's hash is that of its text, whether the id is held inline
        /// or on the heap (`id_hash` reads the bytes without re-checking
        /// them as UTF-8).
        #[test]
        fn an_ids_hash_is_the_hash_of_its_text(text in "[A-Za-z0-9._:-]{1,64}") {
            let id = EventId::parse(&text).unwrap();
            prop_assert_eq!(id.as_bytes(), text.as_bytes());
            prop_assert_eq!(
                id_hash(&id),
                xxhash_rust::xxh3::xxh3_64(text.as_bytes()) & HASH_MASK
            );
        }
    }

    /// What [`PatientLog::last_response_changes_rating`] must answer, from
    /// the whole decoded log.
    fn rating_change_by_decoding(log: &PatientLog) -> Option<bool> {
        let events = log.decode();
        let (last, earlier) = events.split_last()?;
        let Detail::Response { injection, rating } = last.detail else {
            return None;
        };
        if !matches!(
            earlier.get(injection as usize).map(|event| event.detail),
            Some(Detail::Injection { .. })
        ) {
            return Some(false);
        }
        let current = earlier[injection as usize + 1..]
            .iter()
            .rev()
            .find_map(|event| match event.detail {
                Detail::Response {
                    injection: named,
                    rating,
                } if named == injection => Some(rating),
                _ => None,
            });
        Some(current != Some(rating))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn reading_a_response_from_the_tail_answers_what_decoding_the_log_answers(
            steps in proptest::collection::vec((0u8..7, day(), position(), any::<u32>()), 0..200),
        ) {
            let mut log = PatientLog::default();
            for (index, step) in steps.into_iter().enumerate() {
                // Responses more often, so that injections get several.
                let step = if step.0 == 2 { (3, step.1, step.2, step.3) } else { step };
                log.apply(&event_of(index, step));
                prop_assert_eq!(
                    log.last_response_changes_rating(),
                    rating_change_by_decoding(&log),
                    "after event {}", index
                );
            }
        }
    }

    #[test]
    fn a_clone_keeps_its_events_when_the_original_changes_after_it() {
        let mut log = PatientLog::default();
        log.apply(&event_of(0, (1, 10_000, 7, 3)));
        log.apply(&event_of(1, (1, 10_090, 9, 5)));
        let snapshot = log.clone();
        let before: Vec<_> = snapshot
            .decode()
            .iter()
            .map(|e| (e.position, e.detail))
            .collect();
        // A response, then a void of the first injection, both after the clone.
        log.apply(&event_of(2, (3, 10_120, 11, 0)));
        log.apply(&event_of(3, (6, 10_121, 12, 0)));
        assert_eq!(log.len(), 3);
        assert_eq!(log.decode()[0].detail, Detail::Voided);
        let after: Vec<_> = snapshot
            .decode()
            .iter()
            .map(|e| (e.position, e.detail))
            .collect();
        assert_eq!(after, before);
        assert_eq!(snapshot.len(), 2);
        assert!(snapshot.check_restored().is_ok() && log.check_restored().is_ok());
    }

    #[test]
    fn a_restored_log_whose_fields_do_not_decode_is_refused() {
        let mut log = PatientLog::default();
        log.apply(&event_of(0, (1, 10_000, 7, 3)));
        log.apply(&event_of(1, (3, 10_035, 9, 0)));
        assert!(log.check_restored().is_ok());

        let mut truncated = log.clone();
        Arc::make_mut(&mut truncated.buffers).fields.pop();
        assert!(truncated.check_restored().is_err());

        let mut trailing = log.clone();
        Arc::make_mut(&mut trailing.buffers).fields.push(0);
        assert!(trailing.check_restored().is_err());

        let mut unknown_kind = log.clone();
        Arc::make_mut(&mut unknown_kind.buffers).words[0] |= KIND_MASK;
        assert!(unknown_kind.check_restored().is_err());

        let mut response_to_itself = log.clone();
        let fields = &mut Arc::make_mut(&mut response_to_itself.buffers).fields;
        let last = fields.len() - 1;
        fields[last] &= 0b11;
        assert!(response_to_itself.check_restored().is_err());

        let mut wrong_last_day = log;
        wrong_last_day.last_day += 1;
        assert!(wrong_last_day.check_restored().is_err());
    }

    /// A stored log of one event of `kind` on `day`, as a snapshot holds
    /// it; `fields_after` are its fields after day and position.
    fn stored_log(day: i32, kind: Kind, fields_after: &[u64]) -> PatientLog {
        let mut fields = Vec::new();
        put_varint(&mut fields, zigzag(i64::from(day)));
        put_varint(&mut fields, zigzag(7));
        for field in fields_after {
            put_varint(&mut fields, *field);
        }
        let stored = serde_json::json!({
            "registered": true,
            "words": [id_hash(&EventId::parse("e-1").unwrap()) | kind as u64],
            "fields": fields,
            "last_day": day,
            "last_position": 7,
        });
        serde_json::from_value(stored).unwrap()
    }

    /// What decodes but no event could have stored: a day that is no
    /// calendar date, a muscle set with bits no (muscle, side) has.
    #[test]
    fn a_restored_log_of_impossible_values_is_refused() {
        let codes = u64::from(code_of(Product::ALL, Product::OnabotulinumtoxinA));
        let one_muscle = u64::from(muscle_bit(Muscle::Platysma, Side::Right));
        let fine = stored_log(17_000, Kind::Injection, &[codes, 100, one_muscle]);
        assert!(fine.check_restored().is_ok());
        assert_eq!(fine.decode().len(), 1);
        let unknown_muscle = stored_log(17_000, Kind::Injection, &[codes, 100, 1 << 31]);
        assert!(unknown_muscle.check_restored().is_err());
        for day in [i32::MAX, i32::MIN, 3_000_000, -800_000] {
            assert!(
                stored_log(day, Kind::Discontinued, &[])
                    .check_restored()
                    .is_err()
            );
        }
        assert!(
            stored_log(0, Kind::Discontinued, &[])
                .check_restored()
                .is_ok()
        );
    }
}
