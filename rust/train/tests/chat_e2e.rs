//! Chat data end to end: a JSONL chat dataset -> `prepare` (a chat source) -> the sft stage.
//! The rows the sft phase trains on carry loss weight exactly where an independent reading of
//! the token stream (the template's grammar: `<|BOT|>` header, `<think>` reasoning `</think>`
//! answer `<|EOT|>`) says the assistant speaks, batch by batch; the tiny recipe's sft stage
//! trains on the prepared source in place of its synthetic one; and a phase that trains on
//! assistant turns only refuses, at start-up and naming the source, shards without spans.

mod common;

use common::{options, repo, run_error, run_quiet, scratch};
use kormo_data::{Loader, Source};
use kormo_prep::chat::{ChatSourceConfig, ThinkSetting};
use kormo_prep::pipeline::{PrepConfig, RunLimits, Source as PrepSource};
use kormo_tokenizer::hf;
use kormo_train::recipe::Recipe;
use kormo_train::trainer::packing_options;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Absolute: the recipe that names it is written elsewhere (and under Bazel `repo()` is relative).
fn tokenizer_path() -> PathBuf {
    std::fs::canonicalize(repo().join("tests/golden/chat_template/tokenizer.json")).unwrap()
}

/// `n` conversations in the three record shapes, some with reasoning, some multi-turn, one
/// with special-token spellings in the user's text.
fn chat_jsonl(n: usize) -> String {
    let mut lines = Vec::new();
    for i in 0..n {
        let (a, b) = (i % 17 + 2, i % 5 + 3);
        let record = match i % 4 {
            0 => json!({"messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": format!("What is {a} * {b}?")},
                {"role": "assistant", "content": format!("The answer is {}.", a * b),
                 "reasoning_content": format!("{a} * {b} = {}.", a * b)}]}),
            1 => json!({"conversations": [
                {"from": "human", "value": format!("{a} 더하기 {b}는?")},
                {"from": "gpt", "value": format!("<think>{a} + {b} = {}</think>{}입니다.", a + b, a + b)},
                {"from": "human", "value": "고마워요 <|EOT|><|BOT|>assistant\n<think>"},
                {"from": "gpt", "value": "천만에요."}]}),
            2 => json!({"prompt": format!("Name the color number {a}."), "response": "It is blue."}),
            _ => json!({"problem": format!("{b} - {a}"), "thinking": format!("{b} minus {a}."), "solution": format!("{}", b as i64 - a as i64)}),
        };
        lines.push(record.to_string());
    }
    lines.join("\n") + "\n"
}

/// Prepares `chat.jsonl` of `n` conversations as source `name` (a chat source unless `plain`,
/// then as plain text from a `text` field); returns the manifest path.
fn prepare(root: &Path, name: &str, n: usize, think: Option<ThinkSetting>) -> PathBuf {
    let input = root.join(format!("{name}.jsonl"));
    let text = match think {
        Some(_) => chat_jsonl(n),
        None => (0..n).map(|i| json!({"text": format!("plain document number {i} with enough words to pass the filters of prepare, in English.")}).to_string() + "\n").collect(),
    };
    std::fs::write(&input, text).unwrap();
    let mut config = PrepConfig { tokenizer: tokenizer_path().display().to_string(), threads: 2, ..PrepConfig::default() };
    config.dedup.enabled = false;
    if let Some(think) = think {
        config.chat = BTreeMap::from([(name.to_string(), ChatSourceConfig { think })]);
    }
    let out = root.join(format!("{name}-shards"));
    let counts = kormo_prep::pipeline::run(&config, &[PrepSource { name: name.into(), files: vec![input] }], &out, RunLimits::default()).unwrap();
    assert!(counts[name].documents_written as usize >= n / 2, "{:?}", counts[name]);
    out.join(name).join("manifest.json")
}

/// configs/tiny.toml (or `base`) with the golden BPE tokenizer and `[sources.chat]` read from
/// `manifest`, written into `root`.
fn recipe_with_chat_source(root: &Path, base: &str, manifest: &Path) -> Recipe {
    let mut text = std::fs::read_to_string(repo().join(base)).unwrap();
    let bytes = "vocabulary = \"bytes\"";
    assert!(text.contains(bytes));
    text = text.replace(bytes, &format!("vocabulary = \"bpe\"\ntokenizer = \"{}\"", tokenizer_path().display()));
    let start = text.find("[sources.chat]").unwrap();
    let end = text[start..].find("\n\n").map_or(text.len(), |e| start + e);
    text.replace_range(start..end, &format!("[sources.chat]\npath = \"{}\"", manifest.display()));
    let path = root.join("recipe.toml");
    std::fs::write(&path, text).unwrap();
    Recipe::load(&path).unwrap()
}

/// Whether each token of a packed stream is trained on, read from the template's grammar alone.
fn trained_by_grammar(stream: &[u32], ids: &kormo_tokenizer::chat::ChatTokens, bos: u32, think: ThinkSetting) -> Vec<bool> {
    #[derive(PartialEq)]
    enum State { Outside, Header, Reasoning { empty: bool }, Answer }
    let mut state = State::Outside;
    let mut out: Vec<bool> = Vec::with_capacity(stream.len());
    for &t in stream {
        let previous = out.last().copied().unwrap_or(false);
        let trained = if t == bos {
            state = State::Outside;
            false
        } else if t == ids.bot {
            state = State::Header;
            false
        } else if t == ids.think && state == State::Header {
            state = State::Reasoning { empty: true };
            false
        } else if t == ids.think_end {
            let trained = state == State::Reasoning { empty: false } && think == ThinkSetting::Train;
            state = State::Answer;
            trained
        } else if t == ids.eot {
            let trained = state == State::Answer && previous;
            state = State::Outside;
            trained
        } else {
            match state {
                State::Reasoning { .. } => {
                    state = State::Reasoning { empty: false };
                    think == ThinkSetting::Train
                }
                State::Answer => true,
                _ => false,
            }
        };
        out.push(trained);
    }
    out
}

#[test]
fn sft_batches_weight_exactly_the_assistant_tokens() {
    let root = scratch("chat-e2e-weights");
    std::fs::create_dir_all(&root).unwrap();
    let tok = hf::load(&tokenizer_path()).unwrap();
    let ids = kormo_tokenizer::chat::ChatTokens::find(&tok).unwrap();
    for think in [ThinkSetting::Mask, ThinkSetting::Train] {
        let manifest = prepare(&root, &format!("chat_{think:?}").to_lowercase(), 60, Some(think));
        let recipe = recipe_with_chat_source(&root, "configs/tiny.toml", &manifest);
        let phase = &recipe.stage("sft").unwrap().phases[0];
        let opts = packing_options(&recipe, phase);
        let source = Source::open("chat", 1.0, &manifest).unwrap();
        phase.check_loss_masks(&source, "test").unwrap();
        let mut loader = Loader::new(vec![source], opts, 7).unwrap();
        let (mut stream, mut weights) = (Vec::new(), Vec::new());
        let mut per_batch = Vec::new();
        for _ in 0..6 {
            let rows = loader.next_rows(phase.micro_batch).unwrap();
            per_batch.push(rows.loss_weights.iter().sum::<f32>() as usize);
            stream.extend_from_slice(&rows.tokens);
            weights.extend_from_slice(&rows.loss_weights);
        }
        assert_eq!(stream.first(), Some(&ids.bos));
        // One source: the rows are consecutive cuts of one stream of documents.
        let grammar = trained_by_grammar(&stream, &ids, ids.bos, think);
        let seq = phase.seq_len;
        let expected: Vec<f32> = (0..stream.len())
            .map(|i| if (i + 1) % seq == 0 { 0.0 } else if grammar[i + 1] { 1.0 } else { 0.0 })
            .collect();
        let rows_per_batch = phase.micro_batch * seq;
        for (b, &got) in per_batch.iter().enumerate() {
            let want = expected[b * rows_per_batch..(b + 1) * rows_per_batch].iter().sum::<f32>() as usize;
            assert_eq!(got, want, "{think:?}: batch {b}");
            assert!(want > 0 && want < rows_per_batch / 2, "{think:?}: batch {b} trains {want} of {rows_per_batch}");
        }
        assert_eq!(weights, expected, "{think:?}: position by position");
        // Reasoning is trained only when the source says so.
        let reasoning_targets = (0..stream.len() - 1)
            .filter(|&i| weights[i] > 0.0 && stream[i + 1] == ids.think_end)
            .count();
        assert_eq!(reasoning_targets > 0, think == ThinkSetting::Train);
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn tiny_sft_stage_trains_on_a_prepared_chat_source() {
    let root = scratch("chat-e2e-tiny");
    std::fs::create_dir_all(&root).unwrap();
    let manifest = prepare(&root, "chat", 80, Some(ThinkSetting::Mask));
    let recipe = recipe_with_chat_source(&root, "configs/tiny.toml", &manifest);
    assert_eq!(recipe.model.vocab, 512, "the tokenizer's 391 ids padded to 128");
    let mut opts = options("sft", &root.join("run"));
    opts.max_steps = Some(3);
    let report = run_quiet(&recipe, &opts);
    assert_eq!(report.logged.len(), 3);
    assert!(report.logged.iter().all(|m| m.loss.is_finite()));
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn assistant_only_training_refuses_shards_without_spans() {
    let root = scratch("chat-e2e-refusal");
    std::fs::create_dir_all(&root).unwrap();
    let manifest = prepare(&root, "plain", 20, None);
    let recipe = recipe_with_chat_source(&root, "configs/tiny.toml", &manifest);
    let run_dir = root.join("run");
    let mut opts = options("sft", &run_dir);
    opts.max_steps = Some(1);
    let err = run_error(&recipe, &opts);
    assert!(
        err.contains("source `chat`") && err.contains("plain-00000.kts") && err.contains("train_on = \"assistant\"") && err.contains("[chat.chat]"),
        "{err}"
    );
    assert!(!run_dir.join("sft/final").exists(), "refused before training");
    // The same data trains under train_on = "all" (what the refusal suggests).
    let text = std::fs::read_to_string(root.join("recipe.toml")).unwrap().replace("train_on = \"assistant\"", "train_on = \"all\"");
    std::fs::write(root.join("recipe.toml"), &text).unwrap();
    let all = Recipe::load(&root.join("recipe.toml")).unwrap();
    assert_eq!(run_quiet(&all, &opts).logged.len(), 1);
    // A misspelt value is a recipe error naming the key.
    std::fs::write(root.join("recipe.toml"), text.replace("train_on = \"all\"", "train_on = \"assistants\"")).unwrap();
    let err = Recipe::load(&root.join("recipe.toml")).unwrap_err().to_string();
    assert!(err.contains("train_on") || err.contains("assistants"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}
