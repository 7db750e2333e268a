//! The envelope around a stored record's payload: when and by whom the record
//! was appended, written in front of the payload instead of in a header.
//!
//! A message of the events stream carries `1 <micros> <principal>\n` and then
//! the record's payload, byte for byte: `1` the envelope's version, `<micros>`
//! the append time in microseconds since the epoch (the appending client's
//! clock), `<principal>` escaped as a header value (printable ASCII without
//! space or `%`, see `subjects::header_value`), so the line holds exactly two
//! spaces and ends at the first `\n`.
//!
//! Why not a header, as before: nats-server looks through every message's
//! header block for each header it knows, and an atomic batch stages every
//! message before it stores it, so header bytes cost an atomic batch more than
//! payload bytes (measured with `benches/jetstream.rs`, 300 interleaved
//! rounds, alternated builds: the backend's 1000-record append went from
//! 51-58% to 59-65% of plain publish with the metadata moved from its header
//! into the payload, everything else equal). A message is in this format exactly when it
//! has none of the old metadata headers (`Toxaudit-Recorded`, or
//! `Toxaudit-Principal` / `Toxaudit-Recorded-At`), which every message this
//! backend wrote before carried; those still read as they were.

use bytes::{BufMut, Bytes, BytesMut};

use super::subjects::{from_header_value, header_value};

/// The version token the envelope starts with.
const VERSION: &[u8] = b"1 ";

/// Builds the envelopes of one append: one time, usually one principal, so
/// the line is formatted once and copied in front of every payload.
///
/// The wrapped payloads of an append are consecutive pieces of one buffer
/// (sized by [`Envelopes::with_capacity`]) rather than one allocation each:
/// the client hands every payload on as a `Bytes` and clones it on the way
/// out, which for a payload of its own allocation costs a second allocation
/// (its shared counter), for a piece of a shared buffer only a count.
#[derive(Debug)]
pub(crate) struct Envelopes {
    recorded_at_micros: i64,
    /// The principal the line was last built for, and that line.
    line: Option<(String, Vec<u8>)>,
    /// Where the next wrapped payload is written.
    buffer: BytesMut,
}

impl Envelopes {
    #[cfg(test)]
    pub(crate) fn new(recorded_at_micros: i64) -> Self {
        Self::with_capacity(recorded_at_micros, 0)
    }

    /// Envelopes whose first `capacity` bytes (lines and payloads) share one
    /// buffer; more still works, in a new buffer.
    pub(crate) fn with_capacity(recorded_at_micros: i64, capacity: usize) -> Self {
        Self {
            recorded_at_micros,
            line: None,
            buffer: BytesMut::with_capacity(capacity),
        }
    }

    /// The room [`Envelopes::with_capacity`] needs for `payload_bytes` of
    /// payloads by `principal` in `records` envelopes (a little more).
    pub(crate) fn capacity_for(records: usize, payload_bytes: usize, principal: &str) -> usize {
        // `1 `, at most 20 digits, a space, the principal escaped (at most
        // three bytes each), the newline.
        payload_bytes + records * (24 + 3 * principal.len())
    }

    /// `payload` with its envelope in front.
    pub(crate) fn wrap(&mut self, principal: &str, payload: &[u8]) -> Bytes {
        let line = match &self.line {
            Some((built_for, line)) if built_for == principal => line,
            _ => {
                let line = format!(
                    "1 {} {}\n",
                    self.recorded_at_micros,
                    header_value(principal)
                )
                .into_bytes();
                &self.line.insert((principal.to_owned(), line)).1
            }
        };
        self.buffer.reserve(line.len() + payload.len());
        self.buffer.put_slice(line);
        self.buffer.put_slice(payload);
        self.buffer.split().freeze()
    }
}

/// What an envelope holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Opened {
    pub(crate) recorded_at_micros: i64,
    pub(crate) principal: String,
    /// The record's payload: a slice of the stored bytes, not a copy.
    pub(crate) payload: Bytes,
}

/// The time, principal and payload of a stored message in the envelope
/// format; `None` when it is not one.
pub(crate) fn open(stored: &Bytes) -> Option<Opened> {
    let rest = stored.strip_prefix(VERSION)?;
    let end = rest.iter().position(|&byte| byte == b'\n')?;
    let line = std::str::from_utf8(&rest[..end]).ok()?;
    let (micros, principal) = line.split_once(' ')?;
    let recorded_at_micros = micros.parse().ok()?;
    let principal = from_header_value(principal)?;
    Some(Opened {
        recorded_at_micros,
        principal,
        payload: stored.slice(VERSION.len() + end + 1..),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_opens_to_what_was_wrapped_for_any_principal_and_payload() {
        let mut envelopes = Envelopes::new(1_790_000_000_123_456);
        for (principal, payload) in [
            ("clinician@leeds", &b"{\"event_id\":\"e-1\"}"[..]),
            ("Dr J. Smith@leeds", b"line one\nline two"),
            ("", b""),
            ("100% é\n", b"\n1 2 3\n"),
            ("clinician@leeds", b"again, the line built before"),
        ] {
            let wrapped = envelopes.wrap(principal, payload);
            let opened = open(&wrapped).expect("an envelope opens");
            assert_eq!(opened.recorded_at_micros, 1_790_000_000_123_456);
            assert_eq!(opened.principal, principal);
            assert_eq!(opened.payload.as_ref(), payload);
        }
    }

    #[test]
    fn envelopes_beyond_the_capacity_and_of_other_principals_still_wrap_right() {
        let payloads: Vec<Vec<u8>> = (0..50).map(|n| vec![b'x'; n * 7]).collect();
        let total: usize = payloads.iter().map(Vec::len).sum();
        for capacity in [
            0,
            10,
            Envelopes::capacity_for(50, total, "someone") / 2,
            Envelopes::capacity_for(50, total, "someone"),
        ] {
            let mut envelopes = Envelopes::with_capacity(7, capacity);
            let wrapped: Vec<(String, Bytes)> = payloads
                .iter()
                .enumerate()
                .map(|(n, payload)| {
                    let principal = if n % 3 == 0 { "someone" } else { "Dr é" };
                    (principal.to_owned(), envelopes.wrap(principal, payload))
                })
                .collect();
            for ((principal, wrapped), payload) in wrapped.iter().zip(&payloads) {
                let opened = open(wrapped).expect("an envelope opens");
                assert_eq!(&opened.principal, principal);
                assert_eq!(opened.payload.as_ref(), payload.as_slice());
                assert_eq!(opened.recorded_at_micros, 7);
            }
        }
    }

    #[test]
    fn the_line_is_readable_and_holds_exactly_two_spaces() {
        let wrapped = Envelopes::new(42).wrap("Dr J. Smith@leeds", b"{}");
        assert_eq!(wrapped.as_ref(), b"1 42 Dr%20J.%20Smith@leeds\n{}");
    }

    proptest::proptest! {
        #[test]
        fn any_principal_payload_and_time_round_trip(
            principal in ".{0,40}",
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            micros in proptest::num::i64::ANY,
        ) {
            let wrapped = Envelopes::new(micros).wrap(&principal, &payload);
            let opened = open(&wrapped);
            proptest::prop_assert_eq!(
                opened,
                Some(Opened { recorded_at_micros: micros, principal, payload: Bytes::from(payload) })
            );
        }
    }

    #[test]
    fn what_is_not_an_envelope_does_not_open() {
        for stored in [
            &b""[..],
            b"{\"event_id\":\"e-1\"}",
            b"1 42 no-newline",
            b"2 42 someone\n{}",
            b"1 forty-two someone\n{}",
            b"1 42 bad%escape\n{}",
            b"1 42\n{}",
        ] {
            assert_eq!(open(&Bytes::copy_from_slice(stored)), None, "{stored:?}");
        }
    }
}
