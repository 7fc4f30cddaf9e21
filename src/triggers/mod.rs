//! Trigger adapters: thin clients that turn an SQS queue or a Prometheus query into one number.
//!
//! A trigger read either gives a value or a [`TriggerError`]; the agent turns an error into
//! `Sample::Failed`, never into zero.

pub mod aws;
pub(crate) mod error;
mod poller;
mod preflight;
pub mod prometheus;
mod secrets;
mod shared;
mod sigv4;
pub mod sqs;

pub use error::TriggerError;
pub use poller::{PollerFactory, TriggerPoller};
pub use preflight::preflight;
pub use shared::SharedReading;
