//! Turning a `/api/v1/query` response body into one number.
//!
//! Kept pure (bytes in, number or error out) so it can be fuzzed and unit-tested without a
//! server. Every way the answer can be something other than one finite number is an error,
//! because the policy must never mistake a broken query for an idle queue.

use serde::Deserialize;
use serde_json::Value;

use crate::config::OnEmpty;
use crate::triggers::TriggerError;

/// Longest piece of server-supplied text quoted in an error, so a huge or hostile body cannot
/// flood the logs.
const MAX_QUOTED: usize = 300;

#[derive(Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Value,
}

#[derive(Deserialize)]
struct VectorSample {
    #[serde(default)]
    metric: serde_json::Map<String, Value>,
    #[serde(default)]
    value: Option<(Value, String)>,
    #[serde(default)]
    histogram: Option<Value>,
}

/// Reads the single number a query's response holds.
///
/// A vector must hold at most one series (aggregate the query otherwise), and an empty result,
/// `NaN` or `±Inf` is [`TriggerError::Empty`] unless `on_empty` is [`OnEmpty::Zero`].
pub fn parse_response(body: &[u8], on_empty: OnEmpty) -> Result<f64, TriggerError> {
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| {
        TriggerError::BadResponse(format!(
            "not a Prometheus query response: {}",
            quote(&e.to_string())
        ))
    })?;
    if envelope.status != "success" {
        return Err(server_error(&envelope));
    }
    let data = envelope
        .data
        .ok_or_else(|| TriggerError::BadResponse("response has no `data`".into()))?;
    let value = match data.result_type.as_str() {
        "vector" => vector_value(data.result)?,
        "scalar" => Some(sample_value(data.result, "scalar")?),
        "matrix" => {
            return Err(TriggerError::BadResponse(
                "the query returned a range vector (matrix); use an instant query, e.g. \
                 `sum(rate(metric[1m]))` instead of `metric[1m]`"
                    .into(),
            ))
        }
        other => {
            return Err(TriggerError::BadResponse(format!(
                "result type `{}` is not a number; the query must return one series or a scalar",
                quote(other)
            )))
        }
    };
    match value {
        Some(number) if number.is_finite() => Ok(number),
        Some(number) => on_empty_or(on_empty, || {
            format!("the query returned {}", describe_non_finite(number))
        }),
        None => on_empty_or(on_empty, || "the query returned no series".to_string()),
    }
}

/// The one value of a vector, `None` when it is empty.
fn vector_value(result: Value) -> Result<Option<f64>, TriggerError> {
    let samples: Vec<VectorSample> = serde_json::from_value(result).map_err(|e| {
        TriggerError::BadResponse(format!(
            "malformed vector result: {}",
            quote(&e.to_string())
        ))
    })?;
    match samples.len() {
        0 => Ok(None),
        1 => {
            let sample = samples.into_iter().next().ok_or_else(|| {
                TriggerError::BadResponse("vector result vanished while reading".into())
            })?;
            match (sample.value, sample.histogram) {
                (Some((timestamp, text)), _) => Ok(Some(sample_value(
                    Value::Array(vec![timestamp, Value::String(text)]),
                    "vector",
                )?)),
                (None, Some(_)) => Err(TriggerError::BadResponse(
                    "the query returned a native histogram; wrap it in histogram_count(...), \
                     histogram_sum(...) or histogram_quantile(...)"
                        .into(),
                )),
                (None, None) => Err(TriggerError::BadResponse(
                    "vector sample has no `value`".into(),
                )),
            }
        }
        count => Err(TriggerError::BadResponse(format!(
            "the query returned {count} series (first: {}); a trigger needs one number, so \
             aggregate the query, e.g. `sum(...)` or `max(...)`",
            describe_labels(&samples[0].metric)
        ))),
    }
}

/// A `[timestamp, "value"]` pair's value; Prometheus writes values as strings so that `NaN` and
/// `±Inf` survive JSON.
fn sample_value(pair: Value, kind: &str) -> Result<f64, TriggerError> {
    let (_timestamp, text): (Value, String) = serde_json::from_value(pair).map_err(|e| {
        TriggerError::BadResponse(format!(
            "malformed {kind} sample: {}",
            quote(&e.to_string())
        ))
    })?;
    text.trim().parse::<f64>().map_err(|_| {
        TriggerError::BadResponse(format!("{kind} value `{}` is not a number", quote(&text)))
    })
}

fn on_empty_or(on_empty: OnEmpty, why: impl FnOnce() -> String) -> Result<f64, TriggerError> {
    match on_empty {
        OnEmpty::Zero => Ok(0.0),
        OnEmpty::Error => Err(TriggerError::Empty(format!(
            "{}; set `on_empty = \"zero\"` if that means no load",
            why()
        ))),
    }
}

fn describe_non_finite(number: f64) -> &'static str {
    if number.is_nan() {
        "NaN"
    } else if number > 0.0 {
        "+Inf"
    } else {
        "-Inf"
    }
}

fn server_error(envelope: &Envelope) -> TriggerError {
    let kind = envelope.error_type.as_deref().unwrap_or("unknown");
    let message = envelope.error.as_deref().unwrap_or("no message");
    TriggerError::BadResponse(format!(
        "Prometheus answered status `{}` ({}): {}",
        quote(&envelope.status),
        quote(kind),
        quote(message)
    ))
}

/// The message of a JSON error body: Prometheus' `errorType`/`error`, or the `message` of an
/// AWS error (AMP), if the body is one.
pub(super) fn error_message(body: &[u8]) -> Option<String> {
    let document: Value = serde_json::from_slice(body).ok()?;
    let text = |key: &str| document.get(key).and_then(Value::as_str);
    if let Some(message) = text("error") {
        return Some(match text("errorType") {
            Some(kind) => format!("{}: {}", quote(kind), quote(message)),
            None => quote(message),
        });
    }
    text("message").or_else(|| text("Message")).map(quote)
}

fn describe_labels(labels: &serde_json::Map<String, Value>) -> String {
    let text = labels
        .iter()
        .map(|(name, value)| match value {
            Value::String(value) => format!("{name}={value:?}"),
            other => format!("{name}={other}"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    quote(&format!("{{{text}}}"))
}

/// Server text cut to a bounded length on a character boundary.
pub(super) fn quote(text: &str) -> String {
    if text.len() <= MAX_QUOTED {
        return text.to_string();
    }
    let mut end = MAX_QUOTED;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<f64, TriggerError> {
        parse_response(body.as_bytes(), OnEmpty::Error)
    }

    fn parse_zero(body: &str) -> Result<f64, TriggerError> {
        parse_response(body.as_bytes(), OnEmpty::Zero)
    }

    fn vector(values: &[&str]) -> String {
        let samples = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                format!(r#"{{"metric":{{"queue":"q{i}"}},"value":[1700000000.123,"{v}"]}}"#)
            })
            .collect::<Vec<_>>()
            .join(",");
        format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[{samples}]}}}}"#)
    }

    fn scalar(value: &str) -> String {
        format!(
            r#"{{"status":"success","data":{{"resultType":"scalar","result":[1700000000,"{value}"]}}}}"#
        )
    }

    #[test]
    fn one_series_vector_is_its_value() {
        assert_eq!(parse(&vector(&["42"])), Ok(42.0));
        assert_eq!(parse(&vector(&["1.5e3"])), Ok(1500.0));
        assert_eq!(parse(&vector(&["-3"])), Ok(-3.0));
    }

    #[test]
    fn scalar_is_its_value() {
        assert_eq!(parse(&scalar("7")), Ok(7.0));
        assert_eq!(parse(&scalar("0")), Ok(0.0));
    }

    #[test]
    fn two_series_say_to_aggregate() {
        let error = parse(&vector(&["1", "2"])).unwrap_err();
        let TriggerError::BadResponse(message) = &error else {
            panic!("expected BadResponse, got {error:?}");
        };
        assert!(message.contains("2 series"), "{message}");
        assert!(message.contains("sum(...)"), "{message}");
        assert!(message.contains("aggregate"), "{message}");
        assert!(message.contains("queue=\"q0\""), "{message}");
        // on_empty does not excuse ambiguity
        assert!(parse_zero(&vector(&["1", "2"])).is_err());
    }

    #[test]
    fn empty_vector_is_an_error_unless_zero() {
        let empty = vector(&[]);
        assert!(matches!(parse(&empty), Err(TriggerError::Empty(_))));
        assert_eq!(parse_zero(&empty), Ok(0.0));
    }

    #[test]
    fn nan_and_infinities_are_errors_unless_zero() {
        for text in ["NaN", "+Inf", "-Inf", "Inf"] {
            for body in [vector(&[text]), scalar(text)] {
                let error = parse(&body).unwrap_err();
                assert!(matches!(error, TriggerError::Empty(_)), "{text}: {error:?}");
                assert_eq!(parse_zero(&body), Ok(0.0), "{text}");
            }
        }
        let TriggerError::Empty(message) = parse(&scalar("+Inf")).unwrap_err() else {
            panic!("expected Empty");
        };
        assert!(
            message.contains("+Inf") && message.contains("on_empty"),
            "{message}"
        );
    }

    #[test]
    fn matrix_is_rejected() {
        let body = r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"1"],[2,"2"]]}]}}"#;
        let error = parse(body).unwrap_err();
        assert!(
            matches!(&error, TriggerError::BadResponse(m) if m.contains("instant query")),
            "{error:?}"
        );
        assert!(parse_zero(body).is_err());
    }

    #[test]
    fn string_result_is_rejected() {
        let body = r#"{"status":"success","data":{"resultType":"string","result":[1,"hello"]}}"#;
        assert!(matches!(parse(body), Err(TriggerError::BadResponse(_))));
    }

    #[test]
    fn error_status_carries_the_server_message() {
        let body =
            r#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected"}"#;
        let error = parse(body).unwrap_err();
        let TriggerError::BadResponse(message) = &error else {
            panic!("expected BadResponse, got {error:?}");
        };
        assert!(
            message.contains("bad_data") && message.contains("parse error"),
            "{message}"
        );
        assert_eq!(
            error_message(body.as_bytes()).as_deref(),
            Some("bad_data: 1:5: parse error: unexpected")
        );
        let aws = br#"{"message":"The security token included in the request is invalid."}"#;
        assert_eq!(
            error_message(aws).as_deref(),
            Some("The security token included in the request is invalid.")
        );
        assert_eq!(error_message(b"<html>"), None);
    }

    #[test]
    fn malformed_bodies_are_bad_responses() {
        for body in [
            "",
            "not json",
            "{",
            "[]",
            "null",
            r#"{"status":"success"}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":{}}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{}}]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"value":[1]}]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"value":[1,2]}]}}"#,
            r#"{"status":"success","data":{"resultType":"scalar","result":[1,"twelve"]}}"#,
            r#"{"status":"success","data":{"resultType":"scalar","result":"7"}}"#,
        ] {
            let result = parse_zero(body);
            assert!(
                matches!(result, Err(TriggerError::BadResponse(_))),
                "{body:?}: {result:?}"
            );
        }
    }

    #[test]
    fn native_histogram_says_what_to_do() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"histogram":[1,{"count":"3"}]}]}}"#;
        let error = parse(body).unwrap_err();
        assert!(
            matches!(&error, TriggerError::BadResponse(m) if m.contains("histogram_count")),
            "{error:?}"
        );
    }

    #[test]
    fn warnings_and_extra_fields_are_ignored() {
        let body = r#"{"status":"success","warnings":["slow"],"infos":["x"],"data":{"resultType":"vector","result":[{"metric":{"__name__":"jobs"},"value":[1.5,"9"]}],"stats":{}}}"#;
        assert_eq!(parse(body), Ok(9.0));
    }

    #[test]
    fn long_server_text_is_cut() {
        let long = "x".repeat(10_000);
        let body = format!(r#"{{"status":"error","errorType":"internal","error":"{long}"}}"#);
        let TriggerError::BadResponse(message) = parse(&body).unwrap_err() else {
            panic!("expected BadResponse");
        };
        assert!(message.len() < 500, "{}", message.len());
        assert_eq!(quote("héllo"), "héllo");
        let multibyte = "é".repeat(400);
        assert!(quote(&multibyte).ends_with('…'));
    }
}
