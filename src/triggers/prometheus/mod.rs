//! Prometheus trigger: one instant query against `<server>/api/v1/query`, read as one number.
//!
//! Works with Prometheus and its API-compatible servers (Thanos, Cortex, Mimir, VictoriaMetrics)
//! and with Amazon Managed Prometheus, whose queries are SigV4-signed here rather than through an
//! `aws-sigv4-proxy` sidecar. Everything that does not depend on the moment of the poll (URL,
//! form, headers) is prepared once in [`PrometheusPoller::new`], so a poll only reads secrets,
//! signs, sends and parses.

mod auth;
mod client;
mod request;
mod response;

use std::fmt;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode, Url};

use crate::config::{OnEmpty, PrometheusTrigger};
use crate::triggers::aws::AwsContext;
use crate::triggers::TriggerError;

use crate::triggers::secrets::Secrets;
use auth::{Auth, RequestParts};
pub use client::{HttpClients, CONNECT_TIMEOUT, POOL_IDLE_TIMEOUT, POOL_MAX_IDLE_PER_HOST};
pub use response::parse_response;

/// A response larger than this is refused: a query that feeds one number has no business
/// returning megabytes, and the agent's memory must stay bounded.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Reads one Prometheus trigger. Cheap to keep for the life of a rule; the HTTP client inside
/// is shared with every other trigger that has the same TLS settings.
pub struct PrometheusPoller {
    client: reqwest::Client,
    method: Method,
    /// For GET the form is in the query string; for POST it is the body.
    url: Url,
    body: Vec<u8>,
    headers: HeaderMap,
    auth: Auth,
    timeout: Duration,
    on_empty: OnEmpty,
}

impl PrometheusPoller {
    /// What [`PrometheusPoller::new`] checks of the trigger, short of reading its TLS files
    /// (which may only exist where the agent runs): the query, the server URL, the auth
    /// scheme, the headers and query parameters.
    pub fn check(spec: &PrometheusTrigger) -> Result<(), TriggerError> {
        Self::parts(spec, &AwsContext::new()).map(|_| ())
    }

    fn parts(
        spec: &PrometheusTrigger,
        aws: &AwsContext,
    ) -> Result<(Auth, request::Prepared), TriggerError> {
        if spec.timeout.get().is_zero() {
            return Err(TriggerError::Config(
                "timeout must be longer than zero".into(),
            ));
        }
        if spec.query.trim().is_empty() {
            return Err(TriggerError::Config("query must not be empty".into()));
        }
        let auth = Auth::from_spec(&spec.auth, aws)?;
        let endpoint = request::endpoint(&spec.server)?;
        let prepared = request::prepare(spec, endpoint, &auth)?;
        Ok((auth, prepared))
    }

    pub fn new(
        spec: &PrometheusTrigger,
        clients: &HttpClients,
        aws: &AwsContext,
    ) -> Result<Self, TriggerError> {
        let timeout = spec.timeout.get();
        let (auth, prepared) = Self::parts(spec, aws)?;
        if auth.sends_reusable_secret() && !request::is_protected(&prepared.url) {
            tracing::warn!(
                server = %request::display_endpoint(&prepared.url),
                "Prometheus credentials are sent over plain HTTP; use https://"
            );
        }
        let client = clients.get(&spec.tls)?;
        Ok(Self {
            client,
            method: prepared.method,
            url: prepared.url,
            body: prepared.body,
            headers: prepared.headers,
            auth,
            timeout,
            on_empty: spec.on_empty,
        })
    }

    /// The query's current value: always a finite number, or an error (never a made-up zero,
    /// unless the trigger says `on_empty = "zero"`). The whole poll, credentials included, is
    /// bounded by the trigger's `timeout`.
    pub async fn read(&self) -> Result<f64, TriggerError> {
        match tokio::time::timeout(self.timeout, self.poll()).await {
            Ok(result) => result,
            Err(_) => Err(TriggerError::Timeout(self.timeout)),
        }
    }

    async fn poll(&self) -> Result<f64, TriggerError> {
        let mut request = self
            .client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone())
            .timeout(self.timeout);
        if self.method == Method::POST {
            request = request.body(self.body.clone());
        }
        let parts = RequestParts {
            method: &self.method,
            url: &self.url,
            headers: &self.headers,
            body: &self.body,
        };
        let (request, mut secrets) = self.auth.authorize(request, &parts).await?;
        let request = request
            .build()
            .map_err(|e| client::classify(e, self.timeout))?;
        for value in request.headers().values().filter(|v| v.is_sensitive()) {
            secrets.add_header(value);
        }
        let mut response = self
            .client
            .execute(request)
            .await
            .map_err(|e| client::classify(e, self.timeout))?;
        let status = response.status();
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .map(response::quote);
        let body = self.read_body(&mut response).await?;
        if !status.is_success() {
            return Err(self.status_error(status, location, &body, &secrets));
        }
        parse_response(&body, self.on_empty).map_err(|e| scrub(e, &secrets))
    }

    async fn read_body(&self, response: &mut reqwest::Response) -> Result<Vec<u8>, TriggerError> {
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| client::classify(e, self.timeout))?
        {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(TriggerError::BadResponse(format!(
                    "response larger than {} MiB; aggregate the query into one series",
                    MAX_BODY_BYTES / (1024 * 1024)
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn status_error(
        &self,
        status: StatusCode,
        location: Option<String>,
        body: &[u8],
        secrets: &Secrets,
    ) -> TriggerError {
        let detail = response::error_message(body)
            .unwrap_or_else(|| response::quote(String::from_utf8_lossy(body).trim()));
        let detail = secrets.scrub(&detail);
        let endpoint = request::display_endpoint(&self.url);
        let text = if detail.is_empty() {
            format!("HTTP {status} from {endpoint}")
        } else {
            format!("HTTP {status} from {endpoint}: {detail}")
        };
        let location = location.map(|location| secrets.scrub(&location));
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => TriggerError::AccessDenied(text),
            StatusCode::TOO_MANY_REQUESTS => TriggerError::Throttled(text),
            StatusCode::NOT_FOUND => TriggerError::NotFound(format!(
                "{text}; check `server` (the URL before /api/v1/query)"
            )),
            StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => TriggerError::Network(text),
            _ if status.is_redirection() => TriggerError::BadResponse(format!(
                "{text}; redirected to {}: set `server` to the final URL",
                location.as_deref().unwrap_or("an unnamed location")
            )),
            _ => TriggerError::BadResponse(text),
        }
    }
}

/// Server text quoted in an error must not echo a credential back into the logs.
fn scrub(error: TriggerError, secrets: &Secrets) -> TriggerError {
    match error {
        TriggerError::BadResponse(text) => TriggerError::BadResponse(secrets.scrub(&text)),
        TriggerError::Empty(text) => TriggerError::Empty(secrets.scrub(&text)),
        other => other,
    }
}

impl fmt::Debug for PrometheusPoller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusPoller")
            .field("method", &self.method)
            .field("endpoint", &request::display_endpoint(&self.url))
            .field("auth", &self.auth.mode())
            .field("timeout", &self.timeout)
            .field("on_empty", &self.on_empty)
            .finish_non_exhaustive()
    }
}
