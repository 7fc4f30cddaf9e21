//! The `qscale` command line: parsing and dispatch only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use qscale::agent::{self, AgentOptions, ConfigSource, LeaderOptions};
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

#[derive(Subcommand)]
enum Command {
    /// Run the agent: poll the triggers of every rule and write /scale when the count changes.
    Run(Box<RunArgs>),
    /// Validate rules files: exit 0 with a summary per file, or 1 with every problem found.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the JSON Schema of the rules file (for editors and CI).
    Schema,
    /// Replay a load trace through a rule and compare with a KEDA + HPA model.
    Simulate(qscale::sim::SimulateArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Rules file (TOML or YAML), reloaded when it changes.
    #[arg(long, short, env = "QSCALE_CONFIG", conflicts_with = "config_map")]
    config: Option<PathBuf>,
    /// Read the rules from this ConfigMap (NAME or NAME/KEY) through the API, watched: edits
    /// apply in seconds. The recommended in-cluster mode.
    #[arg(long, env = "QSCALE_CONFIG_MAP", value_name = "NAME[/KEY]")]
    config_map: Option<String>,
    /// Namespace of the targets (default: the pod's namespace, else the kubeconfig's).
    #[arg(long, short, env = "QSCALE_NAMESPACE")]
    namespace: Option<String>,
    /// Decide, log and export metrics, but never write (no /scale, no Events, no state, no
    /// Lease: with --leader-elect it does not take part in the election).
    #[arg(long, env = "QSCALE_DRY_RUN")]
    dry_run: bool,
    /// Address of the admin server: /metrics, /healthz, /readyz.
    #[arg(long, default_value = "0.0.0.0:9090", env = "QSCALE_METRICS_ADDR")]
    metrics_addr: SocketAddr,
    /// ConfigMap that keeps per-rule memory across restarts (created if missing).
    #[arg(long, default_value = "qscale-state", env = "QSCALE_STATE_CONFIG_MAP")]
    state_config_map: String,
    /// Elect a leader among replicas with a Lease; only the leader writes.
    #[arg(long, env = "QSCALE_LEADER_ELECT")]
    leader_elect: bool,
    /// Name of the Lease used for leader election.
    #[arg(long, default_value = "qscale", env = "QSCALE_LEASE_NAME")]
    lease_name: String,
    /// How long a lease is valid without renewal.
    #[arg(long, default_value = "15s", value_parser = parse_duration, env = "QSCALE_LEASE_DURATION")]
    lease_duration: Duration,
    /// The leader renews at the latest this long after its last renewal.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "QSCALE_RENEW_DEADLINE")]
    renew_deadline: Duration,
    /// Lease holder identity (default: $POD_NAME, else the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Threads that run the agent's tasks. One is plenty for thousands of rules (the work is
    /// waiting on the network) and avoids the cross-thread wake-ups that were a fifth of the
    /// agent's CPU with two (BENCHMARKS.md); more only help when a single core is saturated.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64), env = "QSCALE_RUNTIME_THREADS")]
    runtime_threads: u16,
    #[command(flatten)]
    log: LogArgs,
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

fn parse_duration(text: &str) -> Result<Duration, String> {
    text.parse::<config::Dur>().map(|d| d.get())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { files } => check(&files),
        Command::Schema => {
            print!("{}", config::json_schema());
            ExitCode::SUCCESS
        }
        Command::Run(args) => {
            logs::init(args.log.log_format, &args.log.log_level);
            let threads = args.runtime_threads;
            match agent_options(*args) {
                Ok(options) => run(options, threads),
                Err(message) => {
                    eprintln!("qscale run: {message}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Simulate(args) => match qscale::sim::run_cli(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("qscale simulate: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn agent_options(args: RunArgs) -> Result<AgentOptions, String> {
    let source = match (args.config, args.config_map) {
        (Some(path), None) => ConfigSource::File(path),
        (None, Some(spec)) => ConfigSource::config_map(&spec),
        _ => return Err("give one of --config FILE or --config-map NAME[/KEY]".into()),
    };
    let identity = args
        .identity
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "qscale".to_string());
    let leader = if args.leader_elect {
        let options = LeaderOptions {
            lease_name: args.lease_name,
            identity: identity.clone(),
            lease_duration: args.lease_duration,
            renew_deadline: args.renew_deadline,
        };
        options.validate()?;
        Some(options)
    } else {
        None
    };
    Ok(AgentOptions {
        source,
        namespace: args.namespace,
        dry_run: args.dry_run,
        metrics_addr: args.metrics_addr,
        state_config_map: args.state_config_map,
        leader,
        identity,
    })
}

fn run(options: AgentOptions, threads: u16) -> ExitCode {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(usize::from(threads));
        builder
    };
    let runtime = match builder.enable_all().build() {
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
        match config::load_file(file).and_then(|rules| {
            qscale::triggers::preflight(&rules)?;
            Ok(rules)
        }) {
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
