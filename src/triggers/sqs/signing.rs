//! SigV4 for the one request shape qscale sends to SQS, with the signing key kept for the day.
//!
//! `aws_sigv4::http_request::sign` is general: per call it copies and normalises the headers
//! into a map, formats the canonical request through `Display`, hashes the payload, and derives
//! the signing key (four HMACs) from the secret. At 1,000 rules that was about a fifth of the
//! agent's CPU per poll (BENCHMARKS.md, finding 16), for a request whose shape never changes:
//! `POST /`, three fixed headers, one body per queue. Here the canonical request is written into
//! one buffer, the payload hash is made once per queue ([`Payload`]), and the key comes from
//! `aws_sigv4`'s own `generate_signing_key` once per (credentials, day); the final HMAC is
//! `aws_sigv4`'s `calculate_signature`. An endpoint whose URL has a path or a query is signed by
//! `aws_sigv4` in full instead ([`FixedSigner::for_url`] gives `None`). The tests check every
//! signature against `aws_sigv4`'s own signer.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::sign::v4::{calculate_signature, generate_signing_key};
use bytes::Bytes;
use sha2::{Digest, Sha256};

/// The headers sent with every `GetQueueAttributes`, sorted by name as SigV4 wants them.
pub(super) const FIXED_HEADERS: [(&str, &str); 3] = [
    ("content-type", "application/x-amz-json-1.0"),
    ("x-amz-target", "AmazonSQS.GetQueueAttributes"),
    // Asks for the legacy query error code beside `__type`, as the SDK does.
    ("x-amzn-query-mode", "true"),
];

const SERVICE: &str = "sqs";

/// A queue's request body and its SHA-256, made once per queue.
pub(super) struct Payload {
    pub json: Bytes,
    sha256: String,
}

impl Payload {
    pub fn new(json: String) -> Self {
        let sha256 = hex::encode(Sha256::digest(json.as_bytes()));
        Payload {
            json: Bytes::from(json),
            sha256,
        }
    }
}

/// What a signature adds to the request.
pub(super) struct Signed {
    pub date: String,
    pub authorization: String,
    /// The hex signature alone, so an error message that quotes it can be redacted.
    pub signature: String,
}

/// Signs for one endpoint host and region.
pub(super) struct FixedSigner {
    /// The `host` header as SigV4 canonicalises it: no port when it is the scheme's default.
    host: String,
    region: String,
    key: Mutex<Option<Arc<DayKey>>>,
}

/// A signing key and what it was derived from: it is only good for that secret and that day.
struct DayKey {
    day: String,
    secret: String,
    key: Vec<u8>,
}

impl FixedSigner {
    /// A signer for `url` if its requests have the fixed shape (`/` or no path, no query).
    pub fn for_url(url: &reqwest::Url, region: &str) -> Option<Self> {
        if !matches!(url.path(), "" | "/") || url.query().is_some() {
            return None;
        }
        let host = url.host_str()?;
        // `Url::port` is `None` for the scheme's default port, as SigV4's host rule wants.
        let host = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        Some(FixedSigner {
            host,
            region: region.to_string(),
            key: Mutex::new(None),
        })
    }

    pub fn sign(&self, credentials: &Credentials, payload: &Payload, now: SystemTime) -> Signed {
        let date = amz_date(now);
        let day = &date[..8];
        let key = self.key_for(credentials.secret_access_key(), day, now);
        let token = credentials.session_token();

        let mut signed_headers = String::with_capacity(96);
        let mut canonical = String::with_capacity(
            320 + self.host.len() + token.map_or(0, str::len) + payload.sha256.len(),
        );
        canonical.push_str("POST\n/\n\n");
        let mut header = |name: &str, value: &str| {
            if !signed_headers.is_empty() {
                signed_headers.push(';');
            }
            signed_headers.push_str(name);
            canonical.push_str(name);
            canonical.push(':');
            canonical.push_str(value.trim_matches(' '));
            canonical.push('\n');
        };
        header(FIXED_HEADERS[0].0, FIXED_HEADERS[0].1);
        header("host", &self.host);
        header("x-amz-date", &date);
        if let Some(token) = token {
            header("x-amz-security-token", token);
        }
        header(FIXED_HEADERS[1].0, FIXED_HEADERS[1].1);
        header(FIXED_HEADERS[2].0, FIXED_HEADERS[2].1);
        canonical.push('\n');
        canonical.push_str(&signed_headers);
        canonical.push('\n');
        canonical.push_str(&payload.sha256);

        let scope = format!("{day}/{}/{SERVICE}/aws4_request", self.region);
        let mut string_to_sign = String::with_capacity(160);
        // Writing to a String cannot fail.
        let _ = write!(
            string_to_sign,
            "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let signature = calculate_signature(&key.key, string_to_sign.as_bytes());
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            credentials.access_key_id()
        );
        Signed {
            date,
            authorization,
            signature,
        }
    }

    /// The key for this secret and day: derived again only when either changes.
    fn key_for(&self, secret: &str, day: &str, now: SystemTime) -> Arc<DayKey> {
        let mut cached = self
            .key
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(key) = cached.as_ref() {
            if key.day == day && key.secret == secret {
                return key.clone();
            }
        }
        let key = Arc::new(DayKey {
            day: day.to_string(),
            secret: secret.to_string(),
            key: generate_signing_key(secret, now, &self.region, SERVICE)
                .as_ref()
                .to_vec(),
        });
        *cached = Some(key.clone());
        key
    }
}

/// `20261202T141000Z`: the request time as SigV4 writes it (UTC, whole seconds).
fn amz_date(now: SystemTime) -> String {
    let rfc3339 = humantime::format_rfc3339_seconds(now).to_string();
    rfc3339.chars().filter(|c| *c != '-' && *c != ':').collect()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    use aws_sigv4::sign::v4;
    use proptest::prelude::*;

    use super::*;

    /// The `authorization` and `x-amz-date` headers `aws_sigv4` itself makes for the request.
    fn reference(
        credentials: &Credentials,
        url: &str,
        region: &str,
        body: &[u8],
        now: SystemTime,
    ) -> (String, String) {
        let identity = credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name(SERVICE)
            .time(now)
            .settings(SigningSettings::default())
            .build()
            .map(Into::into);
        let Ok(params) = params else {
            panic!("signing params");
        };
        let signable = SignableRequest::new(
            "POST",
            url,
            FIXED_HEADERS.iter().copied(),
            SignableBody::Bytes(body),
        );
        let Ok(Ok(signed)) = signable.map(|s| sign(s, &params)) else {
            panic!("aws_sigv4 could not sign");
        };
        let (instructions, _) = signed.into_parts();
        let mut authorization = String::new();
        let mut date = String::new();
        for header in instructions.into_parts().0 {
            match header.name() {
                "authorization" => authorization = header.value().to_string(),
                "x-amz-date" => date = header.value().to_string(),
                _ => {}
            }
        }
        (authorization, date)
    }

    fn check(url: &str, region: &str, credentials: &Credentials, body: &str, now: SystemTime) {
        let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string());
        let Some(signer) = parsed.ok().and_then(|u| FixedSigner::for_url(&u, region)) else {
            panic!("{url} should take the fixed signer");
        };
        let payload = Payload::new(body.to_string());
        let ours = signer.sign(credentials, &payload, now);
        let (authorization, date) = reference(credentials, url, region, body.as_bytes(), now);
        assert_eq!(ours.authorization, authorization, "{url} {region}");
        assert_eq!(ours.date, date);
        assert!(authorization.ends_with(&ours.signature));
    }

    #[test]
    fn signatures_match_aws_sigv4_with_and_without_a_session_token() {
        let now = UNIX_EPOCH + Duration::from_secs(1_796_219_400);
        let keys = Credentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG", None, None, "test");
        let session = Credentials::new("ASIAEXAMPLE", "secret", Some("tok/en+=".into()), None, "t");
        let body = super::super::call::body("https://sqs.eu-west-1.amazonaws.com/1/q");
        for url in [
            "https://sqs.eu-west-1.amazonaws.com",
            "https://sqs.eu-west-1.amazonaws.com/",
            "https://sqs.eu-west-1.amazonaws.com:443/",
            "http://127.0.0.1:4566",
            "http://localhost:80/",
            "http://[::1]:4566",
        ] {
            check(url, "eu-west-1", &keys, &body, now);
            check(url, "eu-west-1", &session, &body, now);
        }
    }

    #[test]
    fn the_key_follows_the_day_and_the_secret() {
        let Ok(url) = reqwest::Url::parse("https://sqs.us-east-1.amazonaws.com") else {
            panic!("url");
        };
        let Some(signer) = FixedSigner::for_url(&url, "us-east-1") else {
            panic!("signer");
        };
        let payload = Payload::new("{}".into());
        let day = UNIX_EPOCH + Duration::from_secs(1_796_219_400);
        let first = Credentials::new("AKID", "one", None, None, "t");
        let rotated = Credentials::new("AKID", "two", None, None, "t");
        for (credentials, now) in [
            (&first, day),
            (&first, day + Duration::from_secs(86_400)),
            (&rotated, day + Duration::from_secs(86_400)),
            (&first, day + Duration::from_secs(86_401)),
        ] {
            let ours = signer.sign(credentials, &payload, now);
            let url = "https://sqs.us-east-1.amazonaws.com";
            let (authorization, _) = reference(credentials, url, "us-east-1", b"{}", now);
            assert_eq!(ours.authorization, authorization);
        }
    }

    #[test]
    fn a_path_or_a_query_goes_to_the_general_signer() {
        for url in ["http://proxy.local/sqs/", "http://proxy.local/?a=b"] {
            let Ok(url) = reqwest::Url::parse(url) else {
                panic!("url");
            };
            assert!(FixedSigner::for_url(&url, "us-east-1").is_none(), "{url}");
        }
    }

    proptest! {
        #[test]
        fn any_host_region_time_and_body_sign_as_aws_sigv4_does(
            // Names, not addresses: a last label of digits would be read as an IPv4 address.
            host in "[a-z][a-z0-9-]{0,20}(\\.[a-z][a-z0-9]{0,9}){0,3}",
            port in proptest::option::of(1u16..),
            https in any::<bool>(),
            region in "[a-z]{2}-[a-z]{4,9}-[1-9]",
            secs in 0u64..4_102_444_800,
            queue in "[ -~]{0,80}",
            token in proptest::option::of("[A-Za-z0-9+/=]{1,200}"),
        ) {
            let scheme = if https { "https" } else { "http" };
            let url = match port {
                Some(port) => format!("{scheme}://{host}:{port}"),
                None => format!("{scheme}://{host}"),
            };
            let credentials = Credentials::new("AKID", "s3cr3t", token, None, "p");
            let body = super::super::call::body(&queue);
            check(&url, &region, &credentials, &body, UNIX_EPOCH + Duration::from_secs(secs));
        }
    }
}
