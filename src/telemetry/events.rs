//! Kubernetes Events on scale targets, deduplicated and rate-limited per rule so a flapping
//! trigger cannot flood the API server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;

use super::metrics::{Metrics, RuleLabels};
use crate::config::TargetRef;
use crate::target::RequestLimit;

/// Burst of events a rule may send at once.
const BURST: f64 = 5.0;
/// One more event allowed per this much time.
const REFILL_EVERY: Duration = Duration::from_secs(20);
/// The same event (rule, reason, message) within this window updates a series instead of
/// creating a new object.
const DEDUP_WINDOW: Duration = Duration::from_secs(600);
const REPORTING_CONTROLLER: &str = "qscale.io/agent";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Normal,
    Warning,
}

/// One event to publish.
#[derive(Debug, Clone)]
pub struct Notice {
    pub rule: String,
    pub target: TargetRef,
    pub severity: Severity,
    /// PascalCase, e.g. `Rescaled`.
    pub reason: &'static str,
    pub message: String,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

struct Sent {
    name: String,
    count: i32,
    at: Instant,
}

#[derive(Default)]
struct Memory {
    buckets: HashMap<String, Bucket>,
    sent: HashMap<(String, &'static str, String), Sent>,
}

/// Publishes Events; cheap to clone.
#[derive(Clone)]
pub struct EventSink {
    client: Client,
    namespace: String,
    instance: String,
    metrics: Arc<Metrics>,
    memory: Arc<Mutex<Memory>>,
    limit: RequestLimit,
}

impl EventSink {
    /// `limit` is the agent's shared bound on API requests: a rescale of many rules at once
    /// posts as many Events, and they must not open a connection each.
    pub fn new(
        client: Client,
        namespace: &str,
        instance: &str,
        metrics: Arc<Metrics>,
        limit: RequestLimit,
    ) -> Self {
        EventSink {
            client,
            namespace: namespace.to_string(),
            instance: instance.to_string(),
            metrics,
            memory: Arc::default(),
            limit,
        }
    }

    /// Sends the notice in the background (never delays a tick), unless the rule is over its
    /// rate limit.
    pub fn publish(&self, notice: Notice) {
        let plan = match self.plan(&notice) {
            Some(plan) => plan,
            None => {
                self.metrics
                    .events_suppressed
                    .get_or_create(&RuleLabels {
                        rule: notice.rule.clone(),
                    })
                    .inc();
                tracing::debug!(rule = %notice.rule, reason = notice.reason, "event suppressed by rate limit");
                return;
            }
        };
        let sink = self.clone();
        tokio::spawn(async move {
            let call = tokio::time::timeout(crate::target::API_TIMEOUT, sink.send(&notice, plan));
            match sink.limit.run(call).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(rule = %notice.rule, reason = notice.reason, %error, "cannot publish event")
                }
                Err(_) => {
                    tracing::warn!(rule = %notice.rule, reason = notice.reason, "publishing event timed out")
                }
            }
        });
    }

    /// Takes a token and decides between a new event and a series update.
    fn plan(&self, notice: &Notice) -> Option<Plan> {
        let mut memory = self.memory.lock().ok()?;
        let now = Instant::now();
        let bucket = memory.buckets.entry(notice.rule.clone()).or_insert(Bucket {
            tokens: BURST,
            updated: now,
        });
        let refill = now.duration_since(bucket.updated).as_secs_f64() / REFILL_EVERY.as_secs_f64();
        bucket.tokens = (bucket.tokens + refill).min(BURST);
        bucket.updated = now;
        if bucket.tokens < 1.0 {
            return None;
        }
        bucket.tokens -= 1.0;

        memory
            .sent
            .retain(|_, sent| now.duration_since(sent.at) < DEDUP_WINDOW);
        let key = (notice.rule.clone(), notice.reason, notice.message.clone());
        match memory.sent.get_mut(&key) {
            Some(sent) => {
                sent.count += 1;
                sent.at = now;
                Some(Plan::Series {
                    name: sent.name.clone(),
                    count: sent.count,
                })
            }
            None => {
                let name = format!(
                    "{}.{:x}",
                    notice.target.name,
                    Timestamp::now().as_nanosecond()
                );
                memory.sent.insert(
                    key,
                    Sent {
                        name: name.clone(),
                        count: 1,
                        at: now,
                    },
                );
                Some(Plan::Create { name })
            }
        }
    }

    async fn send(&self, notice: &Notice, plan: Plan) -> Result<(), kube::Error> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        let now = MicroTime(Timestamp::now());
        match plan {
            Plan::Create { name } => {
                let event = Event {
                    metadata: ObjectMeta {
                        name: Some(name),
                        namespace: Some(self.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    event_time: Some(now),
                    action: Some("Scale".into()),
                    reason: Some(notice.reason.into()),
                    note: Some(notice.message.clone()),
                    type_: Some(
                        match notice.severity {
                            Severity::Normal => "Normal",
                            Severity::Warning => "Warning",
                        }
                        .into(),
                    ),
                    regarding: Some(ObjectReference {
                        api_version: notice.target.api_version().map(str::to_string),
                        kind: Some(notice.target.kind.clone()),
                        name: Some(notice.target.name.clone()),
                        namespace: Some(self.namespace.clone()),
                        ..ObjectReference::default()
                    }),
                    reporting_controller: Some(REPORTING_CONTROLLER.into()),
                    reporting_instance: Some(self.instance.clone()),
                    ..Event::default()
                };
                api.create(&PostParams::default(), &event).await?;
            }
            Plan::Series { name, count } => {
                let patch = serde_json::json!({
                    "series": EventSeries { count, last_observed_time: now }
                });
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
        }
        Ok(())
    }
}

enum Plan {
    Create { name: String },
    Series { name: String, count: i32 },
}
