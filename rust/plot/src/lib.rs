//! kormo-plot: PNG charts of training runs.
//!
//! * [`text`] — labels in DejaVu Sans, laid out and rasterised by `ab_glyph`.
//! * [`raster`] — an RGB canvas drawn by tiny-skia (rectangles, anti-aliased lines, text,
//!   blitting), encoded as PNG by the `png` crate.
//! * [`chart`] — line charts with nice ticks and a legend.
//! * [`heatmap`] — score heat maps (used by the needle-in-a-haystack evaluation).
//! * [`metrics`] — the training curves of a run directory (the `plot` binary).

pub mod chart;
pub mod heatmap;
pub mod metrics;
pub mod raster;
pub mod text;

pub use chart::{LineChart, Series};
pub use heatmap::HeatMap;
pub use raster::{Canvas, Color, Direction};
