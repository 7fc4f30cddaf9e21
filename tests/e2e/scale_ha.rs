//! Scale and high availability: shared polling, a quiet steady state, and leader election.

use std::time::Duration;

use crate::support::agent::Agent;
use crate::support::cluster::{skip_on_real_cluster, Cluster};
use crate::support::moto::Moto;
use crate::support::sqs_proxy::SqsProxy;
use crate::support::{always, eventually};

fn rule(name: &str, target: &str, queue_url: &str, endpoint: &str, interval: &str) -> String {
    format!(
        r#"
[[rules]]
name = "{name}"
target = {{ kind = "Deployment", name = "{target}" }}
max_replicas = 50
poll_interval = "{interval}"
cooldown = "30s"
initial_cooldown = "0s"
[[rules.triggers]]
type = "sqs"
queue = "{queue_url}"
endpoint = "{endpoint}"
target_per_replica = 5
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_rules_on_five_queues_make_five_calls_per_interval() {
    let moto = Moto::start();
    let proxy = SqsProxy::start(moto.endpoint()).await;
    let kube = Cluster::start().await;
    let ns = kube.namespace();
    let mut rules = String::new();
    for q in 0..5 {
        let queue = moto.create_queue(&format!("shared-{q}")).await;
        moto.send(&queue, 10).await;
        for r in 0..10 {
            let name = format!("w{q}-{r}");
            kube.create_deployment(ns, &name, 2);
            // Half the rules poll every 2 s, half every 4 s: the queue is read every 2 s.
            let interval = if r % 2 == 0 { "2s" } else { "4s" };
            rules.push_str(&rule(&name, &name, &queue, &proxy.endpoint(), interval));
        }
    }
    let agent = Agent::start_in(&rules, &kube, &[]);
    // Let every task start and settle (first ticks are spread over a second).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = proxy.count("GetQueueAttributes");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let calls = proxy.count("GetQueueAttributes") - before;
    // 5 queues, one call per 2 s each: 25 in 10 s (a boundary may add one per queue).
    assert!(
        (20..=30).contains(&calls),
        "{calls} GetQueueAttributes calls in 10 s for 50 rules on 5 queues; unshared would be ~150\n{}",
        agent.logs()
    );
    assert!(agent.logs().contains("no change"), "{}", agent.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_state_sends_nothing_but_watches() {
    if skip_on_real_cluster("counts the agent's API requests (the request log)") {
        return;
    }
    let moto = Moto::start();
    let kube = Cluster::start().await;
    let ns = kube.namespace();
    let fake = kube.fake().expect("the fake API server");
    let mut rules = String::new();
    for i in 0..5 {
        let name = format!("quiet-{i}");
        kube.create_deployment(ns, &name, 0);
        let queue = moto.create_queue(&name).await;
        moto.send(&queue, 10).await;
        rules.push_str(&rule(&name, &name, &queue, &moto.endpoint(), "1s"));
    }
    let agent = Agent::start_in(&rules, &kube, &[]);
    let settled = eventually(Duration::from_secs(15), || {
        (0..5).all(|i| kube.replicas("Deployment", ns, &format!("quiet-{i}")) == Some(2))
    })
    .await;
    assert!(settled.is_some(), "{}", agent.logs());
    tokio::time::sleep(Duration::from_secs(2)).await;
    fake.clear_requests();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let others: Vec<String> = fake
        .requests()
        .iter()
        .filter(|r| !r.is_watch)
        .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
        .collect();
    assert!(
        others.is_empty(),
        "30 ticks at steady state made API requests besides watches: {others:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_writer_and_a_handover_within_the_lease() {
    let moto = Moto::start();
    let kube = Cluster::start().await;
    let ns = kube.namespace();
    kube.create_deployment(ns, "ha", 0);
    let queue = moto.create_queue("ha").await;
    let rules = rule("ha", "ha", &queue, &moto.endpoint(), "1s");
    let lease = [
        "--leader-elect",
        "--lease-duration",
        "4s",
        "--renew-deadline",
        "3s",
    ];
    let first = Agent::start_in(
        &rules,
        &kube,
        &[&lease[..], &["--identity", "first"]].concat(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = Agent::start_in(
        &rules,
        &kube,
        &[&lease[..], &["--identity", "second"]].concat(),
    );

    moto.send(&queue, 15).await;
    assert!(
        eventually(Duration::from_secs(10), || kube.replicas(
            "Deployment",
            ns,
            "ha"
        ) == Some(3))
        .await
        .is_some(),
        "first:\n{}\nsecond:\n{}",
        first.logs(),
        second.logs()
    );
    // The agent logs "rescaled" after the PATCH returns and the log pipe is read on another
    // thread, so the count may show in the fake before the line does: wait for the line.
    let writers = || {
        [&first, &second]
            .iter()
            .filter(|a| a.logs().contains("rescaled"))
            .count()
    };
    let _ = eventually(Duration::from_secs(3), || writers() > 0).await;
    assert_eq!(writers(), 1, "exactly one replica writes");
    let (mut leader, standby) = if first.logs().contains("leading: starting") {
        (first, second)
    } else {
        (second, first)
    };
    assert!(
        !standby.logs().contains("leading: starting"),
        "{}",
        standby.logs()
    );
    assert_eq!(
        standby.admin_get("/readyz").map(|r| r.0),
        Some(200),
        "a standby is ready"
    );

    // Kill the leader; the standby takes over within the lease duration and acts on new work.
    leader.signal("KILL");
    leader.wait_exit(Duration::from_secs(2));
    let killed_at = std::time::Instant::now();
    moto.send(&queue, 15).await;
    let took = eventually(Duration::from_secs(15), || {
        kube.replicas("Deployment", ns, "ha") == Some(6)
    })
    .await;
    assert!(took.is_some(), "standby took over\n{}", standby.logs());
    assert!(
        killed_at.elapsed() < Duration::from_secs(4 + 3),
        "handover took {:?} (lease 4 s, poll 1 s)",
        killed_at.elapsed()
    );
    assert!(
        always(Duration::from_secs(2), || kube.replicas(
            "Deployment",
            ns,
            "ha"
        ) == Some(6))
        .await
    );
    // Every write changed the count: no decision was written twice.
    if let Some(fake) = kube.fake_for("no decision was written twice (the request log)") {
        let written: Vec<i64> = fake
            .scale_patches()
            .iter()
            .filter(|r| r.status == 200)
            .filter_map(|r| r.body_json().and_then(|b| b["spec"]["replicas"].as_i64()))
            .collect();
        // A poll may land between two send batches and write an intermediate count; what
        // must never happen is the same count written twice in a row (a double write).
        assert!(written.windows(2).all(|w| w[0] != w[1]), "{written:?}");
        assert_eq!(written.last(), Some(&6), "{written:?}");
        assert!(written.contains(&3), "{written:?}");
    }
}
