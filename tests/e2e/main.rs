mod fake_kube_selftest;
mod operations;
mod prometheus_e2e;
mod scale_ha;
mod sqs_proxied;
mod sqs_scaling;
#[path = "../support/mod.rs"]
mod support;
