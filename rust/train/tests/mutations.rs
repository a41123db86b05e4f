//! Seeded mutation tests (property style, bounded time, run in CI): recipes and checkpoints
//! changed at random the ways a user's bad day changes them, each checked against what must
//! hold whatever the change. A recipe mistake is reported at the key and line that was changed
//! (a misspelling at its first line, a missing table by its own key, a zero checkpoint interval
//! refused); a resume from a changed checkpoint either fails with a message or continues
//! exactly as the uninterrupted run did, bit for bit.

mod common;

use common::{options, scratch, small_recipe};
use kormo_train::recipe::{Recipe, RecipeError, TINY_RECIPE};
use kormo_train::trainer::{run_stage, MODEL_FILE};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::path::Path;

fn parse(text: &str) -> Result<Recipe, RecipeError> {
    Recipe::parse(text, "test.toml", Path::new("."))
}

/// The dotted table of each line of `text` (array-of-tables indexed) and its key, if any.
fn line_keys(text: &str) -> Vec<(String, Option<String>)> {
    let mut table = String::new();
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    text.lines()
        .map(|line| {
            let l = line.trim();
            if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
                let n = counts.entry(name.to_string()).or_insert(0);
                table = format!("{name}[{n}]");
                *n += 1;
                (table.clone(), None)
            } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
                table = name.to_string();
                (table.clone(), None)
            } else {
                let key = l
                    .split_once('=')
                    .filter(|_| !l.starts_with('#'))
                    .map(|(k, _)| k.trim().to_string());
                (table.clone(), key)
            }
        })
        .collect()
}

/// Tables whose keys another parser reads (model presets, the tokens enum): not mutated here.
fn own_parser(table: &str) -> bool {
    table == "model" || table == "tokens"
}

/// A table's kind: its name with every stage name and index generalised.
fn kind(table: &str) -> String {
    let names: Vec<&str> = table
        .split('.')
        .map(|n| n.split('[').next().unwrap_or(n))
        .collect();
    match names.as_slice() {
        ["stages", _, rest @ ..] => format!("stages.*.{}", rest.join(".")),
        ["sources", _] => "sources.*".into(),
        _ => names.join("."),
    }
}

/// `table.key`, or `key` at the top level.
fn dotted(table: &str, key: &str) -> String {
    if table.is_empty() {
        key.to_string()
    } else {
        format!("{table}.{key}")
    }
}

fn misspell(key: &str, rng: &mut ChaCha8Rng) -> String {
    let mut chars: Vec<char> = key.chars().collect();
    let at = rng.random_range(0..chars.len());
    match rng.random_range(0..3) {
        0 => {
            chars.remove(at);
        }
        1 => chars.insert(at, chars[at]),
        _ => chars.insert(at, 'x'),
    }
    chars.into_iter().collect()
}

#[test]
fn seeded_recipe_mutations_are_reported_where_they_were_made() {
    let mut rng = ChaCha8Rng::seed_from_u64(18);
    let text = TINY_RECIPE;
    let lines: Vec<&str> = text.lines().collect();
    let keys = line_keys(text);
    let known: std::collections::BTreeSet<&str> =
        keys.iter().filter_map(|(_, k)| k.as_deref()).collect();
    let keyed: Vec<usize> = (0..lines.len())
        .filter(|&i| keys[i].1.is_some() && !own_parser(&keys[i].0))
        .collect();
    let headers: Vec<usize> = (0..lines.len())
        .filter(|&i| {
            lines[i].starts_with('[') && !lines[i].starts_with("[[") && !own_parser(&keys[i].0)
        })
        .collect();
    for case in 0..3000 {
        let mut changed: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        let what = match rng.random_range(0..4) {
            // A misspelled key, in one table or in every table of its kind.
            0 => {
                let i = keyed[rng.random_range(0..keyed.len())];
                let (table, key) = (&keys[i].0, keys[i].1.as_deref().unwrap());
                let wrong = misspell(key, &mut rng);
                if known.contains(wrong.as_str()) || wrong.is_empty() {
                    continue;
                }
                let everywhere = rng.random_bool(0.5);
                let places: Vec<usize> = (0..lines.len())
                    .filter(|&j| {
                        keys[j].1.as_deref() == Some(key)
                            && if everywhere {
                                kind(&keys[j].0) == kind(table)
                            } else {
                                j == i
                            }
                    })
                    .collect();
                for &j in &places {
                    changed[j] = changed[j].replacen(key, &wrong, 1);
                }
                let err = parse(&changed.join("\n")).expect_err("a misspelled key is an error");
                let first = places[0];
                assert!(
                    err.message.starts_with(&format!("unknown field `{wrong}`"))
                        && err.file == format!("test.toml:{}", first + 1)
                        && err.key == dotted(&keys[first].0, &wrong),
                    "case {case}: `{key}` -> `{wrong}` on lines {places:?}: {err}"
                );
                continue;
            }
            // A whole table (with the tables below it) left out.
            1 => {
                let i = headers[rng.random_range(0..headers.len())];
                let table = keys[i].0.clone();
                let end = (i + 1..lines.len())
                    .find(|&j| lines[j].starts_with('[') && !keys[j].0.starts_with(&table))
                    .unwrap_or(lines.len());
                changed.drain(i..end);
                format!("table [{table}] removed")
            }
            // A value replaced by zero, a negative, a huge number or a string.
            2 => {
                let i = keyed[rng.random_range(0..keyed.len())];
                let value = ["0", "-1", "1e300", "\"x\"", "0.0"][rng.random_range(0..5)];
                let key = keys[i].1.clone().unwrap();
                changed[i] = format!("{key} = {value}");
                let dotted = dotted(&keys[i].0, &key);
                if keys[i].0 == "checkpoint" && (value == "0" || value == "-1") {
                    let err = parse(&changed.join("\n")).expect_err("a zero interval is refused");
                    assert_eq!(err.key, dotted, "case {case}: {err}");
                }
                format!("{dotted} = {value} (line {})", i + 1)
            }
            // A line written twice.
            _ => {
                let i = keyed[rng.random_range(0..keyed.len())];
                changed.insert(i + 1, lines[i].to_string());
                let err = parse(&changed.join("\n")).expect_err("a duplicate key is an error");
                assert!(
                    err.file == format!("test.toml:{}", i + 1)
                        || err.file == format!("test.toml:{}", i + 2),
                    "case {case}: line {} doubled: {err}",
                    i + 1
                );
                continue;
            }
        };
        // Whatever the change: an error names the table or key it was made in.
        if let Err(err) = parse(&changed.join("\n")) {
            let (table, key) = if let Some(rest) = what.strip_prefix("table [") {
                (rest.split(']').next().unwrap().to_string(), None)
            } else {
                let dotted = what.split(" = ").next().unwrap().to_string();
                let table = dotted.rsplit_once('.').map_or("", |(t, _)| t).to_string();
                (table, Some(dotted))
            };
            if err.message.starts_with("missing field") {
                assert_eq!(err.key, table, "case {case}: {what}: {err}");
            } else if let Some(key) = key {
                assert!(
                    err.key == key || err.key == table || err.key.starts_with(&format!("{table}.")),
                    "case {case}: {what}: {err}"
                );
            } else {
                let last = table.rsplit('.').next().unwrap();
                assert!(
                    err.key.contains(last) || err.message.contains(last),
                    "case {case}: {what}: {err}"
                );
            }
        }
    }
}

/// (step, loss bits) of every logged step.
fn losses(report: &kormo_train::trainer::StageReport) -> Vec<(u64, u64)> {
    report
        .logged
        .iter()
        .map(|m| (m.step, m.loss.to_bits()))
        .collect()
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The JSON paths of the run state a mutation may change. Left out: the outlier guard's values
/// (measurements: any finite value is possible) and a pending document's offset (checked only
/// to lie inside its document, docs/checkpoint-format.md).
const RUN_STATE_PATHS: &[&[&str]] = &[
    &["run", "step"],
    &["run", "stage"],
    &["run", "phase"],
    &["run", "config_hash"],
    &["run", "rng_state", "seed"],
    &["run", "rng_state", "data_rng_word_pos"],
    &["run", "data_cursor", "seed"],
    &["run", "data_cursor", "rng_word_pos"],
    &["run", "data_cursor", "sources"],
    &["run", "data_cursor", "taken"],
    &["run", "data_cursor", "pending", "source"],
    &["run", "data_cursor", "pending", "taken"],
    &["run", "trainer", "seed"],
    &["run", "trainer", "phase_index"],
    &["run", "trainer", "phase_step"],
    &["run", "trainer", "phase_steps"],
    &["run", "trainer", "tokens"],
    &["run", "trainer", "guard", "losses"],
    &["run", "trainer", "guard", "grad_norms"],
];

fn mutate_value(value: &Value, rng: &mut ChaCha8Rng) -> Value {
    let n = value.as_u64();
    match (rng.random_range(0..8), value) {
        (0, _) => Value::Null,
        (1, _) => json!(-1),
        (2, _) => json!("x"),
        (3, Value::Array(items)) if !items.is_empty() => json!(items[..items.len() - 1]),
        (3, Value::Array(items)) => json!([items.len()]),
        (4, Value::Array(items)) => {
            let mut items = items.clone();
            items.push(json!(items.first().cloned().unwrap_or(json!(1))));
            json!(items)
        }
        (4, Value::String(s)) => json!(format!("{s}x")),
        (5, _) => json!(1_000_000_000_000_000u64),
        (_, Value::String(s)) if s.parse::<u64>().is_ok() => {
            json!(
                (s.parse::<u64>().unwrap() as i128 + [-1, 1, 2][rng.random_range(0..3)])
                    .to_string()
            )
        }
        (_, Value::Array(items)) if items.first().is_some_and(Value::is_u64) => {
            let mut items = items.clone();
            let first = items[0].as_u64().unwrap();
            items[0] = json!(first + 1);
            json!(items)
        }
        _ => match n {
            Some(n) => json!(n as i128 + [-1, 1, 2, 50][rng.random_range(0..4)]),
            None => json!(0),
        },
    }
}

#[test]
fn seeded_checkpoint_mutations_fail_clearly_or_resume_exactly() {
    let recipe = small_recipe();
    let straight_dir = scratch("mutations-straight");
    let mut opts = options("pretrain1", &straight_dir);
    opts.max_steps = Some(6);
    let straight = run_stage(&recipe, &opts, &mut std::io::sink()).unwrap();
    let straight_losses = losses(&straight);
    let straight_model =
        std::fs::read(straight_dir.join("pretrain1/final").join(MODEL_FILE)).unwrap();

    let pristine = scratch("mutations-pristine");
    let mut stopped = options("pretrain1", &pristine);
    stopped.max_steps = Some(6);
    stopped.stop_after = Some(4);
    run_stage(&recipe, &stopped, &mut std::io::sink()).unwrap();
    let step4 = Path::new("pretrain1/checkpoints/step-000000004");
    let manifest_text =
        std::fs::read_to_string(pristine.join(step4).join("manifest.json")).unwrap();
    let manifest: Value = serde_json::from_str(&manifest_text).unwrap();

    let dir = scratch("mutations-run");
    let mut rng = ChaCha8Rng::seed_from_u64(18);
    let (mut refused, mut resumed) = (0, 0);
    for case in 0..160 {
        let _ = std::fs::remove_dir_all(&dir);
        copy_tree(&pristine, &dir);
        let target = dir.join(step4);
        let what = match rng.random_range(0..5) {
            0..=2 => {
                let path = RUN_STATE_PATHS[rng.random_range(0..RUN_STATE_PATHS.len())];
                let mut changed = manifest.clone();
                let mut at = &mut changed;
                for name in path {
                    at = &mut at[*name];
                }
                let before = at.clone();
                *at = mutate_value(&before, &mut rng);
                let what = format!("{} {before} -> {at}", path.join("."));
                std::fs::write(target.join("manifest.json"), changed.to_string()).unwrap();
                what
            }
            3 => {
                let file = target.join(MODEL_FILE);
                let mut bytes = std::fs::read(&file).unwrap();
                let at = rng.random_range(0..bytes.len());
                if rng.random_bool(0.5) {
                    bytes[at] ^= 1 << rng.random_range(0..8);
                } else {
                    bytes.truncate(at);
                }
                std::fs::write(&file, bytes).unwrap();
                format!("{MODEL_FILE} changed at byte {at}")
            }
            _ => {
                let cut = rng.random_range(0..manifest_text.len());
                std::fs::write(target.join("manifest.json"), &manifest_text[..cut]).unwrap();
                format!("manifest cut at byte {cut}")
            }
        };
        let mut resume = options("pretrain1", &dir).with_resume();
        resume.max_steps = Some(6);
        match run_stage(&recipe, &resume, &mut std::io::sink()) {
            Err(e) => {
                refused += 1;
                let message = e.to_string();
                assert!(
                    message.contains("manifest.json") || message.contains("--resume"),
                    "case {case}: {what}: {message}"
                );
            }
            Ok(report) => {
                resumed += 1;
                let logged = losses(&report);
                assert!(
                    !logged.is_empty(),
                    "case {case}: {what}: accepted but nothing trained"
                );
                assert_eq!(
                    logged,
                    straight_losses[straight_losses.len() - logged.len()..],
                    "case {case}: {what}"
                );
                let model = std::fs::read(dir.join("pretrain1/final").join(MODEL_FILE));
                assert!(
                    model.is_ok_and(|m| m == straight_model),
                    "case {case}: {what}: final weights differ"
                );
            }
        }
    }
    // Both outcomes occur: the mutations reach the checks and the resume path.
    assert!(
        refused > 20 && resumed > 10,
        "refused {refused}, resumed {resumed}"
    );
}
