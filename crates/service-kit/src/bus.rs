//! The bus of derived events (`toxaudit.v1.PatientAssessed`): the assessment
//! service publishes, anyone may follow. Two transports behind one type:
//!
//! - in process (`toxaudit up` without NATS): a tokio broadcast channel; a
//!   follower sees what is published after it subscribed;
//! - NATS JetStream: stream `<PREFIX>_DERIVED` (upper-cased prefix), subjects
//!   `<prefix>.derived.patient_assessed.<centre>.<patient token>`, each message
//!   with `Nats-Msg-Id` = the event's id (`<centre>/<patient>@<source
//!   position>`), so a publisher that restarts and publishes the same
//!   assessment again is deduplicated by the server (within the stream's
//!   duplicate window, set to one day). A follower reads the stream from its
//!   start with an ordered consumer. [`DerivedBus::stored_latest_positions`]
//!   reads, headers only, the last message of each patient's subject: a
//!   restarted publisher learns which of each patient's assessments the bus
//!   already holds, so it never publishes an older one after it.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use bytes::Bytes;
use eventlog::NatsAuth;
use futures::{StreamExt, stream::BoxStream};
use prost::Message;
use proto::v1::PatientAssessed;
use tokio::sync::broadcast;

/// Errors of the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// NATS cannot be reached or refused the operation: retry later.
    #[error("derived event bus unavailable: {0}")]
    Unavailable(String),
}

/// The id of a derived event: the patient and the log position whose event
/// produced it. A replay of the same log produces the same ids.
pub fn derived_event_id(event: &PatientAssessed) -> String {
    format!(
        "{}/{}@{}",
        event.centre, event.patient, event.source_position
    )
}

/// The centre, patient and source position written in a derived event's id
/// (`<centre>/<patient>@<source position>`; a centre holds no `/`, a
/// pseudonym no `@`), or `None` for anything else.
pub fn parse_derived_event_id(id: &str) -> Option<(&str, &str, u64)> {
    let (centre, rest) = id.split_once('/')?;
    let (patient, position) = rest.rsplit_once('@')?;
    Some((centre, patient, position.parse().ok()?))
}

/// A NATS subject token for a patient pseudonym: `.` would split the token,
/// so it is written `~2E` (and `~` itself `~7E`); other allowed characters
/// (`[A-Za-z0-9_-]`) pass unchanged.
pub fn patient_subject_token(patient: &str) -> String {
    patient.replace('~', "~7E").replace('.', "~2E")
}

/// Where derived events go.
#[derive(Debug, Clone)]
pub enum DerivedBus {
    InProcess(broadcast::Sender<PatientAssessed>),
    Nats(Box<NatsBus>),
}

/// The JetStream side of [`DerivedBus`].
#[derive(Debug, Clone)]
pub struct NatsBus {
    jetstream: jetstream::Context,
    prefix: String,
    stream_name: String,
}

impl NatsBus {
    /// An ordered consumer of the derived-events stream.
    async fn ordered_consumer(
        &self,
        config: jetstream::consumer::pull::OrderedConfig,
    ) -> Result<jetstream::consumer::Consumer<jetstream::consumer::pull::OrderedConfig>, BusError>
    {
        let stream_name = &self.stream_name;
        let stream = self
            .jetstream
            .get_stream(stream_name)
            .await
            .map_err(|error| {
                BusError::Unavailable(format!("cannot open stream {stream_name}: {error}"))
            })?;
        stream
            .create_consumer(config)
            .await
            .map_err(|error| BusError::Unavailable(error.to_string()))
    }
}

/// How many derived events an in-process follower may lag before it is told
/// it missed some.
const IN_PROCESS_CAPACITY: usize = 65_536;

impl DerivedBus {
    pub fn in_process() -> Self {
        let (sender, _) = broadcast::channel(IN_PROCESS_CAPACITY);
        DerivedBus::InProcess(sender)
    }

    /// Connects to JetStream and makes sure the derived stream exists.
    pub async fn nats(client: async_nats::Client, prefix: &str) -> Result<Self, BusError> {
        let jetstream = jetstream::new(client);
        let stream_name = format!("{}_DERIVED", prefix.to_uppercase().replace(['.', '-'], "_"));
        jetstream
            .get_or_create_stream(jetstream::stream::Config {
                name: stream_name.clone(),
                subjects: vec![format!("{prefix}.derived.>")],
                duplicate_window: Duration::from_secs(24 * 3600),
                ..Default::default()
            })
            .await
            .map_err(|error| {
                BusError::Unavailable(format!("cannot create stream {stream_name}: {error}"))
            })?;
        Ok(DerivedBus::Nats(Box::new(NatsBus {
            jetstream,
            prefix: prefix.to_owned(),
            stream_name,
        })))
    }

    /// Connects to the NATS server(s) at `url` with the credentials written
    /// in the URL, if any, and then as [`DerivedBus::nats`].
    pub async fn connect_nats(url: &str, prefix: &str) -> Result<Self, BusError> {
        Self::connect_nats_with(url, prefix, &NatsAuth::None).await
    }

    /// Connects to the NATS server(s) at `url` with `auth` (else the
    /// credentials written in the URL), and then as [`DerivedBus::nats`].
    pub async fn connect_nats_with(
        url: &str,
        prefix: &str,
        auth: &NatsAuth,
    ) -> Result<Self, BusError> {
        let client = eventlog::connect_nats(url, auth, async_nats::ConnectOptions::new())
            .await
            .map_err(|error| BusError::Unavailable(error.to_string()))?;
        Self::nats(client, prefix).await
    }

    /// Publishes one derived event; on NATS it returns once the server stored
    /// it (or recognised it as a duplicate).
    pub async fn publish(&self, event: PatientAssessed) -> Result<(), BusError> {
        match self {
            DerivedBus::InProcess(sender) => {
                // No follower is not an error: nobody needs the event now.
                let _ = sender.send(event);
                Ok(())
            }
            DerivedBus::Nats(nats) => {
                let NatsBus {
                    jetstream, prefix, ..
                } = nats.as_ref();
                let subject = format!(
                    "{prefix}.derived.patient_assessed.{}.{}",
                    event.centre,
                    patient_subject_token(&event.patient)
                );
                let message = jetstream::message::PublishMessage::build()
                    .payload(Bytes::from(event.encode_to_vec()))
                    .message_id(derived_event_id(&event));
                jetstream
                    .send_publish(subject, message)
                    .await
                    .map_err(|error| BusError::Unavailable(error.to_string()))?
                    .await
                    .map_err(|error| BusError::Unavailable(error.to_string()))?;
                Ok(())
            }
        }
    }

    /// Each patient's last derived event stored on the bus, as (centre,
    /// patient, source position): on NATS, the last message of each
    /// patient's subject (read headers only: the position is in its id); in
    /// process, nothing, as nothing is kept for a publisher that restarts.
    pub async fn stored_latest_positions(&self) -> Result<Vec<(String, String, u64)>, BusError> {
        let DerivedBus::Nats(nats) = self else {
            return Ok(Vec::new());
        };
        let consumer = nats
            .ordered_consumer(jetstream::consumer::pull::OrderedConfig {
                deliver_policy: DeliverPolicy::LastPerSubject,
                filter_subject: format!("{}.derived.patient_assessed.>", nats.prefix),
                headers_only: true,
                ..Default::default()
            })
            .await?;
        let mut stored = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(stored);
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|error| BusError::Unavailable(error.to_string()))?;
        while let Some(item) = messages.next().await {
            let message = item.map_err(|error| BusError::Unavailable(error.to_string()))?;
            let id = message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(async_nats::header::NATS_MESSAGE_ID));
            if let Some((centre, patient, position)) =
                id.and_then(|id| parse_derived_event_id(id.as_str()))
            {
                stored.push((centre.to_owned(), patient.to_owned(), position));
            }
            let pending = message
                .info()
                .map_err(|error| BusError::Unavailable(error.to_string()))?
                .pending;
            if pending == 0 {
                return Ok(stored);
            }
        }
        Err(BusError::Unavailable(
            "the derived stream ended while reading it".to_owned(),
        ))
    }

    /// Follows the derived events: in process from now on, on NATS from the
    /// start of the stream.
    pub async fn follow(
        &self,
    ) -> Result<BoxStream<'static, Result<PatientAssessed, BusError>>, BusError> {
        match self {
            DerivedBus::InProcess(sender) => {
                let receiver = sender.subscribe();
                Ok(tokio_stream::wrappers::BroadcastStream::new(receiver)
                    .map(|item| item.map_err(|error| BusError::Unavailable(error.to_string())))
                    .boxed())
            }
            DerivedBus::Nats(nats) => {
                let consumer = nats
                    .ordered_consumer(jetstream::consumer::pull::OrderedConfig {
                        deliver_policy: DeliverPolicy::All,
                        ..Default::default()
                    })
                    .await?;
                let messages = consumer
                    .messages()
                    .await
                    .map_err(|error| BusError::Unavailable(error.to_string()))?;
                Ok(messages
                    .map(|item| {
                        let message =
                            item.map_err(|error| BusError::Unavailable(error.to_string()))?;
                        PatientAssessed::decode(message.payload.as_ref()).map_err(|error| {
                            BusError::Unavailable(format!("undecodable derived event: {error}"))
                        })
                    })
                    .boxed())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_tokens_never_contain_dots() {
        assert_eq!(patient_subject_token("L-0001"), "L-0001");
        assert_eq!(patient_subject_token("a.b~c"), "a~2Eb~7Ec");
    }

    #[tokio::test]
    async fn in_process_followers_see_what_is_published() {
        let bus = DerivedBus::in_process();
        let mut follower = bus.follow().await.unwrap();
        let event = PatientAssessed {
            centre: "leeds".into(),
            patient: "L-1".into(),
            source_position: 7,
            ..Default::default()
        };
        bus.publish(event.clone()).await.unwrap();
        assert_eq!(follower.next().await.unwrap().unwrap(), event);
        assert_eq!(derived_event_id(&event), "leeds/L-1@7");
        assert_eq!(
            parse_derived_event_id("leeds/L.1@7"),
            Some(("leeds", "L.1", 7))
        );
        assert_eq!(parse_derived_event_id("leeds/L-1"), None);
        assert!(bus.stored_latest_positions().await.unwrap().is_empty());
    }
}
