//! A fast in-process SQS stand-in: answers `GetQueueAttributes` (AWS JSON 1.0, the protocol the
//! SDK speaks to SQS) from a table of depths the harness sets, and counts calls. Queue URLs are
//! `http://127.0.0.1:PORT/123456789012/q-N`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

const JSON_1_0: &str = "application/x-amz-json-1.0";

#[derive(Clone, Copy, Default)]
struct Queue {
    depth: u64,
    calls: u64,
    /// Set by `set_depth`; the next call to this queue records when it was served.
    changed: bool,
    /// When the first call after the last `set_depth` was served.
    served_after_change: Option<Instant>,
}

struct Table {
    queues: Vec<Queue>,
    calls: u64,
    rejected: u64,
}

#[derive(Clone)]
pub struct SqsStub {
    pub port: u16,
    table: Arc<Mutex<Table>>,
}

fn lock(table: &Mutex<Table>) -> MutexGuard<'_, Table> {
    table
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SqsStub {
    /// Serves `queues` queues, each `depth` messages deep.
    pub async fn start(queues: usize, depth: u64) -> anyhow::Result<SqsStub> {
        let queue = Queue {
            depth,
            ..Queue::default()
        };
        let table = Arc::new(Mutex::new(Table {
            queues: vec![queue; queues],
            calls: 0,
            rejected: 0,
        }));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(table.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(SqsStub { port, table })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn queue_url(&self, queue: usize) -> String {
        format!("http://127.0.0.1:{}/123456789012/q-{queue}", self.port)
    }

    pub fn set_depth(&self, queue: usize, depth: u64) {
        if let Some(q) = lock(&self.table).queues.get_mut(queue) {
            q.depth = depth;
            q.changed = true;
            q.served_after_change = None;
        }
    }

    /// `GetQueueAttributes` calls answered so far.
    pub fn calls(&self) -> u64 {
        lock(&self.table).calls
    }

    /// Requests that were not a well-formed `GetQueueAttributes` for a known queue.
    pub fn rejected(&self) -> u64 {
        lock(&self.table).rejected
    }

    /// How many queues have been read at least once.
    pub fn queues_polled(&self) -> usize {
        lock(&self.table)
            .queues
            .iter()
            .filter(|q| q.calls > 0)
            .count()
    }

    pub fn served_after_change(&self, queue: usize) -> Option<Instant> {
        lock(&self.table)
            .queues
            .get(queue)
            .and_then(|q| q.served_after_change)
    }
}

#[derive(serde::Deserialize)]
struct Request {
    #[serde(rename = "QueueUrl")]
    queue_url: String,
}

fn queue_index(url: &str) -> Option<usize> {
    url.rsplit_once("/q-")?.1.parse().ok()
}

fn error(code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "__type": code, "message": message }).to_string();
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, JSON_1_0)],
        body,
    )
        .into_response()
}

async fn handle(
    State(table): State<Arc<Mutex<Table>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let index = serde_json::from_slice::<Request>(&body)
        .ok()
        .and_then(|r| queue_index(&r.queue_url));
    let depth = {
        let mut table = lock(&table);
        let known = index.filter(|&i| i < table.queues.len());
        match (target, known) {
            ("AmazonSQS.GetQueueAttributes", Some(i)) => {
                table.calls += 1;
                let queue = &mut table.queues[i];
                queue.calls += 1;
                if queue.changed {
                    queue.changed = false;
                    queue.served_after_change = Some(Instant::now());
                }
                Some(queue.depth)
            }
            _ => {
                table.rejected += 1;
                None
            }
        }
    };
    let Some(depth) = depth else {
        return if target == "AmazonSQS.GetQueueAttributes" {
            error(
                "com.amazonaws.sqs#QueueDoesNotExist",
                "The specified queue does not exist.",
            )
        } else {
            error("com.amazonaws.sqs#InvalidAction", "unsupported operation")
        };
    };
    let body = format!(
        "{{\"Attributes\":{{\"ApproximateNumberOfMessages\":\"{depth}\",\
         \"ApproximateNumberOfMessagesNotVisible\":\"0\",\
         \"ApproximateNumberOfMessagesDelayed\":\"0\"}}}}"
    );
    ([(header::CONTENT_TYPE, JSON_1_0)], body).into_response()
}
