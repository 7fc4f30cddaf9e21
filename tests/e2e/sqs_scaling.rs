//! The working path, end to end: a rule in a file, a real SQS stand-in (moto), the Kubernetes
//! API (the fake, or a real cluster), and the real `qscale run` binary writing `/scale`.

use std::time::Duration;

use crate::support::agent::{qscale, Agent};
use crate::support::cluster::{skip_on_real_cluster, Cluster};
use crate::support::fake_kube::on;
use crate::support::moto::Moto;
use crate::support::{always, eventually};

/// A rule on one SQS queue, polled every second, with a short cooldown.
pub(crate) fn rule(name: &str, kind: &str, queue_url: &str, endpoint: &str, extra: &str) -> String {
    format!(
        r#"
[[rules]]
name = "{name}"
target = {{ kind = "{kind}", name = "{name}" }}
min_replicas = 0
max_replicas = 10
poll_interval = "1s"
cooldown = "4s"
initial_cooldown = "0s"
{extra}

[[rules.triggers]]
type = "sqs"
queue = "{queue_url}"
endpoint = "{endpoint}"
target_per_replica = 5
timeout = "2s"
"#
    )
}

pub(crate) fn replicas(kube: &Cluster, kind: &str, name: &str) -> i32 {
    kube.replicas(kind, kube.namespace(), name).unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_follows_queue_depth_in_flight_counts_and_zero_waits_for_cooldown() {
    let moto = Moto::start();
    let kube = Cluster::start().await;
    let ns = kube.namespace();
    kube.create_deployment(ns, "orders", 0);
    let queue = moto.create_queue("orders").await;
    let agent = Agent::start_in(
        &rule("orders", "Deployment", &queue, &moto.endpoint(), ""),
        &kube,
        &[],
    );

    moto.send(&queue, 12).await;
    let took = eventually(Duration::from_secs(10), || {
        replicas(&kube, "Deployment", "orders") == 3
    })
    .await;
    assert!(
        took.is_some(),
        "12 messages / 5 per replica -> 3\n{}",
        agent.logs()
    );

    // Received, not deleted: in flight, still counted.
    let handles = moto.receive(&queue, 12).await;
    assert_eq!(handles.len(), 12);
    assert!(
        always(Duration::from_secs(3), || replicas(
            &kube,
            "Deployment",
            "orders"
        ) == 3)
        .await
    );

    moto.delete(&queue, &handles).await;
    let deleted_at = std::time::Instant::now();
    // The step to zero waits for a full cooldown (4 s) of inactivity; one replica drains meanwhile.
    let zero = eventually(Duration::from_secs(15), || {
        replicas(&kube, "Deployment", "orders") == 0
    })
    .await;
    assert!(
        zero.is_some(),
        "scales to zero after the cooldown\n{}",
        agent.logs()
    );
    assert!(
        deleted_at.elapsed() >= Duration::from_secs(3),
        "reached zero {:?} after the queue emptied, before the 4 s cooldown",
        deleted_at.elapsed()
    );
    let logs = agent.logs();
    assert!(logs.contains("rescaled"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_replicas_caps_and_activation_holds_at_zero() {
    let moto = Moto::start();
    let kube = Cluster::start().await;
    let ns = kube.namespace();
    kube.create_deployment(ns, "capped", 0);
    kube.create_deployment(ns, "gated", 0);
    let capped_q = moto.create_queue("capped").await;
    let gated_q = moto.create_queue("gated").await;
    let rules = format!(
        "{}\n{}",
        rule("capped", "Deployment", &capped_q, &moto.endpoint(), ""),
        rule("gated", "Deployment", &gated_q, &moto.endpoint(), "").replace(
            "target_per_replica = 5",
            "target_per_replica = 5\nactivation = 8"
        )
    );
    let agent = Agent::start_in(&rules, &kube, &[]);

    moto.send(&capped_q, 80).await;
    moto.send(&gated_q, 6).await;
    let capped = eventually(Duration::from_secs(10), || {
        replicas(&kube, "Deployment", "capped") == 10
    })
    .await;
    assert!(
        capped.is_some(),
        "80 / 5 = 16, capped at 10\n{}",
        agent.logs()
    );
    assert!(
        always(Duration::from_secs(3), || replicas(
            &kube,
            "Deployment",
            "gated"
        ) == 0)
        .await,
        "6 messages are below activation 8: stays at 0"
    );
    moto.send(&gated_q, 4).await;
    let active = eventually(Duration::from_secs(10), || {
        replicas(&kube, "Deployment", "gated") == 2
    })
    .await;
    assert!(
        active.is_some(),
        "10 messages > activation 8 -> 2 replicas\n{}",
        agent.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_target_scales_the_same_way() {
    let moto = Moto::start();
    let kube = Cluster::start().await;
    let ns = kube.namespace();
    kube.create_statefulset(ns, "ledger", 1);
    let queue = moto.create_queue("ledger").await;
    let agent = Agent::start_in(
        &rule("ledger", "StatefulSet", &queue, &moto.endpoint(), ""),
        &kube,
        &[],
    );
    moto.send(&queue, 21).await;
    let took = eventually(Duration::from_secs(10), || {
        replicas(&kube, "StatefulSet", "ledger") == 5
    })
    .await;
    assert!(took.is_some(), "21 / 5 -> 5\n{}", agent.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_outage_holds_without_fallback_and_falls_back_with_it() {
    let mut moto = Moto::start();
    let port = moto.port;
    let kube = Cluster::start().await;
    let ns = kube.namespace();
    kube.create_deployment(ns, "hold", 0);
    kube.create_deployment(ns, "fallback", 0);
    let hold_q = moto.create_queue("hold").await;
    let fallback_q = moto.create_queue("fallback").await;
    let rules = format!(
        "{}\n{}",
        rule("hold", "Deployment", &hold_q, &moto.endpoint(), ""),
        rule(
            "fallback",
            "Deployment",
            &fallback_q,
            &moto.endpoint(),
            "fallback = { after_failures = 2, replicas = 4, mode = \"static\" }"
        )
    );
    let agent = Agent::start_in(&rules, &kube, &[]);
    moto.send(&hold_q, 10).await;
    moto.send(&fallback_q, 5).await;
    assert!(eventually(Duration::from_secs(10), || replicas(
        &kube,
        "Deployment",
        "hold"
    ) == 2)
    .await
    .is_some());
    assert!(eventually(Duration::from_secs(10), || replicas(
        &kube,
        "Deployment",
        "fallback"
    ) == 1)
    .await
    .is_some());

    moto.stop();
    let fell_back = eventually(Duration::from_secs(20), || {
        replicas(&kube, "Deployment", "fallback") == 4
    })
    .await;
    assert!(
        fell_back.is_some(),
        "fallback to 4 after two failed polls\n{}",
        agent.logs()
    );
    assert_eq!(
        replicas(&kube, "Deployment", "hold"),
        2,
        "no fallback: holds, never reads the outage as zero"
    );
    assert!(
        always(Duration::from_secs(3), || replicas(
            &kube,
            "Deployment",
            "hold"
        ) == 2)
        .await
    );

    // SQS is back (a fresh moto on the same port): the queue's answer wins again.
    let moto = Moto::start_on(port);
    let fallback_q = moto.create_queue("fallback").await;
    moto.send(&fallback_q, 35).await;
    let recovered = eventually(Duration::from_secs(15), || {
        replicas(&kube, "Deployment", "fallback") == 7
    })
    .await;
    assert!(
        recovered.is_some(),
        "35 / 5 -> 7 once SQS answers\n{}",
        agent.logs()
    );
    let logs = agent.logs();
    assert!(logs.contains("trigger failed"), "{logs}");
    assert!(
        !logs.contains("testing"),
        "credentials must never be logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_are_retried_and_no_write_happens_without_a_change() {
    if skip_on_real_cluster("injects API server errors and reads the request log") {
        return;
    }
    let moto = Moto::start();
    let kube = Cluster::start().await;
    let ns = kube.namespace();
    let fake = kube.fake().expect("the fake API server");
    kube.create_deployment(ns, "sturdy", 1);
    let queue = moto.create_queue("sturdy").await;
    moto.send(&queue, 5).await;
    let mut agent = Agent::start_in(
        &rule("sturdy", "Deployment", &queue, &moto.endpoint(), ""),
        &kube,
        &[],
    );

    // Steady state: 5 messages, 1 replica. Several ticks, not one write.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(replicas(&kube, "Deployment", "sturdy"), 1);
    assert_eq!(
        fake.scale_patches().len(),
        0,
        "no write when desired == current"
    );

    // The API server fails every request for a while: the agent survives and converges.
    fake.fail_next(on("GET", ""), 15, 500);
    moto.send(&queue, 10).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        agent.is_running(),
        "a 500 storm must not end the agent\n{}",
        agent.logs()
    );
    let converged = eventually(Duration::from_secs(20), || {
        replicas(&kube, "Deployment", "sturdy") == 3
    })
    .await;
    assert!(
        converged.is_some(),
        "converges after the API recovers\n{}",
        agent.logs()
    );

    // A 409 on the patch is retried after a fresh read (the GET storm's leftovers cleared
    // first, so that read can succeed).
    fake.clear_faults();
    fake.fail_next(on("PATCH", "/scale"), 1, 409);
    moto.send(&queue, 10).await;
    let retried = eventually(Duration::from_secs(10), || {
        replicas(&kube, "Deployment", "sturdy") == 5
    })
    .await;
    assert!(retried.is_some(), "409 retried\n{}", agent.logs());
    let statuses: Vec<u16> = fake.scale_patches().iter().map(|r| r.status).collect();
    assert!(
        statuses.contains(&409) && statuses.last() == Some(&200),
        "{statuses:?}"
    );
    let log = fake.requests();
    let conflict = log
        .iter()
        .position(|r| r.is_scale_write() && r.status == 409);
    let after: Vec<String> = log[conflict.map_or(log.len(), |at| at + 1)..]
        .iter()
        .filter(|r| r.path.contains("/sturdy"))
        .map(|r| format!("{} {} {}", r.method, r.path, r.status))
        .collect();
    let reread = after
        .iter()
        .position(|r| r.starts_with("GET ") && r.contains("/sturdy/scale"));
    let rewritten = after.iter().position(|r| r.starts_with("PATCH "));
    assert!(
        reread.is_some() && reread < rewritten,
        "no fresh read of /scale between the 409 and the retried write: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_rules_exit_non_zero_with_the_check_report() {
    let kube = Cluster::start().await;
    let ns = kube.namespace();
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kube.write_kubeconfig(dir.path(), ns);
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/many_errors.yaml"
    );
    let (run_code, _, run_err) = qscale(&["run", "--config", fixture], Some(&kubeconfig));
    let (check_code, _, check_err) = qscale(&["check", fixture], None);
    assert_ne!(run_code, 0);
    assert_eq!(check_code, 1);
    assert_eq!(run_err.trim(), check_err.trim());
    if let Some(fake) = kube.fake_for("nothing was sent to the API server (the request log)") {
        assert!(
            fake.requests().is_empty(),
            "nothing was sent to the API server"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_within_a_second() {
    let moto = Moto::start();
    let kube = Cluster::start().await;
    let ns = kube.namespace();
    kube.create_deployment(ns, "quit", 0);
    let queue = moto.create_queue("quit").await;
    let mut agent = Agent::start_in(
        &rule("quit", "Deployment", &queue, &moto.endpoint(), ""),
        &kube,
        &[],
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = std::time::Instant::now();
    agent.signal("TERM");
    let status = agent.wait_exit(Duration::from_secs(3));
    assert!(
        status.is_some(),
        "still running after SIGTERM\n{}",
        agent.logs()
    );
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "took {:?}",
        asked.elapsed()
    );
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

/// Which of a queue's counts make its depth: visible always, in flight by default
/// (`include_in_flight`), delayed only when asked (`include_delayed`). Four rules read one queue
/// holding 1 visible, 2 in-flight and 4 delayed messages, one replica per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_and_delayed_messages_count_as_configured() {
    let moto = Moto::start();
    let kube = Cluster::start().await;
    let ns = kube.namespace();
    let queue = moto.create_queue("counted").await;
    moto.send(&queue, 3).await;
    assert_eq!(
        moto.receive(&queue, 2).await.len(),
        2,
        "two messages in flight"
    );
    let client = moto.client();
    for n in 0..4 {
        client
            .send_message()
            .queue_url(&queue)
            .message_body(format!("later {n}"))
            .delay_seconds(900)
            .send()
            .await
            .expect("send a delayed message");
    }
    let cases = [
        ("counted-default", "", 3),
        ("counted-visible", "include_in_flight = false\n", 1),
        ("counted-all", "include_delayed = true\n", 7),
        (
            "counted-no-flight",
            "include_in_flight = false\ninclude_delayed = true\n",
            5,
        ),
    ];
    let mut rules = String::new();
    for (name, trigger_extra, _) in &cases {
        kube.create_deployment(ns, name, 0);
        // The trigger table comes last in a rule, so these keys land in it.
        rules.push_str(
            &rule(name, "Deployment", &queue, &moto.endpoint(), "")
                .replace("target_per_replica = 5", "target_per_replica = 1"),
        );
        rules.push_str(trigger_extra);
    }
    let agent = Agent::start_in(&rules, &kube, &[]);
    let all = eventually(Duration::from_secs(30), || {
        cases
            .iter()
            .all(|(name, _, want)| replicas(&kube, "Deployment", name) == *want)
    })
    .await;
    let seen: Vec<(&str, i32, i32)> = cases
        .iter()
        .map(|(name, _, want)| (*name, replicas(&kube, "Deployment", name), *want))
        .collect();
    assert!(
        all.is_some(),
        "(rule, replicas, expected): {seen:?}\n{}",
        agent.logs()
    );
}
