//! The agent itself failing: SIGTERM in the middle of a `/scale` write, the leader killed in the
//! middle of a rescale, a leader that can no longer renew its Lease, SIGKILL inside a cooldown
//! when the memory could not be persisted.
//!
//! SIGKILL inside a cooldown with the memory persisted (the restart holds the count until the
//! cooldown has passed) is covered by
//! `tests/e2e/operations.rs::sigkill_during_cooldown_does_not_scale_down_early_after_restart`,
//! and a plain SIGTERM by `tests/e2e/sqs_scaling.rs::sigterm_stops_within_a_second`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{
    converge, metric, Kube, Qscale, Queues, Recorder, DEPLOYMENT, NS, SHORT_LEASE,
};
use crate::support::fake_kube::RecordedRequest;
use crate::support::{always, eventually};

/// Successful `/scale` writes of `name`: the replicas each one set, in order.
fn written(kube: &Kube, name: &str) -> Vec<i64> {
    kube.scale_patches()
        .iter()
        .filter(|r| r.status == 200 && r.path.ends_with(&format!("/{name}/scale")))
        .filter_map(|r| r.body_json().and_then(|b| b["spec"]["replicas"].as_i64()))
        .collect()
}

/// Delays `/scale` writes of `name` by `delay`; the flag is set when one arrives.
fn hang_scale_writes(kube: &Kube, name: &str, delay: Duration) -> Arc<AtomicBool> {
    let arrived = Arc::new(AtomicBool::new(false));
    let flag = arrived.clone();
    let suffix = format!("/{name}/scale");
    kube.set_delay(
        move |r: &RecordedRequest| {
            let hit = r.is_scale_write() && r.path.ends_with(&suffix);
            if hit {
                flag.store(true, Ordering::SeqCst);
            }
            hit
        },
        delay,
    );
    arrived
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_in_the_middle_of_a_write_exits_within_2s_and_leaves_no_half_state() {
    let name = "midwrite";
    let queues = Queues::start(&[name]).await;
    let kube = Kube::start().await;
    kube.create_deployment(NS, name, 0);
    queues.send(name, 15).await;
    let recorder = Recorder::start(&kube, DEPLOYMENT, &[name]);
    let rules = queues.rules("", "");
    let mut agent = Qscale::start(&kube, &rules, &[]);
    converge(&agent, &kube, name, 3, Duration::from_secs(20)).await;
    let stored = eventually(Duration::from_secs(5), || {
        kube.configmap(NS, "qscale-state")
            .is_some_and(|d| d.contains_key(name))
    })
    .await;
    assert!(stored.is_some(), "{}", agent.tail());

    // The next write hangs in the API server for 4 s; SIGTERM arrives while it does.
    let in_flight = hang_scale_writes(&kube, name, Duration::from_secs(4));
    queues.send(name, 20).await;
    let writing = eventually(Duration::from_secs(15), || in_flight.load(Ordering::SeqCst)).await;
    assert!(writing.is_some(), "{}", agent.tail());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    agent.signal("TERM");
    let status = agent.wait_exit(Duration::from_secs(5));
    let took = asked.elapsed();
    assert!(
        status.is_some(),
        "still running after SIGTERM\n{}",
        agent.tail()
    );
    assert!(
        took < Duration::from_secs(2),
        "SIGTERM during a write took {took:?} to exit\n{}",
        agent.tail()
    );
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "clean exit\n{}",
        agent.tail()
    );
    assert!(agent.logs().contains("stopped"), "{}", agent.tail());

    // Once the API server is done with the hanging write: the old or the new count, nothing
    // in between, and a state ConfigMap whose every entry is a whole memory.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let replicas = kube.replicas_of(name);
    assert!(
        replicas == 3 || replicas == 7,
        "after an interrupted write: {replicas}"
    );
    let state = kube.configmap(NS, "qscale-state").unwrap_or_default();
    for (rule, text) in &state {
        let memory: Result<qscale::policy::Memory, _> = serde_json::from_str(text);
        assert!(memory.is_ok(), "state entry {rule} is not a memory: {text}");
    }

    // A new agent finishes the job with one write at most.
    kube.clear_faults();
    let before = written(&kube, name).len();
    let agent = Qscale::start(&kube, &rules, &[]);
    converge(&agent, &kube, name, 7, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = written(&kube, name);
    assert!(
        after.len() - before <= 1,
        "the restarted agent wrote {:?}",
        &after[before..]
    );
    recorder.assert_within(name, 0, 8);
    agent.assert_no_panic();
    kube.assert_least_privilege();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_during_a_rescale_the_new_leader_does_not_write_twice() {
    let name = "ha-rescale";
    let queues = Queues::start(&[name]).await;
    let kube = Kube::start().await;
    kube.create_deployment(NS, name, 0);
    let recorder = Recorder::start(&kube, DEPLOYMENT, &[name]);
    let rules = queues.rules("", "");
    let lease = SHORT_LEASE;
    let first = Qscale::start(
        &kube,
        &rules,
        &[&lease[..], &["--identity", "first"]].concat(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = Qscale::start(
        &kube,
        &rules,
        &[&lease[..], &["--identity", "second"]].concat(),
    );
    queues.send(name, 15).await;
    converge(&first, &kube, name, 3, Duration::from_secs(20)).await;
    let (mut leader, standby) = if first.logs().contains("leading: starting") {
        (first, second)
    } else {
        (second, first)
    };
    assert!(
        !standby.logs().contains("leading: starting"),
        "two leaders\n{}",
        standby.tail()
    );

    // The leader's next write hangs for 2 s; the leader dies while it does.
    let in_flight = hang_scale_writes(&kube, name, Duration::from_secs(2));
    queues.send(name, 20).await;
    let writing = eventually(Duration::from_secs(15), || in_flight.load(Ordering::SeqCst)).await;
    assert!(writing.is_some(), "{}", leader.tail());
    leader.signal("KILL");
    assert!(leader.wait_exit(Duration::from_secs(2)).is_some());
    let killed_at = Instant::now();
    kube.clear_faults();

    converge(&standby, &kube, name, 7, Duration::from_secs(20)).await;
    assert!(
        killed_at.elapsed() < Duration::from_secs(4 + 5),
        "takeover took {:?}",
        killed_at.elapsed()
    );
    let stays = always(Duration::from_secs(3), || kube.replicas_of(name) == 7).await;
    assert!(stays, "{}", standby.tail());
    assert!(
        standby.logs().contains("leading: starting"),
        "{}",
        standby.tail()
    );
    // 7 was written once: by the dying leader (its request landed) or by the new one, not by
    // both.
    assert_eq!(written(&kube, name), vec![3, 7], "{}", standby.tail());
    recorder.assert_within(name, 0, 8);
    standby.assert_no_panic();
    kube.assert_least_privilege();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_its_lease_stops_writing_before_it_expires() {
    let name = "cut-off";
    let queues = Queues::start(&[name]).await;
    let kube = Kube::start().await;
    kube.create_deployment(NS, name, 0);
    let recorder = Recorder::start(&kube, DEPLOYMENT, &[name]);
    let rules = queues.rules("", "");
    let mut agent = Qscale::start(
        &kube,
        &rules,
        &[&SHORT_LEASE[..], &["--identity", "only"]].concat(),
    );
    queues.send(name, 15).await;
    converge(&agent, &kube, name, 3, Duration::from_secs(20)).await;
    let leading = |agent: &Qscale| metric(&agent.metrics(), "qscale_leader", &[]);
    assert_eq!(leading(&agent), Some(1.0), "{}", agent.tail());

    // Every Lease request fails from now on: the next renewal (3 s after the last one at the
    // latest) fails, and the lease would expire a second later.
    let cut_at = Instant::now();
    kube.fail_next(
        |r: &RecordedRequest| r.path.contains("/leases"),
        usize::MAX,
        500,
    );
    let stepped_down = eventually(Duration::from_secs(10), || leading(&agent) == Some(0.0)).await;
    assert!(stepped_down.is_some(), "still leading\n{}", agent.tail());
    assert!(
        cut_at.elapsed() <= Duration::from_secs(4),
        "stepped down {:?} after the lease became unreachable, past its expiry",
        cut_at.elapsed()
    );
    // Not leading: more work arrives, and nothing is written.
    let before = written(&kube, name);
    queues.send(name, 20).await;
    let held = always(Duration::from_secs(5), || kube.replicas_of(name) == 3).await;
    assert!(held, "a replica without the lease wrote\n{}", agent.tail());
    assert_eq!(written(&kube, name), before);
    assert!(agent.is_running(), "{}", agent.tail());

    // The Lease answers again: this replica leads again and catches up.
    kube.clear_faults();
    converge(&agent, &kube, name, 7, Duration::from_secs(30)).await;
    assert_eq!(leading(&agent), Some(1.0), "{}", agent.tail());
    recorder.assert_within(name, 0, 8);
    agent.assert_no_panic();
    kube.assert_least_privilege();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_a_cooldown_with_memory_unsaved_still_waits_the_cooldown() {
    let name = "amnesia";
    let queues = Queues::start(&[name]).await;
    let kube = Kube::start().await;
    kube.create_deployment(NS, name, 0);
    // The state ConfigMap can never be written: the restart starts without memory.
    kube.fail_next(
        |r: &RecordedRequest| r.path.contains("/configmaps") && r.method != "GET",
        usize::MAX,
        500,
    );
    // No `initial_cooldown`: it defaults to the cooldown (10 s).
    let rules = queues
        .rules("cooldown = \"10s\"", "")
        .replace("initial_cooldown = \"0s\"", "");
    assert!(!rules.contains("initial_cooldown"), "{rules}");
    queues.send(name, 20).await;
    let recorder = Recorder::start(&kube, DEPLOYMENT, &[name]);
    let agent = Qscale::start(&kube, &rules, &[]);
    converge(&agent, &kube, name, 4, Duration::from_secs(20)).await;
    queues.drain(name, 20).await;
    agent.signal("KILL");
    drop(agent);
    assert!(
        kube.configmap(NS, "qscale-state").is_none(),
        "the memory was never saved"
    );

    // Queue empty, nothing remembered: the new agent still holds 4 for a cooldown.
    let restarted = Instant::now();
    let agent = Qscale::start(&kube, &rules, &[]);
    let held = always(Duration::from_secs(8), || kube.replicas_of(name) == 4).await;
    assert!(
        held,
        "scaled down within the initial cooldown after a restart without memory\n{}",
        agent.tail()
    );
    let down = eventually(Duration::from_secs(30), || kube.replicas_of(name) < 4).await;
    assert!(down.is_some(), "{}", agent.tail());
    assert!(
        restarted.elapsed() >= Duration::from_secs(9),
        "{:?}",
        restarted.elapsed()
    );
    recorder.assert_within(name, 0, 8);
    agent.assert_no_panic();
    kube.assert_least_privilege();
}
