//! Running qscale for real: metrics, health, Events, JSON logs, live reload (file and
//! ConfigMap), pause annotations, the HPA guard, persisted memory and dry run.

use std::sync::Arc;
use std::time::Duration;

use crate::support::agent::Agent;
use crate::support::cluster::Cluster;
use crate::support::moto::Moto;
use crate::support::{always, eventually};

fn rule(
    name: &str,
    queue_url: &str,
    endpoint: &str,
    target_per_replica: u32,
    extra: &str,
) -> String {
    format!(
        r#"
[[rules]]
name = "{name}"
target = {{ kind = "Deployment", name = "{name}" }}
max_replicas = 20
poll_interval = "1s"
cooldown = "4s"
initial_cooldown = "0s"
{extra}

[[rules.triggers]]
type = "sqs"
name = "queue"
queue = "{queue_url}"
endpoint = "{endpoint}"
target_per_replica = {target_per_replica}
timeout = "2s"
"#
    )
}

fn replicas(kube: &Cluster, name: &str) -> i32 {
    kube.replicas("Deployment", kube.namespace(), name)
        .unwrap_or(-1)
}

/// The value of one sample in the exposition text, e.g. `qscale_desired_replicas{rule="a"}`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_events_and_json_logs() {
    let moto = Moto::start();
    let kube = Cluster::start().await;
    let ns = kube.namespace();
    kube.create_deployment(ns, "observed", 0);
    let queue = moto.create_queue("observed").await;
    moto.send(&queue, 12).await;
    let agent = Agent::start_in(
        &rule("observed", &queue, &moto.endpoint(), 5, ""),
        &kube,
        &["--log-format", "json"],
    );
    let scaled = eventually(Duration::from_secs(10), || replicas(&kube, "observed") == 3).await;
    assert!(scaled.is_some(), "{}", agent.logs());

    assert_eq!(agent.admin_get("/healthz").map(|r| r.0), Some(200));
    assert_eq!(agent.admin_get("/readyz").map(|r| r.0), Some(200));
    let mut metrics = String::new();
    let complete = eventually(Duration::from_secs(5), || {
        metrics = agent.admin_get("/metrics").map(|r| r.1).unwrap_or_default();
        sample(&metrics, "qscale_current_replicas{rule=\"observed\"}") == Some(3.0)
    })
    .await;
    assert!(complete.is_some(), "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            "qscale_trigger_value{rule=\"observed\",trigger=\"queue\"}"
        ),
        Some(12.0)
    );
    assert_eq!(
        sample(&metrics, "qscale_desired_replicas{rule=\"observed\"}"),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "qscale_scale_events_total{rule=\"observed\",direction=\"up\"}"
        ),
        Some(1.0)
    );
    assert!(
        metrics.contains("qscale_build_info{version=\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("qscale_poll_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains("qscale_reaction_seconds_count 1"),
        "one rescale, one reaction observed: {metrics}"
    );
    assert!(
        metrics.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );
    assert!(!metrics.contains("testing"), "no credentials in metrics");
    if let Some(report) = promtool_check(&metrics) {
        panic!("promtool rejects /metrics: {report}\n{metrics}");
    }

    let rescaled = eventually(Duration::from_secs(5), || {
        kube.events(ns).iter().any(|e| e["reason"] == "Rescaled")
    })
    .await;
    assert!(rescaled.is_some(), "{:?}", kube.events(ns));
    let event = kube
        .events(ns)
        .into_iter()
        .find(|e| e["reason"] == "Rescaled")
        .expect("event");
    let note = event["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("0 -> 3") && note.contains("observed"),
        "{note}"
    );
    assert_eq!(event["regarding"]["name"], "observed");

    let logs = agent.logs();
    let rescale_line = logs
        .lines()
        .find(|l| l.contains("\"rescaled\""))
        .expect("a rescale log line");
    let parsed: serde_json::Value = serde_json::from_str(rescale_line).expect("JSON log line");
    assert_eq!(parsed["rule"], "observed");
    assert_eq!(parsed["from"], 0);
    assert_eq!(parsed["to"], 3);
}

/// Runs `promtool check metrics` when Prometheus' promtool is installed; `Some(report)` on
/// problems other than lint-style naming advice.
fn promtool_check(metrics: &str) -> Option<String> {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(metrics.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    let report =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    let parse_errors = report
        .lines()
        .any(|l| l.contains("error while linting") || l.contains("text format parsing error"));
    parse_errors.then_some(report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_flaps_in_a_minute_give_a_bounded_number_of_events() {
    let kube = Cluster::start().await;
    let ns = kube.namespace();
    kube.create_deployment(ns, "flappy", 1);
    let client = kube.client(ns).await;
    let metrics = Arc::new(qscale::telemetry::Metrics::new());
    let sink = qscale::telemetry::EventSink::new(
        client,
        ns,
        "test",
        metrics.clone(),
        qscale::target::RequestLimit::default(),
    );
    let target = qscale::config::TargetRef {
        kind: "Deployment".into(),
        name: "flappy".into(),
        api_version: None,
    };
    for flap in 0..50 {
        let (from, to) = if flap % 2 == 0 { (1, 4) } else { (4, 1) };
        sink.publish(qscale::telemetry::events::Notice {
            rule: "flappy".into(),
            target: target.clone(),
            severity: qscale::telemetry::events::Severity::Normal,
            reason: "Rescaled",
            message: format!("rule flappy: Deployment/flappy {from} -> {to} replicas (metrics)"),
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Some(fake) = kube.fake_for("the number of Event writes (the request log)") {
        let writes = fake.count(|r| r.path.contains("/events") && r.method != "GET");
        assert!(
            writes <= 5,
            "at most the burst of 5 event writes, saw {writes}"
        );
        assert!(writes >= 2, "the first flaps are reported, saw {writes}");
    }
    // The two alternating messages became two objects with a series, not five objects.
    let rescaled = kube
        .events(ns)
        .into_iter()
        .filter(|e| e["reason"] == "Rescaled")
        .count();
    assert_eq!(rescaled, 2);
    assert!(metrics
        .encode()
        .contains("qscale_events_suppressed_total{rule=\"flappy\"} 45"));
}

/// The rules-file watcher must rest between edits: reading the file raises access events of
/// its own, and counting those as edits made the agent re-read it 4 times a second forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_agent_does_not_keep_reading_its_rules_file() {
    use notify::{EventKind, RecursiveMode, Watcher};
    let moto = Moto::start();
    let kube = Cluster::start().await;
    let ns = kube.namespace();
    kube.create_deployment(ns, "resting", 0);
    let queue = moto.create_queue("resting").await;
    let agent = Agent::start_in(
        &rule("resting", &queue, &moto.endpoint(), 5, ""),
        &kube,
        &[],
    );
    let ready = eventually(Duration::from_secs(10), || {
        agent.admin_get("/readyz").map(|r| r.0) == Some(200)
    })
    .await;
    assert!(ready.is_some(), "{}", agent.logs());

    // Opens of the rules file by anyone (only the agent touches it) over 3 idle seconds.
    let path = agent.dir.path().join("rules.toml");
    let opens = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = opens.clone();
    let watched = path.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if matches!(event.kind, EventKind::Access(_)) && event.paths.contains(&watched) {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    })
    .expect("watcher");
    watcher
        .watch(agent.dir.path(), RecursiveMode::NonRecursive)
        .expect("watch");
    // The watcher sees its own reads too: one read here proves it is live.
    std::fs::read(&path).expect("read rules");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = opens.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        seen >= 1,
        "the test's own read was not seen: the check is blind"
    );
    // The test's read itself: an open and a close. A watcher that re-read the file would add
    // two events per re-read, a dozen at least in 3 s.
    assert!(
        seen <= 4,
        "{seen} access events on the rules file in 3 idle seconds\n{}",
        agent.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_edits_apply_within_seconds_and_a_broken_edit_keeps_the_old_rules() {
    let moto = Moto::start();
    let kube = Cluster::start().await;
    let ns = kube.namespace();
    kube.create_deployment(ns, "edited", 0);
    let queue = moto.create_queue("edited").await;
    moto.send(&queue, 12).await;
    let agent = Agent::start_in(&rule("edited", &queue, &moto.endpoint(), 5, ""), &kube, &[]);
    assert!(
        eventually(Duration::from_secs(10), || replicas(&kube, "edited") == 3)
            .await
            .is_some()
    );

    // An edit in place (what an editor does).
    let path = agent.dir.path().join("rules.toml");
    std::fs::write(&path, rule("edited", &queue, &moto.endpoint(), 2, "")).expect("edit");
    let took = eventually(Duration::from_secs(5), || replicas(&kube, "edited") == 6).await;
    assert!(
        took.is_some(),
        "12 / 2 -> 6 within 5 s of the edit\n{}",
        agent.logs()
    );

    // A broken edit: rejected whole, the old rules keep running, the failure is counted.
    std::fs::write(&path, "[[rules]]\nname = 'edited'\nmax_replicas = 'many'\n").expect("edit");
    let counted = eventually(Duration::from_secs(5), || {
        let metrics = agent.admin_get("/metrics").map(|r| r.1).unwrap_or_default();
        sample(&metrics, "qscale_config_reloads_total{result=\"failure\"}") == Some(1.0)
    })
    .await;
    assert!(counted.is_some(), "{}", agent.logs());
    moto.send(&queue, 6).await;
    let still_running = eventually(Duration::from_secs(5), || replicas(&kube, "edited") == 9).await;
    assert!(
        still_running.is_some(),
        "old rules (2 per replica) still act on 18 messages\n{}",
        agent.logs()
    );
    assert_eq!(
        agent.admin_get("/readyz").map(|r| r.0),
        Some(200),
        "still ready"
    );

    // A ConfigMap-style edit: the mounted directory's `..data` symlink is swapped.
    let swapped = agent.dir.path().join("rules-v2.toml");
    std::fs::write(&swapped, rule("edited", &queue, &moto.endpoint(), 6, "")).expect("write");
    let tmp_link = agent.dir.path().join("rules.toml.tmp");
    std::os::unix::fs::symlink(&swapped, &tmp_link).expect("symlink");
    std::fs::rename(&tmp_link, &path).expect("swap");
    let took = eventually(Duration::from_secs(9), || replicas(&kube, "edited") == 3).await;
    assert!(
        took.is_some(),
        "18 / 6 -> 3 after the swap (scale-down after the 4 s cooldown)\n{}",
        agent.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_map_edits_apply_within_seconds() {
    let moto = Moto::start();
    let kube = Cluster::start().await;
    let ns = kube.namespace();
    kube.create_deployment(ns, "mapped", 0);
    let queue = moto.create_queue("mapped").await;
    moto.send(&queue, 12).await;
    kube.put_configmap(
        ns,
        "qscale-rules",
        [(
            "rules.toml",
            rule("mapped", &queue, &moto.endpoint(), 5, ""),
        )],
    );
    let agent = Agent::start_config_map_in(&kube, "qscale-rules/rules.toml", &[]);
    assert!(
        eventually(Duration::from_secs(10), || replicas(&kube, "mapped") == 3)
            .await
            .is_some(),
        "{}",
        agent.logs()
    );
    kube.put_configmap(
        ns,
        "qscale-rules",
        [(
            "rules.toml",
            rule("mapped", &queue, &moto.endpoint(), 3, ""),
        )],
    );
    let took = eventually(Duration::from_secs(5), || replicas(&kube, "mapped") == 4).await;
    assert!(took.is_some(), "12 / 3 -> 4 within 5 s\n{}", agent.logs());

    kube.put_configmap(ns, "qscale-rules", [("rules.toml", "rules = 'broken'")]);
    let counted = eventually(Duration::from_secs(5), || {
        let metrics = agent.admin_get("/metrics").map(|r| r.1).unwrap_or_default();
        sample(&metrics, "qscale_config_reloads_total{result=\"failure\"}") == Some(1.0)
    })
    .await;
    assert!(counted.is_some(), "{}", agent.logs());
    moto.send(&queue, 3).await;
    assert!(
        eventually(Duration::from_secs(5), || replicas(&kube, "mapped") == 5)
            .await
            .is_some(),
        "the last good rules keep running\n{}",
        agent.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_annotations_hpa_guard_and_dry_run_write_nothing() {
    let moto = Moto::start();
    let kube = Cluster::start().await;
    let ns = kube.namespace();
    for name in ["paused", "held", "guarded"] {
        kube.create_deployment(ns, name, 1);
    }
    kube.set_annotation("Deployment", ns, "paused", "qscale.io/paused", Some("true"));
    kube.set_annotation(
        "Deployment",
        ns,
        "held",
        "qscale.io/paused-replicas",
        Some("2"),
    );
    kube.create_hpa(ns, "legacy-hpa", "Deployment", "guarded");
    let mut rules = String::new();
    for name in ["paused", "held", "guarded"] {
        let queue = moto.create_queue(name).await;
        moto.send(&queue, 30).await;
        rules.push_str(&rule(name, &queue, &moto.endpoint(), 5, ""));
    }
    let agent = Agent::start_in(&rules, &kube, &[]);
    let held = eventually(Duration::from_secs(10), || replicas(&kube, "held") == 2).await;
    assert!(
        held.is_some(),
        "paused-replicas sets 2 and holds\n{}",
        agent.logs()
    );
    assert!(
        always(Duration::from_secs(3), || {
            replicas(&kube, "paused") == 1
                && replicas(&kube, "guarded") == 1
                && replicas(&kube, "held") == 2
        })
        .await
    );
    if let Some(fake) = kube.fake_for("only one /scale write was sent (the request log)") {
        let writes: Vec<String> = fake
            .scale_patches()
            .iter()
            .map(|r| r.path.clone())
            .collect();
        assert_eq!(
            writes.len(),
            1,
            "only the paused-replicas write: {writes:?}"
        );
    }
    let metrics = agent.admin_get("/metrics").map(|r| r.1).unwrap_or_default();
    assert_eq!(
        sample(
            &metrics,
            "qscale_rule_state{rule=\"guarded\",state=\"hpa_blocked\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        agent.logs().contains("an HPA scales this target"),
        "{}",
        agent.logs()
    );
    let blocked = eventually(Duration::from_secs(5), || {
        kube.events(ns).iter().any(|e| e["reason"] == "HpaBlocked")
    })
    .await;
    assert!(blocked.is_some());

    // Unpausing hands the target back to the queue (30 / 5 = 6).
    kube.set_annotation("Deployment", ns, "paused", "qscale.io/paused", None);
    assert!(
        eventually(Duration::from_secs(10), || replicas(&kube, "paused") == 6)
            .await
            .is_some()
    );
    drop(agent);

    // Dry run: decides (and logs) the same, writes nothing at all.
    kube.create_deployment(ns, "dry", 0);
    let queue = moto.create_queue("dry").await;
    moto.send(&queue, 30).await;
    if let Some(fake) = kube.fake() {
        fake.clear_requests();
    }
    let agent = Agent::start_in(
        &rule("dry", &queue, &moto.endpoint(), 5, ""),
        &kube,
        // With leader election asked for too: a dry run must not take (write) the Lease.
        &["--dry-run", "--leader-elect"],
    );
    let decided = eventually(Duration::from_secs(10), || {
        agent.logs().contains("would rescale")
    })
    .await;
    assert!(decided.is_some(), "{}", agent.logs());
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Some(fake) = kube.fake_for("the dry run sent no write at all (the request log)") {
        let writes = fake.count(|r| r.method != "GET");
        assert_eq!(
            writes,
            0,
            "dry run writes nothing: {:?}",
            fake.requests()
                .iter()
                .filter(|r| r.method != "GET")
                .map(|r| (&r.method, &r.path))
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(replicas(&kube, "dry"), 0);
    let state = kube.configmap(ns, "qscale-state").unwrap_or_default();
    assert!(
        !state.contains_key("dry"),
        "dry run keeps no state: {state:?}"
    );
    let events = kube.events(ns);
    assert!(
        !events
            .iter()
            .any(|e| e["regarding"]["name"] == "dry"
                && e["reportingController"] == "qscale.io/agent"),
        "dry run publishes no Event: {events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_cooldown_does_not_scale_down_early_after_restart() {
    let moto = Moto::start();
    let kube = Cluster::start().await;
    let ns = kube.namespace();
    kube.create_deployment(ns, "durable", 0);
    let queue = moto.create_queue("durable").await;
    moto.send(&queue, 20).await;
    // A long cooldown, so the restart happens well inside it.
    let rules = rule("durable", &queue, &moto.endpoint(), 5, "")
        .replace("cooldown = \"4s\"", "cooldown = \"12s\"");
    let agent = Agent::start_in(&rules, &kube, &[]);
    assert!(
        eventually(Duration::from_secs(10), || replicas(&kube, "durable") == 4)
            .await
            .is_some()
    );
    let scaled_at = std::time::Instant::now();
    // The memory reaches the state ConfigMap.
    let stored = eventually(Duration::from_secs(5), || {
        kube.configmap(ns, "qscale-state")
            .is_some_and(|d| d.contains_key("durable"))
    })
    .await;
    assert!(stored.is_some(), "{}", agent.logs());
    let handles = moto.receive(&queue, 20).await;
    moto.delete(&queue, &handles).await;
    agent.signal("KILL");
    drop(agent);

    // Queue empty, cooldown still running: the new agent must hold 4 until it has passed.
    let agent = Agent::start_in(&rules, &kube, &[]);
    let held = always(Duration::from_secs(6), || replicas(&kube, "durable") == 4).await;
    assert!(
        held,
        "scaled down inside the cooldown after a restart\n{}",
        agent.logs()
    );
    let down = eventually(Duration::from_secs(30), || replicas(&kube, "durable") < 4).await;
    assert!(down.is_some(), "{}", agent.logs());
    // `scaled_at` is when the test saw the scale-up, up to a poll (100 ms) after the agent
    // decided it; the cooldown runs from the decision.
    assert!(
        scaled_at.elapsed() >= Duration::from_millis(11_500),
        "scaled down {:?} after the scale-up, inside the 12 s cooldown",
        scaled_at.elapsed()
    );
}
