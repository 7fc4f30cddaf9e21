//! How `GetQueueAttributes` goes out: hyper's pooled client directly, or reqwest behind a proxy.
//!
//! reqwest wraps every request in layers an SQS poll has no use for: its redirect layer formats
//! the request's URI and parses it back into a `Url` (IDNA host processing included) on every
//! request even with redirects off, its retry layer keeps a copy of the request, and the header
//! map is copied once more. At 1,000 rules that was about a sixth of a poll's instructions
//! (BENCHMARKS.md, finding 17). The direct client is set up as reqwest's default is: rustls with
//! the aws-lc-rs provider and the platform verifier (the system's roots; verification is always
//! on), TCP_NODELAY, the same connect timeout and idle pool. An endpoint that the proxy variables
//! (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`) send through a proxy stays on reqwest,
//! which tunnels to it.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use rustls_platform_verifier::BuilderVerifierExt;

use crate::triggers::error::error_chain;
use crate::triggers::prometheus::{CONNECT_TIMEOUT, POOL_IDLE_TIMEOUT, POOL_MAX_IDLE_PER_HOST};
use crate::triggers::TriggerError;

/// A `GetQueueAttributes` answer is a few hundred bytes; anything past this is not one.
const MAX_ANSWER: usize = 1 << 20;

pub(super) type Direct = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The client one endpoint's calls use.
#[derive(Clone)]
pub(super) enum Transport {
    Direct(Box<Direct>),
    Proxied(reqwest::Client),
}

/// What the call needs of an answer.
pub(super) struct Answer {
    pub status: StatusCode,
    /// `x-amzn-query-error`, up to its `;`: the legacy error code.
    pub query_error: Option<String>,
    pub body: Bytes,
}

/// A failed exchange: the request could not be sent or answered, or the answer not read.
pub(super) enum HttpError {
    Send(String),
    Read(String),
}

/// The direct client, built once and shared by every endpoint reached without a proxy.
pub(super) fn direct() -> Result<Direct, TriggerError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_platform_verifier())
        .map_err(|e| TriggerError::Config(format!("TLS for SQS: {e}")))?
        .with_no_client_auth();
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .pool_timer(TokioTimer::new())
        .build(connector))
}

/// The proxy rules from the environment, read as reqwest reads them.
pub(super) fn proxy_rules() -> Matcher {
    Matcher::from_env()
}

/// Whether `rules` send requests for `uri` through a proxy.
pub(super) fn is_proxied(rules: &Matcher, uri: &http::Uri) -> bool {
    rules.intercept(uri).is_some()
}

impl Transport {
    /// POSTs `body` with `headers` to the endpoint (`uri` for the direct client, `url` for reqwest:
    /// the same address, each parsed once).
    pub async fn post(
        &self,
        uri: &http::Uri,
        url: &reqwest::Url,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Answer, HttpError> {
        match self {
            Transport::Direct(client) => {
                let mut request = http::Request::new(Full::new(body));
                *request.method_mut() = http::Method::POST;
                *request.uri_mut() = uri.clone();
                *request.headers_mut() = headers;
                let response = client
                    .request(request)
                    .await
                    .map_err(|e| HttpError::Send(error_chain(&e)))?;
                let (parts, incoming) = response.into_parts();
                let body = Limited::new(incoming, MAX_ANSWER)
                    .collect()
                    .await
                    .map_err(|e| HttpError::Read(error_chain(e.as_ref())))?
                    .to_bytes();
                Ok(Answer {
                    status: parts.status,
                    query_error: query_error(&parts.headers),
                    body,
                })
            }
            Transport::Proxied(client) => {
                let mut request = reqwest::Request::new(reqwest::Method::POST, url.clone());
                *request.headers_mut() = headers;
                *request.body_mut() = Some(body.into());
                let response = client
                    .execute(request)
                    .await
                    .map_err(|e| HttpError::Send(error_chain(&e)))?;
                let status = response.status();
                let query_error = query_error(response.headers());
                let body = response
                    .bytes()
                    .await
                    .map_err(|e| HttpError::Read(error_chain(&e)))?;
                Ok(Answer {
                    status,
                    query_error,
                    body,
                })
            }
        }
    }
}

fn query_error(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-amzn-query-error")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_direct_client_builds_with_verification_on() {
        // Building must not need a runtime or the network; the verifier reads the system roots.
        assert!(direct().is_ok());
    }

    #[test]
    fn proxied_endpoints_are_told_apart_by_scheme_and_no_proxy() {
        let rules = Matcher::builder()
            .https("http://proxy.internal:3128")
            .no("localhost,.corp.example")
            .build();
        let sqs = http::Uri::from_static("https://sqs.us-east-1.amazonaws.com/");
        let corp = http::Uri::from_static("https://sqs.corp.example/");
        let local = http::Uri::from_static("http://127.0.0.1:4566/");
        assert!(is_proxied(&rules, &sqs));
        assert!(!is_proxied(&rules, &corp));
        assert!(!is_proxied(&rules, &local), "only https is proxied");
        assert!(!is_proxied(&Matcher::builder().build(), &sqs));
    }
}
