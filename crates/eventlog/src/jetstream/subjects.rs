//! How the JetStream backend names things: the subject of a record's stream
//! and the escaping that keeps every
//! caller-chosen string inside one NATS subject token, plus the escaping of
//! header values. Kept apart so the scheme can be read (and tested) on its own.
//!
//! A subject token may not hold `.`, `*`, `>` or whitespace, yet a patient
//! pseudonym may contain `.` (`[A-Za-z0-9._-]`) and an event id `:`. Every
//! byte outside `[A-Za-z0-9-]` is therefore written `_` plus two upper-case
//! hex digits (`.` → `_2E`, `_` → `_5F`, `:` → `_3A`), so one caller string is
//! always exactly one token, the mapping is one-to-one, and ordinary ids
//! (`leeds`, `L-0001`) read unchanged. The empty string is the token `_`,
//! which no non-empty string escapes to.

/// Escapes `text` into one subject token (see the module doc).
pub(crate) fn token(text: &str) -> String {
    if text.is_empty() {
        return "_".to_owned();
    }
    let mut token = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            token.push(char::from(byte));
        } else {
            token.push('_');
            token.push_str(&format!("{byte:02X}"));
        }
    }
    token
}

/// The inverse of [`token`]; `None` for a string [`token`] cannot produce.
pub(crate) fn untoken(token: &str) -> Option<String> {
    if token == "_" {
        return Some(String::new());
    }
    let mut bytes = Vec::with_capacity(token.len());
    let mut input = token.bytes();
    while let Some(byte) = input.next() {
        if byte == b'_' {
            let high = char::from(input.next()?).to_digit(16)?;
            let low = char::from(input.next()?).to_digit(16)?;
            bytes.push(u8::try_from(high * 16 + low).ok()?);
        } else {
            bytes.push(byte);
        }
    }
    String::from_utf8(bytes).ok()
}

/// The two subject tokens of a record stream. The trait's stream is
/// `<centre>.<patient>`: the centre (`[a-z0-9-]`, no `.`) is the first token and
/// the whole patient pseudonym, dots included, the second. A stream of another
/// shape (no `.`, or an empty part) gets the first token `_` (which no
/// non-empty centre escapes to) and the whole stream as the second, so any
/// string still maps to exactly one subject.
pub(crate) fn stream_tokens(stream: &str) -> (String, String) {
    match stream.split_once('.') {
        Some((centre, patient)) if !centre.is_empty() && !patient.is_empty() => {
            (token(centre), token(patient))
        }
        _ => ("_".to_owned(), token(stream)),
    }
}

/// Whether every byte of `text` stands for itself in a token (see [`token`]).
fn is_plain_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
}

/// The names derived from the deployment's subject prefix.
#[derive(Debug, Clone)]
pub(crate) struct Subjects {
    prefix: String,
    /// `<prefix>.events.`, which every record subject starts with.
    events_prefix: String,
}

impl Subjects {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            events_prefix: format!("{prefix}.events."),
        }
    }

    /// `<prefix>.events.>`: every record of the log.
    pub(crate) fn all_events(&self) -> String {
        format!("{}.events.>", self.prefix)
    }

    /// `<prefix>.events.<centre>.<patient>`: the records of one stream.
    ///
    /// Built once per record of every append, so the usual stream (a centre
    /// and a pseudonym with nothing to escape, `leeds.L-0001`) is copied
    /// behind the prefix as it is, in one allocation: its two tokens are
    /// itself. Anything else goes through [`stream_tokens`]; both give the
    /// same subject (a property test says so).
    pub(crate) fn stream(&self, stream: &str) -> String {
        if let Some((centre, patient)) = stream.split_once('.')
            && is_plain_token(centre)
            && is_plain_token(patient)
        {
            let mut subject = String::with_capacity(self.events_prefix.len() + stream.len());
            subject.push_str(&self.events_prefix);
            subject.push_str(stream);
            return subject;
        }
        self.stream_escaped(stream)
    }

    /// [`Subjects::stream`] the long way, through [`stream_tokens`].
    fn stream_escaped(&self, stream: &str) -> String {
        let (centre, patient) = stream_tokens(stream);
        format!("{}{centre}.{patient}", self.events_prefix)
    }

    /// The stream a record subject belongs to: the inverse of [`Subjects::stream`].
    pub(crate) fn stream_of(&self, subject: &str) -> Option<String> {
        let tokens = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".events.")?;
        let (centre, patient) = tokens.split_once('.')?;
        if centre == "_" {
            untoken(patient)
        } else {
            Some(format!("{}.{}", untoken(centre)?, untoken(patient)?))
        }
    }
}

/// Whether `prefix` is usable as the leading tokens of every subject: one or
/// more non-empty tokens of `[A-Za-z0-9_-]` separated by `.`.
pub(crate) fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.split('.').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        })
}

/// Header values lose leading and trailing whitespace and may not hold line
/// breaks, so every byte outside printable ASCII, and `%` itself, is written
/// as `%` plus two upper-case hex digits.
pub(crate) fn header_value(text: &str) -> String {
    // Usually nothing to escape (every key of an append comes through here).
    if text
        .bytes()
        .all(|byte| (0x21..=0x7e).contains(&byte) && byte != b'%')
    {
        return text.to_owned();
    }
    let mut value = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x21..=0x7e).contains(&byte) && byte != b'%' {
            value.push(char::from(byte));
        } else {
            value.push('%');
            value.push_str(&format!("{byte:02X}"));
        }
    }
    value
}

/// The inverse of [`header_value`]; `None` for a value it cannot produce.
pub(crate) fn from_header_value(value: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(value.len());
    let mut input = value.bytes();
    while let Some(byte) = input.next() {
        if byte == b'%' {
            let high = char::from(input.next()?).to_digit(16)?;
            let low = char::from(input.next()?).to_digit(16)?;
            bytes.push(u8::try_from(high * 16 + low).ok()?);
        } else {
            bytes.push(byte);
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_ids_stay_readable_and_dots_never_split_a_token() {
        assert_eq!(token("L-0001"), "L-0001");
        assert_eq!(token("a.b"), "a_2Eb");
        assert_eq!(token("a_2Eb"), "a_5F2Eb");
        assert_eq!(token("e:1"), "e_3A1");
        let subjects = Subjects::new("toxaudit");
        assert_eq!(
            subjects.stream("leeds.L-0001"),
            "toxaudit.events.leeds.L-0001"
        );
        assert_eq!(
            subjects.stream("leeds.J.Smith.2"),
            "toxaudit.events.leeds.J_2ESmith_2E2"
        );
        assert_eq!(subjects.stream("solo"), "toxaudit.events._.solo");
    }

    #[test]
    fn escaping_round_trips_and_never_yields_a_subject_special() {
        for text in ["", "_", "a.b", "__", "x y", "é", "a*b>c", "%", "L-0001"] {
            let escaped = token(text);
            assert!(!escaped.contains(['.', '*', '>', ' ']), "{escaped}");
            assert_eq!(untoken(&escaped).as_deref(), Some(text));
            let value = header_value(text);
            assert!(!value.contains([' ', '\r', '\n']), "{value}");
            assert_eq!(from_header_value(&value).as_deref(), Some(text));
        }
    }

    #[test]
    fn distinct_streams_get_distinct_subjects() {
        let subjects = Subjects::new("p");
        let streams = [
            "a.b", "a.b.c", "a.b_c", "_.a.b", "a", ".a", "a.", "ab", "a.bc",
        ];
        let mut seen = std::collections::HashSet::new();
        for stream in streams {
            assert!(
                seen.insert(subjects.stream(stream)),
                "collision for {stream}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn the_plain_stream_shortcut_gives_the_escaped_subject(
            stream in "[A-Za-z0-9._:-]{0,12}|[a-z0-9-]{1,8}\\.[A-Za-z0-9-]{1,10}|.{0,12}",
        ) {
            let subjects = Subjects::new("site_a.toxaudit");
            proptest::prop_assert_eq!(subjects.stream(&stream), subjects.stream_escaped(&stream));
            proptest::prop_assert_eq!(subjects.stream_of(&subjects.stream(&stream)), Some(stream));
        }
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(valid_prefix("toxaudit"));
        assert!(valid_prefix("site_a.toxaudit"));
        assert!(!valid_prefix(""));
        assert!(!valid_prefix("a..b"));
        assert!(!valid_prefix("a.*"));
    }
}
