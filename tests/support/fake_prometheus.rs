//! A loopback server pretending to be Prometheus' `/api/v1/query`, for the answers a real
//! Prometheus gives only rarely: slow, `NaN`, empty, malformed JSON, HTTP 500, any body at all.
//!
//! Without an upstream it answers every query with a one-series vector holding the value set
//! with [`FakePrometheus::set_value`]. With an upstream (a real Prometheus, see
//! [`super::prometheus`]) it forwards the request unchanged, and if the upstream does not
//! answer it closes the connection, so a stopped Prometheus looks stopped.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::fault_http::{HttpRequest, RawServer, Reply};

/// How the next queries are answered.
#[derive(Clone, Debug, PartialEq)]
pub enum PromFault {
    /// The value (or the upstream's answer).
    None,
    /// The normal answer, after this long.
    Slow(Duration),
    /// `"NaN"` as the series' value.
    NaN,
    /// A vector with no series.
    Empty,
    /// A body that is not JSON.
    Malformed,
    /// This status with this body.
    Status(u16, String),
    /// This body with status 200.
    Body(String),
    /// Close the connection without an answer.
    Reset,
    /// This status with `template` as the body, `{authorization}` in it replaced by the
    /// request's `Authorization` header: a server that echoes credentials back.
    Echo(u16, String),
    /// A redirect to this location.
    Redirect(u16, String),
}

struct State {
    value: f64,
    upstream: Option<String>,
    fault: PromFault,
    requests: Vec<HttpRequest>,
}

pub struct FakePrometheus {
    server: RawServer,
    state: Arc<Mutex<State>>,
}

/// A successful instant-query answer holding one series with `value` (as Prometheus writes it).
pub fn vector_body(value: &str) -> String {
    format!(
        r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[{},"{value}"]}}]}}}}"#,
        now_seconds()
    )
}

fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl FakePrometheus {
    /// Answers every query with `value` until told otherwise.
    pub async fn start(value: f64) -> FakePrometheus {
        Self::start_with(value, None).await
    }

    /// Forwards every query to `upstream` (e.g. a real Prometheus' URL).
    pub async fn forwarding(upstream: &str) -> FakePrometheus {
        Self::start_with(0.0, Some(upstream.to_string())).await
    }

    async fn start_with(value: f64, upstream: Option<String>) -> FakePrometheus {
        let state = Arc::new(Mutex::new(State {
            value,
            upstream,
            fault: PromFault::None,
            requests: Vec::new(),
        }));
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("HTTP client");
        let shared = state.clone();
        let server = RawServer::start(Arc::new(move |request| {
            let state = shared.clone();
            let client = client.clone();
            Box::pin(async move { answer(&state, &client, request).await })
        }))
        .await;
        FakePrometheus { server, state }
    }

    /// The `server` value for a trigger.
    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn set_value(&self, value: f64) {
        self.state.lock().expect("state").value = value;
    }

    pub fn set_upstream(&self, upstream: Option<String>) {
        self.state.lock().expect("state").upstream = upstream;
    }

    pub fn set_fault(&self, fault: PromFault) {
        self.state.lock().expect("state").fault = fault;
    }

    /// Refuse connections (no listener) until called with `false`.
    pub async fn set_down(&self, down: bool) {
        self.server.set_down(down).await;
    }

    /// Every request received, as sent by the client.
    pub fn requests(&self) -> Vec<HttpRequest> {
        self.state.lock().expect("state").requests.clone()
    }
}

async fn answer(state: &Mutex<State>, client: &reqwest::Client, request: HttpRequest) -> Reply {
    let (fault, value, upstream) = {
        let mut state = state.lock().expect("state");
        state.requests.push(request.clone());
        (state.fault.clone(), state.value, state.upstream.clone())
    };
    let normal = || async {
        match &upstream {
            Some(upstream) => forward(client, upstream, &request).await,
            None => Reply::json(200, vector_body(&value.to_string())),
        }
    };
    match fault {
        PromFault::None => normal().await,
        PromFault::Slow(delay) => {
            tokio::time::sleep(delay).await;
            normal().await
        }
        PromFault::NaN => Reply::json(200, vector_body("NaN")),
        PromFault::Empty => Reply::json(
            200,
            r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
        ),
        PromFault::Malformed => Reply::json(
            200,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[17"#,
        ),
        PromFault::Status(status, body) => Reply::json(status, body),
        PromFault::Body(body) => Reply::json(200, body),
        PromFault::Reset => Reply::Drop,
        PromFault::Echo(status, template) => {
            let authorization = request.header("authorization").unwrap_or_default();
            Reply::json(status, template.replace("{authorization}", authorization))
        }
        PromFault::Redirect(status, location) => {
            Reply::json(status, "").with_header("location", &location)
        }
    }
}

async fn forward(client: &reqwest::Client, upstream: &str, request: &HttpRequest) -> Reply {
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
    match outgoing.body(request.body.clone()).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response
                .bytes()
                .await
                .map(|b| b.to_vec())
                .unwrap_or_default();
            Reply::Respond {
                status,
                headers: vec![("content-type".into(), "application/json".into())],
                body,
            }
        }
        // The upstream is down: look down too.
        Err(_) => Reply::Drop,
    }
}
