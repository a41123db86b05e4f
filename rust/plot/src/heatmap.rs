//! Heat maps of scores in [0, 1]: a grid of cells coloured red -> yellow -> green with the
//! percentage written in each, labelled rows and columns. Several maps can be laid side by side
//! on one canvas ([`side_by_side`]) — the needle-in-a-haystack figure has one per language.

use crate::raster::{text_size, Canvas, Color, Direction};

#[derive(Debug, Clone, PartialEq)]
pub struct HeatMap {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub col_labels: Vec<String>,
    pub row_labels: Vec<String>,
    /// `cells[row][col]`: a score in [0, 1], or None for "not measured" (drawn grey).
    pub cells: Vec<Vec<Option<f64>>>,
}

/// Text sizes: line heights in pixels.
const TITLE_SIZE: f32 = 22.0;
const LABEL_SIZE: f32 = 17.0;
const CELL_SIZE: f32 = 15.0;
const CELL_H: i64 = 40;
const MARGIN: i64 = 20;

impl HeatMap {
    pub fn render(&self) -> Canvas {
        let widest = |labels: &[String]| labels.iter().map(|l| text_size(l, CELL_SIZE).0).max().unwrap_or(0) as i64;
        let cell_w = (widest(&self.col_labels) + 16).max(text_size("100%", CELL_SIZE).0 as i64 + 16);
        let row_label_w = widest(&self.row_labels) + 12;
        let left = MARGIN + 24 + row_label_w;
        let top = MARGIN + 40;
        let cols = self.col_labels.len() as i64;
        let rows = self.row_labels.len() as i64;
        let grid_w = cols * cell_w;
        let title_w = text_size(&self.title, TITLE_SIZE).0 as i64;
        let width = (left + grid_w + MARGIN).max(title_w + 2 * MARGIN);
        let height = top + rows * CELL_H + 70;
        let mut canvas = Canvas::new(width as usize, height as usize, Color::WHITE);
        canvas.text((width - title_w) / 2, MARGIN - 4, &self.title, TITLE_SIZE, Direction::Right, Color::BLACK);

        for (r, label) in self.row_labels.iter().enumerate() {
            let (lw, lh) = text_size(label, CELL_SIZE);
            canvas.text(left - 8 - lw as i64, top + r as i64 * CELL_H + (CELL_H - lh as i64) / 2, label, CELL_SIZE, Direction::Right, Color::AXIS);
        }
        for (c, label) in self.col_labels.iter().enumerate() {
            let (lw, _) = text_size(label, CELL_SIZE);
            canvas.text(left + c as i64 * cell_w + (cell_w - lw as i64) / 2, top + rows * CELL_H + 8, label, CELL_SIZE, Direction::Right, Color::AXIS);
        }
        for r in 0..rows {
            for c in 0..cols {
                let value = self.cells.get(r as usize).and_then(|row| row.get(c as usize)).copied().flatten();
                let (x, y) = (left + c * cell_w, top + r * CELL_H);
                let fill = value.map(Color::score).unwrap_or(Color::GRID);
                canvas.fill_rect(x, y, cell_w, CELL_H, fill);
                canvas.stroke_rect(x, y, cell_w + 1, CELL_H + 1, Color::WHITE);
                let text = value.map(|v| format!("{:.0}%", v * 100.0)).unwrap_or_else(|| "-".into());
                let (tw, th) = text_size(&text, CELL_SIZE);
                canvas.text(x + (cell_w - tw as i64) / 2, y + (CELL_H - th as i64) / 2, &text, CELL_SIZE, Direction::Right, Color::BLACK);
            }
        }
        let (xw, _) = text_size(&self.x_label, LABEL_SIZE);
        canvas.text(left + (grid_w - xw as i64) / 2, top + rows * CELL_H + 34, &self.x_label, LABEL_SIZE, Direction::Right, Color::BLACK);
        let (yw, _) = text_size(&self.y_label, LABEL_SIZE);
        canvas.text(MARGIN - 6, top + (rows * CELL_H - yw as i64) / 2, &self.y_label, LABEL_SIZE, Direction::Up, Color::BLACK);
        canvas
    }
}

/// Renders `maps` left to right on one canvas (tops aligned).
pub fn side_by_side(maps: &[HeatMap]) -> Canvas {
    let rendered: Vec<Canvas> = maps.iter().map(HeatMap::render).collect();
    let width = rendered.iter().map(Canvas::width).sum::<usize>().max(1);
    let height = rendered.iter().map(Canvas::height).max().unwrap_or(1);
    let mut canvas = Canvas::new(width, height, Color::WHITE);
    let mut x = 0;
    for map in &rendered {
        canvas.blit(map, x as i64, 0);
        x += map.width();
    }
    canvas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_take_their_score_colour() {
        let map = HeatMap {
            title: "needle".into(),
            x_label: "tokens".into(),
            y_label: "depth".into(),
            col_labels: vec!["256".into(), "1024".into()],
            row_labels: vec!["0%".into(), "100%".into()],
            cells: vec![vec![Some(1.0), Some(0.0)], vec![None, Some(0.5)]],
        };
        let canvas = map.render();
        let count = |c: Color| (0..canvas.height()).flat_map(|y| (0..canvas.width()).map(move |x| (x, y))).filter(|&(x, y)| canvas.pixel(x, y) == c).count();
        assert!(count(Color::score(1.0)) > 500);
        assert!(count(Color::score(0.0)) > 500);
        assert!(count(Color::score(0.5)) > 500);
        let both = side_by_side(&[map.clone(), map]);
        assert_eq!(both.width(), 2 * canvas.width());
    }
}
