//! Leader election on a `coordination.k8s.io/v1` Lease (kube-lease-manager), so two replicas
//! never both write. Without `--leader-elect` this replica always leads.

use std::time::Duration;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use backon::{ExponentialBuilder, Retryable};
use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;

use crate::telemetry::Readiness;

#[derive(Debug, Clone)]
pub struct LeaderOptions {
    pub lease_name: String,
    pub identity: String,
    pub lease_duration: Duration,
    /// The leader renews at the latest this long after its last renewal.
    pub renew_deadline: Duration,
}

impl LeaderOptions {
    /// kube-lease-manager renews `grace` seconds before expiry, and panics unless
    /// `0 < grace < duration`; check here, with a message instead.
    pub fn validate(&self) -> Result<(u64, u64), String> {
        let duration = self.lease_duration.as_secs();
        let deadline = self.renew_deadline.as_secs();
        if deadline == 0 || deadline >= duration {
            return Err(format!(
                "--renew-deadline ({deadline}s) must be at least 1s and shorter than --lease-duration ({duration}s)"
            ));
        }
        Ok((duration, duration - deadline))
    }
}

/// A flag that is true while this replica leads. The election runs in the background until
/// the receiver is dropped. Until the Lease can be set up (API server unreachable), the flag
/// stays false and setting up is retried with backoff: no leadership, no writes, no crash.
pub fn elect(
    client: Client,
    namespace: &str,
    options: &LeaderOptions,
    readiness: Arc<Readiness>,
) -> Result<watch::Receiver<bool>, String> {
    let (duration, grace) = options.validate()?;
    let (tx, rx) = watch::channel(false);
    let namespace = namespace.to_string();
    let options = options.clone();
    tokio::spawn(async move {
        let build = || {
            LeaseManagerBuilder::new(client.clone(), &options.lease_name)
                .with_namespace(&namespace)
                .with_identity(&options.identity)
                .with_duration(duration)
                .with_grace(grace)
                // The field manager stays the crate's default, unique per identity:
                // server-side apply conflicts between managers keep two replicas from both
                // taking the lease.
                .build()
        };
        // Set-up is retried forever, but never slower than a lease duration: a replica that
        // stepped down must be able to take over again soon after the API server answers.
        let setup_backoff = ExponentialBuilder::default()
            .with_max_delay(options.lease_duration.min(Duration::from_secs(30)))
            .without_max_times();
        loop {
            let manager = build
                .retry(setup_backoff)
                .notify(|error, delay| {
                    tracing::warn!(%error, ?delay, "cannot set up the leader election lease; retrying");
                })
                .await;
            let Ok(manager) = manager else { return };
            // The Lease was read or created: the API server is reachable, and a standby is
            // ready.
            readiness.api_reached.store(true, Ordering::Relaxed);
            match follow(&manager, &tx).await {
                Followed::Unwanted => {
                    // Nobody listens any more (shutdown): hand the lease over now instead of
                    // letting the standby wait for it to expire.
                    let _ = manager.release().await;
                    return;
                }
                Followed::Failed(error) => {
                    // The crate tries to renew at the renew deadline; an error there means the
                    // lease cannot be confirmed and will expire while another replica may take
                    // it. Stop writing now, as client-go does past its renew deadline, and start
                    // over with a fresh manager, which finds out whether this replica still
                    // holds the lease.
                    if *tx.borrow() {
                        tracing::warn!(%error, "cannot renew the lease: stepping down");
                    } else {
                        tracing::warn!(%error, "leader election failed; retrying");
                    }
                    if tx.send(false).is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok(rx)
}

enum Followed {
    /// Every receiver is gone.
    Unwanted,
    /// Talking to the API server about the Lease failed.
    Failed(kube_lease_manager::LeaseManagerError),
}

/// Runs the election step by step, forwarding each change of leadership to `tx`, until nobody
/// listens or a step fails. Unlike the crate's `watch()`, which backs off and retries with its
/// flag still set, a failed step is seen here, so losing the lease stops writes at once.
async fn follow(manager: &LeaseManager, tx: &watch::Sender<bool>) -> Followed {
    loop {
        tokio::select! {
            biased;
            _ = tx.closed() => return Followed::Unwanted,
            step = manager.changed() => match step {
                Ok(leading) => {
                    if tx.send(leading).is_err() {
                        return Followed::Unwanted;
                    }
                }
                Err(error) => return Followed::Failed(error),
            },
        }
    }
}

/// A flag that is always true: the single-replica mode.
pub fn always() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(true)
}
