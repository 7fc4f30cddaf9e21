//! [`decide`]: one scaling decision for one rule.

use crate::config::{FallbackMode, Rule};

use super::rate::{longest_period, scale_down_limit, scale_up_limit};
use super::{Decision, Memory, Reason, RuleStatus, Sample, TargetState, Timestamp};

/// Decides the desired replicas for `rule`.
///
/// `samples` holds one reading per trigger, in the rule's trigger order. The returned memory
/// assumes the decision is carried out; a caller whose write fails keeps the old memory.
pub fn decide(
    rule: &Rule,
    samples: &[Sample],
    target: &TargetState,
    memory: &Memory,
    now: Timestamp,
) -> Decision {
    let current = target.current_replicas;
    let mut memory = memory.clone();

    if rule.paused || target.paused || target.paused_replicas.is_some() {
        return Decision {
            desired_replicas: target.paused_replicas.unwrap_or(current),
            reason: Reason::Paused,
            status: RuleStatus {
                paused: true,
                in_fallback: memory.in_fallback,
                ..RuleStatus::default()
            },
            memory,
            demand: None,
        };
    }
    memory.first_seen_at.get_or_insert(now);

    let healthy = samples.len() == rule.triggers.len()
        && samples.iter().all(|s| matches!(s, Sample::Value(_)));
    if !healthy {
        return decide_blind(rule, current, memory, now);
    }
    memory.consecutive_failures = 0;
    memory.in_fallback = false;

    let readings = rule
        .triggers
        .iter()
        .zip(samples)
        .filter_map(|(t, s)| match s {
            Sample::Value(v) => Some((t, v.max(0.0))),
            Sample::Failed => None,
        });
    let mut active = false;
    let mut demand: f64 = 0.0;
    for (trigger, value) in readings {
        active |= value > trigger.activation;
        demand = demand.max(value / trigger.target_per_replica);
    }
    if active {
        memory.last_active_at = Some(now);
    }

    // What the triggers ask for, before any memory of the past is applied.
    let (mut proposal, mut reason) = if active {
        (ceil_replicas(demand).max(1), Reason::Metrics)
    } else if rule.min_replicas == 0 {
        (0, Reason::Inactive)
    } else {
        (ceil_replicas(demand), Reason::Inactive)
    };
    if current > 0 && proposal > 0 && (demand / f64::from(current) - 1.0).abs() <= rule.tolerance {
        proposal = current;
        reason = Reason::WithinTolerance;
    }
    if proposal > rule.max_replicas {
        proposal = rule.max_replicas;
        reason = Reason::ClampedToMax;
    } else if proposal < rule.min_replicas {
        proposal = rule.min_replicas;
        reason = Reason::ClampedToMin;
    }

    // Stabilization: scale up to the lowest, down to the highest recommendation in the window.
    let (lowest, highest) = memory.stabilize(
        now,
        proposal,
        rule.scale_up_window().get(),
        rule.scale_down_window().get(),
    );
    let mut desired = if lowest > current {
        lowest
    } else if highest < current {
        highest
    } else {
        current
    };
    if desired != proposal {
        reason = Reason::Stabilized;
    }

    if desired < current {
        if let Some(hold) = scale_down_hold(rule, &memory, now) {
            desired = current;
            reason = hold;
        } else if desired == 0
            && memory
                .last_active_at
                .is_some_and(|at| now.since(at) < rule.cooldown.get())
        {
            // The last step, to zero, waits for a full cooldown of inactivity; until then one
            // replica is enough to drain what trickles in.
            desired = 1;
            reason = Reason::Cooldown;
        }
    }

    if desired > current {
        let limit = scale_up_limit(&rule.scale_up, current, &memory, now);
        if desired > limit {
            desired = limit;
            reason = Reason::RateLimited;
        }
    } else if desired < current {
        let limit = scale_down_limit(&rule.scale_down, current, &memory, now);
        if desired < limit {
            desired = limit;
            reason = Reason::RateLimited;
        }
    }

    // Bounds win over everything, including a current count someone set outside them.
    let desired = desired.clamp(rule.min_replicas, rule.max_replicas);
    finish(
        rule,
        current,
        desired,
        reason,
        memory,
        now,
        active,
        Some(demand),
    )
}

/// A trigger failed: never read as zero. Hold, or fall back after `after_failures` polls.
fn decide_blind(rule: &Rule, current: u32, mut memory: Memory, now: Timestamp) -> Decision {
    memory.consecutive_failures = memory.consecutive_failures.saturating_add(1);
    let fallback = rule
        .fallback
        .as_ref()
        .filter(|f| memory.consecutive_failures >= f.after_failures);
    let (desired, reason) = match fallback {
        Some(fallback) => {
            memory.in_fallback = true;
            let desired = match fallback.mode {
                FallbackMode::Static => fallback.replicas,
                FallbackMode::Keep => current,
                FallbackMode::AtLeast => current.max(fallback.replicas),
            };
            (desired, Reason::Fallback)
        }
        None => (current, Reason::TriggerFailed),
    };
    // Fallback is no excuse to shrink a pool early: the cooldowns still hold.
    let desired = if desired < current && scale_down_hold(rule, &memory, now).is_some() {
        current
    } else {
        desired
    };
    let desired = desired.clamp(rule.min_replicas, rule.max_replicas);
    finish(rule, current, desired, reason, memory, now, false, None)
}

/// Why a scale-down must wait now, if it must: `initial_cooldown` after the rule was first
/// seen, or `cooldown` after the last scale-up.
fn scale_down_hold(rule: &Rule, memory: &Memory, now: Timestamp) -> Option<Reason> {
    let first_seen_at = memory.first_seen_at.unwrap_or(now);
    if now.since(first_seen_at) < rule.initial_cooldown().get() {
        Some(Reason::InitialCooldown)
    } else if memory
        .last_scale_up_at
        .is_some_and(|at| now.since(at) < rule.cooldown.get())
    {
        Some(Reason::Cooldown)
    } else {
        None
    }
}

#[allow(clippy::too_many_arguments)]
fn finish(
    rule: &Rule,
    current: u32,
    desired: u32,
    reason: Reason,
    mut memory: Memory,
    now: Timestamp,
    active: bool,
    demand: Option<f64>,
) -> Decision {
    let keep = longest_period(&[&rule.scale_up, &rule.scale_down]);
    memory.record_change(now, current, desired, keep);
    let in_cooldown = desired <= current
        && memory
            .last_scale_up_at
            .is_some_and(|at| now.since(at) < rule.cooldown.get());
    Decision {
        desired_replicas: desired,
        reason,
        status: RuleStatus {
            active,
            in_cooldown,
            in_fallback: memory.in_fallback,
            paused: false,
        },
        memory,
        demand,
    }
}

fn ceil_replicas(demand: f64) -> u32 {
    let replicas = demand.ceil();
    if replicas >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        replicas as u32
    }
}
