//! The schema of one scaling rule: what to scale, within which bounds, and how fast.

use serde::Deserialize;

use super::duration::Dur;
use super::trigger::Trigger;

pub const DEFAULT_POLL_INTERVAL: Dur = Dur::from_secs(15);
pub const DEFAULT_COOLDOWN: Dur = Dur::from_secs(300);
pub const DEFAULT_TOLERANCE: f64 = 0.1;

/// One rule: triggers mapped onto one scale target.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique within the file; used in logs, metrics, events and the state ConfigMap.
    pub name: String,
    pub target: TargetRef,
    #[serde(default)]
    pub min_replicas: u32,
    pub max_replicas: u32,
    #[serde(default = "default_poll_interval")]
    pub poll_interval: Dur,
    /// Minimum time after the last scale-up, and after the last activity for the step to
    /// zero, before any scale-down.
    #[serde(default = "default_cooldown")]
    pub cooldown: Dur,
    /// Hold-off for scale-downs after the agent first sees the rule; defaults to `cooldown`,
    /// so a restart with no stored memory never scales down early.
    #[serde(default)]
    pub initial_cooldown: Option<Dur>,
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    #[serde(default)]
    pub scale_up: Behavior,
    #[serde(default)]
    pub scale_down: Behavior,
    #[serde(default)]
    pub fallback: Option<Fallback>,
    #[serde(default)]
    pub paused: bool,
    pub triggers: Vec<Trigger>,
}

impl Rule {
    pub fn initial_cooldown(&self) -> Dur {
        self.initial_cooldown.unwrap_or(self.cooldown)
    }

    pub fn scale_up_window(&self) -> Dur {
        self.scale_up.stabilization_window.unwrap_or(Dur::ZERO)
    }

    pub fn scale_down_window(&self) -> Dur {
        self.scale_down
            .stabilization_window
            .unwrap_or(self.cooldown)
    }
}

fn default_poll_interval() -> Dur {
    DEFAULT_POLL_INTERVAL
}

fn default_cooldown() -> Dur {
    DEFAULT_COOLDOWN
}

fn default_tolerance() -> f64 {
    DEFAULT_TOLERANCE
}

/// The object whose `/scale` subresource the rule writes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetRef {
    pub kind: String,
    pub name: String,
    /// Needed for any kind other than Deployment and StatefulSet (which are `apps/v1`).
    #[serde(default)]
    pub api_version: Option<String>,
}

/// Kinds whose API group qscale knows without being told.
pub const KNOWN_KINDS: &[&str] = &["Deployment", "StatefulSet"];

impl TargetRef {
    /// The `apiVersion` of the target: the configured one, or `apps/v1` for known kinds.
    pub fn api_version(&self) -> Option<&str> {
        match &self.api_version {
            Some(v) => Some(v.as_str()),
            None if KNOWN_KINDS.contains(&self.kind.as_str()) => Some("apps/v1"),
            None => None,
        }
    }

    /// `Kind/name`, as people write it in `kubectl`.
    pub fn display(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

/// How fast one direction may move, after the HPA's `behavior` field.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Behavior {
    /// Scale-up takes the lowest, scale-down the highest recommendation seen in this window.
    /// Defaults: 0 for scale-up (react at once), the rule's `cooldown` for scale-down, so a
    /// step down waits until the lower count has been enough for a whole cooldown.
    #[serde(default)]
    pub stabilization_window: Option<Dur>,
    /// Rate limits; none means the direction is not rate limited.
    #[serde(default)]
    pub policies: Vec<RatePolicy>,
    /// Which policy wins when several apply: `max` (the one allowing the biggest change, as the
    /// HPA does), `min`, or `disabled` (no change in this direction at all).
    #[serde(default)]
    pub select: SelectPolicy,
}

/// At most `max_pods` and/or `max_percent` replicas of change per `period`. With both set, the
/// one allowing the larger change applies (like the HPA's default `max(4 pods, 100%)`).
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RatePolicy {
    #[serde(default)]
    pub max_pods: Option<u32>,
    #[serde(default)]
    pub max_percent: Option<u32>,
    pub period: Dur,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SelectPolicy {
    #[default]
    Max,
    Min,
    Disabled,
}

/// What to do when triggers keep failing.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    /// Consecutive failed polls before fallback starts.
    pub after_failures: u32,
    #[serde(default)]
    pub replicas: u32,
    #[serde(default)]
    pub mode: FallbackMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FallbackMode {
    /// Set exactly `replicas`.
    #[default]
    Static,
    /// Hold the current replicas.
    Keep,
    /// `max(current, replicas)`: never shrink while blind.
    AtLeast,
}

/// The `defaults` table: every field a rule may inherit. Rules override field by field (nested
/// tables such as `scale_down` merge key by key).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    pub min_replicas: Option<u32>,
    pub max_replicas: Option<u32>,
    pub poll_interval: Option<Dur>,
    pub cooldown: Option<Dur>,
    pub initial_cooldown: Option<Dur>,
    pub tolerance: Option<f64>,
    pub scale_up: Option<Behavior>,
    pub scale_down: Option<Behavior>,
    pub fallback: Option<Fallback>,
    pub paused: Option<bool>,
}
