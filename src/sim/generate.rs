//! The synthetic traces in `config/traces/`, written by
//! `qscale simulate --generate-traces config/traces`.
//!
//! They are sized for a rule with `target_per_replica = 50` and `max_replicas = 20` at the
//! default service rate (50 / 30 s ≈ 1.67 messages/second per replica, so at most about
//! 33 messages/second): enough load to need many replicas, never more than the pool can take
//! for long. The noise comes from SplitMix64 with fixed seeds, written out here rather than
//! taken from `rand`, whose `StdRng` may change algorithm between releases: the files must
//! come out byte for byte the same on every machine and toolchain.

use std::path::{Path, PathBuf};

/// Seed of the first trace; each trace gets its own stream so that changing one trace
/// leaves the others alone.
const SEED: u64 = 2024;

/// One generated trace, in the `time_s,arrival_rate` format.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticTrace {
    /// File stem: the trace is written to `<name>.csv`.
    pub name: &'static str,
    pub description: &'static str,
    /// `(seconds, messages per second)` rows.
    pub rows: Vec<(u64, f64)>,
}

/// SplitMix64 (Steele, Lea and Flood 2014): tiny, fast, and fixed forever.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[low, high)`.
    fn between(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.unit()
    }
}

/// All synthetic traces, in a fixed order.
pub fn synthetic_traces() -> Vec<SyntheticTrace> {
    vec![steady(), burst(), daily_wave(), spiky_noise()]
}

/// 2 h at about 10 messages/second (±5 % noise per 10 s row): about 6 replicas' worth.
fn steady() -> SyntheticTrace {
    let mut rng = SplitMix64(SEED);
    let rows = (0..720)
        .map(|i| (i * 10, 10.0 * rng.between(0.95, 1.05)))
        .collect();
    SyntheticTrace {
        name: "steady",
        description: "2 h of steady load, 10 msg/s +-5 % per 10 s row",
        rows,
    }
}

/// 90 min: 1 msg/s, a 3-minute burst of 60 msg/s at minute 10 (10,800 messages, more than
/// the pool can take as they come), 1 msg/s again until minute 60, then 30 idle minutes.
fn burst() -> SyntheticTrace {
    let rows = (0..540)
        .map(|i| {
            let t = i * 10;
            let rate = match t {
                600..780 => 60.0,
                0..3600 => 1.0,
                _ => 0.0,
            };
            (t, rate)
        })
        .collect();
    SyntheticTrace {
        name: "burst",
        description: "90 min: 1 msg/s, a burst of 60 msg/s for 3 min at minute 10, 1 msg/s \
                      until minute 60, then idle",
        rows,
    }
}

/// 24 h, one row per minute: a cosine day from 1 msg/s at 03:00 to 25 msg/s at 15:00, with
/// ±10 % noise per minute.
fn daily_wave() -> SyntheticTrace {
    let mut rng = SplitMix64(SEED + 1);
    let rows = (0..1440)
        .map(|minute| {
            let hours = minute as f64 / 60.0;
            let phase = 2.0 * std::f64::consts::PI * (hours - 3.0) / 24.0;
            let rate = 1.0 + 24.0 * (1.0 - phase.cos()) / 2.0;
            (minute * 60, rate * rng.between(0.9, 1.1))
        })
        .collect();
    SyntheticTrace {
        name: "daily_wave",
        description: "24 h, per minute: 1 msg/s at 03:00 rising to 25 msg/s at 15:00 and back, \
                      +-10 % noise",
        rows,
    }
}

/// 2 h in 5 s rows: a noisy 1.5–4.5 msg/s floor, and in 2 % of the rows a spike of
/// 20–60 msg/s starts and lasts 5–30 s.
fn spiky_noise() -> SyntheticTrace {
    let mut rng = SplitMix64(SEED + 2);
    let mut spike_rows_left = 0u64;
    let mut spike_rate = 0.0;
    let rows = (0..1440)
        .map(|i| {
            let floor = rng.between(1.5, 4.5);
            if spike_rows_left == 0 && rng.unit() < 0.02 {
                spike_rate = rng.between(20.0, 60.0);
                spike_rows_left = 1 + rng.next_u64() % 6;
            }
            let rate = if spike_rows_left > 0 {
                spike_rows_left -= 1;
                floor + spike_rate
            } else {
                floor
            };
            (i * 5, rate)
        })
        .collect();
    SyntheticTrace {
        name: "spiky_noise",
        description: "2 h in 5 s rows: 1.5-4.5 msg/s noise, and 20-60 msg/s spikes of 5-30 s \
                      starting in 2 % of the rows",
        rows,
    }
}

impl SyntheticTrace {
    /// The CSV text, with a comment that says where it came from.
    pub fn to_csv(&self) -> String {
        let mut out = format!(
            "# Synthetic trace \"{}\": {}.\n\
             # Written by `qscale simulate --generate-traces config/traces` (src/sim/generate.rs,\n\
             # fixed seeds): regenerate rather than edit.\n\
             time_s,arrival_rate\n",
            self.name, self.description
        );
        for (time, rate) in &self.rows {
            out.push_str(&format!("{time},{rate:.3}\n"));
        }
        out
    }
}

/// Writes every synthetic trace into `dir`.
pub fn write_all(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    use anyhow::Context as _;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    synthetic_traces()
        .iter()
        .map(|trace| {
            let path = dir.join(format!("{}.csv", trace.name));
            std::fs::write(&path, trace.to_csv())
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(path)
        })
        .collect()
}
