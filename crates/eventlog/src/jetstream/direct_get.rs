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
        messages.push(StoredMessage {
            sequence,
            subject,
            headers,
            payload: reply.payload,
        });
    }
    Ok(messages)
}
