//! A local demo of qscale's main job, with nothing to install but the project's `.venv`:
//!
//! ```sh
//! bash scripts/demo
//! ```
//!
//! It starts moto (an SQS stand-in, from `.venv`) and the fake Kubernetes API server from the
//! tests, both on 127.0.0.1, creates a Deployment at 0 replicas and a queue, and runs the real
//! `qscale run` binary against them with the rules embedded below. Then it plays a load: a
//! burst of messages, a steady stream for a few seconds, and workers (simulated here, as fast as
//! the Deployment's replica count allows) draining the queue. A line per second shows the queue
//! depth, the replicas qscale wrote, and qscale's reason, until the Deployment is back at zero.
//! It ends by itself, with exit code 0, in well under a minute.
//!
//! `cargo run --example demo` needs the `qscale` binary built first (`cargo build --bin qscale`,
//! which `scripts/demo` does); `QSCALE_BIN` names another one.

#[path = "../tests/support/fake_kube.rs"]
mod fake_kube;
#[allow(dead_code)]
#[path = "../tests/support/moto.rs"]
mod moto;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, QueueAttributeName, SendMessageBatchRequestEntry,
};

use fake_kube::FakeKube;
use moto::Moto;

const NAMESPACE: &str = "demo";
const WORKLOAD: &str = "orders-worker";
const QUEUE: &str = "orders";

/// The demo's rules: one Deployment scaled from one SQS queue, with short intervals so that a
/// whole cycle fits in half a minute (a real rule polls every 15 s and cools down for minutes).
const RULES: &str = r#"
[[rules]]
name = "orders-worker"
target = { kind = "Deployment", name = "orders-worker" }
min_replicas = 0
max_replicas = 10
poll_interval = "1s"        # read the queue every second
cooldown = "5s"             # no scale-down until 5 s after the last scale-up; scale-down
                            # follows the highest need of the last 5 s (the scale-down window
                            # defaults to the cooldown); no step to zero until the queue has
                            # been empty for 5 s
initial_cooldown = "0s"

[[rules.triggers]]
type = "sqs"
name = "orders"
queue = "@QUEUE_URL@"
endpoint = "@ENDPOINT@"     # moto on 127.0.0.1, not AWS
target_per_replica = 10     # one replica per 10 messages: replicas = ceil(depth / 10)
timeout = "2s"
"#;

/// The load: a burst, then a steady stream; each replica handles this many messages a second.
const BURST: usize = 30;
const STREAM_PER_SECOND: usize = 10;
const STREAM_SECONDS: u64 = 7;
const MESSAGES_PER_REPLICA_PER_SECOND: f64 = 1.5;

/// The whole demo must end well within this, or it fails with the agent's log.
const DEADLINE: Duration = Duration::from_secs(75);

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("demo: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(demo()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\ndemo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn demo() -> anyhow::Result<()> {
    let qscale = qscale_binary()?;
    let moto_binary = moto_binary();
    if !moto_binary.exists() && moto_binary.components().count() > 1 {
        bail!(
            "{} is missing: run `bash scripts/demo`, which installs moto into .venv",
            moto_binary.display()
        );
    }

    println!("qscale demo: an SQS queue drives a Deployment's replicas, live, on 127.0.0.1 only\n");
    let sqs = Moto::start();
    let kube = FakeKube::start().await;
    kube.create_deployment(NAMESPACE, WORKLOAD, 0);
    let queue_url = sqs.create_queue(QUEUE).await;
    println!("  SQS (moto)           {}   queue {QUEUE}", sqs.endpoint());
    println!(
        "  Kubernetes API       {}   Deployment {NAMESPACE}/{WORKLOAD}, 0 replicas",
        kube.url()
    );

    let dir = tempfile::tempdir().context("a temporary directory")?;
    let rules = RULES
        .replace("@QUEUE_URL@", &queue_url)
        .replace("@ENDPOINT@", &sqs.endpoint());
    let rules_path = dir.path().join("rules.toml");
    std::fs::write(&rules_path, &rules).context("writing the rules")?;
    let mut agent = AgentProcess::start(&qscale, &rules_path, &kube, dir.path())?;
    println!(
        "  qscale run           {} (pid {}, metrics on 127.0.0.1:{})",
        qscale.display(),
        agent.pid(),
        agent.admin_port
    );
    println!("\nThe rule (embedded in examples/demo.rs):");
    for line in rules.lines().filter(|l| !l.trim().is_empty()) {
        println!("  | {line}");
    }
    println!(
        "\nThe load: {BURST} messages at once, then {STREAM_PER_SECOND}/s for {STREAM_SECONDS} s. \
         Each replica works off {MESSAGES_PER_REPLICA_PER_SECOND} messages/s.\n"
    );

    let outcome = play(&sqs, &kube, &queue_url, &mut agent).await;
    if outcome.is_err() {
        eprintln!("\n--- the agent's log (last 40 lines) ---");
        let log = agent.log_text();
        let lines: Vec<&str> = log.lines().collect();
        for line in &lines[lines.len().saturating_sub(40)..] {
            eprintln!("{line}");
        }
    }
    let stats = outcome?;

    let metrics = agent.scrape_metrics();
    let stopped = agent.stop()?;
    println!("\nDone in {:.0} s.", stats.elapsed.as_secs_f64());
    println!(
        "  peak: {} replicas for {} messages; back to 0 replicas {:.0} s after the queue emptied \
         (cooldown 5 s)",
        stats.peak_replicas,
        stats.peak_depth,
        stats.zero_after_empty.as_secs_f64()
    );
    let workload_writes = kube.count(|r| {
        matches!(r.method.as_str(), "PUT" | "PATCH") && r.path.ends_with(&format!("/{WORKLOAD}"))
    });
    println!(
        "  qscale wrote /scale {} times, the Deployment object itself {workload_writes} times; \
         {} Kubernetes Events",
        kube.scale_patches().len(),
        kube.events(NAMESPACE).len()
    );
    if !metrics.is_empty() {
        println!("  from its /metrics:");
        for line in metrics {
            println!("    {line}");
        }
    }
    println!("  qscale stopped on SIGTERM with {stopped}.");
    Ok(())
}

/// What the run showed, for the summary.
struct Stats {
    elapsed: Duration,
    peak_replicas: i32,
    peak_depth: i64,
    zero_after_empty: Duration,
}

/// Produces, consumes and prints until the Deployment is back at zero with an empty queue.
async fn play(
    sqs: &Moto,
    kube: &FakeKube,
    queue_url: &str,
    agent: &mut AgentProcess,
) -> anyhow::Result<Stats> {
    let client = sqs.client();
    let start = Instant::now();
    let mut sent = 0usize;
    let mut worked_off = 0f64;
    let mut last_print = None::<u64>;
    let mut last_replicas = 0;
    let mut stats = Stats {
        elapsed: Duration::ZERO,
        peak_replicas: 0,
        peak_depth: 0,
        zero_after_empty: Duration::ZERO,
    };
    let mut empty_since = None::<Instant>;
    let mut reason = String::from("-");
    let step = Duration::from_millis(250);

    println!("   time  messages                                    replicas    qscale's reason");
    loop {
        let now = start.elapsed();
        if now > DEADLINE {
            bail!("the Deployment did not return to zero within {DEADLINE:?}");
        }
        if !agent.is_running() {
            bail!("qscale exited early");
        }

        // Producers: the burst at 1 s, then the stream.
        let second = now.as_secs_f64();
        let due = if second < 1.0 {
            0
        } else {
            let streamed = ((second - 1.0).min(STREAM_SECONDS as f64) * STREAM_PER_SECOND as f64)
                .floor() as usize;
            BURST + streamed
        };
        if due > sent {
            send(&client, queue_url, due - sent).await?;
            sent = due;
        }

        // Workers: as many as the Deployment has replicas right now.
        let replicas = kube
            .replicas("Deployment", NAMESPACE, WORKLOAD)
            .unwrap_or(0);
        worked_off +=
            f64::from(replicas.max(0)) * MESSAGES_PER_REPLICA_PER_SECOND * step.as_secs_f64();
        let batch = worked_off.floor() as usize;
        if batch > 0 {
            let done = work_off(&client, queue_url, batch).await?;
            worked_off -= done as f64;
            if done < batch {
                worked_off = 0.0; // the queue is empty: idle workers do not bank capacity
            }
        }

        let depth = depth(&client, queue_url).await?;
        if let Some(latest) = agent.latest_reason() {
            reason = latest;
        }
        stats.peak_replicas = stats.peak_replicas.max(replicas);
        stats.peak_depth = stats.peak_depth.max(depth);
        let finished_sending = sent >= BURST + STREAM_PER_SECOND * STREAM_SECONDS as usize;
        if finished_sending && depth == 0 {
            empty_since.get_or_insert_with(Instant::now);
        } else {
            empty_since = None;
        }

        let tick = now.as_secs();
        let changed = replicas != last_replicas;
        if last_print != Some(tick) || changed {
            let change = match replicas.cmp(&last_replicas) {
                std::cmp::Ordering::Greater => format!("  ↑ {last_replicas} → {replicas}"),
                std::cmp::Ordering::Less => format!("  ↓ {last_replicas} → {replicas}"),
                std::cmp::Ordering::Equal => String::new(),
            };
            println!(
                "  {:>4.1}s  {depth:>4} {:<38} {replicas:>3} {:<10} {reason}{change}",
                now.as_secs_f64(),
                bar(depth, 3, 38, '▇'),
                bar(i64::from(replicas), 1, 10, '■'),
            );
            std::io::stdout().flush().ok();
            last_print = Some(tick);
            last_replicas = replicas;
        }

        if let Some(since) = empty_since {
            if replicas == 0 {
                stats.elapsed = start.elapsed();
                stats.zero_after_empty = since.elapsed();
                return Ok(stats);
            }
        }
        tokio::time::sleep(step).await;
    }
}

/// `value / per` blocks, at most `width` (with `…` when cut).
fn bar(value: i64, per: i64, width: usize, block: char) -> String {
    let blocks = usize::try_from((value + per - 1) / per).unwrap_or(0);
    if blocks > width {
        let mut text: String = std::iter::repeat_n(block, width - 1).collect();
        text.push('…');
        text
    } else {
        std::iter::repeat_n(block, blocks).collect()
    }
}

async fn send(client: &aws_sdk_sqs::Client, queue_url: &str, count: usize) -> anyhow::Result<()> {
    let mut left = count;
    while left > 0 {
        let n = left.min(10);
        let mut request = client.send_message_batch().queue_url(queue_url);
        for i in 0..n {
            let entry = SendMessageBatchRequestEntry::builder()
                .id(format!("m{i}"))
                .message_body("an order")
                .build()
                .context("a message")?;
            request = request.entries(entry);
        }
        request.send().await.context("SendMessageBatch")?;
        left -= n;
    }
    Ok(())
}

/// Receives and deletes up to `count` messages; returns how many there were.
async fn work_off(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    count: usize,
) -> anyhow::Result<usize> {
    let mut done = 0;
    while done < count {
        let want = i32::try_from((count - done).min(10)).unwrap_or(10);
        let received = client
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(want)
            .send()
            .await
            .context("ReceiveMessage")?;
        let messages = received.messages();
        if messages.is_empty() {
            break;
        }
        let mut delete = client.delete_message_batch().queue_url(queue_url);
        for (i, message) in messages.iter().enumerate() {
            let handle = message.receipt_handle().unwrap_or_default();
            let entry = DeleteMessageBatchRequestEntry::builder()
                .id(format!("d{i}"))
                .receipt_handle(handle)
                .build()
                .context("a delete entry")?;
            delete = delete.entries(entry);
        }
        delete.send().await.context("DeleteMessageBatch")?;
        done += messages.len();
    }
    Ok(done)
}

/// Visible plus in-flight messages: what qscale counts (`include_in_flight = true`).
async fn depth(client: &aws_sdk_sqs::Client, queue_url: &str) -> anyhow::Result<i64> {
    let attributes = client
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .context("GetQueueAttributes")?;
    let attributes = attributes.attributes().cloned().unwrap_or_default();
    let count = |name: QueueAttributeName| -> i64 {
        attributes
            .get(&name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(count(QueueAttributeName::ApproximateNumberOfMessages)
        + count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible))
}

/// The `qscale` binary: `$QSCALE_BIN`, else next to this example's directory (target/debug).
fn qscale_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("QSCALE_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("the demo's own path")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the demo binary is not in target/<profile>/examples")?;
    let binary = profile_dir.join(format!("qscale{}", std::env::consts::EXE_SUFFIX));
    if !binary.exists() {
        bail!(
            "{} is missing: build it first with `cargo build --bin qscale` (`bash scripts/demo` \
             does both)",
            binary.display()
        );
    }
    Ok(binary)
}

/// Where the moto harness looks for moto_server (`QSCALE_TEST_MOTO`, then `.venv`, then PATH).
fn moto_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("QSCALE_TEST_MOTO") {
        return PathBuf::from(path);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("moto_server")
    }
}

/// The real `qscale run`, with its log in a file.
struct AgentProcess {
    child: Child,
    admin_port: u16,
    log_path: PathBuf,
    /// How far the log has been read for reasons.
    log_offset: u64,
}

impl AgentProcess {
    fn start(qscale: &Path, rules: &Path, kube: &FakeKube, dir: &Path) -> anyhow::Result<Self> {
        let kubeconfig = kube.write_kubeconfig(dir, NAMESPACE);
        let log_path = dir.join("qscale.log");
        let log = std::fs::File::create(&log_path).context("the agent's log file")?;
        let admin_port = moto::free_port();
        let child = Command::new(qscale)
            .arg("run")
            .arg("--config")
            .arg(rules)
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{admin_port}"))
            .args(["--log-format", "json"])
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "qscale=debug,info")
            // Static test credentials for moto, and no instance metadata: nothing leaves
            // 127.0.0.1.
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", moto::REGION)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ROLE_ARN")
            .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
            .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
            .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
            .env_remove("QSCALE_CONFIG")
            .env_remove("QSCALE_CONFIG_MAP")
            .env_remove("QSCALE_NAMESPACE")
            .env_remove("QSCALE_LEADER_ELECT")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("the agent's log file")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", qscale.display()))?;
        Ok(AgentProcess {
            child,
            admin_port,
            log_path,
            log_offset: 0,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The reason of the last decision logged since the previous call, if any.
    fn latest_reason(&mut self) -> Option<String> {
        let mut file = std::fs::File::open(&self.log_path).ok()?;
        file.seek(SeekFrom::Start(self.log_offset)).ok()?;
        let mut reader = BufReader::new(file);
        let mut latest = None;
        let mut line = String::new();
        while reader.read_line(&mut line).ok()? > 0 {
            if !line.ends_with('\n') {
                break; // a line still being written: read it next time
            }
            self.log_offset += line.len() as u64;
            if let Some(reason) = decision_reason(&line) {
                latest = Some(reason);
            }
            line.clear();
        }
        latest
    }

    /// A few of qscale's own metrics, from its admin server.
    fn scrape_metrics(&self) -> Vec<String> {
        let Some(body) = http_get(self.admin_port, "/metrics") else {
            return Vec::new();
        };
        let wanted = ["qscale_scale_events_total{", "qscale_trigger_value{"];
        let lines: BTreeSet<&str> = body
            .lines()
            .filter(|line| wanted.iter().any(|prefix| line.starts_with(prefix)))
            .collect();
        lines.into_iter().map(str::to_string).collect()
    }

    /// SIGTERM, as Kubernetes stops a pod; returns how it exited.
    fn stop(&mut self) -> anyhow::Result<String> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().context("waiting for qscale")? {
                return Ok(status.to_string());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        bail!("qscale did not stop within 5 s of SIGTERM")
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The policy's reason in a JSON log line about the demo's rule (`"reason": "cooldown"`), in
/// words. Kubernetes Event reasons (`Rescaled`) are not decisions and are skipped.
fn decision_reason(line: &str) -> Option<String> {
    let record: serde_json::Value = serde_json::from_str(line).ok()?;
    if record.get("rule").and_then(|r| r.as_str()) != Some(WORKLOAD) {
        return None;
    }
    let reason = record.get("reason")?.as_str()?;
    let is_policy_reason = reason.chars().all(|c| c.is_ascii_lowercase() || c == '_');
    is_policy_reason.then(|| reason.replace('_', " "))
}

/// A minimal HTTP/1.0 GET on 127.0.0.1; the body, or None.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.to_string())
        .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_string()))
}
