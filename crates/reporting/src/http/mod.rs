//! The reporting service's HTTP side: the live audit dashboard, the report as
//! JSON and as a Server-Sent Events stream, Prometheus `/metrics` and
//! `/healthz` (axum).
//!
//! Routes:
//!
//! - `GET /` the dashboard, server-rendered with every number in the html
//!   (it reads without JavaScript), then kept live by `dashboard.js` over
//!   `/api/stream`; `GET /login` asks for a token, `POST /login` checks it
//!   and keeps it in an http-only cookie, `POST /logout` forgets it;
//! - `GET /api/report?scope=` the report JSON of `spec/rules.md`;
//! - `GET /api/stream?scope=` Server-Sent Events: `report` after every
//!   change (event id = the log position it reflects, resumable with
//!   `Last-Event-ID`, coalesced to at most [`SNAPSHOTS_PER_SECOND`] a
//!   second), `feed` for recent events and findings (pseudonyms only, no
//!   free text, no author) and `lag` when only the projection lag moved;
//!   at most [`slots`]' bounds open at once (per subject and in all);
//! - `GET /metrics` Prometheus text (see [`metrics`]);
//! - `GET /healthz` 200 while the log answers.
//!
//! Every route but `/healthz`, `/login` and the static assets needs the
//! same JWT as gRPC (service-kit's verifier), as `Authorization: Bearer` or
//! the cookie. A clinician sees only their own centre, enforced here on the
//! server for the page, the API, the stream and the feed; auditors and admins
//! see every centre. `/metrics` carries per-centre numbers, so it needs an
//! auditor's or admin's token too (a Prometheus scrape job sends one with
//! `authorization.credentials_file`; see `deploy/grafana/README.md`).

mod access;
mod feed;
pub mod metrics;
mod page;
mod slots;
mod snapshot;
mod stream;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use eventlog::EventLog;
use service_kit::{JwtSecret, ServiceError, Shutdown, server::ServerError};

use crate::service::LiveReport;

pub use snapshot::SNAPSHOTS_PER_SECOND;

/// Errors of starting or running the HTTP side.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address cannot be bound or the server failed while serving.
    #[error("dashboard http server: {0}")]
    Server(#[from] ServerError),
}

/// What the dashboard reads from.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    /// The reporting projection (from [`crate::service::Reporting::live`]).
    pub live: LiveReport,
    /// The event log the projection follows: its head gives the lag, its
    /// records the live feed.
    pub log: Arc<dyn EventLog>,
    /// Checks the same tokens as the gRPC services.
    pub secret: Arc<JwtSecret>,
}

/// The state every handler shares.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    secret: Arc<JwtSecret>,
    log: Arc<dyn EventLog>,
    snapshots: snapshot::Snapshots,
    feed: feed::Feed,
    /// The open `/api/stream` connections, bounded.
    streams: slots::StreamSlots,
    shutdown: Shutdown,
}

/// The dashboard's HTTP server, bound but not yet serving.
#[derive(Debug)]
pub struct DashboardServer {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    config: DashboardConfig,
}

impl DashboardServer {
    /// Binds `address` (`HOST:PORT`; port 0 picks a free one).
    pub async fn bind(address: &str, config: DashboardConfig) -> Result<Self, HttpError> {
        let bind_error = |source| ServerError::Bind {
            address: address.to_owned(),
            source,
        };
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok(Self {
            listener,
            local_addr,
            config,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The dashboard's address as a browser opens it.
    pub fn url(&self) -> String {
        format!("http://{}/", self.local_addr)
    }

    /// Serves, and keeps the snapshots and the feed up to date, until
    /// `shutdown`. Open event streams end at shutdown too, so it never
    /// waits on a browser that stays connected.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> Result<(), HttpError> {
        let DashboardConfig { live, log, secret } = self.config;
        let (snapshots, publisher) =
            snapshot::Snapshots::start(live.clone(), Arc::clone(&log)).await;
        let (feed, follower) = feed::Feed::start(live, Arc::clone(&log));
        let state = AppState {
            secret,
            log,
            snapshots,
            feed,
            streams: slots::StreamSlots::default(),
            shutdown: shutdown.clone(),
        };
        let router = router(state);
        tracing::info!(address = %self.local_addr, "dashboard serving");
        let serve_until = shutdown.clone().wait();
        let served = async {
            axum::serve(self.listener, router)
                .with_graceful_shutdown(serve_until)
                .await
                .map_err(|source| ServerError::Bind {
                    address: self.local_addr.to_string(),
                    source,
                })
        };
        let (served, (), ()) = tokio::join!(
            served,
            publisher.run_until_stopped(shutdown.clone()),
            follower.run_until_stopped(shutdown),
        );
        served?;
        Ok(())
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(page::dashboard))
        .route("/login", get(page::sign_in).post(access::login))
        .route("/logout", post(access::logout))
        .route("/assets/dashboard.css", get(page::stylesheet))
        .route("/assets/dashboard.js", get(page::script))
        .route("/assets/favicon.svg", get(page::favicon))
        .route("/api/report", get(report))
        .route("/api/stream", get(stream::stream))
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(healthz))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Headers every answer carries: the page loads only its own script and
/// stylesheet (inline `style` attributes draw the bars), is never framed,
/// and no content type is guessed.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The `scope` query parameter of the API and the page.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct ScopeQuery {
    scope: Option<String>,
}

/// An error as the API answers it: the status of service-kit's one mapping
/// and a JSON body naming the reason.
#[derive(Debug)]
pub(crate) struct ApiError(ServiceError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (
            status,
            Json(serde_json::json!({"error": self.0.to_string()})),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        ApiError(error)
    }
}

/// `GET /api/report?scope=`: the report of `rules.md`, restricted to what the
/// caller may read (every scope for `all`, one centre's otherwise).
async fn report(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ScopeQuery>,
) -> Result<Response, ApiError> {
    let viewer = access::Viewer::from_headers(&state.secret, &headers)?;
    let scope = viewer.scope(query.scope.as_deref())?;
    let snapshot = state.snapshots.latest();
    let report = scope.restrict(&snapshot.report);
    let mut response = (
        [(header::CONTENT_TYPE, "application/json")],
        report.to_json(),
    )
        .into_response();
    if let Ok(value) = header::HeaderValue::from_str(&snapshot.position.to_string()) {
        response.headers_mut().insert("x-log-position", value);
    }
    Ok(response)
}

async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    match state.log.head().await {
        Ok(head) => (
            StatusCode::OK,
            Json(serde_json::json!({"status": "serving", "log_head": head})),
        ),
        Err(error) => {
            let error = ServiceError::from(error);
            let status = StatusCode::from_u16(error.http_status())
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            (
                status,
                Json(serde_json::json!({"status": "not_serving", "error": error.to_string()})),
            )
        }
    }
}
