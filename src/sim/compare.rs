//! One comparison: the same trace through qscale's policy and through the KEDA + HPA model,
//! each with its own queue and workers.

use anyhow::Context as _;

use crate::config::Rule;

use super::driver::{simulate, Load, QscaleController, Run, SimConfig, TickRecord};
use super::reference::{KedaHpa, Metric, ReferenceParams};
use super::report::{summarize, Summary};
use super::trace::{Trace, TraceKind};

/// Most steps one run may have (about 4 months at 1 s), so a typo in `--step` cannot exhaust
/// memory.
const MAX_STEPS: u64 = 10_000_000;

/// The default service rate is `target_per_replica / DEFAULT_BACKLOG_SECONDS`: a replica
/// works through the backlog the rule gives it in 30 s. Depth-based scaling settles where
/// each replica has about `target_per_replica` messages, so this also makes the steady-state
/// wait about 30 s; pass `--service-rate` to model a real worker.
pub const DEFAULT_BACKLOG_SECONDS: f64 = 30.0;

/// Everything a comparison depends on besides the trace.
#[derive(Debug, Clone)]
pub struct Setup {
    pub rule: Rule,
    pub sim: SimConfig,
    pub reference: ReferenceParams,
    /// Simulated time after the end of the trace, to see both models drain and scale in.
    pub tail_ms: u64,
}

/// Both runs and what they amount to.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// Per step: arrivals per second (arrival trace) or the trigger value (value trace).
    pub load: Vec<f64>,
    pub queue_model: bool,
    pub qscale: Run,
    pub reference: Run,
    pub qscale_ticks: Vec<TickRecord>,
    pub qscale_summary: Summary,
    pub reference_summary: Summary,
}

/// The service rate used when none is given: see [`DEFAULT_BACKLOG_SECONDS`]. With several
/// triggers, the smallest target decides, as it does for the replica count.
pub fn default_service_rate(rule: &Rule) -> f64 {
    let target = rule
        .triggers
        .iter()
        .map(|t| t.target_per_replica)
        .fold(f64::INFINITY, f64::min);
    if target.is_finite() {
        target / DEFAULT_BACKLOG_SECONDS
    } else {
        1.0
    }
}

/// The rule's triggers as KEDA would configure them: `queueLength` = `target_per_replica`,
/// `activationQueueLength` = `activation`.
pub fn reference_metrics(rule: &Rule) -> Vec<Metric> {
    rule.triggers
        .iter()
        .map(|t| Metric {
            target: t.target_per_replica,
            activation: t.activation,
        })
        .collect()
}

/// Number of steps covering the trace and the tail.
pub fn step_count(trace: &Trace, setup: &Setup) -> anyhow::Result<usize> {
    let step_ms = setup.sim.step_ms;
    anyhow::ensure!(step_ms > 0, "the step must be at least 1 ms");
    let steps = (trace.duration_ms() + setup.tail_ms).div_ceil(step_ms);
    anyhow::ensure!(
        steps <= MAX_STEPS,
        "{steps} steps of {step_ms} ms is more than the {MAX_STEPS} a run may have; use a \
         longer --step or a shorter --tail"
    );
    usize::try_from(steps).context("too many steps for this machine")
}

/// Runs both models. `progress` hears the steps done, counting both runs.
pub fn compare(
    trace: &Trace,
    setup: &Setup,
    progress: &mut dyn FnMut(usize),
) -> anyhow::Result<Comparison> {
    let steps = step_count(trace, setup)?;
    let step_ms = setup.sim.step_ms;
    let step_s = step_ms as f64 / 1000.0;
    let queue_model = trace.kind == TraceKind::Arrivals;
    let (arrivals, values, load) = match trace.kind {
        TraceKind::Arrivals => {
            let arrivals = trace.arrivals_per_step(step_ms, steps);
            let load = arrivals.iter().map(|&a| a as f64 / step_s).collect();
            (arrivals, Vec::new(), load)
        }
        TraceKind::Values => {
            let values = trace.values_per_step(step_ms, steps);
            (Vec::new(), values.clone(), values)
        }
    };
    let load_of = || match trace.kind {
        TraceKind::Arrivals => Load::Arrivals(&arrivals),
        TraceKind::Values => Load::Values(&values),
    };

    let mut qscale = QscaleController::new(&setup.rule);
    let qscale_run = simulate(load_of(), &setup.sim, &mut qscale, progress);
    let mut reference = KedaHpa::new(
        setup.reference.clone(),
        reference_metrics(&setup.rule),
        setup.rule.min_replicas,
        setup.rule.max_replicas,
    );
    let reference_run = simulate(load_of(), &setup.sim, &mut reference, &mut |done| {
        progress(steps + done)
    });

    let burst_end = trace.last_burst_end_ms();
    Ok(Comparison {
        qscale_summary: summarize(&qscale_run, queue_model, burst_end),
        reference_summary: summarize(&reference_run, queue_model, burst_end),
        load,
        queue_model,
        qscale: qscale_run,
        reference: reference_run,
        qscale_ticks: qscale.ticks,
    })
}
