//! One readable trigger, whatever its source, and the factory that builds them with shared
//! clients (one AWS context, one HTTP client per TLS setting).

use std::sync::Arc;

use super::aws::AwsContext;
use super::sqs::SqsPoller;
use super::TriggerError;
use crate::config::{Trigger, TriggerSource};

/// A trigger ready to be read.
#[derive(Clone)]
pub enum TriggerPoller {
    Sqs(Arc<SqsPoller>),
    /// A trigger that could not be built; every read reports why, so the rule holds (or falls
    /// back) instead of the agent failing.
    Broken(TriggerError),
}

impl TriggerPoller {
    pub async fn read(&self) -> Result<f64, TriggerError> {
        match self {
            TriggerPoller::Sqs(poller) => poller.read().await,
            TriggerPoller::Broken(error) => Err(error.clone()),
        }
    }
}

/// Builds pollers, sharing clients between triggers.
#[derive(Clone, Default)]
pub struct PollerFactory {
    aws: AwsContext,
}

impl PollerFactory {
    pub fn new() -> Self {
        Self::default()
    }

    pub async fn build(&self, trigger: &Trigger) -> TriggerPoller {
        match &trigger.source {
            TriggerSource::Sqs(spec) => {
                TriggerPoller::Sqs(Arc::new(SqsPoller::new(spec, &self.aws).await))
            }
            TriggerSource::Prometheus(_) => TriggerPoller::Broken(TriggerError::Config(
                "the prometheus trigger is not available in this build".into(),
            )),
        }
    }
}
