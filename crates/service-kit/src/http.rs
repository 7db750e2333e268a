//! The HTTP side of a toxaudit process: for now `GET /healthz` only (the
//! dashboard of a later issue will live here). It answers 200 with the log
//! head while the process serves, for load balancers and `curl`.

use std::{net::SocketAddr, sync::Arc};

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use eventlog::EventLog;

use crate::{ServiceError, server::ServerError};

/// A bound HTTP server, not yet serving.
#[derive(Debug)]
pub struct HttpServer {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    log: Arc<dyn EventLog>,
}

impl HttpServer {
    pub async fn bind(address: &str, log: Arc<dyn EventLog>) -> Result<Self, ServerError> {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| ServerError::Bind {
                address: address.to_owned(),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            address: address.to_owned(),
            source,
        })?;
        Ok(Self {
            listener,
            local_addr,
            log,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let router = Router::new()
            .route("/healthz", get(healthz))
            .with_state(self.log);
        tracing::info!(address = %self.local_addr, "http serving");
        axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|source| ServerError::Bind {
                address: self.local_addr.to_string(),
                source,
            })
    }
}

async fn healthz(State(log): State<Arc<dyn EventLog>>) -> (StatusCode, Json<serde_json::Value>) {
    match log.head().await {
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
