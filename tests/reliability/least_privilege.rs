//! Least privilege: every test in this binary runs qscale against a fake API server that
//! enforces the Role of `manifests/base/role.yaml` and fails on any request outside it
//! (`Kube::assert_least_privilege`). This test walks every path that talks to the API in one
//! run: rules from a ConfigMap and edits of it, Deployment and StatefulSet targets, the HPA
//! guard, pause annotations, Events (new ones and series updates), persisted memory (written,
//! read on takeover, forgotten when a rule goes), leader election (two replicas, a graceful
//! handover on SIGTERM), and API errors along the way.

use std::time::Duration;

use crate::harness::{
    metric, prometheus_rule, sqs_rule, Kube, Launch, Qscale, Queues, NS, SHORT_LEASE,
};
use crate::support::eventually;
use crate::support::fake_kube::on;
use crate::support::fake_prometheus::{FakePrometheus, PromFault};

const RULES: &str = "qscale-rules";
const KEY: &str = "rules.toml";

fn agent(kube: &Kube, identity: &str) -> Qscale {
    let mut launch = Launch::rules("");
    launch.rules = None;
    let config_map = format!("{RULES}/{KEY}");
    let source = [
        "--config-map",
        config_map.as_str(),
        "--state-config-map",
        "qscale-state",
    ];
    let launch = launch.args(&[&source[..], &SHORT_LEASE[..], &["--identity", identity]].concat());
    Qscale::launch(kube, launch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_path_of_the_agent_stays_inside_the_role() {
    let queues = Queues::start(&["orders", "ledger", "guarded", "held"]).await;
    let prometheus = FakePrometheus::start(30.0).await;
    let kube = Kube::start().await;
    kube.create_deployment(NS, "orders", 0);
    kube.create_statefulset(NS, "ledger", 1);
    kube.create_deployment(NS, "guarded", 1);
    kube.create_deployment(NS, "held", 1);
    kube.create_deployment(NS, "flappy", 1);
    kube.create_hpa(NS, "legacy", "Deployment", "guarded");
    kube.set_annotation(
        "Deployment",
        NS,
        "held",
        "qscale.io/paused-replicas",
        Some("2"),
    );
    for name in ["orders", "ledger", "guarded", "held"] {
        queues.send(name, 15).await;
    }
    let endpoint = queues.moto.endpoint();
    let rules = |per_replica: u32, with_ledger: bool| {
        let mut text = String::new();
        for name in ["orders", "guarded", "held"] {
            text.push_str(&sqs_rule(name, queues.url(name), &endpoint, "", ""));
        }
        if with_ledger {
            text.push_str(
                &sqs_rule("ledger", queues.url("ledger"), &endpoint, "", "").replace(
                    "kind = \"Deployment\", name = \"ledger\"",
                    "kind = \"StatefulSet\", name = \"ledger\"",
                ),
            );
        }
        text.push_str(&prometheus_rule(
            "flappy",
            &prometheus.url(),
            "fallback = { after_failures = 1, mode = \"keep\" }",
            "",
        ));
        text.replace(
            "target_per_replica = 5",
            &format!("target_per_replica = {per_replica}"),
        )
    };
    kube.put_configmap(NS, RULES, [(KEY, rules(5, true))]);
    // Some API errors along the way: every retry path stays inside the Role too.
    kube.fail_next(on("PATCH", "/scale"), 2, 500);
    kube.fail_next(on("PATCH", "/scale"), 1, 409);
    kube.fail_next(on("PATCH", "/leases/qscale"), 1, 500);

    let first = agent(&kube, "first");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = agent(&kube, "second");
    let scaled = eventually(Duration::from_secs(30), || {
        kube.replicas_of("orders") == 3
            && kube.replicas("StatefulSet", NS, "ledger") == Some(3)
            && kube.replicas_of("held") == 2
            && kube.replicas_of("flappy") == 3
    })
    .await;
    assert!(
        scaled.is_some(),
        "first:\n{}\nsecond:\n{}",
        first.tail(),
        second.tail()
    );
    let (mut leader, standby) = if first.logs().contains("leading: starting") {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(kube.replicas_of("guarded"), 1, "the HPA guard holds");

    // The Prometheus trigger flaps: fallback entered and left twice (Events, then a series
    // update of the same Event).
    let in_fallback = |agent: &Qscale| {
        metric(
            &agent.metrics(),
            "qscale_rule_state",
            &[("rule", "flappy"), ("state", "fallback")],
        )
    };
    for _ in 0..2 {
        prometheus.set_fault(PromFault::Status(500, "boom".into()));
        let fell_back = eventually(Duration::from_secs(10), || {
            in_fallback(&leader) == Some(1.0)
        })
        .await;
        assert!(fell_back.is_some(), "{}", leader.tail());
        prometheus.set_fault(PromFault::None);
        let back = eventually(Duration::from_secs(10), || {
            in_fallback(&leader) == Some(0.0)
        })
        .await;
        assert!(back.is_some(), "{}", leader.tail());
    }
    let events = eventually(Duration::from_secs(10), || {
        let events = kube.events(NS);
        let has = |reason: &str| events.iter().any(|e| e["reason"] == reason);
        has("Rescaled") && has("HpaBlocked") && has("FallbackEntered") && has("FallbackLeft")
    })
    .await;
    assert!(events.is_some(), "{:?}", kube.events(NS));
    let series = eventually(Duration::from_secs(10), || {
        kube.count(|r| r.method == "PATCH" && r.path.contains("/events/")) > 0
    })
    .await;
    assert!(series.is_some(), "a repeated Event became a series update");

    // An edit of the rules ConfigMap, and a rule removed (its memory is forgotten).
    let stored = eventually(Duration::from_secs(10), || {
        kube.configmap(NS, "qscale-state")
            .is_some_and(|d| d.contains_key("orders") && d.contains_key("ledger"))
    })
    .await;
    assert!(stored.is_some(), "{}", leader.tail());
    let edited = rules(3, false);
    kube.put_configmap(NS, RULES, [(KEY, edited)]);
    let applied = eventually(Duration::from_secs(15), || {
        kube.replicas_of("orders") == 5
            && kube
                .configmap(NS, "qscale-state")
                .is_some_and(|d| !d.contains_key("ledger"))
    })
    .await;
    assert!(applied.is_some(), "{}", leader.tail());

    // A graceful handover: SIGTERM releases the Lease; the standby reads the stored memory
    // and carries on.
    leader.signal("TERM");
    assert!(leader.wait_exit(Duration::from_secs(5)).is_some());
    queues.send("orders", 9).await;
    let took_over = eventually(Duration::from_secs(20), || kube.replicas_of("orders") == 8).await;
    assert!(took_over.is_some(), "{}", standby.tail());
    assert!(standby.logs().contains("leading: starting"));
    let leading = metric(&standby.metrics(), "qscale_leader", &[]);
    assert_eq!(leading, Some(1.0));

    standby.assert_no_panic();
    leader.assert_no_panic();
    kube.assert_least_privilege();
}
