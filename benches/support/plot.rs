//! SVG line charts for the benchmark reports (plotters, SVG backend): one function, linear or
//! logarithmic axes, one line with point markers per series, a legend.

use std::ops::Range;
use std::path::Path;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

/// One line.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Index into the palette; by default the series' position.
    pub colour: Option<usize>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
            colour: None,
        }
    }

    /// The same colour in every chart for the same measurement.
    pub fn colour(mut self, index: usize) -> Self {
        self.colour = Some(index);
        self
    }
}

/// One axis.
pub struct Axis {
    pub label: String,
    pub log: bool,
}

impl Axis {
    pub fn linear(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            log: false,
        }
    }

    pub fn log(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            log: true,
        }
    }
}

const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(127, 127, 127),
    RGBColor(23, 190, 207),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
];

/// Draws `series` into an SVG file at `path` (1120×480, the legend on the right).
pub fn line_chart(path: &Path, title: &str, x: &Axis, y: &Axis, series: &[Series]) {
    let pts = || series.iter().flat_map(|s| s.points.iter().copied());
    let xr = range(pts().map(|p| p.0), x.log);
    let yr = range(pts().map(|p| p.1), y.log);
    let result = match (x.log, y.log) {
        (false, false) => draw(path, title, x, y, xr, yr, series),
        (true, false) => draw(path, title, x, y, xr.log_scale(), yr, series),
        (false, true) => draw(path, title, x, y, xr, yr.log_scale(), series),
        (true, true) => draw(path, title, x, y, xr.log_scale(), yr.log_scale(), series),
    };
    result.unwrap_or_else(|e| panic!("plot {}: {e}", path.display()));
    eprintln!("wrote {}", path.display());
}

/// The data range with some headroom (multiplicative on log axes; linear axes start at 0).
fn range(values: impl Iterator<Item = f64>, log: bool) -> Range<f64> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite() && (!log || *v > 0.0)) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return if log { 1.0..10.0 } else { 0.0..1.0 };
    }
    if log {
        (lo / 2.0)..(hi * 2.0)
    } else {
        let lo = lo.min(0.0);
        lo..(hi + (hi - lo).abs() * 0.1).max(lo + 1e-9)
    }
}

fn draw<X, Y>(
    path: &Path,
    title: &str,
    x: &Axis,
    y: &Axis,
    xr: X,
    yr: Y,
    series: &[Series],
) -> Result<(), Box<dyn std::error::Error>>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let root = SVGBackend::new(path, (1120, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    // The legend goes in its own column on the right, clear of the data.
    let (area, legend) = root.split_horizontally(720);
    let mut chart = ChartBuilder::on(&area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d(xr, yr)?;
    chart
        .configure_mesh()
        .x_desc(x.label.as_str())
        .y_desc(y.label.as_str())
        .x_label_formatter(&|v| short(*v))
        .y_label_formatter(&|v| short(*v))
        .x_labels(8)
        .y_labels(8)
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[s.colour.unwrap_or(i) % COLORS.len()];
        let style = ShapeStyle::from(&color).stroke_width(2);
        chart.draw_series(LineSeries::new(s.points.iter().copied(), style))?;
        if s.points.len() <= 40 {
            chart.draw_series(
                s.points
                    .iter()
                    .map(|p| Circle::new(*p, 3, ShapeStyle::from(&color).filled())),
            )?;
        }
        let y = 48 + i as i32 * 24;
        legend.draw(&PathElement::new(vec![(8, y), (32, y)], style))?;
        legend.draw(&Text::new(
            s.name.clone(),
            (40, y - 7),
            ("sans-serif", 13).into_font(),
        ))?;
    }
    root.present()?;
    Ok(())
}

/// Compact axis labels: `1.5k`, `2M`, `0.25`.
fn short(v: f64) -> String {
    let a = v.abs();
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s
        }
    };
    if a >= 1e6 {
        format!("{}M", trim(format!("{:.1}", v / 1e6)))
    } else if a >= 1e3 {
        format!("{}k", trim(format!("{:.1}", v / 1e3)))
    } else if a >= 1.0 || a == 0.0 {
        trim(format!("{v:.1}"))
    } else {
        trim(format!("{v:.3}"))
    }
}
