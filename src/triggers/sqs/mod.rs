//! SQS trigger: one `GetQueueAttributes` call per poll. The call always asks for the visible,
//! in-flight and delayed counts, so triggers that count differently can still share it.

mod call;
mod errors;
mod signing;
mod transport;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws_sdk_sqs::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
use aws_sdk_sqs::Client;
use tokio::sync::{OnceCell, Semaphore};

use super::aws::{AwsContext, AwsIdentity};
use super::prometheus::HttpClients;
use super::TriggerError;
use crate::config::{SqsTrigger, TlsSettings};
use call::Endpoint;
use signing::{FixedSigner, Payload};
use transport::{Direct, Transport};

/// A queue's message counts at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueCounts {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
}

impl QueueCounts {
    /// The depth a trigger reads: visible, plus in flight and delayed as configured.
    pub fn depth(&self, include_in_flight: bool, include_delayed: bool) -> f64 {
        let mut depth = self.visible;
        if include_in_flight {
            depth += self.in_flight;
        }
        if include_delayed {
            depth += self.delayed;
        }
        depth as f64
    }
}

/// What makes two SQS triggers read the same thing with the same credentials.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SqsSource {
    pub queue: String,
    pub region: Option<String>,
    pub role_arn: Option<String>,
    pub external_id: Option<String>,
    pub endpoint: Option<String>,
    pub timeout: Duration,
}

impl From<&SqsTrigger> for SqsSource {
    fn from(spec: &SqsTrigger) -> Self {
        SqsSource {
            queue: spec.queue.clone(),
            region: spec.region.clone(),
            role_arn: spec.role_arn.clone(),
            external_id: spec.external_id.clone(),
            endpoint: spec.endpoint.clone(),
            timeout: spec.timeout.get(),
        }
    }
}

/// Reads one queue's counts.
pub struct SqsPoller {
    aws: AwsContext,
    client: Arc<SqsClient>,
    queue: String,
    /// The request body, which names the queue's URL: made once, after a lookup if the rule
    /// gives a queue name (a failed lookup is retried on the next poll).
    body: OnceCell<Payload>,
    timeout: Duration,
}

/// What every queue read with one (identity, endpoint) shares: the SDK client (for
/// `GetQueueUrl`) and where `GetQueueAttributes` goes, as the SDK's resolver says.
struct SqsClient {
    sdk: Client,
    endpoint: Result<Endpoint, TriggerError>,
    /// Bounds the calls in flight to this endpoint, and so the connections open to it.
    in_flight: Semaphore,
}

/// The most `GetQueueAttributes` calls in flight per endpoint. Every rule's first tick falls
/// in the same second, and with thousands of rules an unbounded burst opened a connection per
/// concurrent call (over 1,400 sockets at 5,000 rules, each with its buffers and, against real
/// SQS, a TLS session). A loopback call takes well under a millisecond and a real one tens, so
/// this still allows thousands of calls a second.
const MAX_CALLS_IN_FLIGHT: usize = 32;

/// SQS clients, one per (identity, endpoint), shared by every queue they read: a thousand
/// queues must not mean a thousand clients and pools.
#[derive(Clone, Default)]
pub struct SqsClients {
    clients: Arc<tokio::sync::Mutex<HashMap<ClientKey, Arc<SqsClient>>>>,
    /// One connection pool for every endpoint reached without a proxy.
    direct: Arc<OnceLock<Result<Direct, TriggerError>>>,
}

/// Who calls, and which endpoint.
type ClientKey = (AwsIdentity, Option<String>);

impl SqsClients {
    async fn get(&self, spec: &SqsSource, aws: &AwsContext, http: &HttpClients) -> Arc<SqsClient> {
        let identity = AwsIdentity {
            region: spec.region.clone(),
            role_arn: spec.role_arn.clone(),
            external_id: spec.external_id.clone(),
        };
        let key = (identity, spec.endpoint.clone());
        let mut clients = self.clients.lock().await;
        if let Some(client) = clients.get(&key) {
            return client.clone();
        }
        let sdk_config = aws.sdk_config(&key.0).await;
        let mut config = aws_sdk_sqs::config::Builder::from(&sdk_config);
        if let Some(endpoint) = &spec.endpoint {
            config = config.endpoint_url(endpoint);
        }
        let region = sdk_config.region().map(|r| r.to_string());
        let endpoint_url = spec
            .endpoint
            .clone()
            .or_else(|| sdk_config.endpoint_url().map(str::to_string));
        let endpoint = resolve_endpoint(
            region,
            endpoint_url,
            sdk_config.use_fips().unwrap_or(false),
            sdk_config.use_dual_stack().unwrap_or(false),
        )
        .await
        .and_then(|(url, region)| {
            let bad = |e: &dyn std::fmt::Display| {
                TriggerError::Config(format!("SQS endpoint {url}: {e}"))
            };
            let parsed = reqwest::Url::parse(&url).map_err(|e| bad(&e))?;
            let uri: http::Uri = parsed.as_str().parse().map_err(|e| bad(&e))?;
            let transport = if transport::is_proxied(&transport::proxy_rules(), &uri) {
                Transport::Proxied(http.get(&TlsSettings::default())?)
            } else {
                Transport::Direct(Box::new(
                    self.direct.get_or_init(transport::direct).clone()?,
                ))
            };
            let signer = FixedSigner::for_url(&parsed, &region);
            Ok(Endpoint {
                headers: Endpoint::headers(signer.as_ref()),
                signer,
                transport,
                uri,
                url: parsed,
                region,
                identity: key.0.clone(),
            })
        });
        let client = Arc::new(SqsClient {
            sdk: Client::from_conf(config.build()),
            endpoint,
            in_flight: Semaphore::new(MAX_CALLS_IN_FLIGHT),
        });
        clients.insert(key, client.clone());
        client
    }
}

/// The URL `GetQueueAttributes` is posted to, from the SDK's own endpoint rules (partitions,
/// FIPS, dual stack, an `endpoint` override), and the region it is signed for.
async fn resolve_endpoint(
    region: Option<String>,
    endpoint: Option<String>,
    use_fips: bool,
    use_dual_stack: bool,
) -> Result<(String, String), TriggerError> {
    let region = region.ok_or_else(|| {
        TriggerError::Config(
            "no AWS region: set `region` on the trigger, or AWS_REGION in the environment".into(),
        )
    })?;
    let mut params = Params::builder()
        .region(region.clone())
        .use_fips(use_fips)
        .use_dual_stack(use_dual_stack);
    if let Some(endpoint) = endpoint {
        params = params.endpoint(endpoint);
    }
    let params = params
        .build()
        .map_err(|e| TriggerError::Config(format!("SQS endpoint: {e}")))?;
    let resolved = DefaultResolver::new()
        .resolve_endpoint(&params)
        .await
        .map_err(|e| TriggerError::Config(format!("SQS endpoint: {e}")))?;
    Ok((resolved.url().to_string(), region))
}

impl SqsPoller {
    pub async fn new(
        spec: &SqsSource,
        clients: &SqsClients,
        http: &HttpClients,
        aws: &AwsContext,
    ) -> Self {
        let body = OnceCell::new();
        if is_url(&spec.queue) {
            // A URL needs no lookup; setting an empty cell cannot fail.
            let _ = body.set(call::payload(&spec.queue));
        }
        SqsPoller {
            aws: aws.clone(),
            client: clients.get(spec, aws, http).await,
            queue: spec.queue.clone(),
            body,
            timeout: spec.timeout,
        }
    }

    /// The queue's visible, in-flight and delayed counts.
    pub async fn read(&self) -> Result<QueueCounts, TriggerError> {
        let endpoint = self.client.endpoint.as_ref().map_err(Clone::clone)?;
        let read =
            async {
                // Boxed, like every rare path inside a poll: the SDK's `GetQueueUrl` future
                // is many KiB and runs once per queue (BENCHMARKS.md, finding 15).
                let body = match self.body.get() {
                    Some(body) => body,
                    None => {
                        self.body
                            .get_or_try_init(|| Box::pin(self.resolve_url()))
                            .await?
                    }
                };
                // Waiting for a slot counts against the timeout, like a slow answer would.
                let _slot =
                    self.client.in_flight.acquire().await.map_err(|_| {
                        TriggerError::Other("the SQS client is shutting down".into())
                    })?;
                call::get_queue_attributes(&self.aws, endpoint, &self.queue, body).await
            };
        tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| TriggerError::Timeout(self.timeout))?
    }

    /// Looks the queue's URL up by name, and makes the body that names it.
    async fn resolve_url(&self) -> Result<Payload, TriggerError> {
        let output = self
            .client
            .sdk
            .get_queue_url()
            .queue_name(&self.queue)
            .send()
            .await
            .map_err(|e| errors::from_sdk(e, &self.queue, self.timeout))?;
        let url = output.queue_url().ok_or_else(|| {
            TriggerError::BadResponse(format!("queue {}: GetQueueUrl gave no URL", self.queue))
        })?;
        Ok(call::payload(url))
    }
}

fn is_url(queue: &str) -> bool {
    queue.starts_with("https://") || queue.starts_with("http://")
}
