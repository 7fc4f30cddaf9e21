//! Why a trigger could not be read. Each kind is a metric label and a log field; none carries a
//! credential.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TriggerError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("throttled: {0}")]
    Throttled(String),
    #[error("access denied: {0}")]
    AccessDenied(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("network: {0}")]
    Network(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("bad response: {0}")]
    BadResponse(String),
    #[error("empty result: {0}")]
    Empty(String),
    #[error("credentials: {0}")]
    Credentials(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Other(String),
}

impl TriggerError {
    /// A short, bounded label for metrics (`qscale_trigger_errors_total{kind=...}`).
    pub fn kind(&self) -> &'static str {
        match self {
            TriggerError::Timeout(_) => "timeout",
            TriggerError::Throttled(_) => "throttled",
            TriggerError::AccessDenied(_) => "access_denied",
            TriggerError::NotFound(_) => "not_found",
            TriggerError::Network(_) => "network",
            TriggerError::Tls(_) => "tls",
            TriggerError::BadResponse(_) => "bad_response",
            TriggerError::Empty(_) => "empty",
            TriggerError::Credentials(_) => "credentials",
            TriggerError::Config(_) => "config",
            TriggerError::Other(_) => "other",
        }
    }

    /// All kinds, so metrics can be pre-registered and documented.
    pub const KINDS: &'static [&'static str] = &[
        "timeout",
        "throttled",
        "access_denied",
        "not_found",
        "network",
        "tls",
        "bad_response",
        "empty",
        "credentials",
        "config",
        "other",
    ];
}

/// An error and its causes, each said once: what an HTTP or credentials library failed on
/// (the endpoint, the cause), which never includes a header or a credential.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = current {
        let text = error.to_string();
        if !text.is_empty() && !parts.iter().any(|seen| seen.contains(&text)) {
            parts.push(text);
        }
        current = error.source();
    }
    parts.join(": ")
}
