//! One task per rule: every `poll_interval`, read the triggers, observe the target, decide, and
//! write `/scale` only when the number changes.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use rand::Rng;
use tracing::{debug, info, warn};

use super::clock::Clock;
use super::shutdown::Shutdown;
use crate::config::Rule;
use crate::policy::{self, Decision, Memory, Sample, TargetState};
use crate::target::Targets;
use crate::triggers::TriggerPoller;

/// What every rule task shares.
pub struct Shared {
    pub targets: Targets,
    pub clock: Arc<dyn Clock>,
    pub dry_run: bool,
}

/// A rule with its pollers, ready to run.
pub struct RuleTask {
    pub rule: Rule,
    pub pollers: Vec<TriggerPoller>,
    pub memory: Memory,
}

impl RuleTask {
    /// Polls until shutdown. The first poll comes after a random offset below one interval
    /// (at most a second), so a thousand rules do not fire in the same instant.
    pub async fn run(mut self, shared: Arc<Shared>, mut shutdown: Shutdown) {
        let interval = self.rule.poll_interval.get();
        let spread = interval.min(Duration::from_secs(1));
        let offset = rand::rng().random_range(Duration::ZERO..=spread);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = ticker.tick() => {}
            }
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = self.tick(&shared) => {}
            }
        }
        debug!(rule = %self.rule.name, "rule task stopped");
    }

    /// One poll. Never fails: every error is logged and the next tick tries again.
    pub async fn tick(&mut self, shared: &Shared) {
        let rule = &self.rule;
        let samples = read_samples(rule, &self.pollers).await;
        let state = match shared.targets.observe(&rule.target).await {
            Ok(state) => state,
            Err(error) => {
                warn!(rule = %rule.name, target = %rule.target.display(), %error, "cannot read target");
                return;
            }
        };
        let now = shared.clock.now();
        let decision = policy::decide(rule, &samples, &state, &self.memory, now);
        if self.apply(shared, &state, &decision).await {
            self.memory = decision.memory;
        }
    }

    /// Writes the decision if it changes the count; returns whether the new memory stands.
    async fn apply(&self, shared: &Shared, state: &TargetState, decision: &Decision) -> bool {
        let rule = &self.rule;
        let from = state.current_replicas;
        let to = decision.desired_replicas;
        if from == to {
            debug!(rule = %rule.name, replicas = to, reason = %decision.reason, demand = ?decision.demand, "no change");
            return true;
        }
        if shared.dry_run {
            info!(rule = %rule.name, from, to, reason = %decision.reason, "would rescale (dry run)");
            return true;
        }
        match shared.targets.write_replicas(&rule.target, to).await {
            Ok(()) => {
                info!(rule = %rule.name, target = %rule.target.display(), from, to, reason = %decision.reason, "rescaled");
                true
            }
            Err(error) => {
                warn!(rule = %rule.name, target = %rule.target.display(), from, to, %error, "cannot write scale");
                false
            }
        }
    }
}

/// Reads every trigger concurrently. A failure becomes `Sample::Failed`, never zero.
async fn read_samples(rule: &Rule, pollers: &[TriggerPoller]) -> Vec<Sample> {
    let reads = pollers.iter().map(|poller| poller.read());
    let results = join_all(reads).await;
    results
        .into_iter()
        .enumerate()
        .map(|(index, result)| match result {
            Ok(value) => {
                debug!(rule = %rule.name, trigger = %label(rule, index), value, "trigger read");
                Sample::Value(value)
            }
            Err(error) => {
                warn!(rule = %rule.name, trigger = %label(rule, index), kind = error.kind(), %error, "trigger failed");
                Sample::Failed
            }
        })
        .collect()
}

fn label(rule: &Rule, index: usize) -> String {
    rule.triggers
        .get(index)
        .map_or_else(|| index.to_string(), |t| t.label(index))
}
