//! An RGB canvas with the few primitives charts need, drawn by tiny-skia: crisp rectangles on
//! whole pixels, anti-aliased polylines with round joins, anti-aliased text (see [`crate::text`]),
//! optionally rotated for a y-axis title, and blitting one canvas into another. Drawing outside
//! the canvas is clipped, never a panic. PNGs are encoded by the `png` crate as 8-bit RGB.

use std::path::Path;

use tiny_skia::{LineCap, LineJoin, Paint, PathBuilder, Pixmap, PixmapPaint, PremultipliedColorU8, Rect, Stroke, Transform};

pub use crate::text::text_size;

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

/// An opaque RGB image (a tiny-skia pixmap whose alpha is always 255).
#[derive(Debug, Clone, PartialEq)]
pub struct Canvas {
    pixmap: Pixmap,
}

fn paint(c: Color) -> Paint<'static> {
    let mut paint = Paint::default();
    paint.set_color_rgba8(c.0, c.1, c.2, 255);
    paint.anti_alias = true;
    paint
}

impl Canvas {
    /// A canvas filled with `background`; a zero width or height is taken as 1.
    pub fn new(width: usize, height: usize, background: Color) -> Canvas {
        let side = |n: usize| u32::try_from(n.max(1)).unwrap_or(u32::MAX);
        let mut pixmap = Pixmap::new(side(width), side(height)).unwrap_or_else(|| panic!("a {width}x{height} canvas is too large to allocate"));
        pixmap.fill(tiny_skia::Color::from_rgba8(background.0, background.1, background.2, 255));
        Canvas { pixmap }
    }

    pub fn width(&self) -> usize {
        self.pixmap.width() as usize
    }

    pub fn height(&self) -> usize {
        self.pixmap.height() as usize
    }

    pub fn pixel(&self, x: usize, y: usize) -> Color {
        let p = self.pixmap.pixels()[y * self.width() + x];
        Color(p.red(), p.green(), p.blue())
    }

    /// Sets one pixel; coordinates outside the canvas are ignored.
    pub fn put(&mut self, x: i64, y: i64, c: Color) {
        if x >= 0 && y >= 0 && (x as usize) < self.width() && (y as usize) < self.height() {
            let at = y as usize * self.width() + x as usize;
            self.pixmap.pixels_mut()[at] = PremultipliedColorU8::from_rgba(c.0, c.1, c.2, 255).expect("opaque colours are valid");
        }
    }

    /// Fills whole pixels: columns x..x+w, rows y..y+h (an empty or negative size draws nothing).
    pub fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: Color) {
        if let Some(rect) = Rect::from_xywh(x as f32, y as f32, w as f32, h as f32) {
            self.pixmap.fill_rect(rect, &paint(c), Transform::identity(), None);
        }
    }

    /// Outline of a rectangle, one pixel wide.
    pub fn stroke_rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: Color) {
        self.fill_rect(x, y, w, 1, c);
        self.fill_rect(x, y + h - 1, w, 1, c);
        self.fill_rect(x, y, 1, h, c);
        self.fill_rect(x + w - 1, y, 1, h, c);
    }

    /// An anti-aliased line `width` pixels wide through `points`, with round joins and caps.
    /// Coordinates are in pixels, (x, y) naming the centre of pixel (x, y); fewer than two
    /// points, or any non-finite one, draw nothing.
    pub fn polyline(&mut self, points: &[(f64, f64)], width: f32, c: Color) {
        let mut path = PathBuilder::new();
        for (i, &(x, y)) in points.iter().enumerate() {
            let (x, y) = (x as f32 + 0.5, y as f32 + 0.5);
            if i == 0 {
                path.move_to(x, y);
            } else {
                path.line_to(x, y);
            }
        }
        let Some(path) = (points.len() >= 2).then(|| path.finish()).flatten() else { return };
        let stroke = Stroke { width, line_cap: LineCap::Round, line_join: LineJoin::Round, ..Stroke::default() };
        self.pixmap.stroke_path(&path, &paint(c), &stroke, Transform::identity(), None);
    }

    /// Draws `text` at `size` (its line height in pixels) with the top-left corner of its
    /// [`text_size`] box at (x, y); for `Up` the box is turned a quarter left, so the text
    /// reads bottom to top inside a box `height` wide and `width` tall whose top-left is (x, y).
    pub fn text(&mut self, x: i64, y: i64, text: &str, size: f32, direction: Direction, c: Color) {
        let (w, h, mask) = crate::text::coverage(text, size);
        for row in 0..h {
            for col in 0..w {
                let alpha = mask[row * w + col];
                if alpha > 0.0 {
                    let (px, py) = match direction {
                        Direction::Right => (x + col as i64, y + row as i64),
                        Direction::Up => (x + row as i64, y + (w - 1 - col) as i64),
                    };
                    self.blend(px, py, c, alpha);
                }
            }
        }
    }

    /// `c` over the pixel at (x, y) with coverage `alpha`; outside the canvas, nothing.
    fn blend(&mut self, x: i64, y: i64, c: Color, alpha: f32) {
        if x < 0 || y < 0 || x as usize >= self.width() || y as usize >= self.height() {
            return;
        }
        let old = self.pixel(x as usize, y as usize);
        let mix = |src: u8, dst: u8| (src as f32 * alpha + dst as f32 * (1.0 - alpha)).round() as u8;
        self.put(x, y, Color(mix(c.0, old.0), mix(c.1, old.1), mix(c.2, old.2)));
    }

    /// Copies `other` with its top-left corner at (x, y), clipped.
    pub fn blit(&mut self, other: &Canvas, x: i64, y: i64) {
        let (Ok(x), Ok(y)) = (i32::try_from(x), i32::try_from(y)) else { return };
        self.pixmap.draw_pixmap(x, y, other.pixmap.as_ref(), &PixmapPaint::default(), Transform::identity(), None);
    }

    /// The canvas as an 8-bit RGB PNG.
    pub fn to_png(&self) -> Vec<u8> {
        let rgb: Vec<u8> = self.pixmap.pixels().iter().flat_map(|p| [p.red(), p.green(), p.blue()]).collect();
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.pixmap.width(), self.pixmap.height());
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().expect("a PNG header of a non-empty canvas encodes into memory");
        writer.write_image_data(&rgb).expect("rows of the canvas's own size encode into memory");
        writer.finish().expect("a complete PNG finishes into memory");
        out
    }

    /// Writes the canvas as a PNG file, atomically (a sibling temporary file renamed over
    /// `path`, so a reader never sees half an image); the error names the file.
    pub fn save_png(&self, path: &Path) -> Result<(), String> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        std::fs::write(&tmp, self.to_png()).map_err(|e| format!("{}: cannot write: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("{}: cannot rename {} over it: {e}", path.display(), tmp.display())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bounding box (x0, y0, x1, y1) of the pixels that are not white.
    fn ink(c: &Canvas) -> Option<(usize, usize, usize, usize)> {
        let inked: Vec<(usize, usize)> = (0..c.height()).flat_map(|y| (0..c.width()).map(move |x| (x, y))).filter(|&(x, y)| c.pixel(x, y) != Color::WHITE).collect();
        let xs = inked.iter().map(|p| p.0);
        let ys = inked.iter().map(|p| p.1);
        Some((xs.clone().min()?, ys.clone().min()?, xs.max()?, ys.max()?))
    }

    #[test]
    fn drawing_is_clipped_and_lands_where_asked() {
        let mut c = Canvas::new(20, 10, Color::WHITE);
        c.fill_rect(-5, -5, 8, 8, Color::BLACK);
        assert_eq!(c.pixel(2, 2), Color::BLACK);
        assert_eq!(c.pixel(3, 3), Color::WHITE);
        c.put(19, 0, Color(4, 5, 6));
        assert_eq!(c.pixel(19, 0), Color(4, 5, 6));
        c.put(20, 0, Color::BLACK); // outside, ignored
        // A one-pixel horizontal line through pixel centres covers its row exactly; the round
        // caps half-cover the end pixels.
        c.polyline(&[(0.0, 9.0), (19.0, 9.0)], 1.0, Color(1, 2, 3));
        assert!((1..19).all(|x| c.pixel(x, 9) == Color(1, 2, 3)));
        assert!(c.pixel(0, 9) != Color::WHITE && c.pixel(5, 8) == Color::WHITE);
        c.polyline(&[(-1000.0, -1000.0), (1000.0, 1000.0)], 3.0, Color::BLACK); // clipped, no panic
        c.polyline(&[(0.0, 0.0), (f64::NAN, 1.0)], 3.0, Color::BLACK); // nothing
        c.text(100, 100, "off canvas", 16.0, Direction::Up, Color::BLACK);
        c.blit(&Canvas::new(4, 4, Color::BLACK), 1 << 40, 0);
        assert_eq!(Canvas::new(0, 0, Color::WHITE).width(), 1);
    }

    #[test]
    fn text_lands_in_its_box_and_turns_for_up() {
        let (w, h) = text_size("step 100", 16.0);
        let mut right = Canvas::new(100, 100, Color::WHITE);
        right.text(10, 20, "step 100", 16.0, Direction::Right, Color::BLACK);
        let (x0, y0, x1, y1) = ink(&right).unwrap();
        assert!(x0 >= 10 && y0 >= 20 && x1 < 10 + w && y1 < 20 + h, "{:?}", (x0, y0, x1, y1));
        assert!(x1 - x0 > 3 * (y1 - y0), "runs along x");
        // Anti-aliased: some pixels are partly covered, some fully.
        let grey = (0..100).flat_map(|y| (0..100).map(move |x| (x, y))).filter(|&(x, y)| !matches!(right.pixel(x, y), Color::WHITE | Color::BLACK)).count();
        assert!(grey > 10, "{grey}");
        assert!((0..100).flat_map(|y| (0..100).map(move |x| (x, y))).any(|(x, y)| right.pixel(x, y) == Color::BLACK));
        let mut up = Canvas::new(100, 100, Color::WHITE);
        up.text(20, 10, "step 100", 16.0, Direction::Up, Color::BLACK);
        let (ux0, uy0, ux1, uy1) = ink(&up).unwrap();
        assert!(ux0 >= 20 && uy0 >= 10 && ux1 < 20 + h && uy1 < 10 + w, "{:?}", (ux0, uy0, ux1, uy1));
        // The same ink turned a quarter: widths and heights swap.
        assert_eq!((ux1 - ux0, uy1 - uy0), (y1 - y0, x1 - x0));
        // Reading bottom to top: the "s" (first letter) is at the bottom.
        let row_ink = |c: &Canvas, y: usize| (0..100).filter(|&x| c.pixel(x, y) != Color::WHITE).count();
        assert!(row_ink(&up, uy1 - 2) > 0 && row_ink(&up, uy0 + 1) > 0);
    }

    #[test]
    fn png_is_rgb_of_the_canvas_size() {
        let c = Canvas::new(7, 3, Color(10, 20, 30));
        let png = c.to_png();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[16..20], &7u32.to_be_bytes());
        assert_eq!(&png[20..24], &3u32.to_be_bytes());
        assert_eq!(&png[24..29], &[8, 2, 0, 0, 0]);
    }

    #[test]
    fn score_colours_run_red_to_green() {
        assert!(Color::score(0.0).0 > 200 && Color::score(0.0).1 < 60);
        assert!(Color::score(1.0).1 > 140 && Color::score(1.0).0 < 40);
        assert_eq!(Color::score(-1.0), Color::score(0.0));
    }
}
