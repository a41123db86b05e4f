//! kormo-plot: PNG charts with no dependencies beyond a CRC-32.
//!
//! * [`png`] — PNG encoder (RGB, zlib stream with a fixed-Huffman deflate block and LZ77).
//! * [`font`] — a 5x7 bitmap font (digits, capitals, punctuation).
//! * [`raster`] — an RGB canvas: rectangles, lines, text, blitting.
//! * [`chart`] — line charts with nice ticks and a legend.
//! * [`heatmap`] — score heat maps (used by the needle-in-a-haystack evaluation).
//! * [`metrics`] — the training curves of a run directory (the `plot` binary).

pub mod chart;
pub mod font;
pub mod heatmap;
pub mod metrics;
pub mod png;
pub mod raster;

pub use chart::{LineChart, Series};
pub use heatmap::HeatMap;
pub use raster::{Canvas, Color, Direction};
