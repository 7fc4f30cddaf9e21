//! Shared polling: triggers that read the same source (same queue and credentials, or the same
//! Prometheus query and auth) share one call per interval, the shortest interval among them.
//! Concurrent readers wait for the one call in flight instead of making their own.

use std::future::Future;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use super::TriggerError;

/// A reading younger than the shortest interval minus this margin is reused, so each rule's
/// own tick, which comes a full interval after its last one, still gets a fresh reading.
const MARGIN: Duration = Duration::from_millis(100);

/// One source's latest reading, shared by every trigger that reads it.
pub struct SharedReading<T: Clone> {
    /// Shortest poll interval of the rules using this source.
    interval: std::sync::Mutex<Duration>,
    slot: Mutex<Option<(Instant, Result<T, TriggerError>)>>,
}

impl<T: Clone> SharedReading<T> {
    pub fn new(interval: Duration) -> Self {
        SharedReading {
            interval: std::sync::Mutex::new(interval),
            slot: Mutex::new(None),
        }
    }

    /// Registers one more user polling every `interval`.
    pub fn add_user(&self, interval: Duration) {
        if let Ok(mut shortest) = self.interval.lock() {
            *shortest = (*shortest).min(interval);
        }
    }

    fn freshness(&self) -> Duration {
        let shortest = self.interval.lock().map(|d| *d).unwrap_or(Duration::ZERO);
        shortest.saturating_sub(MARGIN)
    }

    /// The cached reading if fresh, else the result of `fetch` (which is then cached, errors
    /// included: a failing source is not hammered by every rule that uses it).
    pub async fn read<F, Fut>(&self, fetch: F) -> Result<T, TriggerError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, TriggerError>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some((at, reading)) = slot.as_ref() {
            if at.elapsed() < self.freshness() {
                return reading.clone();
            }
        }
        let reading = fetch().await;
        *slot = Some((Instant::now(), reading.clone()));
        reading
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_fetch_per_interval_however_many_readers() {
        let shared = Arc::new(SharedReading::<f64>::new(Duration::from_secs(10)));
        shared.add_user(Duration::from_secs(5));
        let calls = Arc::new(AtomicUsize::new(0));
        for _round in 0..3 {
            let readers = (0..20).map(|_| {
                let shared = shared.clone();
                let calls = calls.clone();
                tokio::spawn(async move {
                    shared
                        .read(|| async {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok(42.0)
                        })
                        .await
                })
            });
            for reader in readers.collect::<Vec<_>>() {
                assert_eq!(reader.await.unwrap(), Ok(42.0));
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3, "one call per 5 s interval");
    }

    #[tokio::test(start_paused = true)]
    async fn errors_are_shared_too() {
        let shared = SharedReading::<f64>::new(Duration::from_secs(1));
        let first = shared
            .read(|| async { Err(TriggerError::Network("down".into())) })
            .await;
        let second = shared.read(|| async { Ok(1.0) }).await;
        assert_eq!(first, second);
    }
}
