//! One rule's metric series, looked up once when its task starts instead of on every tick.
//!
//! A `Family::get_or_create` hashes a freshly allocated label set under a lock; with five
//! state gauges, two replica gauges and two series per trigger, that was a dozen allocations
//! and lookups per tick, a visible part of the per-poll CPU at 1,000 rules (BENCHMARKS.md). The
//! handles are shared with the families, so `/metrics` sees every update. Rare series (errors,
//! scale events) are still looked up when they happen.

use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use super::metrics::{Metrics, RuleLabels, StateLabels, TriggerLabels, RULE_STATES};
use crate::policy::RuleStatus;

/// The per-tick series of one rule and its triggers (in rule order).
pub struct RuleSeries {
    desired: Gauge<i64, AtomicI64>,
    current: Gauge<i64, AtomicI64>,
    states: Vec<Gauge<i64, AtomicI64>>,
    /// What the state gauges say now, so an unchanged state costs nothing.
    last_states: Option<[bool; 5]>,
    pub triggers: Vec<TriggerSeries>,
}

pub struct TriggerSeries {
    pub value: Gauge<f64, AtomicU64>,
    pub poll_duration: Histogram,
}

impl RuleSeries {
    pub fn new(metrics: &Metrics, rule: &str, trigger_labels: &[String]) -> Self {
        let labels = RuleLabels {
            rule: rule.to_string(),
        };
        let states = RULE_STATES
            .iter()
            .map(|state| {
                metrics
                    .rule_state
                    .get_or_create(&StateLabels {
                        rule: rule.to_string(),
                        state,
                    })
                    .clone()
            })
            .collect();
        let triggers = trigger_labels
            .iter()
            .map(|trigger| {
                let labels = TriggerLabels {
                    rule: rule.to_string(),
                    trigger: trigger.clone(),
                };
                TriggerSeries {
                    value: metrics.trigger_value.get_or_create(&labels).clone(),
                    poll_duration: metrics.poll_duration.get_or_create(&labels).clone(),
                }
            })
            .collect();
        RuleSeries {
            desired: metrics.desired_replicas.get_or_create(&labels).clone(),
            current: metrics.current_replicas.get_or_create(&labels).clone(),
            states,
            last_states: None,
            triggers,
        }
    }

    pub fn set_replicas(&self, desired: u32, current: u32) {
        self.desired.set(i64::from(desired));
        self.current.set(i64::from(current));
    }

    /// Sets `qscale_rule_state`, in the order of [`RULE_STATES`].
    pub fn set_state(&mut self, status: &RuleStatus, hpa_blocked: bool) {
        let flags = [
            status.active,
            status.in_cooldown,
            status.in_fallback,
            status.paused,
            hpa_blocked,
        ];
        if self.last_states == Some(flags) {
            return;
        }
        for (gauge, on) in self.states.iter().zip(flags) {
            gauge.set(i64::from(on));
        }
        self.last_states = Some(flags);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    fn exported(metrics: &Metrics) -> String {
        let mut text = String::new();
        encode(&mut text, &metrics.registry).unwrap_or_default();
        text
    }

    #[test]
    fn updates_reach_the_exported_families() {
        let metrics = Metrics::new();
        let mut series = RuleSeries::new(&metrics, "r", &["q".to_string()]);
        series.set_replicas(4, 2);
        series.triggers[0].value.set(12.5);
        let status = RuleStatus {
            active: true,
            ..RuleStatus::default()
        };
        series.set_state(&status, false);
        let text = exported(&metrics);
        assert!(
            text.contains("qscale_desired_replicas{rule=\"r\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("qscale_current_replicas{rule=\"r\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("qscale_trigger_value{rule=\"r\",trigger=\"q\"} 12.5"),
            "{text}"
        );
        assert!(
            text.contains("qscale_rule_state{rule=\"r\",state=\"active\"} 1"),
            "{text}"
        );
        // A state change after an unchanged one still lands.
        series.set_state(&status, false);
        series.set_state(&RuleStatus::default(), true);
        let text = exported(&metrics);
        assert!(
            text.contains("qscale_rule_state{rule=\"r\",state=\"active\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("qscale_rule_state{rule=\"r\",state=\"hpa_blocked\"} 1"),
            "{text}"
        );
    }
}
