//! A watch cache of the namespace's objects that qscale reads: the targets (any kind, watched as
//! dynamic objects, kept as the few fields of `store::Cached`) and HorizontalPodAutoscalers. At steady state qscale reads from here and sends no
//! requests but its watches.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use tokio::sync::Mutex;

use super::store::{Store, Writer};
use super::TargetError;

/// How long a first read waits for a new watch to list its objects.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Watches per resource type, started on a rule's first tick. They run for the life of the
/// agent: one `Targets` (and so one cache) is made per process, the watches retry their own
/// errors with backoff, and a replica that loses the lead keeps its watches, so it takes over
/// again without listing (a standby that never led has none: it ticks no rules).
#[derive(Clone)]
pub struct WatchCache {
    client: Client,
    namespace: String,
    watched: Arc<Mutex<HashMap<String, Store>>>,
}

impl WatchCache {
    pub fn new(client: Client, namespace: &str) -> Self {
        WatchCache {
            client,
            namespace: namespace.to_string(),
            watched: Arc::default(),
        }
    }

    pub fn hpa_resource() -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("autoscaling", "v2", "HorizontalPodAutoscaler"),
            "horizontalpodautoscalers",
        )
    }

    /// The store for a resource type; a new one has listed its objects when this returns.
    pub async fn store(&self, resource: &ApiResource) -> Result<Store, TargetError> {
        let key = format!("{}/{}", resource.api_version, resource.plural);
        let store = {
            let mut watched = self.watched.lock().await;
            match watched.get(&key) {
                Some(store) => store.clone(),
                None => {
                    let store = self.start(resource);
                    watched.insert(key.clone(), store.clone());
                    store
                }
            }
        };
        match tokio::time::timeout(READY_TIMEOUT, store.wait_until_ready()).await {
            Ok(true) => Ok(store),
            _ => Err(TargetError::Transport(format!(
                "the watch on {key} has not listed its objects yet"
            ))),
        }
    }

    /// Starts the watch; its task runs until the runtime stops.
    fn start(&self, resource: &ApiResource) -> Store {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.namespace, resource);
        let (mut writer, store) = Writer::new();
        let plural = resource.plural.clone();
        let events = watcher(api, watcher::Config::default()).default_backoff();
        tokio::spawn(async move {
            futures::pin_mut!(events);
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => writer.apply(&event),
                    Err(error) => {
                        tracing::warn!(resource = %plural, %error, "watch error; retrying with backoff");
                    }
                }
            }
        });
        store
    }
}
