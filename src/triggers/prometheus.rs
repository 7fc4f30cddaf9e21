//! Prometheus trigger: being written.
