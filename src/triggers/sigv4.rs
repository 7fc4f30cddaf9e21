//! SigV4 signing of one HTTP request, shared by the Amazon Managed Prometheus queries and the
//! SQS `GetQueueAttributes` call. The signing itself is `aws-sigv4`'s; this only turns a request
//! as it will be sent into its signable form and the result into header values.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use reqwest::header::HeaderValue;

use super::TriggerError;

/// The headers that carry a signature, marked sensitive, and the strings that must never be
/// quoted back from a server (the signature and the credentials it was made with).
pub struct Signature {
    pub headers: Vec<(&'static str, HeaderValue)>,
    pub secrets: Vec<String>,
}

/// Signs `method url` with `headers` and `body`, exactly as they will be sent.
pub fn sign_request<'a>(
    credentials: Credentials,
    region: &str,
    service: &str,
    method: &'a str,
    url: &'a str,
    headers: impl Iterator<Item = (&'a str, &'a str)>,
    body: &'a [u8],
) -> Result<Signature, TriggerError> {
    let mut secrets = vec![credentials.secret_access_key().to_string()];
    if let Some(token) = credentials.session_token() {
        secrets.push(token.to_string());
    }
    let identity = credentials.into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| TriggerError::Config(format!("aws_sigv4: {e}")))?
        .into();
    let signable = SignableRequest::new(method, url, headers, SignableBody::Bytes(body))
        .map_err(|e| TriggerError::Config(format!("aws_sigv4: cannot sign the request: {e}")))?;
    let (instructions, signature) = sign(signable, &params)
        .map_err(|e| TriggerError::Credentials(format!("aws_sigv4: signing failed: {e}")))?
        .into_parts();
    secrets.push(signature);
    let mut signed = Vec::new();
    for header in instructions.into_parts().0 {
        let name = header.name();
        let value = sensitive_header(header.value()).ok_or_else(|| {
            TriggerError::Credentials(format!("aws_sigv4: header {name} is not valid"))
        })?;
        signed.push((name, value));
    }
    Ok(Signature {
        headers: signed,
        secrets,
    })
}

/// A header value marked sensitive, so hyper never writes it in its own debug output.
pub fn sensitive_header(text: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(text).ok()?;
    value.set_sensitive(true);
    Some(value)
}
