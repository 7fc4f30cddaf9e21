//! Property tests: invariants that hold for every rule and every history.

use proptest::prelude::*;

use super::*;
use crate::config::{self, Dur, Fallback, FallbackMode, Format, RatePolicy, Rule};

fn base_rule() -> Rule {
    let text = r#"
        [[rules]]
        name = "p"
        target = { kind = "Deployment", name = "w" }
        max_replicas = 10
        [[rules.triggers]]
        type = "sqs"
        queue = "q"
        target_per_replica = 5
    "#;
    let mut file = config::parse("prop.toml", text, Format::Toml).expect("valid rule");
    std::sync::Arc::unwrap_or_clone(file.rules.remove(0))
}

prop_compose! {
    fn arb_rule()(
        min in 0u32..5,
        span in 0u32..20,
        cooldown in 0u64..600,
        initial in proptest::option::of(0u64..600),
        tolerance in 0.0f64..0.5,
        target in 0.5f64..50.0,
        activation in 0.0f64..20.0,
        up_window in 0u64..120,
        down_window in 0u64..300,
        down_pods in proptest::option::of(1u32..5),
        up_percent in proptest::option::of(1u32..200),
        fallback in proptest::option::of((1u32..5, 0u32..30, 0usize..3)),
    ) -> Rule {
        let mut rule = base_rule();
        rule.min_replicas = min;
        rule.max_replicas = (min + span).max(1);
        rule.cooldown = Dur::from_secs(cooldown);
        rule.initial_cooldown = initial.map(Dur::from_secs);
        rule.tolerance = tolerance;
        rule.triggers[0].target_per_replica = target;
        rule.triggers[0].activation = activation;
        rule.scale_up.stabilization_window = Some(Dur::from_secs(up_window));
        rule.scale_down.stabilization_window = Some(Dur::from_secs(down_window));
        if let Some(pods) = down_pods {
            rule.scale_down.policies.push(RatePolicy { max_pods: Some(pods), max_percent: None, period: Dur::from_secs(60) });
        }
        if let Some(percent) = up_percent {
            rule.scale_up.policies.push(RatePolicy { max_pods: None, max_percent: Some(percent), period: Dur::from_secs(30) });
        }
        rule.fallback = fallback.map(|(after, replicas, mode)| Fallback {
            after_failures: after,
            replicas: replicas.clamp(rule.min_replicas, rule.max_replicas),
            mode: [FallbackMode::Static, FallbackMode::Keep, FallbackMode::AtLeast][mode],
        });
        rule
    }
}

/// One tick of a history: time step, reading, and whether someone else changed the replicas.
fn arb_step() -> impl Strategy<Value = (u64, Option<f64>, Option<u32>)> {
    (
        1u64..120,
        prop_oneof![4 => (0.0f64..400.0).prop_map(Some), 1 => Just(None)],
        prop_oneof![9 => Just(None), 1 => (0u32..40).prop_map(Some)],
    )
}

fn sample(value: Option<f64>) -> Sample {
    value.map_or(Sample::Failed, Sample::Value)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn desired_is_always_within_bounds_and_never_shrinks_in_cooldown(
        rule in arb_rule(),
        start in 0u32..40,
        steps in proptest::collection::vec(arb_step(), 1..60),
    ) {
        let mut now = Timestamp::from_secs(1_000_000);
        let mut current = start;
        let mut memory = Memory::default();
        for (dt, value, external) in steps {
            now = now.plus(std::time::Duration::from_secs(dt));
            if let Some(replicas) = external {
                current = replicas;
            }
            let target = TargetState { current_replicas: current, ..TargetState::default() };
            let decision = decide(&rule, &[sample(value)], &target, &memory, now);
            let desired = decision.desired_replicas;
            prop_assert!(desired >= rule.min_replicas && desired <= rule.max_replicas,
                "desired {} outside [{}, {}]", desired, rule.min_replicas, rule.max_replicas);
            let in_cooldown = memory.last_scale_up_at
                .is_some_and(|at| now.since(at) < rule.cooldown.get());
            if in_cooldown && current <= rule.max_replicas {
                prop_assert!(desired >= current,
                    "scaled down from {} to {} inside the cooldown", current, desired);
            }
            if value.is_none() && rule.fallback.is_none() {
                prop_assert_eq!(desired, current.clamp(rule.min_replicas, rule.max_replicas));
            }
            memory = decision.memory;
            current = desired;
        }
    }

    #[test]
    fn fallback_starts_after_exactly_after_failures(
        rule in arb_rule(),
        after in 1u32..6,
        good_first in 0usize..4,
    ) {
        let mut rule = rule;
        rule.fallback = Some(Fallback { after_failures: after, replicas: rule.min_replicas, mode: FallbackMode::Static });
        let mut now = Timestamp::from_secs(1_000_000);
        let mut memory = Memory::default();
        let target = TargetState { current_replicas: rule.max_replicas, ..TargetState::default() };
        for _ in 0..good_first {
            now = now.plus(std::time::Duration::from_secs(15));
            memory = decide(&rule, &[Sample::Value(1.0)], &target, &memory, now).memory;
        }
        for failure in 1..=after + 2 {
            now = now.plus(std::time::Duration::from_secs(15));
            let decision = decide(&rule, &[Sample::Failed], &target, &memory, now);
            prop_assert_eq!(decision.status.in_fallback, failure >= after);
            prop_assert_eq!(decision.reason == Reason::Fallback, failure >= after);
            memory = decision.memory;
        }
        now = now.plus(std::time::Duration::from_secs(15));
        let recovered = decide(&rule, &[Sample::Value(1.0)], &target, &memory, now);
        prop_assert!(!recovered.status.in_fallback);
    }

    #[test]
    fn same_inputs_give_the_same_decision(
        rule in arb_rule(),
        current in 0u32..40,
        steps in proptest::collection::vec(arb_step(), 1..20),
    ) {
        let mut now = Timestamp::from_secs(5_000);
        let mut memory = Memory::default();
        for (dt, value, _) in steps {
            now = now.plus(std::time::Duration::from_secs(dt));
            let target = TargetState { current_replicas: current, ..TargetState::default() };
            let a = decide(&rule, &[sample(value)], &target, &memory, now);
            let b = decide(&rule, &[sample(value)], &target, &memory, now);
            prop_assert_eq!(&a, &b);
            memory = a.memory;
        }
    }
}
