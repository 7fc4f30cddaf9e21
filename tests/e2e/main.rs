mod fake_kube_selftest;
mod operations;
mod sqs_scaling;
#[path = "../support/mod.rs"]
mod support;
