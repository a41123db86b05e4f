//! Recipe files: the shipped ones load, and every kind of mistake names its file and key.

mod common;

use common::repo;
use kormo_train::recipe::{Recipe, RecipeError, ScheduleKind, TokensConfig, TINY_RECIPE};
use std::path::Path;

fn parse(text: &str) -> Result<Recipe, RecipeError> {
    Recipe::parse(text, "test.toml", Path::new("."))
}

/// The tiny recipe with `from` replaced by `to` (which must occur).
fn tiny_with(from: &str, to: &str) -> String {
    assert!(TINY_RECIPE.contains(from), "tiny.toml lacks `{from}`");
    TINY_RECIPE.replacen(from, to, 1)
}

fn expect_error(text: &str, key: &str, needle: &str) {
    let err = parse(text).unwrap_err();
    let shown = err.to_string();
    assert!(err.file.starts_with("test.toml"), "{shown}");
    assert_eq!(err.key, key, "{shown}");
    assert!(shown.contains(needle), "expected `{needle}` in: {shown}");
}

#[test]
fn shipped_recipes_load() {
    let tiny = Recipe::resolve("tiny", &repo()).unwrap();
    assert_eq!(tiny.file.name, "tiny");
    assert_eq!(tiny.file.tokens, TokensConfig::Bytes);
    let midtrain = tiny.stage("midtrain").unwrap();
    let names: Vec<&str> = midtrain.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["long_context", "reasoning"]);
    assert!(
        midtrain.phases[0].seq_len > midtrain.phases[1].seq_len,
        "long context uses longer rows"
    );
    assert!(midtrain.phases[1].mask_think_token);
    // The embedded copy is the file on disk.
    let from_disk = Recipe::load(&repo().join("configs/tiny.toml")).unwrap();
    assert_eq!(from_disk.file, tiny.file);
    assert_eq!(from_disk.hash(), tiny.hash());

    let big = Recipe::resolve("kormo-10.8b", &repo()).unwrap();
    assert_eq!(big.model.param_count(), 10_756_624_384);
    assert_eq!(big.file.optimizer.lr, 7e-4);
    assert_eq!(
        (
            big.file.optimizer.beta1,
            big.file.optimizer.beta2,
            big.file.optimizer.eps
        ),
        (0.9, 0.95, 1e-8)
    );
    assert_eq!(
        (
            big.file.optimizer.weight_decay,
            big.file.optimizer.grad_clip
        ),
        (0.033, 1.0)
    );
    assert_eq!(big.file.schedule.kind, ScheduleKind::Wsd);
    assert_eq!(
        (
            big.file.schedule.warmup_fraction,
            big.file.schedule.min_lr_ratio
        ),
        (0.03, 0.05)
    );
    let tokens = |stage: &str, i: usize| big.stage(stage).unwrap().phases[i].tokens.unwrap();
    assert_eq!(tokens("pretrain1", 0), 1_000_000_000_000);
    assert_eq!(tokens("pretrain2", 0), 1_800_000_000_000);
    assert_eq!(tokens("midtrain", 0), 10_300_000_000);
    assert_eq!(tokens("midtrain", 1), 157_800_000_000);
    assert_eq!(tokens("sft", 0), 8_020_000_000);
    assert_eq!(big.stage("pretrain1").unwrap().phases[0].seq_len, 4096);
    assert_eq!(big.stage("midtrain").unwrap().phases[0].seq_len, 32768);
    assert_eq!(big.stage("midtrain").unwrap().init, "pretrain2");
    assert_eq!(big.special_tokens().bos, 125030);
    assert_eq!(big.special_tokens().think, 125033);

    let proxy = Recipe::resolve("proxy-1b", &repo()).unwrap();
    assert_eq!(proxy.model.param_count(), 1_000_398_336);
    assert_ne!(proxy.hash(), big.hash());
}

#[test]
fn phase_length_from_tokens_rounds_up_to_steps() {
    let big = Recipe::resolve("kormo-10.8b", &repo()).unwrap();
    let phase = &big.stage("pretrain1").unwrap().phases[0];
    assert_eq!(phase.tokens_per_step(), 4 * 256 * 4096);
    assert_eq!(
        phase.total_steps(),
        1_000_000_000_000u64.div_ceil(4 * 256 * 4096)
    );
}

#[test]
fn unknown_key_is_named() {
    expect_error(
        &tiny_with("grad_clip = 1.0", "grad_clip = 1.0\ngrad_clipp = 2.0"),
        "optimizer.grad_clipp",
        "unknown field `grad_clipp`",
    );
    expect_error(
        &tiny_with("steps = 90", "steps = 90\nseq_length = 3"),
        "stages.midtrain.phases[1].seq_length",
        "unknown field",
    );
    expect_error(
        &tiny_with(
            "[stages.sft]",
            "[stages.sft2]\ninit = \"scratch\"\n[stages.sft]",
        ),
        "stages.sft2",
        "unknown field `sft2`",
    );
    expect_error(
        &tiny_with("preset = \"tiny\"", "preset = \"tiny\"\nffn_dim = 3"),
        "model.ffn_dim",
        "unknown model field",
    );
}

#[test]
fn missing_key_is_named() {
    expect_error(
        &tiny_with("beta2 = 0.95\n", ""),
        "optimizer.beta2",
        "missing field `beta2`",
    );
    expect_error(
        &tiny_with("seed = 1234\n", ""),
        "seed",
        "missing field `seed`",
    );
    expect_error(
        &tiny_with("seq_len = 512\n", ""),
        "stages.midtrain.phases[0].seq_len",
        "missing field `seq_len`",
    );
    expect_error(
        &tiny_with("preset = \"tiny\"\n", ""),
        "model.preset",
        "missing",
    );
    expect_error(
        &tiny_with("steps = 60\n", ""),
        "stages.midtrain.phases[0]",
        "exactly one of `tokens` or `steps`",
    );
}

#[test]
fn bad_value_is_named() {
    expect_error(
        &tiny_with("lr = 3e-3", "lr = \"fast\""),
        "optimizer.lr",
        "invalid type",
    );
    expect_error(
        &tiny_with("lr = 3e-3", "lr = -1.0"),
        "optimizer.lr",
        "positive",
    );
    expect_error(
        &tiny_with("seq_len = 512", "seq_len = -4"),
        "stages.midtrain.phases[0].seq_len",
        "invalid value",
    );
    expect_error(
        &tiny_with("seq_len = 512", "seq_len = 1"),
        "stages.midtrain.phases[0].seq_len",
        "at least 2",
    );
    expect_error(
        &tiny_with("warmup_fraction = 0.03", "warmup_fraction = 1.5"),
        "schedule.warmup_fraction",
        "[0, 1]",
    );
    expect_error(
        &tiny_with("kind = \"wsd\"", "kind = \"linear\""),
        "schedule.kind",
        "unknown variant",
    );
    expect_error(
        &tiny_with("mixture = { web = 1.0 }", "mixture = { webb = 1.0 }"),
        "stages.pretrain1.phases[0].mixture.webb",
        "not defined under [sources]",
    );
    expect_error(
        &tiny_with("mixture = { web = 1.0 }", "mixture = { web = 0.0 }"),
        "stages.pretrain1.phases[0].mixture.web",
        "weight 0",
    );
    expect_error(
        &tiny_with("init = \"pretrain2\"", "init = \"sft\""),
        "stages.midtrain.init",
        "earlier stage",
    );
    expect_error(
        &tiny_with("preset = \"tiny\"", "preset = \"huge\""),
        "model.preset",
        "unknown preset `huge`",
    );
    expect_error(
        &tiny_with("preset = \"tiny\"", "preset = \"tiny\"\nkv_heads = 3"),
        "model.kv_heads",
        "must divide",
    );
    expect_error(
        &tiny_with("preset = \"tiny\"", "preset = \"tiny\"\nhidden = \"wide\""),
        "model",
        "invalid type",
    );
    expect_error(
        &tiny_with("synthetic = \"chat\"", "synthetic = \"chat\"\npath = \"x\""),
        "sources.chat",
        "exactly one of `path` or `synthetic`",
    );
    expect_error(
        &tiny_with("name = \"reasoning\"", "name = \"long_context\""),
        "stages.midtrain.phases[1].name",
        "used twice",
    );
    expect_error("name = \"x\"\nseed = [", "seed", "");
}

#[test]
fn missing_file_is_named() {
    let path = repo().join("configs/does-not-exist.toml");
    let err = Recipe::resolve(path.to_str().unwrap(), &repo()).unwrap_err();
    assert!(
        err.to_string().contains("does-not-exist.toml")
            && err.to_string().contains("cannot read recipe"),
        "{err}"
    );
}

#[test]
fn phase_overrides_apply() {
    let tiny = Recipe::resolve("tiny", &repo()).unwrap();
    let sft = &tiny.stage("sft").unwrap().phases[0];
    let (lr, schedule) = tiny.phase_schedule(sft);
    assert_eq!(lr, 1e-3);
    assert_eq!(schedule, tiny.file.schedule);
    let big = Recipe::resolve("kormo-10.8b", &repo()).unwrap();
    let (lr, schedule) = big.phase_schedule(&big.stage("sft").unwrap().phases[0]);
    assert_eq!(lr, 1e-5);
    assert_eq!(schedule.kind, ScheduleKind::Cosine);
}

#[test]
fn stability_and_eval_tables() {
    // Both tables are optional, with the documented defaults.
    let tiny = parse(TINY_RECIPE).unwrap();
    let st = tiny.file.stability;
    assert_eq!(
        (
            st.outlier_window,
            st.outlier_threshold,
            st.outlier_warmup,
            st.nonfinite_retries,
            st.z_loss
        ),
        (128, 5.0, 64, 3, 0.0)
    );
    assert_eq!(tiny.file.eval.every_steps, 0);
    let with = |tables: &str| tiny_with("[sources.web]", &format!("{tables}\n[sources.web]"));
    let custom = parse(&with(
        "[stability]\nz_loss = 1e-5\noutlier_window = 32\noutlier_warmup = 8\n\
         [eval]\nevery_steps = 25\nholdout_documents = 40\nrows = 16",
    ))
    .unwrap();
    assert_eq!(custom.file.stability.z_loss, 1e-5);
    assert_eq!(
        (
            custom.file.stability.outlier_window,
            custom.file.stability.outlier_threshold
        ),
        (32, 5.0)
    );
    assert_eq!(
        (
            custom.file.eval.every_steps,
            custom.file.eval.holdout_documents,
            custom.file.eval.rows
        ),
        (25, 40, 16)
    );
    assert_ne!(custom.hash(), tiny.hash());
    expect_error(
        &with("[stability]\nz_los = 1e-5"),
        "stability.z_los",
        "unknown field",
    );
    expect_error(
        &with("[stability]\nz_loss = -1.0"),
        "stability.z_loss",
        ">= 0",
    );
    expect_error(
        &with("[stability]\noutlier_window = 16\noutlier_warmup = 32"),
        "stability.outlier_warmup",
        "[2, outlier_window = 16]",
    );
    expect_error(
        &with("[stability]\noutlier_threshold = -5.0"),
        "stability.outlier_threshold",
        ">= 0",
    );
    expect_error(
        &with("[eval]\nevery_steps = 10\nrows = 0"),
        "eval.rows",
        "at least 1",
    );
    expect_error(
        &with("[eval]\nevery_steps = 10\nholdout_documents = 0"),
        "eval.holdout_documents",
        "at least 1",
    );
    expect_error(
        &with("[eval]\nevry_steps = 10"),
        "eval.evry_steps",
        "unknown field",
    );
}

#[test]
fn mistakes_are_reported_where_they_are() {
    // A missing stage table is a key of `stages`, not of the stage table before it.
    let start = TINY_RECIPE.find("[stages.pretrain2]").unwrap();
    let end = TINY_RECIPE.find("[stages.midtrain]").unwrap();
    let no_pretrain2 = format!("{}{}", &TINY_RECIPE[..start], &TINY_RECIPE[end..]);
    expect_error(
        &no_pretrain2,
        "stages.pretrain2",
        "missing field `pretrain2`",
    );
    // A missing key inside a stage table is still that table's.
    expect_error(
        &TINY_RECIPE.replacen("init = \"pretrain1\"\n", "", 1),
        "stages.pretrain2.init",
        "missing field `init`",
    );
    // The same misspelling in every phase: reported at its first line, naming the others.
    let misspelled = TINY_RECIPE.replace("grad_accum = 1", "grad_acum = 1");
    let first = TINY_RECIPE[..TINY_RECIPE.find("grad_accum = 1").unwrap()]
        .matches('\n')
        .count()
        + 1;
    let err = parse(&misspelled).unwrap_err();
    assert_eq!(err.file, format!("test.toml:{first}"), "{err}");
    assert_eq!(err.key, "stages.pretrain1.phases[0].grad_acum", "{err}");
    assert!(err.message.contains("(also on line "), "{err}");
    // The same key valid in another kind of table is not taken for the mistake.
    expect_error(
        &tiny_with("grad_clip = 1.0", "grad_clip = 1.0\nsteps = 3"),
        "optimizer.steps",
        "unknown field `steps`",
    );
    // A zero checkpoint interval is refused like a zero keep_last.
    expect_error(
        &tiny_with("every_steps = 50", "every_steps = 0"),
        "checkpoint.every_steps",
        "must be at least 1",
    );
}

#[test]
fn deterministic_mode_is_a_stability_key_that_keeps_the_hash_when_off() {
    let plain = parse(TINY_RECIPE).unwrap();
    assert!(!plain.file.stability.deterministic, "off by default");
    let with = |value: &str| format!("{TINY_RECIPE}\n[stability]\ndeterministic = {value}\n");
    let on = parse(&with("true")).unwrap();
    assert!(on.file.stability.deterministic);
    let off = parse(&with("false")).unwrap();
    assert_eq!(off.hash(), plain.hash(), "off is today's recipe, to the hash");
    assert_ne!(on.hash(), plain.hash(), "on changes what the kernels compute");
    expect_error(&with("\"yes\""), "stability.deterministic", "bool");
}

#[test]
fn attention_mask_is_document_by_default_causal_or_xlda_on_request() {
    use kormo_train::recipe::MaskMode;
    let plain = parse(TINY_RECIPE).unwrap();
    assert_eq!(plain.mask(), MaskMode::Document);
    let with = |value: &str| format!("{TINY_RECIPE}\n[attention]\nmask = \"{value}\"\n");
    let document = parse(&with("document")).unwrap();
    assert_eq!(document.hash(), plain.hash(), "the default written out is today's recipe");
    let causal = parse(&with("causal")).unwrap();
    assert_eq!(causal.mask(), MaskMode::Causal);
    assert_ne!(causal.hash(), plain.hash());
    let xlda = parse(&with("xlda")).unwrap();
    assert_eq!(xlda.mask(), MaskMode::Xlda);
    assert_ne!(xlda.hash(), plain.hash());
    assert_ne!(xlda.hash(), causal.hash());
    // A misspelt value is named, with the values it could have meant.
    expect_error(&with("xdla"), "attention.mask", "unknown variant `xdla`");
    expect_error(&with("xdla"), "attention.mask", "`xlda`");
    expect_error(&with("XLDA"), "attention.mask", "`document`, `causal`, `xlda`");
}
