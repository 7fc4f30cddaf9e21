//! What an SQS failure is: service error codes and SDK errors sorted into [`TriggerError`]
//! kinds, with messages that name the queue and never quote a credential.

use std::time::Duration;

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::triggers::TriggerError;

/// Sorts a service error (its code, from `x-amzn-query-error` or `__type`, and message) into a
/// kind. Both the legacy query codes and the JSON protocol's names are known.
pub(super) fn from_code(queue: &str, code: &str, message: Option<&str>) -> TriggerError {
    // Only the first paragraph of the service's message: a signature error goes on to echo
    // the canonical request, session token included.
    let message = message.map(first_paragraph).unwrap_or_default();
    let detail = || format!("queue {queue}: {code}: {message}");
    match code {
        "AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist" => {
            TriggerError::NotFound(detail())
        }
        "AccessDenied"
        | "AccessDeniedException"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "UnrecognizedClientException" => TriggerError::AccessDenied(detail()),
        "ThrottlingException" | "RequestThrottled" | "Throttling" | "RequestThrottledException" => {
            TriggerError::Throttled(detail())
        }
        _ => TriggerError::Other(detail()),
    }
}

/// Sorts an SDK error (the `GetQueueUrl` lookup still goes through the SDK) into a kind. The
/// SDK's messages name the operation and the cause; they never carry credentials.
pub(super) fn from_sdk<E, R>(error: SdkError<E, R>, queue: &str, timeout: Duration) -> TriggerError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let detail = || format!("queue {queue}: {}", DisplayErrorContext(&error));
    match &error {
        SdkError::TimeoutError(_) => TriggerError::Timeout(timeout),
        SdkError::DispatchFailure(failure) if failure.is_timeout() => {
            TriggerError::Timeout(timeout)
        }
        SdkError::DispatchFailure(failure) if failure.is_user() || failure.is_other() => {
            TriggerError::Credentials(detail())
        }
        SdkError::DispatchFailure(_) => TriggerError::Network(detail()),
        SdkError::ConstructionFailure(_) => TriggerError::Config(detail()),
        SdkError::ResponseError(_) => TriggerError::BadResponse(detail()),
        SdkError::ServiceError(service) => from_code(
            queue,
            service.err().code().unwrap_or_default(),
            service.err().message(),
        ),
        _ => TriggerError::Other(detail()),
    }
}

/// The first paragraph of a service message, cut at any echoed header and bounded in length.
pub(super) fn first_paragraph(message: &str) -> String {
    const MAX: usize = 300;
    let mut text = message.split("\n\n").next().unwrap_or_default();
    if let Some(at) = text.to_ascii_lowercase().find("x-amz-") {
        text = &text[..at];
    }
    let mut end = text.len().min(MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_of_both_protocols_sort_alike() {
        for (code, kind) in [
            ("AWS.SimpleQueueService.NonExistentQueue", "not_found"),
            ("QueueDoesNotExist", "not_found"),
            ("AccessDenied", "access_denied"),
            ("AccessDeniedException", "access_denied"),
            ("RequestThrottled", "throttled"),
            ("ThrottlingException", "throttled"),
            ("InternalError", "other"),
        ] {
            assert_eq!(from_code("q", code, None).kind(), kind, "{code}");
        }
    }

    #[test]
    fn an_echoed_canonical_request_is_cut() {
        let message = "The request signature we calculated does not match.\n\nThe Canonical \
                       String for this request should have been\nx-amz-security-token:SECRET";
        let error = from_code("q", "SignatureDoesNotMatch", Some(message));
        assert!(!error.to_string().contains("SECRET"), "{error}");
        let inline = first_paragraph("denied x-amz-security-token:SECRET");
        assert_eq!(inline, "denied");
    }
}
