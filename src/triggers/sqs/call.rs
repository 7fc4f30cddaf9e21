//! `GetQueueAttributes` as one signed POST on a shared HTTP client, instead of through the SDK.
//!
//! This is the only call a steady-state agent makes to SQS, thousands of times a minute with
//! many rules, and the SDK's orchestrator (interceptors, endpoint resolution, runtime-component
//! merging, retry bookkeeping) was about 40 % of the agent's CPU for it (BENCHMARKS.md). The
//! request is small and fixed: AWS JSON 1.0, the protocol the SDK itself speaks to SQS, signed
//! by `aws-sigv4` with the same cached credentials. The endpoint comes from the SDK's own
//! resolver, once; the SDK stays for the credential chain and the one-off `GetQueueUrl`.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde::Deserialize;

use super::errors::{first_paragraph, from_code};
use super::QueueCounts;
use crate::triggers::aws::{AwsContext, AwsIdentity};
use crate::triggers::error::error_chain;
use crate::triggers::sigv4::sign_request;
use crate::triggers::TriggerError;

const JSON_1_0: &str = "application/x-amz-json-1.0";
const TARGET: &str = "AmazonSQS.GetQueueAttributes";

/// Where and as whom one queue is read.
pub(super) struct Endpoint {
    pub url: String,
    /// `url`, parsed once: parsing (with IDNA host processing) on every call was a visible
    /// share of a poll's CPU.
    pub parsed: reqwest::Url,
    pub region: String,
    pub identity: AwsIdentity,
}

/// The request body, made once per queue: only the queue URL varies.
pub(super) fn body(queue_url: &str) -> String {
    serde_json::json!({
        "QueueUrl": queue_url,
        "AttributeNames": [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    })
    .to_string()
}

/// Reads the counts, retrying throttling and transient failures as the SDK's standard mode
/// does (3 attempts in all, jittered backoff), all within the caller's timeout.
pub(super) async fn get_queue_attributes(
    http: &reqwest::Client,
    aws: &AwsContext,
    endpoint: &Endpoint,
    queue: &str,
    body: &str,
) -> Result<QueueCounts, TriggerError> {
    let attempt = || attempt(http, aws, endpoint, queue, body);
    attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(50))
                .with_max_delay(Duration::from_secs(1))
                .with_max_times(2)
                .with_jitter(),
        )
        .when(|failure| failure.transient)
        .await
        .map_err(|failure| failure.error)
}

/// One attempt's failure, and whether another attempt may succeed.
struct Failure {
    error: TriggerError,
    transient: bool,
}

impl From<TriggerError> for Failure {
    fn from(error: TriggerError) -> Self {
        Failure {
            error,
            transient: false,
        }
    }
}

async fn attempt(
    http: &reqwest::Client,
    aws: &AwsContext,
    endpoint: &Endpoint,
    queue: &str,
    body: &str,
) -> Result<QueueCounts, Failure> {
    let credentials = aws.credentials(&endpoint.identity).await?;
    let headers = [
        ("content-type", JSON_1_0),
        ("x-amz-target", TARGET),
        // Asks for the legacy query error code beside `__type`, as the SDK does.
        ("x-amzn-query-mode", "true"),
    ];
    let signature = sign_request(
        credentials,
        &endpoint.region,
        "sqs",
        "POST",
        &endpoint.url,
        headers.iter().copied(),
        body.as_bytes(),
    )?;
    let mut request = http.post(endpoint.parsed.clone()).body(body.to_string());
    for (name, value) in headers {
        request = request.header(name, value);
    }
    for (name, value) in signature.headers {
        request = request.header(name, value);
    }
    let response = request.send().await.map_err(|e| Failure {
        error: TriggerError::Network(format!("queue {queue}: {}", error_chain(&e))),
        transient: true,
    })?;
    let status = response.status();
    let query_error = response
        .headers()
        .get("x-amzn-query-error")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_string);
    let text = response.bytes().await.map_err(|e| Failure {
        error: TriggerError::Network(format!(
            "queue {queue}: reading the answer: {}",
            error_chain(&e)
        )),
        transient: true,
    })?;
    if status.is_success() {
        return counts(queue, &text).map_err(Failure::from);
    }
    let answer: ErrorAnswer = serde_json::from_slice(&text).unwrap_or_default();
    let code = query_error
        .or_else(|| answer.error_type.map(|t| short_type(&t).to_string()))
        .unwrap_or_default();
    let error = if code.is_empty() {
        TriggerError::Other(format!("queue {queue}: HTTP {status}"))
    } else {
        // The message is the service's: redact anything of the request it might echo.
        let message = answer
            .message
            .or(answer.message_upper)
            .map(|m| redact(&m, &signature.secrets));
        from_code(queue, &code, message.as_deref())
    };
    let transient = matches!(error, TriggerError::Throttled(_)) || status.is_server_error();
    Err(Failure { error, transient })
}

#[derive(Deserialize)]
struct Answer {
    #[serde(rename = "Attributes")]
    attributes: Option<Attributes>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Attributes {
    approximate_number_of_messages: Option<String>,
    approximate_number_of_messages_not_visible: Option<String>,
    approximate_number_of_messages_delayed: Option<String>,
}

#[derive(Deserialize, Default)]
struct ErrorAnswer {
    #[serde(rename = "__type")]
    error_type: Option<String>,
    message: Option<String>,
    #[serde(rename = "Message")]
    message_upper: Option<String>,
}

fn counts(queue: &str, text: &[u8]) -> Result<QueueCounts, TriggerError> {
    let answer: Answer = serde_json::from_slice(text).map_err(|e| {
        TriggerError::BadResponse(format!("queue {queue}: GetQueueAttributes answer: {e}"))
    })?;
    let attributes = answer.attributes.ok_or_else(|| {
        TriggerError::BadResponse(format!("queue {queue}: no attributes in the answer"))
    })?;
    let count = |name: &str, raw: Option<String>| -> Result<u64, TriggerError> {
        let raw = raw.ok_or_else(|| {
            TriggerError::BadResponse(format!("queue {queue}: attribute {name} missing"))
        })?;
        raw.parse().map_err(|_| {
            TriggerError::BadResponse(format!(
                "queue {queue}: attribute {name} is {:?}, not a count",
                first_paragraph(&raw)
            ))
        })
    };
    Ok(QueueCounts {
        visible: count(
            "ApproximateNumberOfMessages",
            attributes.approximate_number_of_messages,
        )?,
        in_flight: count(
            "ApproximateNumberOfMessagesNotVisible",
            attributes.approximate_number_of_messages_not_visible,
        )?,
        delayed: count(
            "ApproximateNumberOfMessagesDelayed",
            attributes.approximate_number_of_messages_delayed,
        )?,
    })
}

/// `com.amazonaws.sqs#QueueDoesNotExist` → `QueueDoesNotExist`.
fn short_type(error_type: &str) -> &str {
    error_type.rsplit('#').next().unwrap_or(error_type)
}

fn redact(text: &str, secrets: &[String]) -> String {
    secrets.iter().fold(text.to_string(), |text, secret| {
        text.replace(secret.as_str(), "<redacted>")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_from_the_json_answer() {
        let text = br#"{"Attributes":{"ApproximateNumberOfMessages":"7",
            "ApproximateNumberOfMessagesNotVisible":"2","ApproximateNumberOfMessagesDelayed":"1"}}"#;
        let counts = counts("q", text).map_err(|e| e.to_string());
        assert_eq!(
            counts,
            Ok(QueueCounts {
                visible: 7,
                in_flight: 2,
                delayed: 1
            })
        );
    }

    #[test]
    fn a_missing_or_bad_count_is_a_bad_response_naming_it() {
        let missing = counts(
            "q",
            br#"{"Attributes":{"ApproximateNumberOfMessages":"7"}}"#,
        );
        let error = missing.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            error.contains("ApproximateNumberOfMessagesNotVisible missing"),
            "{error}"
        );
        let bad = counts(
            "q",
            br#"{"Attributes":{"ApproximateNumberOfMessages":"x",
            "ApproximateNumberOfMessagesNotVisible":"0","ApproximateNumberOfMessagesDelayed":"0"}}"#,
        );
        assert!(matches!(bad, Err(TriggerError::BadResponse(_))));
        assert!(matches!(
            counts("q", b"<html>"),
            Err(TriggerError::BadResponse(_))
        ));
    }

    #[test]
    fn the_body_escapes_the_queue_url() {
        let body = body("https://sqs.example/1/q\"x");
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(parsed["QueueUrl"], "https://sqs.example/1/q\"x");
        assert_eq!(parsed["AttributeNames"].as_array().map(Vec::len), Some(3));
    }

    #[test]
    fn a_message_quoting_a_secret_is_redacted() {
        let text = redact("bad: wJalrXUtnFEMI.", &["wJalrXUtnFEMI".to_string()]);
        assert_eq!(text, "bad: <redacted>.");
        assert_eq!(
            short_type("com.amazonaws.sqs#QueueDoesNotExist"),
            "QueueDoesNotExist"
        );
    }
}
