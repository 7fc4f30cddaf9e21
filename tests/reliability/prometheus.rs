//! Prometheus faults, end to end: a loopback server pretending to be Prometheus (for slow,
//! `NaN`, empty, malformed and HTTP 500 answers) and a real Prometheus behind it (stopped and
//! replaced; a real `NaN`). Each test scales a Deployment to 3 (value 30, 10 per replica),
//! injects one fault, checks that the agent notices it, stays up and holds 3 with
//! `min_replicas = 0`, then clears the fault and checks that the agent follows the query again
//! (value 70 -> 7).
//!
//! A series that disappears from a real Prometheus (an empty result, held, not zeroed) is also
//! covered by `tests/e2e/prometheus_e2e.rs::pushed_series_scales_the_target_and_prometheus_scrapes_qscale`.

use std::time::Duration;

use crate::harness::{
    converge, prometheus_rule, ride_out_trigger_fault, Kube, Qscale, Recorder, DEPLOYMENT, NS,
};
use crate::support::fake_prometheus::{FakePrometheus, PromFault};
use crate::support::prometheus::{PromStack, Prometheus};

const HOLD: Duration = Duration::from_secs(5);

struct Stack {
    prometheus: FakePrometheus,
    kube: Kube,
    agent: Qscale,
    recorder: Recorder,
}

/// One rule called `name` on the fake Prometheus answering 30, scaled to 3.
async fn stack(name: &str) -> Stack {
    let prometheus = FakePrometheus::start(30.0).await;
    let kube = Kube::start().await;
    kube.create_deployment(NS, name, 0);
    let recorder = Recorder::start(&kube, DEPLOYMENT, &[name]);
    let agent = Qscale::start(
        &kube,
        &prometheus_rule(name, &prometheus.url(), "", ""),
        &[],
    );
    converge(&agent, &kube, name, 3, Duration::from_secs(20)).await;
    Stack {
        prometheus,
        kube,
        agent,
        recorder,
    }
}

impl Stack {
    async fn fault(&mut self, name: &str, fault: PromFault, kinds: &[&str]) {
        self.prometheus.set_fault(fault);
        ride_out_trigger_fault(&mut self.agent, &self.kube, name, 3, kinds, HOLD).await;
    }

    async fn recovers(&mut self, name: &str) {
        self.prometheus.set_fault(PromFault::None);
        self.prometheus.set_value(70.0);
        converge(&self.agent, &self.kube, name, 7, Duration::from_secs(20)).await;
        assert!(self.agent.is_running(), "{}", self.agent.tail());
        self.recorder.assert_within(name, 0, 8);
        self.agent.assert_no_panic();
        self.kube.assert_least_privilege();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_slow_answers_time_out_hold_replicas_and_recover() {
    let mut s = stack("prom-slow").await;
    s.fault(
        "prom-slow",
        PromFault::Slow(Duration::from_secs(3)),
        &["timeout"],
    )
    .await;
    s.recovers("prom-slow").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_nan_is_a_failure_not_a_zero() {
    let mut s = stack("prom-nan").await;
    s.fault("prom-nan", PromFault::NaN, &["empty"]).await;
    s.recovers("prom-nan").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_empty_result_is_a_failure_not_a_zero() {
    let mut s = stack("prom-empty").await;
    s.fault("prom-empty", PromFault::Empty, &["empty"]).await;
    s.recovers("prom-empty").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_malformed_json_holds_replicas_and_recovers() {
    let mut s = stack("prom-malformed").await;
    s.fault("prom-malformed", PromFault::Malformed, &["bad_response"])
        .await;
    s.fault(
        "prom-malformed",
        PromFault::Body("<html><body>502 Bad Gateway</body></html>".into()),
        &["bad_response"],
    )
    .await;
    s.recovers("prom-malformed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_http_500_and_503_hold_replicas_and_recover() {
    let mut s = stack("prom-500").await;
    s.fault(
        "prom-500",
        PromFault::Status(
            500,
            r#"{"status":"error","errorType":"internal","error":"query processing failed"}"#.into(),
        ),
        &["bad_response"],
    )
    .await;
    s.fault(
        "prom-500",
        PromFault::Status(503, "Service Unavailable".into()),
        &["network"],
    )
    .await;
    s.recovers("prom-500").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_nan_then_down_holds_replicas_and_a_new_one_is_followed() {
    let Some(mut stack) = PromStack::start().await else {
        return; // QSCALE_SKIP_PROMETHEUS=1; otherwise the launcher has already failed loudly
    };
    let name = "prom-real";
    // qscale reaches the real Prometheus through a forwarding proxy, so the server behind the
    // rule's fixed URL can be stopped and replaced.
    let proxy = FakePrometheus::forwarding(&stack.server()).await;
    let kube = Kube::start().await;
    kube.create_deployment(NS, name, 0);
    let recorder = Recorder::start(&kube, DEPLOYMENT, &[name]);
    let push = |value: &'static str| {
        let gateway = &stack.pushgateway;
        async move {
            gateway
                .push(
                    "jobs",
                    &[("queue", "real")],
                    &format!("jobs_waiting {value}\n"),
                )
                .await
        }
    };
    push("30").await;
    let mut agent = Qscale::start(
        &kube,
        &prometheus_rule(name, &proxy.url(), "", "timeout = \"2s\""),
        &[],
    );
    converge(&agent, &kube, name, 3, Duration::from_secs(30)).await;

    // A real NaN: the only series is NaN, so is its sum.
    push("NaN").await;
    ride_out_trigger_fault(&mut agent, &kube, name, 3, &["empty"], HOLD).await;
    push("30").await;
    let errors_before = crate::harness::trigger_errors(&agent.metrics(), name, &["empty"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled = crate::harness::trigger_errors(&agent.metrics(), name, &["empty"]);
    assert!(
        settled <= errors_before + 2.0,
        "NaN errors keep coming after a number is pushed"
    );

    // Prometheus stopped: the proxy cannot reach it and drops the connection.
    stack.prometheus.stop();
    ride_out_trigger_fault(&mut agent, &kube, name, 3, &["network", "timeout"], HOLD).await;
    // Nothing listens at all: connection refused.
    proxy.set_down(true).await;
    ride_out_trigger_fault(&mut agent, &kube, name, 3, &["network", "timeout"], HOLD).await;

    // A new Prometheus (same pushgateway) behind the same URL: followed again.
    let replacement = Prometheus::start(&format!("127.0.0.1:{}", stack.pushgateway.port))
        .await
        .expect("prometheus");
    proxy.set_upstream(Some(replacement.url()));
    proxy.set_down(false).await;
    push("70").await;
    converge(&agent, &kube, name, 7, Duration::from_secs(30)).await;
    assert!(agent.is_running());
    recorder.assert_within(name, 0, 8);
    agent.assert_no_panic();
    kube.assert_least_privilege();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_huge_malformed_answer_does_not_flood_the_logs() {
    let mut s = stack("prom-huge").await;
    let huge = serde_json::Value::String("x".repeat(1024 * 1024)).to_string();
    s.fault("prom-huge", PromFault::Body(huge), &["bad_response"])
        .await;
    let longest = s.agent.logs().lines().map(str::len).max().unwrap_or(0);
    assert!(
        longest < 16 * 1024,
        "a {longest}-byte log line from a 1 MiB answer"
    );
    s.recovers("prom-huge").await;
}
