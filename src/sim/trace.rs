//! Load traces: reading the CSV formats and turning a trace into per-step load.
//!
//! Three formats, told apart by the header (the first line that is not blank or a `#` comment):
//!
//! | header | meaning of a row `a,b` |
//! | --- | --- |
//! | `time_s,arrival_rate` | from `a` seconds until the next row, `b` messages/second arrive |
//! | `time_s,value` | from `a` seconds until the next row, every trigger reads `b` |
//! | `minute,count` | during minute `a`, `b` messages arrive, spread uniformly over the minute |
//!
//! `time` is accepted for `time_s`, `arrivals_per_s` for `arrival_rate`. Times are relative:
//! the first row is the start of the trace. The last row of a `time_s` trace lasts as long as
//! the gap before it; a missing minute of a `minute,count` trace has no arrivals.

use std::fmt;
use std::path::Path;

/// How many bad rows an error lists before it only counts the rest.
const MAX_LISTED_PROBLEMS: usize = 20;

/// What the second column of a trace means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceKind {
    /// Messages arriving into a queue; the simulator runs its queue model.
    Arrivals,
    /// The trigger value itself; no queue model.
    Values,
}

/// One interval of a trace with a constant rate (or value).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segment {
    pub start_ms: u64,
    pub end_ms: u64,
    /// Messages per second for [`TraceKind::Arrivals`], the trigger value for
    /// [`TraceKind::Values`].
    pub value: f64,
    /// Messages arriving in the whole segment. Kept apart from `value` so that a
    /// `minute,count` row brings exactly `count` messages, whatever the float rounding of
    /// `count / 60`.
    pub amount: f64,
}

/// A parsed trace: contiguous segments from time zero.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub kind: TraceKind,
    pub segments: Vec<Segment>,
}

/// A bad row, by line number (1-based, as editors count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowProblem {
    pub line: usize,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The cause is in the message rather than `source()`: callers print the chain, and
    /// it would say the same thing twice.
    #[error("{name}: cannot read the trace: {cause}")]
    Io { name: String, cause: std::io::Error },
    #[error("{name}: {}", ProblemList(.problems))]
    Invalid {
        name: String,
        problems: Vec<RowProblem>,
    },
}

struct ProblemList<'a>(&'a [RowProblem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let problems = self.0;
        if let [only] = problems {
            return write!(f, "line {}: {}", only.line, only.message);
        }
        write!(f, "{} problems", problems.len())?;
        for p in problems.iter().take(MAX_LISTED_PROBLEMS) {
            write!(f, "\n  line {}: {}", p.line, p.message)?;
        }
        if problems.len() > MAX_LISTED_PROBLEMS {
            write!(
                f,
                "\n  ... and {} more",
                problems.len() - MAX_LISTED_PROBLEMS
            )?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    TimeRate,
    TimeValue,
    MinuteCount,
}

const KNOWN_HEADERS: &str = "`time_s,arrival_rate`, `time_s,value` or `minute,count`";

impl Format {
    fn from_header(fields: &[&str]) -> Option<Format> {
        match fields {
            ["time_s" | "time", "arrival_rate" | "arrivals_per_s"] => Some(Format::TimeRate),
            ["time_s" | "time", "value"] => Some(Format::TimeValue),
            ["minute", "count"] => Some(Format::MinuteCount),
            _ => None,
        }
    }
}

/// Reads a trace file.
pub fn load(path: &Path) -> Result<Trace, TraceError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|cause| TraceError::Io {
        name: name.clone(),
        cause,
    })?;
    parse(&name, &text)
}

/// Parses trace text; every bad row is reported, not only the first.
pub fn parse(name: &str, text: &str) -> Result<Trace, TraceError> {
    let invalid = |problems| TraceError::Invalid {
        name: name.to_string(),
        problems,
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
    let Some((header_line, header)) = lines.next() else {
        return Err(invalid(vec![RowProblem {
            line: 1,
            message: format!("the trace is empty; it needs a header ({KNOWN_HEADERS}) and rows"),
        }]));
    };
    let header_lower = header.to_ascii_lowercase();
    let header_fields: Vec<&str> = header_lower.split(',').map(str::trim).collect();
    let Some(format) = Format::from_header(&header_fields) else {
        return Err(invalid(vec![RowProblem {
            line: header_line,
            message: format!("unknown header `{header}`; expected {KNOWN_HEADERS}"),
        }]));
    };

    let mut problems = Vec::new();
    let mut rows: Vec<(usize, f64, f64)> = Vec::new();
    for (line, text) in lines {
        match parse_row(format, text, rows.last().map(|r| (r.0, r.1))) {
            Ok((time, value)) => rows.push((line, time, value)),
            Err(message) => problems.push(RowProblem { line, message }),
        }
    }
    if problems.is_empty() && rows.is_empty() {
        problems.push(RowProblem {
            line: header_line,
            message: "no data rows after the header".into(),
        });
    }
    if problems.is_empty() && format != Format::MinuteCount && rows.len() < 2 {
        problems.push(RowProblem {
            line: rows.first().map_or(header_line, |r| r.0),
            message: "a `time_s` trace needs at least two rows: the last row lasts as long as \
                      the gap before it"
                .into(),
        });
    }
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    let points: Vec<(f64, f64)> = rows.iter().map(|&(_, t, v)| (t, v)).collect();
    Ok(build(format, &points))
}

/// One row: `(time in seconds, or minute; value)`. `previous` is the line and time of the
/// last good row, for the ordering check.
fn parse_row(
    format: Format,
    text: &str,
    previous: Option<(usize, f64)>,
) -> Result<(f64, f64), String> {
    let fields: Vec<&str> = text.split(',').map(str::trim).collect();
    let [time, value] = fields.as_slice() else {
        return Err(format!(
            "expected 2 comma-separated columns, found {}",
            fields.len()
        ));
    };
    let (time_name, value_name) = match format {
        Format::TimeRate => ("time_s", "arrival_rate"),
        Format::TimeValue => ("time_s", "value"),
        Format::MinuteCount => ("minute", "count"),
    };
    let time = parse_number(time_name, time)?;
    let value = parse_number(value_name, value)?;
    if format == Format::MinuteCount && time.fract() != 0.0 {
        return Err(format!("minute {time} is not a whole number"));
    }
    if let Some((prev_line, prev_time)) = previous {
        if time <= prev_time {
            return Err(format!(
                "{time_name} {time} is not after {prev_time} (line {prev_line}); rows must be \
                 in increasing time order"
            ));
        }
    }
    Ok((time, value))
}

fn parse_number(column: &str, text: &str) -> Result<f64, String> {
    let number: f64 = text
        .parse()
        .map_err(|_| format!("{column} {text:?} is not a number"))?;
    if !number.is_finite() || number < 0.0 {
        return Err(format!("{column} {text} must be a finite number >= 0"));
    }
    Ok(number)
}

fn build(format: Format, points: &[(f64, f64)]) -> Trace {
    let kind = match format {
        Format::TimeValue => TraceKind::Values,
        Format::TimeRate | Format::MinuteCount => TraceKind::Arrivals,
    };
    let mut segments = Vec::with_capacity(points.len());
    let seconds_per_unit = if format == Format::MinuteCount {
        60.0
    } else {
        1.0
    };
    let origin = points.first().map_or(0.0, |p| p.0) * seconds_per_unit;
    let to_ms = |secs: f64| ((secs - origin) * 1000.0).round() as u64;
    match format {
        Format::MinuteCount => {
            for &(minute, count) in points {
                let start_ms = to_ms(minute * 60.0);
                let end_ms = start_ms + 60_000;
                if let Some(last) = segments.last().map(|s: &Segment| s.end_ms) {
                    if last < start_ms {
                        segments.push(Segment {
                            start_ms: last,
                            end_ms: start_ms,
                            value: 0.0,
                            amount: 0.0,
                        });
                    }
                }
                segments.push(Segment {
                    start_ms,
                    end_ms,
                    value: count / 60.0,
                    amount: count,
                });
            }
        }
        Format::TimeRate | Format::TimeValue => {
            for (i, &(time, value)) in points.iter().enumerate() {
                let start_ms = to_ms(time);
                let end_ms = match points.get(i + 1) {
                    Some(next) => to_ms(next.0),
                    // parse() guarantees two rows, so there is a previous one.
                    None => start_ms + (start_ms - to_ms(points[i.saturating_sub(1)].0)),
                };
                let seconds = (end_ms - start_ms) as f64 / 1000.0;
                segments.push(Segment {
                    start_ms,
                    end_ms,
                    value,
                    amount: value * seconds,
                });
            }
            // Rounding to milliseconds can make two close rows share a start; drop the
            // empty segment rather than divide by zero later.
            segments.retain(|s| s.end_ms > s.start_ms);
        }
    }
    Trace { kind, segments }
}

impl Trace {
    /// End of the last segment.
    pub fn duration_ms(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.end_ms)
    }

    /// Messages arriving in each step, for `steps` steps of `step_ms` (zero after the end).
    ///
    /// Step `k` gets `floor(A((k+1)·step)) - floor(A(k·step))` where `A` is the cumulative
    /// arrival curve, linear within each segment. That spreads a segment's messages
    /// uniformly, is deterministic, and loses nothing: the steps add up to the trace's total.
    pub fn arrivals_per_step(&self, step_ms: u64, steps: usize) -> Vec<u64> {
        let mut out = Vec::with_capacity(steps);
        let mut cursor = CumulativeCursor::new(&self.segments);
        let mut previous = 0u64;
        for k in 0..steps {
            let boundary = (k as u64 + 1).saturating_mul(step_ms);
            let total = cursor.at(boundary);
            let floored = (total + 1e-9).floor() as u64;
            out.push(floored.saturating_sub(previous));
            previous = previous.max(floored);
        }
        out
    }

    /// The trace value at the start of each step (zero after the end).
    pub fn values_per_step(&self, step_ms: u64, steps: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(steps);
        let mut index = 0;
        for k in 0..steps {
            let at = (k as u64).saturating_mul(step_ms);
            while index < self.segments.len() && self.segments[index].end_ms <= at {
                index += 1;
            }
            out.push(self.segments.get(index).map_or(0.0, |s| s.value));
        }
        out
    }

    /// The moment the last burst ends: the end of the last segment whose rate is above twice
    /// the trace's mean, or, if none is, the end of the last segment with any load. `None` for
    /// a trace without load. Drain times are measured from here, the same for both models.
    pub fn last_burst_end_ms(&self) -> Option<u64> {
        let duration = self.duration_ms();
        if duration == 0 {
            return None;
        }
        let total: f64 = self
            .segments
            .iter()
            .map(|s| s.value * (s.end_ms - s.start_ms) as f64)
            .sum();
        let mean = total / duration as f64;
        let last_above = |threshold: f64| {
            self.segments
                .iter()
                .rev()
                .find(|s| s.value > threshold)
                .map(|s| s.end_ms)
        };
        last_above(2.0 * mean).or_else(|| last_above(0.0))
    }
}

/// Walks the cumulative arrival curve forward in time.
struct CumulativeCursor<'a> {
    segments: &'a [Segment],
    index: usize,
    /// Arrivals before the segment at `index`.
    before: f64,
}

impl<'a> CumulativeCursor<'a> {
    fn new(segments: &'a [Segment]) -> Self {
        CumulativeCursor {
            segments,
            index: 0,
            before: 0.0,
        }
    }

    /// Arrivals in `[0, at)`; `at` never decreases between calls.
    fn at(&mut self, at: u64) -> f64 {
        while let Some(segment) = self.segments.get(self.index) {
            if segment.end_ms > at {
                break;
            }
            self.before += segment.amount;
            self.index += 1;
        }
        match self.segments.get(self.index) {
            Some(segment) if at > segment.start_ms => {
                let elapsed = (at - segment.start_ms) as f64;
                let length = (segment.end_ms - segment.start_ms) as f64;
                self.before + segment.amount * elapsed / length
            }
            _ => self.before,
        }
    }
}
