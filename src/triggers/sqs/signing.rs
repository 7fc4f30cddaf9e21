//! SigV4 for the one request shape qscale sends to SQS, with what a day's signatures share kept.
//!
//! `aws_sigv4::http_request::sign` is general: per call it copies and normalises the headers
//! into a map, formats the canonical request through `Display`, hashes the payload, and derives
//! the signing key (four HMACs) from the secret. At 1,000 rules that was about a fifth of the
//! agent's CPU per poll (BENCHMARKS.md, finding 16), for a request whose shape never changes:
//! `POST /`, three fixed headers, one body per queue. Here the payload hash is made once per
//! queue ([`Payload`]); the signing key (from `aws_sigv4`'s own `generate_signing_key`), the
//! credential scope, the start of the `authorization` header and the session-token header once
//! per (credentials, day); the `x-amz-date` header once per second. Per call, the canonical
//! request is streamed into SHA-256 and the string to sign into the day's HMAC without being
//! written out, so a signature allocates only its `authorization` header (BENCHMARKS.md,
//! finding 23). An endpoint whose URL has a path or a query is signed by `aws_sigv4` in full
//! instead ([`FixedSigner::for_url`] gives `None`). The tests check every signature against
//! `aws_sigv4`'s own signer.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::sign::v4::generate_signing_key;
use bytes::{BufMut, Bytes, BytesMut};
use hmac::{Hmac, KeyInit, Mac};
use http::HeaderValue;
use sha2::{Digest, Sha256};

use crate::triggers::TriggerError;

/// The headers sent with every `GetQueueAttributes`, sorted by name as SigV4 wants them.
pub(super) const FIXED_HEADERS: [(&str, &str); 3] = [
    ("content-type", "application/x-amz-json-1.0"),
    ("x-amz-target", "AmazonSQS.GetQueueAttributes"),
    // Asks for the legacy query error code beside `__type`, as the SDK does.
    ("x-amzn-query-mode", "true"),
];

/// The signed header names, in SigV4's order, without and with a session token.
const SIGNED_HEADERS: &str = "content-type;host;x-amz-date;x-amz-target;x-amzn-query-mode";
const SIGNED_HEADERS_WITH_TOKEN: &str =
    "content-type;host;x-amz-date;x-amz-security-token;x-amz-target;x-amzn-query-mode";

const SERVICE: &str = "sqs";

/// A queue's request body and its SHA-256, made once per queue.
pub(super) struct Payload {
    pub json: Bytes,
    sha256: [u8; 64],
}

impl Payload {
    pub fn new(json: String) -> Self {
        let mut sha256 = [0; 64];
        // 32 bytes always fit 64 hex digits.
        let _ = hex::encode_to_slice(Sha256::digest(json.as_bytes()), &mut sha256);
        Payload {
            json: Bytes::from(json),
            sha256,
        }
    }
}

/// What a signature adds to the request.
pub(super) struct Signed {
    pub date: HeaderValue,
    pub authorization: HeaderValue,
    pub token: Option<HeaderValue>,
    /// The hex signature alone, so an error message that quotes it can be redacted.
    pub signature: Hex,
}

/// A SHA-256 in hex, kept as bytes: it is only made text on the rare path that needs it.
pub(super) struct Hex([u8; 64]);

impl Hex {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Signs for one endpoint host and region.
pub(super) struct FixedSigner {
    /// The `host` header as SigV4 canonicalises it: no port when it is the scheme's default.
    host: String,
    region: String,
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    key: Option<Arc<DayKey>>,
    stamp: Option<Stamp>,
}

/// What one set of credentials signs with on one day.
struct DayKey {
    /// The credentials it was made from, compared by pointer first: the agent's credential
    /// cache hands out one `Arc` until it refreshes them (see [`same_credentials`]).
    credentials: Arc<Credentials>,
    day: [u8; 8],
    /// Keyed with the day's signing key: cloning it skips hashing the key's pads per call.
    mac: Hmac<Sha256>,
    /// `20261202/us-east-1/sqs/aws4_request`.
    scope: String,
    /// The `authorization` header up to the signature itself.
    authorization: String,
    token: Option<HeaderValue>,
    /// [`SIGNED_HEADERS`], or [`SIGNED_HEADERS_WITH_TOKEN`] with a token.
    signed_headers: &'static str,
}

/// One second's `x-amz-date`.
#[derive(Clone)]
struct Stamp {
    second: u64,
    text: [u8; 16],
    header: HeaderValue,
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
            kept: Mutex::default(),
        })
    }

    /// The `host` header the signature covers, to send as it was signed.
    pub fn host(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(&self.host).ok()
    }

    pub fn sign(
        &self,
        credentials: &Arc<Credentials>,
        payload: &Payload,
        now: SystemTime,
    ) -> Result<Signed, TriggerError> {
        let (key, stamp) = self.kept(credentials, now)?;

        let mut canonical = Sha256::new();
        canonical.update(b"POST\n/\n\n");
        let mut header = |name: &str, value: &[u8]| {
            canonical.update(name.as_bytes());
            canonical.update(b":");
            canonical.update(trim_spaces(value));
            canonical.update(b"\n");
        };
        header(FIXED_HEADERS[0].0, FIXED_HEADERS[0].1.as_bytes());
        header("host", self.host.as_bytes());
        header("x-amz-date", &stamp.text);
        if let Some(token) = &key.token {
            header("x-amz-security-token", token.as_bytes());
        }
        header(FIXED_HEADERS[1].0, FIXED_HEADERS[1].1.as_bytes());
        header(FIXED_HEADERS[2].0, FIXED_HEADERS[2].1.as_bytes());
        canonical.update(b"\n");
        canonical.update(key.signed_headers.as_bytes());
        canonical.update(b"\n");
        canonical.update(payload.sha256);
        let mut canonical_hex = [0; 64];
        let _ = hex::encode_to_slice(canonical.finalize(), &mut canonical_hex);

        let mut mac = key.mac.clone();
        mac.update(b"AWS4-HMAC-SHA256\n");
        mac.update(&stamp.text);
        mac.update(b"\n");
        mac.update(key.scope.as_bytes());
        mac.update(b"\n");
        mac.update(&canonical_hex);
        let mut signature = [0; 64];
        let _ = hex::encode_to_slice(mac.finalize().into_bytes(), &mut signature);

        let mut authorization = BytesMut::with_capacity(key.authorization.len() + 64);
        authorization.put_slice(key.authorization.as_bytes());
        authorization.put_slice(&signature);
        // Taken as it is, not copied; checked all the same (the prefix was, when it was made).
        let mut authorization = HeaderValue::from_maybe_shared(authorization.freeze())
            .map_err(|_| invalid("authorization"))?;
        authorization.set_sensitive(true);
        Ok(Signed {
            date: stamp.header,
            authorization,
            token: key.token.clone(),
            signature: Hex(signature),
        })
    }

    /// The day's key for these credentials and this second's date, made again only when the
    /// credentials, the day or the second change.
    fn kept(
        &self,
        credentials: &Arc<Credentials>,
        now: SystemTime,
    ) -> Result<(Arc<DayKey>, Stamp), TriggerError> {
        let mut kept = self
            .kept
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Before 1970 there is no `x-amz-date` to write (and the formatter would panic).
        let second = now
            .duration_since(UNIX_EPOCH)
            .map_err(|_| invalid("x-amz-date"))?
            .as_secs();
        let stamp = match &kept.stamp {
            Some(stamp) if stamp.second == second => stamp.clone(),
            _ => {
                let text = amz_date(now);
                let stamp = Stamp {
                    second,
                    text,
                    header: HeaderValue::from_bytes(&text).map_err(|_| invalid("x-amz-date"))?,
                };
                kept.stamp = Some(stamp.clone());
                stamp
            }
        };
        let day: [u8; 8] = stamp.text[..8].try_into().unwrap_or_default();
        if let Some(key) = &kept.key {
            if key.day == day && same_credentials(&key.credentials, credentials) {
                return Ok((key.clone(), stamp));
            }
        }
        let key = Arc::new(self.day_key(credentials, day, now)?);
        kept.key = Some(key.clone());
        Ok((key, stamp))
    }

    fn day_key(
        &self,
        credentials: &Arc<Credentials>,
        day: [u8; 8],
        now: SystemTime,
    ) -> Result<DayKey, TriggerError> {
        let signing_key =
            generate_signing_key(credentials.secret_access_key(), now, &self.region, SERVICE);
        // HMAC takes a key of any length; the error cannot happen, and is not unwrapped.
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(signing_key.as_ref())
            .map_err(|e| TriggerError::Credentials(format!("SigV4 signing key: {e}")))?;
        let day_text = std::str::from_utf8(&day).unwrap_or_default();
        let scope = format!("{day_text}/{}/{SERVICE}/aws4_request", self.region);
        let token = match credentials.session_token() {
            Some(token) => {
                let mut value =
                    HeaderValue::from_str(token).map_err(|_| invalid("x-amz-security-token"))?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let signed_headers = if token.is_some() {
            SIGNED_HEADERS_WITH_TOKEN
        } else {
            SIGNED_HEADERS
        };
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature=",
            credentials.access_key_id()
        );
        HeaderValue::from_str(&authorization).map_err(|_| invalid("authorization"))?;
        Ok(DayKey {
            credentials: credentials.clone(),
            day,
            mac,
            scope,
            authorization,
            token,
            signed_headers,
        })
    }
}

fn invalid(name: &str) -> TriggerError {
    TriggerError::Credentials(format!("SigV4 header {name} is not valid"))
}

/// Whether `a` and `b` sign alike: the same `Arc` (the cache's steady state, one pointer
/// compare), or equal keys, so credentials fetched again unchanged do not cost a new key.
fn same_credentials(a: &Arc<Credentials>, b: &Arc<Credentials>) -> bool {
    Arc::ptr_eq(a, b)
        || (a.access_key_id() == b.access_key_id()
            && a.secret_access_key() == b.secret_access_key()
            && a.session_token() == b.session_token())
}

/// SigV4 trims the spaces around a header value.
fn trim_spaces(value: &[u8]) -> &[u8] {
    let start = value.iter().position(|b| *b != b' ').unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| *b != b' ')
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// `20261202T141000Z`: the request time as SigV4 writes it (UTC, whole seconds).
fn amz_date(now: SystemTime) -> [u8; 16] {
    let rfc3339 = humantime::format_rfc3339_seconds(now).to_string();
    let mut text = [b'0'; 16];
    let digits = rfc3339.bytes().filter(|b| *b != b'-' && *b != b':');
    for (slot, byte) in text.iter_mut().zip(digits) {
        *slot = byte;
    }
    text
}

#[cfg(test)]
mod tests;
