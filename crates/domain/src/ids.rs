//! Identifiers of the envelope: the event id (idempotency key), the centre,
//! and the patient pseudonym. Each is a newtype whose only constructor checks
//! the contract, so holding one proves it is valid.
//!
//! Each holds a [`CompactString`]: every replay builds the ids of every
//! stored event, and a centre or pseudonym (up to 24 bytes, i.e. all in
//! practice) is then stored inline instead of in an allocation of its own.
//! An event id (a UUID, 36 bytes, in practice) is held inline in 40 bytes
//! of its own; only one longer than 38 characters allocates.

use std::fmt;

use compact_str::CompactString;

/// The bytes an id's alphabet allows, one flag per byte value.
type ByteSet = [bool; 256];

/// An ASCII alphabet as a [`ByteSet`]: the letters and digits asked for and
/// the `extra` punctuation. No byte of a non-ASCII character (all >= 0x80)
/// is ever in it.
const fn ascii_set(upper: bool, lower: bool, digits: bool, extra: &[u8]) -> ByteSet {
    let mut set = [false; 256];
    let mut byte = 0;
    while byte < 128 {
        let b = byte as u8;
        set[byte] = (upper && b.is_ascii_uppercase())
            || (lower && b.is_ascii_lowercase())
            || (digits && b.is_ascii_digit());
        byte += 1;
    }
    let mut index = 0;
    while index < extra.len() {
        set[extra[index] as usize] = true;
        index += 1;
    }
    set
}

const EVENT_ID_BYTES: ByteSet = ascii_set(true, true, true, b"._:-");
const CENTRE_BYTES: ByteSet = ascii_set(false, true, true, b"-");
const PSEUDONYM_BYTES: ByteSet = ascii_set(true, true, true, b"._-");

/// True when every byte of `text` is in `allowed`, i.e. every character is
/// one of its ASCII characters. One table lookup per byte and no branch:
/// every stored event's ids are checked again on each replay, and event ids
/// are random (UUIDs), on which a per-character branch between letters,
/// digits and punctuation mispredicts again and again.
fn all_bytes_in(text: &[u8], allowed: &ByteSet) -> bool {
    text.iter()
        .fold(true, |all, byte| all & allowed[usize::from(*byte)])
}

/// The length of a refused text in characters, as its reason states it.
/// The bytes of a stored record are not yet known to be UTF-8; for a text
/// that is (every other source's), this is `str::chars().count()`.
fn characters(text: &[u8]) -> usize {
    String::from_utf8_lossy(text).chars().count()
}

/// Why a text whose length in bytes is outside `minimum..=maximum` is
/// refused: its length in characters when that is outside too, else its
/// alphabet (`alphabet_refusal`): only a non-ASCII character makes a text
/// longer in bytes than in characters, and none is allowed, so "must be 1
/// to 64 characters, got 40" would contradict itself.
fn length_refusal(text: &[u8], minimum: usize, maximum: usize, alphabet_refusal: &str) -> String {
    let count = characters(text);
    if (minimum..=maximum).contains(&count) {
        alphabet_refusal.to_owned()
    } else {
        format!("must be {minimum} to {maximum} characters, got {count}")
    }
}

/// The id of bytes already found to be in an ASCII alphabet, so always
/// UTF-8; `refusal` is the alphabet's reason, for the case that cannot
/// happen.
fn ascii_id(text: &[u8], refusal: &str) -> Result<CompactString, String> {
    std::str::from_utf8(text)
        .map(CompactString::new)
        .map_err(|_| refusal.to_owned())
}

/// The client-chosen id of an event: 1–64 chars of `[A-Za-z0-9._:-]`,
/// unique across the whole log and case-sensitive.
///
/// Equality, order and hash are those of its text, as for a `String`.
#[derive(Clone)]
pub struct EventId(EventIdText);

/// The longest event id held inline: a UUID (36 characters, what clients
/// send in practice) fits, so decoding a stored event allocates nothing for
/// its ids (a `CompactString` holds at most 24 bytes inline, and every
/// UUID id was an allocation and a free per decoded event).
const INLINE_EVENT_ID_BYTES: usize = 38;

/// The text of an [`EventId`], already checked to be in its ASCII alphabet.
#[derive(Clone)]
enum EventIdText {
    Inline {
        length: u8,
        bytes: [u8; INLINE_EVENT_ID_BYTES],
    },
    /// 39 to 64 characters.
    Heap(Box<str>),
}

impl EventIdText {
    /// The text of an id whose bytes are all in [`EVENT_ID_BYTES`] (ASCII,
    /// so UTF-8) and at most 64 long.
    fn of_ascii(text: &[u8]) -> Result<Self, String> {
        if let Ok(length) = u8::try_from(text.len())
            && text.len() <= INLINE_EVENT_ID_BYTES
        {
            let mut bytes = [0; INLINE_EVENT_ID_BYTES];
            bytes[..text.len()].copy_from_slice(text);
            return Ok(EventIdText::Inline { length, bytes });
        }
        std::str::from_utf8(text)
            .map(|text| EventIdText::Heap(text.into()))
            .map_err(|_| "may only contain letters, digits and . _ : -".to_owned())
    }

    fn as_str(&self) -> &str {
        match self {
            // The bytes were checked to be ASCII when the id was built, so
            // this is always the text; the empty fallback cannot happen.
            EventIdText::Inline { length, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*length)]).unwrap_or_default()
            }
            EventIdText::Heap(text) => text,
        }
    }
}

// Equality, order and hash go by the bytes, which are the text's (ASCII),
// in the text's order, so they are those of the text without checking an
// inline id's bytes as UTF-8 again on every comparison.
impl PartialEq for EventId {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for EventId {}

impl PartialOrd for EventId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for EventId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::hash::Hash for EventId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // What `str`'s hash writes: the bytes, then 0xff.
        state.write(self.as_bytes());
        state.write_u8(0xff);
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("EventId").field(&self.as_str()).finish()
    }
}

impl EventId {
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::parse_bytes(text.as_bytes())
    }

    /// [`Self::parse`] of a text's bytes, not yet known to be UTF-8 (a
    /// stored record's): the alphabet admits ASCII only, so it proves them
    /// UTF-8 on the way.
    pub fn parse_bytes(text: &[u8]) -> Result<Self, String> {
        const REFUSAL: &str = "may only contain letters, digits and . _ : -";
        if text.is_empty() || text.len() > 64 {
            return Err(length_refusal(text, 1, 64, REFUSAL));
        }
        if !all_bytes_in(text, &EVENT_ID_BYTES) {
            return Err(REFUSAL.to_owned());
        }
        Ok(Self(EventIdText::of_ascii(text)?))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The id's bytes, without checking them again as UTF-8 (what
    /// [`Self::as_str`] does for an inline id): for hashing an id once per
    /// folded event (the audit's `id_hash`).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            EventIdText::Inline { length, bytes } => &bytes[..usize::from(*length)],
            EventIdText::Heap(text) => text.as_bytes(),
        }
    }
}

/// A centre of the network: 2–32 chars of `[a-z0-9-]`; `all` is reserved for
/// the network-wide scope.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Centre(CompactString);

impl Centre {
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::parse_bytes(text.as_bytes())
    }

    /// [`Self::parse`] of a text's bytes, not yet known to be UTF-8 (see
    /// [`EventId::parse_bytes`]).
    pub fn parse_bytes(text: &[u8]) -> Result<Self, String> {
        const REFUSAL: &str = "may only contain lowercase letters, digits and -";
        if text.len() < 2 || text.len() > 32 {
            return Err(length_refusal(text, 2, 32, REFUSAL));
        }
        if !all_bytes_in(text, &CENTRE_BYTES) {
            return Err(REFUSAL.to_owned());
        }
        if text == b"all" {
            return Err("'all' is reserved for the network-wide scope".to_owned());
        }
        Ok(Self(ascii_id(text, REFUSAL)?))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// A patient pseudonym: 1–64 chars of `[A-Za-z0-9._-]`, never a real
/// identifier. A value that looks like a valid NHS number is refused.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pseudonym(CompactString);

impl Pseudonym {
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::parse_bytes(text.as_bytes())
    }

    /// [`Self::parse`] of a text's bytes, not yet known to be UTF-8 (see
    /// [`EventId::parse_bytes`]).
    pub fn parse_bytes(text: &[u8]) -> Result<Self, String> {
        const REFUSAL: &str = "may only contain letters, digits and . _ -";
        if text.is_empty() || text.len() > 64 {
            return Err(length_refusal(text, 1, 64, REFUSAL));
        }
        if !all_bytes_in(text, &PSEUDONYM_BYTES) {
            return Err(REFUSAL.to_owned());
        }
        if nhs_number_bytes(text) {
            return Err(
                "looks like an NHS number; use a pseudonym, never a real identifier".to_owned(),
            );
        }
        Ok(Self(ascii_id(text, REFUSAL)?))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// True when `text`, with `-` and `.` removed, is ten digits that pass the
/// NHS-number modulus-11 check (weights 10..2 on the first nine digits; the
/// check digit is 11 − remainder, 11 becomes 0, and 10 is never valid).
pub fn looks_like_nhs_number(text: &str) -> bool {
    nhs_number_bytes(text.as_bytes())
}

/// [`looks_like_nhs_number`] of a text's bytes, without an allocation: every
/// pseudonym of every replayed event is checked. A byte of a non-ASCII
/// character is never a digit, as no such character is a decimal digit for
/// `char::to_digit(10)`.
fn nhs_number_bytes(text: &[u8]) -> bool {
    let mut digits = [0u32; 10];
    let mut count = 0;
    for byte in text {
        if matches!(byte, b'-' | b'.') {
            continue;
        }
        if !byte.is_ascii_digit() || count == digits.len() {
            return false;
        }
        digits[count] = u32::from(byte - b'0');
        count += 1;
    }
    if count != digits.len() {
        return false;
    }
    let weighted: u32 = digits[..9]
        .iter()
        .zip((2..=10).rev())
        .map(|(digit, weight)| digit * weight)
        .sum();
    let check = match 11 - (weighted % 11) {
        11 => 0,
        10 => return false,
        other => other,
    };
    check == digits[9]
}

/// A patient's identity: the pair (centre, pseudonym). The same pseudonym in
/// two centres is two different patients.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PatientKey {
    pub centre: Centre,
    pub patient: Pseudonym,
}

impl PatientKey {
    pub fn new(centre: Centre, patient: Pseudonym) -> Self {
        Self { centre, patient }
    }
}

macro_rules! display_as_str {
    ($($name:ident),*) => {$(
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0.as_str())
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                self.0.as_str()
            }
        }
    )*};
}
display_as_str!(EventId, Centre, Pseudonym);

impl fmt::Display for PatientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.centre, self.patient)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nhs_numbers_are_recognised() {
        // 943 476 5919 is the NHS's published example of a valid number.
        assert!(looks_like_nhs_number("9434765919"));
        assert!(looks_like_nhs_number("943-476-5919"));
        assert!(looks_like_nhs_number("943.476.5919"));
        assert!(!looks_like_nhs_number("9434765918"));
        assert!(!looks_like_nhs_number("943476591"));
        assert!(Pseudonym::parse("943-476-5919").is_err());
        assert!(Pseudonym::parse("L-0001").is_ok());
    }

    #[test]
    fn event_ids_keep_their_text_inline_or_not() {
        for length in [1, 36, 38, 39, 64] {
            let text: String = "a1._:-Z".chars().cycle().take(length).collect();
            let id = EventId::parse(&text).unwrap();
            assert_eq!(id.as_str(), text);
            assert_eq!(id.to_string(), text);
            assert_eq!(format!("{id:?}"), format!("EventId({text:?})"));
            assert_eq!(
                matches!(id.0, EventIdText::Inline { .. }),
                length <= INLINE_EVENT_ID_BYTES
            );
        }
        assert!(std::mem::size_of::<EventId>() <= 40);
    }

    proptest::proptest! {
        /// An id compares, orders and hashes as its text does, whether each
        /// side is held inline or not.
        #[test]
        fn event_ids_compare_as_their_texts(
            left in "[a-c0-1]{1,3}|[a-c0-1]{37,41}",
            right in "[a-c0-1]{1,3}|[a-c0-1]{37,41}",
        ) {
            use std::hash::BuildHasher;
            let ids = (EventId::parse(&left).unwrap(), EventId::parse(&right).unwrap());
            proptest::prop_assert_eq!(ids.0 == ids.1, left == right);
            proptest::prop_assert_eq!(ids.0.cmp(&ids.1), left.cmp(&right));
            let hasher = std::hash::RandomState::new();
            proptest::prop_assert_eq!(hasher.hash_one(&ids.0), hasher.hash_one(left.as_str()));
        }
    }

    #[test]
    fn centre_all_is_reserved() {
        assert!(Centre::parse("all").is_err());
        assert!(Centre::parse("salford-royal").is_ok());
        assert!(Centre::parse("Leeds").is_err());
        assert!(Centre::parse("l").is_err());
    }

    #[test]
    fn characters_outside_ascii_are_refused_in_every_id() {
        for text in ["é-1", "e-\u{2010}1", "e\u{0}1"] {
            assert!(EventId::parse(text).is_err(), "{text}");
            assert!(Pseudonym::parse(text).is_err(), "{text}");
        }
        assert!(Centre::parse("leéds").is_err());
        assert!(Centre::parse("le\u{ff0d}ds").is_err());
        assert!(EventId::parse("e-1:a_b.c").is_ok());
    }

    /// The character rules as first written, one `char` at a time.
    fn alphabets_by_char(text: &str) -> [bool; 3] {
        [
            text.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')),
            text.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            text.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')),
        ]
    }

    fn alphabets_by_byte(text: &str) -> [bool; 3] {
        [
            all_bytes_in(text.as_bytes(), &EVENT_ID_BYTES),
            all_bytes_in(text.as_bytes(), &CENTRE_BYTES),
            all_bytes_in(text.as_bytes(), &PSEUDONYM_BYTES),
        ]
    }

    #[test]
    fn the_byte_tables_hold_exactly_the_characters_of_each_alphabet() {
        for c in (0..=0x2ffu32).filter_map(char::from_u32) {
            let text = c.to_string();
            assert_eq!(alphabets_by_byte(&text), alphabets_by_char(&text), "{c:?}");
        }
    }

    /// The NHS-number check as first written, one `char` at a time.
    fn looks_like_nhs_number_by_char(text: &str) -> bool {
        let digits: Vec<u32> = text
            .chars()
            .filter(|c| *c != '-' && *c != '.')
            .map(|c| c.to_digit(10))
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default();
        if digits.len() != 10 {
            return false;
        }
        let weighted: u32 = digits[..9]
            .iter()
            .zip((2..=10).rev())
            .map(|(digit, weight)| digit * weight)
            .sum();
        let check = match 11 - (weighted % 11) {
            11 => 0,
            10 => return false,
            other => other,
        };
        check == digits[9]
    }

    /// The three ids' rules as first written, on a `str`, but for one
    /// change: a text too long in bytes whose length in characters is
    /// within range is refused for its alphabet (only a non-ASCII character,
    /// which none allows, makes the two lengths differ), not with "must be
    /// 1 to 64 characters, got 40".
    fn parsed_by_char(text: &str) -> [Result<String, String>; 3] {
        let [event_id, centre, pseudonym] = alphabets_by_char(text);
        let count = text.chars().count();
        [
            if (text.is_empty() || text.len() > 64) && !(1..=64).contains(&count) {
                Err(format!("must be 1 to 64 characters, got {count}"))
            } else if !event_id {
                Err("may only contain letters, digits and . _ : -".to_owned())
            } else {
                Ok(text.to_owned())
            },
            if (text.len() < 2 || text.len() > 32) && !(2..=32).contains(&count) {
                Err(format!("must be 2 to 32 characters, got {count}"))
            } else if !centre {
                Err("may only contain lowercase letters, digits and -".to_owned())
            } else if text == "all" {
                Err("'all' is reserved for the network-wide scope".to_owned())
            } else {
                Ok(text.to_owned())
            },
            if (text.is_empty() || text.len() > 64) && !(1..=64).contains(&count) {
                Err(format!("must be 1 to 64 characters, got {count}"))
            } else if !pseudonym {
                Err("may only contain letters, digits and . _ -".to_owned())
            } else if looks_like_nhs_number_by_char(text) {
                Err("looks like an NHS number; use a pseudonym, never a real identifier".to_owned())
            } else {
                Ok(text.to_owned())
            },
        ]
    }

    proptest::proptest! {
        #[test]
        fn nhs_numbers_are_recognised_by_byte_as_by_char(
            text in "[0-9.\\-]{8,13}(\\PC|[a-z])?[0-9.\\-]{0,3}",
            any in ".{0,14}",
        ) {
            proptest::prop_assert_eq!(
                looks_like_nhs_number(&text),
                looks_like_nhs_number_by_char(&text)
            );
            proptest::prop_assert_eq!(
                looks_like_nhs_number(&any),
                looks_like_nhs_number_by_char(&any)
            );
        }

        /// The ids parse as the character-by-character rules of the first
        /// version did, reasons included.
        #[test]
        fn ids_parse_as_by_char(
            text in "[a-zA-Z0-9._:\\-]{0,40}(\\PC|[ /])?[a-z0-9.-]{0,30}|[0-9-]{10,12}|all",
        ) {
            let [event_id, centre, pseudonym] = parsed_by_char(&text);
            proptest::prop_assert_eq!(
                EventId::parse(&text).map(|id| id.as_str().to_owned()),
                event_id
            );
            proptest::prop_assert_eq!(
                Centre::parse(&text).map(|id| id.as_str().to_owned()),
                centre
            );
            proptest::prop_assert_eq!(
                Pseudonym::parse(&text).map(|id| id.as_str().to_owned()),
                pseudonym
            );
        }

        #[test]
        fn ids_are_checked_by_byte_as_by_char(
            text in "[a-zA-Z0-9._:\\-]{0,8}(\\PC|[ /A-Z]){0,2}[a-z0-9._:-]{0,8}",
            any in ".{0,12}",
        ) {
            proptest::prop_assert_eq!(alphabets_by_byte(&text), alphabets_by_char(&text));
            proptest::prop_assert_eq!(alphabets_by_byte(&any), alphabets_by_char(&any));
        }
    }
}
