//! The Prometheus trigger end to end (real Prometheus scraping a real Pushgateway), and a real
//! Prometheus scraping qscale's own `/metrics`.

use std::time::Duration;

use crate::support::agent::{http_get, Agent};
use crate::support::cluster::Cluster;
use crate::support::eventually;
use crate::support::prometheus::{PromStack, Prometheus};

fn rule(server: &str, on_empty: &str) -> String {
    format!(
        r#"
[[rules]]
name = "reports"
target = {{ kind = "Deployment", name = "reports" }}
max_replicas = 20
poll_interval = "1s"
cooldown = "3s"
initial_cooldown = "0s"
[[rules.triggers]]
type = "prometheus"
name = "waiting"
server = "{server}"
query = "sum(jobs_waiting)"
target_per_replica = 10
on_empty = "{on_empty}"
timeout = "2s"
"#
    )
}

/// The first sample of an instant query, from Prometheus' HTTP API.
fn query(prometheus: &Prometheus, promql: &str) -> Option<f64> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (_, body) = http_get(prometheus.port, &format!("/api/v1/query?query={encoded}"))?;
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_series_scales_the_target_and_prometheus_scrapes_qscale() {
    let Some(stack) = PromStack::start().await else {
        return; // QSCALE_SKIP_PROMETHEUS=1; otherwise the launcher has already failed loudly
    };
    let kube = Cluster::start().await;
    let ns = kube.namespace();
    kube.create_deployment(ns, "reports", 0);
    stack
        .pushgateway
        .push("jobs", &[("queue", "reports")], "jobs_waiting 42\n")
        .await;
    let agent = Agent::start_in(&rule(&stack.server(), "error"), &kube, &[]);
    let scaled = eventually(Duration::from_secs(15), || {
        kube.replicas("Deployment", ns, "reports") == Some(5)
    })
    .await;
    assert!(scaled.is_some(), "42 / 10 -> 5\n{}", agent.logs());

    // A real Prometheus scrapes and parses qscale's /metrics.
    let scraper = Prometheus::start(&format!("127.0.0.1:{}", agent.admin_port))
        .await
        .expect("prometheus");
    let scraped = eventually(Duration::from_secs(15), || {
        query(&scraper, "qscale_desired_replicas{rule=\"reports\"}") == Some(5.0)
    })
    .await;
    let targets = http_get(scraper.port, "/api/v1/targets")
        .map(|r| r.1)
        .unwrap_or_default();
    assert!(
        scraped.is_some(),
        "Prometheus scraped qscale's desired replicas: {targets}"
    );
    assert_eq!(
        query(
            &scraper,
            "qscale_trigger_value{rule=\"reports\",trigger=\"waiting\"}"
        ),
        Some(42.0)
    );

    // The series disappears: an empty result is a failure by default, never a zero.
    let seen = agent.logs().len();
    stack
        .pushgateway
        .delete("jobs", &[("queue", "reports")])
        .await;
    let failing = eventually(Duration::from_secs(15), || {
        agent.logs()[seen..].contains("kind=\"empty\"")
    })
    .await;
    assert!(failing.is_some(), "{}", agent.logs());
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        kube.replicas("Deployment", ns, "reports"),
        Some(5),
        "held, not zeroed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_empty_zero_reads_a_missing_series_as_zero() {
    let Some(stack) = PromStack::start().await else {
        return;
    };
    let kube = Cluster::start().await;
    let ns = kube.namespace();
    kube.create_deployment(ns, "reports", 4);
    let agent = Agent::start_in(&rule(&stack.server(), "zero"), &kube, &[]);
    let zero = eventually(Duration::from_secs(20), || {
        kube.replicas("Deployment", ns, "reports") == Some(0)
    })
    .await;
    assert!(
        zero.is_some(),
        "no series + on_empty = zero -> 0 after the cooldown\n{}",
        agent.logs()
    );
}
