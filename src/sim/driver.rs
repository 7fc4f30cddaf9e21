//! The simulation loop, and qscale's policy driven the way the agent drives it.
//!
//! Both models (qscale and the KEDA + HPA reference) run through [`simulate`] with their own
//! queue, so the only difference between their results is the controller.

use crate::config::Rule;
use crate::policy::{self, Decision, Memory, Reason, Sample, TargetState, Timestamp};

use super::queue::{AgeHistogram, QueueModel};

/// How often [`simulate`] reports progress, in steps.
const PROGRESS_EVERY: usize = 8192;

/// Something that sets the replica count from what the trigger reads.
pub trait Controller {
    /// Called at the start of every step with the trigger value and the current replica count
    /// (as the `/scale` subresource reports it); returns the count to run from now on.
    fn control(&mut self, now_ms: u64, value: f64, current_replicas: u32) -> u32;
}

/// One agent tick: every trigger of `rule` reads `value`, and `policy::decide` runs exactly as
/// the agent calls it. The simulator feeds the same value to every trigger because it models a
/// single queue; a rule with several triggers then scales on the smallest `target_per_replica`.
pub fn policy_tick(
    rule: &Rule,
    value: f64,
    current_replicas: u32,
    memory: &Memory,
    now_ms: u64,
) -> Decision {
    let samples: Vec<Sample> = rule.triggers.iter().map(|_| Sample::Value(value)).collect();
    let target = TargetState {
        current_replicas,
        ..TargetState::default()
    };
    policy::decide(
        rule,
        &samples,
        &target,
        memory,
        Timestamp::from_millis(now_ms),
    )
}

/// The inputs and outcome of one tick, kept so that a test can replay them.
#[derive(Debug, Clone, PartialEq)]
pub struct TickRecord {
    pub at_ms: u64,
    pub value: f64,
    pub current_replicas: u32,
    pub desired_replicas: u32,
    pub reason: Reason,
}

/// qscale's agent loop for one rule: a tick every `poll_interval` from time zero, memory
/// carried from tick to tick, starting empty (as for a rule the agent sees for the first time).
#[derive(Debug, Clone)]
pub struct QscaleController<'a> {
    rule: &'a Rule,
    memory: Memory,
    next_tick_ms: u64,
    pub ticks: Vec<TickRecord>,
}

impl<'a> QscaleController<'a> {
    pub fn new(rule: &'a Rule) -> Self {
        QscaleController {
            rule,
            memory: Memory::default(),
            next_tick_ms: 0,
            ticks: Vec::new(),
        }
    }
}

impl Controller for QscaleController<'_> {
    fn control(&mut self, now_ms: u64, value: f64, current_replicas: u32) -> u32 {
        if now_ms < self.next_tick_ms {
            return current_replicas;
        }
        // Due times advance by the interval, not from `now`, so a step that does not divide
        // the poll interval does not stretch it.
        let poll_ms = self.rule.poll_interval.as_millis().max(1);
        while self.next_tick_ms <= now_ms {
            self.next_tick_ms += poll_ms;
        }
        let decision = policy_tick(self.rule, value, current_replicas, &self.memory, now_ms);
        self.ticks.push(TickRecord {
            at_ms: now_ms,
            value,
            current_replicas,
            desired_replicas: decision.desired_replicas,
            reason: decision.reason,
        });
        self.memory = decision.memory;
        decision.desired_replicas
    }
}

/// The load of each step: arrivals into the queue, or the trigger value itself.
#[derive(Debug, Clone, Copy)]
pub enum Load<'a> {
    Arrivals(&'a [u64]),
    Values(&'a [f64]),
}

impl Load<'_> {
    pub fn steps(&self) -> usize {
        match self {
            Load::Arrivals(a) => a.len(),
            Load::Values(v) => v.len(),
        }
    }
}

/// The worker side of a simulation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimConfig {
    pub step_ms: u64,
    /// Messages per second one ready replica finishes.
    pub service_rate: f64,
    pub startup_delay_ms: u64,
    pub initial_replicas: u32,
}

/// Per-step series; depth fields are what the controller saw at the start of the step,
/// replicas what it left for the rest of the step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    pub value: Vec<f64>,
    pub visible: Vec<u64>,
    pub in_flight: Vec<u64>,
    pub oldest_age_ms: Vec<u64>,
    pub replicas: Vec<u32>,
    pub ready: Vec<u32>,
}

/// Everything one model did over the whole horizon.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub step_ms: u64,
    pub series: Series,
    /// Finished messages, plus the unfinished ones at their age at the end of the run.
    pub ages: AgeHistogram,
    pub arrived: u64,
    pub consumed: u64,
    /// Messages still queued or in flight at the end.
    pub unfinished: u64,
    /// Replica changes made.
    pub scale_events: usize,
}

/// Runs `load` through the queue model under `controller`. Pure: the same inputs give the
/// same run. `progress` hears the number of steps done now and then.
pub fn simulate(
    load: Load<'_>,
    config: &SimConfig,
    controller: &mut dyn Controller,
    progress: &mut dyn FnMut(usize),
) -> Run {
    let steps = load.steps();
    let step_ms = config.step_ms.max(1);
    let mut queue = QueueModel::new(
        config.service_rate,
        config.startup_delay_ms,
        config.initial_replicas,
    );
    let mut series = Series {
        value: Vec::with_capacity(steps),
        visible: Vec::with_capacity(steps),
        in_flight: Vec::with_capacity(steps),
        oldest_age_ms: Vec::with_capacity(steps),
        replicas: Vec::with_capacity(steps),
        ready: Vec::with_capacity(steps),
    };
    let mut scale_events = 0;
    for k in 0..steps {
        let now_ms = k as u64 * step_ms;
        let (arrivals, given_value) = match load {
            Load::Arrivals(a) => (a[k], None),
            Load::Values(v) => (0, Some(v[k])),
        };
        queue.begin_step(now_ms, step_ms, arrivals);
        let value = given_value.unwrap_or(queue.depth() as f64);
        series.value.push(value);
        series.visible.push(queue.visible());
        series.in_flight.push(queue.in_flight());
        series.oldest_age_ms.push(queue.oldest_age_ms(now_ms));

        let current = queue.replicas();
        let desired = controller.control(now_ms, value, current);
        if desired != current {
            queue.set_replicas(now_ms, desired);
            scale_events += 1;
        }
        series.replicas.push(queue.replicas());
        series.ready.push(queue.ready_replicas());
        queue.end_step();
        if k % PROGRESS_EVERY == PROGRESS_EVERY - 1 {
            progress(k + 1);
        }
    }
    progress(steps);
    let end_ms = steps as u64 * step_ms;
    Run {
        step_ms,
        ages: queue.ages_with_unfinished(end_ms),
        arrived: queue.arrived(),
        consumed: queue.consumed(),
        unfinished: queue.depth(),
        scale_events,
        series,
    }
}
