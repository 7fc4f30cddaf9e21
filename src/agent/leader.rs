//! Leader election on a `coordination.k8s.io/v1` Lease (kube-lease-manager), so two replicas
//! never both write. Without `--leader-elect` this replica always leads.

use std::time::Duration;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use backon::{ExponentialBuilder, Retryable};
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
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
        let manager = build
            .retry(
                ExponentialBuilder::default()
                    .with_max_delay(Duration::from_secs(30))
                    .without_max_times(),
            )
            .notify(|error, delay| {
                tracing::warn!(%error, ?delay, "cannot set up the leader election lease; retrying");
            })
            .await;
        let Ok(manager) = manager else { return };
        // The Lease was read or created: the API server is reachable, and a standby is ready.
        readiness.api_reached.store(true, Ordering::Relaxed);
        let (mut leading, _task) = manager.watch().await;
        // Forward the crate's flag; when this replica stops listening, the election ends.
        loop {
            let value = *leading.borrow_and_update();
            if tx.send(value).is_err() {
                break;
            }
            if leading.changed().await.is_err() {
                let _ = tx.send(false);
                break;
            }
        }
    });
    Ok(rx)
}

/// A flag that is always true: the single-replica mode.
pub fn always() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(true)
}
