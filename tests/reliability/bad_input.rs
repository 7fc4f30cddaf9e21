//! Bad input the fuzz targets (tests/fuzz.rs) cannot judge alone: values that the loader
//! accepts and the running agent must then live with.
//!
//! A broken edit of the rules (rejected whole, the old rules keep running) is covered by
//! `tests/e2e/operations.rs::file_edits_apply_within_seconds_and_a_broken_edit_keeps_the_old_rules`.

use std::time::Duration;

use crate::harness::{converge, metric, sqs_rule, Kube, Qscale, Queues, NS};
use crate::support::agent::qscale;

/// An absurd but well-formed duration (`key = value`, in the rule or in its trigger): either
/// `qscale check` rejects it (naming the field), or the agent runs the rule without a panic and
/// without harming the others.
async fn absurd_duration(rule_extra: &str, trigger_extra: &str) {
    let key = format!("{rule_extra}{trigger_extra}");
    let key = key.split('=').next().unwrap_or_default().trim().to_string();
    let queues = Queues::start(&["sane", "absurd"]).await;
    let kube = Kube::start().await;
    kube.create_deployment(NS, "sane", 0);
    kube.create_deployment(NS, "absurd", 0);
    queues.send("sane", 15).await;
    queues.send("absurd", 15).await;
    let endpoint = queues.moto.endpoint();
    let rules = sqs_rule("sane", queues.url("sane"), &endpoint, "", "")
        + &sqs_rule(
            "absurd",
            queues.url("absurd"),
            &endpoint,
            rule_extra,
            trigger_extra,
        );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, &rules).expect("write");
    let (code, _, stderr) = qscale(&["check", &path.display().to_string()], None);
    if code != 0 {
        assert!(
            stderr.contains(&key),
            "`qscale check` rejects {key} without naming the field: {stderr}"
        );
        return;
    }
    let mut agent = Qscale::start(&kube, &rules, &[]);
    converge(&agent, &kube, "sane", 3, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(agent.is_running(), "{}", agent.tail());
    agent.assert_no_panic();
    assert_eq!(
        metric(&agent.metrics(), "qscale_tasks", &[]),
        Some(2.0),
        "both rules run"
    );
    kube.assert_least_privilege();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_poll_interval_is_rejected_or_harmless() {
    absurd_duration("poll_interval = 9223372036854775807", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_cooldown_is_rejected_or_harmless() {
    absurd_duration("cooldown = 9223372036854775807", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_trigger_timeout_is_rejected_or_harmless() {
    absurd_duration("", "timeout = \"300000000years\"").await;
}
