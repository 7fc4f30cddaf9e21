//! A bound on the agent's concurrent requests to the API server, watches and lease renewals
//! aside.
//!
//! kube's HTTP client opens a new connection for every request that finds no idle one, and
//! keeps every connection it opened in its pool for 90 s. Without a bound, one queue that
//! rescales 200 rules against a slow API server opens 200 connections (and then posts 200
//! Events), which the API server sees as a burst and the agent holds as open descriptors for
//! minutes. client-go bounds the same burst with its QPS/burst limiter; a concurrency bound does
//! it without adding latency when the server is fast.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Semaphore;

/// Requests in flight at once, per agent: client-go's default burst is 10.
pub const MAX_CONCURRENT_REQUESTS: usize = 8;

/// Cheap to clone; every clone shares the same permits.
#[derive(Clone, Debug)]
pub struct RequestLimit {
    permits: Arc<Semaphore>,
}

impl Default for RequestLimit {
    fn default() -> Self {
        RequestLimit::new(MAX_CONCURRENT_REQUESTS)
    }
}

impl RequestLimit {
    pub fn new(max_in_flight: usize) -> Self {
        RequestLimit {
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
        }
    }

    /// Runs `call` once a permit is free. The wait is not part of the call's own timeout: the
    /// caller wraps `call`, not this.
    pub async fn run<F: Future>(&self, call: F) -> F::Output {
        // The semaphore is never closed, so the permit always comes; were it closed, running
        // unbounded beats not running.
        let _permit = self.permits.acquire().await.ok();
        call.await
    }

    /// Permits free now (for tests and metrics).
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_bound_in_flight() {
        let limit = RequestLimit::new(3);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let calls = (0..20).map(|_| {
            let (limit, in_flight, peak) = (limit.clone(), in_flight.clone(), peak.clone());
            async move {
                limit
                    .run(async {
                        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
            }
        });
        futures::future::join_all(calls).await;
        assert_eq!(peak.load(Ordering::SeqCst), 3);
        assert_eq!(limit.available(), 3, "every permit comes back");
    }
}
