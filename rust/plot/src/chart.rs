//! Line charts: several named series over shared axes with "nice" ticks (1, 2, 5 x 10^k),
//! grid lines, axis titles and a legend. Non-finite points are skipped, a series with one
//! point is drawn as a dot, and a chart without data says so instead of failing.

use crate::raster::{text_size, Canvas, Color, Direction};

/// One line: a name for the legend and its (x, y) points in drawing order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

const WIDTH: usize = 900;
const HEIGHT: usize = 540;
const LEFT: i64 = 110;
const RIGHT: i64 = 30;
const TOP: i64 = 56;
const BOTTOM: i64 = 70;
/// Text sizes (line heights in pixels) and the width of data lines.
const TITLE_SIZE: f32 = 22.0;
const LABEL_SIZE: f32 = 17.0;
const TICK_SIZE: f32 = 15.0;
const LINE_WIDTH: f32 = 2.0;

impl LineChart {
    /// The chart as an image: the plot area is `WIDTH` wide plus room for the legend on the
    /// right, outside the data.
    pub fn render(&self) -> Canvas {
        let legend_w = self.legend_width();
        let width = WIDTH + legend_w as usize;
        let mut canvas = Canvas::new(width, HEIGHT, Color::WHITE);
        let (title_w, _) = text_size(&self.title, TITLE_SIZE);
        canvas.text((width as i64 - title_w as i64) / 2, 16, &self.title, TITLE_SIZE, Direction::Right, Color::BLACK);
        let (pw, ph) = (WIDTH as i64 - LEFT - RIGHT, HEIGHT as i64 - TOP - BOTTOM);
        let (xw, _) = text_size(&self.x_label, LABEL_SIZE);
        canvas.text(LEFT + (pw - xw as i64) / 2, HEIGHT as i64 - 30, &self.x_label, LABEL_SIZE, Direction::Right, Color::BLACK);
        // The y title sits just left of the widest tick label.
        let y_title = |canvas: &mut Canvas, widest_tick: i64| {
            let (yw, _) = text_size(&self.y_label, LABEL_SIZE);
            let x = (LEFT - 9 - widest_tick - 12 - LABEL_SIZE as i64).max(4);
            canvas.text(x, TOP + (ph - yw as i64) / 2, &self.y_label, LABEL_SIZE, Direction::Up, Color::BLACK);
        };

        let points = || self.series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
        let Some((x_lo, x_hi)) = range(points().map(|p| p.0)) else {
            canvas.stroke_rect(LEFT, TOP, pw, ph, Color::AXIS);
            y_title(&mut canvas, 0);
            let (nw, nh) = text_size("no data", LABEL_SIZE);
            canvas.text(LEFT + (pw - nw as i64) / 2, TOP + (ph - nh as i64) / 2, "no data", LABEL_SIZE, Direction::Right, Color::AXIS);
            return canvas;
        };
        let (y_lo, y_hi) = range(points().map(|p| p.1)).expect("x range implies y range");
        let pad = (y_hi - y_lo) * 0.05;
        let (y_lo, y_hi) = (y_lo - pad, y_hi + pad);
        // Data to pixel coordinates, unrounded (lines are anti-aliased); grid lines round.
        let to_px = |x: f64, y: f64| {
            let px = LEFT as f64 + (x - x_lo) / (x_hi - x_lo) * (pw - 1) as f64;
            let py = (TOP + ph - 1) as f64 - (y - y_lo) / (y_hi - y_lo) * (ph - 1) as f64;
            (px, py)
        };
        let round = |(px, py): (f64, f64)| (px.round() as i64, py.round() as i64);

        // Grid and tick labels.
        let y_ticks = ticks(y_lo, y_hi);
        let mut widest_tick = 0;
        for &t in &y_ticks.values {
            let (_, py) = round(to_px(x_lo, t));
            canvas.fill_rect(LEFT, py, pw, 1, Color::GRID);
            canvas.fill_rect(LEFT - 5, py, 5, 1, Color::AXIS);
            let label = format_tick(t, y_ticks.step);
            let (lw, lh) = text_size(&label, TICK_SIZE);
            widest_tick = widest_tick.max(lw as i64);
            canvas.text(LEFT - 9 - lw as i64, py - lh as i64 / 2, &label, TICK_SIZE, Direction::Right, Color::AXIS);
        }
        y_title(&mut canvas, widest_tick);
        let x_ticks = ticks(x_lo, x_hi);
        for &t in &x_ticks.values {
            let (px, _) = round(to_px(t, y_lo));
            canvas.fill_rect(px, TOP, 1, ph, Color::GRID);
            canvas.fill_rect(px, TOP + ph, 1, 5, Color::AXIS);
            let label = format_tick(t, x_ticks.step);
            let (lw, _) = text_size(&label, TICK_SIZE);
            canvas.text(px - lw as i64 / 2, TOP + ph + 8, &label, TICK_SIZE, Direction::Right, Color::AXIS);
        }
        canvas.stroke_rect(LEFT, TOP, pw, ph, Color::AXIS);

        for (i, series) in self.series.iter().enumerate() {
            let color = Color::series(i);
            let pts: Vec<(f64, f64)> = series.points.iter().filter(|(x, y)| x.is_finite() && y.is_finite()).map(|&(x, y)| to_px(x, y)).collect();
            if let [(x, y)] = pts[..] {
                let (x, y) = round((x, y));
                canvas.fill_rect(x - 3, y - 3, 7, 7, color);
            }
            canvas.polyline(&pts, LINE_WIDTH, color);
        }
        self.legend(&mut canvas, LEFT + pw + 16, TOP);
        canvas
    }

    fn named_series(&self) -> Vec<(usize, &Series)> {
        self.series.iter().enumerate().filter(|(_, s)| !s.name.is_empty()).collect()
    }

    /// Width the legend needs (0 without named series).
    fn legend_width(&self) -> i64 {
        let named = self.named_series();
        if named.is_empty() {
            return 0;
        }
        named.iter().map(|(_, s)| text_size(&s.name, TICK_SIZE).0).max().unwrap_or(0) as i64 + 60
    }

    /// Colour swatches and names to the right of the plot area, top-aligned with it.
    fn legend(&self, canvas: &mut Canvas, x: i64, y: i64) {
        let named = self.named_series();
        let line_h = 22;
        for (row, (i, series)) in named.iter().enumerate() {
            let ly = y + 6 + row as i64 * line_h;
            canvas.polyline(&[((x + 8) as f64, (ly + 8) as f64), ((x + 28) as f64, (ly + 8) as f64)], LINE_WIDTH + 1.0, Color::series(*i));
            canvas.text(x + 36, ly, &series.name, TICK_SIZE, Direction::Right, Color::BLACK);
        }
    }
}

/// Min and max of finite values, widened when they coincide; None when there are none.
fn range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return None;
    }
    if lo == hi {
        let half = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        return Some((lo - half, hi + half));
    }
    Some((lo, hi))
}

/// Tick positions inside [lo, hi] and their spacing.
#[derive(Debug, Clone, PartialEq)]
pub struct Ticks {
    pub values: Vec<f64>,
    pub step: f64,
}

/// Four to eight ticks at a 1/2/5 x 10^k spacing.
pub fn ticks(lo: f64, hi: f64) -> Ticks {
    let raw = (hi - lo) / 8.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|&s| s >= raw).unwrap_or(10.0 * magnitude);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    let values = (first..=last).map(|k| k as f64 * step).collect();
    Ticks { values, step }
}

/// A short label for tick `v` with spacing `step`: thousands as K/M/G, small numbers in
/// scientific notation, otherwise as many decimals as the spacing needs.
pub fn format_tick(v: f64, step: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    // Thousands only from 10K on: "1500" reads better than "1.5K".
    for (unit, threshold, suffix) in [(1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e3, 1e4, "K")] {
        if v.abs() >= threshold {
            let decimals = (-(step / unit).log10().floor()).max(0.0) as usize;
            return format!("{:.*}{suffix}", decimals, v / unit);
        }
    }
    if step < 1e-3 {
        let exponent = v.abs().log10().floor() as i32;
        let mantissa = v / 10f64.powi(exponent);
        let decimals = (-(step / 10f64.powi(exponent)).log10().floor()).clamp(0.0, 3.0) as usize;
        return format!("{:.*}E{exponent}", decimals, mantissa);
    }
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    format!("{:.*}", decimals, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_nice_and_inside_the_range() {
        let t = ticks(0.3, 9.7);
        assert_eq!(t.step, 2.0);
        assert_eq!(t.values, vec![2.0, 4.0, 6.0, 8.0]);
        let t = ticks(2.1, 2.6);
        assert_eq!(t.step, 0.1);
        assert!(t.values.iter().all(|&v| (2.1..=2.6).contains(&v)));
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(format_tick(2.5, 0.5), "2.5");
        assert_eq!(format_tick(400.0, 100.0), "400");
        assert_eq!(format_tick(25_000.0, 5_000.0), "25K");
        assert_eq!(format_tick(1_500_000.0, 500_000.0), "1.5M");
        assert_eq!(format_tick(0.0015, 0.0005), "1.5E-3");
        assert_eq!(format_tick(0.0, 1.0), "0");
    }

    #[test]
    fn charts_render_with_and_without_data() {
        let chart = LineChart {
            title: "loss".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            series: vec![
                Series { name: "pretrain1".into(), points: vec![(1.0, 5.0), (2.0, 4.0), (3.0, f64::NAN), (4.0, 3.0)] },
                Series { name: "sft".into(), points: vec![(5.0, 2.5)] },
            ],
        };
        let canvas = chart.render();
        let inked = (0..canvas.height()).flat_map(|y| (0..canvas.width()).map(move |x| (x, y))).filter(|&(x, y)| canvas.pixel(x, y) == Color::series(0)).count();
        assert!(inked > 200, "{inked}");
        // The legend sits beside the plot area, which keeps its width.
        let empty = LineChart { series: vec![], ..chart }.render();
        assert!(empty.width() < canvas.width());
        assert_eq!(empty.height(), canvas.height());
    }
}
