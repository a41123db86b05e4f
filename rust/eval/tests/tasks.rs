//! Every task type on a small random model: choice log-likelihoods (the batched Ops scorer)
//! against the full forward pass of context + choice, acc/acc_norm, BoolQ-style binary
//! labels, exact match of generation, few-shot determinism, the in-loop records and the
//! `eval` binary end to end.

use std::path::{Path, PathBuf};

use kormo_cpu::CpuOps;
use kormo_eval::task::Task;
use kormo_eval::{in_loop_records, prompt, DownstreamSection, Packing, Scorer};
use kormo_generate::{Decoder, Limits, Sampler, Strategy};
use kormo_hf::Weights;
use kormo_model::{Batch, Model};
use kormo_tokenizer::train::{train, TrainConfig, WordCounts, KORMO_SPECIALS};
use kormo_tokenizer::{Pattern, Tokenizer};

const TEXT: &str = "The sky is blue. The grass is green. 하늘은 파랗다. 바다는 깊다. Is water wet? yes. Is fire cold? no.";

fn tokenizer() -> Tokenizer {
    let specials: Vec<String> = KORMO_SPECIALS.iter().map(|s| s.to_string()).collect();
    let mut counts = WordCounts::default();
    counts.add_text(TEXT, Pattern::Qwen2, &specials, usize::MAX);
    train(&counts.counts, &TrainConfig { specials, ..TrainConfig::kormo(300) }).unwrap()
}

mod common;

/// The test model, its vocabulary the tokenizer's (every id it can produce is one the
/// tokenizer can decode).
fn weights(seed: u64) -> Weights {
    common::weights(tokenizer().vocab_size(), seed)
}

/// Log-likelihood of `cont` after `ctx` from the training model's full forward pass.
fn reference_ll(w: &Weights, ctx: &[u32], cont: &[u32]) -> f64 {
    let mut model = w.to_model(CpuOps::<f32>::with_threads(1), Path::new("test")).unwrap();
    let tokens: Vec<u32> = ctx.iter().chain(cont).copied().collect();
    let logits = model.forward(&Batch::forward_only(&tokens)).unwrap();
    let v = w.config.vocab;
    (0..cont.len())
        .map(|i| {
            let row = &logits[(ctx.len() + i - 1) * v..(ctx.len() + i) * v];
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
            let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
            row[cont[i] as usize] as f64 - max - sum.ln()
        })
        .collect::<Vec<_>>()
        .iter()
        .sum()
}

fn cpu_model(w: &Weights) -> Model<CpuOps<f32>> {
    w.to_model(CpuOps::<f32>::with_threads(2), Path::new("test")).unwrap()
}

fn write_task(dir: &Path, name: &str, spec: &str, docs: &[&str]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(format!("{name}.jsonl")), docs.join("\n")).unwrap();
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, spec).unwrap();
    path
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kormo-eval-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

const ARC: &str = r#"{"task": "arc_tiny", "language": "en", "output_type": "multiple_choice", "test_split": "arc_tiny.jsonl",
  "doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_target": "{{answerKey}}", "doc_to_choice": "choices"}"#;
const ARC_DOCS: [&str; 3] = [
    r#"{"question": "What color is the sky?", "choices": ["blue", "green", "a deep red"], "answerKey": 0}"#,
    r#"{"question": "What color is grass?", "choices": ["blue", "green"], "answerKey": "green"}"#,
    r#"{"question": "하늘은?", "choices": ["파랗다", "깊다"], "answerKey": 1}"#,
];

#[test]
fn multiple_choice_log_likelihoods_match_the_full_forward_pass() {
    let (w, tok) = (weights(3), tokenizer());
    let task = Task::load(&write_task(&scratch("mc"), "arc_tiny", ARC, &ARC_DOCS)).unwrap();
    let (bos, eot) = (tok.special_id("<|BOS|>").unwrap(), tok.special_id("<|EOT|>").unwrap());
    let mut model = cpu_model(&w);
    let mut scorer = Scorer { model: &mut model, decoder: None, tok: &tok, bos, eot, packing: Packing::default() };
    let result = scorer.run(&task).unwrap();
    let mut accs = Vec::new();
    for (ex, doc) in result.examples.iter().zip(&task.docs) {
        let ctx = ex["context"].as_str().unwrap();
        let choices: Vec<String> = doc["choices"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
        let lls: Vec<f64> = ex["loglikelihoods"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        for (c, ll) in choices.iter().zip(&lls) {
            let (ctx_ids, cont) = kormo_eval::score::split_ids(&tok, ctx, &format!(" {c}"));
            let mut prefix = vec![bos];
            prefix.extend(ctx_ids);
            let want = reference_ll(&w, &prefix, &cont);
            assert!((ll - want).abs() < 1e-3 * want.abs().max(1.0), "choice {c:?}: {ll} vs full forward {want}");
        }
        let gold = ex["gold"].as_u64().unwrap() as usize;
        let best = (0..lls.len()).fold(0, |b, i| if lls[i] > lls[b] { i } else { b });
        assert_eq!(ex["acc"].as_f64().unwrap(), f64::from(best == gold));
        accs.push(f64::from(best == gold));
    }
    let acc = result.scores.iter().find(|s| s.metric == "acc").unwrap();
    assert_eq!(acc.value, accs.iter().sum::<f64>() / 3.0);
    assert_eq!(task.docs.len(), 3);
    assert_eq!(result.examples[1]["gold"], 1, "a target naming a choice's text selects it");
}

#[test]
fn acc_norm_divides_by_the_choice_length_in_characters() {
    use kormo_eval::metrics::{acc, acc_norm, mean_stderr};
    let choices = vec!["ab".to_string(), "파랗다요".to_string()];
    // -3/2 = -1.5 < -4/4 = -1 : acc picks 0, acc_norm picks 1 (4 characters, 12 bytes).
    assert_eq!(acc(&[-3.0, -4.0], 1), 0.0);
    assert_eq!(acc_norm(&[-3.0, -4.0], &choices, 1), 1.0);
    let (m, se) = mean_stderr(&[1.0, 0.0, 1.0, 1.0]);
    assert_eq!(m, 0.75);
    // Sample variance (n - 1) = 0.75 / 3 = 0.25; stderr = sqrt(0.25 / 4).
    assert!((se - 0.25).abs() < 1e-12, "stderr {se}");
}

#[test]
fn binary_tasks_take_boolean_labels() {
    let spec = r#"{"task": "boolq_tiny", "output_type": "multiple_choice", "test_split": "boolq_tiny.jsonl",
      "doc_to_text": "{{passage}}\nQuestion: {{question}}?\nAnswer:", "doc_to_target": "{{label}}", "doc_to_choice": ["no", "yes"]}"#;
    let docs = [r#"{"passage": "Water is wet.", "question": "is water wet", "label": true}"#, r#"{"passage": "Fire is hot.", "question": "is fire cold", "label": false}"#];
    let task = Task::load(&write_task(&scratch("boolq"), "boolq_tiny", spec, &docs)).unwrap();
    let (w, tok) = (weights(5), tokenizer());
    let mut model = cpu_model(&w);
    let mut scorer = Scorer { model: &mut model, decoder: None, tok: &tok, bos: tok.special_id("<|BOS|>").unwrap(), eot: tok.special_id("<|EOT|>").unwrap(), packing: Packing::default() };
    let r = scorer.run(&task).unwrap();
    assert_eq!(r.examples[0]["gold"], 1);
    assert_eq!(r.examples[1]["gold"], 0);
    assert_eq!(r.examples[0]["choices"], serde_json::json!(["no", "yes"]));
}

#[test]
fn generation_is_scored_by_exact_match() {
    let (w, tok) = (weights(7), tokenizer());
    let (bos, eot) = (tok.special_id("<|BOS|>").unwrap(), tok.special_id("<|EOT|>").unwrap());
    // The model's own greedy continuation is the gold of the first document, so it must match.
    let prompt_text = "Q: The sky is\nA:";
    let mut ids = vec![bos];
    ids.extend(kormo_generate::text::encode_plain(&tok, prompt_text));
    let mut d = Decoder::new(&w, 2);
    let g = kormo_generate::generate(&mut d, &mut Sampler::new(Strategy::new(0.0, 1.0).unwrap(), 0, w.config.vocab), &ids, &Limits { max_new_tokens: 4, stop_tokens: vec![eot], max_context: 64 }, |_| {}).unwrap();
    let bytes: Vec<u8> = g.tokens.iter().flat_map(|&t| tok.token_bytes(t).unwrap().to_vec()).collect();
    let own = String::from_utf8_lossy(&bytes).trim().to_string();
    assert!(!own.is_empty(), "pick another seed: greedy output {own:?}");
    let spec = r#"{"task": "gen_tiny", "output_type": "generate_until", "test_split": "gen_tiny.jsonl", "doc_to_text": "Q: {{q}}\nA:",
      "doc_to_target": "{{a}}", "until": ["\n\n"], "max_gen_toks": 4}"#;
    let docs = [serde_json::json!({"q": "The sky is", "a": own}).to_string(), serde_json::json!({"q": "The sky is", "a": "surely not this"}).to_string()];
    let docs: Vec<&str> = docs.iter().map(String::as_str).collect();
    let task = Task::load(&write_task(&scratch("gen"), "gen_tiny", spec, &docs)).unwrap();
    let (mut model, mut decoder) = (cpu_model(&w), Decoder::new(&w, 2));
    let r = Scorer { model: &mut model, decoder: Some(&mut decoder), tok: &tok, bos, eot, packing: Packing::default() }.run(&task).unwrap();
    assert_eq!(r.examples[0]["exact_match"], 1.0);
    assert_eq!(r.examples[1]["exact_match"], 0.0);
    assert_eq!(r.scores[0].metric, "exact_match");
    assert_eq!(r.scores[0].value, 0.5);
}

#[test]
fn few_shot_examples_are_the_harness_seeded_sample() {
    let docs: Vec<String> = (0..8).map(|i| format!(r#"{{"question": "q{i}", "choices": ["a", "b"], "answerKey": {}}}"#, i % 2)).collect();
    let docs: Vec<&str> = docs.iter().map(String::as_str).collect();
    let spec = ARC.replace("\"doc_to_choice\": \"choices\"", "\"doc_to_choice\": \"choices\", \"num_fewshot\": 2, \"target_delimiter\": \" \", \"fewshot_delimiter\": \"\\n\\n\"");
    let task = Task::load(&write_task(&scratch("fewshot"), "arc_tiny", &spec, &docs)).unwrap();
    let a = prompt::contexts(&task).unwrap();
    assert_eq!(a, prompt::contexts(&task).unwrap(), "same seed, same contexts");
    // CPython 3.11: r = random.Random(1234); [r.sample(range(8), 3) for _ in range(2)]
    //   -> [[7, 0, 6], [1, 6, 4]]; each question drops itself from its draw.
    assert_eq!(a[0], "Question: q7\nAnswer: b\n\nQuestion: q6\nAnswer: a\n\nQuestion: q0\nAnswer:");
    assert_eq!(a[1], "Question: q6\nAnswer: a\n\nQuestion: q4\nAnswer: a\n\nQuestion: q1\nAnswer:");
    let mut other = task.clone();
    other.spec.fewshot_seed = 42;
    assert_ne!(prompt::contexts(&other).unwrap(), a);
}

#[test]
fn in_loop_records_have_one_row_per_task_metric_and_language() {
    let dir = scratch("inloop");
    let arc = write_task(&dir, "arc_tiny", ARC, &ARC_DOCS);
    let section: DownstreamSection = toml_like(&format!(r#"{{"tasks": [{:?}], "interval": 100}}"#, arc.display().to_string()));
    let tasks = kormo_eval::load_tasks(&section).unwrap();
    let records = in_loop_records(&weights(3), &tokenizer(), &tasks, 200, 2).unwrap();
    let kinds: Vec<(String, String)> = records.iter().map(|r| (r["task"].as_str().unwrap().into(), r["metric"].as_str().unwrap().into())).collect();
    assert_eq!(kinds, [("arc_tiny", "acc"), ("arc_tiny", "acc_norm"), ("mean_en", "acc"), ("mean_en", "acc_norm")].map(|(a, b)| (a.to_string(), b.to_string())));
    assert!(records.iter().all(|r| r["kind"] == "downstream" && r["step"] == 200 && r["language"] == "en"));
    assert!(kormo_eval::load_tasks(&DownstreamSection { interval: 0, ..section }).is_err());
}

fn toml_like(json: &str) -> DownstreamSection {
    serde_json::from_str(json).unwrap()
}

#[test]
fn chat_generation_runs_in_the_chat_template_with_either_thinking_setting() {
    let (w, tok) = (weights(7), tokenizer());
    let (bos, eot) = (tok.special_id("<|BOS|>").unwrap(), tok.special_id("<|EOT|>").unwrap());
    for thinking in [false, true] {
        let spec = format!(r#"{{"task": "chat_tiny", "output_type": "generate_until", "test_split": "chat_tiny.jsonl", "doc_to_text": "{{{{q}}}}",
          "doc_to_target": "{{{{a}}}}", "max_gen_toks": 3, "chat": true, "thinking": {thinking}}}"#);
        let task = Task::load(&write_task(&scratch(&format!("chat{thinking}")), "chat_tiny", &spec, &[r#"{"q": "하늘은?", "a": "파랗다"}"#])).unwrap();
        let (mut model, mut decoder) = (cpu_model(&w), Decoder::new(&w, 2));
        let r = Scorer { model: &mut model, decoder: Some(&mut decoder), tok: &tok, bos, eot, packing: Packing::default() }.run(&task).unwrap();
        assert_eq!(r.examples[0]["context"], "하늘은?");
        assert_eq!(r.scores[0].metric, "exact_match");
    }
}
