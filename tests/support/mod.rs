//! Harnesses shared by the integration tests: real servers on 127.0.0.1 (moto), the fake
//! Kubernetes API server, and the real qscale binary.
#![allow(dead_code)]

pub mod agent;
pub mod cluster;
pub mod fake_kube;
pub mod fake_prometheus;
pub mod fault_http;
pub mod moto;
pub mod prometheus;
pub mod rbac;
pub mod sqs_faults;
pub mod sqs_proxy;

use std::time::{Duration, Instant};

/// Polls `check` every 100 ms until it holds or `limit` passes; returns how long it took.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if check() {
        Some(start.elapsed())
    } else {
        None
    }
}

/// Checks that `check` holds the whole time for `span`.
pub async fn always(span: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < span {
        if !check() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}
