//! A tiny HTTP/1.1 server on 127.0.0.1 for fault injection, under the SQS fault proxy
//! ([`super::sqs_faults`]) and the fake Prometheus ([`super::fake_prometheus`]).
//!
//! Every connection carries one request and is closed after the answer (`Connection: close`), so
//! a fault can be any of: an answer (any status, headers, bytes), an answer after a delay, a
//! connection closed without an answer, or no listener at all ([`RawServer::set_down`]: the
//! port refuses connections until it is brought back, on the same port).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Longest request head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Longest request body accepted.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// One request as received.
#[derive(Clone, Debug)]
pub struct HttpRequest {
    pub method: String,
    /// Path and query, as sent: `/api/v1/query?query=...`.
    pub target: String,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The whole request as text (lossy), e.g. to look for a string anywhere in it.
    pub fn text(&self) -> String {
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {v}"))
            .collect();
        format!(
            "{} {}\n{}\n\n{}",
            self.method,
            self.target,
            headers.join("\n"),
            String::from_utf8_lossy(&self.body)
        )
    }
}

/// What to do with a request.
#[derive(Clone, Debug)]
pub enum Reply {
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Close the connection without a word (the client sees its connection reset or closed).
    Drop,
}

impl Reply {
    pub fn json(status: u16, body: impl Into<String>) -> Reply {
        Reply::Respond {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into().into_bytes(),
        }
    }

    pub fn with_header(self, name: &str, value: &str) -> Reply {
        match self {
            Reply::Respond {
                status,
                mut headers,
                body,
            } => {
                headers.push((name.to_string(), value.to_string()));
                Reply::Respond {
                    status,
                    headers,
                    body,
                }
            }
            Reply::Drop => Reply::Drop,
        }
    }
}

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
pub type Handler = Arc<dyn Fn(HttpRequest) -> BoxFuture<Reply> + Send + Sync>;

/// The server: accepts on one port of 127.0.0.1 until dropped.
pub struct RawServer {
    pub port: u16,
    handler: Handler,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

impl RawServer {
    pub async fn start(handler: Handler) -> RawServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local address").port();
        let server = RawServer {
            port,
            handler,
            acceptor: Mutex::new(None),
        };
        server.accept_on(listener);
        server
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn accept_on(&self, listener: TcpListener) {
        let handler = self.handler.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(stream, handler.clone()));
            }
        });
        *self.acceptor.lock().expect("acceptor") = Some(task);
    }

    /// Down: the port refuses new connections (requests already in flight are still answered).
    /// Up again: listening on the same port.
    pub async fn set_down(&self, down: bool) {
        let running = self.acceptor.lock().expect("acceptor").take();
        if down {
            if let Some(task) = running {
                task.abort();
                let _ = task.await;
            }
            return;
        }
        if let Some(task) = running {
            // Already up.
            *self.acceptor.lock().expect("acceptor") = Some(task);
            return;
        }
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(listener) => break listener,
                Err(error) if tries < 50 => {
                    tries += 1;
                    eprintln!("rebinding 127.0.0.1:{}: {error}; retrying", self.port);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("cannot listen on 127.0.0.1:{} again: {error}", self.port),
            }
        };
        self.accept_on(listener);
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        if let Some(task) = self.acceptor.lock().ok().and_then(|mut a| a.take()) {
            task.abort();
        }
    }
}

async fn serve(mut stream: TcpStream, handler: Handler) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    match handler(request).await {
        Reply::Drop => {
            // Closed without an answer; a reset rather than an orderly end, like a dead peer.
            let _ = stream.set_zero_linger();
        }
        Reply::Respond {
            status,
            headers,
            body,
        } => {
            let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
            for (name, value) in &headers {
                let name = name.to_ascii_lowercase();
                if name != "content-length" && name != "connection" && name != "transfer-encoding" {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
            }
            head.push_str(&format!(
                "content-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            ));
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&body).await;
            let _ = stream.flush().await;
            let _ = stream.shutdown().await;
        }
    }
}

async fn read_request(stream: &mut TcpStream) -> Option<HttpRequest> {
    let mut buffer = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            break end;
        }
        if buffer.len() > MAX_HEAD {
            return None;
        }
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let target = request_line.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    if length > MAX_BODY {
        return None;
    }
    if headers
        .iter()
        .any(|(n, v)| n == "expect" && v.eq_ignore_ascii_case("100-continue"))
    {
        let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
    }
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = vec![0u8; length - body.len()];
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..read]);
    }
    body.truncate(length);
    Some(HttpRequest {
        method,
        target,
        headers,
        body,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
