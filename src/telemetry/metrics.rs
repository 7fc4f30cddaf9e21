//! Prometheus metrics. Labels carry only names from the rules file and fixed enums (error kinds,
//! directions, states): never a value, a URL, a query or a secret, so cardinality is bounded by
//! the config.

use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::target::TargetError;
use crate::triggers::TriggerError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    pub rule: String,
    pub trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerErrorLabels {
    pub rule: String,
    pub trigger: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleKindLabels {
    pub rule: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub rule: String,
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub rule: String,
    /// One of [`RULE_STATES`]: five series per rule, so no allocation per label value.
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

/// The states exported by `qscale_rule_state`.
pub const RULE_STATES: &[&str] = &["active", "cooldown", "fallback", "paused", "hpa_blocked"];

type F64Gauge = Gauge<f64, AtomicU64>;

/// Every metric qscale exports. Cheap to share behind an `Arc`.
pub struct Metrics {
    pub registry: Registry,
    pub trigger_value: Family<TriggerLabels, F64Gauge>,
    pub trigger_errors: Family<TriggerErrorLabels, Counter>,
    pub poll_duration: Family<TriggerLabels, Histogram>,
    pub desired_replicas: Family<RuleLabels, Gauge<i64, AtomicI64>>,
    pub current_replicas: Family<RuleLabels, Gauge<i64, AtomicI64>>,
    pub scale_events: Family<DirectionLabels, Counter>,
    pub rule_state: Family<StateLabels, Gauge<i64, AtomicI64>>,
    pub target_errors: Family<RuleKindLabels, Counter>,
    /// From the start of a tick to the end of its `/scale` write.
    pub reaction: Histogram,
    pub events_suppressed: Family<RuleLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub config_last_success: F64Gauge,
    pub leader: Gauge<i64, AtomicI64>,
    pub tasks: Gauge<i64, AtomicI64>,
    /// Every task alive on the async runtime (rule tasks, watches, the admin server, Events
    /// in flight): a leak shows here even where `tasks` stays flat.
    pub runtime_tasks: Gauge<i64, AtomicI64>,
}

fn poll_histogram() -> Histogram {
    // 5 ms .. ~10 s: a healthy poll is tens of milliseconds; a timeout is seconds.
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("qscale");
        // A plain gauge rather than OpenMetrics' `info` type: the classic text parsers
        // (promtool, Prometheus 2.x without OpenMetrics) reject `info`.
        let build_info = Family::<VersionLabels, Gauge<i64, AtomicI64>>::default();
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        registry.register("build_info", "qscale build information", build_info);
        let metrics = Metrics {
            trigger_value: Family::default(),
            trigger_errors: Family::default(),
            poll_duration: Family::new_with_constructor(poll_histogram),
            desired_replicas: Family::default(),
            current_replicas: Family::default(),
            scale_events: Family::default(),
            rule_state: Family::default(),
            target_errors: Family::default(),
            // Fine around the 50 ms target and below it, where a local agent answers.
            reaction: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0,
            ]),
            events_suppressed: Family::default(),
            config_reloads: Family::default(),
            config_last_success: Gauge::default(),
            leader: Gauge::default(),
            tasks: Gauge::default(),
            runtime_tasks: Gauge::default(),
            registry,
        };
        metrics.register()
    }

    fn register(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "trigger_value",
            "Last value read from a trigger",
            self.trigger_value.clone(),
        );
        r.register(
            "trigger_errors",
            "Failed trigger reads, by error kind",
            self.trigger_errors.clone(),
        );
        r.register(
            "poll_duration_seconds",
            "Time to read one trigger",
            self.poll_duration.clone(),
        );
        r.register(
            "desired_replicas",
            "Replicas the policy decided on",
            self.desired_replicas.clone(),
        );
        r.register(
            "current_replicas",
            "Replicas observed on the target",
            self.current_replicas.clone(),
        );
        r.register(
            "scale_events",
            "Rescales written, by direction",
            self.scale_events.clone(),
        );
        r.register(
            "rule_state",
            "1 when the rule is in the state",
            self.rule_state.clone(),
        );
        r.register(
            "target_errors",
            "Failed reads or writes of a target, by kind",
            self.target_errors.clone(),
        );
        r.register(
            "events_suppressed",
            "Kubernetes Events not sent because of rate limits",
            self.events_suppressed.clone(),
        );
        r.register(
            "config_reloads",
            "Rules reloads, by result",
            self.config_reloads.clone(),
        );
        r.register(
            "config_last_success_timestamp_seconds",
            "Unix time of the last good rules load",
            self.config_last_success.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the lease (or runs without election)",
            self.leader.clone(),
        );
        r.register(
            "reaction_seconds",
            "From the start of a tick to the end of the /scale write it decided",
            self.reaction.clone(),
        );
        r.register("tasks", "Running rule tasks", self.tasks.clone());
        r.register(
            "runtime_alive_tasks",
            "Tasks alive on the async runtime",
            self.runtime_tasks.clone(),
        );
        self
    }

    /// The text exposition format, as served on `/metrics`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Drops every series of a rule that is gone, so removed rules do not linger in `/metrics`.
    pub fn forget_rule(&self, rule: &str, triggers: &[String]) {
        let rule_labels = RuleLabels {
            rule: rule.to_string(),
        };
        self.desired_replicas.remove(&rule_labels);
        self.current_replicas.remove(&rule_labels);
        for state in RULE_STATES {
            self.rule_state.remove(&StateLabels {
                rule: rule.to_string(),
                state,
            });
        }
        for trigger in triggers {
            let labels = TriggerLabels {
                rule: rule.to_string(),
                trigger: trigger.clone(),
            };
            self.trigger_value.remove(&labels);
            self.poll_duration.remove(&labels);
            for kind in TriggerError::KINDS {
                self.trigger_errors.remove(&TriggerErrorLabels {
                    rule: rule.to_string(),
                    trigger: trigger.clone(),
                    kind: (*kind).to_string(),
                });
            }
        }
        for kind in TargetError::KINDS {
            self.target_errors.remove(&RuleKindLabels {
                rule: rule.to_string(),
                kind: (*kind).to_string(),
            });
        }
        for direction in ["up", "down"] {
            self.scale_events.remove(&DirectionLabels {
                rule: rule.to_string(),
                direction: direction.to_string(),
            });
        }
        self.events_suppressed.remove(&rule_labels);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forgotten_rule_leaves_no_series() {
        let metrics = Metrics::new();
        let rule = |name: &str| RuleLabels { rule: name.into() };
        for name in ["gone", "kept"] {
            metrics.desired_replicas.get_or_create(&rule(name)).set(2);
            metrics.events_suppressed.get_or_create(&rule(name)).inc();
            metrics
                .trigger_errors
                .get_or_create(&TriggerErrorLabels {
                    rule: name.into(),
                    trigger: "q".into(),
                    kind: "throttled".into(),
                })
                .inc();
            metrics
                .target_errors
                .get_or_create(&RuleKindLabels {
                    rule: name.into(),
                    kind: "conflict".into(),
                })
                .inc();
            metrics
                .scale_events
                .get_or_create(&DirectionLabels {
                    rule: name.into(),
                    direction: "up".into(),
                })
                .inc();
        }
        metrics.forget_rule("gone", &["q".to_string()]);
        let text = metrics.encode();
        assert!(!text.contains("rule=\"gone\""), "{text}");
        assert_eq!(text.matches("rule=\"kept\"").count(), 5, "{text}");
    }
}
