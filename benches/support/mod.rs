//! Stand-ins and measurement helpers for the agent benchmark: the fake Kubernetes API server
//! shared with the end-to-end tests, a fast SQS stub, and /proc readers.

#[path = "../../tests/support/fake_kube.rs"]
pub mod fake_kube;
pub mod procfs;
pub mod sqs_stub;
