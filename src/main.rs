//! The `qscale` command line: parsing and dispatch only.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use qscale::agent::{self, AgentOptions};
use qscale::config;
use qscale::telemetry::logs::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "qscale",
    version,
    about = "Autoscale Kubernetes workloads from queue depth and metrics, without an HPA"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct LogArgs {
    /// Log format: text for a terminal, json for log collectors.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "QSCALE_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log level or filter (RUST_LOG, when set, wins).
    #[arg(long, default_value = "info", env = "QSCALE_LOG_LEVEL")]
    log_level: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: poll the triggers of every rule and write /scale when the count changes.
    Run {
        /// Rules file (TOML or YAML).
        #[arg(long, short, env = "QSCALE_CONFIG")]
        config: PathBuf,
        /// Namespace of the targets (default: the pod's namespace, else the kubeconfig's).
        #[arg(long, short, env = "QSCALE_NAMESPACE")]
        namespace: Option<String>,
        /// Decide, log and export metrics, but never write.
        #[arg(long, env = "QSCALE_DRY_RUN")]
        dry_run: bool,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Validate rules files: exit 0 with a summary per file, or 1 with every problem found.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Replay a load trace through a rule and compare with a KEDA + HPA model.
    Simulate(qscale::sim::SimulateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { files } => check(&files),
        Command::Simulate(args) => match qscale::sim::run_cli(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("qscale simulate: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run {
            config,
            namespace,
            dry_run,
            log,
        } => {
            logs::init(log.log_format, &log.log_level);
            run(AgentOptions {
                config,
                namespace,
                dry_run,
            })
        }
    }
}

fn run(options: AgentOptions) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("qscale run: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(agent::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Invalid rules print exactly as `qscale check` prints them.
            match e.downcast_ref::<agent::InvalidRules>() {
                Some(invalid) => eprintln!("{invalid}"),
                None => eprintln!("qscale run: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn check(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for file in files {
        match config::load_file(file) {
            Ok(rules) => println!("{}", config::summary(&rules)),
            Err(e) => {
                ok = false;
                eprintln!("{e}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
