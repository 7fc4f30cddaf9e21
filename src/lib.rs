//! qscale: scale Kubernetes workloads from queue depth and metrics, without an HPA.
//!
//! Data flows one way: [`config`] → agent → triggers → [`policy`] → target. The policy is a pure
//! function so that the agent, `qscale simulate` and the tests all run the same decision.

pub mod agent;
pub mod config;
pub mod policy;
pub mod sim;
pub mod target;
pub mod telemetry;
pub mod triggers;
