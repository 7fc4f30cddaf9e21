//! A real `moto_server` (PyPI `moto[server]`) on 127.0.0.1, standing in for SQS.
//!
//! The server runs under a small shell wrapper that kills it when this test process's end of
//! its stdin pipe closes, so a crashed or finished test binary never leaves moto behind.

// Each includer has its own copy, on purpose: its own lane of ports (see ports.rs).
#[allow(clippy::duplicate_mod)]
#[path = "ports.rs"]
mod ports;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::Client;

pub const ACCOUNT: &str = "123456789012";
pub const REGION: &str = "us-east-1";

pub struct Moto {
    pub port: u16,
    child: Option<Child>,
}

/// Where moto_server is: `QSCALE_TEST_MOTO`, the project's `.venv`, or `PATH`.
fn moto_binary() -> PathBuf {
    if let Ok(path) = std::env::var("QSCALE_TEST_MOTO") {
        return PathBuf::from(path);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("moto_server")
}

/// A free port for a server a test starts (see `ports.rs`; Prometheus' helpers use the other
/// lane).
pub fn free_port() -> u16 {
    ports::free_port(0)
}

impl Moto {
    pub fn start() -> Moto {
        Self::start_on(free_port())
    }

    /// Starts moto on `port` (again, after [`Moto::stop`], to simulate an outage that ends).
    pub fn start_on(port: u16) -> Moto {
        let binary = moto_binary();
        let script = format!(
            "'{}' -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; cat >/dev/null; kill $m 2>/dev/null; wait $m 2>/dev/null",
            binary.display()
        );
        let child = Command::new("bash")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn moto_server (run `bash .ci/run` once to install it into .venv)");
        let moto = Moto {
            port,
            child: Some(child),
        };
        moto.wait_ready();
        moto
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "moto_server did not listen on 127.0.0.1:{} within 30 s ({}); run `bash .ci/run` to install it",
            self.port,
            moto_binary().display()
        );
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server and waits until the port is closed.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(stdin) = child.stdin.as_mut() {
                let _ = stdin.flush();
            }
            drop(child.stdin.take());
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline
            && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// An SQS client for the test itself (sending and receiving messages).
    pub fn client(&self) -> Client {
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
            .endpoint_url(self.endpoint())
            .build();
        Client::from_conf(config)
    }

    pub async fn create_queue(&self, name: &str) -> String {
        let out = self
            .client()
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .expect("create queue");
        out.queue_url().expect("queue url").to_string()
    }

    /// Sends `count` messages, ten per `SendMessageBatch` call, so a poll rarely sees a
    /// half-sent batch.
    pub async fn send(&self, queue_url: &str, count: usize) {
        use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
        let client = self.client();
        let mut sent = 0;
        while sent < count {
            let batch = (count - sent).min(10);
            let entries = (sent..sent + batch)
                .map(|i| {
                    SendMessageBatchRequestEntry::builder()
                        .id(format!("m{i}"))
                        .message_body(format!("message {i}"))
                        .build()
                        .expect("batch entry")
                })
                .collect();
            client
                .send_message_batch()
                .queue_url(queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .expect("send message batch");
            sent += batch;
        }
    }

    /// Receives up to `count` messages without deleting them (they become in flight).
    pub async fn receive(&self, queue_url: &str, count: usize) -> Vec<String> {
        let client = self.client();
        let mut handles = Vec::new();
        while handles.len() < count {
            let want = (count - handles.len()).min(10) as i32;
            let out = client
                .receive_message()
                .queue_url(queue_url)
                .max_number_of_messages(want)
                .visibility_timeout(600)
                .send()
                .await
                .expect("receive");
            let batch = out.messages();
            if batch.is_empty() {
                break;
            }
            handles.extend(
                batch
                    .iter()
                    .filter_map(|m| m.receipt_handle().map(str::to_string)),
            );
        }
        handles
    }

    pub async fn delete(&self, queue_url: &str, receipt_handles: &[String]) {
        let client = self.client();
        for handle in receipt_handles {
            client
                .delete_message()
                .queue_url(queue_url)
                .receipt_handle(handle)
                .send()
                .await
                .expect("delete message");
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}
