//! A watch cache of the namespace's objects that qscale reads: the targets (any kind, as dynamic
//! objects) and HorizontalPodAutoscalers. At steady state qscale reads from here and sends no
//! requests but its watches.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use tokio::sync::Mutex;
use tokio::task::AbortHandle;

use super::TargetError;

/// How long a first read waits for a new watch to list its objects.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

struct Watched {
    store: Store<DynamicObject>,
    task: AbortHandle,
}

/// Reflectors per resource type, started on first use and stopped on drop.
#[derive(Clone)]
pub struct WatchCache {
    client: Client,
    namespace: String,
    watched: Arc<Mutex<HashMap<String, Watched>>>,
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
    pub async fn store(&self, resource: &ApiResource) -> Result<Store<DynamicObject>, TargetError> {
        let key = format!("{}/{}", resource.api_version, resource.plural);
        let store = {
            let mut watched = self.watched.lock().await;
            match watched.get(&key) {
                Some(entry) => entry.store.clone(),
                None => {
                    let entry = self.start(resource);
                    let store = entry.store.clone();
                    watched.insert(key.clone(), entry);
                    store
                }
            }
        };
        match tokio::time::timeout(READY_TIMEOUT, store.wait_until_ready()).await {
            Ok(Ok(())) => Ok(store),
            _ => Err(TargetError::Transport(format!(
                "the watch on {key} has not listed its objects yet"
            ))),
        }
    }

    fn start(&self, resource: &ApiResource) -> Watched {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.namespace, resource);
        let writer = reflector::store::Writer::new(resource.clone());
        let store = writer.as_reader();
        let plural = resource.plural.clone();
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .touched_objects();
        let task = tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(item) = stream.next().await {
                if let Err(error) = item {
                    tracing::warn!(resource = %plural, %error, "watch error; retrying with backoff");
                }
            }
        });
        Watched {
            store,
            task: task.abort_handle(),
        }
    }

    pub async fn get(
        &self,
        resource: &ApiResource,
        name: &str,
    ) -> Result<Option<Arc<DynamicObject>>, TargetError> {
        let store = self.store(resource).await?;
        Ok(store.get(&ObjectRef::new_with(name, resource.clone()).within(&self.namespace)))
    }

    /// Stops every watch (on shutdown, or when leadership is lost).
    pub async fn stop(&self) {
        let mut watched = self.watched.lock().await;
        for (_, entry) in watched.drain() {
            entry.task.abort();
        }
    }
}
