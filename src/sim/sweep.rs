//! `--sweep KEY=V1,V2,...`: rerun a trace once per value of one setting.

use std::fmt;
use std::str::FromStr;

use crate::config::Dur;

use super::compare::Setup;

/// A setting that can be swept, by the name written on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepKey {
    Cooldown,
    InitialCooldown,
    PollInterval,
    Tolerance,
    MinReplicas,
    MaxReplicas,
    TargetPerReplica,
    Activation,
    ScaleUpWindow,
    ScaleDownWindow,
    ServiceRate,
    StartupDelay,
    KedaPollingInterval,
    KedaCooldownPeriod,
    HpaScaleDownWindow,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Duration,
    Number,
    Count,
}

const KEYS: &[(&str, SweepKey, Kind)] = &[
    ("cooldown", SweepKey::Cooldown, Kind::Duration),
    (
        "initial_cooldown",
        SweepKey::InitialCooldown,
        Kind::Duration,
    ),
    ("poll_interval", SweepKey::PollInterval, Kind::Duration),
    ("tolerance", SweepKey::Tolerance, Kind::Number),
    ("min_replicas", SweepKey::MinReplicas, Kind::Count),
    ("max_replicas", SweepKey::MaxReplicas, Kind::Count),
    (
        "target_per_replica",
        SweepKey::TargetPerReplica,
        Kind::Number,
    ),
    ("activation", SweepKey::Activation, Kind::Number),
    (
        "scale_up.stabilization_window",
        SweepKey::ScaleUpWindow,
        Kind::Duration,
    ),
    (
        "scale_down.stabilization_window",
        SweepKey::ScaleDownWindow,
        Kind::Duration,
    ),
    ("service_rate", SweepKey::ServiceRate, Kind::Number),
    ("startup_delay", SweepKey::StartupDelay, Kind::Duration),
    (
        "keda.polling_interval",
        SweepKey::KedaPollingInterval,
        Kind::Duration,
    ),
    (
        "keda.cooldown_period",
        SweepKey::KedaCooldownPeriod,
        Kind::Duration,
    ),
    (
        "hpa.scale_down_window",
        SweepKey::HpaScaleDownWindow,
        Kind::Duration,
    ),
];

/// One value, parsed, with the text it was written as (the row label).
#[derive(Debug, Clone, PartialEq)]
pub struct SweepValue {
    pub text: String,
    value: Parsed,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Parsed {
    Duration(Dur),
    Number(f64),
    Count(u32),
}

/// A parsed `--sweep`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    pub key: SweepKey,
    pub key_name: &'static str,
    pub values: Vec<SweepValue>,
}

impl FromStr for Sweep {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let names = || {
            KEYS.iter()
                .map(|(name, _, _)| *name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (key_text, values_text) = s
            .split_once('=')
            .ok_or_else(|| format!("expected KEY=VALUE,VALUE,...; keys: {}", names()))?;
        let key_text = key_text.trim();
        let &(key_name, key, kind) = KEYS
            .iter()
            .find(|(name, _, _)| *name == key_text)
            .ok_or_else(|| format!("unknown sweep key {key_text:?}; keys: {}", names()))?;
        let values = values_text
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|text| {
                parse_value(kind, text).map(|value| SweepValue {
                    text: text.to_string(),
                    value,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if values.is_empty() {
            return Err(format!("no values given for {key_name}"));
        }
        Ok(Sweep {
            key,
            key_name,
            values,
        })
    }
}

fn parse_value(kind: Kind, text: &str) -> Result<Parsed, String> {
    match kind {
        Kind::Duration => text.parse::<Dur>().map(Parsed::Duration),
        Kind::Number => text
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(Parsed::Number)
            .ok_or_else(|| format!("{text:?} is not a finite number >= 0")),
        Kind::Count => text
            .parse::<u32>()
            .map(Parsed::Count)
            .map_err(|_| format!("{text:?} is not a whole number >= 0")),
    }
}

impl fmt::Display for SweepValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl SweepKey {
    /// Whether the KEDA + HPA model sees the change too (then it is rerun per value).
    pub fn affects_reference(self) -> bool {
        matches!(
            self,
            SweepKey::MinReplicas
                | SweepKey::MaxReplicas
                | SweepKey::TargetPerReplica
                | SweepKey::Activation
                | SweepKey::ServiceRate
                | SweepKey::StartupDelay
                | SweepKey::KedaPollingInterval
                | SweepKey::KedaCooldownPeriod
                | SweepKey::HpaScaleDownWindow
        )
    }

    /// Whether only the KEDA + HPA model sees the change (then qscale runs once).
    pub fn reference_only(self) -> bool {
        matches!(
            self,
            SweepKey::KedaPollingInterval
                | SweepKey::KedaCooldownPeriod
                | SweepKey::HpaScaleDownWindow
        )
    }
}

impl Sweep {
    /// Sets one value in `setup`, checking it as the rules file checks the field.
    pub fn apply(&self, value: &SweepValue, setup: &mut Setup) -> anyhow::Result<()> {
        let rule = &mut setup.rule;
        let name = self.key_name;
        match (self.key, value.value) {
            (SweepKey::Cooldown, Parsed::Duration(d)) => rule.cooldown = d,
            (SweepKey::InitialCooldown, Parsed::Duration(d)) => rule.initial_cooldown = Some(d),
            (SweepKey::PollInterval, Parsed::Duration(d)) => {
                anyhow::ensure!(!d.get().is_zero(), "{name} must be longer than zero");
                rule.poll_interval = d;
            }
            (SweepKey::Tolerance, Parsed::Number(v)) => {
                anyhow::ensure!(v < 1.0, "{name} must be below 1");
                rule.tolerance = v;
            }
            (SweepKey::MinReplicas, Parsed::Count(n)) => rule.min_replicas = n,
            (SweepKey::MaxReplicas, Parsed::Count(n)) => {
                anyhow::ensure!(n >= 1, "{name} must be at least 1");
                rule.max_replicas = n;
            }
            // The service rate stays what it was computed from the rule as given: a smaller
            // target means less backlog per replica, not faster workers.
            (SweepKey::TargetPerReplica, Parsed::Number(v)) => {
                anyhow::ensure!(v > 0.0, "{name} must be above zero");
                rule.triggers
                    .iter_mut()
                    .for_each(|t| t.target_per_replica = v);
            }
            (SweepKey::Activation, Parsed::Number(v)) => {
                rule.triggers.iter_mut().for_each(|t| t.activation = v);
            }
            (SweepKey::ScaleUpWindow, Parsed::Duration(d)) => {
                rule.scale_up.stabilization_window = Some(d);
            }
            (SweepKey::ScaleDownWindow, Parsed::Duration(d)) => {
                rule.scale_down.stabilization_window = Some(d);
            }
            (SweepKey::ServiceRate, Parsed::Number(v)) => {
                anyhow::ensure!(v > 0.0, "{name} must be above zero");
                setup.sim.service_rate = v;
            }
            (SweepKey::StartupDelay, Parsed::Duration(d)) => {
                setup.sim.startup_delay_ms = d.as_millis()
            }
            (SweepKey::KedaPollingInterval, Parsed::Duration(d)) => {
                anyhow::ensure!(!d.get().is_zero(), "{name} must be longer than zero");
                setup.reference.polling_interval_ms = d.as_millis();
            }
            (SweepKey::KedaCooldownPeriod, Parsed::Duration(d)) => {
                setup.reference.cooldown_period_ms = d.as_millis();
            }
            (SweepKey::HpaScaleDownWindow, Parsed::Duration(d)) => {
                setup.reference.scale_down_window_ms = d.as_millis();
            }
            (key, parsed) => anyhow::bail!("internal: {key:?} cannot take {parsed:?}"),
        }
        anyhow::ensure!(
            setup.rule.min_replicas <= setup.rule.max_replicas,
            "min_replicas ({}) is greater than max_replicas ({})",
            setup.rule.min_replicas,
            setup.rule.max_replicas
        );
        Ok(())
    }
}
