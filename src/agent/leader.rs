//! Leader election on a `coordination.k8s.io/v1` Lease (kube-lease-manager), so two replicas
//! never both write. Without `--leader-elect` this replica always leads.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

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
/// the receiver is dropped.
pub async fn elect(
    client: Client,
    namespace: &str,
    options: &LeaderOptions,
) -> anyhow::Result<watch::Receiver<bool>> {
    let (duration, grace) = options.validate().map_err(anyhow::Error::msg)?;
    let manager = LeaseManagerBuilder::new(client, &options.lease_name)
        .with_namespace(namespace)
        .with_identity(&options.identity)
        .with_duration(duration)
        .with_grace(grace)
        // The field manager stays the crate's default, unique per identity: server-side apply
        // conflicts between managers are what keep two replicas from both taking the lease.
        .build()
        .await?;
    let (leading, _task) = manager.watch().await;
    Ok(leading)
}

/// A flag that is always true: the single-replica mode.
pub fn always() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(true)
}
