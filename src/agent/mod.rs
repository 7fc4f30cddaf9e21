//! The imperative shell: load rules, build clients, run one task per rule, stop on a signal.

mod clock;
mod rule_task;
mod shutdown;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinSet;
use tracing::{info, warn};

pub use clock::{Clock, SystemClock};
pub use rule_task::{RuleTask, Shared};
pub use shutdown::Shutdown;

use crate::config::{self, RulesFile};
use crate::policy::Memory;
use crate::target::Targets;
use crate::triggers::PollerFactory;

/// How long running ticks get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(800);

#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub config: PathBuf,
    pub namespace: Option<String>,
    pub dry_run: bool,
}

/// A rules file that failed validation: the same report `qscale check` prints.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRules(pub config::ConfigError);

/// Runs until Ctrl-C or SIGTERM. Fails only on what an operator must fix before it can run at
/// all (invalid rules, no Kubernetes configuration); everything later is retried.
pub async fn run(options: AgentOptions) -> anyhow::Result<()> {
    let rules = config::load_file(&options.config).map_err(InvalidRules)?;
    let kube_config = kube::Config::infer()
        .await
        .context("no Kubernetes configuration (in-cluster service account or KUBECONFIG)")?;
    let namespace = options
        .namespace
        .clone()
        .unwrap_or_else(|| kube_config.default_namespace.clone());
    let client =
        kube::Client::try_from(kube_config).context("cannot build the Kubernetes client")?;
    info!(
        namespace = %namespace,
        rules = rules.rules.len(),
        config = %options.config.display(),
        dry_run = options.dry_run,
        "qscale starting"
    );

    let shared = Arc::new(Shared {
        targets: Targets::new(client, namespace),
        clock: Arc::new(SystemClock),
        dry_run: options.dry_run,
    });
    let (stop, shutdown) = Shutdown::new();
    let mut tasks = spawn_rules(&rules, &shared, &shutdown).await;

    shutdown::signal().await;
    info!("shutting down");
    let _ = stop.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!("some rule tasks did not stop in time; aborting them");
        tasks.abort_all();
    }
    info!("stopped");
    Ok(())
}

async fn spawn_rules(rules: &RulesFile, shared: &Arc<Shared>, shutdown: &Shutdown) -> JoinSet<()> {
    let factory = PollerFactory::new();
    let mut tasks = JoinSet::new();
    for rule in &rules.rules {
        let mut pollers = Vec::with_capacity(rule.triggers.len());
        for trigger in &rule.triggers {
            pollers.push(factory.build(trigger).await);
        }
        let task = RuleTask {
            rule: rule.clone(),
            pollers,
            memory: Memory::default(),
        };
        tasks.spawn(task.run(shared.clone(), shutdown.clone()));
    }
    tasks
}
