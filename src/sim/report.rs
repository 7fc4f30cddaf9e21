//! What a run amounts to: the summary figures, the table they are printed in, and the CSV of
//! the time series.

use std::fmt::Write as _;
use std::io::{self, Write};

use super::driver::Run;

/// The yardstick of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub replica_seconds: f64,
    pub peak_replicas: u32,
    /// Message age percentiles; `None` without a queue model (a value trace).
    pub age: Option<AgeStats>,
    pub peak_depth: Option<u64>,
    pub scale_events: usize,
    pub drain: Drain,
    pub unfinished: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgeStats {
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

/// Time from the end of the trace's last burst until no message is left waiting (the visible
/// queue is empty; in-flight messages are being worked on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    After(u64),
    /// Still messages waiting at the end of the run.
    NotDrained,
    /// No queue model, or a trace without load.
    NotApplicable,
}

/// Summarizes `run`. `last_burst_end_ms` comes from the trace, so both models are measured
/// from the same moment.
pub fn summarize(run: &Run, queue_model: bool, last_burst_end_ms: Option<u64>) -> Summary {
    let s = &run.series;
    let step_s = run.step_ms as f64 / 1000.0;
    let replica_seconds = s.replicas.iter().map(|&r| f64::from(r)).sum::<f64>() * step_s;
    let peak_replicas = s.replicas.iter().copied().max().unwrap_or(0);
    let age = run
        .ages
        .percentile(0.5)
        .zip(run.ages.percentile(0.99))
        .zip(run.ages.max())
        .map(|((p50_ms, p99_ms), max_ms)| AgeStats {
            p50_ms,
            p99_ms,
            max_ms,
        })
        .filter(|_| queue_model);
    let peak_depth = queue_model.then(|| {
        s.visible
            .iter()
            .zip(&s.in_flight)
            .map(|(v, f)| v + f)
            .max()
            .unwrap_or(0)
    });
    let drain = match last_burst_end_ms.filter(|_| queue_model) {
        None => Drain::NotApplicable,
        Some(from_ms) => {
            let first = usize::try_from(from_ms.div_ceil(run.step_ms)).unwrap_or(usize::MAX);
            s.visible
                .iter()
                .enumerate()
                .skip(first)
                .find(|(_, &visible)| visible == 0)
                .map_or(Drain::NotDrained, |(k, _)| {
                    Drain::After((k as u64 * run.step_ms).saturating_sub(from_ms))
                })
        }
    };
    Summary {
        replica_seconds,
        peak_replicas,
        age,
        peak_depth,
        scale_events: run.scale_events,
        drain,
        unfinished: run.unfinished,
    }
}

/// How tables are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TableFormat {
    /// Aligned columns for a terminal.
    Text,
    /// A Markdown table, as pasted into SIMULATIONS.md.
    Markdown,
}

const COLUMNS: [&str; 8] = [
    "replica·s",
    "peak replicas",
    "age p50",
    "age p99",
    "age max",
    "peak depth",
    "scale events",
    "drain",
];

/// A table with one row per (label, summary); `label_header` names the first column. With a
/// `baseline` (its name and summary), a second column gives each row's replica-seconds
/// relative to it: the cost side of the comparison at a glance.
pub fn table(
    label_header: &str,
    rows: &[(String, &Summary)],
    baseline: Option<(&str, &Summary)>,
    format: TableFormat,
) -> String {
    let mut header: Vec<String> = std::iter::once(label_header.to_string())
        .chain(COLUMNS.iter().map(|c| c.to_string()))
        .collect();
    if let Some((name, _)) = baseline {
        header.insert(2, format!("vs {name}"));
    }
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|(label, s)| {
            let mut row: Vec<String> = std::iter::once(label.clone()).chain(cells(s)).collect();
            if let Some((_, base)) = baseline {
                row.insert(2, relative(s.replica_seconds, base.replica_seconds));
            }
            row
        })
        .collect();
    match format {
        TableFormat::Markdown => {
            let mut out = String::new();
            let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
            out.push_str(&line(&header));
            let rule: Vec<String> = header
                .iter()
                .enumerate()
                .map(|(i, _)| if i == 0 { "---" } else { "---:" }.to_string())
                .collect();
            out.push_str(&line(&rule));
            for row in &body {
                out.push_str(&line(row));
            }
            out
        }
        TableFormat::Text => {
            let widths: Vec<usize> = (0..header.len())
                .map(|i| {
                    std::iter::once(&header)
                        .chain(&body)
                        .map(|r| r[i].chars().count())
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let mut out = String::new();
            for row in std::iter::once(&header).chain(&body) {
                let mut line = String::new();
                for (i, cell) in row.iter().enumerate() {
                    let pad = widths[i] - cell.chars().count();
                    if i == 0 {
                        let _ = write!(line, "{cell}{}", " ".repeat(pad));
                    } else {
                        let _ = write!(line, "  {}{cell}", " ".repeat(pad));
                    }
                }
                out.push_str(line.trim_end());
                out.push('\n');
            }
            out
        }
    }
}

/// `+24 %`, `-33 %`; `-` for the baseline itself (or a baseline of nothing).
fn relative(value: f64, base: f64) -> String {
    if base <= 0.0 || value == base {
        return "-".into();
    }
    format!("{:+.0} %", (value / base - 1.0) * 100.0)
}

fn cells(s: &Summary) -> Vec<String> {
    let age = |pick: fn(&AgeStats) -> u64| s.age.as_ref().map_or("-".into(), |a| duration(pick(a)));
    vec![
        format!("{:.0}", s.replica_seconds),
        s.peak_replicas.to_string(),
        age(|a| a.p50_ms),
        age(|a| a.p99_ms),
        age(|a| a.max_ms),
        s.peak_depth.map_or("-".into(), |d| d.to_string()),
        s.scale_events.to_string(),
        match s.drain {
            Drain::After(ms) => duration(ms),
            Drain::NotDrained => "not drained".into(),
            Drain::NotApplicable => "-".into(),
        },
    ]
}

/// `42s`, `3m05s`, `1h02m`: short enough for a table, exact to the second below an hour.
pub fn duration(ms: u64) -> String {
    let secs = (ms + 500) / 1000;
    if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    }
}

/// Writes the time series of several runs side by side, one row per step. `load` is the
/// trace per step (arrivals for an arrival trace, the value for a value trace); `runs` are
/// `(column prefix, run)`.
pub fn write_csv(out: &mut dyn Write, load: &[f64], runs: &[(&str, &Run)]) -> io::Result<()> {
    let step_ms = runs.first().map_or(1000, |(_, r)| r.step_ms);
    let mut header = String::from("time_s,load");
    for (name, _) in runs {
        for column in [
            "trigger_value",
            "visible",
            "in_flight",
            "oldest_age_s",
            "replicas",
            "ready",
        ] {
            let _ = write!(header, ",{name}_{column}");
        }
    }
    writeln!(out, "{header}")?;
    for (k, load) in load.iter().enumerate() {
        let mut line = format!("{},{}", seconds(k as u64 * step_ms), load);
        for (_, run) in runs {
            let s = &run.series;
            let _ = write!(
                line,
                ",{},{},{},{},{},{}",
                s.value[k],
                s.visible[k],
                s.in_flight[k],
                seconds(s.oldest_age_ms[k]),
                s.replicas[k],
                s.ready[k]
            );
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// Milliseconds as seconds, without a trailing `.0` for whole seconds.
fn seconds(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        (ms / 1000).to_string()
    } else {
        format!("{:.3}", ms as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::driver::Series;
    use crate::sim::queue::AgeHistogram;

    fn run(visible: Vec<u64>, replicas: Vec<u32>) -> Run {
        let steps = visible.len();
        let mut ages = AgeHistogram::default();
        ages.add(2000, 3);
        Run {
            step_ms: 1000,
            series: Series {
                value: vec![0.0; steps],
                in_flight: vec![1; steps],
                oldest_age_ms: vec![0; steps],
                ready: replicas.clone(),
                visible,
                replicas,
            },
            ages,
            arrived: 3,
            consumed: 3,
            unfinished: 0,
            scale_events: 2,
        }
    }

    #[test]
    fn drain_counts_from_the_burst_end_to_the_first_empty_queue() {
        let r = run(vec![5, 9, 7, 0, 3, 0], vec![0, 2, 2, 2, 1, 0]);
        let s = summarize(&r, true, Some(1500));
        // Steps start at 0, 1, 2, ... s; the first step from 1.5 s on with nothing visible is
        // the one at 3 s.
        assert_eq!(s.drain, Drain::After(1500));
        assert_eq!(s.replica_seconds, 7.0);
        assert_eq!(s.peak_depth, Some(10));
        assert_eq!(s.peak_replicas, 2);
        assert_eq!(summarize(&r, true, Some(6000)).drain, Drain::NotDrained);
        let values = summarize(&r, false, Some(1500));
        assert_eq!(
            (values.drain, values.age, values.peak_depth),
            (Drain::NotApplicable, None, None)
        );
    }

    #[test]
    fn durations_and_ratios_read_well_in_a_table() {
        assert_eq!(duration(42_400), "42s");
        assert_eq!(duration(185_000), "3m05s");
        assert_eq!(duration(3_725_000), "1h02m");
        assert_eq!(relative(124.0, 100.0), "+24 %");
        assert_eq!(relative(67.0, 100.0), "-33 %");
        assert_eq!(relative(100.0, 100.0), "-");
    }

    #[test]
    fn markdown_tables_have_a_baseline_column() {
        let a = summarize(&run(vec![0], vec![2]), true, None);
        let b = summarize(&run(vec![0], vec![1]), true, None);
        let text = table(
            "model",
            &[("a".into(), &a), ("b".into(), &b)],
            Some(("b", &b)),
            TableFormat::Markdown,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("| model | replica·s | vs b |"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("| a | 2 | +100 % | 2 | 2s |"),
            "{text}"
        );
        assert!(lines[3].starts_with("| b | 1 | - |"), "{text}");
    }
}
