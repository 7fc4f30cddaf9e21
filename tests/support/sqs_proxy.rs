//! A counting HTTP proxy in front of moto: forwards every request unchanged and counts SQS
//! operations by their `X-Amz-Target` header (AWS JSON 1.0), so a test can see how many
//! `GetQueueAttributes` calls qscale made.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    client: reqwest::Client,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

pub struct SqsProxy {
    pub port: u16,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

impl SqsProxy {
    pub async fn start(upstream: String) -> SqsProxy {
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let state = ProxyState {
            upstream,
            client: reqwest::Client::new(),
            counts: counts.clone(),
        };
        let app = axum::Router::new().fallback(forward).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        SqsProxy { port, counts }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Calls of one operation so far, e.g. `GetQueueAttributes`.
    pub fn count(&self, operation: &str) -> usize {
        self.counts
            .lock()
            .expect("counts")
            .get(operation)
            .copied()
            .unwrap_or(0)
    }
}

async fn forward(
    State(state): State<ProxyState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        let operation = target.rsplit('.').next().unwrap_or(target).to_string();
        *state
            .counts
            .lock()
            .expect("counts")
            .entry(operation)
            .or_default() += 1;
    }
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut request = state
        .client
        .request(method, format!("{}{path}", state.upstream));
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    match request.body(body).send().await {
        Ok(response) => {
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await.unwrap_or_default();
            let mut out = (status, body).into_response();
            for (name, value) in &headers {
                if name != "content-length" && name != "transfer-encoding" {
                    out.headers_mut().insert(name, value.clone());
                }
            }
            out
        }
        Err(error) => (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    }
}
