//! `qscale simulate`: replay a load trace through a rule (placeholder until the simulator lands).

use std::path::PathBuf;

/// Arguments of `qscale simulate`.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Rules file holding the rule to simulate.
    #[arg(long)]
    pub rules: PathBuf,
    /// Name of the rule (default: the only rule in the file).
    #[arg(long)]
    pub rule: Option<String>,
    /// Trace CSV.
    #[arg(long)]
    pub trace: PathBuf,
}

/// Runs `qscale simulate`.
pub fn run_cli(_args: SimulateArgs) -> anyhow::Result<()> {
    anyhow::bail!("qscale simulate is not built yet")
}
