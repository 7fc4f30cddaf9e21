//! The `qscale` command line: parsing and dispatch only.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use qscale::config;

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
    Run {
        /// Rules file (TOML or YAML).
        #[arg(long, short, env = "QSCALE_CONFIG")]
        config: PathBuf,
        /// Namespace of the targets (default: the pod's namespace, else the kubeconfig's).
        #[arg(long, short, env = "QSCALE_NAMESPACE")]
        namespace: Option<String>,
    },
    /// Validate rules files: exit 0 with a summary per file, or 1 with every problem found.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { files } => check(&files),
        Command::Run { config, .. } => match config::load_file(&config) {
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
            Ok(_) => {
                eprintln!("qscale run: the agent is not built yet; the rules file is valid");
                ExitCode::FAILURE
            }
        },
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
