//! Batched direct get (`$JS.API.DIRECT.GET.<stream>` with `batch` or
//! `multi_last`, nats-server 2.11+): many stored messages for one request, the
//! reply ending with an end-of-batch status. async-nats 0.51 only gets one
//! message per request, and a read of a thousand records must not cost a
//! thousand round trips, so this module speaks the protocol itself.

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;

use crate::LogError;

/// One message as a direct get returns it.
#[derive(Debug, Clone)]
pub(crate) struct StoredMessage {
    /// The stream sequence (our global position).
    pub(crate) sequence: u64,
    /// The subject it was published on.
    pub(crate) subject: String,
    /// The headers it was published with (the direct-get headers removed).
    pub(crate) headers: HeaderMap,
    pub(crate) payload: Bytes,
    /// When the server stored it, microseconds since the Unix epoch, if the
    /// server said.
    pub(crate) stored_at_micros: Option<i64>,
}

/// What to fetch.
#[derive(Debug)]
pub(crate) enum Request<'a> {
    /// Up to `max` messages from sequence `from` on.
    Range { from: u64, max: usize },
    /// The last message of each of these literal subjects that has one.
    LastOf(&'a [String]),
}

/// Sends one batched direct get and gathers its answer.
pub(crate) async fn direct_get(
    client: &async_nats::Client,
    api_prefix: &str,
    stream_name: &str,
    request: Request<'_>,
    timeout: Duration,
) -> Result<Vec<StoredMessage>, LogError> {
    let body = match request {
        Request::Range { from, max } => serde_json::json!({ "seq": from, "batch": max }),
        Request::LastOf(subjects) => {
            if subjects.is_empty() {
                return Ok(Vec::new());
            }
            serde_json::json!({ "multi_last": subjects, "batch": subjects.len() })
        }
    };
    let subject = format!("{api_prefix}.DIRECT.GET.{stream_name}");
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|error| LogError::Unavailable(format!("subscribing for a direct get: {error}")))?;
    client
        .publish_with_reply(subject, inbox, Bytes::from(body.to_string()))
        .await
        .map_err(|error| LogError::Unavailable(format!("sending a direct get: {error}")))?;

    let mut messages = Vec::new();
    loop {
        let reply = match tokio::time::timeout(timeout, replies.next()).await {
            Ok(Some(reply)) => reply,
            Ok(None) => {
                return Err(LogError::Unavailable(
                    "connection closed during a direct get".to_owned(),
                ));
            }
            Err(_) => {
                return Err(LogError::Unavailable(format!(
                    "no answer to a direct get on stream {stream_name} within {timeout:?}"
                )));
            }
        };
        if let Some(status) = reply.status {
            match status.as_u16() {
                // End of batch: everything asked for has been sent.
                204 => break,
                // Nothing matched.
                404 => break,
                // An empty-payload status without meaning here (e.g. a heartbeat).
                100 => continue,
                code => {
                    return Err(LogError::Unavailable(format!(
                        "direct get on stream {stream_name} failed with status {code}: {}",
                        reply.description.unwrap_or_default()
                    )));
                }
            }
        }
        let Some(headers) = reply.headers else {
            return Err(LogError::Corrupt(format!(
                "direct get on stream {stream_name} answered a message without headers"
            )));
        };
        let sequence = headers
            .get("Nats-Sequence")
            .and_then(|value| value.as_str().parse::<u64>().ok())
            .ok_or_else(|| {
                LogError::Corrupt(format!(
                    "direct get on stream {stream_name} answered a message without a sequence"
                ))
            })?;
        let subject = headers
            .get("Nats-Subject")
            .map(|value| value.as_str().to_owned())
            .unwrap_or_default();
        let stored_at_micros = headers
            .get("Nats-Time-Stamp")
            .and_then(|value| micros_from_rfc3339_utc(value.as_str()));
        messages.push(StoredMessage {
            sequence,
            subject,
            headers,
            payload: reply.payload,
            stored_at_micros,
        });
    }
    Ok(messages)
}

/// Microseconds since the Unix epoch of a UTC time as nats-server writes it
/// (Go's RFC 3339 with nanoseconds, trailing zeros trimmed:
/// `2026-11-25T21:53:00.12345Z`); `None` for any other shape.
pub(crate) fn micros_from_rfc3339_utc(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || bytes[4] != b'-' || bytes[7] != b'-' || bytes[10] != b'T' {
        return None;
    }
    if bytes[13] != b':' || bytes[16] != b':' || bytes.last() != Some(&b'Z') {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = text.get(range)?;
        if digits.bytes().all(|byte| byte.is_ascii_digit()) {
            digits.parse().ok()
        } else {
            None
        }
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let fraction = &text[19..text.len() - 1];
    let micros_fraction = if fraction.is_empty() {
        0
    } else {
        let digits = fraction.strip_prefix('.')?;
        if digits.is_empty()
            || digits.len() > 9
            || !digits.bytes().all(|byte| byte.is_ascii_digit())
        {
            return None;
        }
        let mut padded = digits.to_owned();
        while padded.len() < 6 {
            padded.push('0');
        }
        padded[..6].parse::<i64>().ok()?
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let shifted_year = if month <= 2 { year - 1 } else { year };
    let era = shifted_year.div_euclid(400);
    let year_of_era = shifted_year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
    Some(seconds * 1_000_000 + micros_fraction)
}

#[cfg(test)]
mod tests {
    use super::micros_from_rfc3339_utc;

    #[test]
    fn server_timestamps_parse_to_microseconds() {
        assert_eq!(micros_from_rfc3339_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            micros_from_rfc3339_utc("2026-11-25T21:53:00.123456789Z"),
            Some(1_795_643_580_123_456)
        );
        assert_eq!(
            micros_from_rfc3339_utc("2000-02-29T12:00:01.5Z"),
            Some(951_825_601_500_000)
        );
        assert_eq!(micros_from_rfc3339_utc("2000-02-29T12:00:01.Z"), None);
        assert_eq!(micros_from_rfc3339_utc("2000-02-29T12:00:01+01:00"), None);
        assert_eq!(micros_from_rfc3339_utc("not a time"), None);
    }
}
