//! The imperative shell: load rules, build clients, serve metrics and health, elect a leader,
//! run one task per rule while leading, apply edits to the rules, stop on a signal.

mod clock;
mod heap;
mod leader;
mod rule_task;
mod shutdown;
mod slots;
mod source;
mod state;
mod supervisor;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

pub use clock::{Clock, SystemClock};
pub use leader::LeaderOptions;
pub use rule_task::{RuleTask, Shared};
pub use shutdown::Shutdown;
pub use source::ConfigSource;
pub use state::StateStore;
pub use supervisor::Supervisor;

use crate::config::{ConfigError, RulesFile};
use crate::target::{RequestLimit, Targets};
use crate::telemetry::metrics::ResultLabels;
use crate::telemetry::{EventSink, Metrics, Readiness};
use crate::triggers::PollerFactory;

/// How long running ticks get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(800);

#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub source: ConfigSource,
    pub namespace: Option<String>,
    pub dry_run: bool,
    pub metrics_addr: SocketAddr,
    pub state_config_map: String,
    /// `None`: no election, this replica always leads.
    pub leader: Option<LeaderOptions>,
    /// Reported in Events and used as the lease holder identity.
    pub identity: String,
}

/// A rules file that failed validation at start: the same report `qscale check` prints.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRules(pub ConfigError);

/// Runs until Ctrl-C or SIGTERM. Fails only on what an operator must fix before it can run at
/// all (invalid rules file, no Kubernetes configuration, a busy metrics port); everything later
/// is retried.
pub async fn run(options: AgentOptions) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let readiness = Arc::new(Readiness::default());

    // A bad file at start is an error; in ConfigMap mode the rules arrive through the watch.
    let initial = match &options.source {
        ConfigSource::File(path) => Some(source::load_file(path).map_err(InvalidRules)?),
        ConfigSource::ConfigMap { .. } => None,
    };

    let kube_config = kube::Config::infer().await.map_err(|e| {
        anyhow::anyhow!(
            "no usable Kubernetes configuration (in-cluster service account or KUBECONFIG): {}",
            first_lines(&e)
        )
    })?;
    let namespace = options
        .namespace
        .clone()
        .unwrap_or_else(|| kube_config.default_namespace.clone());
    let client =
        kube::Client::try_from(kube_config).context("cannot build the Kubernetes client")?;

    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let (admin_addr, admin) = crate::telemetry::server::bind(
        options.metrics_addr,
        metrics.clone(),
        readiness.clone(),
        async move {
            let _ = admin_stopped.await;
        },
    )
    .await
    .with_context(|| format!("cannot listen on {}", options.metrics_addr))?;
    let admin = tokio::spawn(admin);
    info!(
        %namespace,
        metrics = %admin_addr,
        dry_run = options.dry_run,
        leader_election = options.leader.is_some(),
        "qscale starting"
    );

    let (state, state_writer) = if options.dry_run {
        (None, None)
    } else {
        let (store, writer) =
            StateStore::start(client.clone(), &namespace, &options.state_config_map);
        (Some(store), Some(writer))
    };
    let requests = RequestLimit::default();
    let events = (!options.dry_run).then(|| {
        EventSink::new(
            client.clone(),
            &namespace,
            &options.identity,
            metrics.clone(),
            requests.clone(),
        )
    });
    let shared = Arc::new(Shared {
        targets: Targets::new(client.clone(), namespace.clone(), requests),
        clock: Arc::new(SystemClock),
        dry_run: options.dry_run,
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        events,
        state: state.clone(),
        epoch: tokio::time::Instant::now(),
    });

    let (loaded_tx, mut loaded_rx) = mpsc::channel(4);
    let _file_watcher = match &options.source {
        ConfigSource::File(path) => match source::watch_file(path.clone(), loaded_tx.clone()) {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                warn!(%error, "cannot watch the rules file; edits need a restart");
                None
            }
        },
        ConfigSource::ConfigMap { name, key } => {
            source::watch_config_map(
                client.clone(),
                &namespace,
                name.clone(),
                key.clone(),
                loaded_tx.clone(),
            );
            None
        }
    };
    let mut current: Option<RulesFile> = None;
    if let Some(rules) = initial {
        accept(&metrics, &readiness);
        current = Some(rules);
    }

    let (_always_leader, mut leading) = leader::always();
    if options.dry_run && options.leader.is_some() {
        // A dry run writes nothing, and a Lease is a write: a dry-run replica beside the real
        // agent would otherwise take the lead from it and stop its writes.
        warn!(
            "--dry-run: leader election is off, this replica decides for itself and writes nothing"
        );
    } else if let Some(leader_options) = &options.leader {
        leading = leader::elect(
            client.clone(),
            &namespace,
            leader_options,
            readiness.clone(),
        )
        .map_err(anyhow::Error::msg)?;
    }

    let mut supervisor = Supervisor::new(shared.clone(), PollerFactory::new());
    let mut is_leader = false;
    let signal = shutdown::signal();
    tokio::pin!(signal);
    loop {
        let want_leader = *leading.borrow_and_update();
        if want_leader != is_leader {
            is_leader = want_leader;
            metrics.leader.set(i64::from(is_leader));
            if is_leader {
                info!(identity = %options.identity, "leading: starting rule tasks");
                if let Some(state) = &state {
                    match state.load(shared.clock.now()).await {
                        Ok(stored) => supervisor.set_stored(stored),
                        Err(error) => warn!(%error, "cannot read stored memory; rules start fresh"),
                    }
                }
                if let Some(rules) = &current {
                    supervisor.apply(rules).await;
                }
            } else {
                warn!(identity = %options.identity, "not leading: stopping rule tasks");
                supervisor.stop_all(Duration::ZERO).await;
            }
        }
        tokio::select! {
            _ = &mut signal => break,
            changed = leading.changed() => {
                if changed.is_err() {
                    error!("leader election ended; stopping writes");
                    supervisor.stop_all(Duration::ZERO).await;
                    metrics.leader.set(0);
                    break;
                }
            }
            Some(loaded) = loaded_rx.recv() => match loaded {
                Ok(rules) => {
                    info!(source = %rules.source_name, rules = rules.rules.len(), "rules loaded");
                    accept(&metrics, &readiness);
                    if is_leader {
                        supervisor.apply(&rules).await;
                    }
                    current = Some(rules);
                }
                Err(problems) => {
                    metrics.config_reloads.get_or_create(&ResultLabels { result: "failure".into() }).inc();
                    error!(errors = %problems, "rejected an edit of the rules; the last good rules keep running");
                }
            },
        }
    }

    info!("shutting down");
    supervisor.stop_all(SHUTDOWN_GRACE).await;
    drop(shared);
    drop(state);
    if let Some(writer) = state_writer {
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, writer).await;
    }
    let _ = admin_stop.send(());
    let _ = tokio::time::timeout(Duration::from_millis(200), admin).await;
    info!("stopped");
    Ok(())
}

/// The first line of each cause in an error chain, with quoted values blanked. A kubeconfig
/// parse error quotes the lines around the mistake, or the value it could not read, and a token
/// may be either: the file, line and column are enough to find it.
fn first_lines(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut cause = Some(error);
    while let Some(current) = cause {
        let text = current.to_string();
        let line = blank_quoted(text.lines().next().unwrap_or_default().trim());
        if !line.is_empty() && parts.last() != Some(&line) {
            parts.push(line);
        }
        cause = current.source();
    }
    parts.join(": ")
}

/// `invalid type: string "s3cr3t"` becomes `invalid type: string "…"`.
fn blank_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quoted = false;
    for c in text.chars() {
        if c == '"' || c == '`' {
            if !quoted {
                out.push(c);
                out.push('…');
            } else {
                out.push(c);
            }
            quoted = !quoted;
        } else if !quoted {
            out.push(c);
        }
    }
    out
}

fn accept(metrics: &Metrics, readiness: &Readiness) {
    metrics
        .config_reloads
        .get_or_create(&ResultLabels {
            result: "success".into(),
        })
        .inc();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    metrics.config_last_success.set(now);
    readiness.config_loaded.store(true, Ordering::Relaxed);
}
