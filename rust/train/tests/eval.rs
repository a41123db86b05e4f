//! Held-out evaluation in the training loop: "eval" records per source every N steps and at
//! the end of the phase, on documents training never sees, reproducible from the checkpoint.

mod common;

use common::{options, scratch, small_recipe};
use kormo_checkpoint::Checkpoint;
use kormo_data::{Loader, PackingOptions, Source};
use kormo_model::{LossSum, Model};
use kormo_train::metrics::{read_records, EvalRecord};
use kormo_train::trainer::{run_stage, to_batch, MODEL_FILE};

#[test]
fn held_out_loss_is_logged_per_source_and_reproducible() {
    let mut recipe = small_recipe();
    recipe.file.eval.every_steps = 2;
    recipe.file.eval.holdout_documents = 10;
    recipe.file.eval.rows = 6;
    let dir = scratch("eval");
    let mut opts = options("pretrain2", &dir);
    opts.max_steps = Some(5);
    let mut out = Vec::new();
    run_stage(&recipe, &opts, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("eval (pretrain2): the last 10 documents of each source are held out"),
        "{text}"
    );
    assert!(
        text.contains("eval at step 4 |       chat | held-out loss"),
        "{text}"
    );

    let records: Vec<EvalRecord> =
        read_records(&dir.join("pretrain2/metrics.jsonl"), "eval").unwrap();
    // pretrain2 mixes chat, reasoning and web; evaluated after steps 2, 4 and 5 (phase end).
    let seen: Vec<(u64, &str)> = records
        .iter()
        .map(|r| (r.step, r.source.as_str()))
        .collect();
    assert_eq!(
        seen,
        [2, 4, 5]
            .iter()
            .flat_map(|&s| [(s, "chat"), (s, "reasoning"), (s, "web")])
            .collect::<Vec<_>>()
    );
    for r in &records {
        assert!(
            r.loss.is_finite() && r.loss > 0.0 && r.tokens > 0.0,
            "{r:?}"
        );
        assert!(
            (r.perplexity - r.loss.exp()).abs() <= 1e-9 * r.perplexity,
            "{r:?}"
        );
    }
    // Training lowers the held-out loss of the web source.
    let web: Vec<f64> = records
        .iter()
        .filter(|r| r.source == "web")
        .map(|r| r.loss)
        .collect();
    assert!(web[2] < web[0], "{web:?}");

    // The last record is the loss of the final weights on the held-out rows, rebuilt here
    // independently: the source's last 10 documents, packed as the phase packs, 6 rows.
    let checkpoint = Checkpoint::load(&dir.join("pretrain2/final")).unwrap();
    let mut model = Model::new(
        recipe.model.clone(),
        kormo_cpu::CpuOps::<f32>::with_threads(2),
        1,
    )
    .unwrap();
    let weights = checkpoint.file(MODEL_FILE).unwrap();
    for spec in model.param_specs().to_vec() {
        model
            .write_param(
                &spec.name,
                &weights.f32(&spec.name, Some(&spec.shape)).unwrap(),
            )
            .unwrap();
    }
    let phase = &recipe.stage("pretrain2").unwrap().phases[0];
    let source = Source::open("web", 1.0, &dir.join("data/web/manifest.json")).unwrap();
    let (_, held) = source.split_holdout(10).unwrap();
    let packing = PackingOptions {
        seq_len: phase.seq_len,
        specials: recipe.special_tokens(),
        positions: phase.positions,
        mask_think: phase.mask_think_token,
    };
    let mut loader = Loader::new(vec![held], packing, 0).unwrap();
    let batch = to_batch(loader.next_rows(6).unwrap());
    let loss: LossSum = model.evaluate(&batch).unwrap();
    let logged = records.iter().rev().find(|r| r.source == "web").unwrap();
    assert_eq!(loss.weight, logged.tokens);
    assert!(
        (loss.mean() - logged.loss).abs() <= 1e-5 * logged.loss,
        "{} vs {}",
        loss.mean(),
        logged.loss
    );
}
