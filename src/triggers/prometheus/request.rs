//! The parts of a query request that never change between polls: URL, form and headers.
//!
//! The form is percent-encoded by hand with the SigV4 canonical rules (RFC 3986 unreserved
//! characters kept, everything else `%XX`, pairs sorted) so the query string on the wire is
//! byte for byte the canonical one: a signature computed by `aws-sigv4` is then checked
//! against the same bytes by any other SigV4 implementation (AMP, botocore).

use std::net::IpAddr;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::{Method, Url};

use super::auth::Auth;
use crate::config::PrometheusTrigger;
use crate::triggers::TriggerError;

const QUERY_PATH: &str = "api/v1/query";

/// Above this many bytes of encoded form the query goes in a POST body: proxies and load
/// balancers commonly cap request lines at 4–8 KiB.
const MAX_GET_FORM_BYTES: usize = 2048;

/// Tenant header of Cortex, Mimir and Thanos' receive/query frontends.
const TENANT_HEADER: &str = "x-scope-orgid";

/// Headers the HTTP client or the framing owns; a custom value would break the request.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
];

pub(super) struct Prepared {
    pub method: Method,
    pub url: Url,
    pub body: Vec<u8>,
    pub headers: HeaderMap,
}

/// `<server>/api/v1/query`, keeping any path prefix (`/prometheus`, AMP's `/workspaces/<id>`).
pub(super) fn endpoint(server: &str) -> Result<Url, TriggerError> {
    let mut url = Url::parse(server.trim())
        .map_err(|e| TriggerError::Config(format!("server is not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(TriggerError::Config(format!(
            "server must be an http:// or https:// URL, not {}://",
            url.scheme()
        )));
    }
    if url.host().is_none() {
        return Err(TriggerError::Config("server URL has no host".into()));
    }
    // Not echoed: a user name or password here is exactly what must stay out of the logs.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(TriggerError::Config(
            "server URL must not hold credentials; use `basic_auth` with a password file or env var"
                .into(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(TriggerError::Config(
            "server URL must not have a query or fragment; use `query_parameters`".into(),
        ));
    }
    let prefix = url.path().trim_end_matches('/').to_string();
    url.set_path(&format!("{prefix}/{QUERY_PATH}"));
    Ok(url)
}

pub(super) fn prepare(
    spec: &PrometheusTrigger,
    endpoint: Url,
    auth: &Auth,
) -> Result<Prepared, TriggerError> {
    if spec.query_parameters.contains_key("query") {
        return Err(TriggerError::Config(
            "query_parameters must not set `query`; the rule's `query` field is the query".into(),
        ));
    }
    let mut pairs: Vec<(&str, &str)> = spec
        .query_parameters
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    pairs.push(("query", spec.query.as_str()));
    let form = encode_form(&pairs);

    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    if let Some(tenant) = &spec.namespace {
        if tenant.trim().is_empty() {
            return Err(TriggerError::Config(
                "namespace (tenant) must not be empty".into(),
            ));
        }
        headers.insert(TENANT_HEADER, header_value("namespace", tenant)?);
    }
    for (name, value) in &spec.custom_headers {
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            TriggerError::Config(format!(
                "custom_headers: {name:?} is not a valid header name"
            ))
        })?;
        check_custom_header(&header, spec, auth)?;
        let value = header_value(&format!("custom_headers.{name}"), value)?;
        if headers.insert(header, value).is_some() {
            return Err(TriggerError::Config(format!(
                "custom_headers: {name:?} is set twice (header names ignore case)"
            )));
        }
    }

    if form.len() <= MAX_GET_FORM_BYTES {
        let mut url = endpoint;
        url.set_query(Some(&form));
        Ok(Prepared {
            method: Method::GET,
            url,
            body: Vec::new(),
            headers,
        })
    } else {
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        Ok(Prepared {
            method: Method::POST,
            url: endpoint,
            body: form.into_bytes(),
            headers,
        })
    }
}

fn check_custom_header(
    header: &HeaderName,
    spec: &PrometheusTrigger,
    auth: &Auth,
) -> Result<(), TriggerError> {
    let name = header.as_str();
    let clash = if RESERVED_HEADERS.contains(&name) || name == "accept" {
        Some("it is set by qscale")
    } else if name == "authorization" && !matches!(auth, Auth::None) {
        Some("the trigger's auth sets it")
    } else if name.starts_with("x-amz-") && matches!(auth, Auth::SigV4(_)) {
        Some("aws_sigv4 sets it")
    } else if name == TENANT_HEADER && spec.namespace.is_some() {
        Some("`namespace` sets it")
    } else {
        None
    };
    match clash {
        Some(why) => Err(TriggerError::Config(format!(
            "custom_headers: cannot set {name}: {why}"
        ))),
        None => Ok(()),
    }
}

/// Visible ASCII only: what every proxy passes through unchanged and SigV4 signs as written.
fn header_value(field: &str, text: &str) -> Result<HeaderValue, TriggerError> {
    let visible = text
        .bytes()
        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b));
    if !visible || text.trim() != text {
        return Err(TriggerError::Config(format!(
            "{field}: header values must be visible ASCII without leading or trailing spaces"
        )));
    }
    HeaderValue::from_str(text)
        .map_err(|_| TriggerError::Config(format!("{field}: not a valid header value")))
}

/// `application/x-www-form-urlencoded` in SigV4 canonical form: sorted by encoded name, then
/// value; spaces as `%20`, which Prometheus decodes like `+`.
fn encode_form(pairs: &[(&str, &str)]) -> String {
    let mut encoded: Vec<(String, String)> = pairs
        .iter()
        .map(|(name, value)| (encode_component(name), encode_component(value)))
        .collect();
    encoded.sort();
    encoded
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// HTTPS, or a loopback address where nothing crosses the network.
pub(super) fn is_protected(url: &Url) -> bool {
    if url.scheme() == "https" {
        return true;
    }
    let host = url.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The URL without its query, for messages: the query string is long and may carry
/// `query_parameters`.
pub(super) fn display_endpoint(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Dur, OnEmpty, PrometheusAuth, TlsSettings};
    use std::collections::BTreeMap;

    fn spec(query: &str) -> PrometheusTrigger {
        PrometheusTrigger {
            server: "http://prom:9090".into(),
            query: query.into(),
            on_empty: OnEmpty::Error,
            namespace: None,
            custom_headers: BTreeMap::new(),
            query_parameters: BTreeMap::new(),
            timeout: Dur::from_secs(5),
            auth: PrometheusAuth::default(),
            tls: TlsSettings::default(),
        }
    }

    #[test]
    fn endpoint_keeps_the_path_prefix() {
        let cases = [
            ("http://prom:9090", "http://prom:9090/api/v1/query"),
            ("http://prom:9090/", "http://prom:9090/api/v1/query"),
            (
                "https://aps-workspaces.eu-west-1.amazonaws.com/workspaces/ws-1/",
                "https://aps-workspaces.eu-west-1.amazonaws.com/workspaces/ws-1/api/v1/query",
            ),
            (
                "http://thanos/prometheus",
                "http://thanos/prometheus/api/v1/query",
            ),
        ];
        for (server, expected) in cases {
            assert_eq!(endpoint(server).unwrap().as_str(), expected);
        }
    }

    #[test]
    fn endpoint_rejects_credentials_without_echoing_them() {
        let error = endpoint("https://admin:hunter2@prom").unwrap_err();
        assert!(
            matches!(&error, TriggerError::Config(m) if !m.contains("hunter2")),
            "{error:?}"
        );
        assert!(endpoint("ftp://prom").is_err());
        assert!(endpoint("http://prom/?x=1").is_err());
        assert!(endpoint("not a url").is_err());
    }

    #[test]
    fn form_is_canonical() {
        assert_eq!(
            encode_form(&[("query", "sum(rate(x{a=\"b c\"}[1m]))"), ("dedup", "true")]),
            "dedup=true&query=sum%28rate%28x%7Ba%3D%22b%20c%22%7D%5B1m%5D%29%29"
        );
        assert_eq!(encode_component("a-b_c.d~é"), "a-b_c.d~%C3%A9");
    }

    #[test]
    fn short_queries_are_get_long_ones_post() {
        let short = prepare(&spec("sum(up)"), endpoint("http://p").unwrap(), &Auth::None).unwrap();
        assert_eq!(short.method, Method::GET);
        assert_eq!(short.url.query(), Some("query=sum%28up%29"));
        assert!(short.body.is_empty());

        let long_query = format!("sum(up{{job=~\"{}\"}})", "a|".repeat(1500));
        let long = prepare(
            &spec(&long_query),
            endpoint("http://p").unwrap(),
            &Auth::None,
        )
        .unwrap();
        assert_eq!(long.method, Method::POST);
        assert_eq!(long.url.query(), None);
        assert!(long.body.starts_with(b"query=sum%28up"));
        assert_eq!(
            long.headers.get(CONTENT_TYPE).unwrap(),
            "application/x-www-form-urlencoded"
        );
    }

    #[test]
    fn headers_are_checked() {
        let mut tenant = spec("up");
        tenant.namespace = Some("team-a".into());
        tenant
            .custom_headers
            .insert("X-Custom".into(), "v 1".into());
        let prepared = prepare(&tenant, endpoint("http://p").unwrap(), &Auth::None).unwrap();
        assert_eq!(prepared.headers.get("x-scope-orgid").unwrap(), "team-a");
        assert_eq!(prepared.headers.get("x-custom").unwrap(), "v 1");

        for (name, value) in [
            ("Host", "x"),
            ("X-Scope-OrgID", "other"),
            ("bad name", "x"),
            ("X-Ok", "new\nline"),
            ("X-Ok", "ünicode"),
        ] {
            let mut bad = tenant.clone();
            bad.custom_headers.insert(name.into(), value.into());
            let result = prepare(&bad, endpoint("http://p").unwrap(), &Auth::None);
            assert!(
                matches!(result, Err(TriggerError::Config(_))),
                "{name}: {value}"
            );
        }

        let mut twice = spec("up");
        twice.custom_headers.insert("X-A".into(), "1".into());
        twice.custom_headers.insert("x-a".into(), "2".into());
        assert!(prepare(&twice, endpoint("http://p").unwrap(), &Auth::None).is_err());

        let mut query_param = spec("up");
        query_param
            .query_parameters
            .insert("query".into(), "x".into());
        assert!(prepare(&query_param, endpoint("http://p").unwrap(), &Auth::None).is_err());
    }

    #[test]
    fn plain_http_is_protected_only_on_loopback() {
        assert!(is_protected(&Url::parse("https://prom").unwrap()));
        assert!(is_protected(&Url::parse("http://127.0.0.1:9090").unwrap()));
        assert!(is_protected(&Url::parse("http://[::1]:9090").unwrap()));
        assert!(is_protected(&Url::parse("http://localhost").unwrap()));
        assert!(!is_protected(
            &Url::parse("http://prom.monitoring:9090").unwrap()
        ));
    }
}
