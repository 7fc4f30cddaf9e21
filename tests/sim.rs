//! `qscale simulate`: the queue model, the trace formats, the shared policy tick, the KEDA + HPA
//! reference model on hand-computed cases, the bundled traces and the command itself.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use proptest::prelude::*;

use qscale::config::{self, Format, Rule};
use qscale::policy::{self, Memory, Sample, TargetState, Timestamp};
use qscale::sim::compare::{compare, reference_metrics, Setup};
use qscale::sim::driver::{policy_tick, simulate, Controller, Load, QscaleController, SimConfig};
use qscale::sim::generate::synthetic_traces;
use qscale::sim::queue::QueueModel;
use qscale::sim::reference::{KedaHpa, Metric, ReferenceParams};
use qscale::sim::report::Drain;
use qscale::sim::sweep::Sweep;
use qscale::sim::trace::{self, TraceError, TraceKind};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn rule(extra: &str) -> Rule {
    let text = format!(
        r#"
        [[rules]]
        name = "worker"
        target = {{ kind = "Deployment", name = "worker" }}
        max_replicas = 20
        {extra}
        [[rules.triggers]]
        type = "sqs"
        queue = "q"
        target_per_replica = 50
        "#
    );
    let mut file = config::parse("test.toml", &text, Format::Toml).expect("valid test rule");
    std::sync::Arc::unwrap_or_clone(file.rules.remove(0))
}

fn setup(rule: Rule) -> Setup {
    Setup {
        rule,
        sim: SimConfig {
            step_ms: 1000,
            service_rate: 50.0 / 30.0,
            startup_delay_ms: 30_000,
            initial_replicas: 0,
        },
        reference: ReferenceParams::default(),
        tail_ms: 1_800_000,
    }
}

// ---------------------------------------------------------------------------------------------
// Queue model

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the arrivals and however the pool is resized, no message is made or lost.
    #[test]
    fn queue_conserves_messages(
        service_rate in 0.1f64..20.0,
        startup_delay_s in 0u64..60,
        steps in proptest::collection::vec((0u64..200, proptest::option::of(0u32..30)), 1..400),
    ) {
        let mut queue = QueueModel::new(service_rate, startup_delay_s * 1000, 1);
        for (k, (arrivals, resize)) in steps.iter().enumerate() {
            let now = k as u64 * 1000;
            queue.begin_step(now, 1000, *arrivals);
            prop_assert_eq!(queue.arrived(), queue.consumed() + queue.visible() + queue.in_flight());
            if let Some(replicas) = resize {
                queue.set_replicas(now, *replicas);
                prop_assert_eq!(queue.replicas(), *replicas);
                prop_assert!(queue.ready_replicas() <= *replicas);
            }
            prop_assert_eq!(queue.arrived(), queue.consumed() + queue.visible() + queue.in_flight());
            queue.end_step();
            prop_assert_eq!(queue.in_flight(), 0);
            prop_assert_eq!(queue.arrived(), queue.consumed() + queue.visible());
        }
        prop_assert_eq!(queue.ages().total(), queue.consumed());
    }

    /// A whole run: everything the trace brought is either done or still queued at the end.
    #[test]
    fn simulation_conserves_messages(rates in proptest::collection::vec(0.0f64..80.0, 2..60)) {
        let mut csv = String::from("time_s,arrival_rate\n");
        for (i, rate) in rates.iter().enumerate() {
            csv.push_str(&format!("{},{rate:.2}\n", i * 20));
        }
        let trace = trace::parse("random.csv", &csv).expect("valid trace");
        let expected: f64 = trace.segments.iter().map(|s| s.amount).sum();
        let result = compare(&trace, &setup(rule("")), &mut |_| {}).expect("runs");
        for run in [&result.qscale, &result.reference] {
            prop_assert_eq!(run.arrived, run.consumed + run.unfinished);
            prop_assert!((run.arrived as f64 - expected).abs() <= 1.0);
            prop_assert_eq!(run.ages.total(), run.arrived);
        }
    }
}

#[test]
fn workers_keep_up_only_at_their_service_rate() {
    // 10 msg/s for 60 s into a pool of 3 replicas at 2 msg/s: 4 msg/s pile up.
    let mut queue = QueueModel::new(2.0, 0, 3);
    for k in 0..60 {
        queue.begin_step(k * 1000, 1000, 10);
        queue.end_step();
    }
    assert_eq!(queue.consumed(), 360);
    assert_eq!(queue.visible(), 240);
    // FIFO: the 360 done are the first 36 s of arrivals, so the oldest waiting is 24 s old.
    assert_eq!(queue.oldest_age_ms(60_000), 24_000);
}

// ---------------------------------------------------------------------------------------------
// Traces

#[test]
fn reads_the_three_formats() {
    let rate = trace::parse("r.csv", "# c\ntime_s,arrival_rate\n0,2\n10,4\n").expect("valid");
    assert_eq!(rate.kind, TraceKind::Arrivals);
    assert_eq!(rate.duration_ms(), 20_000);
    assert_eq!(rate.arrivals_per_step(1000, 25).iter().sum::<u64>(), 60);

    let value = trace::parse("v.csv", "time,value\r\n5,100\r\n35,0\r\n").expect("valid");
    assert_eq!(value.kind, TraceKind::Values);
    let values = value.values_per_step(15_000, 5);
    assert_eq!(values, vec![100.0, 100.0, 0.0, 0.0, 0.0]);

    let minutes = trace::parse("m.csv", "minute,count\n480,30\n481,0\n483,7\n").expect("valid");
    assert_eq!(minutes.duration_ms(), 4 * 60_000);
    let per_second = minutes.arrivals_per_step(1000, 240);
    // 30 in a minute: one every other second, spread uniformly.
    assert_eq!(per_second[..60].iter().sum::<u64>(), 30);
    assert!(per_second[..60].iter().all(|&a| a <= 1));
    // The missing minute 482 brings nothing; minute 483 exactly its 7.
    assert_eq!(per_second[120..180].iter().sum::<u64>(), 0);
    assert_eq!(per_second[180..].iter().sum::<u64>(), 7);
}

#[test]
fn reports_every_bad_row_with_its_line_number() {
    let text = "# comment\ntime_s,arrival_rate\n0,1\n10,x\n0,2\n20,-1\n30,1,2\n40,inf\n";
    let Err(TraceError::Invalid { problems, .. }) = trace::parse("bad.csv", text) else {
        panic!("expected an invalid trace");
    };
    let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, vec![4, 5, 6, 7, 8]);
    assert!(problems[0].message.contains("not a number"), "{problems:?}");
    assert!(problems[1].message.contains("line 3"), "{problems:?}");
    let message = trace::parse("bad.csv", text).unwrap_err().to_string();
    assert!(message.starts_with("bad.csv: 5 problems"), "{message}");
    assert!(message.contains("line 7: expected 2 comma-separated columns, found 3"));

    let header = trace::parse("h.csv", "\n\nseconds,rate\n0,1\n")
        .unwrap_err()
        .to_string();
    assert!(header.contains("line 3: unknown header"), "{header}");
    let fraction = trace::parse("m.csv", "minute,count\n1.5,3\n")
        .unwrap_err()
        .to_string();
    assert!(
        fraction.contains("line 2: minute 1.5 is not a whole number"),
        "{fraction}"
    );
    assert!(trace::parse("e.csv", "").is_err());
    assert!(trace::parse("one.csv", "time_s,value\n0,1\n").is_err());
}

#[test]
fn bundled_synthetic_traces_are_what_the_generator_writes() {
    for generated in synthetic_traces() {
        let path = repo(&format!("config/traces/{}.csv", generated.name));
        let committed = std::fs::read_to_string(&path).expect("committed trace");
        assert_eq!(
            committed,
            generated.to_csv(),
            "{} is stale: run `qscale simulate --generate-traces config/traces`",
            path.display()
        );
        let trace = trace::load(&path).expect("the generated trace parses");
        assert_eq!(trace.kind, TraceKind::Arrivals);
    }
}

#[test]
fn azure_traces_parse_with_the_totals_of_their_readme() {
    let expected = [
        ("azure2019_queue_steady.csv", 95_814),
        ("azure2019_queue_ramp.csv", 273_379),
        ("azure2019_queue_periodic_bursts.csv", 11_484),
        ("azure2019_queue_sparse_spikes.csv", 716),
        ("azure2019_http_spiky.csv", 3_528),
    ];
    for (file, total) in expected {
        let trace = trace::load(&repo(&format!("config/traces/azure2019/{file}"))).expect(file);
        assert_eq!(trace.duration_ms(), 480 * 60_000, "{file}");
        let steps = trace.arrivals_per_step(1000, 480 * 60);
        assert_eq!(steps.iter().sum::<u64>(), total, "{file}");
    }
}

// ---------------------------------------------------------------------------------------------
// qscale's policy: the simulator makes the agent's decision

#[test]
fn the_simulator_decides_exactly_as_policy_decide() {
    let rule = rule(
        "scale_down = { stabilization_window = \"1m\", policies = [{ max_percent = 50, period = \"1m\" }] }",
    );
    let trace = trace::load(&repo("config/traces/spiky_noise.csv")).expect("trace");
    let arrivals = trace.arrivals_per_step(1000, 9000);
    let sim = setup(rule.clone()).sim;
    let mut controller = QscaleController::new(&rule);
    let run = simulate(
        Load::Arrivals(&arrivals),
        &sim,
        &mut controller,
        &mut |_| {},
    );
    assert!(controller.ticks.len() >= 9000 / 15);

    // Replay the ticks as the agent would make them, straight through policy::decide.
    let mut memory = Memory::default();
    let mut changes = 0;
    for tick in &controller.ticks {
        assert_eq!(tick.at_ms % 15_000, 0, "a tick every poll_interval");
        let samples = vec![Sample::Value(tick.value); rule.triggers.len()];
        let target = TargetState {
            current_replicas: tick.current_replicas,
            ..TargetState::default()
        };
        let decision = policy::decide(
            &rule,
            &samples,
            &target,
            &memory,
            Timestamp::from_millis(tick.at_ms),
        );
        assert_eq!(
            decision.desired_replicas, tick.desired_replicas,
            "at {}",
            tick.at_ms
        );
        assert_eq!(decision.reason, tick.reason, "at {}", tick.at_ms);
        // The simulator applied the decision and the queue saw what the trigger reads.
        let k = (tick.at_ms / 1000) as usize;
        assert_eq!(run.series.replicas[k], decision.desired_replicas);
        let depth = run.series.visible[k] + run.series.in_flight[k];
        assert_eq!(tick.value, depth as f64);
        changes += usize::from(tick.desired_replicas != tick.current_replicas);
        memory = decision.memory;
    }
    assert_eq!(changes, run.scale_events);
    assert!(changes > 4, "the trace should make the rule move");
}

#[test]
fn policy_tick_feeds_every_trigger_the_same_value() {
    let mut two = rule("");
    let mut second = two.triggers[0].clone();
    second.name = Some("second".into());
    second.target_per_replica = 10.0;
    two.triggers.push(second);
    let memory = Memory::default();
    let tick = policy_tick(&two, 95.0, 0, &memory, 60_000);
    let direct = policy::decide(
        &two,
        &[Sample::Value(95.0), Sample::Value(95.0)],
        &TargetState::default(),
        &memory,
        Timestamp::from_secs(60),
    );
    assert_eq!(tick, direct);
    assert_eq!(tick.desired_replicas, 10);
}

// ---------------------------------------------------------------------------------------------
// The KEDA + HPA reference model, on hand-computed cases

fn reference(min_replicas: u32) -> KedaHpa {
    let params = ReferenceParams {
        sync_offset_ms: 0,
        ..ReferenceParams::default()
    };
    let metrics = vec![Metric {
        target: 50.0,
        activation: 0.0,
    }];
    KedaHpa::new(params, metrics, min_replicas, 20)
}

/// Drives the model once a second for `seconds`, feeding its own replica count back, and
/// returns the count after each second.
fn drive(model: &mut KedaHpa, start: u32, seconds: u64, value: impl Fn(u64) -> f64) -> Vec<u32> {
    let mut replicas = start;
    (0..seconds)
        .map(|t| {
            replicas = model.control(t * 1000, value(t), replicas);
            replicas
        })
        .collect()
}

#[test]
fn keda_activates_at_its_poll_and_the_hpa_scales_up_by_max_4_pods_or_100_percent() {
    let mut model = reference(0);
    let replicas = drive(&mut model, 0, 100, |t| if t >= 1 { 1000.0 } else { 0.0 });
    // Active from 1 s, but KEDA only looks every 30 s; the HPA (sync at 30 s, first) sees 0.
    assert_eq!(replicas[29], 0);
    assert_eq!(replicas[30], 1);
    // Then ceil(1000 / 50) = 20 is the goal, reached by max(+4, x2) per 15 s.
    assert_eq!(replicas[44], 1);
    assert_eq!(replicas[45], 5);
    assert_eq!(replicas[60], 10);
    assert_eq!(replicas[75], 20);
    assert_eq!(replicas[99], 20);
}

#[test]
fn the_hpa_holds_replicas_through_its_300_s_scale_down_window() {
    let mut model = reference(0);
    // 20 replicas' worth until 300 s, then 2 replicas' worth (still active: no step to zero).
    let replicas = drive(
        &mut model,
        20,
        700,
        |t| if t < 300 { 1000.0 } else { 100.0 },
    );
    // The last proposal of 20 was at 285 s; it leaves the window at 285 + 300 = 585 s.
    assert!(replicas[..585].iter().all(|&r| r == 20), "held at 20");
    // 100 % per 15 s allows the whole step down at once.
    assert_eq!(replicas[585], 2);
    assert_eq!(replicas[699], 2);
}

#[test]
fn keda_scales_to_zero_after_its_cooldown_period_of_inactivity() {
    let mut model = reference(0);
    let replicas = drive(&mut model, 1, 500, |t| if t < 100 { 5.0 } else { 0.0 });
    // Last active poll at 90 s; zero at the first poll after 90 + 300 s, at 420 s. The HPA
    // keeps its minimum of 1 until then.
    assert!(replicas[..420].iter().all(|&r| r == 1));
    assert_eq!(replicas[420], 0);
    // With minReplicaCount 1, never zero.
    let mut floor = reference(1);
    let replicas = drive(&mut floor, 1, 500, |t| if t < 100 { 5.0 } else { 0.0 });
    assert!(replicas.iter().all(|&r| r == 1));
    // Below it, KEDA restores it even when idle (the HPA is disabled at zero).
    let mut idle = reference(1);
    assert_eq!(drive(&mut idle, 0, 1, |_| 0.0), vec![1]);
}

#[test]
fn the_hpa_tolerance_is_on_the_usage_ratio() {
    let mut model = reference(0);
    // 540 / (50 * 10) = 1.08: within 0.1, hold.
    assert_eq!(model.hpa_sync(0, 540.0, 10), 10);
    // 560 / 500 = 1.12: ceil(560 / 50) = 12.
    assert_eq!(model.hpa_sync(15_000, 560.0, 10), 12);
    // At zero replicas the HPA does nothing; that step belongs to KEDA.
    assert_eq!(model.hpa_sync(30_000, 560.0, 0), 0);
}

#[test]
fn reference_model_uses_the_rules_target_and_activation() {
    let r = rule("");
    assert_eq!(
        reference_metrics(&r),
        vec![Metric {
            target: 50.0,
            activation: 0.0
        }]
    );
}

// ---------------------------------------------------------------------------------------------
// Whole comparisons, sweeps and the command

#[test]
fn both_models_drain_the_burst_and_the_summary_says_so() {
    let trace = trace::load(&repo("config/traces/burst.csv")).expect("trace");
    let result = compare(&trace, &setup(rule("")), &mut |_| {}).expect("runs");
    for summary in [&result.qscale_summary, &result.reference_summary] {
        assert!(matches!(summary.drain, Drain::After(_)), "{summary:?}");
        assert_eq!(summary.peak_replicas, 20);
        assert_eq!(summary.unfinished, 0);
        let age = summary.age.expect("queue model");
        assert!(age.p50_ms <= age.p99_ms && age.p99_ms <= age.max_ms);
    }
    // Both end at zero after the idle tail.
    assert_eq!(result.qscale.series.replicas.last(), Some(&0));
    assert_eq!(result.reference.series.replicas.last(), Some(&0));
}

#[test]
fn a_value_trace_has_no_queue_figures() {
    let trace = trace::parse("v.csv", "time_s,value\n0,0\n60,400\n600,0\n660,0\n").expect("ok");
    let result = compare(&trace, &setup(rule("")), &mut |_| {}).expect("runs");
    assert!(!result.queue_model);
    assert_eq!(result.qscale_summary.age, None);
    assert_eq!(result.qscale_summary.drain, Drain::NotApplicable);
    assert_eq!(result.qscale_summary.peak_replicas, 8);
    assert_eq!(result.reference_summary.peak_replicas, 8);
}

#[test]
fn sweeps_parse_and_apply() {
    let sweep: Sweep = "cooldown=1m,2m,5m".parse().expect("valid");
    assert_eq!(sweep.values.len(), 3);
    let mut s = setup(rule(""));
    sweep.apply(&sweep.values[0], &mut s).expect("applies");
    assert_eq!(s.rule.cooldown, config::Dur::from_secs(60));
    assert!(!sweep.key.affects_reference());

    let target: Sweep = "target_per_replica=10,20".parse().expect("valid");
    target.apply(&target.values[1], &mut s).expect("applies");
    assert_eq!(s.rule.triggers[0].target_per_replica, 20.0);
    assert!(target.key.affects_reference());

    assert!("colldown=1m"
        .parse::<Sweep>()
        .unwrap_err()
        .contains("unknown sweep key"));
    assert!("cooldown=soon".parse::<Sweep>().is_err());
    assert!("cooldown=".parse::<Sweep>().is_err());
    let max: Sweep = "max_replicas=0".parse().expect("parses");
    assert!(max.apply(&max.values[0], &mut s).is_err());
}

#[test]
fn an_eight_hour_trace_at_one_second_steps_is_quick() {
    let trace =
        trace::load(&repo("config/traces/azure2019/azure2019_queue_ramp.csv")).expect("trace");
    let started = Instant::now();
    let result = compare(&trace, &setup(rule("")), &mut |_| {}).expect("runs");
    let elapsed = started.elapsed();
    assert_eq!(result.qscale.series.replicas.len(), (480 + 30) * 60);
    // Generous for a debug build on a busy machine; it takes well under a second.
    assert!(elapsed.as_secs() < 20, "took {elapsed:?}");
}

#[test]
fn simulate_command_prints_both_models_and_writes_the_chart_and_series() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svg = dir.path().join("out.svg");
    let csv = dir.path().join("out.csv");
    let output = Command::new(env!("CARGO_BIN_EXE_qscale"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "simulate",
            "--rules",
            "config/rules.example.toml",
            "--rule",
            "orders-worker",
            "--trace",
            "config/traces/burst.csv",
            "--svg",
        ])
        .arg(&svg)
        .arg("--csv")
        .arg(&csv)
        .args(["--sweep", "cooldown=1m,5m"])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for needle in [
        "replica·s",
        "age p99",
        "\nqscale ",
        "\nkeda+hpa ",
        "cooldown=1m",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing in:\n{stdout}");
    }
    let chart = std::fs::read_to_string(&svg).expect("svg written");
    assert!(chart.starts_with("<svg"));
    assert!(chart.contains("qscale") && chart.contains("keda+hpa"));
    let series = std::fs::read_to_string(&csv).expect("csv written");
    let header = series.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("time_s,load,qscale_trigger_value"),
        "{header}"
    );
    assert!(header.contains("keda_hpa_replicas"), "{header}");
    assert_eq!(series.lines().count(), 1 + (90 + 30) * 60);

    let bad = Command::new(env!("CARGO_BIN_EXE_qscale"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["simulate", "--rules", "config/rules.example.toml"])
        .args(["--rule", "nope", "--trace", "config/traces/burst.csv"])
        .output()
        .expect("runs");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no rule \"nope\""));
}

#[test]
fn simulations_md_is_what_the_tool_reports() {
    let output = Command::new("bash")
        .arg("config/traces/simulate-all.sh")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("QSCALE", env!("CARGO_BIN_EXE_qscale"))
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let generated = String::from_utf8(output.stdout).expect("utf-8");
    let doc = std::fs::read_to_string(repo("SIMULATIONS.md")).expect("SIMULATIONS.md");
    let begin = "<!-- BEGIN simulate-all.sh output -->\n";
    let start = doc.find(begin).expect("begin marker") + begin.len();
    let end = doc
        .find("<!-- END simulate-all.sh output -->")
        .expect("end marker");
    assert!(
        doc[start..end] == generated,
        "SIMULATIONS.md is stale: run `cargo build && bash config/traces/simulate-all.sh --update`"
    );
}
