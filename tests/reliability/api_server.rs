//! Kubernetes API server faults, end to end (fake API server enforcing the Role, moto, the real
//! binary): 500s, 409 on every other patch, 429 with `Retry-After`, watches dropped and resumed
//! from a compacted resourceVersion (410), a target deleted and recreated, a kind without a
//! scale subresource.
//!
//! A storm of 500s on every GET and a single 409 on a patch are also covered by
//! `tests/e2e/sqs_scaling.rs::api_errors_are_retried_and_no_write_happens_without_a_change`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{
    converge, custom_kind_rules, sqs_rule, target_errors, Kube, Qscale, Queues, Recorder,
    DEPLOYMENT, NS,
};
use crate::support::eventually;
use crate::support::fake_kube::{on, RecordedRequest};

/// Successful `/scale` writes of `name`: the replicas each one set, in order.
fn written(kube: &Kube, name: &str) -> Vec<i64> {
    kube.scale_patches()
        .iter()
        .filter(|r| r.status == 200 && r.path.ends_with(&format!("/{name}/scale")))
        .filter_map(|r| r.body_json().and_then(|b| b["spec"]["replicas"].as_i64()))
        .collect()
}

fn scale_writes_of<'a>(requests: &'a [RecordedRequest], name: &str) -> Vec<&'a RecordedRequest> {
    requests
        .iter()
        .filter(|r| r.is_scale_write() && r.path.ends_with(&format!("/{name}/scale")))
        .collect()
}

fn assert_no_duplicate_writes(kube: &Kube, name: &str) {
    let values = written(kube, name);
    let repeated = values.windows(2).any(|w| w[0] == w[1]);
    assert!(
        !repeated,
        "{name}: the same count was written twice in a row: {values:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_500s_on_scale_writes_hold_replicas_retry_boundedly_and_recover() {
    let name = "api500";
    let queues = Queues::start(&[name]).await;
    let kube = Kube::start().await;
    kube.create_deployment(NS, name, 0);
    queues.send(name, 15).await;
    let recorder = Recorder::start(&kube, DEPLOYMENT, &[name]);
    let mut agent = Qscale::start(&kube, &queues.rules("", ""), &[]);
    converge(&agent, &kube, name, 3, Duration::from_secs(20)).await;

    kube.fail_next(on("PATCH", "/scale"), usize::MAX, 500);
    let attempts_before = kube.scale_patches().len();
    let storm = Instant::now();
    queues.send(name, 20).await;
    let counted = eventually(Duration::from_secs(15), || {
        target_errors(&agent.metrics(), name, "server") >= 2.0
    })
    .await;
    assert!(counted.is_some(), "{}", agent.tail());
    let held = crate::support::always(Duration::from_secs(4), || kube.replicas_of(name) == 3).await;
    assert!(held, "a failing write changed the replicas");
    assert!(agent.is_running(), "{}", agent.tail());
    assert_eq!(agent.healthz(), Some(200));
    let attempts = kube.scale_patches().len() - attempts_before;
    let ticks = storm.elapsed().as_secs() as usize + 1;
    assert!(
        (2..=5 * ticks).contains(&attempts),
        "{attempts} /scale attempts in {ticks} s of 500s: retried, but at most 5 per tick"
    );

    kube.clear_faults();
    converge(&agent, &kube, name, 7, Duration::from_secs(20)).await;
    recorder.assert_within(name, 0, 8);
    assert_no_duplicate_writes(&kube, name);
    agent.assert_no_panic();
    kube.assert_least_privilege();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_409_on_every_other_patch_is_retried_without_double_writes() {
    let name = "conflicted";
    let queues = Queues::start(&[name]).await;
    let kube = Kube::start().await;
    kube.create_deployment(NS, name, 0);
    kube.fail_every_other(on("PATCH", "/scale"), 409);
    queues.send(name, 15).await;
    let recorder = Recorder::start(&kube, DEPLOYMENT, &[name]);
    let agent = Qscale::start(&kube, &queues.rules("", ""), &[]);
    converge(&agent, &kube, name, 3, Duration::from_secs(20)).await;
    queues.send(name, 20).await;
    converge(&agent, &kube, name, 7, Duration::from_secs(20)).await;
    queues.drain(name, 25).await;
    converge(&agent, &kube, name, 2, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let values = written(&kube, name);
    assert_eq!(values.first(), Some(&3), "{values:?}");
    assert_eq!(values.last(), Some(&2), "{values:?}");
    assert!(values.contains(&7), "{values:?}");
    assert_no_duplicate_writes(&kube, name);
    let statuses: Vec<u16> = kube.scale_patches().iter().map(|r| r.status).collect();
    assert!(
        statuses.len() == 2 * values.len() && statuses.chunks(2).all(|c| c == [409, 200]),
        "each write met one conflict and was retried once: {statuses:?}"
    );
    recorder.assert_within(name, 0, 8);
    agent.assert_no_panic();
    kube.assert_least_privilege();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_429_with_retry_after_is_honoured_and_a_429_storm_holds_then_converges() {
    let name = "throttled-api";
    let queues = Queues::start(&[name]).await;
    let kube = Kube::start().await;
    kube.create_deployment(NS, name, 0);
    let recorder = Recorder::start(&kube, DEPLOYMENT, &[name]);
    let mut agent = Qscale::start(&kube, &queues.rules("", ""), &[]);
    // Three 429s (each with `Retry-After: 1`), then the write goes through.
    kube.fail_next(on("PATCH", "/scale"), 3, 429);
    queues.send(name, 15).await;
    converge(&agent, &kube, name, 3, Duration::from_secs(30)).await;
    let requests = kube.requests();
    let attempts = scale_writes_of(&requests, name);
    let statuses: Vec<u16> = attempts.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![429, 429, 429, 200], "{statuses:?}");
    for pair in attempts.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(
            gap >= Duration::from_millis(900),
            "retried {gap:?} after a 429 with Retry-After: 1"
        );
    }

    // A storm of 429s: nothing changes, nothing breaks, and it converges when it ends.
    kube.fail_next(on("PATCH", "/scale"), usize::MAX, 429);
    queues.send(name, 20).await;
    let throttled = eventually(Duration::from_secs(15), || {
        kube.scale_patches()
            .iter()
            .filter(|r| r.status == 429)
            .count()
            >= 6
    })
    .await;
    assert!(throttled.is_some(), "{}", agent.tail());
    let held = crate::support::always(Duration::from_secs(3), || kube.replicas_of(name) == 3).await;
    assert!(held);
    assert!(agent.is_running(), "{}", agent.tail());
    assert_eq!(agent.healthz(), Some(200));
    kube.clear_faults();
    converge(&agent, &kube, name, 7, Duration::from_secs(20)).await;
    recorder.assert_within(name, 0, 8);
    assert_no_duplicate_writes(&kube, name);
    agent.assert_no_panic();
    kube.assert_least_privilege();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_dropped_and_resumed_from_a_compacted_version_relists_and_corrects() {
    let name = "watched";
    let queues = Queues::start(&[name]).await;
    let kube = Kube::start().await;
    kube.create_deployment(NS, name, 0);
    queues.send(name, 15).await;
    let recorder = Recorder::start(&kube, DEPLOYMENT, &[name]);
    let agent = Qscale::start(&kube, &queues.rules("", ""), &[]);
    converge(&agent, &kube, name, 3, Duration::from_secs(20)).await;

    // Dropped and resumed: a change made meanwhile arrives (replayed from history).
    kube.drop_watches();
    kube.set_replicas(DEPLOYMENT, NS, name, 1);
    converge(&agent, &kube, name, 3, Duration::from_secs(20)).await;

    // Dropped, and the history compacted: resuming gets 410 Expired, the watcher lists again
    // and sees the change made meanwhile.
    let compacted_at = Instant::now();
    kube.compact_history();
    kube.drop_watches();
    kube.set_replicas(DEPLOYMENT, NS, name, 1);
    converge(&agent, &kube, name, 3, Duration::from_secs(30)).await;
    let requests = kube.requests();
    let after: Vec<&RecordedRequest> = requests
        .iter()
        .filter(|r| r.at >= compacted_at && r.path.ends_with("/deployments"))
        .collect();
    let stale_resume = after.iter().position(|r| {
        r.is_watch
            && r.query
                .split('&')
                .any(|p| p.starts_with("resourceVersion=") && p != "resourceVersion=0")
    });
    assert!(
        stale_resume.is_some(),
        "the watch resumed from its last resourceVersion: {:?}",
        after.iter().map(|r| &r.query).collect::<Vec<_>>()
    );
    let relisted = after
        .iter()
        .skip(stale_resume.unwrap_or_default() + 1)
        .any(|r| !r.is_watch || r.query.contains("sendInitialEvents=true"));
    assert!(
        relisted,
        "after 410 Expired the watcher lists again: {:?}",
        after.iter().map(|r| &r.query).collect::<Vec<_>>()
    );
    assert_eq!(
        written(&kube, name),
        vec![3, 3, 3],
        "both outside changes were seen and corrected, each with one write"
    );
    recorder.assert_within(name, 0, 8);
    agent.assert_no_panic();
    kube.assert_least_privilege();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_deleted_is_left_alone_and_scaled_again_when_recreated() {
    let name = "phoenix";
    let queues = Queues::start(&[name]).await;
    let kube = Kube::start().await;
    kube.create_deployment(NS, name, 0);
    queues.send(name, 15).await;
    let recorder = Recorder::start(&kube, DEPLOYMENT, &[name]);
    let mut agent = Qscale::start(&kube, &queues.rules("", ""), &[]);
    converge(&agent, &kube, name, 3, Duration::from_secs(20)).await;

    let deleted_at = Instant::now();
    assert!(kube.delete_object(DEPLOYMENT, NS, name));
    queues.send(name, 20).await;
    let noticed = eventually(Duration::from_secs(10), || {
        target_errors(&agent.metrics(), name, "not_found") >= 2.0
    })
    .await;
    assert!(noticed.is_some(), "{}", agent.tail());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(agent.is_running(), "{}", agent.tail());
    assert_eq!(agent.healthz(), Some(200));
    let requests = kube.requests();
    let writes: Vec<String> = scale_writes_of(&requests, name)
        .iter()
        .filter(|r| r.at >= deleted_at)
        .map(|r| format!("{} {} -> {}", r.method, r.path, r.status))
        .collect();
    assert!(
        writes.is_empty(),
        "qscale wrote /scale of a deleted target: {writes:?}"
    );
    assert!(
        kube.get_object(DEPLOYMENT, NS, name).is_none(),
        "nothing recreated it"
    );

    kube.create_deployment(NS, name, 1);
    converge(&agent, &kube, name, 7, Duration::from_secs(20)).await;
    recorder.assert_within(name, 0, 8);
    agent.assert_no_panic();
    kube.assert_least_privilege();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kind_without_a_scale_subresource_is_reported_and_other_rules_carry_on() {
    let mut grants = custom_kind_rules("example.com", "gadgets");
    grants.extend(custom_kind_rules("example.com", "workers"));
    let kube = Kube::start_with_grants(grants).await;
    let queues = Queues::start(&["healthy", "gizmo", "legacy"]).await;
    kube.create_deployment(NS, "healthy", 0);
    // A kind whose discovery lists no scale subresource.
    kube.create_object(
        "Gadget",
        NS,
        json!({ "metadata": { "name": "gizmo" }, "spec": { "replicas": 1 } }),
    );
    // A kind with /scale, whose object has no spec.replicas (so qscale reads /scale) and whose
    // /scale answers 404 for now.
    kube.create_object(
        "Worker",
        NS,
        json!({ "metadata": { "name": "legacy" }, "spec": {} }),
    );
    let missing_scale = Arc::new(AtomicUsize::new(0));
    let seen = missing_scale.clone();
    kube.fail_next(
        move |r: &RecordedRequest| {
            let hit = r.method == "GET" && r.path.ends_with("/workers/legacy/scale");
            if hit {
                seen.fetch_add(1, Ordering::SeqCst);
            }
            hit
        },
        usize::MAX,
        404,
    );
    for name in ["healthy", "gizmo", "legacy"] {
        queues.send(name, 15).await;
    }
    let custom = |name: &str, kind: &str| {
        sqs_rule(name, queues.url(name), &queues.moto.endpoint(), "", "").replace(
            &format!("target = {{ kind = \"Deployment\", name = \"{name}\" }}"),
            &format!(
                "target = {{ kind = \"{kind}\", name = \"{name}\", api_version = \"example.com/v1\" }}"
            ),
        )
    };
    let rules = sqs_rule(
        "healthy",
        queues.url("healthy"),
        &queues.moto.endpoint(),
        "",
        "",
    ) + &custom("gizmo", "Gadget")
        + &custom("legacy", "Worker");
    let mut agent = Qscale::start(&kube, &rules, &[]);
    converge(&agent, &kube, "healthy", 3, Duration::from_secs(20)).await;
    let reported = eventually(Duration::from_secs(10), || {
        let metrics = agent.metrics();
        target_errors(&metrics, "gizmo", "no_scale_subresource") >= 2.0
            && target_errors(&metrics, "legacy", "no_scale_subresource") >= 2.0
    })
    .await;
    assert!(reported.is_some(), "{}\n{}", agent.metrics(), agent.tail());
    assert!(missing_scale.load(Ordering::SeqCst) >= 2);
    assert!(agent.is_running(), "{}", agent.tail());
    assert_eq!(agent.healthz(), Some(200));
    let requests = kube.requests();
    assert!(
        scale_writes_of(&requests, "gizmo").is_empty()
            && scale_writes_of(&requests, "legacy").is_empty(),
        "no write to a target without a working /scale"
    );
    assert_eq!(kube.replicas("Gadget", NS, "gizmo"), Some(1));
    assert!(agent.logs().contains("has no scale subresource"));

    // The Worker's /scale answers again: it is scaled like any target.
    kube.clear_faults();
    let scaled = eventually(Duration::from_secs(20), || {
        kube.replicas("Worker", NS, "legacy") == Some(3)
    })
    .await;
    assert!(scaled.is_some(), "{}", agent.tail());
    assert_eq!(kube.replicas("Gadget", NS, "gizmo"), Some(1));
    agent.assert_no_panic();
    kube.assert_least_privilege();
}
