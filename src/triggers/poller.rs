//! One readable trigger, whatever its source, and the factory that builds them: one AWS
//! context, one HTTP client per TLS setting, and one shared reading per distinct source.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::aws::AwsContext;
use super::prometheus::{HttpClients, PrometheusPoller};
use super::shared::SharedReading;
use super::sqs::{QueueCounts, SqsClients, SqsPoller, SqsSource};
use super::TriggerError;
use crate::config::{PrometheusTrigger, Trigger, TriggerSource};

type SqsShared = Arc<(SqsPoller, SharedReading<QueueCounts>)>;
type PrometheusShared = Arc<(PrometheusPoller, SharedReading<f64>)>;

/// A trigger ready to be read.
#[derive(Clone)]
pub enum TriggerPoller {
    Sqs {
        source: SqsShared,
        include_in_flight: bool,
        include_delayed: bool,
    },
    Prometheus(PrometheusShared),
    /// A trigger that could not be built; every read reports why, so the rule holds (or falls
    /// back) instead of the agent failing.
    Broken(TriggerError),
}

impl TriggerPoller {
    pub async fn read(&self) -> Result<f64, TriggerError> {
        match self {
            TriggerPoller::Sqs {
                source,
                include_in_flight,
                include_delayed,
            } => {
                let (poller, shared) = source.as_ref();
                let counts = shared.read(|| poller.read()).await?;
                Ok(counts.depth(*include_in_flight, *include_delayed))
            }
            TriggerPoller::Prometheus(source) => {
                let (poller, shared) = source.as_ref();
                shared.read(|| poller.read()).await
            }
            TriggerPoller::Broken(error) => Err(error.clone()),
        }
    }
}

/// Builds pollers, sharing clients and readings between triggers.
#[derive(Clone, Default)]
pub struct PollerFactory {
    aws: AwsContext,
    http: HttpClients,
    sqs_clients: SqsClients,
    sqs: Arc<tokio::sync::Mutex<HashMap<SqsSource, SqsShared>>>,
    prometheus: Arc<Mutex<HashMap<PrometheusTrigger, PrometheusShared>>>,
}

impl PollerFactory {
    pub fn new() -> Self {
        Self::default()
    }

    /// A poller for `trigger`, read by a rule every `interval`.
    pub async fn build(&self, trigger: &Trigger, interval: Duration) -> TriggerPoller {
        match &trigger.source {
            TriggerSource::Sqs(spec) => {
                let key = SqsSource::from(spec);
                let mut sources = self.sqs.lock().await;
                let source = match sources.get(&key) {
                    Some(source) => {
                        source.1.add_user(interval);
                        source.clone()
                    }
                    None => {
                        let poller =
                            SqsPoller::new(&key, &self.sqs_clients, &self.http, &self.aws).await;
                        let source = Arc::new((poller, SharedReading::new(interval)));
                        sources.insert(key, source.clone());
                        source
                    }
                };
                TriggerPoller::Sqs {
                    source,
                    include_in_flight: spec.include_in_flight,
                    include_delayed: spec.include_delayed,
                }
            }
            TriggerSource::Prometheus(spec) => {
                let Ok(mut sources) = self.prometheus.lock() else {
                    return TriggerPoller::Broken(TriggerError::Other(
                        "poller registry poisoned".into(),
                    ));
                };
                if let Some(source) = sources.get(spec.as_ref()) {
                    source.1.add_user(interval);
                    return TriggerPoller::Prometheus(source.clone());
                }
                match PrometheusPoller::new(spec, &self.http, &self.aws) {
                    Ok(poller) => {
                        let source = Arc::new((poller, SharedReading::new(interval)));
                        sources.insert(spec.as_ref().clone(), source.clone());
                        TriggerPoller::Prometheus(source)
                    }
                    Err(error) => TriggerPoller::Broken(error),
                }
            }
        }
    }

    /// Distinct sources being polled: (SQS queues, Prometheus queries).
    pub async fn source_counts(&self) -> (usize, usize) {
        let sqs = self.sqs.lock().await.len();
        let prometheus = self.prometheus.lock().map(|p| p.len()).unwrap_or(0);
        (sqs, prometheus)
    }
}
