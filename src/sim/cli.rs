//! `qscale simulate`: the imperative shell around the simulator (files, terminal, progress).

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::Path;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::{self, Dur, Rule};

use super::args::SimulateArgs;
use super::compare::{compare, default_service_rate, step_count, Comparison, Setup};
use super::driver::SimConfig;
use super::generate;
use super::report::{table, write_csv, Summary, TableFormat};
use super::svg::{self, ChartInput};
use super::sweep::Sweep;
use super::trace::{self, Trace, TraceKind};

/// Below this many steps in all, a run is over before a progress bar would be worth drawing.
const PROGRESS_MIN_STEPS: usize = 200_000;

const QSCALE: &str = "qscale";
const REFERENCE: &str = "keda+hpa";

/// Runs `qscale simulate`.
pub fn run_cli(args: SimulateArgs) -> anyhow::Result<()> {
    if let Some(dir) = &args.generate_traces {
        for path in generate::write_all(dir)? {
            eprintln!("wrote {}", path.display());
        }
        return Ok(());
    }
    let (Some(rules_path), Some(trace_path)) = (&args.rules, &args.trace) else {
        anyhow::bail!("--rules and --trace are required");
    };
    let rule = select_rule(rules_path, args.rule.as_deref())?;
    let trace = trace::load(trace_path)?;
    let (workers, output) = (&args.workers, &args.output);
    let service_rate = workers
        .service_rate
        .unwrap_or_else(|| default_service_rate(&rule));
    anyhow::ensure!(
        service_rate.is_finite() && service_rate > 0.0,
        "--service-rate must be above zero"
    );
    let setup = Setup {
        rule,
        sim: SimConfig {
            step_ms: workers.step.as_millis(),
            service_rate,
            startup_delay_ms: workers.startup_delay.as_millis(),
            initial_replicas: workers.initial_replicas,
        },
        reference: args.reference.params()?,
        tail_ms: workers.tail.as_millis(),
    };
    let steps = step_count(&trace, &setup)?;
    let runs = 1 + output.sweep.as_ref().map_or(0, |s| s.values.len());
    let bar = progress_bar(2 * steps * runs);

    let mut offset = 0;
    let mut tick = |done: usize| {
        if let Some(bar) = &bar {
            bar.set_position((offset + done) as u64);
        }
    };
    let base = compare(&trace, &setup, &mut tick)?;
    offset += 2 * steps;

    let mut sweep_rows = Vec::new();
    if let Some(sweep) = &output.sweep {
        for value in &sweep.values {
            let mut variant = setup.clone();
            sweep.apply(value, &mut variant)?;
            let mut tick = |done: usize| {
                if let Some(bar) = &bar {
                    bar.set_position((offset + done) as u64);
                }
            };
            let result = compare(&trace, &variant, &mut tick)?;
            offset += 2 * steps;
            sweep_rows.push((value.text.clone(), result));
        }
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }

    let mut report = describe(rules_path, trace_path, &trace, &setup, output.format);
    let mut rows = vec![
        (QSCALE.to_string(), &base.qscale_summary),
        (REFERENCE.to_string(), &base.reference_summary),
    ];
    if let Some(sweep) = &output.sweep {
        rows.extend(sweep_rows_of(sweep, &sweep_rows));
    }
    report.push_str(&table(
        "model",
        &rows,
        Some((REFERENCE, &base.reference_summary)),
        output.format,
    ));
    print_stdout(&report)?;
    print_notes(&base);

    if let Some(path) = &output.csv {
        write_series_csv(path, &base)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &output.svg {
        let title = format!(
            "rule {} on {}",
            setup.rule.name,
            trace_path.file_name().map_or_else(
                || trace_path.display().to_string(),
                |n| n.to_string_lossy().into()
            )
        );
        write_svg(path, title, &setup, &base)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Prints the report; a closed pipe (`| head`) is the reader's choice, not an error.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write the report")
        }
        _ => Ok(()),
    }
}

fn select_rule(path: &Path, name: Option<&str>) -> anyhow::Result<Rule> {
    let file = config::load_file(path)?;
    let names = || {
        file.rules
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match name {
        Some(name) => file
            .rules
            .iter()
            .find(|r| r.name == name)
            .map(|r| Rule::clone(r))
            .with_context(|| format!("{}: no rule {name:?}; rules: {}", path.display(), names())),
        None if file.rules.len() == 1 => Ok(Rule::clone(&file.rules[0])),
        None => anyhow::bail!(
            "{} has {} rules; choose one with --rule ({})",
            path.display(),
            file.rules.len(),
            names()
        ),
    }
}

fn progress_bar(total_steps: usize) -> Option<ProgressBar> {
    if total_steps < PROGRESS_MIN_STEPS {
        return None;
    }
    let bar = ProgressBar::new(total_steps as u64);
    if let Ok(style) = ProgressStyle::with_template("simulating [{bar:40}] {percent:>3}% {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    Some(bar)
}

/// The setup in two lines, so a printed table says what it is a table of.
fn describe(
    rules: &Path,
    trace_path: &Path,
    trace: &Trace,
    setup: &Setup,
    format: TableFormat,
) -> String {
    let rule = &setup.rule;
    let r = &setup.reference;
    let kind = match trace.kind {
        TraceKind::Arrivals => "arrivals",
        TraceKind::Values => "trigger values",
    };
    let lines = [
        format!(
            "rule {} ({}), trace {} ({kind}, {} + {} tail, {} steps)",
            rule.name,
            rules.display(),
            trace_path.display(),
            human(trace.duration_ms()),
            human(setup.tail_ms),
            human(setup.sim.step_ms),
        ),
        format!(
            "workers: {:.3} msg/s per replica, ready {} after asked for, {} at start",
            setup.sim.service_rate,
            human(setup.sim.startup_delay_ms),
            setup.sim.initial_replicas
        ),
        format!(
            "qscale: poll {}, cooldown {}, initial cooldown {}, tolerance {}, replicas {}..{}",
            rule.poll_interval,
            rule.cooldown,
            rule.initial_cooldown(),
            rule.tolerance,
            rule.min_replicas,
            rule.max_replicas
        ),
        format!(
            "keda+hpa: KEDA polling {}, cooldownPeriod {}; HPA sync {} (+{}), tolerance {}, up \
             max({} pods, {} %) per {}, down {} % per {} after a {} window",
            human(r.polling_interval_ms),
            human(r.cooldown_period_ms),
            human(r.sync_period_ms),
            human(r.sync_offset_ms),
            r.tolerance,
            r.scale_up_pods,
            r.scale_up_percent,
            human(r.scale_up_period_ms),
            r.scale_down_percent,
            human(r.scale_down_period_ms),
            human(r.scale_down_window_ms)
        ),
    ];
    match format {
        TableFormat::Text => lines.iter().map(|l| format!("{l}\n")).collect::<String>() + "\n",
        TableFormat::Markdown => {
            lines.iter().map(|l| format!("{l}  \n")).collect::<String>() + "\n"
        }
    }
}

/// A duration the way rules files write it (`5m`, `1h 30m`).
fn human(ms: u64) -> String {
    Dur(std::time::Duration::from_millis(ms)).to_string()
}

/// One row per swept value, after the rows of the settings as given: qscale's, and the
/// reference model's too when the setting changes it.
fn sweep_rows_of<'a>(
    sweep: &Sweep,
    results: &'a [(String, Comparison)],
) -> Vec<(String, &'a Summary)> {
    let key = sweep.key_name;
    let mut rows = Vec::new();
    for (value, result) in results {
        if !sweep.key.reference_only() {
            rows.push((format!("{QSCALE} {key}={value}"), &result.qscale_summary));
        }
        if sweep.key.affects_reference() {
            rows.push((
                format!("{REFERENCE} {key}={value}"),
                &result.reference_summary,
            ));
        }
    }
    rows
}

fn print_notes(base: &Comparison) {
    for (name, summary) in [
        (QSCALE, &base.qscale_summary),
        (REFERENCE, &base.reference_summary),
    ] {
        if summary.unfinished > 0 {
            eprintln!(
                "note: {name} left {} messages queued at the end; their age counts up to then",
                summary.unfinished
            );
        }
    }
}

fn write_series_csv(path: &Path, base: &Comparison) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = BufWriter::new(file);
    let load: Vec<f64> = if base.queue_model {
        let step_s = base.qscale.step_ms as f64 / 1000.0;
        base.load
            .iter()
            .map(|rate| (rate * step_s).round())
            .collect()
    } else {
        base.load.clone()
    };
    write_csv(
        &mut out,
        &load,
        &[(QSCALE, &base.qscale), ("keda_hpa", &base.reference)],
    )
    .and_then(|()| out.flush())
    .with_context(|| format!("cannot write {}", path.display()))
}

fn write_svg(path: &Path, title: String, setup: &Setup, base: &Comparison) -> anyhow::Result<()> {
    let runs = [(QSCALE, &base.qscale), (REFERENCE, &base.reference)];
    let text = svg::render(&ChartInput {
        title,
        step_ms: setup.sim.step_ms,
        load: &base.load,
        queue_model: base.queue_model,
        runs: &runs,
    })?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
