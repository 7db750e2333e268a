//! A small client for the toxaudit services, for `toxaudit import|report
//! --server URL --token T` and for tests: it adds the bearer token to every
//! call and decodes the refusal details that Ingest puts in its statuses.

use std::path::Path;

use prost::Message;
use proto::v1::{
    AppendRequest, AppendResponse, GetReportRequest, RefusedEvents, Report,
    assessment_client::AssessmentClient, ingest_client::IngestClient,
    reporting_client::ReportingClient,
};
use tonic::{
    metadata::MetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

/// Events per message of an `Ingest.Import` stream: as many as one
/// `Ingest.Append` request of `toxaudit import --server` has always carried.
pub const EVENTS_PER_MESSAGE: usize = 1000;

/// Errors of connecting.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server url {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("token is not a valid header value")]
    Token,
    #[error("cannot read ca certificate {path}: {source}")]
    Certificate {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
}

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Debug, Clone)]
pub struct BearerToken {
    header: MetadataValue<tonic::metadata::Ascii>,
}

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.header.clone());
        Ok(request)
    }
}

/// A channel with a token, from which each service's client is made.
#[derive(Debug, Clone)]
pub struct ServiceClient {
    channel: Channel,
    token: BearerToken,
}

/// The generated clients, with the bearer token added.
pub type Authorised = InterceptedService<Channel, BearerToken>;

impl ServiceClient {
    /// Connects to `url` (`http://HOST:PORT`, or `https://…` with the server's
    /// CA certificate in `ca_certificate` when it is not publicly trusted).
    pub async fn connect(
        url: &str,
        token: &str,
        ca_certificate: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let header = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| ClientError::Token)?;
        let mut endpoint =
            Endpoint::from_shared(url.to_owned()).map_err(|error| ClientError::Url {
                url: url.to_owned(),
                reason: error.to_string(),
            })?;
        if let Some(path) = ca_certificate {
            let pem = std::fs::read(path).map_err(|source| ClientError::Certificate {
                path: path.display().to_string(),
                source,
            })?;
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
                .map_err(|source| ClientError::Connect {
                    url: url.to_owned(),
                    source,
                })?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                url: url.to_owned(),
                source,
            })?;
        Ok(Self {
            channel,
            token: BearerToken { header },
        })
    }

    pub fn ingest(&self) -> IngestClient<Authorised> {
        IngestClient::with_interceptor(self.channel.clone(), self.token.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    pub fn assessment(&self) -> AssessmentClient<Authorised> {
        AssessmentClient::with_interceptor(self.channel.clone(), self.token.clone())
            .max_decoding_message_size(64 << 20)
    }

    pub fn reporting(&self) -> ReportingClient<Authorised> {
        ReportingClient::with_interceptor(self.channel.clone(), self.token.clone())
            .max_decoding_message_size(64 << 20)
    }

    /// Appends one batch, all or nothing, through `Ingest.Append`.
    pub async fn append(
        &self,
        events: Vec<proto::v1::Event>,
    ) -> Result<AppendResponse, tonic::Status> {
        Ok(self
            .ingest()
            .append(AppendRequest { events })
            .await?
            .into_inner())
    }

    /// Imports `events` as one unit through `Ingest.Import`: every event is
    /// checked as if the ones before it were appended, and if any is
    /// refused nothing is appended (the refusals' `index` counts over all of
    /// `events`). Sent as a stream of messages of [`EVENTS_PER_MESSAGE`].
    pub async fn import(
        &self,
        events: Vec<proto::v1::Event>,
    ) -> Result<AppendResponse, tonic::Status> {
        let mut messages = Vec::with_capacity(events.len().div_ceil(EVENTS_PER_MESSAGE));
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            messages.push(AppendRequest {
                events: events.by_ref().take(EVENTS_PER_MESSAGE).collect(),
            });
        }
        Ok(self
            .ingest()
            .import(futures::stream::iter(messages))
            .await?
            .into_inner())
    }

    /// The report of `scope` (`all` or a centre) through `Reporting.GetReport`.
    pub async fn get_report(&self, scope: &str) -> Result<Report, tonic::Status> {
        Ok(self
            .reporting()
            .get_report(GetReportRequest {
                scope: scope.to_owned(),
            })
            .await?
            .into_inner())
    }
}

/// The per-event reasons of a refusal from Ingest, when the status has them.
pub fn refused_events(status: &tonic::Status) -> Option<RefusedEvents> {
    if status.details().is_empty() {
        return None;
    }
    RefusedEvents::decode(status.details()).ok()
}
