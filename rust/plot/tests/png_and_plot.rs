//! The PNGs checked from the outside (signature, chunk CRCs, IHDR, and the pixels after
//! inflating with python3's zlib, an independent decoder, and undoing the PNG row filters
//! here), and the `plot` binary on a synthetic run directory, including bad input.

use kormo_plot::{Canvas, Color};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Chunks of a PNG after checking its signature and every CRC: (type, data).
fn chunks(png: &[u8]) -> Vec<(String, Vec<u8>)> {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "signature");
    let mut out = Vec::new();
    let mut at = 8;
    while at < png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        let kind = &png[at + 4..at + 8];
        let data = &png[at + 8..at + 8 + len];
        let crc = u32::from_be_bytes(png[at + 8 + len..at + 12 + len].try_into().unwrap());
        assert_eq!(crc, crc32fast::hash(&png[at + 4..at + 8 + len]), "CRC of {}", String::from_utf8_lossy(kind));
        out.push((String::from_utf8(kind.to_vec()).unwrap(), data.to_vec()));
        at += 12 + len;
    }
    assert_eq!(at, png.len());
    assert_eq!(out.first().unwrap().0, "IHDR");
    assert_eq!(out.last().unwrap().0, "IEND");
    out
}

/// (width, height) from IHDR, checking 8-bit RGB without interlace.
fn ihdr(png: &[u8]) -> (u32, u32) {
    let header = &chunks(png)[0].1;
    assert_eq!(header.len(), 13);
    assert_eq!(&header[8..], &[8, 2, 0, 0, 0]);
    (u32::from_be_bytes(header[..4].try_into().unwrap()), u32::from_be_bytes(header[4..8].try_into().unwrap()))
}

/// The inflated IDAT stream, or None when python3 is unavailable.
fn inflate_with_python(zlib: &[u8]) -> Option<Vec<u8>> {
    let script = "import sys, zlib; sys.stdout.buffer.write(zlib.decompress(sys.stdin.buffer.read()))";
    let mut child = match Command::new("python3").args(["-c", script]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn() {
        Ok(child) => child,
        Err(e) => {
            println!("skipped pixel check: python3 not available ({e})");
            return None;
        }
    };
    child.stdin.take().unwrap().write_all(zlib).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python3 zlib rejected the stream");
    Some(out.stdout)
}

/// Undoes the PNG row filters (specification section 9: None, Sub, Up, Average, Paeth) of
/// an inflated image of `h` rows of `stride` bytes with `bpp` bytes per pixel.
fn unfilter(raw: &[u8], stride: usize, h: usize, bpp: usize) -> Vec<u8> {
    assert_eq!(raw.len(), h * (stride + 1));
    let mut out = vec![0u8; h * stride];
    for y in 0..h {
        let filter = raw[y * (stride + 1)];
        for i in 0..stride {
            let x = raw[y * (stride + 1) + 1 + i];
            let a = if i >= bpp { out[y * stride + i - bpp] } else { 0 };
            let b = if y > 0 { out[(y - 1) * stride + i] } else { 0 };
            let c = if y > 0 && i >= bpp { out[(y - 1) * stride + i - bpp] } else { 0 };
            let predicted = match filter {
                0 => 0,
                1 => a,
                2 => b,
                3 => ((a as u16 + b as u16) / 2) as u8,
                4 => {
                    let p = a as i16 + b as i16 - c as i16;
                    let (pa, pb, pc) = ((p - a as i16).abs(), (p - b as i16).abs(), (p - c as i16).abs());
                    if pa <= pb && pa <= pc { a } else if pb <= pc { b } else { c }
                }
                other => panic!("row {y}: filter type {other} does not exist"),
            };
            out[y * stride + i] = x.wrapping_add(predicted);
        }
    }
    out
}

/// Checks `png` decodes (python3's zlib, then [`unfilter`]) to exactly the canvas's pixels.
fn assert_decodes_to(png: &[u8], canvas: &Canvas) {
    let (w, h) = (canvas.width(), canvas.height());
    assert_eq!(ihdr(png), (w as u32, h as u32));
    let idat: Vec<u8> = chunks(png).into_iter().filter(|(k, _)| k == "IDAT").flat_map(|(_, d)| d).collect();
    let Some(raw) = inflate_with_python(&idat) else { return };
    let pixels = unfilter(&raw, w * 3, h, 3);
    for y in 0..h {
        for x in 0..w {
            let c = canvas.pixel(x, y);
            assert_eq!(&pixels[(y * w + x) * 3..(y * w + x) * 3 + 3], &[c.0, c.1, c.2], "pixel ({x}, {y})");
        }
    }
}

#[test]
fn encoded_pngs_decode_to_the_same_pixels() {
    // Noise (incompressible), flat areas (long matches) and text.
    let (w, h) = (97usize, 61usize);
    let mut canvas = Canvas::new(w, h, Color::WHITE);
    let mut state = 12345u32;
    for y in 0..h / 2 {
        for x in 0..w {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            canvas.put(x as i64, y as i64, Color((state >> 8) as u8, (state >> 16) as u8, (state >> 24) as u8));
        }
    }
    canvas.text(3, 40, "loss 2.5", 14.0, kormo_plot::Direction::Right, Color::BLACK);
    canvas.polyline(&[(0.0, 60.0), (50.0, 35.0), (96.0, 58.0)], 2.0, Color::series(1));
    assert_decodes_to(&canvas.to_png(), &canvas);
    // A real chart (flat areas, anti-aliased lines and text) and a heat map: exact pixels, and
    // the flat areas compress well.
    let chart = kormo_plot::LineChart {
        title: "training loss".into(),
        x_label: "step".into(),
        y_label: "loss".into(),
        series: vec![kormo_plot::Series { name: "pretrain1".into(), points: (1..500).map(|s| (s as f64, 6.0 / (s as f64).sqrt())).collect() }],
    }
    .render();
    let png = chart.to_png();
    assert!(png.len() < chart.width() * chart.height() * 3 / 10, "{} bytes", png.len());
    assert_decodes_to(&png, &chart);
    let map = kormo_plot::HeatMap {
        title: "needle".into(),
        x_label: "tokens".into(),
        y_label: "depth".into(),
        col_labels: vec!["256".into(), "1024".into()],
        row_labels: vec!["0%".into(), "100%".into()],
        cells: vec![vec![Some(1.0), Some(0.25)], vec![None, Some(0.5)]],
    }
    .render();
    assert_decodes_to(&map.to_png(), &map);
}

fn scratch(name: &str) -> PathBuf {
    let base = std::env::var_os("TEST_TMPDIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("kormo-plot-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_metrics(path: &Path, stage: &str, steps: u64, eval: bool) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut lines = String::new();
    for step in 1..=steps {
        let loss = 6.0 / (1.0 + step as f64 * 0.1);
        let mut record = serde_json::json!({
            "stage": stage, "phase": "main", "step": step, "phase_step": step, "phase_steps": steps,
            "loss": loss, "lr": 1e-3 * (step as f64 / steps as f64).min(1.0), "grad_norm": 1.0 / step as f64,
            "tokens": step * 4096, "tokens_per_s": 25_000.0 + step as f64, "elapsed_s": step as f64, "eta_s": 0.0,
        });
        if eval && step % 5 == 0 {
            record["eval_loss"] = serde_json::json!(loss + 0.1);
        }
        lines.push_str(&record.to_string());
        lines.push('\n');
    }
    std::fs::write(path, lines).unwrap();
}

#[test]
fn plot_binary_renders_every_metric_and_reports_bad_input() {
    let run = scratch("run");
    write_metrics(&run.join("pretrain1/metrics.jsonl"), "pretrain1", 40, true);
    write_metrics(&run.join("sft/metrics.jsonl"), "sft", 15, false);
    std::fs::create_dir_all(run.join("not-a-stage")).unwrap();
    let bin = env!("CARGO_BIN_EXE_plot");
    let out = Command::new(bin).arg(&run).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for name in ["loss", "lr", "grad_norm", "throughput", "eval_loss"] {
        let path = run.join("plots").join(format!("{name}.png"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (w, h) = ihdr(&bytes);
        assert!(w >= 600 && h >= 400, "{name}: {w}x{h}");
    }
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed.lines().count(), 5, "{printed}");
    // Under `bazel run`, relative paths are relative to BUILD_WORKING_DIRECTORY.
    let name = run.file_name().unwrap();
    let relative = Command::new(bin).arg(name).args(["--out", "relative-plots"]).env("BUILD_WORKING_DIRECTORY", run.parent().unwrap()).output().unwrap();
    assert!(relative.status.success(), "{}", String::from_utf8_lossy(&relative.stderr));
    assert!(run.parent().unwrap().join("relative-plots/loss.png").is_file());
    std::fs::remove_dir_all(run.parent().unwrap().join("relative-plots")).unwrap();

    let fail = |args: &[&Path], expected: &str| {
        let out = Command::new(bin).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("plot: ") && stderr.contains(expected), "{stderr}");
    };
    fail(&[Path::new("/no/such/run")], "/no/such/run");
    fail(&[&run.join("not-a-stage")], "no <stage>/metrics.jsonl");
    // A usage mistake is clap's: exit code 2 and the usage line.
    let missing = Command::new(bin).output().unwrap();
    assert_eq!(missing.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("<RUN_DIR>") && stderr.contains("Usage: plot"), "{stderr}");
    std::fs::write(run.join("sft/metrics.jsonl"), "{\"step\": 1, \"loss\": 2.0}\n{broken\n").unwrap();
    fail(&[&run], "sft/metrics.jsonl:2");
    std::fs::remove_dir_all(&run).unwrap();
}

#[test]
fn downstream_records_get_one_chart_per_task_and_metric() {
    use kormo_plot::metrics::{charts, StageMetrics};
    let rec = |v: serde_json::Value| v.as_object().unwrap().clone();
    let records = vec![
        rec(serde_json::json!({"step": 10, "loss": 3.0})),
        rec(serde_json::json!({"kind": "downstream", "step": 10, "task": "kmmlu", "language": "ko", "metric": "acc", "score": 0.25})),
        rec(serde_json::json!({"kind": "downstream", "step": 20, "task": "kmmlu", "language": "ko", "metric": "acc", "score": 0.30})),
        rec(serde_json::json!({"kind": "downstream", "step": 20, "task": "boolq", "language": "en", "metric": "acc_norm", "score": 0.6})),
    ];
    let all = charts(&[StageMetrics { stage: "pretrain2".into(), records }]);
    let stems: Vec<&str> = all.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(stems, ["loss", "downstream_boolq_acc_norm", "downstream_kmmlu_acc"]);
    let kmmlu = &all[2].1;
    assert_eq!(kmmlu.series[0].points, [(10.0, 0.25), (20.0, 0.30)]);
    assert_eq!(all[0].1.series[0].points, [(10.0, 3.0)], "downstream records add no loss points");
}
