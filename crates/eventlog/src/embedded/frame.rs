//! The on-disk frame of one record and a buffered cursor that walks frames in
//! a segment file. Both recovery (on open) and reads use the same cursor, so
//! there is exactly one place that decides what a valid frame is.
//!
//! The layout is written down in the module doc of [`super`].

use std::fs::File;
use std::os::unix::fs::FileExt;

use bytes::Bytes;
use bytestring::ByteString;

use crate::{LogError, NewRecord, Record};

/// Bytes before the body: the body length (u32 LE) and the CRC32C (u32 LE).
pub(crate) const FRAME_PREFIX_BYTES: usize = 8;

/// Fixed part of the body: flags u8, position u64, recorded_at i64,
/// key_len u16, stream_len u16, principal_len u16, payload_len u32.
pub(crate) const BODY_HEADER_BYTES: usize = 1 + 8 + 8 + 2 + 2 + 2 + 4;

/// The smallest possible frame (an empty key is refused, but recovery does not
/// rely on that).
pub(crate) const MIN_FRAME_BYTES: usize = FRAME_PREFIX_BYTES + BODY_HEADER_BYTES;

/// Hard upper bound on a payload, whatever the options say: a length above it
/// is damage, not data.
pub(crate) const HARD_MAX_PAYLOAD_BYTES: usize = 64 * 1024 * 1024;

/// Hard upper bound on a body: header, three u16-sized strings, the payload.
pub(crate) const MAX_BODY_BYTES: usize =
    BODY_HEADER_BYTES + 3 * (u16::MAX as usize) + HARD_MAX_PAYLOAD_BYTES;

/// Flag bit: this record is the last one of its batch (the batch commit mark).
pub(crate) const FLAG_BATCH_END: u8 = 0b0000_0001;

/// A frame decoded in place, borrowing the buffer it was read from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameRef<'buffer> {
    pub(crate) flags: u8,
    pub(crate) position: u64,
    pub(crate) recorded_at_micros: i64,
    pub(crate) key: &'buffer [u8],
    pub(crate) stream: &'buffer [u8],
    pub(crate) principal: &'buffer [u8],
    pub(crate) payload: &'buffer [u8],
    /// Key, stream, principal and payload together, as they lie in the frame.
    pub(crate) fields: &'buffer [u8],
}

impl FrameRef<'_> {
    pub(crate) fn is_batch_end(&self) -> bool {
        self.flags & FLAG_BATCH_END != 0
    }

    /// An owned [`Record`] of this frame alone.
    #[cfg(test)]
    pub(crate) fn to_record(self) -> Result<Record, &'static str> {
        let mut records = RecordsBuilder::with_capacity(1);
        records.push(&self);
        let mut built = records.finish().map_err(|(_, reason)| reason)?;
        built.pop().ok_or("no record was built")
    }
}

/// Bytes of key, stream, principal and payload a typical record holds (a
/// guess for the first allocation of a read's buffer; it grows as needed).
const TYPICAL_FIELD_BYTES: usize = 192;

/// Where one frame's fields lie in a [`RecordsBuilder`]'s buffer.
#[derive(Debug, Clone, Copy)]
struct Placed {
    position: u64,
    recorded_at_micros: i64,
    /// Offset of the key in the buffer; the payload ends where the next
    /// record's key starts (or the buffer ends).
    start: usize,
    key_bytes: u16,
    stream_bytes: u16,
    principal_bytes: u16,
}

/// The owned [`Record`]s of one read: every frame's fields are copied into
/// one buffer, and each record's key, stream, principal and payload is a
/// slice of it — one allocation per read, not four per record (and nothing
/// for a reader's thread to free record by record).
#[derive(Debug, Default)]
pub(crate) struct RecordsBuilder {
    fields: Vec<u8>,
    placed: Vec<Placed>,
}

impl RecordsBuilder {
    pub(crate) fn with_capacity(records: usize) -> Self {
        Self {
            fields: Vec::with_capacity(records * TYPICAL_FIELD_BYTES),
            placed: Vec::with_capacity(records),
        }
    }

    /// Adds a frame that [`check_frame`] found valid. Its lengths fit the
    /// frame's u16 fields, so the casts below cannot truncate.
    pub(crate) fn push(&mut self, frame: &FrameRef<'_>) {
        self.placed.push(Placed {
            position: frame.position,
            recorded_at_micros: frame.recorded_at_micros,
            start: self.fields.len(),
            key_bytes: frame.key.len() as u16,
            stream_bytes: frame.stream.len() as u16,
            principal_bytes: frame.principal.len() as u16,
        });
        self.fields.extend_from_slice(frame.fields);
    }

    /// The records, in the order they were pushed; or the position of the
    /// first whose key, stream or principal is not UTF-8, and which.
    pub(crate) fn finish(self) -> Result<Vec<Record>, (u64, &'static str)> {
        let fields = Bytes::from(self.fields);
        let mut records = Vec::with_capacity(self.placed.len());
        let ends = self
            .placed
            .iter()
            .skip(1)
            .map(|next| next.start)
            .chain([fields.len()]);
        for (placed, end) in self.placed.iter().zip(ends) {
            let key_end = placed.start + usize::from(placed.key_bytes);
            let stream_end = key_end + usize::from(placed.stream_bytes);
            let principal_end = stream_end + usize::from(placed.principal_bytes);
            let text = |range: std::ops::Range<usize>, what: &'static str| {
                ByteString::try_from(fields.slice(range)).map_err(|_| (placed.position, what))
            };
            records.push(Record {
                position: placed.position,
                recorded_at_micros: placed.recorded_at_micros,
                key: text(placed.start..key_end, "key is not utf-8")?,
                stream: text(key_end..stream_end, "stream is not utf-8")?,
                principal: text(stream_end..principal_end, "principal is not utf-8")?,
                payload: fields.slice(principal_end..end),
            });
        }
        Ok(records)
    }
}

/// What the bytes at the start of a buffer hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameCheck {
    /// A whole, valid frame of this many bytes.
    Complete { frame_bytes: usize },
    /// A plausible frame that needs this many bytes in all; the buffer has fewer.
    Incomplete { frame_bytes: usize },
    /// Not a frame: the length is out of range, the CRC does not match, or the
    /// lengths inside the body do not add up.
    Bad { reason: &'static str },
}

fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Checks the frame at the start of `buffer` (length, CRC, inner lengths).
pub(crate) fn check_frame(buffer: &[u8]) -> FrameCheck {
    if buffer.len() < FRAME_PREFIX_BYTES {
        return FrameCheck::Incomplete {
            frame_bytes: MIN_FRAME_BYTES,
        };
    }
    let body_bytes = read_u32(buffer, 0) as usize;
    if !(BODY_HEADER_BYTES..=MAX_BODY_BYTES).contains(&body_bytes) {
        return FrameCheck::Bad {
            reason: "frame length out of range",
        };
    }
    let frame_bytes = FRAME_PREFIX_BYTES + body_bytes;
    if buffer.len() < frame_bytes {
        return FrameCheck::Incomplete { frame_bytes };
    }
    let stored_crc = read_u32(buffer, 4);
    let actual_crc = crc32c::crc32c_append(
        crc32c::crc32c(&buffer[0..4]),
        &buffer[FRAME_PREFIX_BYTES..frame_bytes],
    );
    if stored_crc != actual_crc {
        return FrameCheck::Bad {
            reason: "crc mismatch",
        };
    }
    let body = &buffer[FRAME_PREFIX_BYTES..frame_bytes];
    let inner = BODY_HEADER_BYTES
        + read_u16(body, 17) as usize
        + read_u16(body, 19) as usize
        + read_u16(body, 21) as usize
        + read_u32(body, 23) as usize;
    if inner != body_bytes {
        return FrameCheck::Bad {
            reason: "field lengths do not add up to the frame length",
        };
    }
    FrameCheck::Complete { frame_bytes }
}

/// Decodes a frame that [`check_frame`] found complete.
pub(crate) fn decode_checked(frame: &[u8]) -> FrameRef<'_> {
    let body = &frame[FRAME_PREFIX_BYTES..];
    let key_len = read_u16(body, 17) as usize;
    let stream_len = read_u16(body, 19) as usize;
    let principal_len = read_u16(body, 21) as usize;
    let mut at = BODY_HEADER_BYTES;
    let mut take = |len: usize| {
        let slice = &body[at..at + len];
        at += len;
        slice
    };
    let key = take(key_len);
    let stream = take(stream_len);
    let principal = take(principal_len);
    let payload = take(body.len() - BODY_HEADER_BYTES - key_len - stream_len - principal_len);
    FrameRef {
        fields: &body[BODY_HEADER_BYTES..],
        flags: body[0],
        position: read_u64(body, 1),
        recorded_at_micros: read_u64(body, 9) as i64,
        key,
        stream,
        principal,
        payload,
    }
}

/// The position field of a frame whose length prefix is at `at`, without any
/// check: recovery uses it as a cheap filter before computing a CRC.
pub(crate) fn peek_position(buffer: &[u8], at: usize) -> Option<u64> {
    let start = at + FRAME_PREFIX_BYTES + 1;
    (buffer.len() >= start + 8).then(|| read_u64(buffer, start))
}

/// The encoded size of a record's frame. The caller has checked the field
/// sizes (see `validate_record`), so the sum fits easily.
pub(crate) fn frame_bytes(record: &NewRecord) -> usize {
    MIN_FRAME_BYTES
        + record.key.len()
        + record.stream.len()
        + record.principal.len()
        + record.payload.len()
}

/// Appends one record's frame to `out`. The field sizes were checked by
/// `validate_record`, so the narrowing casts below cannot truncate.
#[cfg(test)]
pub(crate) fn encode(
    out: &mut Vec<u8>,
    record: &NewRecord,
    position: u64,
    recorded_at_micros: i64,
    batch_end: bool,
) {
    let start = out.len();
    encode_unsealed(out, record);
    seal(&mut out[start..], position, recorded_at_micros, batch_end);
}

/// Appends one record's frame to `out` with everything the writer decides
/// left at zero: flags, position, recorded_at and the CRC. The caller of
/// `append` does this on its own thread, so the writer never touches the
/// record's heap fields (and they are freed where they were allocated);
/// [`seal`] fills the rest in once the writer has placed the record. The
/// field sizes were checked by `validate_record`, so the narrowing casts
/// below cannot truncate.
pub(crate) fn encode_unsealed(out: &mut Vec<u8>, record: &NewRecord) {
    let body_bytes = frame_bytes(record) - FRAME_PREFIX_BYTES;
    out.reserve(FRAME_PREFIX_BYTES + body_bytes);
    out.extend_from_slice(&(body_bytes as u32).to_le_bytes());
    // crc (4), flags (1), position (8), recorded_at (8): sealed later.
    out.extend_from_slice(&[0u8; 4 + 1 + 8 + 8]);
    out.extend_from_slice(&(record.key.len() as u16).to_le_bytes());
    out.extend_from_slice(&(record.stream.len() as u16).to_le_bytes());
    out.extend_from_slice(&(record.principal.len() as u16).to_le_bytes());
    out.extend_from_slice(&(record.payload.len() as u32).to_le_bytes());
    out.extend_from_slice(record.key.as_bytes());
    out.extend_from_slice(record.stream.as_bytes());
    out.extend_from_slice(record.principal.as_bytes());
    out.extend_from_slice(&record.payload);
}

/// Completes a frame made by [`encode_unsealed`] (exactly one frame):
/// writes flags, position and recorded_at, then the CRC over the whole.
pub(crate) fn seal(frame: &mut [u8], position: u64, recorded_at_micros: i64, batch_end: bool) {
    frame[8] = if batch_end { FLAG_BATCH_END } else { 0 };
    frame[9..17].copy_from_slice(&position.to_le_bytes());
    frame[17..25].copy_from_slice(&recorded_at_micros.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&frame[0..4]), &frame[FRAME_PREFIX_BYTES..]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Refuses a record the frame cannot hold or the options do not allow.
pub(crate) fn validate_record(
    record: &NewRecord,
    max_payload_bytes: usize,
) -> Result<(), LogError> {
    if record.key.is_empty() {
        return Err(LogError::Invalid(
            "the record key (event id) is empty".into(),
        ));
    }
    let limit = u16::MAX as usize;
    for (what, value) in [
        ("key", &record.key),
        ("stream", &record.stream),
        ("principal", &record.principal),
    ] {
        if value.len() > limit {
            return Err(LogError::Invalid(format!(
                "the record {what} is {} bytes, more than the {limit} allowed",
                value.len()
            )));
        }
    }
    if record.payload.len() > max_payload_bytes {
        return Err(LogError::Invalid(format!(
            "the record payload is {} bytes, more than the {max_payload_bytes} allowed",
            record.payload.len()
        )));
    }
    Ok(())
}

/// One step of a [`FrameCursor`].
#[derive(Debug)]
pub(crate) enum Step<'buffer> {
    /// A valid frame starting at `offset` in the file.
    Frame {
        offset: u64,
        frame_bytes: usize,
        frame: FrameRef<'buffer>,
    },
    /// The file ends cleanly at `offset`.
    End { offset: u64 },
    /// The file ends inside a frame that starts at `offset`.
    Torn { offset: u64 },
    /// The bytes at `offset` are not a frame.
    Bad { offset: u64, reason: &'static str },
}

/// Walks the frames of one segment file from a given offset with positional
/// reads into one reused buffer: a few large syscalls, no per-frame allocation.
#[derive(Debug)]
pub(crate) struct FrameCursor<'file> {
    file: &'file File,
    /// File offset of `buffer[0]`.
    buffer_offset: u64,
    buffer: Vec<u8>,
    /// Bytes of `buffer` already handed out as frames.
    consumed: usize,
    /// Bytes of `buffer` holding file data.
    filled: usize,
    /// The file had no more bytes at the last read.
    at_end_of_file: bool,
    chunk_bytes: usize,
}

impl<'file> FrameCursor<'file> {
    pub(crate) fn new(file: &'file File, offset: u64, chunk_bytes: usize) -> Self {
        Self {
            file,
            buffer_offset: offset,
            buffer: Vec::new(),
            consumed: 0,
            filled: 0,
            at_end_of_file: false,
            chunk_bytes: chunk_bytes.max(MIN_FRAME_BYTES),
        }
    }

    /// The file offset of the next frame.
    pub(crate) fn offset(&self) -> u64 {
        self.buffer_offset + self.consumed as u64
    }

    /// Reads more of the file so that at least `wanted` unconsumed bytes are
    /// buffered, or the file ends.
    fn refill(&mut self, wanted: usize) -> std::io::Result<()> {
        if self.consumed > 0 {
            self.buffer.copy_within(self.consumed..self.filled, 0);
            self.buffer_offset += self.consumed as u64;
            self.filled -= self.consumed;
            self.consumed = 0;
        }
        let target = wanted.max(self.chunk_bytes);
        if self.buffer.len() < target {
            self.buffer.resize(target, 0);
        }
        while self.filled < wanted {
            let read = self.file.read_at(
                &mut self.buffer[self.filled..],
                self.buffer_offset + self.filled as u64,
            )?;
            if read == 0 {
                self.at_end_of_file = true;
                break;
            }
            self.filled += read;
        }
        Ok(())
    }

    /// The next frame, or why there is none.
    pub(crate) fn next_step(&mut self) -> std::io::Result<Step<'_>> {
        // Decide first, borrow the buffer for the answer last: a frame is
        // handed out only once its bytes are known to be complete and valid.
        let frame_bytes = loop {
            let available = &self.buffer[self.consumed..self.filled];
            match check_frame(available) {
                FrameCheck::Complete { frame_bytes } => break frame_bytes,
                FrameCheck::Bad { reason } => {
                    return Ok(Step::Bad {
                        offset: self.offset(),
                        reason,
                    });
                }
                FrameCheck::Incomplete { frame_bytes } => {
                    if self.at_end_of_file {
                        return Ok(if available.is_empty() {
                            Step::End {
                                offset: self.offset(),
                            }
                        } else {
                            Step::Torn {
                                offset: self.offset(),
                            }
                        });
                    }
                    self.refill(frame_bytes)?;
                }
            }
        };
        let offset = self.offset();
        let start = self.consumed;
        self.consumed += frame_bytes;
        Ok(Step::Frame {
            offset,
            frame_bytes,
            frame: decode_checked(&self.buffer[start..start + frame_bytes]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, payload: &[u8]) -> NewRecord {
        NewRecord {
            key: key.into(),
            stream: "leeds.L-0001".into(),
            principal: "clinician@leeds".into(),
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn an_encoded_frame_decodes_to_the_same_fields() {
        let mut out = Vec::new();
        let new = record("e-1", b"{\"a\":1}");
        encode(&mut out, &new, 7, 1_700_000_000_000_000, true);
        assert_eq!(out.len(), frame_bytes(&new));
        assert_eq!(
            check_frame(&out),
            FrameCheck::Complete {
                frame_bytes: out.len()
            }
        );
        let frame = decode_checked(&out);
        assert!(frame.is_batch_end());
        let decoded = frame.to_record().unwrap();
        assert_eq!(decoded.position, 7);
        assert_eq!(decoded.recorded_at_micros, 1_700_000_000_000_000);
        assert_eq!(decoded.key, new.key);
        assert_eq!(decoded.stream, new.stream);
        assert_eq!(decoded.principal, new.principal);
        assert_eq!(decoded.payload, new.payload);
    }

    #[test]
    fn every_single_flipped_byte_is_detected() {
        let mut out = Vec::new();
        encode(&mut out, &record("e-1", b"payload"), 1, 5, false);
        for at in 0..out.len() {
            let mut damaged = out.clone();
            damaged[at] ^= 0x40;
            assert!(
                !matches!(check_frame(&damaged), FrameCheck::Complete { .. }),
                "flip at {at} went unnoticed"
            );
        }
    }

    #[test]
    fn a_short_buffer_is_incomplete_not_bad() {
        let mut out = Vec::new();
        encode(&mut out, &record("e-1", b"payload"), 1, 5, false);
        for cut in 0..out.len() {
            assert!(matches!(
                check_frame(&out[..cut]),
                FrameCheck::Incomplete { .. }
            ));
        }
    }
}
