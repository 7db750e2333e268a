//! The multi-site NATS topology of `deploy/nats/` on one machine, for tests:
//! a three-node hub cluster (JetStream domain `hub`) and one leaf node per
//! centre (JetStream domain = the centre), each a real `nats-server` process
//! started from the very templates an operator renders, on loopback ports
//! chosen at random, with temporary stores.
//!
//! The configs are rendered here the way `deploy/nats/render.sh` renders them
//! (`{{key}}` replaced by a value, nothing left unfilled) and the secrets are
//! passed as environment variables, as systemd or compose would, so a test
//! that passes proves the shipped templates work with the real server.
//!
//! Every process can be killed (SIGKILL) and restarted on the same ports and
//! store. Readiness is polled against a bounded deadline: a client port that
//! answers `INFO`, then (for the cluster) a JetStream API that answers, then
//! (for a leaf) the hub reaching the leaf's domain across the link.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::AsyncReadExt;

use crate::nats::{free_port, nats_server_binary};

/// Starts of a topology that may lose a port race before one is given up.
const PORT_RACE_ATTEMPTS: u32 = 3;
/// How long a process may take to accept clients.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// Pause between two readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How many hub nodes the deployment runs (R3 streams need three).
pub const HUB_NODES: usize = 3;

/// The passwords of the test topology, all fixed and all for loopback only.
pub const SYS_PASSWORD: &str = "test-sys-secret";
pub const ROUTE_PASSWORD: &str = "test-route-secret";
pub const NETWORK_ADMIN_PASSWORD: &str = "test-network-admin-secret";
pub const NETWORK_REPORTING_PASSWORD: &str = "test-network-reporting-secret";
pub const CENTRE_SERVICES_PASSWORD: &str = "test-centre-services-secret";
pub const CENTRE_REPORTING_PASSWORD: &str = "test-centre-reporting-secret";

/// A `nats-server` started from a rendered config file and environment,
/// restartable on the same ports and store.
#[derive(Debug)]
pub struct NatsProcess {
    /// A name for messages (`hub-1`, `leeds-leaf`).
    name: String,
    binary: PathBuf,
    /// Holds the config files, the store and the log; removed on drop.
    directory: tempfile::TempDir,
    /// The main config file inside `directory`.
    config: PathBuf,
    /// Variables the config reads (`$TOXAUDIT_...`).
    environment: Vec<(String, String)>,
    client_port: u16,
    child: Option<Child>,
}

impl NatsProcess {
    /// Writes the files `render(directory)` returns (name, text) into a fresh
    /// temporary directory, the first one being the main config, and starts
    /// nats-server on it. `render` receives the directory so that it can
    /// place the JetStream store inside it.
    pub async fn start(
        name: &str,
        client_port: u16,
        environment: Vec<(String, String)>,
        render: impl FnOnce(&Path) -> anyhow::Result<Vec<(String, String)>>,
    ) -> anyhow::Result<NatsProcess> {
        let binary = nats_server_binary()?;
        let directory = tempfile::Builder::new()
            .prefix(&format!("nats-{name}-"))
            .tempdir()
            .context("creating a temporary directory for nats-server")?;
        let files = render(directory.path())?;
        let Some((main, _)) = files.first() else {
            bail!("no config file to start {name} with");
        };
        let config = directory.path().join(main);
        for (file, text) in &files {
            std::fs::write(directory.path().join(file), text)
                .with_context(|| format!("writing {file} for {name}"))?;
        }
        let mut process = NatsProcess {
            name: name.to_owned(),
            binary,
            directory,
            config,
            environment,
            client_port,
            child: None,
        };
        process.spawn_and_wait().await?;
        Ok(process)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// `nats://user:password@127.0.0.1:<port>`.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("nats://{user}:{password}@127.0.0.1:{}", self.client_port)
    }

    pub fn directory(&self) -> &Path {
        self.directory.path()
    }

    /// Everything the server wrote so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.directory.path().join("server.log")).unwrap_or_default()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, then wait for the process to end.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child
                .kill()
                .with_context(|| format!("killing {}", self.name))?;
            child
                .wait()
                .with_context(|| format!("waiting for {} to end", self.name))?;
        }
        Ok(())
    }

    /// Kills the process if it runs and starts it again on the same config,
    /// ports and store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill()?;
        self.spawn_and_wait().await
    }

    async fn spawn_and_wait(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.directory.path().join("server.log"))
            .context("opening the nats-server log")?;
        let mut command = Command::new(&self.binary);
        command
            .arg("-c")
            .arg(&self.config)
            .envs(self.environment.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("sharing the log file")?)
            .stderr(log);
        let child = command
            .spawn()
            .with_context(|| format!("spawning {} for {}", self.binary.display(), self.name))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if says_info(self.client_port).await {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().context("polling nats-server")?
            {
                self.child = None;
                bail!(
                    "{} exited early with {status}; log:\n{}",
                    self.name,
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not accept clients within {READY_DEADLINE:?}; log:\n{}",
                    self.name,
                    self.log()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for NatsProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Best effort: the process may already be gone.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The ports of one hub node, fixed before any node starts because every
/// node's routes and every leaf's remotes name them.
#[derive(Debug, Clone, Copy)]
pub struct HubNodePorts {
    pub client: u16,
    pub cluster: u16,
    pub leafnode: u16,
    pub monitor: u16,
}

/// The hub cluster and the centres' leaf nodes, all running on loopback.
#[derive(Debug)]
pub struct Topology {
    /// `deploy/nats/`, where the templates are.
    templates: PathBuf,
    pub hub: Vec<NatsProcess>,
    pub hub_ports: Vec<HubNodePorts>,
    /// Leaf node per centre.
    pub leaves: BTreeMap<String, NatsProcess>,
    centres: Vec<String>,
}

impl Topology {
    /// Starts the three hub nodes for `centres` and waits until the cluster
    /// answers JetStream requests; then a leaf node per centre, each waited
    /// for until the hub reaches its domain.
    pub async fn start(centres: &[&str]) -> anyhow::Result<Topology> {
        // The ports come from `free_port` (bind, then release), so another
        // process may take one before its nats-server binds it; tests run in
        // parallel. Such a start is retried on fresh ports, a bounded number
        // of times; any other failure is returned at once.
        let mut attempts_left = PORT_RACE_ATTEMPTS;
        loop {
            match Self::start_once(centres).await {
                Err(error)
                    if attempts_left > 1
                        && format!("{error:#}").contains("address already in use") =>
                {
                    attempts_left -= 1;
                }
                outcome => return outcome,
            }
        }
    }

    async fn start_once(centres: &[&str]) -> anyhow::Result<Topology> {
        let templates = deploy_nats_directory()?;
        let mut hub_ports = Vec::with_capacity(HUB_NODES);
        for _ in 0..HUB_NODES {
            hub_ports.push(HubNodePorts {
                client: free_port()?,
                cluster: free_port()?,
                leafnode: free_port()?,
                monitor: free_port()?,
            });
        }
        let mut topology = Topology {
            templates,
            hub: Vec::new(),
            hub_ports,
            leaves: BTreeMap::new(),
            centres: centres.iter().map(|centre| (*centre).to_owned()).collect(),
        };
        // Start the nodes together: a node waits for its routes' peers before
        // its JetStream elects a meta leader, not before accepting clients.
        for index in 0..HUB_NODES {
            let node = topology.start_hub_node(index).await?;
            topology.hub.push(node);
        }
        topology.wait_for_hub_jetstream().await?;
        for centre in centres {
            topology.start_leaf(centre).await?;
        }
        Ok(topology)
    }

    /// The hub's client URLs (every node) for a user, comma-separated as
    /// async-nats and the toxaudit `--nats` flag take them.
    pub fn hub_url_as(&self, user: &str, password: &str) -> String {
        self.hub_ports
            .iter()
            .map(|ports| format!("nats://{user}:{password}@127.0.0.1:{}", ports.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A centre's leaf node URL for a user.
    pub fn leaf_url_as(&self, centre: &str, user: &str, password: &str) -> anyhow::Result<String> {
        Ok(self.leaf(centre)?.url_as(user, password))
    }

    pub fn leaf(&self, centre: &str) -> anyhow::Result<&NatsProcess> {
        self.leaves
            .get(centre)
            .with_context(|| format!("no leaf node for centre {centre}"))
    }

    pub fn leaf_mut(&mut self, centre: &str) -> anyhow::Result<&mut NatsProcess> {
        self.leaves
            .get_mut(centre)
            .with_context(|| format!("no leaf node for centre {centre}"))
    }

    /// The hub's variables: every password the hub config reads.
    fn hub_environment(&self) -> Vec<(String, String)> {
        let mut environment = vec![
            ("TOXAUDIT_SYS_PASSWORD".to_owned(), SYS_PASSWORD.to_owned()),
            (
                "TOXAUDIT_ROUTE_PASSWORD".to_owned(),
                ROUTE_PASSWORD.to_owned(),
            ),
            (
                "TOXAUDIT_NETWORK_ADMIN_PASSWORD".to_owned(),
                NETWORK_ADMIN_PASSWORD.to_owned(),
            ),
            (
                "TOXAUDIT_NETWORK_REPORTING_PASSWORD".to_owned(),
                NETWORK_REPORTING_PASSWORD.to_owned(),
            ),
        ];
        for centre in &self.centres {
            environment.push((leaf_password_variable(centre), leaf_password(centre)));
        }
        environment
    }

    async fn start_hub_node(&self, index: usize) -> anyhow::Result<NatsProcess> {
        let ports = self.hub_ports[index];
        let routes = self
            .hub_ports
            .iter()
            .map(|peer| {
                format!(
                    "\"nats-route://route:{ROUTE_PASSWORD}@127.0.0.1:{}\"",
                    peer.cluster
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let hub_template = self.template("hub.conf.template")?;
        let accounts_template = self.template("hub-accounts.conf.template")?;
        let user_template = self.template("hub-centre-user.conf.template")?;
        let centres = self.centres.clone();
        let name = format!("hub-{}", index + 1);
        let server_name = name.clone();
        NatsProcess::start(
            &name,
            ports.client,
            self.hub_environment(),
            move |directory| {
                let store = directory.join("jetstream");
                let hub = render(
                    &hub_template,
                    &[
                        ("server_name", server_name.as_str()),
                        ("client_listen", &format!("127.0.0.1:{}", ports.client)),
                        ("monitor_listen", &format!("127.0.0.1:{}", ports.monitor)),
                        ("store_dir", &store.display().to_string()),
                        ("cluster_listen", &format!("127.0.0.1:{}", ports.cluster)),
                        ("routes", &routes),
                        ("leafnode_listen", &format!("127.0.0.1:{}", ports.leafnode)),
                    ],
                )?;
                let accounts = render_hub_accounts(&accounts_template, &user_template, &centres)?;
                Ok(vec![
                    ("hub.conf".to_owned(), hub),
                    ("hub-accounts.conf".to_owned(), accounts),
                ])
            },
        )
        .await
    }

    /// Starts the leaf node of `centre` (which must be one of the centres the
    /// hub was started for) and waits until the hub reaches its domain.
    async fn start_leaf(&mut self, centre: &str) -> anyhow::Result<()> {
        let template = self.template("leaf.conf.template")?;
        let client = free_port()?;
        let monitor = free_port()?;
        let mut environment = vec![
            ("TOXAUDIT_SYS_PASSWORD".to_owned(), SYS_PASSWORD.to_owned()),
            (
                "TOXAUDIT_CENTRE_SERVICES_PASSWORD".to_owned(),
                CENTRE_SERVICES_PASSWORD.to_owned(),
            ),
            (
                "TOXAUDIT_CENTRE_REPORTING_PASSWORD".to_owned(),
                CENTRE_REPORTING_PASSWORD.to_owned(),
            ),
        ];
        for (index, ports) in self.hub_ports.iter().enumerate() {
            environment.push((
                format!("TOXAUDIT_HUB_LEAF_URL_{}", index + 1),
                format!(
                    "nats-leaf://leaf-{centre}:{}@127.0.0.1:{}",
                    leaf_password(centre),
                    ports.leafnode
                ),
            ));
        }
        let owned_centre = centre.to_owned();
        let name = format!("{centre}-leaf");
        let server_name = name.clone();
        let process = NatsProcess::start(&name, client, environment, move |directory| {
            let store = directory.join("jetstream");
            let leaf = render(
                &template,
                &[
                    ("centre", owned_centre.as_str()),
                    ("server_name", server_name.as_str()),
                    ("client_listen", &format!("127.0.0.1:{client}")),
                    ("monitor_listen", &format!("127.0.0.1:{monitor}")),
                    ("store_dir", &store.display().to_string()),
                ],
            )?;
            Ok(vec![("leaf.conf".to_owned(), leaf)])
        })
        .await?;
        self.leaves.insert(centre.to_owned(), process);
        self.wait_for_leaf_link(centre).await
    }

    /// Polls until a JetStream request from the hub reaches the leaf's domain
    /// (`$JS.<centre>.API.INFO` answered): the link is up.
    pub async fn wait_for_leaf_link(&self, centre: &str) -> anyhow::Result<()> {
        let client = self.hub_admin_client().await?;
        let subject = format!("$JS.{centre}.API.INFO");
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            let answer = tokio::time::timeout(
                Duration::from_secs(1),
                client.request(subject.clone(), bytes::Bytes::new()),
            )
            .await;
            if let Ok(Ok(message)) = answer
                && message.status.is_none()
                && !message.payload.is_empty()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the hub did not reach the {centre} domain within {READY_DEADLINE:?}; leaf log:\n{}",
                    self.leaf(centre).map(NatsProcess::log).unwrap_or_default()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Polls until the hub cluster's JetStream answers `$JS.API.INFO` (a meta
    /// leader is elected) from a client of any running node.
    pub async fn wait_for_hub_jetstream(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Ok(client) = self.hub_admin_client().await {
                let answer = tokio::time::timeout(
                    Duration::from_secs(1),
                    client.request("$JS.API.INFO", bytes::Bytes::new()),
                )
                .await;
                if let Ok(Ok(message)) = answer
                    && let Ok(info) = serde_json::from_slice::<serde_json::Value>(&message.payload)
                    && info.get("error").is_none()
                    && info.get("type").is_some()
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .hub
                    .iter()
                    .map(|node| format!("--- {}\n{}", node.name(), node.log()))
                    .collect();
                bail!(
                    "the hub's JetStream did not answer within {READY_DEADLINE:?}; logs:\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// A client of the hub as `network-admin`, connected to any running node.
    pub async fn hub_admin_client(&self) -> anyhow::Result<async_nats::Client> {
        connect(&self.hub_url_as("network-admin", NETWORK_ADMIN_PASSWORD)).await
    }

    fn template(&self, name: &str) -> anyhow::Result<String> {
        let path = self.templates.join(name);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }
}

/// Connects to a comma-separated list of URLs, failing fast when none
/// answers. async-nats ignores credentials written in a URL, so the user and
/// password of the first URL that has them are passed as options.
pub async fn connect(urls: &str) -> anyhow::Result<async_nats::Client> {
    let mut credentials = None;
    let mut addresses: Vec<async_nats::ServerAddr> = Vec::new();
    for url in urls.split(',') {
        let address: async_nats::ServerAddr = url
            .parse()
            .with_context(|| format!("parsing nats url {url}"))?;
        if credentials.is_none()
            && let (Some(user), Some(password)) = (address.username(), address.password())
        {
            credentials = Some((user.to_owned(), password.to_owned()));
        }
        addresses.push(address);
    }
    let mut options = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(5)))
        .retry_on_initial_connect();
    if let Some((user, password)) = credentials {
        options = options.user_and_password(user, password);
    }
    options
        .connect(addresses)
        .await
        .with_context(|| format!("connecting to {urls}"))
}

/// The leaf password of a centre in the test topology.
pub fn leaf_password(centre: &str) -> String {
    format!("test-leaf-{centre}-secret")
}

/// The variable holding a centre's leaf password at the hub:
/// `TOXAUDIT_LEAF_<CENTRE>_PASSWORD`, the centre upper-cased with `-` as `_`.
pub fn leaf_password_variable(centre: &str) -> String {
    format!(
        "TOXAUDIT_LEAF_{}_PASSWORD",
        centre.to_uppercase().replace('-', "_")
    )
}

/// `deploy/nats/` of this repository.
pub fn deploy_nats_directory() -> anyhow::Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let directory = manifest
        .ancestors()
        .map(|ancestor| ancestor.join("deploy").join("nats"))
        .find(|candidate| candidate.join("hub.conf.template").is_file())
        .context("deploy/nats/hub.conf.template not found above the test-support crate")?;
    Ok(directory)
}

/// Fills every `{{key}}` of `template`, as `deploy/nats/render.sh` does; an
/// error when a placeholder is left.
pub fn render(template: &str, values: &[(&str, &str)]) -> anyhow::Result<String> {
    let mut text = template.to_owned();
    for (key, value) in values {
        text = text.replace(&format!("{{{{{key}}}}}"), value);
    }
    if let Some(start) = text.find("{{") {
        let placeholder: String = text[start..].chars().take(40).collect();
        bail!("no value for the placeholder at {placeholder:?}");
    }
    Ok(text)
}

/// The hub's accounts file for `centres`, as `deploy/nats/add-centre.sh`
/// renders it.
pub fn render_hub_accounts(
    accounts_template: &str,
    user_template: &str,
    centres: &[String],
) -> anyhow::Result<String> {
    let mut users = String::new();
    for centre in centres {
        let variable = leaf_password_variable(centre);
        users.push_str(&render(
            user_template,
            &[
                ("centre", centre.as_str()),
                ("centre_password_variable", variable.as_str()),
            ],
        )?);
    }
    render(
        accounts_template,
        &[("centre_leaf_users", users.trim_end_matches('\n'))],
    )
}

/// Whether a TCP connection to the port receives the server's `INFO` line.
async fn says_info(port: u16) -> bool {
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
