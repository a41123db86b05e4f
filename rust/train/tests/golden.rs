//! Golden losses: the first 20 losses of a fixed tiny run must match
//! tests/golden/tiny_losses.txt to 1e-5 relative (torchtitan's tests/assets/losses idea).
//!
//! The run: tests/recipes/test-small.toml, stage midtrain, every phase capped at 10 steps
//! (long_context, then reasoning with gradient accumulation and `<think>` masking), 2 threads.
//! CPU results do not depend on the thread count (kormo-cpu splits work without changing any
//! summation order), but matrixmultiply picks its kernel by CPU features (FMA or not), which
//! moves the last bits; hence a relative tolerance rather than bit equality.
//!
//! After an intended change to the model, data or optimizer, regenerate the file with
//!   KORMO_UPDATE_GOLDEN=1 cargo test -p kormo-train --test golden
//! and commit it together with the change.

mod common;

use common::{options, repo, scratch, small_recipe};
use kormo_train::trainer::run_stage;

const TOLERANCE: f64 = 1e-5;

#[test]
fn first_20_losses_match_golden() {
    let dir = scratch("golden");
    let mut opts = options("midtrain", &dir);
    opts.max_steps = Some(10);
    let report = run_stage(&small_recipe(), &opts, &mut std::io::sink()).unwrap();
    let losses: Vec<(u64, f64)> = report.logged.iter().map(|m| (m.step, m.loss)).collect();
    assert_eq!(losses.len(), 20);

    let path = repo().join("tests/golden/tiny_losses.txt");
    if std::env::var_os("KORMO_UPDATE_GOLDEN").is_some() {
        let mut text = String::from(
            "# step loss -- first 20 losses of tests/recipes/test-small.toml, stage midtrain, --max-steps=10\n\
             # (checked by rust/train/tests/golden.rs; regenerate: KORMO_UPDATE_GOLDEN=1 cargo test -p kormo-train --test golden)\n",
        );
        for (step, loss) in &losses {
            text.push_str(&format!("{step} {loss:?}\n"));
        }
        std::fs::write(&path, text).unwrap();
        return;
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let golden: Vec<(u64, f64)> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (step, loss) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad line `{l}` in {}", path.display()));
            (step.parse().unwrap(), loss.parse().unwrap())
        })
        .collect();
    assert_eq!(
        golden.len(),
        losses.len(),
        "{} holds {} losses",
        path.display(),
        golden.len()
    );
    for ((step, loss), (golden_step, golden_loss)) in losses.iter().zip(&golden) {
        assert_eq!(step, golden_step);
        let relative = (loss - golden_loss).abs() / golden_loss.abs();
        assert!(
            relative <= TOLERANCE,
            "step {step}: loss {loss} vs golden {golden_loss} (relative {relative:.2e} > {TOLERANCE:e}); \
             if the change is intended, regenerate with KORMO_UPDATE_GOLDEN=1 (see this file's header)"
        );
    }
    // The run learns: the golden curve itself falls.
    assert!(golden.last().unwrap().1 < golden[0].1 * 0.9);
}
