//! What every reliability test needs: the fake API server enforcing qscale's own Role (from
//! `manifests/base/role.yaml`), the real `qscale run` binary with full control over its
//! environment, a replica recorder that samples targets every 50 ms, and metric helpers.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::rbac::v1::PolicyRule;
use tempfile::TempDir;

use crate::support::agent::http_get;
use crate::support::fake_kube::FakeKube;
use crate::support::moto;
pub use crate::support::rbac::custom_kind_rules;
use crate::support::rbac::RoleCheck;

pub const NS: &str = "work";
pub const DEPLOYMENT: &str = "Deployment";

// ---------------------------------------------------------------------------------------------
// Least privilege: the shipped Role, enforced by the fake API server
// ---------------------------------------------------------------------------------------------

/// The fake API server, enforcing the Role (plus `extra` grants).
pub struct Kube {
    pub fake: FakeKube,
    role: RoleCheck,
}

impl std::ops::Deref for Kube {
    type Target = FakeKube;
    fn deref(&self) -> &FakeKube {
        &self.fake
    }
}

/// Leader election with a short lease (4 s, renewed within 3 s), so handovers fit in a test.
pub const SHORT_LEASE: [&str; 5] = [
    "--leader-elect",
    "--lease-duration",
    "4s",
    "--renew-deadline",
    "3s",
];

impl Kube {
    pub async fn start() -> Kube {
        Self::start_with_grants(Vec::new()).await
    }

    pub async fn start_with_grants(extra: Vec<PolicyRule>) -> Kube {
        let fake = FakeKube::start().await;
        let role = RoleCheck::enforce(&fake, extra);
        Kube { fake, role }
    }

    pub fn replicas_of(&self, name: &str) -> i32 {
        self.fake.replicas(DEPLOYMENT, NS, name).unwrap_or(-1)
    }

    /// Every request qscale made was allowed by the Role, and every list/watch the Role allows
    /// only by name selected that name.
    pub fn assert_least_privilege(&self) {
        let violations = self.role.violations(&self.fake, NS);
        assert!(
            violations.is_empty(),
            "requests outside qscale's Role (manifests/base/role.yaml): {violations:#?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Rules
// ---------------------------------------------------------------------------------------------

/// A rule on one SQS queue: `min 0, max 8`, polled every second, cooldown 2 s, 5 messages per
/// replica, a 1 s trigger timeout. `rule_extra` and `trigger_extra` are TOML lines.
pub fn sqs_rule(
    name: &str,
    queue: &str,
    endpoint: &str,
    rule_extra: &str,
    trigger_extra: &str,
) -> String {
    let rule_extra = with_defaults(
        rule_extra,
        &[
            ("min_replicas", "0"),
            ("max_replicas", "8"),
            ("poll_interval", "\"1s\""),
            ("cooldown", "\"2s\""),
            ("initial_cooldown", "\"0s\""),
        ],
    );
    let trigger_extra = with_defaults(trigger_extra, &[("timeout", "\"1s\"")]);
    format!(
        r#"
[[rules]]
name = "{name}"
target = {{ kind = "Deployment", name = "{name}" }}
{rule_extra}

[[rules.triggers]]
type = "sqs"
name = "queue"
queue = "{queue}"
endpoint = "{endpoint}"
region = "{region}"
target_per_replica = 5
{trigger_extra}
"#,
        region = moto::REGION
    )
}

/// A rule on one Prometheus query, otherwise like [`sqs_rule`] (10 per replica).
pub fn prometheus_rule(name: &str, server: &str, rule_extra: &str, trigger_extra: &str) -> String {
    let rule_extra = with_defaults(
        rule_extra,
        &[
            ("min_replicas", "0"),
            ("max_replicas", "8"),
            ("poll_interval", "\"1s\""),
            ("cooldown", "\"2s\""),
            ("initial_cooldown", "\"0s\""),
        ],
    );
    let trigger_extra = with_defaults(trigger_extra, &[("timeout", "\"1s\"")]);
    format!(
        r#"
[[rules]]
name = "{name}"
target = {{ kind = "Deployment", name = "{name}" }}
{rule_extra}

[[rules.triggers]]
type = "prometheus"
name = "query"
server = "{server}"
query = "sum(jobs_waiting)"
target_per_replica = 10
{trigger_extra}
"#
    )
}

/// `extra` plus `key = value` lines for the keys it does not set.
fn with_defaults(extra: &str, defaults: &[(&str, &str)]) -> String {
    let mut lines: Vec<String> = extra
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    for (key, value) in defaults {
        let set = lines
            .iter()
            .any(|l| l.split('=').next().is_some_and(|k| k.trim() == *key));
        if !set {
            lines.push(format!("{key} = {value}"));
        }
    }
    lines.join("\n")
}

// ---------------------------------------------------------------------------------------------
// The agent process
// ---------------------------------------------------------------------------------------------

/// How to start `qscale run`.
pub struct Launch {
    /// TOML rules written to `rules.toml`; `None` for `--config-map` mode.
    pub rules: Option<String>,
    pub kubeconfig: Option<String>,
    pub args: Vec<String>,
    /// Environment on top of the AWS test credentials (which these can override).
    pub env: Vec<(String, String)>,
    pub rust_log: String,
}

impl Launch {
    pub fn rules(rules: &str) -> Launch {
        Launch {
            rules: Some(rules.to_string()),
            kubeconfig: None,
            args: Vec::new(),
            env: Vec::new(),
            rust_log: "qscale=debug,info".to_string(),
        }
    }

    pub fn args(mut self, args: &[&str]) -> Launch {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Launch {
        self.env.push((name.to_string(), value.to_string()));
        self
    }
}

/// A running `qscale run`; killed on drop.
pub struct Qscale {
    child: Option<Child>,
    _dir: TempDir,
    pub log_path: PathBuf,
    pub rules_path: PathBuf,
    pub admin_port: u16,
}

impl Qscale {
    /// Starts `qscale run --config rules.toml` against `kube` with `args`.
    pub fn start(kube: &FakeKube, rules: &str, args: &[&str]) -> Qscale {
        Self::launch(kube, Launch::rules(rules).args(args))
    }

    pub fn launch(kube: &FakeKube, launch: Launch) -> Qscale {
        let dir = tempfile::tempdir().expect("tempdir");
        let rules_path = dir.path().join("rules.toml");
        let kubeconfig = dir.path().join("kubeconfig");
        let kubeconfig_text = launch
            .kubeconfig
            .clone()
            .unwrap_or_else(|| kube.kubeconfig_yaml(NS));
        std::fs::write(&kubeconfig, kubeconfig_text).expect("write kubeconfig");
        let log_path = dir.path().join("qscale.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let admin_port = moto::free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_qscale"));
        cmd.arg("run");
        if let Some(rules) = &launch.rules {
            std::fs::write(&rules_path, rules).expect("write rules");
            cmd.arg("--config").arg(&rules_path);
        }
        cmd.arg("--metrics-addr")
            .arg(format!("127.0.0.1:{admin_port}"))
            .args(&launch.args)
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", &launch.rust_log)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", moto::REGION)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ROLE_ARN")
            .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
            .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
            .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
            .env_remove("QSCALE_CONFIG")
            .env_remove("QSCALE_CONFIG_MAP")
            .env_remove("QSCALE_NAMESPACE")
            .env_remove("POD_NAME")
            .envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        let child = cmd.spawn().expect("spawn qscale");
        Qscale {
            child: Some(child),
            _dir: dir,
            log_path,
            rules_path,
            admin_port,
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.admin_port, path)
    }

    pub fn healthz(&self) -> Option<u16> {
        self.admin_get("/healthz").map(|r| r.0)
    }

    pub fn metrics(&self) -> String {
        self.admin_get("/metrics").map(|r| r.1).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status();
    }

    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Resident memory in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> Option<u64> {
        proc_status_field(self.pid(), "VmRSS")
    }

    pub fn threads(&self) -> Option<u64> {
        proc_status_field(self.pid(), "Threads")
    }

    /// Open file descriptors (sockets included).
    pub fn open_fds(&self) -> Option<usize> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .ok()
            .map(|d| d.count())
    }

    /// Fails with the logs if the process panicked anywhere.
    pub fn assert_no_panic(&self) {
        let logs = self.logs();
        assert!(
            !logs.contains("panicked"),
            "qscale panicked:\n{}",
            tail(&logs, 80)
        );
    }

    /// The last lines of the log, for failure messages.
    pub fn tail(&self) -> String {
        tail(&self.logs(), 60)
    }
}

impl Drop for Qscale {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn proc_status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// The sum of every sample of `family` whose labels include all of `labels`
/// (e.g. `("rule", "a")`), or None if there is none.
pub fn metric(text: &str, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(family) else {
            continue;
        };
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(rest) => match rest.split_once("} ") {
                Some((labels, value)) => (labels, value),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(value) => ("", value),
                None => continue,
            },
        };
        let matches = labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
        if !matches {
            continue;
        }
        if let Some(value) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

/// `qscale_trigger_errors_total` of one rule, for any of `kinds`.
pub fn trigger_errors(text: &str, rule: &str, kinds: &[&str]) -> f64 {
    kinds
        .iter()
        .filter_map(|kind| {
            metric(
                text,
                "qscale_trigger_errors_total",
                &[("rule", rule), ("kind", kind)],
            )
        })
        .sum()
}

/// `qscale_target_errors_total` of one rule and kind.
pub fn target_errors(text: &str, rule: &str, kind: &str) -> f64 {
    metric(
        text,
        "qscale_target_errors_total",
        &[("rule", rule), ("kind", kind)],
    )
    .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------
// Replica recorder
// ---------------------------------------------------------------------------------------------

/// Samples `spec.replicas` of targets (every 50 ms unless told), keeping every change with its
/// time.
/// Every change of every target: name -> [(when, replicas)].
type Traces = Arc<Mutex<HashMap<String, Vec<(Instant, i32)>>>>;

pub struct Recorder {
    changes: Traces,
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Recorder {
    pub fn start(kube: &FakeKube, kind: &'static str, names: &[&str]) -> Recorder {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        Self::start_owned(kube.clone(), kind, names)
    }

    pub fn start_owned(kube: FakeKube, kind: &'static str, names: Vec<String>) -> Recorder {
        Self::start_every(kube, kind, names, Duration::from_millis(50))
    }

    pub fn start_every(
        kube: FakeKube,
        kind: &'static str,
        names: Vec<String>,
        period: Duration,
    ) -> Recorder {
        let changes: Traces = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let changes = changes.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let now = Instant::now();
                    let values: Vec<(String, i32)> = names
                        .iter()
                        .map(|n| (n.clone(), kube.replicas(kind, NS, n).unwrap_or(-1)))
                        .collect();
                    {
                        let mut changes = changes.lock().expect("changes");
                        for (name, value) in values {
                            let trace = changes.entry(name).or_default();
                            if trace.last().map(|(_, v)| *v) != Some(value) {
                                trace.push((now, value));
                            }
                        }
                    }
                    tokio::time::sleep(period).await;
                }
            })
        };
        Recorder {
            changes,
            stop,
            task: Some(task),
        }
    }

    /// The values `name` had between `from` and `to` (the one in force at `from` included).
    /// -1 means the object did not exist.
    pub fn values_between(&self, name: &str, from: Instant, to: Instant) -> Vec<i32> {
        let changes = self.changes.lock().expect("changes");
        let Some(trace) = changes.get(name) else {
            return Vec::new();
        };
        let mut values = Vec::new();
        let before = trace.iter().rev().find(|(at, _)| *at <= from);
        if let Some((_, v)) = before {
            values.push(*v);
        }
        values.extend(
            trace
                .iter()
                .filter(|(at, _)| *at > from && *at <= to)
                .map(|(_, v)| *v),
        );
        values
    }

    /// Every value `name` took, in order, with the time since the recorder started.
    pub fn trace(&self, name: &str) -> Vec<i32> {
        let changes = self.changes.lock().expect("changes");
        changes
            .get(name)
            .map(|t| t.iter().map(|(_, v)| *v).collect())
            .unwrap_or_default()
    }

    /// Fails unless every value `name` took (while it existed) is within `[min, max]`.
    pub fn assert_within(&self, name: &str, min: i32, max: i32) {
        let trace = self.trace(name);
        let outside: Vec<i32> = trace
            .iter()
            .copied()
            .filter(|v| *v != -1 && (*v < min || *v > max))
            .collect();
        assert!(
            outside.is_empty(),
            "{name} left [{min}, {max}]: took {outside:?} (trace {trace:?})"
        );
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Riding out a fault
// ---------------------------------------------------------------------------------------------

/// While a trigger fault lasts: the agent notices it (an error of one of `kinds` is counted),
/// then for `hold` it stays up and healthy and `name` keeps exactly `held` replicas (a failing
/// trigger is never read as zero). Returns when the fault was first seen.
pub async fn ride_out_trigger_fault(
    agent: &mut Qscale,
    kube: &Kube,
    name: &str,
    held: i32,
    kinds: &[&str],
    hold: Duration,
) {
    let before = trigger_errors(&agent.metrics(), name, kinds);
    let noticed = crate::support::eventually(Duration::from_secs(20), || {
        trigger_errors(&agent.metrics(), name, kinds) > before
    })
    .await;
    assert!(
        noticed.is_some(),
        "{name}: no trigger error of kind {kinds:?} counted\n{}\n{}",
        agent.metrics(),
        agent.tail()
    );
    let start = Instant::now();
    while start.elapsed() < hold {
        assert!(
            agent.is_running(),
            "{name}: qscale exited during the fault\n{}",
            agent.tail()
        );
        assert_eq!(
            kube.replicas_of(name),
            held,
            "{name}: a failing trigger ({kinds:?}) moved the replicas\n{}",
            agent.tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        agent.healthz(),
        Some(200),
        "{name}: /healthz during the fault"
    );
    let errors = trigger_errors(&agent.metrics(), name, kinds);
    assert!(
        errors >= before + 2.0,
        "{name}: the fault was seen on every poll, not once ({before} -> {errors} errors of {kinds:?})"
    );
}

/// Waits until `name` has `replicas`, with the agent's log on failure.
pub async fn converge(agent: &Qscale, kube: &Kube, name: &str, replicas: i32, limit: Duration) {
    let took = crate::support::eventually(limit, || kube.replicas_of(name) == replicas).await;
    assert!(
        took.is_some(),
        "{name} did not converge to {replicas} within {limit:?} (has {})\n{}",
        kube.replicas_of(name),
        agent.tail()
    );
    // Let the recorder (50 ms period) see it too, so windows that start now begin with it.
    tokio::time::sleep(Duration::from_millis(150)).await;
}

// ---------------------------------------------------------------------------------------------
// Queues driving rules
// ---------------------------------------------------------------------------------------------

/// moto with one queue per rule; each rule scales the Deployment of the same name.
pub struct Queues {
    pub moto: moto::Moto,
    urls: BTreeMap<String, String>,
}

impl Queues {
    pub async fn start(names: &[&str]) -> Queues {
        let moto = moto::Moto::start();
        let mut urls = BTreeMap::new();
        for name in names {
            urls.insert(name.to_string(), moto.create_queue(name).await);
        }
        Queues { moto, urls }
    }

    pub fn url(&self, name: &str) -> &str {
        self.urls.get(name).map(String::as_str).unwrap_or_default()
    }

    pub async fn send(&self, name: &str, count: usize) {
        self.moto.send(self.url(name), count).await;
    }

    /// Receives and deletes `count` messages.
    pub async fn drain(&self, name: &str, count: usize) {
        let handles = self.moto.receive(self.url(name), count).await;
        self.moto.delete(self.url(name), &handles).await;
    }

    /// One [`sqs_rule`] per queue, straight to moto.
    pub fn rules(&self, rule_extra: &str, trigger_extra: &str) -> String {
        self.urls
            .iter()
            .map(|(name, url)| {
                sqs_rule(name, url, &self.moto.endpoint(), rule_extra, trigger_extra)
            })
            .collect()
    }
}
