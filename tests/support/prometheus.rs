//! Real Prometheus servers on 127.0.0.1 for the tests: Debian's `prometheus`, fed by
//! `prometheus-pushgateway` (scraped every second), and a SigV4 verifier (botocore) standing in
//! for Amazon Managed Prometheus.
//!
//! Each server runs under a small shell wrapper that kills it when this test process's end of
//! its stdin pipe closes, so a crashed or finished test binary never leaves one behind; `Drop`
//! closes the pipe and waits. When a binary is missing the launchers panic with what to run,
//! unless `QSCALE_SKIP_PROMETHEUS=1`, in which case they print a note and return `None`.
#![allow(dead_code)]

// Each includer has its own copy, on purpose: its own lane of ports (see ports.rs).
#[allow(clippy::duplicate_mod)]
#[path = "ports.rs"]
mod ports;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub const PROMETHEUS_BIN: &str = "/usr/bin/prometheus";
pub const PUSHGATEWAY_BIN: &str = "/usr/bin/prometheus-pushgateway";
pub const SKIP_ENV: &str = "QSCALE_SKIP_PROMETHEUS";

/// `QSCALE_TEST_PROMETHEUS` or Debian's path.
pub fn prometheus_binary() -> PathBuf {
    std::env::var_os("QSCALE_TEST_PROMETHEUS").map_or_else(|| PROMETHEUS_BIN.into(), PathBuf::from)
}

/// `QSCALE_TEST_PUSHGATEWAY` or Debian's path.
pub fn pushgateway_binary() -> PathBuf {
    std::env::var_os("QSCALE_TEST_PUSHGATEWAY")
        .map_or_else(|| PUSHGATEWAY_BIN.into(), PathBuf::from)
}

/// How long a server may take to answer `/-/ready` (2 slow cores, many tests at once).
const READY_LIMIT: Duration = Duration::from_secs(60);

/// A free port for a server a test starts (see `ports.rs`; moto's helpers use the other lane).
pub fn free_port() -> u16 {
    ports::free_port(1)
}

/// Whether a required tool is there: `true` if so, `false` (with a note) if it is missing and
/// the skip variable is set; otherwise the test fails with what to run.
pub fn tool_available(path: &Path, what: &str) -> bool {
    if path.exists() {
        return true;
    }
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        eprintln!(
            "SKIPPED: {what} ({}) is not installed and {SKIP_ENV}=1",
            path.display()
        );
        return false;
    }
    panic!(
        "{what} ({}) is not installed; run `bash .ci/run` once (it installs the Debian packages \
         prometheus and prometheus-pushgateway and the Python virtualenv .venv), or set {SKIP_ENV}=1 \
         to skip these tests",
        path.display()
    );
}

/// A child process under the stdin-watching wrapper, with its output in `log`.
struct Supervised {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl Supervised {
    fn spawn(name: &'static str, program: &Path, args: &[String], log: PathBuf) -> Supervised {
        let quoted: Vec<String> = std::iter::once(program.display().to_string())
            .chain(args.iter().cloned())
            .map(|arg| format!("'{}'", arg.replace('\'', r"'\''")))
            .collect();
        let script = format!(
            "{} >'{}' 2>&1 & m=$!; cat >/dev/null; kill $m 2>/dev/null; wait $m 2>/dev/null",
            quoted.join(" "),
            log.display()
        );
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdin = child.stdin.take();
        Supervised {
            name,
            child,
            stdin,
            log,
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Stops the server and waits for it (bounded), so its port is free afterwards.
    fn stop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop within 15 s", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn wait_ready(process: &Supervised, base: &str) {
    let client = reqwest::Client::new();
    let url = format!("{base}/-/ready");
    let deadline = Instant::now() + READY_LIMIT;
    while Instant::now() < deadline {
        let ready = client
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{} was not ready at {url} within {READY_LIMIT:?}; its log:\n{}",
        process.name,
        process.log_tail()
    );
}

/// `prometheus-pushgateway`, the source of test series.
pub struct Pushgateway {
    pub port: u16,
    process: Supervised,
    _dir: TempDir,
}

impl Pushgateway {
    pub async fn start() -> Option<Pushgateway> {
        let binary = pushgateway_binary();
        if !tool_available(&binary, "prometheus-pushgateway") {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let args = vec![
            format!("--web.listen-address=127.0.0.1:{port}"),
            // Debian's default persists to /var/lib/prometheus, which would leak series from
            // one test (and run) into the next; empty keeps them in memory only.
            "--persistence.file=".to_string(),
            "--log.level=warn".to_string(),
        ];
        let process = Supervised::spawn(
            "prometheus-pushgateway",
            &binary,
            &args,
            dir.path().join("pushgateway.log"),
        );
        let gateway = Pushgateway {
            port,
            process,
            _dir: dir,
        };
        wait_ready(&gateway.process, &gateway.url()).await;
        Some(gateway)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Replaces the group `job` (plus `labels`, e.g. `[("queue", "a")]`) with the metrics in
    /// `text` (exposition format, e.g. `"jobs_waiting 42\n"`).
    pub async fn push(&self, job: &str, labels: &[(&str, &str)], text: &str) {
        let url = self.group_url(job, labels);
        let response = reqwest::Client::new()
            .put(&url)
            .header("content-type", "text/plain; version=0.0.4")
            .body(text.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("push to {url}: {e}"));
        assert!(
            response.status().is_success(),
            "push to {url}: {}",
            response.status()
        );
    }

    /// Deletes the group: Prometheus marks its series stale at the next scrape.
    pub async fn delete(&self, job: &str, labels: &[(&str, &str)]) {
        let url = self.group_url(job, labels);
        let response = reqwest::Client::new()
            .delete(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("delete {url}: {e}"));
        assert!(
            response.status().is_success(),
            "delete {url}: {}",
            response.status()
        );
    }

    fn group_url(&self, job: &str, labels: &[(&str, &str)]) -> String {
        let mut url = format!("{}/metrics/job/{job}", self.url());
        for (name, value) in labels {
            url.push_str(&format!("/{name}/{value}"));
        }
        url
    }
}

/// Debian's `prometheus`, scraping one target every second.
pub struct Prometheus {
    pub port: u16,
    process: Supervised,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`host:port`, e.g. the pushgateway's).
    pub async fn start(target: &str) -> Option<Prometheus> {
        let binary = prometheus_binary();
        if !tool_available(&binary, "prometheus") {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: pushgateway\n    honor_labels: true\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let args = vec![
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--storage.tsdb.retention.time=1h".to_string(),
            "--log.level=warn".to_string(),
        ];
        let process = Supervised::spawn(
            "prometheus",
            &binary,
            &args,
            dir.path().join("prometheus.log"),
        );
        let prometheus = Prometheus {
            port,
            process,
            _dir: dir,
        };
        wait_ready(&prometheus.process, &prometheus.url()).await;
        Some(prometheus)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops it now (to test an outage); also done on drop.
    pub fn stop(&mut self) {
        self.process.stop();
    }
}

/// A pushgateway and a Prometheus scraping it: push a series, query it a second or two later.
pub struct PromStack {
    pub pushgateway: Pushgateway,
    pub prometheus: Prometheus,
}

impl PromStack {
    pub async fn start() -> Option<PromStack> {
        let pushgateway = Pushgateway::start().await?;
        let prometheus = Prometheus::start(&format!("127.0.0.1:{}", pushgateway.port)).await?;
        Some(PromStack {
            pushgateway,
            prometheus,
        })
    }

    /// The `server` value for a trigger.
    pub fn server(&self) -> String {
        self.prometheus.url()
    }
}

/// `tests/support/sigv4_verify.py` under the project's virtualenv: accepts only requests whose
/// SigV4 signature botocore recomputes identically, and answers them with a one-series vector
/// holding `value`; anything else gets 403.
pub struct SigV4Verifier {
    pub port: u16,
    child: Child,
    stdin: Option<ChildStdin>,
}

pub struct VerifierKeys<'a> {
    pub access_key: &'a str,
    pub secret_key: &'a str,
    pub session_token: Option<&'a str>,
    pub region: &'a str,
    pub service: &'a str,
}

impl SigV4Verifier {
    pub fn python() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python3")
    }

    pub fn start(keys: &VerifierKeys<'_>, value: f64) -> Option<SigV4Verifier> {
        let python = Self::python();
        if !tool_available(&python, "the Python virtualenv with botocore (.venv)") {
            return None;
        }
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/sigv4_verify.py");
        let port = free_port();
        let mut child = Command::new(&python)
            .arg(&script)
            .arg(port.to_string())
            .arg(keys.access_key)
            .arg(keys.secret_key)
            .arg(keys.region)
            .arg(keys.service)
            .arg(value.to_string())
            .arg(keys.session_token.unwrap_or(""))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", script.display()));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("verifier stdout");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok);
            let _ = ready_tx.send(first);
            for _ in lines {}
        });
        let verifier = SigV4Verifier { port, child, stdin };
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(line)) if line.trim() == "READY" => Some(verifier),
            other => panic!("the SigV4 verifier did not print READY: {other:?}"),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for SigV4Verifier {
    fn drop(&mut self) {
        // The script exits when its stdin closes; kill is the fallback.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
