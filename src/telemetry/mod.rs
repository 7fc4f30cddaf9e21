//! What the agent tells the outside world: logs, metrics, health, and Kubernetes Events.

pub mod events;
pub mod logs;
pub mod metrics;
pub mod rule_series;
pub mod server;

pub use events::EventSink;
pub use metrics::Metrics;
pub use server::Readiness;
