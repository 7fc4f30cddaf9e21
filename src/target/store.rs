//! The watch cache's store: per object, only the few fields qscale reads, in a struct of a few
//! dozen bytes.
//!
//! kube's reflector keeps every object as an `Arc<DynamicObject>` under an `ObjectRef` key that
//! carries its own copy of the resource's names: about 1.9 KB per object even after
//! projection, 2 MB of a 1,000-rule agent's heap (BENCHMARKS.md, finding 20), and more in a
//! namespace with many workloads qscale does not scale. Events are applied as the reflector
//! applies them: a relist is buffered and swapped in whole at `InitDone`, so a reader never
//! sees a half-listed namespace.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use kube::api::DynamicObject;
use kube::runtime::watcher::Event;
use tokio::sync::watch;

use super::{PAUSED_ANNOTATION, PAUSED_REPLICAS_ANNOTATION};

/// What qscale reads of one object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cached {
    /// `spec.replicas`; `None` for a kind without one, whose count comes from `/scale`.
    pub replicas: Option<u64>,
    /// `qscale.io/paused: "true"`.
    pub paused: bool,
    /// `qscale.io/paused-replicas`, when it parses.
    pub paused_replicas: Option<u32>,
    /// An HPA's `spec.scaleTargetRef`; boxed, since targets (most objects) have none.
    pub scale_target: Option<Box<ScaleTargetRef>>,
}

/// An HPA's `spec.scaleTargetRef`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScaleTargetRef {
    pub api_version: Option<String>,
    pub kind: String,
    pub name: String,
}

impl Cached {
    pub fn from_object(object: &DynamicObject) -> Cached {
        let (paused, paused_replicas) = pause_annotations(object.metadata.annotations.as_ref());
        let spec = &object.data["spec"];
        let reference = &spec["scaleTargetRef"];
        let scale_target = reference.is_object().then(|| {
            let text = |key: &str| reference[key].as_str().unwrap_or_default().to_string();
            Box::new(ScaleTargetRef {
                api_version: reference["apiVersion"].as_str().map(str::to_string),
                kind: text("kind"),
                name: text("name"),
            })
        });
        Cached {
            replicas: spec["replicas"].as_u64(),
            paused,
            paused_replicas,
            scale_target,
        }
    }
}

/// `qscale.io/paused` (true or not) and `qscale.io/paused-replicas` (when it parses).
pub fn pause_annotations(annotations: Option<&BTreeMap<String, String>>) -> (bool, Option<u32>) {
    let get = |key: &str| annotations.and_then(|a| a.get(key));
    let paused = get(PAUSED_ANNOTATION).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let replicas = get(PAUSED_REPLICAS_ANNOTATION).and_then(|v| v.trim().parse().ok());
    (paused, replicas)
}

/// One resource type's objects in the namespace, by name. Cheap to clone: handles share it.
#[derive(Clone)]
pub struct Store {
    objects: Arc<RwLock<HashMap<String, Cached>>>,
    ready: watch::Receiver<bool>,
}

/// The watch's side of a [`Store`].
pub struct Writer {
    objects: Arc<RwLock<HashMap<String, Cached>>>,
    ready: watch::Sender<bool>,
    /// Objects of a relist in progress, swapped in at `InitDone`.
    relist: Option<HashMap<String, Cached>>,
}

impl Writer {
    pub fn new() -> (Writer, Store) {
        let objects = Arc::new(RwLock::new(HashMap::new()));
        let (ready, ready_rx) = watch::channel(false);
        let store = Store {
            objects: objects.clone(),
            ready: ready_rx,
        };
        let writer = Writer {
            objects,
            ready,
            relist: None,
        };
        (writer, store)
    }

    pub fn apply(&mut self, event: &Event<DynamicObject>) {
        let named = |object: &DynamicObject| object.metadata.name.clone();
        match event {
            Event::Apply(object) => {
                if let Some(name) = named(object) {
                    self.write().insert(name, Cached::from_object(object));
                }
            }
            Event::Delete(object) => {
                if let Some(name) = named(object) {
                    self.write().remove(&name);
                }
            }
            Event::Init => self.relist = Some(HashMap::new()),
            Event::InitApply(object) => {
                if let (Some(relist), Some(name)) = (self.relist.as_mut(), named(object)) {
                    relist.insert(name, Cached::from_object(object));
                }
            }
            Event::InitDone => {
                if let Some(mut relist) = self.relist.take() {
                    relist.shrink_to_fit();
                    *self.write() = relist;
                }
                self.ready.send_replace(true);
            }
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Cached>> {
        // The map holds plain data, consistent after any panic: a poisoned lock is still usable.
        self.objects.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store {
    /// Returns once the first list is in (or the watch task is gone).
    pub async fn wait_until_ready(&self) -> bool {
        let mut ready = self.ready.clone();
        let outcome = ready.wait_for(|ready| *ready).await.is_ok();
        outcome
    }

    pub fn get(&self, name: &str) -> Option<Cached> {
        self.read().get(name).cloned()
    }

    /// The name of an object that matches, if any.
    pub fn find(&self, mut predicate: impl FnMut(&Cached) -> bool) -> Option<String> {
        self.read()
            .iter()
            .find(|(_, cached)| predicate(cached))
            .map(|(name, _)| name.clone())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Cached>> {
        self.objects.read().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Store {
        fn len(&self) -> usize {
            self.read().len()
        }
    }

    fn object(name: &str, data: serde_json::Value, annotations: &[(&str, &str)]) -> DynamicObject {
        let mut object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": "jobs"},
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        object.data = data;
        object.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        object
    }

    #[test]
    fn an_object_keeps_what_qscale_reads() {
        let deployment = object(
            "worker",
            serde_json::json!({"spec": {"replicas": 3, "template": {}}, "status": {"replicas": 3}}),
            &[
                ("qscale.io/paused", " TRUE "),
                ("qscale.io/paused-replicas", "2"),
                ("kubectl.kubernetes.io/last-applied-configuration", "{}"),
            ],
        );
        assert_eq!(
            Cached::from_object(&deployment),
            Cached {
                replicas: Some(3),
                paused: true,
                paused_replicas: Some(2),
                scale_target: None,
            }
        );
        let hpa = object(
            "h",
            serde_json::json!({"spec": {"scaleTargetRef": {"kind": "Deployment", "name": "worker"}}}),
            &[
                ("qscale.io/paused", "no"),
                ("qscale.io/paused-replicas", "x"),
            ],
        );
        assert_eq!(
            Cached::from_object(&hpa),
            Cached {
                replicas: None,
                paused: false,
                paused_replicas: None,
                scale_target: Some(Box::new(ScaleTargetRef {
                    api_version: None,
                    kind: "Deployment".into(),
                    name: "worker".into(),
                })),
            }
        );
    }

    #[tokio::test]
    async fn a_relist_replaces_the_objects_whole_and_only_when_done() {
        let replicas = |n: u64| serde_json::json!({"spec": {"replicas": n}});
        let (mut writer, store) = Writer::new();
        writer.apply(&Event::Init);
        writer.apply(&Event::InitApply(object("a", replicas(1), &[])));
        assert_eq!(store.get("a"), None, "not visible before InitDone");
        writer.apply(&Event::InitApply(object("b", replicas(2), &[])));
        writer.apply(&Event::InitDone);
        assert!(store.wait_until_ready().await);
        assert_eq!(store.get("a").and_then(|c| c.replicas), Some(1));
        assert_eq!(store.len(), 2);

        writer.apply(&Event::Apply(object("a", replicas(5), &[])));
        writer.apply(&Event::Delete(object("b", replicas(2), &[])));
        assert_eq!(store.get("a").and_then(|c| c.replicas), Some(5));
        assert_eq!(store.get("b"), None);

        // A relist after a dropped watch: what it does not list is gone, but only at InitDone.
        writer.apply(&Event::Init);
        writer.apply(&Event::InitApply(object("c", replicas(7), &[])));
        assert_eq!(store.get("a").and_then(|c| c.replicas), Some(5));
        writer.apply(&Event::InitDone);
        assert_eq!(store.get("a"), None);
        assert_eq!(store.find(|c| c.replicas == Some(7)), Some("c".into()));
    }
}
