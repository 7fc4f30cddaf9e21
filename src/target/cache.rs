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

use super::TargetError;

/// How long a first read waits for a new watch to list its objects.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Reflectors per resource type, started on a rule's first tick. They run for the life of the
/// agent: one `Targets` (and so one cache) is made per process, the reflectors retry their own
/// errors with backoff, and a replica that loses the lead keeps its watches, so it takes over
/// again without listing (a standby that never led has none: it ticks no rules).
#[derive(Clone)]
pub struct WatchCache {
    client: Client,
    namespace: String,
    watched: Arc<Mutex<HashMap<String, Store<DynamicObject>>>>,
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
                Some(store) => store.clone(),
                None => {
                    let store = self.start(resource);
                    watched.insert(key.clone(), store.clone());
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

    /// Starts the reflector; its task runs until the runtime stops.
    fn start(&self, resource: &ApiResource) -> Store<DynamicObject> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.namespace, resource);
        let writer = reflector::store::Writer::new(resource.clone());
        let store = writer.as_reader();
        let plural = resource.plural.clone();
        let events = watcher(api, watcher::Config::default()).modify(project);
        let stream = reflector::reflector(writer, events)
            .default_backoff()
            .touched_objects();
        tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(item) = stream.next().await {
                if let Err(error) = item {
                    tracing::warn!(resource = %plural, %error, "watch error; retrying with backoff");
                }
            }
        });
        store
    }

    /// `name` in this namespace, as a store key.
    pub fn key(&self, resource: &ApiResource, name: &str) -> ObjectRef<DynamicObject> {
        ObjectRef::new_with(name, resource.clone()).within(&self.namespace)
    }
}

/// Keeps only what qscale reads of a cached object: its identity, the `qscale.io/`
/// annotations, `spec.replicas` and (for HPAs) `spec.scaleTargetRef`. A real API server's
/// Deployment is 5–20 KB of JSON (pod template, `managedFields`, last-applied annotation) and
/// several times that once parsed; a thousand of them would be most of the agent's heap.
fn project(object: &mut DynamicObject) {
    let meta = &mut object.metadata;
    meta.managed_fields = None;
    meta.labels = None;
    meta.owner_references = None;
    meta.finalizers = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.retain(|key, _| key.starts_with(QSCALE_ANNOTATIONS));
    }
    let mut spec = serde_json::Map::new();
    if let Some(old) = object.data.get_mut("spec") {
        for key in ["replicas", "scaleTargetRef"] {
            if let Some(value) = old.get_mut(key) {
                spec.insert(key.to_string(), value.take());
            }
        }
    }
    object.data = serde_json::json!({ "spec": spec });
}

/// The prefix of every annotation qscale reads on a target.
const QSCALE_ANNOTATIONS: &str = "qscale.io/";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_object_keeps_what_qscale_reads_and_nothing_else() {
        let mut object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "worker",
                "namespace": "jobs",
                "resourceVersion": "42",
                "labels": {"app": "worker"},
                "annotations": {
                    "qscale.io/paused": "true",
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"big\": true}"
                },
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]
            },
            "spec": {
                "replicas": 3,
                "template": {"spec": {"containers": [{"name": "w", "image": "w:1"}]}},
                "scaleTargetRef": {"kind": "Deployment", "name": "worker"}
            },
            "status": {"replicas": 3}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        project(&mut object);
        assert_eq!(object.metadata.name.as_deref(), Some("worker"));
        assert_eq!(object.metadata.namespace.as_deref(), Some("jobs"));
        assert_eq!(object.metadata.resource_version.as_deref(), Some("42"));
        assert!(object.metadata.labels.is_none());
        assert!(object.metadata.managed_fields.is_none());
        let annotations: Vec<_> = object
            .metadata
            .annotations
            .iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(annotations, ["qscale.io/paused"]);
        assert_eq!(
            object.data,
            serde_json::json!({"spec": {
                "replicas": 3,
                "scaleTargetRef": {"kind": "Deployment", "name": "worker"}
            }})
        );
    }
}
