//! Benchmark of the real `qscale` agent, measured from the outside.
//!
//! For each rule count the harness starts, on 127.0.0.1 and inside this process, the fake
//! Kubernetes API server of the end-to-end tests (one Deployment per rule) and a fast SQS stub
//! (one queue per rule, or a few queues shared by all rules), then runs the agent binary as a
//! user would (`qscale run --leader-elect --log-format json`) and measures:
//!
//! - start → ready: spawn to the first 200 from `/readyz`;
//! - steady state (no rescales) over a fixed window: agent CPU (per-thread schedstat) per 1,000
//!   trigger polls, resident memory (VmRSS), SQS calls and Kubernetes API requests per minute;
//! - reaction: the depth of a sample of queues goes up; every affected rule's next tick writes
//!   `/scale`. Read from the agent's `qscale_reaction_seconds` histogram (tick start → end of the
//!   PATCH) when it is exported, and measured exactly at the stand-ins (the poll that returned
//!   the new depth arriving at the SQS stub → the PATCH arriving at the API server);
//! - peak RSS (VmHWM), then the cost of one `/metrics` scrape.
//!
//! Run it with `scripts/bench` (see BENCHMARKS.md). Under `cargo test` (no `--bench` argument)
//! it does nothing.

mod support;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use support::fake_kube::{FakeKube, FakeKubeOptions, RecordedRequest};
use support::procfs::{self, CpuSample, CpuSource};
use support::sqs_stub::SqsStub;

const NAMESPACE: &str = "bench";
/// Messages one replica handles.
const TARGET_PER_REPLICA: u64 = 10;
/// Depth at steady state, and the replicas that matches: every tick decides "no change".
const STEADY_DEPTH: u64 = 20;
const STEADY_REPLICAS: i32 = 2;
/// Depth during the reaction phase: the next tick of an affected rule scales to 5.
const BURST_DEPTH: u64 = 50;
const BURST_REPLICAS: i32 = 5;
/// Watch bookmarks from the fake API server; a real API server sends one about every minute.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);
const MIB: f64 = 1024.0;

// Targets (issue 6, item 4).
const TARGET_RULES: usize = 1000;
const TARGET_P99_REACTION: f64 = 0.050;
const TARGET_IDLE_RSS_MIB: f64 = 20.0;
const TARGET_CPU_PER_1000: f64 = 0.050;

#[derive(Debug, Clone)]
struct Options {
    rules: Vec<usize>,
    /// An extra scenario where `.0` rules share `.1` queues.
    shared: Option<(usize, usize)>,
    interval: Duration,
    steady: Duration,
    samples: usize,
    write: Option<PathBuf>,
    /// Which marked block of the `--write` file to replace.
    section: String,
    /// What the agent binary was built from, for the report (default: this checkout).
    source: Option<String>,
    agent: PathBuf,
    /// The arguments as given, for the report.
    command: String,
}

const USAGE: &str = "\
usage: cargo bench --bench agent -- [options]   (or scripts/bench [options])
  --rules LIST        rule counts, one queue per rule (default 10,100,1000,5000)
  --shared R:Q|none   one more run: R rules sharing Q queues (default 1000:10)
  --interval SECS     poll interval of every rule (default 10)
  --steady SECS       steady-state measurement window (default 30)
  --samples N         rules made to rescale in the reaction phase (default 100)
  --agent PATH        the qscale binary to run (default: the one cargo built for this bench)
  --write FILE        also write the results into FILE, between the markers
                      <!-- bench:SECTION:begin --> and <!-- bench:SECTION:end -->
  --section SECTION   which marked block --write replaces (default results)
  --source TEXT       what the agent was built from, for the report (default: this checkout's
                      commit, and whether src/ has uncommitted changes)";

fn parse_options(args: &[String]) -> anyhow::Result<Options> {
    let mut options = Options {
        rules: vec![10, 100, 1000, 5000],
        shared: Some((1000, 10)),
        interval: Duration::from_secs(10),
        steady: Duration::from_secs(30),
        samples: 100,
        write: None,
        section: "results".to_string(),
        source: None,
        agent: PathBuf::from(env!("CARGO_BIN_EXE_qscale")),
        command: String::new(),
    };
    let mut shown = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--bench" {
            continue;
        }
        let mut value = || -> anyhow::Result<&String> {
            args.next()
                .with_context(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--rules" => {
                let list = value()?;
                shown.push(format!("--rules {list}"));
                options.rules = list
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| s.trim().parse().context("--rules takes numbers"))
                    .collect::<anyhow::Result<_>>()?;
            }
            "--shared" => {
                let spec = value()?;
                shown.push(format!("--shared {spec}"));
                options.shared = match spec.as_str() {
                    "none" => None,
                    spec => {
                        let (rules, queues) = spec
                            .split_once(':')
                            .context("--shared takes RULES:QUEUES or none")?;
                        Some((rules.parse()?, queues.parse()?))
                    }
                };
            }
            "--interval" => {
                let secs = value()?;
                shown.push(format!("--interval {secs}"));
                options.interval = Duration::from_secs(secs.parse()?);
            }
            "--steady" => {
                let secs = value()?;
                shown.push(format!("--steady {secs}"));
                options.steady = Duration::from_secs(secs.parse()?);
            }
            "--samples" => {
                let n = value()?;
                shown.push(format!("--samples {n}"));
                options.samples = n.parse()?;
            }
            "--agent" => options.agent = PathBuf::from(value()?),
            "--write" => options.write = Some(PathBuf::from(value()?)),
            "--section" => options.section = value()?.clone(),
            "--source" => options.source = Some(value()?.clone()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if options.interval.is_zero() || options.steady.is_zero() || options.samples == 0 {
        bail!("--interval, --steady and --samples must be above zero");
    }
    if let Some((rules, queues)) = options.shared {
        if queues == 0 || rules < queues {
            bail!("--shared R:Q needs 0 < Q <= R");
        }
    }
    options.command = if shown.is_empty() {
        "scripts/bench".to_string()
    } else {
        format!("scripts/bench {}", shown.join(" "))
    };
    Ok(options)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench targets too; this one takes minutes.
        println!("benches/agent.rs is a benchmark: run it with scripts/bench");
        return Ok(());
    }
    let options = parse_options(&args)?;
    if !options.agent.is_file() {
        bail!("no agent binary at {}", options.agent.display());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(run(options))
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    rules: usize,
    queues: usize,
}

impl Scenario {
    fn shared(&self) -> bool {
        self.queues < self.rules
    }
}

async fn run(options: Options) -> anyhow::Result<()> {
    let machine = procfs::machine();
    let mut scenarios: Vec<Scenario> = options
        .rules
        .iter()
        .map(|&rules| Scenario {
            rules,
            queues: rules,
        })
        .collect();
    if let Some((rules, queues)) = options.shared {
        scenarios.push(Scenario { rules, queues });
    }
    let begun = Instant::now();
    let mut rows = Vec::new();
    for scenario in scenarios {
        let row = run_scenario(&options, scenario)
            .await
            .with_context(|| format!("{} rules on {} queues", scenario.rules, scenario.queues))?;
        rows.push(row);
    }
    let report = render(&options, &machine, &rows, begun.elapsed());
    println!("{report}");
    if let Some(path) = &options.write {
        write_results(path, &options.section, &report)?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// One scenario
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Quantiles {
    p50: f64,
    p99: f64,
    count: u64,
    /// A quantile fell in the +Inf bucket: `p99` is only a lower bound.
    open_ended: bool,
    /// The histogram's bucket bounds, in seconds (empty for exact samples).
    bounds: Vec<f64>,
}

#[derive(Debug)]
struct Row {
    scenario: Scenario,
    start_to_ready: Duration,
    start_to_all_polled: Duration,
    /// `None`: the agent does not export `qscale_reaction_seconds`.
    reaction_histogram: Option<Quantiles>,
    /// Poll answered → PATCH received, one per rescaled rule; `None` with shared queues.
    reaction_exact: Option<Quantiles>,
    rescaled: usize,
    expected_rescales: usize,
    window: Duration,
    polls: f64,
    polls_measured: bool,
    sqs_calls: u64,
    agent_cpu: f64,
    cpu_source: CpuSource,
    harness_cpu: f64,
    /// Busy CPU time of everything else on the machine during the window.
    others_cpu: f64,
    idle_rss_kib: u64,
    idle_anon_kib: u64,
    peak_rss_kib: u64,
    peak_after_scrape_kib: u64,
    other_requests: Vec<String>,
    lease_requests: usize,
    watches_in_window: usize,
    watches_total: usize,
    startup_requests: usize,
    metrics_bytes: usize,
    scrape_cpu: f64,
    scrape_time: Duration,
    threads: usize,
    fds: (usize, usize),
    warnings: Vec<String>,
    stub_rejected: u64,
}

async fn run_scenario(options: &Options, scenario: Scenario) -> anyhow::Result<Row> {
    let Scenario { rules, queues } = scenario;
    eprintln!("== {rules} rules on {queues} queues");
    let kube = FakeKube::start_with(FakeKubeOptions {
        bookmark_interval: BOOKMARK_INTERVAL,
        ..FakeKubeOptions::default()
    })
    .await;
    for i in 0..rules {
        kube.create_deployment(NAMESPACE, &deployment(i), STEADY_REPLICAS);
    }
    let stub = SqsStub::start(queues, STEADY_DEPTH).await?;
    let dir = tempfile::tempdir()?;
    let rules_path = dir.path().join("rules.toml");
    std::fs::write(&rules_path, rules_file(&stub, scenario, options.interval))?;
    let kubeconfig = kube.write_kubeconfig(dir.path(), NAMESPACE);
    let admin_port = free_port()?;
    let log_path = dir.path().join("agent.log");

    // --- start → ready, and → every queue polled once
    let started = Instant::now();
    let mut agent = AgentProcess::spawn(
        &options.agent,
        &rules_path,
        &kubeconfig,
        admin_port,
        &log_path,
        dir.path(),
    )?;
    let pid = agent.pid();
    let start_limit = Duration::from_secs(60) + options.interval;
    let start_to_ready = loop {
        if matches!(http_get(admin_port, "/readyz").await, Some((200, _))) {
            break started.elapsed();
        }
        agent.check_alive(&log_path)?;
        if started.elapsed() > start_limit {
            bail!("not ready after {start_limit:?}\n{}", tail(&log_path));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let start_to_all_polled = loop {
        if stub.queues_polled() == queues {
            break started.elapsed();
        }
        agent.check_alive(&log_path)?;
        if started.elapsed() > start_limit {
            bail!(
                "{} of {queues} queues polled after {start_limit:?}\n{}",
                stub.queues_polled(),
                tail(&log_path)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    eprintln!(
        "   ready after {start_to_ready:.2?}, every queue polled after {start_to_all_polled:.2?}"
    );

    // --- warm-up: every rule has ticked and the first state write has gone out
    tokio::time::sleep(options.interval + Duration::from_secs(2)).await;
    agent.check_alive(&log_path)?;

    // --- steady state
    eprintln!("   steady state for {:?}", options.steady);
    let calls_before = stub.calls();
    let harness_before = procfs::own_cpu_seconds();
    let machine_before = procfs::machine_busy_seconds();
    let cpu_before = CpuSample::read(pid)?;
    let window_start = Instant::now();
    let mut rss_samples = Vec::new();
    let mut anon_samples = Vec::new();
    while window_start.elapsed() < options.steady {
        let memory = procfs::memory_kib(pid)?;
        rss_samples.push(memory.rss);
        anon_samples.push(memory.anon);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let cpu_after = CpuSample::read(pid)?;
    let window_end = Instant::now();
    let calls_after = stub.calls();
    let harness_after = procfs::own_cpu_seconds();
    let machine_after = procfs::machine_busy_seconds();
    let window = window_end - window_start;
    let (agent_cpu, cpu_source) = cpu_after.since(&cpu_before);
    let sqs_calls = calls_after - calls_before;
    let (polls, polls_measured) = if scenario.shared() {
        // Each rule ticks exactly once per interval; shared readings hide most of those polls
        // from the stub, so count them from the schedule.
        (
            rules as f64 * window.as_secs_f64() / options.interval.as_secs_f64(),
            false,
        )
    } else {
        (sqs_calls as f64, true)
    };
    let idle_rss_kib = median(&mut rss_samples);
    let idle_anon_kib = median(&mut anon_samples);

    let requests = kube.requests();
    let in_window = |r: &&RecordedRequest| r.at >= window_start && r.at < window_end;
    let is_lease = |r: &RecordedRequest| r.path.contains("/leases");
    let other_requests: Vec<String> = requests
        .iter()
        .filter(in_window)
        .filter(|r| !r.is_watch && !is_lease(r))
        .map(|r| format!("{} {} → {}", r.method, r.path, r.status))
        .collect();
    let lease_requests = requests
        .iter()
        .filter(in_window)
        .filter(|r| !r.is_watch && is_lease(r))
        .count();
    let watches_in_window = requests
        .iter()
        .filter(in_window)
        .filter(|r| r.is_watch)
        .count();
    let startup_requests = requests.iter().filter(|r| r.at < window_start).count();

    // --- reaction
    let affected = affected_rules(scenario, options.samples);
    let changed: Vec<usize> = {
        let mut q: Vec<usize> = affected.iter().map(|&i| i % queues).collect();
        q.sort_unstable();
        q.dedup();
        q
    };
    eprintln!(
        "   reaction: {} queues deeper, {} rules to rescale",
        changed.len(),
        affected.len()
    );
    let reaction_start = Instant::now();
    for &queue in &changed {
        stub.set_depth(queue, BURST_DEPTH);
    }
    let reaction_limit = options.interval * 2 + Duration::from_secs(10);
    loop {
        let done = affected.iter().all(|&i| {
            kube.replicas("Deployment", NAMESPACE, &deployment(i)) == Some(BURST_REPLICAS)
        });
        if done {
            break;
        }
        agent.check_alive(&log_path)?;
        if reaction_start.elapsed() > reaction_limit {
            eprintln!("   warning: not every affected rule rescaled within {reaction_limit:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the last PATCH responses reach the agent and its histogram.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let patches: Vec<RecordedRequest> = kube
        .scale_patches()
        .into_iter()
        .filter(|r| r.status == 200 && r.at >= reaction_start)
        .collect();
    let reaction_exact = if scenario.shared() {
        None
    } else {
        let mut latencies: Vec<f64> = patches
            .iter()
            .filter_map(|patch| {
                let index = rule_of_scale_path(&patch.path)?;
                let served = stub.served_after_change(index % queues)?;
                Some(patch.at.checked_duration_since(served)?.as_secs_f64())
            })
            .collect();
        exact_quantiles(&mut latencies)
    };
    let peak_rss_kib = procfs::memory_kib(pid)?.peak;

    // --- one /metrics scrape: the reaction histogram, and what a scrape costs
    let cpu_before_scrape = CpuSample::read(pid)?;
    let scrape_started = Instant::now();
    let metrics = http_get(admin_port, "/metrics")
        .await
        .map(|(_, body)| body)
        .unwrap_or_default();
    let scrape_time = scrape_started.elapsed();
    let (scrape_cpu, _) = CpuSample::read(pid)?.since(&cpu_before_scrape);
    let peak_after_scrape_kib = procfs::memory_kib(pid)?.peak;
    let reaction_histogram = histogram_quantiles(&metrics, "qscale_reaction_seconds");
    let threads = procfs::thread_count(pid);
    let fds = procfs::open_fds(pid);
    let watches_total = kube.count(|r| r.is_watch);
    agent.stop();
    let warnings = warnings(&log_path);
    let row = Row {
        scenario,
        start_to_ready,
        start_to_all_polled,
        reaction_histogram,
        reaction_exact,
        rescaled: patches.len(),
        expected_rescales: affected.len(),
        window,
        polls,
        polls_measured,
        sqs_calls,
        agent_cpu,
        cpu_source,
        harness_cpu: harness_after - harness_before,
        others_cpu: (machine_after - machine_before - agent_cpu - (harness_after - harness_before))
            .max(0.0),
        idle_rss_kib,
        idle_anon_kib,
        peak_rss_kib,
        peak_after_scrape_kib,
        other_requests,
        lease_requests,
        watches_in_window,
        watches_total,
        startup_requests,
        metrics_bytes: metrics.len(),
        scrape_cpu,
        scrape_time,
        threads,
        fds,
        warnings,
        stub_rejected: stub.rejected(),
    };
    eprintln!(
        "   CPU {:.1} ms per 1,000 polls, idle RSS {:.1} MiB, peak {:.1} MiB, {} rescales",
        row.cpu_per_1000() * 1000.0,
        row.idle_rss_kib as f64 / MIB,
        row.peak_rss_kib as f64 / MIB,
        row.rescaled
    );
    Ok(row)
}

impl Row {
    fn cpu_per_1000(&self) -> f64 {
        if self.polls > 0.0 {
            self.agent_cpu / self.polls * 1000.0
        } else {
            f64::NAN
        }
    }

    fn per_minute(&self, count: f64) -> f64 {
        count * 60.0 / self.window.as_secs_f64()
    }

    /// The reaction p99 the targets are judged on: the agent's own histogram when exported,
    /// else the exact figure from the stand-ins.
    fn p99_reaction(&self) -> Option<f64> {
        self.reaction_histogram
            .as_ref()
            .or(self.reaction_exact.as_ref())
            .filter(|q| q.count > 0)
            .map(|q| q.p99)
    }
}

fn median(samples: &mut [u64]) -> u64 {
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().unwrap_or(0)
}

fn deployment(i: usize) -> String {
    format!("w-{i}")
}

fn rule_of_scale_path(path: &str) -> Option<usize> {
    let name = path.strip_suffix("/scale")?.rsplit('/').next()?;
    name.strip_prefix("w-")?.parse().ok()
}

/// The rules that will rescale: `samples` of them spread over the range; with shared queues,
/// every rule of the queues those samples read (whole queues change).
fn affected_rules(scenario: Scenario, samples: usize) -> Vec<usize> {
    let Scenario { rules, queues } = scenario;
    if scenario.shared() {
        let per_queue = rules.div_ceil(queues);
        let changed = samples.div_ceil(per_queue).clamp(1, queues);
        (0..rules).filter(|i| i % queues < changed).collect()
    } else {
        let samples = samples.min(rules);
        (0..samples).map(|k| k * rules / samples).collect()
    }
}

fn rules_file(stub: &SqsStub, scenario: Scenario, interval: Duration) -> String {
    let mut text = format!(
        "[defaults]\npoll_interval = \"{}s\"\nmax_replicas = 50\ncooldown = \"5m\"\n",
        interval.as_secs()
    );
    for i in 0..scenario.rules {
        let _ = write!(
            text,
            "\n[[rules]]\nname = \"r-{i}\"\n\
             target = {{ kind = \"Deployment\", name = \"{}\" }}\n\
             [[rules.triggers]]\ntype = \"sqs\"\nqueue = \"{}\"\nendpoint = \"{}\"\n\
             target_per_replica = {TARGET_PER_REPLICA}\n",
            deployment(i),
            stub.queue_url(i % scenario.queues),
            stub.endpoint(),
        );
    }
    text
}

// ---------------------------------------------------------------------------------------------
// The agent process
// ---------------------------------------------------------------------------------------------

struct AgentProcess {
    child: Option<Child>,
}

impl AgentProcess {
    fn spawn(
        binary: &Path,
        rules: &Path,
        kubeconfig: &Path,
        admin_port: u16,
        log: &Path,
        home: &Path,
    ) -> anyhow::Result<AgentProcess> {
        let log = std::fs::File::create(log)?;
        let child = Command::new(binary)
            .arg("run")
            .arg("--config")
            .arg(rules)
            .arg("--namespace")
            .arg(NAMESPACE)
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{admin_port}"))
            .args(["--leader-elect", "--identity", "bench"])
            .args(["--log-format", "json", "--log-level", "info"])
            // A clean environment: static dummy credentials, an empty home (no AWS profile),
            // no instance metadata, so nothing leaves 127.0.0.1.
            .env_clear()
            .env("KUBECONFIG", kubeconfig)
            .env("AWS_ACCESS_KEY_ID", "bench")
            .env("AWS_SECRET_ACCESS_KEY", "bench")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("HOME", home)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", binary.display()))?;
        Ok(AgentProcess { child: Some(child) })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn check_alive(&mut self, log: &Path) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                bail!("the agent exited ({status})\n{}", tail(log));
            }
        }
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Warnings and errors the agent logged, each message once with its count.
fn warnings(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut counts: Vec<(String, usize)> = Vec::new();
    for line in text.lines() {
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let level = entry["level"].as_str().unwrap_or_default();
        if level != "WARN" && level != "ERROR" {
            continue;
        }
        let message = format!("{level} {}", entry["message"].as_str().unwrap_or_default());
        match counts.iter_mut().find(|(m, _)| *m == message) {
            Some((_, n)) => *n += 1,
            None => counts.push((message, 1)),
        }
    }
    counts
        .into_iter()
        .map(|(message, n)| format!("{n} × {message}"))
        .collect()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A plain HTTP/1.0 GET on 127.0.0.1: (status, body), or None if nothing answers.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        let (_, body) = response.split_once("\r\n\r\n")?;
        Some((status, body.to_string()))
    })
    .await
    .ok()
    .flatten()
}

// ---------------------------------------------------------------------------------------------
// Quantiles
// ---------------------------------------------------------------------------------------------

/// Nearest-rank quantiles of exact samples.
fn exact_quantiles(samples: &mut [f64]) -> Option<Quantiles> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    let rank = |q: f64| {
        let index = (q * samples.len() as f64).ceil() as usize;
        samples[index.clamp(1, samples.len()) - 1]
    };
    Some(Quantiles {
        p50: rank(0.50),
        p99: rank(0.99),
        count: samples.len() as u64,
        open_ended: false,
        bounds: Vec::new(),
    })
}

/// p50 and p99 of a Prometheus histogram in the text exposition, interpolated linearly within
/// buckets as `histogram_quantile` does. `None` if the histogram is not exported.
fn histogram_quantiles(exposition: &str, name: &str) -> Option<Quantiles> {
    let prefix = format!("{name}_bucket{{");
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let Some(bound) = labels
            .split(',')
            .find_map(|l| l.strip_prefix("le=\""))
            .map(|b| b.trim_end_matches('"'))
        else {
            continue;
        };
        let bound = if bound == "+Inf" {
            f64::INFINITY
        } else {
            bound.parse().ok()?
        };
        let count = value.split_whitespace().next()?.parse::<f64>().ok()? as u64;
        buckets.push((bound, count));
    }
    if buckets.is_empty() {
        return None;
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0, |b| b.1);
    let mut quantiles = Quantiles {
        count: total,
        bounds: buckets
            .iter()
            .map(|b| b.0)
            .filter(|b| b.is_finite())
            .collect(),
        ..Quantiles::default()
    };
    if total == 0 {
        return Some(quantiles);
    }
    let mut quantile = |q: f64| -> f64 {
        let rank = q * total as f64;
        let mut lower = 0.0;
        let mut below = 0u64;
        for &(bound, cumulative) in &buckets {
            if cumulative as f64 >= rank {
                if bound.is_infinite() {
                    quantiles.open_ended = true;
                    return lower;
                }
                let inside = (cumulative - below) as f64;
                let fraction = if inside > 0.0 {
                    (rank - below as f64) / inside
                } else {
                    1.0
                };
                return lower + (bound - lower) * fraction;
            }
            lower = bound;
            below = cumulative;
        }
        lower
    };
    let p50 = quantile(0.50);
    let p99 = quantile(0.99);
    quantiles.p50 = p50;
    quantiles.p99 = p99;
    Some(quantiles)
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

fn ms(seconds: f64) -> String {
    if seconds.is_nan() {
        "–".into()
    } else if seconds < 0.01 {
        format!("{:.2} ms", seconds * 1000.0)
    } else {
        format!("{:.1} ms", seconds * 1000.0)
    }
}

fn secs(duration: Duration) -> String {
    format!("{:.2} s", duration.as_secs_f64())
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / MIB)
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn quantile_cell(q: Option<&Quantiles>, missing: &str) -> String {
    match q {
        None => missing.to_string(),
        Some(q) if q.count == 0 => "no samples".to_string(),
        Some(q) => format!(
            "{} / {}{}",
            ms(q.p50),
            if q.open_ended { "> " } else { "" },
            ms(q.p99)
        ),
    }
}

fn scenario_label(s: Scenario) -> String {
    if s.shared() {
        format!("{} (on {} queues)", thousands(s.rules), thousands(s.queues))
    } else {
        thousands(s.rules)
    }
}

fn render(options: &Options, machine: &[(String, String)], rows: &[Row], took: Duration) -> String {
    let mut out = String::new();
    let o = &mut out;
    let _ = writeln!(o, "{}", marker(&options.section, "begin"));
    let agent_size = std::fs::metadata(&options.agent).map_or(0, |m| m.len());
    let source = options.source.clone().unwrap_or_else(checkout);
    let _ = writeln!(
        o,
        "_Generated by `{}` (agent binary: `{}`, {:.1} MiB, built from {source}); the whole run \
         took {:.0} s. \
         Poll interval {} s for every rule, steady-state window {} s, {} rules made to rescale \
         per run._\n",
        options.command,
        display_agent(&options.agent),
        agent_size as f64 / MIB / MIB,
        took.as_secs_f64(),
        options.interval.as_secs(),
        options.steady.as_secs(),
        options.samples,
    );
    let _ = writeln!(o, "**Machine**\n\n| | |\n| --- | --- |");
    for (key, value) in machine {
        let _ = writeln!(o, "| {key} | {value} |");
    }
    let _ = writeln!(
        o,
        "\n**Results**\n\n\
         | rules | start → ready | reaction p50 / p99 (histogram) | poll → PATCH p50 / p99 (exact) \
         | CPU per 1,000 polls | idle RSS (anonymous) | peak RSS | SQS calls / min | API requests / min \
         (not watch, not lease) | lease requests / min | watch requests |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let buckets = rows
        .iter()
        .find_map(|r| r.reaction_histogram.as_ref())
        .map_or("not exported".to_string(), |q| {
            let bounds: Vec<String> = q.bounds.iter().map(|b| format!("{}", b * 1000.0)).collect();
            format!("{} ms", bounds.join(", "))
        });
    for row in rows {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {}{} | {} ({}) | {} | {:.0} | {:.0} | {:.1} | {} ({} in window) |",
            scenario_label(row.scenario),
            secs(row.start_to_ready),
            quantile_cell(row.reaction_histogram.as_ref(), "not exported"),
            quantile_cell(
                row.reaction_exact.as_ref(),
                if row.scenario.shared() {
                    "n/a (shared)"
                } else {
                    "no samples"
                }
            ),
            ms(row.cpu_per_1000()),
            if row.polls_measured { "" } else { " ¹" },
            mib(row.idle_rss_kib),
            mib(row.idle_anon_kib),
            mib(row.peak_rss_kib),
            row.per_minute(row.sqs_calls as f64),
            row.per_minute(row.other_requests.len() as f64),
            row.per_minute(row.lease_requests as f64),
            row.watches_total,
            row.watches_in_window,
        );
    }
    let _ = writeln!(
        o,
        "\n- **reaction (histogram)**: the agent's `qscale_reaction_seconds` (tick start → end of \
         the `/scale` PATCH), p50/p99 interpolated linearly within its buckets ({buckets}) as \
         `histogram_quantile` does; \"not exported\" means `/metrics` has no such series.\n\
         - **poll → PATCH (exact)**: per rescaled rule, from the `GetQueueAttributes` call that \
         returned the new depth arriving at the SQS stub to the `/scale` PATCH arriving at the \
         API server, both timed in the harness process. It leaves out the few hundred \
         microseconds from the tick to the poll request and the PATCH response; not defined when \
         rules share a queue (their ticks reuse one reading).\n\
         - **CPU per 1,000 polls**: agent CPU (user + system, all threads) over the steady \
         window divided by the trigger polls in it; everything the agent does in that window \
         counts (lease renewals, timers, logging). ¹ With shared queues, polls are the rules' \
         reads (rules × window ÷ interval), of which the SQS calls are a fraction.\n\
         - **idle RSS**: median VmRSS over the steady window (polling, nothing to rescale), and \
         in brackets its anonymous part (RssAnon: heap and stacks; the rest is the binary's code \
         and libraries mapped from the page cache); \
         **peak RSS**: VmHWM after start, steady state and the reaction, before any `/metrics` \
         scrape (see below).\n\
         - **API requests / min**: requests at the fake API server during the steady window, \
         other than watches and Lease operations; **watch requests**: watch calls since start."
    );

    // Targets
    let _ = writeln!(o, "\n**Targets**\n");
    let at_target = rows
        .iter()
        .find(|r| r.scenario.rules == TARGET_RULES && !r.scenario.shared());
    match at_target {
        None => {
            let _ = writeln!(
                o,
                "- no unshared {TARGET_RULES}-rule run: targets not judged"
            );
        }
        Some(row) => {
            let verdict = |met: bool| if met { "**met**" } else { "**missed**" };
            match row.p99_reaction() {
                Some(p99) => {
                    let source = if row.reaction_histogram.as_ref().is_some_and(|q| q.count > 0) {
                        "histogram"
                    } else {
                        "exact poll → PATCH, the histogram not being exported"
                    };
                    let _ = writeln!(
                        o,
                        "- p99 reaction ≤ {} at {} rules: {} ({}, {source}; {:+.0} % of the target)",
                        ms(TARGET_P99_REACTION),
                        thousands(TARGET_RULES),
                        verdict(p99 <= TARGET_P99_REACTION),
                        ms(p99),
                        (p99 / TARGET_P99_REACTION - 1.0) * 100.0,
                    );
                }
                None => {
                    let _ = writeln!(o, "- p99 reaction: no rescale observed; not judged");
                }
            }
            let idle = row.idle_rss_kib as f64 / MIB;
            let _ = writeln!(
                o,
                "- idle RSS ≤ {TARGET_IDLE_RSS_MIB:.0} MiB at {} rules: {} (VmRSS {}, {:+.0} % of \
                 the target; of which anonymous {})",
                thousands(TARGET_RULES),
                verdict(idle <= TARGET_IDLE_RSS_MIB),
                mib(row.idle_rss_kib),
                (idle / TARGET_IDLE_RSS_MIB - 1.0) * 100.0,
                mib(row.idle_anon_kib),
            );
            let cpu = row.cpu_per_1000();
            let _ = writeln!(
                o,
                "- CPU ≤ {} per 1,000 polls at {} rules: {} ({}; {:+.0} % of the target)",
                ms(TARGET_CPU_PER_1000),
                thousands(TARGET_RULES),
                verdict(cpu <= TARGET_CPU_PER_1000),
                ms(cpu),
                (cpu / TARGET_CPU_PER_1000 - 1.0) * 100.0,
            );
        }
    }
    let cpu_rows: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{}: {}",
                scenario_label(r.scenario),
                if r.cpu_per_1000() <= TARGET_CPU_PER_1000 {
                    "met"
                } else {
                    "missed"
                }
            )
        })
        .collect();
    let _ = writeln!(
        o,
        "- CPU ≤ {} per 1,000 polls, every run: {}",
        ms(TARGET_CPU_PER_1000),
        cpu_rows.join("; ")
    );
    let noisy: Vec<&Row> = rows
        .iter()
        .filter(|r| !r.other_requests.is_empty())
        .collect();
    let _ = writeln!(
        o,
        "- 0 steady-state API requests beyond watches and lease renewals: {}",
        if noisy.is_empty() {
            "**met** in every run".to_string()
        } else {
            format!(
                "**missed** in {} of {} runs (listed below)",
                noisy.len(),
                rows.len()
            )
        }
    );

    // Details
    let _ = writeln!(
        o,
        "\n**Details**\n\n\
         | rules | start → every queue polled | polls in window | SQS calls in window | agent CPU \
         | harness CPU (stand-ins) | other processes' CPU | rescales seen | threads | fds (sockets) | API requests \
         before the window | `/metrics` size | one scrape: agent CPU, time | VmHWM after the \
         scrape |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for row in rows {
        let window = row.window.as_secs_f64();
        let _ = writeln!(
            o,
            "| {} | {} | {:.0} | {} | {:.2} % of a CPU{} | {:.2} % of a CPU | {:.0} % of a CPU | {} of {} | {} | {} ({}) \
             | {} | {:.0} KiB | {}, {} | {} |",
            scenario_label(row.scenario),
            secs(row.start_to_all_polled),
            row.polls,
            row.sqs_calls,
            row.agent_cpu / window * 100.0,
            if row.cpu_source == CpuSource::Ticks {
                " (ticks)"
            } else {
                ""
            },
            row.harness_cpu / window * 100.0,
            row.others_cpu / window * 100.0,
            row.rescaled,
            row.expected_rescales,
            row.threads,
            row.fds.0,
            row.fds.1,
            row.startup_requests,
            row.metrics_bytes as f64 / 1024.0,
            ms(row.scrape_cpu),
            ms(row.scrape_time.as_secs_f64()),
            mib(row.peak_after_scrape_kib),
        );
    }
    for row in rows {
        if !row.other_requests.is_empty() {
            let _ = writeln!(
                o,
                "\nSteady-state requests besides watches and leases, {} rules:\n",
                scenario_label(row.scenario)
            );
            for request in row.other_requests.iter().take(20) {
                let _ = writeln!(o, "- `{request}`");
            }
        }
        if !row.warnings.is_empty() {
            let _ = writeln!(
                o,
                "\nAgent warnings and errors, {} rules:\n",
                scenario_label(row.scenario)
            );
            for warning in row.warnings.iter().take(10) {
                let _ = writeln!(o, "- {warning}");
            }
        }
        if row.stub_rejected > 0 {
            let _ = writeln!(
                o,
                "\nThe SQS stub rejected {} requests, {} rules.",
                row.stub_rejected,
                scenario_label(row.scenario)
            );
        }
    }
    let _ = writeln!(o, "{}", marker(&options.section, "end"));
    out
}

/// This checkout's commit, and whether what the agent is built from differs from it.
fn checkout() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        None => "an unknown revision".to_string(),
        Some(commit) => {
            let changed = git(&[
                "status",
                "--porcelain",
                "--",
                "src",
                "Cargo.toml",
                "Cargo.lock",
            ])
            .is_some_and(|s| !s.is_empty());
            if changed {
                format!("commit {commit} with uncommitted changes in src/ or Cargo.*")
            } else {
                format!("commit {commit}")
            }
        }
    }
}

fn marker(section: &str, end: &str) -> String {
    format!("<!-- bench:{section}:{end} -->")
}

fn display_agent(agent: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    agent
        .strip_prefix(root)
        .unwrap_or(agent)
        .display()
        .to_string()
}

/// Replaces the marked block of `section` in `path` (or appends one).
fn write_results(path: &Path, section: &str, report: &str) -> anyhow::Result<()> {
    let current = std::fs::read_to_string(path).unwrap_or_default();
    let (begin_marker, end_marker) = (marker(section, "begin"), marker(section, "end"));
    let updated = match (current.find(&begin_marker), current.find(&end_marker)) {
        (Some(begin), Some(end)) if begin < end => format!(
            "{}{}{}",
            &current[..begin],
            report.trim_end(),
            &current[end + end_marker.len()..]
        ),
        _ => format!("{current}\n{report}"),
    };
    std::fs::write(path, updated).with_context(|| format!("write {}", path.display()))
}
