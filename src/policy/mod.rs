//! The scaling decision, as a pure function.
//!
//! [`decide`] maps (rule, trigger samples, target state, memory of past decisions, now) to the
//! desired replicas and the next memory. It does no I/O and reads no clock, so the agent, the
//! simulator and the tests all drive the very same code, and a decision can be replayed.

mod decide;
mod memory;
#[cfg(test)]
mod props;
mod rate;
#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use decide::decide;
pub use memory::{Memory, Recommendation, ScaleEvent};

/// A point in time in milliseconds. The agent uses the Unix epoch; the simulator starts at zero.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn from_millis(ms: u64) -> Self {
        Timestamp(ms)
    }

    pub fn from_secs(secs: u64) -> Self {
        Timestamp(secs.saturating_mul(1000))
    }

    /// Time elapsed from `earlier` to `self`; zero if `earlier` is later (a clock step back
    /// must never look like a long quiet period).
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    pub fn plus(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}

/// The latest reading of one trigger. A failure is its own case: it is never read as zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sample {
    Value(f64),
    Failed,
}

/// What the target looks like now, as observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TargetState {
    pub current_replicas: u32,
    /// `qscale.io/paused: "true"` on the target.
    pub paused: bool,
    /// `qscale.io/paused-replicas: "N"` on the target: hold at N.
    pub paused_replicas: Option<u32>,
    /// Replicas that are ready (`status.readyReplicas`), when the target's kind reports them:
    /// the capacity serving now, as opposed to `current_replicas`, which includes pods still
    /// starting. `None` when unknown (a custom kind without the field).
    pub ready_replicas: Option<u32>,
}

/// Why the desired replicas are what they are; shown in logs and Events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Following the triggers.
    Metrics,
    /// Close enough to the current replicas (within `tolerance`).
    WithinTolerance,
    /// No trigger above its activation threshold.
    Inactive,
    /// The triggers asked for more than `max_replicas`.
    ClampedToMax,
    /// The triggers asked for less than `min_replicas`.
    ClampedToMin,
    /// A stabilization window held the change back.
    Stabilized,
    /// A rate policy limited the change.
    RateLimited,
    /// A scale-down was held because `cooldown` has not passed.
    Cooldown,
    /// A scale-down was held because the rule was seen only recently (`initial_cooldown`).
    InitialCooldown,
    /// A trigger failed and fallback has not started: hold.
    TriggerFailed,
    /// Triggers kept failing: fallback replicas.
    Fallback,
    /// The rule or the target is paused.
    Paused,
}

impl Reason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Metrics => "metrics",
            Reason::WithinTolerance => "within_tolerance",
            Reason::Inactive => "inactive",
            Reason::ClampedToMax => "clamped_to_max",
            Reason::ClampedToMin => "clamped_to_min",
            Reason::Stabilized => "stabilized",
            Reason::RateLimited => "rate_limited",
            Reason::Cooldown => "cooldown",
            Reason::InitialCooldown => "initial_cooldown",
            Reason::TriggerFailed => "trigger_failed",
            Reason::Fallback => "fallback",
            Reason::Paused => "paused",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Flags for metrics and `qscale check`-style status lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RuleStatus {
    pub active: bool,
    pub in_cooldown: bool,
    pub in_fallback: bool,
    pub paused: bool,
}

/// The outcome of one decision. `memory` replaces the rule's memory once the decision has been
/// carried out.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub desired_replicas: u32,
    pub reason: Reason,
    pub memory: Memory,
    pub status: RuleStatus,
    /// `max(value / target_per_replica)` over the healthy triggers, before rounding and limits.
    pub demand: Option<f64>,
}
