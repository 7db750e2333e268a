//! The gRPC face of ingest: `toxaudit.v1.Ingest`. It turns proto events into
//! domain events through the same validation as an import file, asks the
//! admission state, and answers with positions and warnings or with every
//! reason, per event and field.

use std::{fmt::Write as _, sync::Arc};

use domain::{
    Centre, ClinicalDate, FieldError,
    admission::{Verdict, WriterScope},
};
use futures::StreamExt;
use prost::Message;
use proto::v1::{
    AppendRequest, AppendResponse, EventOutcome, FieldReason, RefusedEvent, RefusedEvents,
    ingest_server::Ingest,
};
use service_kit::{Principal, Role, ServiceError, auth};
use tonic::{Request, Response, Status, Streaming};

use crate::state::{AdmissionState, AdmitError, AppendUnit, Stored};

/// At most this many events in one `Import` call: the whole call is
/// admitted (and its verdicts kept) in memory before anything is appended,
/// and its answer (an outcome per event) must fit one gRPC message.
pub const MOST_EVENTS_PER_IMPORT: usize = 100_000;

/// At most this many bytes of events in one `Import` call, counted as they
/// arrive: the call is held in memory before it is checked.
pub const MOST_BYTES_PER_IMPORT: usize = 128 << 20;

/// At most this many refused events are described in a status; the
/// message says how many there were in all.
const MOST_REFUSALS_REPORTED: usize = 100;

/// At most this many bytes of `RefusedEvents` in a status's details. The
/// message and the details travel in HTTP/2 trailers, which clients cap
/// (tonic at 16 KiB, gRPC's C core at 8 KiB by default) and the details go
/// there in base64: past the cap the client sees a protocol error instead
/// of the refusal.
const MOST_DETAIL_BYTES: usize = 4000;

/// At most this many bytes of a status message (cut at a character).
const MOST_MESSAGE_BYTES: usize = 1000;

/// At most this many reasons are spelled out in the status message itself.
const MOST_REASONS_IN_MESSAGE: usize = 20;

/// The `toxaudit.v1.Ingest` implementation.
#[derive(Debug, Clone)]
pub struct IngestService {
    state: Arc<AdmissionState>,
}

impl IngestService {
    pub(crate) fn new(state: Arc<AdmissionState>) -> Self {
        Self { state }
    }

    async fn append_batch(
        &self,
        principal: &Principal,
        events: Vec<proto::v1::Event>,
        committed_before: u64,
        unit: AppendUnit,
    ) -> Result<Vec<Stored>, Status> {
        let writer = writer_scope(principal)?;
        // A clinician writing another centre is refused as a whole, before
        // any validation (nothing about another centre's log is told), as
        // PERMISSION_DENIED, naming every such event on its `centre`.
        if let WriterScope::Centre(own) = &writer
            && let Some(status) = foreign_centre_status(own, &events, committed_before)
        {
            return Err(status);
        }
        let today = ClinicalDate::from_date(time::OffsetDateTime::now_utc().date());
        let mut parsed = Vec::with_capacity(events.len());
        for (index, message) in events.into_iter().enumerate() {
            crate::state::yield_now_and_then(index).await;
            let event_id = message.event_id.clone();
            parsed.push((event_id, proto::convert::event_from_proto(message, today)));
        }
        match self
            .state
            .admit_and_append_as(parsed, writer, principal.subject.clone(), unit)
            .await
        {
            Ok(stored) => Ok(stored),
            Err(AdmitError::Service(error)) => Err(error.into_status()),
            Err(AdmitError::Refused(verdicts)) => Err(refusal_status(&verdicts, committed_before)),
        }
    }
}

/// PERMISSION_DENIED when some event of the batch is not of the writer's
/// centre `own`: the message names the first, and the details (the
/// `RefusedEvents` of any refusal) every one, by index, on its `centre`, so
/// a client can name the lines of a file and skip them when asked to.
fn foreign_centre_status(
    own: &Centre,
    events: &[proto::v1::Event],
    committed_before: u64,
) -> Option<Status> {
    let foreign = events
        .iter()
        .enumerate()
        .filter(|(_, event)| event.centre != own.as_str())
        .map(|(index, event)| RefusedEvent {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            event_id: event.event_id.clone(),
            reasons: vec![FieldReason {
                field: "centre".to_owned(),
                reason: format!(
                    "a clinician of centre {own} may not write events of centre '{}'",
                    event.centre
                ),
            }],
        })
        .collect::<Vec<_>>();
    let first = foreign.first()?;
    let total = foreign.len();
    let mut message = format!(
        "{total} of {} events are not of centre {own}, nothing appended",
        events.len(),
    );
    // Writing to a String cannot fail.
    let _ = write!(
        message,
        "; event {} ({}): centre: {}",
        first.index, first.event_id, first.reasons[0].reason
    );
    let (foreign, note) = fitting(foreign);
    if let Some(note) = note {
        let _ = write!(message, "; {note}");
    }
    let details = RefusedEvents {
        events: foreign,
        committed_events: committed_before,
    }
    .encode_to_vec();
    Some(Status::with_details(
        tonic::Code::PermissionDenied,
        bounded(message),
        details.into(),
    ))
}

/// The refused events a status describes, in order: as many as fit
/// [`MOST_DETAIL_BYTES`] (at least one, at most [`MOST_REFUSALS_REPORTED`]),
/// and a note for the message when that is not all of them.
fn fitting(mut refused: Vec<RefusedEvent>) -> (Vec<RefusedEvent>, Option<String>) {
    let total = refused.len();
    let (mut bytes, mut keep) = (0, 0);
    for event in &refused {
        // The field's tag, its length and the event.
        let size = 1 + prost::length_delimiter_len(event.encoded_len()) + event.encoded_len();
        if keep > 0 && (bytes + size > MOST_DETAIL_BYTES || keep == MOST_REFUSALS_REPORTED) {
            break;
        }
        bytes += size;
        keep += 1;
    }
    refused.truncate(keep);
    let note =
        (keep < total).then(|| format!("details list the first {keep} of {total} refused events"));
    (refused, note)
}

/// `message`, cut to [`MOST_MESSAGE_BYTES`] at a character boundary.
fn bounded(mut message: String) -> String {
    if message.len() > MOST_MESSAGE_BYTES {
        let mut end = MOST_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

fn writer_scope(principal: &Principal) -> Result<WriterScope, Status> {
    match principal.role {
        Role::Admin => Ok(WriterScope::AnyCentre),
        Role::Auditor => Err(ServiceError::PermissionDenied(
            "an auditor may read but not write".to_owned(),
        )
        .into_status()),
        Role::Clinician => Centre::parse(&principal.centre)
            .map(WriterScope::Centre)
            .map_err(|reason| {
                ServiceError::Unauthenticated(format!("token centre: {reason}")).into_status()
            }),
    }
}

fn reasons_of(reasons: &[FieldError]) -> Vec<FieldReason> {
    reasons
        .iter()
        .map(|reason| FieldReason {
            field: reason.field.clone(),
            reason: reason.reason.clone(),
        })
        .collect()
}

/// INVALID_ARGUMENT when any event is refused, else ALREADY_EXISTS (only
/// conflicts), with every reason in the details and the first ones in the
/// message.
fn refusal_status(verdicts: &[crate::state::EventVerdict], committed_before: u64) -> Status {
    let mut refused = Vec::new();
    let mut any_refused = false;
    for (index, admitted) in verdicts.iter().enumerate() {
        let reasons = match &admitted.verdict {
            Verdict::Refused(refusal) => {
                any_refused = true;
                refusal.reasons.clone()
            }
            Verdict::Conflict(reason) => vec![reason.clone()],
            Verdict::Accepted { .. } | Verdict::Duplicate => continue,
        };
        refused.push(RefusedEvent {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            event_id: admitted.event_id.clone(),
            reasons: reasons_of(&reasons),
        });
    }
    let total_refused = refused.len();
    let mut message = format!(
        "{total_refused} of {} events {}, nothing appended",
        verdicts.len(),
        if any_refused {
            "refused"
        } else {
            "conflict with stored events"
        }
    );
    let (refused, note) = fitting(refused);
    if let Some(note) = note {
        // Writing to a String cannot fail.
        let _ = write!(message, "; {note}");
    }
    let mut reasons_written = 0;
    'events: for event in &refused {
        for reason in &event.reasons {
            if reasons_written == MOST_REASONS_IN_MESSAGE {
                message.push_str("; …");
                break 'events;
            }
            // Writing to a String cannot fail.
            let _ = write!(
                message,
                "; event {} ({}): {}: {}",
                event.index, event.event_id, reason.field, reason.reason
            );
            reasons_written += 1;
        }
    }
    let details = RefusedEvents {
        events: refused,
        committed_events: committed_before,
    }
    .encode_to_vec();
    let message = bounded(message);
    if any_refused {
        ServiceError::InvalidArgument {
            message,
            details: Some(details),
        }
    } else {
        ServiceError::AlreadyExists {
            message,
            details: Some(details),
        }
    }
    .into_status()
}

fn outcomes_of(stored: Vec<Stored>) -> Vec<EventOutcome> {
    stored
        .into_iter()
        .map(|stored| EventOutcome {
            event_id: stored.event_id,
            position: stored.position,
            duplicate: stored.duplicate,
            warnings: reasons_of(&stored.warnings),
        })
        .collect()
}

/// The answer to an `Append` or `Import` whose events are stored, logged
/// as `what`.
fn answer(principal: &Principal, stored: Vec<Stored>, what: &'static str) -> AppendResponse {
    let head = stored
        .iter()
        .map(|stored| stored.position)
        .max()
        .unwrap_or(0);
    tracing::info!(
        principal = %principal.subject,
        events = stored.len(),
        head,
        "{what}"
    );
    AppendResponse {
        outcomes: outcomes_of(stored),
        head,
    }
}

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn append(
        &self,
        request: Request<AppendRequest>,
    ) -> Result<Response<AppendResponse>, Status> {
        let principal = auth::principal(&request)?;
        let events = request.into_inner().events;
        let stored = self
            .append_batch(&principal, events, 0, AppendUnit::Atomic)
            .await?;
        Ok(Response::new(answer(&principal, stored, "batch appended")))
    }

    async fn append_stream(
        &self,
        request: Request<Streaming<AppendRequest>>,
    ) -> Result<Response<AppendResponse>, Status> {
        let principal = auth::principal(&request)?;
        let mut batches = request.into_inner();
        let mut outcomes = Vec::new();
        let mut head = 0;
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            let stored = self
                .append_batch(
                    &principal,
                    batch.events,
                    outcomes.len() as u64,
                    AppendUnit::Atomic,
                )
                .await?;
            head = head.max(
                stored
                    .iter()
                    .map(|stored| stored.position)
                    .max()
                    .unwrap_or(0),
            );
            outcomes.extend(outcomes_of(stored));
        }
        tracing::info!(
            principal = %principal.subject,
            events = outcomes.len(),
            head,
            "stream of batches appended"
        );
        Ok(Response::new(AppendResponse { outcomes, head }))
    }

    async fn import(
        &self,
        request: Request<Streaming<AppendRequest>>,
    ) -> Result<Response<AppendResponse>, Status> {
        let principal = auth::principal(&request)?;
        // Who may write at all is known before anything is read.
        writer_scope(&principal)?;
        let mut messages = request.into_inner();
        let mut events = Vec::new();
        let mut bytes = 0;
        while let Some(message) = messages.next().await {
            let message = message?;
            bytes += message.encoded_len();
            events.extend(message.events);
            if events.len() > MOST_EVENTS_PER_IMPORT || bytes > MOST_BYTES_PER_IMPORT {
                return Err(ServiceError::InvalidArgument {
                    message: format!(
                        "an import holds at most {MOST_EVENTS_PER_IMPORT} events and {} MiB, nothing appended; import the file in parts",
                        MOST_BYTES_PER_IMPORT >> 20
                    ),
                    details: None,
                }
                .into_status());
            }
        }
        let stored = self
            .append_batch(&principal, events, 0, AppendUnit::InLogBatches)
            .await?;
        Ok(Response::new(answer(&principal, stored, "import appended")))
    }
}
