//! The network stream of a multi-site deployment (ADR 0006): at the hub, one
//! JetStream stream whose `sources` pull every centre's events stream across
//! that centre's leaf node link, so that reporting at the hub reads the whole
//! network as one log.
//!
//! Each centre's services append to the events stream of their own leaf node
//! (JetStream domain = the centre), as a [`crate::JetStreamLog`] does
//! anywhere. The network stream has the same name and subjects as a centre's
//! stream (`<prefix>.events.>`), so a `JetStreamLog` opened at the hub reads
//! it unchanged; nothing at the hub may publish on those subjects (the hub's
//! accounts refuse it), so its only input is its sources.
//!
//! Each source is `$JS.<domain>.API` (the centre's domain, reached through
//! the leaf link) filtered to `<prefix>.events.<centre>.>`: even a centre
//! whose own stream held another centre's subject could not bring it into
//! the network stream. Sourcing keeps every header, so `Nats-Msg-Id` (the
//! event id) still deduplicates at the hub, and each message gains a
//! `Nats-Stream-Source` header naming the centre stream and the position the
//! event holds there. While a link is down the centre keeps appending
//! locally; when it returns, the source resumes after the last message it
//! copied.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::LogError;

/// What the network stream is made of.
#[derive(Debug, Clone)]
pub struct NetworkStreamOptions {
    /// The leading subject tokens of the deployment (as in [`crate::JetStreamOptions`]).
    pub prefix: String,
    /// The network stream at the hub.
    pub stream_name: String,
    /// The events stream in every centre's domain.
    pub centre_stream_name: String,
    /// Replicas of the network stream (3 on the three-node hub).
    pub replicas: usize,
    /// The `Nats-Msg-Id` duplicate window of the network stream.
    pub duplicate_window: Duration,
    /// How long one request to the hub may take.
    pub request_timeout: Duration,
}

impl Default for NetworkStreamOptions {
    fn default() -> Self {
        Self {
            prefix: "toxaudit".to_owned(),
            stream_name: "TOXAUDIT_EVENTS".to_owned(),
            centre_stream_name: "TOXAUDIT_EVENTS".to_owned(),
            replicas: 3,
            duplicate_window: Duration::from_secs(120),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// A centre whose leaf node the hub sources from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CentreSource {
    /// The centre, as in events (`[a-z0-9-]`, 2..=32 characters).
    centre: String,
    /// The leaf node's JetStream domain.
    domain: String,
}

impl CentreSource {
    /// A centre whose leaf node's JetStream domain is the centre's name, as
    /// `deploy/nats/leaf.conf.template` configures it.
    pub fn new(centre: &str) -> Result<CentreSource, LogError> {
        CentreSource::with_domain(centre, centre)
    }

    /// A centre whose leaf node has another JetStream domain.
    pub fn with_domain(centre: &str, domain: &str) -> Result<CentreSource, LogError> {
        let centre_is_valid = (2..=32).contains(&centre.len())
            && centre
                .bytes()
                .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
            && centre != "all";
        if !centre_is_valid {
            return Err(LogError::Configuration(format!(
                "centre {centre:?} must be 2 to 32 characters of [a-z0-9-] and not \"all\""
            )));
        }
        let domain_is_valid = !domain.is_empty()
            && domain
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
        if !domain_is_valid {
            return Err(LogError::Configuration(format!(
                "jetstream domain {domain:?} must be non-empty [A-Za-z0-9_-]"
            )));
        }
        Ok(CentreSource {
            centre: centre.to_owned(),
            domain: domain.to_owned(),
        })
    }

    pub fn centre(&self) -> &str {
        &self.centre
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    fn source(&self, options: &NetworkStreamOptions) -> stream::Source {
        stream::Source {
            name: options.centre_stream_name.clone(),
            filter_subject: Some(centre_subjects(&options.prefix, &self.centre)),
            external: Some(stream::External {
                api_prefix: format!("$JS.{}.API", self.domain),
                delivery_prefix: None,
            }),
            ..Default::default()
        }
    }
}

/// `<prefix>.events.<centre>.>`: every subject of one centre's events. A
/// centre name is `[a-z0-9-]`, which the JetStream log writes unescaped.
pub fn centre_subjects(prefix: &str, centre: &str) -> String {
    format!("{prefix}.events.{centre}.>")
}

/// Creates the network stream, or adds to it the sources it lacks; never
/// removes a source (taking a centre out of the network is a decision for an
/// operator, not a side effect of a shorter list). Returns the centres the
/// stream sources from afterwards, sorted.
pub async fn ensure_network_stream(
    client: async_nats::Client,
    options: &NetworkStreamOptions,
    centres: &[CentreSource],
) -> Result<Vec<String>, LogError> {
    let context = jetstream::ContextBuilder::new()
        .timeout(options.request_timeout)
        .build(client);
    let wanted: Vec<stream::Source> = centres
        .iter()
        .map(|centre| centre.source(options))
        .collect();
    let existing = match context.get_stream(&options.stream_name).await {
        Ok(mut found) => Some(
            found
                .info()
                .await
                .map_err(|error| {
                    LogError::Unavailable(format!(
                        "reading the network stream {}: {error}",
                        options.stream_name
                    ))
                })?
                .config
                .clone(),
        ),
        Err(error)
            if matches!(
                error.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref api)
                    if api.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            None
        }
        Err(error) => {
            return Err(LogError::Unavailable(format!(
                "finding the network stream {}: {error}",
                options.stream_name
            )));
        }
    };
    let config = match existing {
        None => {
            let config = stream::Config {
                name: options.stream_name.clone(),
                description: Some(
                    "toxaudit network stream: every centre's events, sourced across the leaf links"
                        .to_owned(),
                ),
                subjects: vec![format!("{}.events.>", options.prefix)],
                sources: Some(wanted),
                storage: stream::StorageType::File,
                num_replicas: options.replicas,
                duplicate_window: options.duplicate_window,
                allow_direct: true,
                deny_delete: true,
                deny_purge: true,
                // Nothing publishes batches here, but a JetStreamLog opened on
                // the stream asks for it, and reporting may not update streams.
                allow_atomic_publish: true,
                ..Default::default()
            };
            context
                .create_stream(config.clone())
                .await
                .map_err(|error| {
                    LogError::Unavailable(format!(
                        "creating the network stream {}: {error}",
                        options.stream_name
                    ))
                })?;
            config
        }
        Some(mut config) => {
            let mut sources = config.sources.take().unwrap_or_default();
            let before = sources.len();
            for source in wanted {
                let already = sources.iter().any(|present| {
                    present.name == source.name
                        && present
                            .external
                            .as_ref()
                            .map(|external| &external.api_prefix)
                            == source
                                .external
                                .as_ref()
                                .map(|external| &external.api_prefix)
                });
                if !already {
                    sources.push(source);
                }
            }
            let changed = sources.len() != before;
            config.sources = Some(sources);
            if changed {
                context
                    .update_stream(config.clone())
                    .await
                    .map_err(|error| {
                        LogError::Unavailable(format!(
                            "adding sources to the network stream {}: {error}",
                            options.stream_name
                        ))
                    })?;
            }
            config
        }
    };
    let mut sourced: Vec<String> = config
        .sources
        .unwrap_or_default()
        .iter()
        .filter_map(|source| centre_of_filter(&options.prefix, source.filter_subject.as_deref()))
        .collect();
    sourced.sort();
    sourced.dedup();
    Ok(sourced)
}

/// The centre a source filter `<prefix>.events.<centre>.>` names.
fn centre_of_filter(prefix: &str, filter: Option<&str>) -> Option<String> {
    filter?
        .strip_prefix(prefix)?
        .strip_prefix(".events.")?
        .strip_suffix(".>")
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_centre_source_reads_the_centre_domain_filtered_to_its_own_subjects() {
        let source = CentreSource::new("salford-royal")
            .unwrap()
            .source(&NetworkStreamOptions::default());
        assert_eq!(source.name, "TOXAUDIT_EVENTS");
        assert_eq!(
            source.filter_subject.as_deref(),
            Some("toxaudit.events.salford-royal.>")
        );
        assert_eq!(
            source.external.map(|external| external.api_prefix),
            Some("$JS.salford-royal.API".to_owned())
        );
    }

    #[test]
    fn centres_outside_the_contract_are_refused() {
        for centre in ["", "x", "all", "Leeds", "leeds.west", "leeds>"] {
            assert!(CentreSource::new(centre).is_err(), "{centre:?} accepted");
        }
        assert!(CentreSource::with_domain("leeds", "le.eds").is_err());
    }

    #[test]
    fn the_centre_is_read_back_from_a_source_filter() {
        assert_eq!(
            centre_of_filter("toxaudit", Some("toxaudit.events.leeds.>")).as_deref(),
            Some("leeds")
        );
        assert_eq!(
            centre_of_filter("toxaudit", Some("other.events.leeds.>")),
            None
        );
        assert_eq!(centre_of_filter("toxaudit", None), None);
    }
}
