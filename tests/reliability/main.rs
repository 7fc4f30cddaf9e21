//! Reliability: qscale under failure, bad input, secrets, least privilege and a soak.
//! RELIABILITY.md lists every fault, the behaviour expected and the test here that proves it.

mod agent_faults;
mod api_server;
mod bad_input;
mod harness;
mod least_privilege;
mod prometheus;
mod secrets;
mod soak;
mod sqs;
#[path = "../support/mod.rs"]
mod support;
