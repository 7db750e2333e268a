//! gRPC server plumbing shared by the services: bind first (so a caller
//! asking for port 0 learns the real address before serving), serve the
//! services' routes plus `grpc.health.v1` and server reflection, optional TLS
//! (rustls) from PEM files, and graceful shutdown on a passed-in signal.

use std::{future::Future, net::SocketAddr, path::PathBuf, time::Duration};

use tokio::{net::TcpListener, sync::watch};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{
    service::Routes,
    transport::{Identity, Server, ServerTlsConfig},
};
use tonic_health::{ServingStatus, server::HealthReporter};

/// Errors of starting or running a server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address is taken or not ours: a configuration problem.
    #[error("cannot bind {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
    /// The certificate or key cannot be read or used.
    #[error("tls: {0}")]
    Tls(String),
    #[error("grpc server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(String),
}

/// Certificate chain and private key, both PEM files, for TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

/// A shutdown signal that many tasks can wait for: set once, seen by all.
#[derive(Debug, Clone)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

/// The side that triggers a [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownTrigger {
    sender: watch::Sender<bool>,
}

impl Shutdown {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (sender, receiver) = watch::channel(false);
        (ShutdownTrigger { sender }, Shutdown { receiver })
    }

    /// Completes once shutdown has been asked for (at once if it already was).
    pub async fn wait(mut self) {
        // An error means the trigger was dropped: treat that as shutdown too,
        // so no task outlives its owner.
        let _ = self.receiver.wait_for(|stopped| *stopped).await;
    }

    pub fn is_triggered(&self) -> bool {
        *self.receiver.borrow()
    }
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }
}

/// Completes on ctrl-c or SIGTERM, whichever comes first.
pub async fn terminate_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for sigterm");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c received, shutting down"),
        () = terminate => tracing::info!("sigterm received, shutting down"),
    }
}

/// A bound gRPC server, not yet serving.
#[derive(Debug)]
pub struct GrpcServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<ServerTlsConfig>,
    routes: Routes,
    health: HealthReporter,
    service_names: Vec<String>,
}

impl GrpcServer {
    /// Binds `address` and prepares `routes` (already wrapped in their auth
    /// interceptors) with health, for each of `service_names`, and reflection.
    pub async fn bind(
        address: &str,
        tls: Option<&TlsFiles>,
        routes: Routes,
        service_names: &[&str],
    ) -> Result<Self, ServerError> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| ServerError::Bind {
                address: address.to_owned(),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            address: address.to_owned(),
            source,
        })?;
        let tls = match tls {
            Some(files) => Some(tls_config(files)?),
            None => None,
        };
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection()
            .build_v1()
            .map_err(|error| ServerError::Reflection(error.to_string()))?;
        // v1alpha too: many clients (grpcio's reflection database, older
        // grpcurl) still ask for it.
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(|error| ServerError::Reflection(error.to_string()))?;
        let routes = routes
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        Ok(Self {
            listener,
            local_addr,
            tls,
            routes,
            health,
            service_names: service_names
                .iter()
                .map(|name| (*name).to_owned())
                .collect(),
        })
    }

    /// The address actually bound (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle to change the health status while serving.
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets calls in
    /// flight finish and marks every service NOT_SERVING.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServerError> {
        for name in &self.service_names {
            self.health
                .set_service_status(name.as_str(), ServingStatus::Serving)
                .await;
        }
        let mut builder = Server::builder().http2_keepalive_interval(Some(Duration::from_secs(30)));
        if let Some(tls) = self.tls {
            builder = builder.tls_config(tls)?;
        }
        let health = self.health.clone();
        let names = self.service_names.clone();
        let shutdown = async move {
            shutdown.await;
            for name in &names {
                health
                    .set_service_status(name.as_str(), ServingStatus::NotServing)
                    .await;
            }
        };
        tracing::info!(address = %self.local_addr, services = ?self.service_names, "grpc serving");
        // Nagle's algorithm off on every accepted connection, as tonic's own
        // `serve` does: with it on, a response written in more than one
        // segment waits for the client's delayed ACK, some 40 ms per call.
        let incoming = futures::StreamExt::map(TcpListenerStream::new(self.listener), |stream| {
            stream.inspect(|connection| {
                if let Err(error) = connection.set_nodelay(true) {
                    tracing::warn!(%error, "cannot turn off nagle's algorithm on a connection");
                }
            })
        });
        builder
            .add_routes(self.routes)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?;
        tracing::info!(address = %self.local_addr, "grpc stopped");
        Ok(())
    }
}

fn tls_config(files: &TlsFiles) -> Result<ServerTlsConfig, ServerError> {
    let certificate = std::fs::read(&files.certificate).map_err(|error| {
        ServerError::Tls(format!(
            "cannot read certificate {}: {error}",
            files.certificate.display()
        ))
    })?;
    let private_key = std::fs::read(&files.private_key).map_err(|error| {
        ServerError::Tls(format!(
            "cannot read private key {}: {error}",
            files.private_key.display()
        ))
    })?;
    Ok(ServerTlsConfig::new().identity(Identity::from_pem(certificate, private_key)))
}
