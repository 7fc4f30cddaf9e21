//! The clock is an adapter like any other: the agent reads it once per tick and passes `now`
//! down, so the policy stays a pure function of its inputs.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::policy::Timestamp;

pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// Wall-clock time, in milliseconds since the Unix epoch (persisted memory stays meaningful
/// across restarts and pods).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Timestamp::from_millis(millis)
    }
}
