//! The arguments of `qscale simulate`, in option groups as `--help` shows them.

use std::path::PathBuf;

use crate::config::Dur;

use super::reference::ReferenceParams;
use super::report::TableFormat;
use super::sweep::Sweep;

/// Arguments of `qscale simulate`. The option groups are boxed: the command's arguments live
/// in one enum with the other commands', and should not make it large.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Rules file holding the rule to simulate.
    #[arg(long, required_unless_present = "generate_traces")]
    pub rules: Option<PathBuf>,
    /// Name of the rule (default: the only rule in the file).
    #[arg(long)]
    pub rule: Option<String>,
    /// Trace CSV with a header `time_s,arrival_rate`, `time_s,value` or `minute,count`.
    #[arg(long, required_unless_present = "generate_traces")]
    pub trace: Option<PathBuf>,
    /// Write the bundled synthetic traces into DIR and exit (config/traces in the repo).
    #[arg(long, value_name = "DIR", exclusive = true)]
    pub generate_traces: Option<PathBuf>,
    #[command(flatten)]
    pub workers: Box<WorkerArgs>,
    #[command(flatten)]
    pub output: Box<OutputArgs>,
    #[command(flatten)]
    pub reference: Box<ReferenceArgs>,
}

/// The queue and worker model.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Queue and workers")]
pub struct WorkerArgs {
    /// Messages per second one ready replica finishes [default: target_per_replica / 30 s].
    #[arg(long, value_name = "MSGS_PER_S")]
    pub service_rate: Option<f64>,
    /// Time from asking for a replica to its being ready (scheduling, image pull, start).
    #[arg(long, default_value = "30s")]
    pub startup_delay: Dur,
    /// Replicas running (and ready) at time zero.
    #[arg(long, default_value_t = 0)]
    pub initial_replicas: u32,
    /// Simulation step; the poll intervals should be multiples of it.
    #[arg(long, default_value = "1s")]
    pub step: Dur,
    /// Simulated time after the end of the trace (no load), to see both models drain and
    /// scale in.
    #[arg(long, default_value = "30m")]
    pub tail: Dur,
}

/// What to write, and reruns.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Output and sweeps")]
pub struct OutputArgs {
    /// Write a chart of both models to this SVG file.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Write the time series of both models to this CSV file, one row per step.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// How to print the summary.
    #[arg(long, value_enum, default_value_t = TableFormat::Text)]
    pub format: TableFormat,
    /// Rerun the trace once per value of one setting, e.g. `cooldown=1m,2m,5m`; keys: rule
    /// fields (cooldown, initial_cooldown, poll_interval, tolerance, min_replicas,
    /// max_replicas, target_per_replica, activation, scale_up.stabilization_window,
    /// scale_down.stabilization_window), service_rate, startup_delay, keda.polling_interval,
    /// keda.cooldown_period, hpa.scale_down_window.
    #[arg(long, value_name = "KEY=V1,V2,...")]
    pub sweep: Option<Sweep>,
}

/// The KEDA + HPA model's parameters; the defaults are KEDA's and the HPA's documented ones.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "KEDA + HPA reference model")]
pub struct ReferenceArgs {
    /// KEDA `pollingInterval`: how often activation (0 <-> 1) is checked.
    #[arg(long, default_value = "30s")]
    pub keda_polling_interval: Dur,
    /// KEDA `cooldownPeriod`: inactivity before scaling to zero.
    #[arg(long, default_value = "5m")]
    pub keda_cooldown_period: Dur,
    /// HPA controller sync period (`--horizontal-pod-autoscaler-sync-period`).
    #[arg(long, default_value = "15s")]
    pub hpa_sync_period: Dur,
    /// Lag of the HPA's syncs behind KEDA's polls (they are not aligned in a cluster).
    #[arg(long, default_value = "7s")]
    pub hpa_sync_offset: Dur,
    /// HPA tolerance (`--horizontal-pod-autoscaler-tolerance`).
    #[arg(long, default_value_t = 0.1)]
    pub hpa_tolerance: f64,
    /// HPA scale-up policy: pods per period.
    #[arg(long, default_value_t = 4)]
    pub hpa_scale_up_pods: u32,
    /// HPA scale-up policy: percent per period (the larger of the two wins).
    #[arg(long, default_value_t = 100)]
    pub hpa_scale_up_percent: u32,
    /// Period of the scale-up policies.
    #[arg(long, default_value = "15s")]
    pub hpa_scale_up_period: Dur,
    /// HPA scale-up stabilization window.
    #[arg(long, default_value = "0s")]
    pub hpa_scale_up_window: Dur,
    /// HPA scale-down policy: percent per period.
    #[arg(long, default_value_t = 100)]
    pub hpa_scale_down_percent: u32,
    /// Period of the scale-down policy.
    #[arg(long, default_value = "15s")]
    pub hpa_scale_down_period: Dur,
    /// HPA scale-down stabilization window.
    #[arg(long, default_value = "5m")]
    pub hpa_scale_down_window: Dur,
}

impl ReferenceArgs {
    /// Checked here rather than by clap: a zero period would be a busy loop, not a model.
    pub fn params(&self) -> anyhow::Result<ReferenceParams> {
        anyhow::ensure!(
            !self.keda_polling_interval.get().is_zero() && !self.hpa_sync_period.get().is_zero(),
            "--keda-polling-interval and --hpa-sync-period must be longer than zero"
        );
        anyhow::ensure!(
            self.hpa_tolerance.is_finite() && self.hpa_tolerance >= 0.0,
            "--hpa-tolerance must be a finite number >= 0"
        );
        Ok(ReferenceParams {
            polling_interval_ms: self.keda_polling_interval.as_millis(),
            cooldown_period_ms: self.keda_cooldown_period.as_millis(),
            sync_period_ms: self.hpa_sync_period.as_millis(),
            sync_offset_ms: self.hpa_sync_offset.as_millis(),
            tolerance: self.hpa_tolerance,
            scale_up_pods: self.hpa_scale_up_pods,
            scale_up_percent: self.hpa_scale_up_percent,
            scale_up_period_ms: self.hpa_scale_up_period.as_millis(),
            scale_up_window_ms: self.hpa_scale_up_window.as_millis(),
            scale_down_percent: self.hpa_scale_down_percent,
            scale_down_period_ms: self.hpa_scale_down_period.as_millis(),
            scale_down_window_ms: self.hpa_scale_down_window.as_millis(),
        })
    }
}
