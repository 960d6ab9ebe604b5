//! Draws line charts with `plotters`, each as a PNG and an SVG of the same size. Text is drawn
//! with DejaVu Sans compiled into the binary, so a machine without system fonts renders the
//! same PNG. The legend sits beside the plot, never over the lines.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

/// Size of every chart, in pixels (PNG) and user units (SVG).
pub const WIDTH: u32 = 760;
pub const HEIGHT: u32 = 420;
const LEGEND_WIDTH: u32 = 225;
const FONT: &str = "sans-serif";
/// Fewer points than this are drawn as they are: an EMA over a handful of evaluations misleads.
pub const MIN_POINTS_TO_SMOOTH: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("cannot load the embedded font for plots")]
    Font,
    #[error("cannot draw `{path}`: {message}")]
    Draw { path: PathBuf, message: String },
}

#[derive(Debug, Clone)]
pub struct Chart {
    /// File name without extension.
    pub stem: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub lines: Vec<Line>,
}

#[derive(Debug, Clone)]
pub struct Line {
    pub label: String,
    /// Index into the palette: the same run has the same colour in every chart.
    pub color: usize,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
    pub markers: bool,
    /// Draw an EMA over the points, the raw series faint behind it.
    pub smooth: bool,
    /// Listed in the legend (a second line of the same run, told apart by its style, is not).
    pub in_legend: bool,
}

/// A drawn chart: its title and the paths of its files relative to the report directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub title: String,
    pub png: String,
    pub svg: String,
}

/// Tableau 10: distinct, colour-blind-friendlier than the primaries.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn color(index: usize) -> RGBColor {
    PALETTE[index % PALETTE.len()]
}

fn register_fonts() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
            && plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold()).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(PlotError::Font)
    }
}

/// Exponential moving average with TensorBoard's debiasing, so that the first points are not
/// pulled towards zero. `weight` in [0, 1): 0 keeps the series as it is.
pub fn ema(points: &[(f64, f64)], weight: f64) -> Vec<(f64, f64)> {
    let mut last = 0.0;
    let mut decay = 1.0;
    points
        .iter()
        .map(|&(x, y)| {
            last = last * weight + (1.0 - weight) * y;
            decay *= weight;
            (x, last / (1.0 - decay))
        })
        .collect()
}

/// Writes `dir/STEM.png` and `dir/STEM.svg`; `prefix` is `dir` as the report refers to it.
pub fn render(chart: &Chart, dir: &Path, prefix: &str, smoothing: f64) -> Result<Rendered, PlotError> {
    register_fonts()?;
    let png = dir.join(format!("{}.png", chart.stem));
    let svg = dir.join(format!("{}.svg", chart.stem));
    let failed = |path: &Path| {
        let path = path.to_path_buf();
        move |message: String| PlotError::Draw { path, message }
    };
    draw(BitMapBackend::new(&png, (WIDTH, HEIGHT)).into_drawing_area(), chart, smoothing).map_err(failed(&png))?;
    draw(SVGBackend::new(&svg, (WIDTH, HEIGHT)).into_drawing_area(), chart, smoothing).map_err(failed(&svg))?;
    Ok(Rendered { title: chart.title.clone(), png: format!("{prefix}/{}.png", chart.stem), svg: format!("{prefix}/{}.svg", chart.stem) })
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, chart: &Chart, smoothing: f64) -> Result<(), String> {
    let error = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(error)?;
    let (plot_area, legend_area) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
    let (x_range, y_range) = ranges(chart);
    let mut context = ChartBuilder::on(&plot_area)
        .caption(&chart.title, (FONT, 20).into_font().style(FontStyle::Bold))
        .margin(10)
        .x_label_area_size(42)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range, y_range)
        .map_err(error)?;
    context
        .configure_mesh()
        .x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .x_label_formatter(&|v| axis_label(*v))
        .y_label_formatter(&|v| axis_label(*v))
        .max_light_lines(1)
        .light_line_style(RGBColor(245, 245, 245))
        .bold_line_style(RGBColor(222, 222, 222))
        .draw()
        .map_err(error)?;

    for line in &chart.lines {
        let color = color(line.color);
        let smooth = line.smooth && line.points.len() >= MIN_POINTS_TO_SMOOTH && smoothing > 0.0;
        if smooth {
            context.draw_series(LineSeries::new(line.points.iter().copied(), color.mix(0.22).stroke_width(1))).map_err(error)?;
            context.draw_series(LineSeries::new(ema(&line.points, smoothing), color.stroke_width(2))).map_err(error)?;
        } else if line.dashed {
            context.draw_series(DashedLineSeries::new(line.points.iter().copied(), 7, 5, color.stroke_width(2))).map_err(error)?;
        } else if line.markers {
            // A trajectory (a frontier) may turn back on itself; drawn as one path, the bitmap
            // backend's miter join at such a turn shoots a spike far past the points. Segment by
            // segment there is no join.
            let segments = line.points.windows(2).map(|pair| PathElement::new(pair.to_vec(), color.stroke_width(2)));
            context.draw_series(segments).map_err(error)?;
        } else {
            context.draw_series(LineSeries::new(line.points.iter().copied(), color.stroke_width(2))).map_err(error)?;
        }
        if line.markers {
            context.draw_series(line.points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(error)?;
        }
    }
    draw_legend(&legend_area, chart).map_err(error)?;
    root.present().map_err(error)
}

/// One entry per line: a sample of its stroke and its label.
fn draw_legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, chart: &Chart) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let top = 44;
    let step = 22;
    let max_entries = ((HEIGHT as i32 - top) / step) as usize;
    let entries: Vec<&Line> = chart.lines.iter().filter(|line| line.in_legend).collect();
    for (index, line) in entries.iter().take(max_entries).enumerate() {
        let y = top + index as i32 * step;
        let color = color(line.color);
        if line.dashed {
            area.draw(&PathElement::new(vec![(6, y), (13, y)], color.stroke_width(2)))?;
            area.draw(&PathElement::new(vec![(18, y), (25, y)], color.stroke_width(2)))?;
        } else {
            area.draw(&PathElement::new(vec![(6, y), (25, y)], color.stroke_width(2)))?;
        }
        if line.markers {
            area.draw(&Circle::new((16, y), 3, color.filled()))?;
        }
        area.draw(&Text::new(shorten(&line.label, 24), (32, y - 7), (FONT, 13).into_font()))?;
    }
    if entries.len() > max_entries {
        let y = top + max_entries as i32 * step;
        area.draw(&Text::new(format!("… {} more", entries.len() - max_entries), (32, y - 7), (FONT, 13).into_font()))?;
    }
    Ok(())
}

fn shorten(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let mut short: String = text.chars().take(max_chars - 1).collect();
    short.push('…');
    short
}

/// Axis ranges covering every point with a 5 % margin; a flat or empty series gets a unit range.
fn ranges(chart: &Chart) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let points = chart.lines.iter().flat_map(|line| line.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x_min, mut x_max, mut y_min, mut y_max) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points {
        (x_min, x_max, y_min, y_max) = (x_min.min(x), x_max.max(x), y_min.min(y), y_max.max(y));
    }
    let widen = |low: f64, high: f64| {
        if !low.is_finite() {
            return 0.0..1.0;
        }
        if high - low < 1e-12 {
            let pad = (low.abs() * 0.1).max(0.5);
            return low - pad..high + pad;
        }
        let pad = (high - low) * 0.05;
        low - pad..high + pad
    };
    (widen(x_min, x_max), widen(y_min, y_max))
}

fn axis_label(value: f64) -> String {
    // A tick at zero computed as −8.7e-19 is zero.
    if value.abs() < 1e-12 {
        return "0".into();
    }
    if value.abs() >= 1e5 || (value != 0.0 && value.abs() < 1e-3) {
        return format!("{value:.1e}");
    }
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".into()
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_is_debiased_and_weight_zero_keeps_the_series() {
        let points = [(0.0, 0.0), (1.0, 1.0), (2.0, 1.0)];
        assert_eq!(ema(&points, 0.0), points);
        let smoothed = ema(&points, 0.5);
        assert_eq!(smoothed[0], (0.0, 0.0));
        // last = 0.5, decay = 0.25 → 0.5 / 0.75
        assert!((smoothed[1].1 - 2.0 / 3.0).abs() < 1e-12);
        // last = 0.75, decay = 0.125 → 0.75 / 0.875
        assert!((smoothed[2].1 - 6.0 / 7.0).abs() < 1e-12);
        // a constant series stays constant from the first point
        assert!(ema(&[(0.0, 3.0), (1.0, 3.0)], 0.9).iter().all(|(_, y)| (y - 3.0).abs() < 1e-12));
    }

    #[test]
    fn axis_labels_are_short() {
        assert_eq!(axis_label(200.0), "200");
        assert_eq!(axis_label(0.125), "0.125");
        assert_eq!(axis_label(1.5), "1.5");
        assert_eq!(axis_label(-0.0), "0");
        assert_eq!(axis_label(-8.7e-19), "0");
        assert_eq!(axis_label(2e-5), "2.0e-5");
    }
}
