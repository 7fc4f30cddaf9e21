//! SOAK (bounded: about 2.5 minutes; `QSCALE_SOAK_SECONDS` sets the chaos phase, 120 s by
//! default). 200 rules polled every second (180 on 8 shared SQS queues behind the fault proxy,
//! 20 on one Prometheus query), queues flapping every few seconds, a random fault every 3 s
//! (API 500s, 409s, 429s, slow writes, dropped and expired watches, SQS throttling, slowness,
//! outage and access denied, Prometheus 500/NaN/slowness) and a rules-file edit every 25 s.
//!
//! Checks: qscale never exits or panics, its resident memory after the chaos is within 10% of
//! what it was after warming up, the running-tasks gauge stays at 200 (no task lost or leaked
//! across reloads; and, once the agent exports `qscale_runtime_alive_tasks`, no tokio task
//! leaked either), file descriptors and threads do not pile up, no target ever leaves its
//! rule's `[min, max]`, and when the chaos stops every target converges to what its trigger
//! says.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::harness::{metric, Kube, Launch, Qscale, Recorder, DEPLOYMENT, NS};
use crate::support::eventually;
use crate::support::fake_kube::on;
use crate::support::fake_prometheus::{FakePrometheus, PromFault};
use crate::support::moto::{Moto, REGION};
use crate::support::sqs_faults::{SqsFault, SqsFaults};

const RULES: usize = 200;
const QUEUES: usize = 8;

fn rule_name(i: usize) -> String {
    format!("w{i:03}")
}

fn is_prometheus(i: usize) -> bool {
    i % 10 == 9
}

fn bounds(i: usize) -> (i32, i32) {
    if i.is_multiple_of(2) {
        (0, 8)
    } else {
        (1, 6)
    }
}

/// Messages per replica; the edited file halves it for every seventh rule.
fn per_replica(i: usize, edited: bool) -> u32 {
    let base = if i.is_multiple_of(3) { 10 } else { 5 };
    if edited && i.is_multiple_of(7) {
        base / 2
    } else {
        base
    }
}

fn rules_file(queues: &[String], sqs: &str, prometheus: &str, edited: bool) -> String {
    let mut text = String::new();
    for i in 0..RULES {
        let (min, max) = bounds(i);
        let name = rule_name(i);
        text.push_str(&format!(
            "[[rules]]\nname = \"{name}\"\ntarget = {{ kind = \"Deployment\", name = \"{name}\" }}\n\
             min_replicas = {min}\nmax_replicas = {max}\npoll_interval = \"1s\"\n\
             cooldown = \"2s\"\ninitial_cooldown = \"0s\"\ntolerance = 0.0\n\n\
             [[rules.triggers]]\n"
        ));
        if is_prometheus(i) {
            text.push_str(&format!(
                "type = \"prometheus\"\nserver = \"{prometheus}\"\nquery = \"sum(jobs_waiting)\"\n\
                 target_per_replica = 10\ntimeout = \"1s\"\n\n"
            ));
        } else {
            text.push_str(&format!(
                "type = \"sqs\"\nqueue = \"{}\"\nendpoint = \"{sqs}\"\nregion = \"{REGION}\"\n\
                 target_per_replica = {}\ntimeout = \"1s\"\n\n",
                queues[i % QUEUES],
                per_replica(i, edited)
            ));
        }
    }
    text
}

/// Replaces the rules file in one step (as a ConfigMap mount does), so no half-written file
/// is ever read.
fn replace_file(path: &Path, text: &str) {
    let temporary = path.with_extension("toml.next");
    std::fs::write(&temporary, text).expect("write rules");
    std::fs::rename(&temporary, path).expect("replace rules");
}

/// Takes a queue from `from` to `to` visible messages (batches of 10 sent, or received and
/// deleted).
async fn set_depth(moto: &Moto, url: &str, from: usize, to: usize) {
    let client = moto.client();
    let mut depth = from;
    while depth < to {
        let batch: Vec<_> = (depth..to.min(depth + 10))
            .map(|n| {
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(format!("m{n}"))
                    .message_body("job")
                    .build()
                    .expect("entry")
            })
            .collect();
        depth += batch.len();
        client
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(batch))
            .send()
            .await
            .expect("send batch");
    }
    while depth > to {
        let want = (depth - to).min(10) as i32;
        let received = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(want)
            .visibility_timeout(600)
            .send()
            .await
            .expect("receive");
        let entries: Vec<_> = received
            .messages()
            .iter()
            .enumerate()
            .filter_map(|(n, m)| {
                aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                    .id(format!("d{n}"))
                    .receipt_handle(m.receipt_handle()?)
                    .build()
                    .ok()
            })
            .collect();
        assert!(
            !entries.is_empty(),
            "queue {url} has fewer than {depth} messages"
        );
        depth -= entries.len();
        client
            .delete_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .expect("delete batch");
    }
}

/// What qscale reads of a queue: visible plus in-flight messages.
async fn actual_depth(moto: &Moto, url: &str) -> usize {
    use aws_sdk_sqs::types::QueueAttributeName;
    let attributes = moto
        .client()
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .expect("queue attributes");
    let count = |name: QueueAttributeName| -> usize {
        attributes
            .attributes()
            .and_then(|a| a.get(&name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    count(QueueAttributeName::ApproximateNumberOfMessages)
        + count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
}

fn expected(i: usize, depths: &[usize], prometheus_value: f64, edited: bool) -> i32 {
    let (min, max) = bounds(i);
    let demand = if is_prometheus(i) {
        (prometheus_value / 10.0).ceil() as i32
    } else {
        let depth = depths[i % QUEUES] as f64;
        (depth / f64::from(per_replica(i, edited))).ceil() as i32
    };
    demand.clamp(min, max)
}

fn median(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

#[derive(Debug)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
    threads: u64,
    tasks: Option<f64>,
    /// `qscale_runtime_alive_tasks` (every tokio task alive in the agent), once exported.
    runtime_tasks: Option<f64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_200_rules_with_flapping_queues_and_random_faults_stays_flat() {
    let chaos = Duration::from_secs(
        std::env::var("QSCALE_SOAK_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(120),
    );
    let seed: u64 = std::env::var("QSCALE_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(7)
        });
    eprintln!("soak: seed {seed} (QSCALE_SOAK_SEED={seed} replays the same faults)");
    let mut rng = StdRng::seed_from_u64(seed);

    let moto = Moto::start();
    let proxy = SqsFaults::start(moto.endpoint()).await;
    let prometheus = FakePrometheus::start(30.0).await;
    let kube = Kube::start().await;
    let mut queues = Vec::new();
    let mut depths = vec![0usize; QUEUES];
    for (q, depth) in depths.iter_mut().enumerate() {
        let url = moto.create_queue(&format!("soak-{q}")).await;
        *depth = 5 * (q + 1);
        set_depth(&moto, &url, 0, *depth).await;
        queues.push(url);
    }
    let names: Vec<String> = (0..RULES).map(rule_name).collect();
    for name in &names {
        kube.create_deployment(NS, name, 1);
    }
    let recorder = Recorder::start_every(
        kube.fake.clone(),
        DEPLOYMENT,
        names.clone(),
        Duration::from_millis(100),
    );
    let mut edited = false;
    let rules = rules_file(&queues, &proxy.endpoint(), &prometheus.url(), edited);
    let mut launch = Launch::rules(&rules);
    launch.rust_log = "info".into();
    let mut agent = Qscale::launch(&kube, launch);
    let mut prometheus_value = 30.0;
    let started = eventually(Duration::from_secs(60), || {
        (0..RULES)
            .all(|i| kube.replicas_of(&names[i]) == expected(i, &depths, prometheus_value, edited))
    })
    .await;
    assert!(started.is_some(), "{}", agent.tail());

    // Chaos.
    let begin = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut next_fault = Duration::ZERO;
    let mut next_flap = Duration::from_secs(2);
    let mut next_edit = Duration::from_secs(25);
    let mut next_sample = Duration::ZERO;
    let mut faults_injected: BTreeMap<&'static str, usize> = BTreeMap::new();
    while begin.elapsed() < chaos {
        let now = begin.elapsed();
        assert!(
            agent.is_running(),
            "qscale exited during the soak\n{}",
            agent.tail()
        );
        if now >= next_sample {
            next_sample = now + Duration::from_secs(2);
            let metrics = agent.metrics();
            samples.push(Sample {
                at: now,
                rss_kib: agent.rss_kib().unwrap_or(0),
                fds: agent.open_fds().unwrap_or(0),
                threads: agent.threads().unwrap_or(0),
                tasks: metric(&metrics, "qscale_tasks", &[]),
                runtime_tasks: metric(&metrics, "qscale_runtime_alive_tasks", &[]),
            });
        }
        if now >= next_fault {
            next_fault = now + Duration::from_secs(3);
            // The previous fault ends, the next begins.
            kube.clear_faults();
            proxy.set(SqsFault::None);
            proxy.set_down(false).await;
            prometheus.set_fault(PromFault::None);
            let fault = match rng.random_range(0..13) {
                0 => {
                    kube.fail_next(on("PATCH", "/scale"), 20, 500);
                    "api 500"
                }
                1 => {
                    kube.fail_every_other(on("PATCH", "/scale"), 409);
                    "api 409"
                }
                2 => {
                    kube.fail_next(on("PATCH", "/scale"), 10, 429);
                    "api 429"
                }
                3 => {
                    kube.set_delay(on("PATCH", "/scale"), Duration::from_millis(1500));
                    "api slow"
                }
                4 => {
                    kube.drop_watches();
                    "watches dropped"
                }
                5 => {
                    kube.compact_history();
                    kube.drop_watches();
                    "watches expired"
                }
                6 => {
                    proxy.set(SqsFault::Throttling);
                    "sqs throttled"
                }
                7 => {
                    proxy.set(SqsFault::Slow(Duration::from_secs(2)));
                    "sqs slow"
                }
                8 => {
                    proxy.set_down(true).await;
                    "sqs down"
                }
                9 => {
                    proxy.set(SqsFault::AccessDenied);
                    "sqs access denied"
                }
                10 => {
                    prometheus.set_fault(PromFault::Status(500, "boom".into()));
                    "prometheus 500"
                }
                11 => {
                    prometheus.set_fault(PromFault::NaN);
                    "prometheus NaN"
                }
                _ => {
                    prometheus.set_fault(PromFault::Slow(Duration::from_secs(2)));
                    "prometheus slow"
                }
            };
            *faults_injected.entry(fault).or_default() += 1;
        }
        if now >= next_flap {
            next_flap = now + Duration::from_secs(5);
            let q = rng.random_range(0..QUEUES);
            let depth = rng.random_range(0..=60);
            set_depth(&moto, &queues[q], depths[q], depth).await;
            depths[q] = depth;
            prometheus_value = f64::from(rng.random_range(0..=70));
            prometheus.set_value(prometheus_value);
        }
        if now >= next_edit {
            next_edit = now + Duration::from_secs(25);
            edited = !edited;
            replace_file(
                &agent.rules_path,
                &rules_file(&queues, &proxy.endpoint(), &prometheus.url(), edited),
            );
            *faults_injected.entry("rules edited").or_default() += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("soak: faults injected {faults_injected:?}");

    // Calm: every fault cleared, queues set one last time; everything converges.
    kube.clear_faults();
    proxy.set(SqsFault::None);
    proxy.set_down(false).await;
    prometheus.set_fault(PromFault::None);
    prometheus_value = 40.0;
    prometheus.set_value(prometheus_value);
    for (q, url) in queues.iter().enumerate() {
        let depth = 7 * (q + 1);
        set_depth(&moto, url, depths[q], depth).await;
        depths[q] = depth;
    }
    let mut actual = Vec::new();
    for url in &queues {
        actual.push(actual_depth(&moto, url).await);
    }
    assert_eq!(actual, depths, "the queues hold what the test thinks");
    let converged = eventually(Duration::from_secs(60), || {
        (0..RULES)
            .all(|i| kube.replicas_of(&names[i]) == expected(i, &depths, prometheus_value, edited))
    })
    .await;
    let wrong: Vec<String> = (0..RULES)
        .filter(|i| kube.replicas_of(&names[*i]) != expected(*i, &depths, prometheus_value, edited))
        .map(|i| {
            format!(
                "{} has {} (expected {})",
                names[i],
                kube.replicas_of(&names[i]),
                expected(i, &depths, prometheus_value, edited)
            )
        })
        .collect();
    assert!(
        converged.is_some(),
        "after the chaos: {wrong:?}\n{}",
        agent.tail()
    );
    assert!(agent.is_running(), "{}", agent.tail());

    // Bounds, the whole time.
    for (i, name) in names.iter().enumerate() {
        let (min, max) = bounds(i);
        recorder.assert_within(name, min, max);
    }

    // No task lost or leaked: the gauge says 200 at every sample, reloads included.
    let off: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.tasks != Some(RULES as f64))
        .collect();
    assert!(off.is_empty(), "qscale_tasks was not {RULES}: {off:?}");

    // Memory flat: after the chaos, within 10% of what it was after warming up (the samples
    // between a third and a half of the chaos phase: 40-60 s of 120 s).
    let window = |from: u64, to: u64| -> Vec<&Sample> {
        samples
            .iter()
            .filter(|s| s.at >= Duration::from_secs(from) && s.at < Duration::from_secs(to))
            .collect()
    };
    let end = chaos.as_secs();
    let warm = window(end / 3, end / 2);
    let last = window(end.saturating_sub(20), end + 1);
    assert!(
        !warm.is_empty() && !last.is_empty(),
        "too short a soak to compare: {samples:?}"
    );
    let baseline = median(&mut warm.iter().map(|s| s.rss_kib).collect::<Vec<_>>());
    let final_rss = median(&mut last.iter().map(|s| s.rss_kib).collect::<Vec<_>>());
    let growth = final_rss as f64 / baseline as f64 - 1.0;
    eprintln!(
        "soak: RSS {baseline} KiB after warm-up, {final_rss} KiB at the end ({:+.1}%); samples: {:?}",
        growth * 100.0,
        samples
            .iter()
            .map(|s| (s.at.as_secs(), s.rss_kib, s.fds, s.threads))
            .collect::<Vec<_>>()
    );
    assert!(
        growth < 0.10,
        "RSS grew {:.1}% ({baseline} -> {final_rss} KiB)",
        growth * 100.0
    );
    // No descriptors or threads piling up.
    let fds_base = warm.iter().map(|s| s.fds).max().unwrap_or(0);
    let fds_end = last.iter().map(|s| s.fds).min().unwrap_or(0);
    assert!(
        fds_end <= fds_base + 16,
        "open file descriptors grew from {fds_base} to {fds_end}"
    );
    let threads_base = warm.iter().map(|s| s.threads).max().unwrap_or(0);
    let threads_end = last.iter().map(|s| s.threads).min().unwrap_or(0);
    assert!(
        threads_end <= threads_base + 8,
        "threads grew from {threads_base} to {threads_end}"
    );
    // Every tokio task, when the agent exports the count (a leaked watch, Event or connection
    // task shows here, not in the rule-task gauge).
    let runtime_tasks = |window: &[&Sample]| -> Option<Vec<u64>> {
        window
            .iter()
            .map(|s| s.runtime_tasks.map(|t| t as u64))
            .collect()
    };
    if let (Some(mut warm_tasks), Some(mut last_tasks)) =
        (runtime_tasks(&warm), runtime_tasks(&last))
    {
        let before = median(&mut warm_tasks);
        let after = median(&mut last_tasks);
        assert!(
            after as f64 <= before as f64 * 1.25 + 10.0,
            "tokio tasks alive grew from {before} to {after}"
        );
    }
    agent.assert_no_panic();
    kube.assert_least_privilege();
}
