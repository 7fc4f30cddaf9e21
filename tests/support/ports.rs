//! Ports for the servers tests start, included by `moto.rs` and `prometheus.rs`.
//!
//! Ports come from below the kernel's ephemeral range, never from `bind(0)`: a port the kernel
//! hands out as ephemeral can be taken by any outgoing connection (a client of moto, of the
//! fake API server) between the probe and the server's own bind, which made a test fail with
//! "Address already in use" under load. Below that range only listeners take ports. Each file
//! that includes this one has its own counter, so each gets its own lane (every second port),
//! and two copies can never hand out the same port.

use std::sync::atomic::{AtomicU32, Ordering};

const LANES: u32 = 2;
const LOW: u32 = 20_000;

/// A port in `lane` (0 or 1) on 127.0.0.1 that was free a moment ago.
pub fn free_port(lane: u32) -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let high = ephemeral_low().clamp(LOW + 1_000, 65_535);
    let slots = (high - LOW) / LANES;
    // Test binaries run one after another, but a start that differs per process keeps two of
    // them (or a rerun beside a stale server) apart anyway.
    let start = std::process::id().wrapping_mul(7_919) % slots;
    for _ in 0..slots {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = LOW + ((start + n) % slots) * LANES + lane % LANES;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {LOW}..{high}")
}

/// The first port of the kernel's ephemeral range (`ip_local_port_range`), 32768 if unknown.
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(32_768)
}
