//! Text in DejaVu Sans (the font matplotlib draws with by default; shipped by the `dejavu`
//! crate), laid out and rasterised by `ab_glyph`: kerning between neighbours, anti-aliased
//! coverage. Sizes are line heights in pixels (ascent to descent), so a label of size `s`
//! takes exactly `s` pixels of height. Characters the font lacks (Hangul, for one) are drawn
//! as its "missing glyph" box; chart labels are ASCII.

use std::sync::OnceLock;

use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};

fn font() -> &'static FontRef<'static> {
    static FONT: OnceLock<FontRef<'static>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(dejavu::sans::regular()).expect("the dejavu crate ships a valid DejaVu Sans"))
}

/// Horizontal pen positions of each character of `text` at `size`, and the total advance.
fn layout(text: &str, size: f32) -> (Vec<(ab_glyph::GlyphId, f32)>, f32) {
    let scaled = font().as_scaled(PxScale::from(size));
    let mut pen = 0.0;
    let mut previous = None;
    let mut glyphs = Vec::with_capacity(text.len());
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(prev) = previous {
            pen += scaled.kern(prev, id);
        }
        glyphs.push((id, pen));
        pen += scaled.h_advance(id);
        previous = Some(id);
    }
    (glyphs, pen)
}

/// Size in pixels of `text` drawn at `size`: (width, height), rounded up.
pub fn text_size(text: &str, size: f32) -> (usize, usize) {
    (layout(text, size).1.ceil() as usize, size.ceil() as usize)
}

/// Coverage (0 to 1) of `text` at `size`, laid out left to right in a box of
/// [`text_size`]: `mask[row * width + col]`. Returns (width, height, mask).
pub fn coverage(text: &str, size: f32) -> (usize, usize, Vec<f32>) {
    let (width, height) = text_size(text, size);
    let mut mask = vec![0.0f32; width * height];
    let scaled = font().as_scaled(PxScale::from(size));
    let (glyphs, _) = layout(text, size);
    for (id, x) in glyphs {
        let glyph = id.with_scale_and_position(scaled.scale(), point(x, scaled.ascent()));
        let Some(outlined) = font().outline_glyph(glyph) else { continue }; // a space
        let bounds = outlined.px_bounds();
        outlined.draw(|gx, gy, c| {
            let (col, row) = (bounds.min.x as i64 + gx as i64, bounds.min.y as i64 + gy as i64);
            if (0..width as i64).contains(&col) && (0..height as i64).contains(&row) {
                let at = row as usize * width + col as usize;
                mask[at] = (mask[at] + c).min(1.0);
            }
        });
    }
    (width, height, mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longer_text_is_wider_and_size_is_the_height() {
        let (w1, h1) = text_size("loss", 16.0);
        let (w2, h2) = text_size("loss and more", 16.0);
        assert!(w1 > 16 && w2 > 2 * w1, "{w1} {w2}");
        assert_eq!((h1, h2), (16, 16));
        assert_eq!(text_size("", 16.0).0, 0);
        // Twice the size, about twice the width.
        let (w3, _) = text_size("loss", 32.0);
        assert!((2 * w1 - 2..=2 * w1 + 2).contains(&w3), "{w1} {w3}");
    }

    #[test]
    fn glyphs_ink_inside_their_box() {
        let (w, h, mask) = coverage("Wg1%", 20.0);
        assert_eq!(mask.len(), w * h);
        let inked = mask.iter().filter(|&&c| c > 0.5).count();
        assert!(inked > 40, "{inked}");
        assert!(mask.iter().all(|c| (0.0..=1.0).contains(c)));
        // The descender of g reaches below the baseline, the capital W does not reach the top
        // row (the ascent includes room for accents).
        let row_ink = |r: usize| mask[r * w..(r + 1) * w].iter().sum::<f32>();
        assert!(row_ink(h - 2) > 0.0 || row_ink(h - 3) > 0.0);
        assert_eq!(row_ink(0), 0.0);
        let (_, _, space) = coverage("  ", 20.0);
        assert!(space.iter().all(|&c| c == 0.0));
    }
}
