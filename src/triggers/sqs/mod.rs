//! SQS trigger: one `GetQueueAttributes` call per poll. The call always asks for the visible,
//! in-flight and delayed counts, so triggers that count differently can still share it.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::QueueAttributeName;
use aws_sdk_sqs::Client;
use tokio::sync::OnceCell;

use super::aws::{AwsContext, AwsIdentity};
use super::TriggerError;
use crate::config::SqsTrigger;

const ATTRIBUTES: [QueueAttributeName; 3] = [
    QueueAttributeName::ApproximateNumberOfMessages,
    QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
    QueueAttributeName::ApproximateNumberOfMessagesDelayed,
];

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
    client: Client,
    queue: String,
    /// Resolved once from a queue name; a failed lookup is retried on the next poll.
    queue_url: OnceCell<String>,
    timeout: Duration,
}

/// SQS clients, one per (identity, endpoint), shared by every queue they read: a client owns a
/// connection pool, and a thousand queues must not mean a thousand pools.
#[derive(Clone, Default)]
pub struct SqsClients {
    clients: std::sync::Arc<tokio::sync::Mutex<HashMap<ClientKey, Client>>>,
}

/// Who calls, and which endpoint.
type ClientKey = (AwsIdentity, Option<String>);

impl SqsClients {
    pub async fn get(&self, spec: &SqsSource, aws: &AwsContext) -> Client {
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
        let client = Client::from_conf(config.build());
        clients.insert(key, client.clone());
        client
    }
}

impl SqsPoller {
    pub async fn new(spec: &SqsSource, clients: &SqsClients, aws: &AwsContext) -> Self {
        let queue_url = OnceCell::new();
        if is_url(&spec.queue) {
            // A URL needs no lookup; setting an empty cell cannot fail.
            let _ = queue_url.set(spec.queue.clone());
        }
        SqsPoller {
            client: clients.get(spec, aws).await,
            queue: spec.queue.clone(),
            queue_url,
            timeout: spec.timeout,
        }
    }

    /// The queue's visible, in-flight and delayed counts.
    pub async fn read(&self) -> Result<QueueCounts, TriggerError> {
        let url = self
            .queue_url
            .get_or_try_init(|| self.resolve_url())
            .await?
            .clone();
        let call = self
            .client
            .get_queue_attributes()
            .queue_url(&url)
            .set_attribute_names(Some(ATTRIBUTES.to_vec()))
            .send();
        let output = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| TriggerError::Timeout(self.timeout))?
            .map_err(|e| classify(e, &self.queue, self.timeout))?;
        let values = output.attributes().ok_or_else(|| {
            TriggerError::BadResponse(format!("queue {}: no attributes in the answer", self.queue))
        })?;
        let count = |name: &QueueAttributeName| -> Result<u64, TriggerError> {
            let raw = values.get(name).ok_or_else(|| {
                TriggerError::BadResponse(format!("queue {}: attribute {name} missing", self.queue))
            })?;
            raw.parse().map_err(|_| {
                TriggerError::BadResponse(format!(
                    "queue {}: attribute {name} is {raw:?}, not a count",
                    self.queue
                ))
            })
        };
        Ok(QueueCounts {
            visible: count(&ATTRIBUTES[0])?,
            in_flight: count(&ATTRIBUTES[1])?,
            delayed: count(&ATTRIBUTES[2])?,
        })
    }

    async fn resolve_url(&self) -> Result<String, TriggerError> {
        let call = self.client.get_queue_url().queue_name(&self.queue).send();
        let output = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| TriggerError::Timeout(self.timeout))?
            .map_err(|e| classify(e, &self.queue, self.timeout))?;
        output.queue_url().map(str::to_string).ok_or_else(|| {
            TriggerError::BadResponse(format!("queue {}: GetQueueUrl gave no URL", self.queue))
        })
    }
}

/// The first paragraph of a service message, cut at any echoed header and bounded in length.
fn first_paragraph(message: &str) -> String {
    const MAX: usize = 300;
    let mut text = message.split("\n\n").next().unwrap_or_default();
    if let Some(at) = text.to_ascii_lowercase().find("x-amz-") {
        text = &text[..at];
    }
    let mut end = text.len().min(MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].trim().to_string()
}

fn is_url(queue: &str) -> bool {
    queue.starts_with("https://") || queue.starts_with("http://")
}

/// Sorts an SDK error into a [`TriggerError`] kind. The SDK's messages name the operation and
/// the cause; they never carry credentials.
fn classify<E, R>(error: SdkError<E, R>, queue: &str, timeout: Duration) -> TriggerError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let detail = || format!("queue {queue}: {}", DisplayErrorContext(&error));
    match &error {
        SdkError::TimeoutError(_) => TriggerError::Timeout(timeout),
        SdkError::DispatchFailure(failure) if failure.is_timeout() => {
            TriggerError::Timeout(timeout)
        }
        SdkError::DispatchFailure(failure) if failure.is_user() || failure.is_other() => {
            TriggerError::Credentials(detail())
        }
        SdkError::DispatchFailure(_) => TriggerError::Network(detail()),
        SdkError::ConstructionFailure(_) => TriggerError::Config(detail()),
        SdkError::ResponseError(_) => TriggerError::BadResponse(detail()),
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or_default();
            // Only the code and the first paragraph of the service's message: a signature
            // error goes on to echo the canonical request, session token included.
            let message = service
                .err()
                .message()
                .map(first_paragraph)
                .unwrap_or_default();
            let detail = || format!("queue {queue}: {code}: {message}");
            match code {
                "AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist" => {
                    TriggerError::NotFound(detail())
                }
                "AccessDenied"
                | "AccessDeniedException"
                | "InvalidClientTokenId"
                | "SignatureDoesNotMatch"
                | "UnrecognizedClientException" => TriggerError::AccessDenied(detail()),
                "ThrottlingException"
                | "RequestThrottled"
                | "Throttling"
                | "RequestThrottledException" => TriggerError::Throttled(detail()),
                _ => TriggerError::Other(detail()),
            }
        }
        _ => TriggerError::Other(detail()),
    }
}
