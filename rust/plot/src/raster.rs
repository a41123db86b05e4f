//! An RGB canvas with the few primitives charts need: rectangles, thick anti-alias-free lines,
//! text in the built-in font (scaled by whole pixels, optionally rotated for a y-axis label),
//! and blitting one canvas into another. Drawing outside the canvas is clipped, never a panic.

use std::path::Path;

use crate::font::{glyph, text_width, ADVANCE, GLYPH_HEIGHT, GLYPH_WIDTH};
use crate::png;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Color(pub u8, pub u8, pub u8);

impl Color {
    pub const WHITE: Color = Color(255, 255, 255);
    pub const BLACK: Color = Color(0, 0, 0);
    pub const GRID: Color = Color(225, 225, 225);
    pub const AXIS: Color = Color(90, 90, 90);

    /// Distinct colours for data series (a colour-blind-friendly palette), cycling.
    pub fn series(index: usize) -> Color {
        const PALETTE: [Color; 8] = [
            Color(0, 114, 178),
            Color(213, 94, 0),
            Color(0, 158, 115),
            Color(204, 121, 167),
            Color(230, 159, 0),
            Color(86, 180, 233),
            Color(120, 120, 120),
            Color(240, 228, 66),
        ];
        PALETTE[index % PALETTE.len()]
    }

    /// Red (0) through yellow (0.5) to green (1) for scores; out-of-range values are clamped.
    pub fn score(value: f64) -> Color {
        let v = value.clamp(0.0, 1.0);
        let lerp = |a: u8, b: u8, t: f64| (a as f64 + (b as f64 - a as f64) * t).round() as u8;
        let (from, to, t) = if v < 0.5 { (Color(215, 48, 39), Color(254, 224, 139), v * 2.0) } else { (Color(254, 224, 139), Color(26, 152, 80), v * 2.0 - 1.0) };
        Color(lerp(from.0, to.0, t), lerp(from.1, to.1, t), lerp(from.2, to.2, t))
    }
}

/// Which way text runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Right,
    /// Bottom to top (y-axis titles).
    Up,
}

/// An RGB image.
#[derive(Debug, Clone, PartialEq)]
pub struct Canvas {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    pub fn new(width: usize, height: usize, background: Color) -> Canvas {
        let rgb = [background.0, background.1, background.2].repeat(width * height);
        Canvas { width, height, rgb }
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    pub fn pixel(&self, x: usize, y: usize) -> Color {
        let i = (y * self.width + x) * 3;
        Color(self.rgb[i], self.rgb[i + 1], self.rgb[i + 2])
    }

    /// Sets one pixel; coordinates outside the canvas are ignored.
    pub fn put(&mut self, x: i64, y: i64, c: Color) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let i = (y as usize * self.width + x as usize) * 3;
            self.rgb[i..i + 3].copy_from_slice(&[c.0, c.1, c.2]);
        }
    }

    pub fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: Color) {
        for yy in y.max(0)..(y + h).min(self.height as i64) {
            for xx in x.max(0)..(x + w).min(self.width as i64) {
                self.put(xx, yy, c);
            }
        }
    }

    /// Outline of a rectangle, one pixel wide.
    pub fn stroke_rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: Color) {
        self.fill_rect(x, y, w, 1, c);
        self.fill_rect(x, y + h - 1, w, 1, c);
        self.fill_rect(x, y, 1, h, c);
        self.fill_rect(x + w - 1, y, 1, h, c);
    }

    /// A line `thickness` pixels wide (Bresenham with a square pen).
    pub fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), thickness: i64, c: Color) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        let offset = (thickness - 1) / 2;
        // Lines from far outside the canvas are clipped by `put`; bound the walk anyway.
        for _ in 0..=(dx - dy).min(1 << 20) {
            self.fill_rect(x - offset, y - offset, thickness, thickness, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Draws `text` with its top-left corner at (x, y) (for `Up`, the bottom-left corner of the
    /// rotated text is at (x, y + width)), each font pixel `scale` x `scale` canvas pixels.
    pub fn text(&mut self, x: i64, y: i64, text: &str, scale: usize, direction: Direction, c: Color) {
        let s = scale as i64;
        let total = (text_width(text) * scale) as i64;
        for (n, ch) in text.chars().enumerate() {
            let rows = glyph(ch);
            for (row, bits) in rows.iter().enumerate() {
                for col in 0..GLYPH_WIDTH {
                    if bits >> (GLYPH_WIDTH - 1 - col) & 1 == 0 {
                        continue;
                    }
                    let along = ((n * ADVANCE + col) * scale) as i64;
                    let across = (row * scale) as i64;
                    match direction {
                        Direction::Right => self.fill_rect(x + along, y + across, s, s, c),
                        Direction::Up => self.fill_rect(x + across, y + total - along - s, s, s, c),
                    }
                }
            }
        }
    }

    /// Copies `other` with its top-left corner at (x, y), clipped.
    pub fn blit(&mut self, other: &Canvas, x: i64, y: i64) {
        for yy in 0..other.height {
            for xx in 0..other.width {
                self.put(x + xx as i64, y + yy as i64, other.pixel(xx, yy));
            }
        }
    }

    pub fn to_png(&self) -> Vec<u8> {
        png::encode_rgb(self.width, self.height, &self.rgb)
    }

    /// Writes the canvas as a PNG file; the error names the file.
    pub fn save_png(&self, path: &Path) -> Result<(), String> {
        std::fs::write(path, self.to_png()).map_err(|e| format!("{}: cannot write: {e}", path.display()))
    }
}

/// Size in canvas pixels of `text` at `scale`: (width, height).
pub fn text_size(text: &str, scale: usize) -> (usize, usize) {
    (text_width(text) * scale, GLYPH_HEIGHT * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drawing_is_clipped_and_lands_where_asked() {
        let mut c = Canvas::new(20, 10, Color::WHITE);
        c.fill_rect(-5, -5, 8, 8, Color::BLACK);
        assert_eq!(c.pixel(2, 2), Color::BLACK);
        assert_eq!(c.pixel(3, 3), Color::WHITE);
        c.line((0, 9), (19, 9), 1, Color(1, 2, 3));
        assert!((0..20).all(|x| c.pixel(x, 9) == Color(1, 2, 3)));
        c.line((-1000, -1000), (1000, 1000), 3, Color::BLACK); // clipped, no panic
        c.text(100, 100, "off canvas", 2, Direction::Up, Color::BLACK);
        let mut t = Canvas::new(12, 8, Color::WHITE);
        t.text(0, 0, "-", 1, Direction::Right, Color::BLACK);
        assert!((0..5).all(|x| t.pixel(x, 3) == Color::BLACK) && t.pixel(0, 2) == Color::WHITE);
        let mut u = Canvas::new(8, 12, Color::WHITE);
        u.text(0, 0, "-", 1, Direction::Up, Color::BLACK);
        assert!((0..5).all(|y| u.pixel(3, y) == Color::BLACK) && u.pixel(2, 0) == Color::WHITE);
    }

    #[test]
    fn score_colours_run_red_to_green() {
        assert!(Color::score(0.0).0 > 200 && Color::score(0.0).1 < 60);
        assert!(Color::score(1.0).1 > 140 && Color::score(1.0).0 < 40);
        assert_eq!(Color::score(-1.0), Color::score(0.0));
    }
}
