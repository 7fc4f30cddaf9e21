//! A fault-injecting proxy in front of moto, for the SQS failures moto cannot produce:
//! throttling, access denied, slow answers, a dead endpoint. With no fault set it forwards
//! every request unchanged (like [`super::sqs_proxy`]) and counts operations by their
//! `X-Amz-Target` header.
//!
//! Errors are answered the way SQS (AWS JSON 1.0, query-compatible) and moto answer them: HTTP
//! 400 with a `{"__type": ..., "message": ...}` body, and optionally the `x-amzn-query-error:
//! CODE;Sender` header, which the SDK prefers over `__type` when it is there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::fault_http::{HttpRequest, RawServer, Reply};

/// What the proxy does with the next requests.
#[derive(Clone, Debug, PartialEq)]
pub enum SqsFault {
    /// Forward to moto.
    None,
    /// `400 {"__type": "com.amazonaws.sqs#ThrottlingException"}` (no query-error header).
    Throttling,
    /// `400` with `x-amzn-query-error: RequestThrottled;Sender`.
    RequestThrottled,
    /// `400 AccessDeniedException` with `x-amzn-query-error: AccessDenied;Sender`.
    AccessDenied,
    /// Any error: (status, `__type`, query-error code if any, message).
    Error {
        status: u16,
        error_type: String,
        query_error: Option<String>,
        message: String,
    },
    /// Forward to moto, but answer only after this long.
    Slow(Duration),
    /// Close each connection without an answer.
    Reset,
}

struct State {
    upstream: String,
    fault: SqsFault,
    counts: HashMap<String, usize>,
    faulted: usize,
    requests: Vec<HttpRequest>,
}

pub struct SqsFaults {
    server: RawServer,
    state: Arc<Mutex<State>>,
}

impl SqsFaults {
    pub async fn start(upstream: String) -> SqsFaults {
        let state = Arc::new(Mutex::new(State {
            upstream,
            fault: SqsFault::None,
            counts: HashMap::new(),
            faulted: 0,
            requests: Vec::new(),
        }));
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("HTTP client");
        let shared = state.clone();
        let server = RawServer::start(Arc::new(move |request| {
            let state = shared.clone();
            let client = client.clone();
            Box::pin(async move { answer(&state, &client, request).await })
        }))
        .await;
        SqsFaults { server, state }
    }

    /// The `endpoint` for a trigger.
    pub fn endpoint(&self) -> String {
        self.server.url()
    }

    pub fn set(&self, fault: SqsFault) {
        self.state.lock().expect("state").fault = fault;
    }

    /// Refuse connections (no listener) until called with `false`.
    pub async fn set_down(&self, down: bool) {
        self.server.set_down(down).await;
    }

    /// Requests of one operation so far (faulted or not), e.g. `GetQueueAttributes`.
    pub fn count(&self, operation: &str) -> usize {
        let state = self.state.lock().expect("state");
        state.counts.get(operation).copied().unwrap_or(0)
    }

    /// Requests answered with a fault so far.
    pub fn faulted(&self) -> usize {
        self.state.lock().expect("state").faulted
    }

    /// Every request received, as sent by the client.
    pub fn requests(&self) -> Vec<HttpRequest> {
        self.state.lock().expect("state").requests.clone()
    }
}

fn error_reply(status: u16, error_type: &str, query_error: Option<&str>, message: &str) -> Reply {
    let body = serde_json::json!({ "__type": error_type, "message": message }).to_string();
    let reply = Reply::Respond {
        status,
        headers: vec![("content-type".into(), "application/x-amz-json-1.0".into())],
        body: body.into_bytes(),
    }
    .with_header("x-amzn-requestid", "fault-injected");
    match query_error {
        Some(code) => reply.with_header("x-amzn-query-error", &format!("{code};Sender")),
        None => reply,
    }
}

async fn answer(state: &Mutex<State>, client: &reqwest::Client, request: HttpRequest) -> Reply {
    let (fault, upstream) = {
        let mut state = state.lock().expect("state");
        if let Some(target) = request.header("x-amz-target") {
            let operation = target.rsplit('.').next().unwrap_or(target).to_string();
            *state.counts.entry(operation).or_default() += 1;
        }
        state.requests.push(request.clone());
        if !matches!(state.fault, SqsFault::None | SqsFault::Slow(_)) {
            state.faulted += 1;
        }
        (state.fault.clone(), state.upstream.clone())
    };
    match fault {
        SqsFault::None => forward(client, &upstream, request).await,
        SqsFault::Slow(delay) => {
            tokio::time::sleep(delay).await;
            forward(client, &upstream, request).await
        }
        SqsFault::Reset => Reply::Drop,
        SqsFault::Throttling => error_reply(
            400,
            "com.amazonaws.sqs#ThrottlingException",
            None,
            "Rate exceeded",
        ),
        SqsFault::RequestThrottled => error_reply(
            400,
            "com.amazonaws.sqs#RequestThrottled",
            Some("RequestThrottled"),
            "Request is throttled.",
        ),
        SqsFault::AccessDenied => error_reply(
            400,
            "com.amazon.coral.service#AccessDeniedException",
            Some("AccessDenied"),
            "User: arn:aws:sts::123456789012:assumed-role/qscale/pod is not authorized to \
             perform: sqs:getqueueattributes on resource: arn:aws:sqs:us-east-1:123456789012:q \
             because no identity-based policy allows the sqs:getqueueattributes action",
        ),
        SqsFault::Error {
            status,
            error_type,
            query_error,
            message,
        } => error_reply(status, &error_type, query_error.as_deref(), &message),
    }
}

async fn forward(client: &reqwest::Client, upstream: &str, request: HttpRequest) -> Reply {
    let Ok(method) = reqwest::Method::from_bytes(request.method.as_bytes()) else {
        return Reply::json(400, "{}");
    };
    let mut outgoing = client.request(method, format!("{upstream}{}", request.target));
    for (name, value) in &request.headers {
        if !matches!(
            name.as_str(),
            "host" | "content-length" | "connection" | "transfer-encoding"
        ) {
            outgoing = outgoing.header(name, value);
        }
    }
    match outgoing.body(request.body).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let headers: Vec<(String, String)> = response
                .headers()
                .iter()
                .filter_map(|(n, v)| Some((n.to_string(), v.to_str().ok()?.to_string())))
                .collect();
            let body = response
                .bytes()
                .await
                .map(|b| b.to_vec())
                .unwrap_or_default();
            Reply::Respond {
                status,
                headers,
                body,
            }
        }
        // moto itself is down: look down too.
        Err(_) => Reply::Drop,
    }
}
