//! A checkpoint's run state is checked field by field before a resumed run trains: each edit
//! below (what a hand edit, another recipe or a damaged manifest could leave) is refused with
//! the manifest, the field, the value and the valid range, and the checkpoint stays usable.

mod common;

use common::{options, run_error, scratch, small_recipe};
use kormo_train::trainer::run_stage;
use serde_json::{json, Value};

#[test]
fn every_run_state_field_is_checked_before_resuming() {
    let recipe = small_recipe();
    let dir = scratch("run-state");
    let mut opts = options("pretrain1", &dir);
    opts.max_steps = Some(6);
    opts.stop_after = Some(4);
    run_stage(&recipe, &opts, &mut std::io::sink()).unwrap();
    let manifest_path = dir.join("pretrain1/checkpoints/step-000000004/manifest.json");
    let original: Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    assert_eq!(original["run"]["trainer"]["phase_step"], 4);
    let resume = opts.clone().with_resume();
    type Edit = fn(&mut Value);
    let cases: Vec<(Edit, &str)> = vec![
        (|m| m["run"]["trainer"]["phase_step"] = json!(50), "`trainer.phase_step` is 50, valid: 0..=6 (the steps of phase `pretrain1`)"),
        (|m| m["run"]["trainer"]["phase_index"] = json!(3), "`trainer.phase_index` is 3, valid: 0..1"),
        (|m| m["run"]["trainer"]["phase_steps"] = json!(12), "`trainer.phase_steps` is 12, valid: 6"),
        (|m| m["run"]["step"] = json!(1000), "`run.step` is 1000, valid: 4 (0 steps of the earlier phases + trainer.phase_step 4)"),
        (|m| m["run"]["phase"] = json!("nope"), "`run.phase` is \"nope\", valid: \"pretrain1\""),
        (|m| m["run"]["trainer"]["tokens"] = json!(7), "`trainer.tokens` is 7, valid: 1024"),
        (|m| m["run"]["data_cursor"]["taken"] = json!([1_000_000_000_000_000u64]), "`data_cursor.taken` is [1000000000000000], valid: at most"),
        (|m| m["run"]["data_cursor"]["taken"] = json!([1, 2]), "`data_cursor.taken` is [1, 2] (2 counts), valid: 1 counts, one per source of [\"web\"]"),
        (|m| m["run"]["data_cursor"]["sources"] = json!(["chat"]), "`data_cursor.sources` is [\"chat\"], valid: [\"web\"]"),
        (|m| m["run"]["data_cursor"]["seed"] = json!(5), "`data_cursor.seed` is 5"),
        (
            |m| {
                // Both copies moved on by one document: only the taken count contradicts them.
                m["run"]["data_cursor"]["rng_word_pos"] = json!("100");
                m["run"]["rng_state"]["data_rng_word_pos"] = json!("100");
            },
            "`data_cursor.rng_word_pos` is \"100\", valid: \"6\" (two words per document taken, [3])",
        ),
        (|m| m["run"]["rng_state"]["seed"] = json!(5), "`rng_state.seed` is 5, valid: 1234"),
        (
            |m| {
                m["run"]["trainer"]["guard"]["losses"].as_array_mut().unwrap().pop();
            },
            "`trainer.guard.losses length` is 3, valid: 4",
        ),
        (
            |m| {
                m["run"]["trainer"]["guard"]["grad_norms"].as_array_mut().unwrap().push(json!(0));
            },
            "`trainer.guard.grad_norms length` is 5, valid: 4",
        ),
        (
            |m| {
                let cursor = &mut m["run"]["data_cursor"];
                let taken = cursor["taken"][0].as_u64().unwrap();
                cursor["pending"] = json!({ "source": 0, "taken": taken + 5, "offset": 0 });
            },
            "`data_cursor.pending` is source 0 document",
        ),
    ];
    for (edit, expected) in cases {
        let mut manifest = original.clone();
        edit(&mut manifest);
        std::fs::write(
            &manifest_path,
            serde_json::to_string_pretty(&manifest).unwrap(),
        )
        .unwrap();
        let err = run_error(&recipe, &resume);
        assert!(
            err.starts_with(&format!("{}: run state field ", manifest_path.display()))
                && err.contains(expected)
                && err.contains("this checkpoint cannot continue this run"),
            "expected {expected:?} in: {err}"
        );
    }
    // Nothing was lost: the untouched checkpoint resumes and finishes the stage.
    std::fs::write(
        &manifest_path,
        serde_json::to_string_pretty(&original).unwrap(),
    )
    .unwrap();
    let report = run_stage(&recipe, &resume, &mut std::io::sink()).unwrap();
    assert!(report.completed);
    assert_eq!(report.logged.first().unwrap().step, 5);
}
