//! `GetQueueAttributes` as one signed POST on a shared HTTP client, instead of through the SDK.
//!
//! This is the only call a steady-state agent makes to SQS, thousands of times a minute with
//! many rules, and the SDK's orchestrator (interceptors, endpoint resolution, runtime-component
//! merging, retry bookkeeping) was about 40 % of the agent's CPU for it (BENCHMARKS.md). The
//! request is small and fixed: AWS JSON 1.0, the protocol the SDK itself speaks to SQS, signed
//! by `aws-sigv4` with the same cached credentials. The endpoint comes from the SDK's own
//! resolver, once; the SDK stays for the credential chain and the one-off `GetQueueUrl`.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use super::errors::{first_paragraph, from_code};
use super::signing::{FixedSigner, Hex, Payload, FIXED_HEADERS};
use super::transport::{HttpError, Transport};
use super::QueueCounts;
use crate::triggers::aws::{AwsContext, AwsIdentity};
use crate::triggers::secrets::Secrets;
use crate::triggers::sigv4::sign_request;
use crate::triggers::TriggerError;

/// Room for every header the request ends up with (ours, and `content-length` that hyper adds),
/// so the map is allocated once per call and never regrown.
const HEADER_CAPACITY: usize = 12;

/// Sent with every call, like the Prometheus client's.
const USER_AGENT: &str = concat!("qscale/", env!("CARGO_PKG_VERSION"));

/// Where and as whom one queue is read.
pub(super) struct Endpoint {
    /// Parsed once, in both forms the clients take: parsing (with IDNA host processing) on
    /// every call was a visible share of a poll's CPU.
    pub url: reqwest::Url,
    pub uri: http::Uri,
    pub transport: Transport,
    pub region: String,
    pub identity: AwsIdentity,
    /// `None` when the URL has a path or a query: then `aws_sigv4` signs in full.
    pub signer: Option<FixedSigner>,
    /// The headers every call sends before it is signed, made once: with the fixed signer this
    /// includes `host` as signed, so the client does not format it per request.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Endpoint {
    /// The unsigned headers of every call to `signer`'s endpoint.
    pub fn headers(signer: Option<&FixedSigner>) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers: Vec<_> = FIXED_HEADERS
            .iter()
            .map(|(name, value)| {
                (
                    HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect();
        headers.push((
            reqwest::header::USER_AGENT,
            HeaderValue::from_static(USER_AGENT),
        ));
        if let Some(host) = signer.and_then(FixedSigner::host) {
            headers.push((reqwest::header::HOST, host));
        }
        headers
    }
}

/// The request body, made once per queue: only the queue URL varies.
pub(super) fn payload(queue_url: &str) -> Payload {
    Payload::new(body(queue_url))
}

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
    aws: &AwsContext,
    endpoint: &Endpoint,
    queue: &str,
    payload: &Payload,
) -> Result<QueueCounts, TriggerError> {
    let attempt = || attempt(aws, endpoint, queue, payload);
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
    aws: &AwsContext,
    endpoint: &Endpoint,
    queue: &str,
    payload: &Payload,
) -> Result<QueueCounts, Failure> {
    let credentials = aws.credentials(&endpoint.identity).await?;
    let (headers, signature) = signed_headers(endpoint, &credentials, payload)?;
    let answer = endpoint
        .transport
        .post(&endpoint.uri, &endpoint.url, headers, payload.json.clone())
        .await
        .map_err(|e| Failure {
            error: TriggerError::Network(match e {
                HttpError::Send(chain) => format!("queue {queue}: {chain}"),
                HttpError::Read(chain) => format!("queue {queue}: reading the answer: {chain}"),
            }),
            transient: true,
        })?;
    let (status, query_error, text) = (answer.status, answer.query_error, answer.body);
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
        let mut secrets = Secrets::default();
        secrets.add(signature.as_str());
        secrets.add(credentials.secret_access_key());
        if let Some(token) = credentials.session_token() {
            secrets.add(token);
        }
        let message = answer
            .message
            .or(answer.message_upper)
            .map(|m| secrets.scrub(&m));
        from_code(queue, &code, message.as_deref())
    };
    let transient = matches!(error, TriggerError::Throttled(_)) || status.is_server_error();
    Err(Failure { error, transient })
}

/// The signature of a call, kept to redact it should a server quote it back.
enum Signature {
    Fixed(Hex),
    General(String),
}

impl Signature {
    fn as_str(&self) -> &str {
        match self {
            Signature::Fixed(hex) => hex.as_str(),
            Signature::General(text) => text,
        }
    }
}

/// The request's headers, signed, and the signature.
fn signed_headers(
    endpoint: &Endpoint,
    credentials: &Arc<Credentials>,
    payload: &Payload,
) -> Result<(HeaderMap, Signature), TriggerError> {
    let mut headers = HeaderMap::with_capacity(HEADER_CAPACITY);
    for (name, value) in &endpoint.headers {
        headers.insert(name.clone(), value.clone());
    }
    let Some(signer) = &endpoint.signer else {
        let signature = sign_request(
            credentials.as_ref().clone(),
            &endpoint.region,
            "sqs",
            "POST",
            endpoint.url.as_str(),
            FIXED_HEADERS.iter().copied(),
            &payload.json,
        )?;
        for (name, value) in signature.headers {
            // aws_sigv4's own names, all valid; checked anyway rather than trusted to be.
            let name = HeaderName::try_from(name)
                .map_err(|e| TriggerError::Credentials(format!("aws_sigv4: header {name}: {e}")))?;
            headers.insert(name, value);
        }
        let secret = signature.secrets.last().cloned().unwrap_or_default();
        return Ok((headers, Signature::General(secret)));
    };
    let signed = signer.sign(credentials, payload, SystemTime::now())?;
    headers.insert(HeaderName::from_static("x-amz-date"), signed.date);
    headers.insert(reqwest::header::AUTHORIZATION, signed.authorization);
    if let Some(token) = signed.token {
        headers.insert(HeaderName::from_static("x-amz-security-token"), token);
    }
    Ok((headers, Signature::Fixed(signed.signature)))
}

/// Borrowed from the answer's bytes, so a poll allocates no strings; a value written with a
/// JSON escape (which SQS does not send) is unescaped into an owned one.
#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(rename = "Attributes", borrow)]
    attributes: Option<Attributes<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Attributes<'a> {
    #[serde(borrow)]
    approximate_number_of_messages: Option<Text<'a>>,
    #[serde(borrow)]
    approximate_number_of_messages_not_visible: Option<Text<'a>>,
    #[serde(borrow)]
    approximate_number_of_messages_delayed: Option<Text<'a>>,
}

/// serde borrows a `Cow` only as a field of its own, not inside an `Option`: hence the newtype.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

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
    let count = |name: &str, raw: Option<Text<'_>>| -> Result<u64, TriggerError> {
        let Text(raw) = raw.ok_or_else(|| {
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
        let escaped = counts(
            "q",
            br#"{"Attributes":{"ApproximateNumberOfMessages":"\u0037",
            "ApproximateNumberOfMessagesNotVisible":"0","ApproximateNumberOfMessagesDelayed":"0"}}"#,
        );
        assert_eq!(
            escaped.ok().map(|c| c.visible),
            Some(7),
            "an escaped digit is read"
        );
    }

    #[test]
    fn counts_are_borrowed_from_the_answer_unless_escaped() {
        let text = br#"{"Attributes":{"ApproximateNumberOfMessages":"12",
            "ApproximateNumberOfMessagesNotVisible":"\u0030"}}"#;
        let answer: Answer = serde_json::from_slice(text).expect("answer");
        let attributes = answer.attributes.expect("attributes");
        let visible = attributes.approximate_number_of_messages.map(|t| t.0);
        assert!(matches!(visible, Some(Cow::Borrowed("12"))));
        let in_flight = attributes
            .approximate_number_of_messages_not_visible
            .map(|t| t.0);
        assert!(matches!(in_flight, Some(Cow::Owned(ref t)) if t == "0"));
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
        let mut secrets = Secrets::default();
        secrets.add("wJalrXUtnFEMI");
        assert_eq!(secrets.scrub("bad: wJalrXUtnFEMI."), "bad: <redacted>.");
        assert_eq!(
            short_type("com.amazonaws.sqs#QueueDoesNotExist"),
            "QueueDoesNotExist"
        );
    }
}
