//! The dashboard in a real browser, and `/metrics` against the JSON report.
//!
//! `toxaudit up` runs as a process on the embedded log (ports picked by the
//! OS); Debian's headless Chromium, driven over WebDriver by chromedriver,
//! signs in with a token and opens the dashboard; events are appended
//! through gRPC (Ingest), and the numbers on the page must change to the
//! expected values without a reload (a marker set in the page before the
//! append must survive). A clinician of one centre must see nothing of the
//! other, in the page, the feed and the API. A screenshot is saved to
//! `target/dashboard.png` (and `target/dashboard-clinician.png`).
//!
//! The browser test fails, never skips, when chromium or chromedriver is
//! missing (`scripts/ensure-chromium.sh` installs them). Every wait polls
//! the DOM or the API against a deadline; none is a fixed sleep.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use domain::ClinicalDate;
use fantoccini::{Client, ClientBuilder, Locator};
use service_kit::{JwtSecret, Role, ServiceClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::toxaudit;

const SECRET: &str = "a dashboard test secret, long enough";
/// How long a process may take to start, or the page to show a change.
const DEADLINE: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A token signed with the test secret.
fn token(centre: &str, role: Role) -> anyhow::Result<String> {
    let secret = JwtSecret::from_bytes(SECRET.as_bytes())?;
    Ok(secret.issue(
        &format!("{role}@{centre}"),
        centre,
        role,
        Duration::from_secs(3600),
    )?)
}

/// target/<profile>/deps/e2e-<hash> → target/<profile>.
fn profile_directory() -> anyhow::Result<PathBuf> {
    let test_binary = std::env::current_exe().context("locating the test binary")?;
    Ok(test_binary
        .parent()
        .and_then(Path::parent)
        .context("the test binary is not in target/<profile>/deps")?
        .to_owned())
}

/// Where artifacts go: the `target` directory of this build.
fn artifact_directory() -> anyhow::Result<PathBuf> {
    Ok(profile_directory()?
        .parent()
        .context("the profile directory has no parent")?
        .to_owned())
}

/// A child process killed when dropped, with its stdout lines on a channel.
struct Process {
    child: Child,
    lines: mpsc::Receiver<String>,
    what: String,
}

impl Process {
    fn spawn(mut command: Command, what: &str) -> anyhow::Result<Process> {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (sender, lines) = mpsc::channel();
        // Forwards stdout lines until the process ends.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Process {
            child,
            lines,
            what: what.to_owned(),
        })
    }

    /// The first stdout line `found` accepts, within the deadline.
    fn wait_for_line<T>(&self, mut found: impl FnMut(&str) -> Option<T>) -> anyhow::Result<T> {
        let started = Instant::now();
        loop {
            let left = DEADLINE.saturating_sub(started.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(value) = found(&line) {
                        return Ok(value);
                    }
                }
                Err(_) => bail!("{} did not print what was expected in time", self.what),
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `toxaudit up` on a fresh embedded log, with the dashboard.
struct Up {
    _process: Process,
    grpc_url: String,
    /// `http://127.0.0.1:PORT/`
    dashboard_url: String,
    http_address: String,
}

fn start_up(directory: &Path) -> anyhow::Result<Up> {
    let mut command = Command::new(toxaudit());
    command
        .arg("up")
        .arg("--data-dir")
        .arg(directory.join("data"))
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .env("TOXAUDIT_JWT_SECRET", SECRET);
    let process = Process::spawn(command, "toxaudit up")?;
    let grpc_url = process.wait_for_line(|line| {
        line.strip_prefix("listening grpc ")
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
    })?;
    let dashboard_url = process.wait_for_line(|line| {
        line.strip_prefix("dashboard ")
            .map(|url| url.trim().to_owned())
    })?;
    let http_address = dashboard_url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    Ok(Up {
        _process: process,
        grpc_url,
        dashboard_url,
        http_address,
    })
}

fn today() -> ClinicalDate {
    ClinicalDate::from_date(time::OffsetDateTime::now_utc().date())
}

/// Appends NDJSON lines through gRPC, as an admin.
async fn append(up: &Up, lines: &[&str]) -> anyhow::Result<()> {
    let client = ServiceClient::connect(&up.grpc_url, &token("all", Role::Admin)?, None).await?;
    let events = lines
        .iter()
        .map(|line| {
            domain::ndjson::parse_line(line, today())
                .map(|event| proto::v1::Event::from(&event))
                .map_err(|refusal| anyhow::anyhow!("bad test event {line}: {refusal}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    client
        .append(events)
        .await
        .context("appending through gRPC")?;
    Ok(())
}

/// A plain HTTP/1.0 GET (the server closes the connection after the body).
async fn http_get(
    address: &str,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String, String)> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let authorization = token
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    stream
        .write_all(
            format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n{authorization}\r\n").as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8(response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no end of headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    Ok((status, head.to_owned(), body.to_owned()))
}

/// Polls until `done` holds or the deadline passes.
async fn eventually<F, Fut>(what: &str, mut done: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let started = Instant::now();
    loop {
        if done().await? {
            return Ok(());
        }
        if started.elapsed() > DEADLINE {
            bail!("timed out waiting until {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

const REGISTER_L1: &str = r#"{"event_id":"l1-reg","centre":"leeds","patient":"L-0001","occurred_on":"2024-01-08","type":"patient_registered"}"#;
const REGISTER_Y1: &str = r#"{"event_id":"y1-reg","centre":"york","patient":"Y-0001","occurred_on":"2024-02-01","type":"patient_registered"}"#;

fn injection(id: &str, date: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","centre":"leeds","patient":"L-0001","occurred_on":"{date}","type":"injection_administered","product":"onabotulinumtoxinA","total_units":200,"guidance":"emg","muscles":[{{"muscle":"splenius_capitis","side":"left","units":100}},{{"muscle":"sternocleidomastoid","side":"right","units":100}}]}}"#
    )
}

fn response(id: &str, injection: &str, date: &str, rating: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","centre":"leeds","patient":"L-0001","occurred_on":"{date}","type":"response_assessed","injection_event_id":"{injection}","rating":"{rating}"}}"#
    )
}

/// Leeds' L-0001 loses response completely after two good cycles (SNR, no
/// response, not yet assessed for resistance: BNN-2 is 0/1); York has one
/// patient.
fn baseline() -> Vec<String> {
    vec![
        REGISTER_L1.to_owned(),
        REGISTER_Y1.to_owned(),
        injection("l1-i1", "2024-01-08"),
        response("l1-r1", "l1-i1", "2024-02-12", "good"),
        injection("l1-i2", "2024-04-08"),
        response("l1-r2", "l1-i2", "2024-05-13", "good"),
        injection("l1-i3", "2024-07-08"),
        response("l1-r3", "l1-i3", "2024-08-12", "none"),
    ]
}

/// A positive frontalis test for L-0001 (BNN-2 becomes 1/1, resistance
/// confirmed 1/1) and a new Leeds patient.
const LIVE: [&str; 2] = [
    r#"{"event_id":"l1-test","centre":"leeds","patient":"L-0001","occurred_on":"2024-08-20","type":"resistance_tested","method":"frontalis","result":"positive"}"#,
    r#"{"event_id":"l2-reg","centre":"leeds","patient":"L-0002","occurred_on":"2024-09-02","type":"patient_registered"}"#,
];

/// Finds a program on PATH, or fails the test saying how to install it.
fn required_program(names: &[&str]) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for directory in std::env::split_paths(&path) {
        for name in names {
            let candidate = directory.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "{} is not installed: the browser test needs Debian's chromium and chromium-driver (run scripts/ensure-chromium.sh)",
        names.join(" or ")
    )
}

/// chromedriver on a port it picks, and a headless Chromium session.
async fn browser(profile: &Path) -> anyhow::Result<(Process, Client)> {
    let chromium = required_program(&["chromium", "chromium-browser"])?;
    let chromedriver = required_program(&["chromedriver"])?;
    let mut command = Command::new(chromedriver);
    command.arg("--port=0");
    let driver = Process::spawn(command, "chromedriver")?;
    let port: u16 = driver.wait_for_line(|line| {
        line.strip_prefix("ChromeDriver was started successfully on port ")
            .and_then(|rest| rest.trim_end_matches('.').trim().parse().ok())
    })?;
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        serde_json::json!({
            "binary": chromium,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--window-size=1600,1250",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .context("starting a chromium session through chromedriver")?;
    Ok((driver, client))
}

/// The text of the element with `data-metric="name"`, if it is on the page.
/// Read in one script, so a live update between finding the element and
/// reading it cannot leave a stale reference.
async fn metric(client: &Client, name: &str) -> anyhow::Result<Option<String>> {
    let text = client
        .execute(
            "const element = document.querySelector(`[data-metric=\"${arguments[0]}\"]`); \
             return element ? element.textContent.trim() : null;",
            vec![serde_json::json!(name)],
        )
        .await?;
    Ok(text.as_str().map(str::to_owned))
}

/// Polls the page until every named metric shows its expected text.
async fn page_shows(client: &Client, expected: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut last = Vec::new();
    let started = Instant::now();
    loop {
        last.clear();
        for (name, want) in expected {
            last.push((*name, metric(client, name).await?, *want));
        }
        if last
            .iter()
            .all(|(_, shown, want)| shown.as_deref() == Some(*want))
        {
            return Ok(());
        }
        if started.elapsed() > DEADLINE {
            bail!("the page never showed the expected numbers: (metric, shown, expected) {last:?}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn sign_in(client: &Client, up: &Up, token: &str) -> anyhow::Result<()> {
    client.delete_all_cookies().await?;
    client.goto(&up.dashboard_url).await?;
    // Without a token the dashboard sends the browser to the sign-in page.
    let url = client.current_url().await?;
    ensure!(
        url.path() == "/login",
        "expected the sign-in page, got {url}"
    );
    client
        .find(Locator::Css("#token"))
        .await?
        .send_keys(token)
        .await?;
    client.find(Locator::Css("#sign-in")).await?.click().await?;
    eventually("the dashboard opens after sign-in", || async {
        Ok(
            client.current_url().await?.path() == "/"
                && metric(client, "patients").await?.is_some(),
        )
    })
    .await
}

async fn browse(client: &Client, up: &Up) -> anyhow::Result<()> {
    // An auditor sees the network.
    sign_in(client, up, &token("all", Role::Auditor)?).await?;
    page_shows(
        client,
        &[
            ("patients", "2"),
            ("headline.snr", "1"),
            ("no_response.n", "1/1 (100%)"),
            ("no_response.assessed_for_resistance", "0/1 (0%)"),
            ("no_response.resistance_confirmed", "0/0 (n/a)"),
            ("standard.BNN-2", "0/1"),
            ("standard.BNN-2.percent", "0%"),
            ("standard.BNN-1.percent", "n/a"),
            ("centre.york.patients", "1"),
        ],
    )
    .await?;
    // The first paint is the server's: the numbers are in the html itself.
    let (status, _, html) = http_get(
        &up.http_address,
        "/?scope=all",
        Some(&token("all", Role::Auditor)?),
    )
    .await?;
    ensure!(status == 200, "GET / answered {status}");
    ensure!(
        html.contains(r#"data-metric="standard.BNN-2">0/1<"#),
        "the server-rendered page lacks BNN-2's numbers"
    );
    // Mark this page: a reload would lose the mark.
    client
        .execute(
            "window.dashboardTestMark = 'not reloaded'; return true;",
            vec![],
        )
        .await?;
    eventually("the page's event stream is live", || async {
        Ok(client.find(Locator::Css("#connection.live")).await.is_ok())
    })
    .await?;

    append(up, &LIVE).await?;
    page_shows(
        client,
        &[
            ("patients", "3"),
            ("standard.BNN-2", "1/1"),
            ("standard.BNN-2.percent", "100%"),
            ("no_response.assessed_for_resistance", "1/1 (100%)"),
            ("no_response.resistance_confirmed", "1/1 (100%)"),
            ("centre.leeds.patients", "2"),
        ],
    )
    .await?;
    eventually("the feed shows the confirmed resistance", || async {
        Ok(client.source().await?.contains("resistance confirmed"))
    })
    .await?;
    let mark = client
        .execute("return window.dashboardTestMark || null;", vec![])
        .await?;
    ensure!(
        mark == serde_json::json!("not reloaded"),
        "the page was reloaded to show the change"
    );
    let screenshot = client.screenshot().await?;
    std::fs::write(artifact_directory()?.join("dashboard.png"), screenshot)?;

    // A clinician of Leeds sees Leeds only.
    sign_in(client, up, &token("leeds", Role::Clinician)?).await?;
    page_shows(client, &[("patients", "2"), ("standard.BNN-2", "1/1")]).await?;
    let source = client.source().await?;
    ensure!(
        !source.contains("york") && !source.contains("Y-0001"),
        "a leeds clinician's page shows york data"
    );
    // York's events after the page opened never reach it, Leeds' do.
    append(
        up,
        &[
            r#"{"event_id":"y2-reg","centre":"york","patient":"Y-0002","occurred_on":"2024-09-03","type":"patient_registered"}"#,
            r#"{"event_id":"l3-reg","centre":"leeds","patient":"L-0003","occurred_on":"2024-09-03","type":"patient_registered"}"#,
        ],
    )
    .await?;
    page_shows(client, &[("patients", "3")]).await?;
    eventually("the feed shows the new leeds patient", || async {
        Ok(client.source().await?.contains("L-0003"))
    })
    .await?;
    let source = client.source().await?;
    ensure!(
        !source.contains("york") && !source.contains("Y-000"),
        "a leeds clinician's live page received york data"
    );
    let screenshot = client.screenshot().await?;
    std::fs::write(
        artifact_directory()?.join("dashboard-clinician.png"),
        screenshot,
    )?;
    // Asking for York is refused, in the page and the API.
    client
        .goto(&format!("{}?scope=york", up.dashboard_url))
        .await?;
    // The navigation away from a page with an open event stream can still
    // be settling when `goto` returns: wait (bounded) for the refusal page.
    eventually("a leeds clinician is refused york's page", || async {
        Ok(client.source().await?.contains("Not allowed"))
    })
    .await?;
    ensure!(
        !client.source().await?.contains("Y-000"),
        "a leeds clinician was shown york's page"
    );
    let clinician = token("leeds", Role::Clinician)?;
    for path in [
        "/api/report?scope=york",
        "/api/report?scope=all",
        "/api/stream?scope=york",
        "/metrics",
    ] {
        let (status, _, _) = http_get(&up.http_address, path, Some(&clinician)).await?;
        ensure!(
            status == 403,
            "{path} answered {status} to a leeds clinician"
        );
    }
    let (status, _, body) = http_get(
        &up.http_address,
        "/api/report?scope=leeds",
        Some(&clinician),
    )
    .await?;
    ensure!(status == 200, "leeds' own report answered {status}");
    let report: serde_json::Value = serde_json::from_str(&body)?;
    let scopes: Vec<&String> = report["scopes"]
        .as_object()
        .context("no scopes")?
        .keys()
        .collect();
    ensure!(
        scopes == ["leeds"],
        "a leeds clinician got scopes {scopes:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_updates_live_in_chromium_and_confines_a_clinician() -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let up = start_up(directory.path())?;
    let lines = baseline();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    append(&up, &lines).await?;
    let (_driver, client) = browser(&directory.path().join("chromium-profile")).await?;
    let outcome = browse(&client, &up).await;
    // Close the session whatever happened, so no browser outlives the test.
    let closed = client.close().await;
    outcome?;
    closed?;
    Ok(())
}

/// Every sample of `/metrics` as (name, labels, value).
fn samples(text: &str) -> anyhow::Result<Vec<prometheus_parse::Sample>> {
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    Ok(prometheus_parse::Scrape::parse(lines)?.samples)
}

fn sample_value(sample: &prometheus_parse::Sample) -> f64 {
    match sample.value {
        prometheus_parse::Value::Counter(value)
        | prometheus_parse::Value::Gauge(value)
        | prometheus_parse::Value::Untyped(value) => value,
        _ => f64::NAN,
    }
}

/// The value of the sample named `name` whose labels include `labels`.
fn find(
    samples: &[prometheus_parse::Sample],
    name: &str,
    labels: &[(&str, &str)],
) -> anyhow::Result<f64> {
    samples
        .iter()
        .find(|sample| {
            sample.metric == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(key) == Some(*value))
        })
        .map(sample_value)
        .with_context(|| format!("no sample {name}{labels:?}"))
}

fn count(value: &serde_json::Value) -> anyhow::Result<f64> {
    // Test counts are small: exact in an f64.
    Ok(value.as_u64().context("not a count")? as f64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_equal_the_json_report() -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let up = start_up(directory.path())?;
    let mut lines = baseline();
    lines.extend(LIVE.iter().map(|line| (*line).to_owned()));
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    append(&up, &lines).await?;
    let auditor = token("all", Role::Auditor)?;
    let appended = lines.len() as f64;

    // Wait until the metrics show the projection caught up with every event.
    let started = Instant::now();
    let text = loop {
        let (status, _, body) = http_get(&up.http_address, "/metrics", Some(&auditor)).await?;
        ensure!(status == 200, "/metrics answered {status}");
        let parsed = samples(&body)?;
        if find(&parsed, "toxaudit_projection_position", &[])? == appended
            && find(&parsed, "toxaudit_projection_lag_events", &[])? == 0.0
        {
            break body;
        }
        ensure!(
            started.elapsed() < DEADLINE,
            "the metrics never showed every event folded"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    let (status, _, body) =
        http_get(&up.http_address, "/api/report?scope=all", Some(&auditor)).await?;
    ensure!(status == 200, "/api/report answered {status}");
    let report: serde_json::Value = serde_json::from_str(&body)?;
    let parsed = samples(&text)?;

    ensure!(find(&parsed, "toxaudit_events_appended_total", &[])? == appended);
    let scopes = report["scopes"].as_object().context("no scopes")?;
    ensure!(
        scopes.keys().collect::<Vec<_>>() == ["all", "leeds", "york"],
        "unexpected scopes {:?}",
        scopes.keys()
    );
    for (scope, numbers) in scopes {
        let by_scope = [("scope", scope.as_str())];
        ensure!(find(&parsed, "toxaudit_patients", &by_scope)? == count(&numbers["patients"])?);
        ensure!(find(&parsed, "toxaudit_injections", &by_scope)? == count(&numbers["injections"])?);
        ensure!(find(&parsed, "toxaudit_snr_patients", &by_scope)? == count(&numbers["snr"]["n"])?);
        for group in ["suboptimal", "no_response"] {
            let steps = numbers["snr"][group].as_object().context("no group")?;
            ensure!(steps.len() == 10, "group {group} has {} keys", steps.len());
            for (step, value) in steps {
                let shown = find(
                    &parsed,
                    "toxaudit_snr_pathway_patients",
                    &[("scope", scope), ("group", group), ("step", step)],
                )?;
                ensure!(
                    shown == count(value)?,
                    "{scope} {group} {step}: metrics {shown}, report {value}"
                );
            }
        }
        let standards = numbers["standards"].as_object().context("no standards")?;
        ensure!(standards.len() == 5);
        for (standard, result) in standards {
            let labels = [("scope", scope.as_str()), ("standard", standard.as_str())];
            ensure!(
                find(&parsed, "toxaudit_standard_numerator", &labels)?
                    == count(&result["numerator"])?
            );
            ensure!(
                find(&parsed, "toxaudit_standard_denominator", &labels)?
                    == count(&result["denominator"])?
            );
        }
    }
    // The case the live test drives: BNN-2 of leeds is 1/1.
    ensure!(
        find(
            &parsed,
            "toxaudit_standard_numerator",
            &[("scope", "leeds"), ("standard", "BNN-2")]
        )? == 1.0
    );

    // Metrics need an auditor's or admin's token.
    let (status, _, _) = http_get(&up.http_address, "/metrics", None).await?;
    ensure!(status == 401, "/metrics without a token answered {status}");
    let (status, _, _) = http_get(
        &up.http_address,
        "/metrics",
        Some(&token("leeds", Role::Clinician)?),
    )
    .await?;
    ensure!(status == 403, "/metrics for a clinician answered {status}");
    let (status, _, body) = http_get(&up.http_address, "/healthz", None).await?;
    ensure!(
        status == 200 && body.contains("serving"),
        "/healthz: {status} {body}"
    );
    Ok(())
}

/// A Server-Sent Events stream read off a plain socket.
struct EventStream {
    stream: tokio::net::TcpStream,
    buffer: String,
}

/// One server-sent event: its type, id (if any) and data.
#[derive(Debug)]
struct ServerEvent {
    event: String,
    id: Option<u64>,
    data: serde_json::Value,
}

impl EventStream {
    async fn open(
        address: &str,
        path: &str,
        token: &str,
        last_event_id: Option<u64>,
    ) -> anyhow::Result<EventStream> {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        let resume = last_event_id
            .map(|id| format!("Last-Event-ID: {id}\r\n"))
            .unwrap_or_default();
        // HTTP/1.0: the body is the raw event stream, not chunked.
        stream
            .write_all(
                format!(
                    "GET {path} HTTP/1.0\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n{resume}\r\n"
                )
                .as_bytes(),
            )
            .await?;
        let mut events = EventStream {
            stream,
            buffer: String::new(),
        };
        let head = events.read_until("\r\n\r\n").await?;
        ensure!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "stream refused: {head}"
        );
        ensure!(
            head.contains("text/event-stream"),
            "not an event stream: {head}"
        );
        Ok(events)
    }

    /// Reads until `separator` and returns what came before it.
    async fn read_until(&mut self, separator: &str) -> anyhow::Result<String> {
        let started = Instant::now();
        loop {
            if let Some(index) = self.buffer.find(separator) {
                let part = self.buffer[..index].to_owned();
                self.buffer.drain(..index + separator.len());
                return Ok(part);
            }
            let left = DEADLINE.saturating_sub(started.elapsed());
            let mut chunk = [0_u8; 8192];
            let read = tokio::time::timeout(left, self.stream.read(&mut chunk))
                .await
                .context("timed out reading the event stream")??;
            ensure!(read > 0, "the event stream ended");
            self.buffer.push_str(std::str::from_utf8(&chunk[..read])?);
        }
    }

    /// The next event that has data (keep-alive comments are skipped).
    async fn next(&mut self) -> anyhow::Result<ServerEvent> {
        loop {
            let block = self.read_until("\n\n").await?;
            let mut event = "message".to_owned();
            let mut id = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    event = value.trim().to_owned();
                } else if let Some(value) = line.strip_prefix("id:") {
                    id = Some(value.trim().parse()?);
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.strip_prefix(' ').unwrap_or(value));
                }
            }
            if !data.is_empty() {
                return Ok(ServerEvent {
                    event,
                    id,
                    data: serde_json::from_str(&data)?,
                });
            }
        }
    }

    /// The next `report` event, skipping feed and lag events.
    async fn next_report(&mut self) -> anyhow::Result<ServerEvent> {
        loop {
            let event = self.next().await?;
            if event.event == "report" {
                return Ok(event);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_carries_log_positions_and_resumes_after_the_last_event_id()
-> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let up = start_up(directory.path())?;
    let lines = baseline();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    append(&up, &lines).await?;
    let folded = lines.len() as u64;
    let auditor = token("all", Role::Auditor)?;

    // A fresh stream gets the report at once, its id the log position, and
    // the recent feed: items name the pseudonym and never the author.
    let mut fresh =
        EventStream::open(&up.http_address, "/api/stream?scope=all", &auditor, None).await?;
    let mut current_report = None;
    let mut feed_item = None;
    while current_report.is_none() || feed_item.is_none() {
        let event = fresh.next().await?;
        match event.event.as_str() {
            "report" if event.id == Some(folded) => current_report = Some(event),
            "feed" => feed_item = Some(event),
            _ => {}
        }
    }
    let (report, feed) = (
        current_report.context("no report")?,
        feed_item.context("no feed item")?,
    );
    ensure!(report.data["report"]["scopes"]["all"]["patients"] == 2);
    ensure!(report.data["position"] == folded);
    ensure!(
        feed.data["item"]["patient"].is_string(),
        "feed item without a pseudonym: {feed:?}"
    );
    ensure!(
        !feed.data.to_string().contains("admin@all"),
        "a feed item names who recorded it: {feed:?}"
    );

    // Resuming from an older position sends the current report at once.
    let mut behind = EventStream::open(
        &up.http_address,
        "/api/stream?scope=all",
        &auditor,
        Some(folded - 3),
    )
    .await?;
    ensure!(behind.next_report().await?.id == Some(folded));

    // Resuming from the current position sends no report until the log
    // moves: the first one then is past it.
    let mut resumed = EventStream::open(
        &up.http_address,
        "/api/stream?scope=all",
        &auditor,
        Some(folded),
    )
    .await?;
    append(&up, &LIVE).await?;
    let next = resumed.next_report().await?;
    let id = next.id.context("a report without an id")?;
    ensure!(id > folded, "a resumed stream was sent position {id} again");
    ensure!(next.data["report"]["scopes"]["all"]["patients"].as_u64() >= Some(2));

    // A clinician's stream is confined to their centre.
    let clinician = token("leeds", Role::Clinician)?;
    let mut leeds = EventStream::open(
        &up.http_address,
        "/api/stream?scope=leeds",
        &clinician,
        None,
    )
    .await?;
    let report = leeds.next_report().await?;
    let scopes: Vec<&String> = report.data["report"]["scopes"]
        .as_object()
        .context("no scopes")?
        .keys()
        .collect();
    ensure!(
        scopes == ["leeds"],
        "a leeds clinician's stream has scopes {scopes:?}"
    );
    ensure!(!report.data["html"].to_string().contains("york"));
    Ok(())
}
