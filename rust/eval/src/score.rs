//! Running a task through a model: log-likelihoods of choices and greedy generations.
//!
//! Each multiple-choice question runs its context once through the KV-cached decoder; every
//! choice is then scored as a continuation from the cached context (the cache is truncated
//! back to the context between choices), so the shared context costs one forward pass per
//! question, not one per choice. Tokenisation follows the harness: trailing whitespace of the
//! context move to the continuation, the continuation's ids are those of
//! encode(context + continuation) after the context's ids, and `<|BOS|>` starts every context.

use std::time::Instant;

use kormo_generate::text::encode_plain;
use kormo_generate::{generate, Decoder, Limits, Sampler, Strategy};
use kormo_tokenizer::Tokenizer;
use serde_json::{json, Value};

use crate::metrics::{acc, acc_norm, mean_stderr};
use crate::prompt::contexts;
use crate::task::{choices, gold_index, target_text, OutputType, Task};

/// One metric of one task.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub metric: &'static str,
    pub value: f64,
    pub stderr: f64,
}

/// A scored task: its metrics, per-example values and throughput.
#[derive(Debug, Clone)]
pub struct TaskResult {
    pub task: String,
    pub language: Option<String>,
    pub shots: usize,
    pub scores: Vec<Score>,
    pub examples: Vec<Value>,
    pub questions_per_s: f64,
}

/// The model and tokenizer a task runs on.
pub struct Scorer<'a> {
    pub decoder: &'a mut Decoder,
    pub tok: &'a Tokenizer,
    pub bos: u32,
    pub eot: u32,
}

fn log_softmax_at(logits: &[f32], id: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    logits[id as usize] as f64 - max - sum.ln()
}

/// Context and continuation ids the harness's way.
pub fn split_ids(tok: &Tokenizer, context: &str, continuation: &str) -> (Vec<u32>, Vec<u32>) {
    let trimmed = context.trim_end();
    let moved = &context[trimmed.len()..];
    let ctx = encode_plain(tok, trimmed);
    let whole = encode_plain(tok, &format!("{trimmed}{moved}{continuation}"));
    let cont = whole[ctx.len().min(whole.len())..].to_vec();
    (ctx, cont)
}

impl Scorer<'_> {
    /// Log-likelihood of each continuation after `context` and whether it is the greedy one.
    pub fn loglikelihoods(&mut self, context: &str, continuations: &[String]) -> Result<Vec<(f64, bool)>, String> {
        let mut prefix = vec![self.bos];
        prefix.extend(encode_plain(self.tok, context.trim_end()));
        self.decoder.reset();
        let last = self.decoder.extend(&prefix);
        let mut out = Vec::with_capacity(continuations.len());
        for c in continuations {
            let (_, cont) = split_ids(self.tok, context, c);
            if cont.is_empty() {
                return Err(format!("choice {c:?} has no tokens after the context"));
            }
            self.decoder.truncate(prefix.len());
            let all = self.decoder.extend_all(&cont);
            let vocab = self.decoder.config().vocab;
            let mut ll = 0.0;
            let mut greedy = true;
            for (i, &id) in cont.iter().enumerate() {
                let logits = if i == 0 { &last[..] } else { &all[(i - 1) * vocab..i * vocab] };
                ll += log_softmax_at(logits, id);
                greedy &= kormo_generate::sampling::argmax(logits) == id;
            }
            out.push((ll, greedy));
        }
        Ok(out)
    }

    /// Scores every document of `task`.
    pub fn run(&mut self, task: &Task) -> Result<TaskResult, String> {
        let start = Instant::now();
        let spec = &task.spec;
        let ctxs = contexts(task)?;
        let mut examples = Vec::with_capacity(ctxs.len());
        let mut per_metric: Vec<(&'static str, Vec<f64>)> = Vec::new();
        let mut push = |name: &'static str, v: f64| match per_metric.iter_mut().find(|(n, _)| *n == name) {
            Some((_, vals)) => vals.push(v),
            None => per_metric.push((name, vec![v])),
        };
        for (doc, ctx) in task.docs.iter().zip(&ctxs) {
            match spec.output_type {
                OutputType::MultipleChoice => {
                    let ch = choices(spec, doc)?;
                    let gold = gold_index(spec, doc, &ch)?;
                    let conts: Vec<String> = ch.iter().map(|c| format!("{}{c}", spec.target_delimiter)).collect();
                    let lls: Vec<f64> = self.loglikelihoods(ctx, &conts)?.into_iter().map(|(ll, _)| ll).collect();
                    let (a, an) = (acc(&lls, gold), acc_norm(&lls, &ch, gold));
                    push("acc", a);
                    push("acc_norm", an);
                    examples.push(json!({"context": ctx, "choices": ch, "gold": gold, "loglikelihoods": lls, "acc": a, "acc_norm": an}));
                }
                OutputType::GenerateUntil => {
                    let gold = target_text(spec, doc)?;
                    let text = self.generate(ctx, spec.chat, spec.thinking, spec.until.clone().unwrap_or_else(|| vec!["\n\n".into()]), spec.max_gen_toks.unwrap_or(256))?;
                    let em = f64::from(text.trim() == gold.trim());
                    push("exact_match", em);
                    examples.push(json!({"context": ctx, "target": gold, "generated": text, "exact_match": em}));
                }
            }
        }
        let scores = per_metric.iter().map(|(m, v)| {
            let (value, stderr) = mean_stderr(v);
            Score { metric: m, value, stderr }
        });
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        Ok(TaskResult { task: spec.task.clone(), language: spec.language.clone(), shots: spec.num_fewshot, scores: scores.collect(), questions_per_s: task.docs.len() as f64 / secs, examples })
    }

    /// Greedy generation after `context` until a stop string, `<|EOT|>` or `max_new` tokens.
    fn generate(&mut self, context: &str, chat: bool, thinking: bool, until: Vec<String>, max_new: usize) -> Result<String, String> {
        let prompt = if chat {
            kormo_generate::text::chat_prompt(self.tok, &[("user", context)], thinking)?
        } else {
            let mut p = vec![self.bos];
            p.extend(encode_plain(self.tok, context));
            p
        };
        self.decoder.reset();
        let limits = Limits { max_new_tokens: max_new, stop_tokens: vec![self.eot], max_context: prompt.len() + max_new + 1 };
        let mut sampler = Sampler::new(Strategy::new(0.0, 1.0)?, 0, self.decoder.config().vocab);
        let g = generate(self.decoder, &mut sampler, &prompt, &limits, |_| {})?;
        let bytes: Vec<u8> = g.tokens.iter().flat_map(|&t| self.tok.token_bytes(t).unwrap_or(b"").to_vec()).collect();
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        if let Some(cut) = until.iter().filter_map(|u| text.find(u.as_str())).min() {
            text.truncate(cut);
        }
        if chat && thinking {
            if let Some(end) = text.find("</think>") {
                text = text[end + "</think>".len()..].to_string();
            }
        }
        Ok(text)
    }
}
