//! The scale target: reading and writing the `/scale` subresource of any kind that has one, and
//! the annotations that pause it.
//!
//! Writes are a merge patch of `spec.replicas` on `/scale` only; the workload object itself is
//! never updated, so qscale cannot clobber anyone else's change to it.

mod cache;
mod error;
mod hpa;
mod limit;
mod resolve;
mod store;

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::Client;

pub use cache::WatchCache;
pub use error::TargetError;
pub use limit::{RequestLimit, MAX_CONCURRENT_REQUESTS};
pub use resolve::Resolver;
use store::Store;

use crate::config::TargetRef;
use crate::policy::TargetState;

/// `qscale.io/paused: "true"` leaves the target alone.
pub const PAUSED_ANNOTATION: &str = "qscale.io/paused";
/// `qscale.io/paused-replicas: "N"` sets N and holds it.
pub const PAUSED_REPLICAS_ANNOTATION: &str = "qscale.io/paused-replicas";

/// Every API call has a deadline; a hung connection must not stall a rule forever.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);

/// What the agent sees of a target before deciding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub state: TargetState,
    /// An HPA that scales the same object: qscale must not write.
    pub competing_hpa: Option<String>,
}

/// Where one target is found in the watch cache: its kind's store, its key there, and the
/// HPA store. The watches run for the life of the agent, so a view found once stays valid.
pub struct TargetView {
    objects: Store,
    hpas: Store,
}

/// Reads and writes targets in one namespace.
#[derive(Clone)]
pub struct Targets {
    client: Client,
    namespace: String,
    resolver: Resolver,
    cache: WatchCache,
    field_manager: String,
    limit: RequestLimit,
}

impl Targets {
    /// `limit` is shared with everything else that sends requests (Events), so the bound holds
    /// for the agent as a whole.
    pub fn new(client: Client, namespace: impl Into<String>, limit: RequestLimit) -> Self {
        let namespace = namespace.into();
        Targets {
            resolver: Resolver::new(client.clone()),
            cache: WatchCache::new(client.clone(), &namespace),
            client,
            namespace,
            field_manager: "qscale".to_string(),
            limit,
        }
    }

    pub fn cache(&self) -> &WatchCache {
        &self.cache
    }

    /// The target as the watch cache sees it, and whether an HPA competes for it. Only a kind
    /// without a conventional `spec.replicas` costs a `/scale` GET. `view` is the caller's to
    /// keep between calls for the same target: it spares the lookups of the kind and stores.
    pub async fn observe(
        &self,
        target: &TargetRef,
        view: &mut Option<TargetView>,
    ) -> Result<Observation, TargetError> {
        let view = match view {
            Some(view) => view,
            // Boxed, like the `/scale` read below: rare, and large next to the rest.
            None => view.insert(Box::pin(self.view(target)).await?),
        };
        let object = view
            .objects
            .get(&target.name)
            .ok_or_else(|| TargetError::NotFound(target.display()))?;
        let replicas = match object.replicas {
            Some(replicas) => u32::try_from(replicas).unwrap_or(u32::MAX),
            None => Box::pin(self.read_scale(target)).await?.current_replicas,
        };
        let competing_hpa = view.hpas.find(|hpa| {
            hpa.scale_target
                .as_ref()
                .is_some_and(|reference| hpa::scales(reference, target))
        });
        let state = TargetState {
            current_replicas: replicas,
            paused: object.paused,
            paused_replicas: object.paused_replicas,
            ready_replicas: None,
        };
        Ok(Observation {
            state,
            competing_hpa,
        })
    }

    async fn view(&self, target: &TargetRef) -> Result<TargetView, TargetError> {
        let resource = self.resolver.resolve(target).await?;
        Ok(TargetView {
            objects: self.cache.store(&resource).await?,
            hpas: self.cache.store(&WatchCache::hpa_resource()).await?,
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    async fn api(&self, target: &TargetRef) -> Result<Api<DynamicObject>, TargetError> {
        let resource = self.resolver.resolve(target).await?;
        Ok(Api::namespaced_with(
            self.client.clone(),
            &self.namespace,
            &resource,
        ))
    }

    /// The target's replicas and pause annotations read straight from the API (`/scale` and
    /// the object's metadata), bypassing the cache. Transient failures are retried.
    pub async fn read_scale(&self, target: &TargetRef) -> Result<TargetState, TargetError> {
        (|| self.read_scale_once(target))
            .retry(retry_policy())
            .when(TargetError::is_transient)
            .await
    }

    async fn read_scale_once(&self, target: &TargetRef) -> Result<TargetState, TargetError> {
        let api = self.api(target).await?;
        let what = target.display();
        let meta = self
            .limit
            .run(with_timeout(api.get_metadata(&target.name), &what))
            .await?;
        let scale = self
            .limit
            .run(with_timeout(api.get_scale(&target.name), &what))
            .await;
        let scale = match scale {
            Err(TargetError::NotFound(_)) => {
                // The object exists (its metadata was just read): its kind has no /scale.
                return Err(TargetError::NoScaleSubresource(what));
            }
            other => other?,
        };
        let replicas = scale.spec.and_then(|s| s.replicas).unwrap_or(0);
        let (paused, paused_replicas) =
            store::pause_annotations(meta.metadata.annotations.as_ref());
        Ok(TargetState {
            current_replicas: u32::try_from(replicas).unwrap_or(0),
            paused,
            paused_replicas,
            ready_replicas: None,
        })
    }

    /// Sets `spec.replicas` through `/scale` with a merge patch. A conflict is followed by a
    /// fresh read (done if the target already has the count); conflicts, throttling, timeouts
    /// and 5xx are retried a few times with backoff within the call; anything else is returned.
    pub async fn write_replicas(
        &self,
        target: &TargetRef,
        replicas: u32,
    ) -> Result<(), TargetError> {
        let api = self.api(target).await?;
        let what = target.display();
        let patch = serde_json::json!({ "spec": { "replicas": replicas } });
        let params = PatchParams::default();
        let params = PatchParams {
            field_manager: Some(self.field_manager.clone()),
            ..params
        };
        let attempt = || async {
            let written = self
                .limit
                .run(with_timeout(
                    api.patch_scale(&target.name, &params, &Patch::Merge(&patch)),
                    &what,
                ))
                .await
                .map(|_| ());
            match written {
                Err(conflict @ TargetError::Conflict(_)) => {
                    // Someone else wrote first: read afresh, and when the target already has
                    // the count there is nothing left to write; otherwise retry the write.
                    match self.read_scale_once(target).await {
                        Ok(fresh) if fresh.current_replicas == replicas => Ok(()),
                        _ => Err(conflict),
                    }
                }
                other => other,
            }
        };
        attempt
            .retry(retry_policy())
            .when(TargetError::is_transient)
            .notify(|error, delay| {
                tracing::debug!(target = %what, %error, ?delay, "retrying scale write");
            })
            .await
    }
}

/// Bounded retries: about 3 seconds at most, so a tick never overruns badly.
pub fn retry_policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(1))
        .with_max_times(4)
        .with_jitter()
}

async fn with_timeout<T>(
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
    what: &str,
) -> Result<T, TargetError> {
    match tokio::time::timeout(API_TIMEOUT, call).await {
        Err(_) => Err(TargetError::Timeout(API_TIMEOUT)),
        Ok(result) => result.map_err(|e| TargetError::from_kube(e, what)),
    }
}
