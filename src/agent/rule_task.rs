//! One task per rule: every `poll_interval`, read the triggers, observe the target, decide, and
//! write `/scale` only when the number changes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use futures::FutureExt;
use rand::Rng;
use tracing::{debug, info, warn};

use super::clock::Clock;
use super::shutdown::Shutdown;
use super::slots;
use super::state::StateStore;
use crate::config::Rule;
use crate::policy::{self, Decision, Memory, Sample};
use crate::target::{Observation, TargetView, Targets};
use crate::telemetry::events::{Notice, Severity};
use crate::telemetry::metrics::{DirectionLabels, RuleKindLabels, TriggerErrorLabels};
use crate::telemetry::rule_series::{RuleSeries, TriggerSeries};
use crate::telemetry::{EventSink, Metrics, Readiness};
use crate::triggers::{TriggerError, TriggerPoller};

/// After a write, the watch cache may still show the old count for a moment; within this window
/// the written count is taken as current, so the same decision is never written twice.
const WRITE_SETTLE: Duration = Duration::from_secs(10);

/// What every rule task shares.
pub struct Shared {
    pub targets: Targets,
    pub clock: Arc<dyn Clock>,
    pub dry_run: bool,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    /// `None` in dry-run mode: nothing is written, not even Events.
    pub events: Option<EventSink>,
    /// `None` in dry-run mode.
    pub state: Option<StateStore>,
    /// Where the tick grid of every rule is anchored.
    pub epoch: tokio::time::Instant,
}

/// A rule with its pollers and memory, ready to run.
pub struct RuleTask {
    pub rule: Arc<Rule>,
    pub pollers: Vec<TriggerPoller>,
    pub memory: Memory,
    /// The last write (from, to, when), until the watch cache shows it.
    pending_write: Option<(u32, u32, Instant)>,
    /// The HPA last reported as competing, so the warning is not repeated every tick.
    reported_hpa: Option<String>,
    /// The rule's metric series, looked up on the first tick.
    series: Option<RuleSeries>,
    /// Where the target is in the watch cache, found on the first tick.
    view: Option<TargetView>,
}

impl RuleTask {
    pub fn new(rule: Arc<Rule>, pollers: Vec<TriggerPoller>, memory: Memory) -> Self {
        RuleTask {
            rule,
            pollers,
            memory,
            pending_write: None,
            reported_hpa: None,
            series: None,
            view: None,
        }
    }

    /// Polls until shutdown, then hands back the rule's memory. The first poll comes after a
    /// random offset below one interval (at most a second), so a thousand rules do not fire in
    /// the same instant, rounded to the agent's tick grid (see [`slots`]).
    pub async fn run(mut self, shared: Arc<Shared>, mut shutdown: Shutdown) -> Memory {
        let interval = self.rule.poll_interval.get();
        let spread = interval.min(Duration::from_secs(1));
        let offset = rand::rng().random_range(Duration::ZERO..=spread);
        let start = slots::first_tick(shared.epoch, tokio::time::Instant::now(), offset);
        let mut ticker = tokio::time::interval_at(start, interval);
        // A late tick fires at once, and the next one is back on the grid.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = ticker.tick() => {}
            }
            // Boxed: the tick's future (trigger reads, the `/scale` write and its retries) is
            // several KiB, and held inline it would make every idle task that large.
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = self.tick(&shared).boxed() => {}
            }
        }
        debug!(rule = %self.rule.name, "rule task stopped");
        self.memory
    }

    /// One poll. Never fails: every error is logged and counted, and the next tick tries again.
    pub async fn tick(&mut self, shared: &Shared) {
        let started = Instant::now();
        let series = self.series.get_or_insert_with(|| {
            let labels: Vec<String> = (0..self.rule.triggers.len())
                .map(|i| label(&self.rule, i))
                .collect();
            RuleSeries::new(&shared.metrics, &self.rule.name, &labels)
        });
        let samples =
            read_samples(&self.rule, &self.pollers, &series.triggers, &shared.metrics).await;
        let observation = match shared
            .targets
            .observe(&self.rule.target, &mut self.view)
            .await
        {
            Ok(observation) => observation,
            Err(error) => {
                shared
                    .metrics
                    .target_errors
                    .get_or_create(&RuleKindLabels {
                        rule: self.rule.name.clone(),
                        kind: error.kind().to_string(),
                    })
                    .inc();
                warn!(rule = %self.rule.name, target = %self.rule.target.display(), %error, "cannot read target");
                if error.is_answer() {
                    // The API server answered (the target is missing, or has no /scale): the
                    // agent is connected; that rule waits for its target.
                    shared
                        .readiness
                        .api_reached
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                return;
            }
        };
        shared
            .readiness
            .api_reached
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut state = observation.state;
        if let Some((before, written, at)) = self.pending_write {
            // Still the count from before our write: the cache lags. Anything else is news.
            if state.current_replicas == before && at.elapsed() < WRITE_SETTLE {
                state.current_replicas = written;
            } else {
                self.pending_write = None;
            }
        }

        let now = shared.clock.now();
        let decision = policy::decide(&self.rule, &samples, &state, &self.memory, now);
        self.export(state.current_replicas, &decision, &observation);
        if let Some(hpa) = &observation.competing_hpa {
            self.report_hpa(shared, hpa);
            return;
        }
        self.reported_hpa = None;
        if self
            .apply(shared, state.current_replicas, &decision, started)
            .await
        {
            self.remember(shared, decision.memory);
        }
    }

    fn export(&mut self, current: u32, decision: &Decision, observation: &Observation) {
        if let Some(series) = &mut self.series {
            series.set_replicas(decision.desired_replicas, current);
            series.set_state(&decision.status, observation.competing_hpa.is_some());
        }
    }

    fn report_hpa(&mut self, shared: &Shared, hpa: &str) {
        if self.reported_hpa.as_deref() == Some(hpa) {
            return;
        }
        warn!(rule = %self.rule.name, target = %self.rule.target.display(), hpa, "an HPA scales this target; qscale will not write it");
        self.notify(
            shared,
            Severity::Warning,
            "HpaBlocked",
            format!(
                "rule {}: HorizontalPodAutoscaler {hpa} also scales {}; qscale leaves it alone",
                self.rule.name,
                self.rule.target.display()
            ),
        );
        self.reported_hpa = Some(hpa.to_string());
    }

    /// Writes the decision if it changes the count; returns whether the new memory stands.
    async fn apply(
        &mut self,
        shared: &Shared,
        from: u32,
        decision: &Decision,
        tick_started: Instant,
    ) -> bool {
        let rule = &self.rule;
        let to = decision.desired_replicas;
        if from == to {
            debug!(rule = %rule.name, replicas = to, reason = %decision.reason, demand = ?decision.demand, "no change");
            return true;
        }
        if shared.dry_run {
            info!(rule = %rule.name, target = %rule.target.display(), from, to, reason = %decision.reason, "would rescale (dry run)");
            return true;
        }
        // Boxed: the write and its retries are the largest part of a tick's future but rare,
        // and the tick itself is boxed on every poll (see `run`).
        match shared
            .targets
            .write_replicas(&rule.target, to)
            .boxed()
            .await
        {
            Ok(()) => {
                shared
                    .metrics
                    .reaction
                    .observe(tick_started.elapsed().as_secs_f64());
                info!(rule = %rule.name, target = %rule.target.display(), from, to, reason = %decision.reason, "rescaled");
                self.pending_write = Some((from, to, Instant::now()));
                let direction = if to > from { "up" } else { "down" };
                shared
                    .metrics
                    .scale_events
                    .get_or_create(&DirectionLabels {
                        rule: rule.name.clone(),
                        direction: direction.to_string(),
                    })
                    .inc();
                let message = format!(
                    "rule {}: {} {from} -> {to} replicas ({})",
                    rule.name,
                    rule.target.display(),
                    decision.reason
                );
                self.notify(shared, Severity::Normal, "Rescaled", message);
                true
            }
            Err(error) => {
                shared
                    .metrics
                    .target_errors
                    .get_or_create(&RuleKindLabels {
                        rule: rule.name.clone(),
                        kind: error.kind().to_string(),
                    })
                    .inc();
                warn!(rule = %rule.name, target = %rule.target.display(), from, to, %error, "cannot write scale");
                false
            }
        }
    }

    /// Keeps the new memory, reports fallback transitions and persists what must survive a
    /// restart.
    fn remember(&mut self, shared: &Shared, memory: Memory) {
        if memory.in_fallback != self.memory.in_fallback {
            let (reason, text) = if memory.in_fallback {
                (
                    "FallbackEntered",
                    "triggers keep failing; fallback replicas apply",
                )
            } else {
                ("FallbackLeft", "triggers answer again; fallback ended")
            };
            warn!(rule = %self.rule.name, "{text}");
            self.notify(
                shared,
                Severity::Warning,
                reason,
                format!("rule {}: {text}", self.rule.name),
            );
        }
        if let Some(state) = &shared.state {
            if memory.durable_part() != self.memory.durable_part() {
                state.save(&self.rule.name, &memory);
            }
        }
        self.memory = memory;
    }

    fn notify(&self, shared: &Shared, severity: Severity, reason: &'static str, message: String) {
        if let Some(events) = &shared.events {
            events.publish(Notice {
                rule: self.rule.name.clone(),
                target: self.rule.target.clone(),
                severity,
                reason,
                message,
            });
        }
    }
}

async fn timed(poller: &TriggerPoller) -> (Result<f64, TriggerError>, Duration) {
    let started = Instant::now();
    let result = poller.read().await;
    (result, started.elapsed())
}

/// Reads every trigger concurrently. A failure becomes `Sample::Failed`, never zero.
async fn read_samples(
    rule: &Rule,
    pollers: &[TriggerPoller],
    series: &[TriggerSeries],
    metrics: &Metrics,
) -> Vec<Sample> {
    // Most rules have one trigger: no `join_all` (and its heap of futures) for them.
    let results = match pollers {
        [one] => vec![timed(one).await],
        many => join_all(many.iter().map(timed)).await,
    };
    results
        .into_iter()
        .enumerate()
        .map(|(index, (result, took))| {
            let series = series.get(index);
            if let Some(series) = series {
                series.poll_duration.observe(took.as_secs_f64());
            }
            match result {
                Ok(value) => {
                    if let Some(series) = series {
                        series.value.set(value);
                    }
                    debug!(rule = %rule.name, trigger = %label(rule, index), value, "trigger read");
                    Sample::Value(value)
                }
                Err(error) => {
                    let trigger = label(rule, index);
                    metrics
                        .trigger_errors
                        .get_or_create(&TriggerErrorLabels {
                            rule: rule.name.clone(),
                            trigger: trigger.clone(),
                            kind: error.kind().to_string(),
                        })
                        .inc();
                    warn!(rule = %rule.name, %trigger, kind = error.kind(), %error, "trigger failed");
                    Sample::Failed
                }
            }
        })
        .collect()
}

pub fn label(rule: &Rule, index: usize) -> String {
    rule.triggers
        .get(index)
        .map_or_else(|| index.to_string(), |t| t.label(index))
}
