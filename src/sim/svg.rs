//! The chart: load, depth, age of the oldest message and replicas over time, one line per
//! model, in stacked panels that share the time axis.

use plotters::prelude::*;

use super::driver::Run;

/// Most points drawn per line. Long traces are cut into this many buckets and each bucket
/// draws its maximum, so that a short spike stays visible and the SVG stays small.
const MAX_POINTS: usize = 1500;
const WIDTH: u32 = 1200;
const PANEL_HEIGHT: u32 = 260;

/// Line colours, one per run in order (qscale first, then the reference model).
const MODEL_COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];
const LOAD_COLOUR: RGBColor = RGBColor(110, 110, 110);

/// What to draw.
pub struct ChartInput<'a> {
    pub title: String,
    pub step_ms: u64,
    /// Arrivals per second (arrival trace) or the trigger value (value trace), per step.
    pub load: &'a [f64],
    /// With a queue model there are depth and age panels; a value trace has neither.
    pub queue_model: bool,
    pub runs: &'a [(&'a str, &'a Run)],
}

type Extract = fn(&Run, usize) -> f64;

/// One line of a panel.
struct Line<'a> {
    name: &'a str,
    colour: RGBColor,
    points: Vec<(f64, f64)>,
}

struct Panel {
    caption: &'static str,
    y_desc: &'static str,
    extract: Extract,
}

/// Renders the chart as SVG text.
pub fn render(input: &ChartInput<'_>) -> anyhow::Result<String> {
    let mut panels = vec![];
    if input.queue_model {
        panels.push(Panel {
            caption: "queue depth (visible + in flight): what the trigger reads",
            y_desc: "messages",
            extract: |run, k| (run.series.visible[k] + run.series.in_flight[k]) as f64,
        });
        panels.push(Panel {
            caption: "age of the oldest message",
            y_desc: "seconds",
            extract: |run, k| run.series.oldest_age_ms[k] as f64 / 1000.0,
        });
    }
    panels.push(Panel {
        caption: "replicas (asked for; ready ones are a startup delay behind)",
        y_desc: "replicas",
        extract: |run, k| f64::from(run.series.replicas[k]),
    });

    let height = PANEL_HEIGHT * (panels.len() as u32 + 1) + 40;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let root = root
            .titled(&input.title, ("sans-serif", 26))
            .map_err(plot_error)?;
        let areas = root.split_evenly((panels.len() + 1, 1));
        let steps = input.load.len();
        let x_max = (steps as f64 * input.step_ms as f64 / 60_000.0).max(1.0 / 60.0);
        let minutes = |k: usize| k as f64 * input.step_ms as f64 / 60_000.0;

        let (load_caption, load_desc) = if input.queue_model {
            ("arrivals", "messages / second")
        } else {
            ("trigger value (from the trace)", "value")
        };
        let load_points = bucket_max(steps, |k| input.load[k], minutes);
        draw_panel(
            &areas[0],
            load_caption,
            load_desc,
            x_max,
            &[Line {
                name: "trace",
                colour: LOAD_COLOUR,
                points: load_points,
            }],
        )?;
        for (panel, area) in panels.iter().zip(&areas[1..]) {
            let lines: Vec<Line<'_>> = input
                .runs
                .iter()
                .enumerate()
                .map(|(i, (name, run))| {
                    let points = bucket_max(steps, |k| (panel.extract)(run, k), minutes);
                    Line {
                        name,
                        colour: MODEL_COLOURS[i % MODEL_COLOURS.len()],
                        points,
                    }
                })
                .collect();
            draw_panel(area, panel.caption, panel.y_desc, x_max, &lines)?;
        }
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    y_desc: &str,
    x_max: f64,
    lines: &[Line<'_>],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let y_max = lines
        .iter()
        .flat_map(|line| line.points.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max);
    let y_max = if y_max > 0.0 { y_max * 1.08 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 19))
        .margin(8)
        .margin_right(24)
        .x_label_area_size(34)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(plot_error)?;
    let whole = |v: &f64| format!("{v:.0}");
    let fine = |v: &f64| format!("{v:.1}");
    let y_format: &dyn Fn(&f64) -> String = if y_max >= 10.0 { &whole } else { &fine };
    chart
        .configure_mesh()
        .x_desc("minutes")
        .y_desc(y_desc)
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 15))
        .x_label_formatter(&whole)
        .y_label_formatter(y_format)
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(plot_error)?;
    // Drawn last to first so that the first line (qscale) lies on top where the two agree;
    // the lines under it are wider, so they still show.
    for (i, line) in lines.iter().enumerate().rev() {
        let colour = line.colour;
        let width = if i == 0 { 2 } else { 4 };
        chart
            .draw_series(LineSeries::new(
                line.points.iter().copied(),
                colour.stroke_width(width),
            ))
            .map_err(plot_error)?
            .label(line.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(width))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 15))
        .border_style(BLACK.mix(0.4))
        .background_style(WHITE.mix(0.85))
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

/// At most [`MAX_POINTS`] points: each bucket of steps draws its largest value at its start.
fn bucket_max(
    steps: usize,
    value: impl Fn(usize) -> f64,
    x: impl Fn(usize) -> f64,
) -> Vec<(f64, f64)> {
    let bucket = steps.div_ceil(MAX_POINTS).max(1);
    (0..steps)
        .step_by(bucket)
        .map(|start| {
            let end = (start + bucket).min(steps);
            let max = (start..end).map(&value).fold(f64::MIN, f64::max);
            (x(start), max)
        })
        .collect()
}

fn plot_error<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the chart: {e}")
}
