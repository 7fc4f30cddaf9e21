//! Per-rule memory persisted in one ConfigMap (default `qscale-state`), so a restart or a move to
//! another pod does not forget a cooldown. One key per rule, JSON values. Writes are coalesced
//! and happen only when a memory's durable part changes.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use tokio::sync::mpsc;

use crate::policy::{Memory, Timestamp};

/// Updates arriving within this window go out as one patch.
const COALESCE: Duration = Duration::from_millis(300);

enum Update {
    Save(String, String),
    Forget(String),
}

/// Handle to the state ConfigMap; cheap to clone.
#[derive(Clone)]
pub struct StateStore {
    api: Api<ConfigMap>,
    name: String,
    updates: mpsc::UnboundedSender<Update>,
}

impl StateStore {
    /// Starts the writer task. It ends, after a last flush, when every handle is dropped.
    pub fn start(
        client: Client,
        namespace: &str,
        name: &str,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let api: Api<ConfigMap> = Api::namespaced(client, namespace);
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_loop(api.clone(), name.to_string(), rx));
        (
            StateStore {
                api,
                name: name.to_string(),
                updates: tx,
            },
            writer,
        )
    }

    /// Reads every stored memory. A missing ConfigMap is an empty state; an unreadable entry
    /// is skipped (that rule starts fresh, which is the cautious start).
    ///
    /// `last_active_at` is only persisted with scale events, so a restored memory counts the
    /// restart as activity: the step to zero waits one more cooldown rather than coming early.
    pub async fn load(&self, now: Timestamp) -> Result<HashMap<String, Memory>, kube::Error> {
        let call = self.api.get_opt(&self.name);
        let configmap = tokio::time::timeout(crate::target::API_TIMEOUT, call)
            .await
            .map_err(|_| kube::Error::Service("timed out reading the state ConfigMap".into()))??;
        let data = configmap.and_then(|cm| cm.data).unwrap_or_default();
        let mut memories = HashMap::new();
        for (rule, text) in data {
            match serde_json::from_str::<Memory>(&text) {
                Ok(memory) => {
                    memories.insert(rule, memory.resumed(now));
                }
                Err(error) => {
                    tracing::warn!(%rule, %error, "ignoring unreadable stored memory");
                }
            }
        }
        Ok(memories)
    }

    pub fn save(&self, rule: &str, memory: &Memory) {
        match serde_json::to_string(memory) {
            Ok(text) => {
                let _ = self.updates.send(Update::Save(rule.to_string(), text));
            }
            Err(error) => tracing::warn!(%rule, %error, "cannot serialize memory"),
        }
    }

    pub fn forget(&self, rule: &str) {
        let _ = self.updates.send(Update::Forget(rule.to_string()));
    }
}

async fn write_loop(api: Api<ConfigMap>, name: String, mut rx: mpsc::UnboundedReceiver<Update>) {
    // Pending changes: Some(value) to write, None to delete the key.
    let mut pending: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut open = true;
    while open || !pending.is_empty() {
        if pending.is_empty() {
            match rx.recv().await {
                Some(update) => apply(&mut pending, update),
                None => break,
            }
        }
        let deadline = tokio::time::Instant::now() + COALESCE;
        while open {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(update)) => apply(&mut pending, update),
                Ok(None) => open = false,
                Err(_) => break,
            }
        }
        match write(&api, &name, &pending).await {
            Ok(()) => pending.clear(),
            Err(error) => {
                tracing::warn!(configmap = %name, %error, "cannot write state; will retry");
                if !open {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

fn apply(pending: &mut BTreeMap<String, Option<String>>, update: Update) {
    match update {
        Update::Save(rule, text) => pending.insert(rule, Some(text)),
        Update::Forget(rule) => pending.insert(rule, None),
    };
}

async fn write(
    api: &Api<ConfigMap>,
    name: &str,
    pending: &BTreeMap<String, Option<String>>,
) -> Result<(), kube::Error> {
    let patch = serde_json::json!({ "data": pending });
    let params = PatchParams::default();
    let merge = Patch::Merge(&patch);
    match timed(api.patch(name, &params, &merge)).await {
        Err(kube::Error::Api(status)) if status.code == 404 => {
            let configmap = ConfigMap {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.to_string()),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/managed-by".to_string(),
                        "qscale".to_string(),
                    )])),
                    ..Default::default()
                },
                data: Some(
                    pending
                        .iter()
                        .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
                        .collect(),
                ),
                ..Default::default()
            };
            timed(api.create(&PostParams::default(), &configmap))
                .await
                .map(|_| ())
        }
        other => other.map(|_| ()),
    }
}

async fn timed<T>(
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    tokio::time::timeout(crate::target::API_TIMEOUT, call)
        .await
        .map_err(|_| kube::Error::Service("request timed out".into()))?
}
