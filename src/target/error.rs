//! Why reading or writing a target failed, sorted by what the agent should do about it.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TargetError {
    /// The object does not exist (yet): report, try again next tick.
    #[error("{0} not found")]
    NotFound(String),
    /// The kind exists but has no scale subresource: a configuration mistake.
    #[error("{0} has no scale subresource")]
    NoScaleSubresource(String),
    /// The kind is unknown to the API server.
    #[error("kind {0} is not served by the API server")]
    UnknownKind(String),
    /// Someone else wrote first: read again and retry.
    #[error("conflict writing {0}")]
    Conflict(String),
    /// 429: the server asks us to slow down.
    #[error("throttled by the API server: {0}")]
    Throttled(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("API server error {code}: {message}")]
    Server { code: u16, message: String },
    #[error("API request timed out after {0:?}")]
    Timeout(Duration),
    #[error("API request failed: {0}")]
    Transport(String),
}

impl TargetError {
    /// Worth retrying within the same tick (after a fresh read for a conflict).
    pub fn is_transient(&self) -> bool {
        match self {
            TargetError::Conflict(_)
            | TargetError::Throttled(_)
            | TargetError::Timeout(_)
            | TargetError::Transport(_) => true,
            TargetError::Server { code, .. } => *code >= 500,
            _ => false,
        }
    }

    /// The API server answered and the answer was about the target itself, not about the
    /// connection or the server's health.
    pub fn is_answer(&self) -> bool {
        matches!(
            self,
            TargetError::NotFound(_)
                | TargetError::NoScaleSubresource(_)
                | TargetError::UnknownKind(_)
        )
    }

    /// A short, bounded label for metrics.
    /// Every [`TargetError::kind`], so a removed rule's error counters can be dropped.
    pub const KINDS: &'static [&'static str] = &[
        "not_found",
        "no_scale_subresource",
        "unknown_kind",
        "conflict",
        "throttled",
        "forbidden",
        "server",
        "timeout",
        "transport",
    ];

    pub fn kind(&self) -> &'static str {
        match self {
            TargetError::NotFound(_) => "not_found",
            TargetError::NoScaleSubresource(_) => "no_scale_subresource",
            TargetError::UnknownKind(_) => "unknown_kind",
            TargetError::Conflict(_) => "conflict",
            TargetError::Throttled(_) => "throttled",
            TargetError::Forbidden(_) => "forbidden",
            TargetError::Server { .. } => "server",
            TargetError::Timeout(_) => "timeout",
            TargetError::Transport(_) => "transport",
        }
    }

    pub fn from_kube(error: kube::Error, what: &str) -> Self {
        match error {
            kube::Error::Api(status) => match status.code {
                404 => TargetError::NotFound(what.to_string()),
                409 => TargetError::Conflict(what.to_string()),
                429 => TargetError::Throttled(status.message),
                401 | 403 => TargetError::Forbidden(format!("{what}: {}", status.message)),
                code => TargetError::Server {
                    code,
                    message: status.message,
                },
            },
            other => TargetError::Transport(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_lists_every_kind() {
        let s = String::new;
        let all = [
            TargetError::NotFound(s()),
            TargetError::NoScaleSubresource(s()),
            TargetError::UnknownKind(s()),
            TargetError::Conflict(s()),
            TargetError::Throttled(s()),
            TargetError::Forbidden(s()),
            TargetError::Server {
                code: 500,
                message: s(),
            },
            TargetError::Timeout(Duration::ZERO),
            TargetError::Transport(s()),
        ];
        let kinds: Vec<&str> = all.iter().map(TargetError::kind).collect();
        assert_eq!(kinds, TargetError::KINDS);
    }
}
