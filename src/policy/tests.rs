//! Table tests: one per branch of the decision.

use super::*;
use crate::config::{self, Format, Rule};

const T0: u64 = 1_000_000;

fn rule(extra: &str) -> Rule {
    let text = format!(
        r#"
        [[rules]]
        name = "r"
        target = {{ kind = "Deployment", name = "worker" }}
        min_replicas = 0
        max_replicas = 10
        cooldown = "5m"
        initial_cooldown = "0s"
        {extra}
        [[rules.triggers]]
        type = "sqs"
        queue = "q"
        target_per_replica = 5
        "#
    );
    let mut file = config::parse("test.toml", &text, Format::Toml).expect("valid test rule");
    std::sync::Arc::unwrap_or_clone(file.rules.remove(0))
}

fn two_trigger_rule() -> Rule {
    let mut r = rule("");
    let mut second = r.triggers[0].clone();
    second.name = Some("second".into());
    second.target_per_replica = 1.0;
    r.triggers.push(second);
    r
}

fn at(secs: u64) -> Timestamp {
    Timestamp::from_secs(T0 + secs)
}

fn state(current: u32) -> TargetState {
    TargetState {
        current_replicas: current,
        ..TargetState::default()
    }
}

/// Memory of a rule that has been running for an hour, last scaled up long ago.
fn settled() -> Memory {
    Memory {
        first_seen_at: Some(at(0)),
        last_scale_up_at: Some(at(0)),
        ..Memory::default()
    }
}

fn run(r: &Rule, value: f64, current: u32, memory: &Memory, secs: u64) -> Decision {
    decide(
        r,
        &[Sample::Value(value)],
        &state(current),
        memory,
        at(secs),
    )
}

#[test]
fn scales_up_to_ceil_of_value_over_target() {
    let d = run(&rule(""), 12.0, 0, &settled(), 3600);
    assert_eq!((d.desired_replicas, d.reason), (3, Reason::Metrics));
    assert_eq!(d.memory.last_scale_up_at, Some(at(3600)));
    assert_eq!(d.demand, Some(2.4));
}

#[test]
fn takes_the_maximum_over_triggers() {
    let r = two_trigger_rule();
    let samples = [Sample::Value(10.0), Sample::Value(7.0)];
    let d = decide(&r, &samples, &state(0), &settled(), at(3600));
    assert_eq!(d.desired_replicas, 7);
}

#[test]
fn clamps_to_max_replicas() {
    let d = run(&rule(""), 1000.0, 2, &settled(), 3600);
    assert_eq!((d.desired_replicas, d.reason), (10, Reason::ClampedToMax));
}

#[test]
fn clamps_to_min_replicas() {
    let r = Rule {
        min_replicas: 2,
        ..rule("")
    };
    let d = run(&r, 0.0, 2, &settled(), 3600);
    assert_eq!((d.desired_replicas, d.reason), (2, Reason::ClampedToMin));
}

#[test]
fn activation_holds_at_zero_below_threshold() {
    let mut r = rule("");
    r.triggers[0].activation = 5.0;
    let d = run(&r, 4.0, 0, &settled(), 3600);
    assert_eq!((d.desired_replicas, d.reason), (0, Reason::Inactive));
    assert!(!d.status.active);
    let d = run(&r, 6.0, 0, &settled(), 3600);
    assert_eq!(d.desired_replicas, 2);
    assert!(d.status.active);
}

#[test]
fn active_never_gives_fewer_than_one() {
    let d = run(&rule(""), 0.2, 0, &settled(), 3600);
    assert_eq!(d.desired_replicas, 1);
}

#[test]
fn tolerance_band_keeps_current() {
    // demand 10.4 against 10 replicas: 4 % off, inside the default 10 % band.
    let d = run(&rule(""), 52.0, 10, &settled(), 3600);
    assert_eq!(
        (d.desired_replicas, d.reason),
        (10, Reason::WithinTolerance)
    );
    // demand 8.8: 12 % off, outside.
    let d = run(&rule(""), 44.0, 10, &settled(), 3600);
    assert_eq!(d.desired_replicas, 9);
}

#[test]
fn no_scale_down_within_cooldown_of_last_scale_up() {
    let mut memory = settled();
    memory.last_scale_up_at = Some(at(3600));
    let d = run(&rule(""), 10.0, 5, &memory, 3600 + 299);
    assert_eq!((d.desired_replicas, d.reason), (5, Reason::Cooldown));
    assert!(d.status.in_cooldown);
    let d = run(&rule(""), 10.0, 5, &memory, 3600 + 300);
    assert_eq!((d.desired_replicas, d.reason), (2, Reason::Metrics));
}

#[test]
fn cooldown_covers_every_step_down_not_only_to_zero() {
    let mut memory = settled();
    memory.last_scale_up_at = Some(at(3600));
    // 8 -> 4 is a step between non-zero counts: still held.
    let d = run(&rule(""), 20.0, 8, &memory, 3660);
    assert_eq!(d.desired_replicas, 8);
}

#[test]
fn last_step_to_zero_waits_for_a_cooldown_of_inactivity() {
    let mut memory = settled();
    memory.last_active_at = Some(at(3600));
    let d = run(&rule(""), 0.0, 3, &memory, 3660);
    assert_eq!((d.desired_replicas, d.reason), (1, Reason::Cooldown));
    let d = run(&rule(""), 0.0, 1, &d.memory, 3660 + 1);
    assert_eq!(d.desired_replicas, 1);
    let d = run(&rule(""), 0.0, 1, &d.memory, 3600 + 300);
    assert_eq!((d.desired_replicas, d.reason), (0, Reason::Inactive));
}

#[test]
fn initial_cooldown_holds_scale_down_after_first_sight() {
    let r = rule("");
    let r = Rule {
        initial_cooldown: Some(config::Dur::from_secs(120)),
        ..r
    };
    let d = run(&r, 0.0, 4, &Memory::default(), 0);
    assert_eq!((d.desired_replicas, d.reason), (4, Reason::InitialCooldown));
    assert_eq!(d.memory.first_seen_at, Some(at(0)));
    let d = run(&r, 0.0, 4, &d.memory, 119);
    assert_eq!(d.desired_replicas, 4);
    let d = run(&r, 0.0, 4, &d.memory, 120);
    assert_eq!(d.desired_replicas, 0);
}

#[test]
fn initial_cooldown_defaults_to_cooldown() {
    let r = Rule {
        initial_cooldown: None,
        ..rule("")
    };
    assert_eq!(r.initial_cooldown(), r.cooldown);
    let d = run(&r, 0.0, 4, &Memory::default(), 0);
    assert_eq!(d.reason, Reason::InitialCooldown);
}

#[test]
fn scale_down_stabilization_keeps_the_highest_recent_recommendation() {
    let r = rule("scale_down = { stabilization_window = \"2m\" }");
    let d1 = run(&r, 40.0, 8, &settled(), 3600);
    assert_eq!(d1.desired_replicas, 8);
    let d2 = run(&r, 10.0, 8, &d1.memory, 3660);
    assert_eq!((d2.desired_replicas, d2.reason), (8, Reason::Stabilized));
    // 8 left the window; the highest left is 2.
    let d3 = run(&r, 10.0, 8, &d2.memory, 3721);
    assert_eq!(d3.desired_replicas, 2);
}

#[test]
fn scale_up_stabilization_keeps_the_lowest_recent_recommendation() {
    let r = rule("scale_up = { stabilization_window = \"1m\" }");
    let d1 = run(&r, 10.0, 2, &settled(), 3600);
    assert_eq!(d1.desired_replicas, 2);
    let d2 = run(&r, 40.0, 2, &d1.memory, 3630);
    assert_eq!((d2.desired_replicas, d2.reason), (2, Reason::Stabilized));
    let d3 = run(&r, 40.0, 2, &d2.memory, 3661);
    assert_eq!(d3.desired_replicas, 8);
}

#[test]
fn scale_up_rate_limit_by_pods_counts_changes_in_the_period() {
    let r = rule("scale_up = { policies = [{ max_pods = 2, period = \"60s\" }] }");
    let d1 = run(&r, 50.0, 2, &settled(), 3600);
    assert_eq!((d1.desired_replicas, d1.reason), (4, Reason::RateLimited));
    // Within the same period the 2 pods already added count: no further step.
    let d2 = run(&r, 50.0, 4, &d1.memory, 3630);
    assert_eq!(d2.desired_replicas, 4);
    let d3 = run(&r, 50.0, 4, &d2.memory, 3660);
    assert_eq!(d3.desired_replicas, 6);
}

#[test]
fn scale_up_rate_limit_by_percent_and_select_max() {
    let r = rule(
        "scale_up = { policies = [{ max_percent = 100, period = \"15s\" }, { max_pods = 4, period = \"15s\" }] }",
    );
    // max(3 * 2, 3 + 4) = 7
    let d = run(&r, 50.0, 3, &settled(), 3600);
    assert_eq!(d.desired_replicas, 7);
    // From zero, a percentage alone still allows one replica.
    let r = rule("scale_up = { policies = [{ max_percent = 50, period = \"15s\" }] }");
    let d = run(&r, 50.0, 0, &settled(), 3600);
    assert_eq!(d.desired_replicas, 1);
}

#[test]
fn scale_down_rate_limit_by_percent() {
    let r = rule("scale_down = { policies = [{ max_percent = 50, period = \"1m\" }] }");
    let d = run(&r, 5.0, 10, &settled(), 3600);
    assert_eq!((d.desired_replicas, d.reason), (5, Reason::RateLimited));
}

#[test]
fn disabled_direction_never_moves() {
    let r = rule("scale_down = { select = \"disabled\" }");
    let d = run(&r, 0.0, 6, &settled(), 3600);
    assert_eq!(d.desired_replicas, 6);
}

#[test]
fn trigger_failure_holds_without_fallback() {
    let r = rule("");
    let d = decide(&r, &[Sample::Failed], &state(6), &settled(), at(3600));
    assert_eq!((d.desired_replicas, d.reason), (6, Reason::TriggerFailed));
    assert_eq!(d.memory.consecutive_failures, 1);
}

#[test]
fn one_failing_trigger_of_two_holds() {
    let r = two_trigger_rule();
    let samples = [Sample::Value(0.0), Sample::Failed];
    let d = decide(&r, &samples, &state(6), &settled(), at(3600));
    assert_eq!((d.desired_replicas, d.reason), (6, Reason::TriggerFailed));
}

#[test]
fn fallback_static_after_exactly_n_failures_and_ends_on_first_good_sample() {
    let r = rule("fallback = { after_failures = 2, replicas = 4 }");
    let d1 = decide(&r, &[Sample::Failed], &state(1), &settled(), at(3600));
    assert_eq!((d1.desired_replicas, d1.reason), (1, Reason::TriggerFailed));
    let d2 = decide(&r, &[Sample::Failed], &state(1), &d1.memory, at(3615));
    assert_eq!((d2.desired_replicas, d2.reason), (4, Reason::Fallback));
    assert!(d2.status.in_fallback);
    let d3 = run(&r, 10.0, 4, &d2.memory, 3630);
    assert!(!d3.status.in_fallback);
    assert_eq!(d3.memory.consecutive_failures, 0);
    // Fallback scaled up at 3615, so the queue's answer (2) waits for the cooldown.
    assert_eq!(d3.desired_replicas, 4);
    let d4 = run(&r, 10.0, 4, &d3.memory, 3615 + 300);
    assert_eq!(d4.desired_replicas, 2);
}

#[test]
fn fallback_keep_and_at_least() {
    let keep = rule("fallback = { after_failures = 1, replicas = 4, mode = \"keep\" }");
    let d = decide(&keep, &[Sample::Failed], &state(7), &settled(), at(3600));
    assert_eq!((d.desired_replicas, d.reason), (7, Reason::Fallback));
    let at_least = rule("fallback = { after_failures = 1, replicas = 4, mode = \"at_least\" }");
    let d = decide(
        &at_least,
        &[Sample::Failed],
        &state(2),
        &settled(),
        at(3600),
    );
    assert_eq!(d.desired_replicas, 4);
    let d = decide(
        &at_least,
        &[Sample::Failed],
        &state(7),
        &settled(),
        at(3600),
    );
    assert_eq!(d.desired_replicas, 7);
}

#[test]
fn paused_targets_are_left_alone() {
    let r = rule("");
    let paused = TargetState {
        current_replicas: 3,
        paused: true,
        paused_replicas: None,
        ready_replicas: None,
    };
    let d = decide(&r, &[Sample::Value(100.0)], &paused, &settled(), at(3600));
    assert_eq!((d.desired_replicas, d.reason), (3, Reason::Paused));
    assert_eq!(d.memory, settled());

    let held = TargetState {
        current_replicas: 3,
        paused: false,
        paused_replicas: Some(1),
        ready_replicas: None,
    };
    let d = decide(&r, &[Sample::Value(100.0)], &held, &settled(), at(3600));
    assert_eq!((d.desired_replicas, d.reason), (1, Reason::Paused));

    let paused_rule = rule("paused = true");
    let d = run(&paused_rule, 100.0, 3, &settled(), 3600);
    assert_eq!((d.desired_replicas, d.reason), (3, Reason::Paused));
}

#[test]
fn bounds_win_over_cooldown_when_current_is_outside_them() {
    let mut memory = settled();
    memory.last_scale_up_at = Some(at(3600));
    let d = run(&rule(""), 100.0, 25, &memory, 3601);
    assert_eq!(d.desired_replicas, 10);
}

#[test]
fn stabilization_windows_stay_small() {
    let r = rule("scale_down = { stabilization_window = \"1h\" }");
    let mut memory = settled();
    for step in 0..1000u64 {
        let d = run(&r, 10.0, 2, &memory, 3600 + step);
        memory = d.memory;
    }
    assert_eq!(memory.down_window.len(), 1);
    assert_eq!(memory.up_window.len(), 1);
}

#[test]
fn by_default_a_step_down_waits_for_a_cooldown_of_lower_demand() {
    // Scaled up to 8 at 3600; demand stays at 8 until 3800, then falls to 2.
    let r = rule("");
    let mut memory = settled();
    memory.last_scale_up_at = Some(at(3600));
    let mut d = run(&r, 40.0, 8, &memory, 3600);
    for secs in (3615..=3800).step_by(15) {
        d = run(&r, 40.0, 8, &d.memory, secs);
    }
    // 3950 is past the cooldown since the scale-up, but 8 was still asked for at 3800.
    let held = run(&r, 10.0, 8, &d.memory, 3950);
    assert_eq!(
        (held.desired_replicas, held.reason),
        (8, Reason::Stabilized)
    );
    let down = run(&r, 10.0, 8, &held.memory, 3800 + 301);
    assert_eq!(down.desired_replicas, 2);
}

#[test]
fn a_restart_never_brings_a_scale_down_forward() {
    // Scaled up to 4 at t=0 (that memory was saved); the load lasted until t=250, which only
    // the lost in-process memory knew; the agent restarts at t=260 and the queue is empty.
    let r = rule("");
    let saved = run(&r, 20.0, 0, &settled(), 3600).memory;
    let mut lived = saved.clone();
    for secs in (3610..=3850).step_by(10) {
        lived = run(&r, 20.0, 4, &lived, secs).memory;
    }
    // Without the restart, the scale-down window (5 m) holds 4 until 300 s after the load.
    assert_eq!(run(&r, 0.0, 4, &lived, 3910).desired_replicas, 4);
    assert_eq!(run(&r, 0.0, 4, &lived, 4151).desired_replicas, 0);

    // After the restart, the stored memory alone would allow it at 3900 (the cooldown's end),
    // 250 s early; resumed, it waits one window from the restart.
    let restarted = saved.resumed(at(3860));
    assert_eq!(run(&r, 0.0, 4, &restarted, 3910).desired_replicas, 4);
    assert_eq!(run(&r, 0.0, 4, &restarted, 4150).desired_replicas, 4);
    assert_eq!(run(&r, 0.0, 4, &restarted, 4161).desired_replicas, 0);
}
