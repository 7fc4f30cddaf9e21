//! HPA-style rate policies: how far one direction may move, given the changes already made in
//! each policy's period.

use std::time::Duration;

use crate::config::{Behavior, SelectPolicy};

use super::{Memory, Timestamp};

/// The highest replica count a scale-up may reach now.
pub fn scale_up_limit(behavior: &Behavior, current: u32, memory: &Memory, now: Timestamp) -> u32 {
    if behavior.select == SelectPolicy::Disabled {
        return current;
    }
    let limits = behavior.policies.iter().flat_map(|policy| {
        let start = period_start(current, memory, now, policy.period.get());
        let by_pods = policy
            .max_pods
            .map(|pods| start.saturating_add(u64::from(pods)));
        let by_percent = policy.max_percent.map(|percent| {
            let grown = (start as f64) * (1.0 + f64::from(percent) / 100.0);
            grown.ceil() as u64
        });
        // Within one policy, max_pods and max_percent together allow the larger change.
        by_pods.into_iter().chain(by_percent).max()
    });
    let limit = match behavior.select {
        SelectPolicy::Min => limits.min(),
        _ => limits.max(),
    };
    match limit {
        None => u32::MAX,
        // Leaving zero is always allowed: no percentage of zero is ever more than zero.
        Some(limit) => to_u32(limit).max(current.saturating_add(u32::from(current == 0))),
    }
}

/// The lowest replica count a scale-down may reach now.
pub fn scale_down_limit(behavior: &Behavior, current: u32, memory: &Memory, now: Timestamp) -> u32 {
    if behavior.select == SelectPolicy::Disabled {
        return current;
    }
    let limits = behavior.policies.iter().flat_map(|policy| {
        let start = period_start(current, memory, now, policy.period.get());
        let by_pods = policy
            .max_pods
            .map(|pods| start.saturating_sub(u64::from(pods)));
        let by_percent = policy.max_percent.map(|percent| {
            let shrunk = (start as f64) * (1.0 - f64::from(percent.min(100)) / 100.0);
            shrunk.floor() as u64
        });
        by_pods.into_iter().chain(by_percent).min()
    });
    let limit = match behavior.select {
        SelectPolicy::Min => limits.max(),
        _ => limits.min(),
    };
    match limit {
        None => 0,
        Some(limit) => to_u32(limit).min(current),
    }
}

/// The replicas at the start of the period, as the HPA computes it: current, minus what was
/// added and plus what was removed within the period.
fn period_start(current: u32, memory: &Memory, now: Timestamp, period: Duration) -> u64 {
    let (added, removed) = memory.changes_within(now, period);
    (u64::from(current) + removed).saturating_sub(added)
}

fn to_u32(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// The longest period of any policy: how long scale events must be remembered.
pub fn longest_period(behaviors: &[&Behavior]) -> Duration {
    behaviors
        .iter()
        .flat_map(|b| b.policies.iter().map(|p| p.period.get()))
        .max()
        .unwrap_or(Duration::ZERO)
}
