//! SQS faults, end to end: moto behind a fault-injecting proxy, the fake API server enforcing
//! the Role, and the real binary. Each test scales a Deployment to 3 (15 messages, 5 per
//! replica), injects one fault, checks that the agent notices it, stays up and holds 3
//! (`min_replicas = 0`: a failure read as zero would bring it down within the 2 s cooldown),
//! then clears the fault and checks that the agent follows the queue again (35 messages -> 7).
//!
//! SQS stopped outright (moto killed and restarted) is covered by
//! `tests/e2e/sqs_scaling.rs::sqs_outage_holds_without_fallback_and_falls_back_with_it`.

use std::time::{Duration, Instant};

use crate::harness::{
    converge, ride_out_trigger_fault, sqs_rule, trigger_errors, Kube, Qscale, Recorder, DEPLOYMENT,
    NS,
};
use crate::support::moto::Moto;
use crate::support::sqs_faults::{SqsFault, SqsFaults};

const HOLD: Duration = Duration::from_secs(5);

struct Stack {
    moto: Moto,
    faults: SqsFaults,
    kube: Kube,
    queue: String,
    agent: Qscale,
    recorder: Recorder,
}

/// One rule called `name` on a queue of that name behind the fault proxy, scaled to 3.
/// `by_name`: the trigger names the queue (resolved with GetQueueUrl) instead of its URL.
async fn stack(name: &str, trigger_extra: &str, by_name: bool) -> Stack {
    let moto = Moto::start();
    let faults = SqsFaults::start(moto.endpoint()).await;
    let kube = Kube::start().await;
    kube.create_deployment(NS, name, 0);
    let queue = moto.create_queue(name).await;
    moto.send(&queue, 15).await;
    let recorder = Recorder::start(&kube, DEPLOYMENT, &[name, "fallback"]);
    let queue_ref = if by_name { name } else { queue.as_str() };
    let rules = sqs_rule(name, queue_ref, &faults.endpoint(), "", trigger_extra);
    let agent = Qscale::start(&kube, &rules, &[]);
    converge(&agent, &kube, name, 3, Duration::from_secs(20)).await;
    Stack {
        moto,
        faults,
        kube,
        queue,
        agent,
        recorder,
    }
}

impl Stack {
    /// After the fault: 20 more messages (35, 7 replicas) are followed, nothing left
    /// `[0, 8]`, no panic, nothing outside the Role.
    async fn recovers(&mut self, name: &str) {
        self.moto.send(&self.queue, 20).await;
        converge(&self.agent, &self.kube, name, 7, Duration::from_secs(20)).await;
        self.finish(name);
    }

    fn finish(&mut self, name: &str) {
        assert!(self.agent.is_running(), "{}", self.agent.tail());
        self.recorder.assert_within(name, 0, 8);
        self.agent.assert_no_panic();
        self.kube.assert_least_privilege();
    }

    fn calls(&self) -> usize {
        self.faults.count("GetQueueAttributes")
    }
}

/// Throttled reads are failures, and the SDK's retries of them are bounded (3 attempts a poll).
async fn throttled(fault: SqsFault, name: &str) {
    // A longer timeout than usual, so the SDK's own retries (with backoff) end before it and
    // the error keeps its kind.
    let mut s = stack(name, "timeout = \"6s\"", false).await;
    s.faults.set(fault);
    let before = s.calls();
    let started = Instant::now();
    ride_out_trigger_fault(&mut s.agent, &s.kube, name, 3, &["throttled"], HOLD).await;
    let polls = started.elapsed().as_secs_f64().ceil() as usize + 1;
    let calls = s.calls() - before;
    assert!(
        calls <= 3 * polls,
        "{calls} GetQueueAttributes calls in {polls} polls while throttled: retries are not bounded"
    );
    s.faults.set(SqsFault::None);
    s.recovers(name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_throttling_exception_holds_replicas_and_recovers() {
    throttled(SqsFault::Throttling, "throttled").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_request_throttled_holds_replicas_and_recovers() {
    throttled(SqsFault::RequestThrottled, "request-throttled").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_access_denied_holds_or_falls_back_within_bounds_and_recovers() {
    let name = "denied";
    let fallback_rule = |endpoint: &str, queue: &str| {
        sqs_rule(
            "fallback",
            queue,
            endpoint,
            "fallback = { after_failures = 2, replicas = 6, mode = \"static\" }",
            "",
        )
    };
    // The second rule reads the same queue (shared polling), with a static fallback of 6.
    let mut s = {
        let moto = Moto::start();
        let faults = SqsFaults::start(moto.endpoint()).await;
        let kube = Kube::start().await;
        kube.create_deployment(NS, name, 0);
        kube.create_deployment(NS, "fallback", 0);
        let queue = moto.create_queue(name).await;
        moto.send(&queue, 15).await;
        let recorder = Recorder::start(&kube, DEPLOYMENT, &[name, "fallback"]);
        let rules = sqs_rule(name, &queue, &faults.endpoint(), "", "")
            + &fallback_rule(&faults.endpoint(), &queue);
        let agent = Qscale::start(&kube, &rules, &[]);
        converge(&agent, &kube, name, 3, Duration::from_secs(20)).await;
        converge(&agent, &kube, "fallback", 3, Duration::from_secs(10)).await;
        Stack {
            moto,
            faults,
            kube,
            queue,
            agent,
            recorder,
        }
    };
    let fault_at = Instant::now();
    s.faults.set(SqsFault::AccessDenied);
    ride_out_trigger_fault(&mut s.agent, &s.kube, name, 3, &["access_denied"], HOLD).await;
    assert_eq!(
        s.kube.replicas_of("fallback"),
        6,
        "the rule with a static fallback of 6 applies it after 2 failed polls\n{}",
        s.agent.tail()
    );
    let during = s
        .recorder
        .values_between("fallback", fault_at, Instant::now());
    assert!(
        during.iter().all(|v| *v == 3 || *v == 6),
        "fallback went 3 -> 6 directly: {during:?}"
    );
    let fallback_state = crate::harness::metric(
        &s.agent.metrics(),
        "qscale_rule_state",
        &[("rule", "fallback"), ("state", "fallback")],
    );
    assert_eq!(fallback_state, Some(1.0), "{}", s.agent.metrics());
    s.faults.set(SqsFault::None);
    s.recovers(name).await;
    // The first good poll ends fallback: the queue's 35 messages decide (7).
    converge(&s.agent, &s.kube, "fallback", 7, Duration::from_secs(10)).await;
    s.recorder.assert_within("fallback", 0, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_slow_answers_time_out_hold_replicas_and_recover() {
    let name = "slow";
    let mut s = stack(name, "", false).await;
    s.faults.set(SqsFault::Slow(Duration::from_secs(3)));
    ride_out_trigger_fault(&mut s.agent, &s.kube, name, 3, &["timeout"], HOLD).await;
    let metrics = s.agent.metrics();
    let polls = crate::harness::metric(
        &metrics,
        "qscale_poll_duration_seconds_bucket",
        &[("rule", name), ("le", "2.5")],
    );
    let total = crate::harness::metric(
        &metrics,
        "qscale_poll_duration_seconds_count",
        &[("rule", name)],
    );
    assert_eq!(
        polls, total,
        "every poll ended within 2.5 s although SQS took 3 s: the 1 s timeout bounds it\n{metrics}"
    );
    s.faults.set(SqsFault::None);
    s.recovers(name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_endpoint_down_or_resetting_holds_replicas_and_recovers() {
    let name = "unreachable";
    let mut s = stack(name, "", false).await;
    // No listener: connection refused.
    s.faults.set_down(true).await;
    ride_out_trigger_fault(
        &mut s.agent,
        &s.kube,
        name,
        3,
        &["network", "timeout"],
        HOLD,
    )
    .await;
    s.faults.set_down(false).await;
    s.moto.send(&s.queue, 5).await;
    converge(&s.agent, &s.kube, name, 4, Duration::from_secs(20)).await;
    // Connections accepted and dropped without an answer.
    s.faults.set(SqsFault::Reset);
    ride_out_trigger_fault(
        &mut s.agent,
        &s.kube,
        name,
        4,
        &["network", "timeout", "bad_response", "other"],
        HOLD,
    )
    .await;
    s.faults.set(SqsFault::None);
    s.moto.send(&s.queue, 15).await;
    converge(&s.agent, &s.kube, name, 7, Duration::from_secs(20)).await;
    s.finish(name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_queue_deleted_while_in_use_holds_replicas_and_recovers_when_recreated() {
    let name = "deleted";
    // By name: the URL is resolved once (GetQueueUrl) and must still work after the queue
    // comes back.
    let mut s = stack(name, "", true).await;
    let client = s.moto.client();
    client
        .delete_queue()
        .queue_url(&s.queue)
        .send()
        .await
        .expect("delete queue");
    ride_out_trigger_fault(&mut s.agent, &s.kube, name, 3, &["not_found"], HOLD).await;
    let errors = trigger_errors(&s.agent.metrics(), name, &["not_found"]);
    assert!(errors >= 2.0, "{errors}");
    let queue = s.moto.create_queue(name).await;
    assert_eq!(
        queue, s.queue,
        "moto gives the recreated queue the same URL"
    );
    s.moto.send(&queue, 35).await;
    converge(&s.agent, &s.kube, name, 7, Duration::from_secs(20)).await;
    s.finish(name);
}
