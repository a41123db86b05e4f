//! Running a task through a model: log-likelihoods of choices and greedy generations.
//!
//! Multiple-choice tasks are scored by [`crate::loglik`] over `Model<O: Ops>` (any backend):
//! all questions of the task are turned into documents (choices of one token share the
//! context), sorted and packed into batches, and only the needed log-softmax values come back.
//! Generation tasks run greedy decoding on the CPU KV-cache [`Decoder`]. Tokenisation follows
//! the harness: trailing whitespace of the context move to the continuation, the
//! continuation's ids are those of encode(context + continuation) after the context's ids, and
//! `<|BOS|>` starts every context.

use std::time::Instant;

use kormo_generate::text::encode_plain;
use kormo_generate::{generate, Decoder, Limits, Sampler, Strategy};
use kormo_model::{Model, Ops};
use kormo_tokenizer::Tokenizer;
use serde_json::{json, Value};

use crate::loglik::{loglikelihoods, Packing, Question, Stats};
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
    /// Document tokens run per second (multiple choice; padding not counted).
    pub tokens_per_s: f64,
    /// What the log-likelihoods cost (multiple choice; zeros for generation).
    pub stats: Stats,
}

/// The model and tokenizer a task runs on: `model` scores multiple choice on its backend,
/// `decoder` (the CPU KV cache) generates; a generation task without one is an error.
pub struct Scorer<'a, O: Ops> {
    pub model: &'a mut Model<O>,
    pub decoder: Option<&'a mut Decoder>,
    pub tok: &'a Tokenizer,
    pub bos: u32,
    pub eot: u32,
    pub packing: Packing,
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

/// The question of `context` and its continuations: context ids with `<|BOS|>` first, and each
/// continuation's ids from [`split_ids`].
pub fn question(tok: &Tokenizer, bos: u32, context: &str, continuations: &[String]) -> Result<Question, String> {
    let mut ids = vec![bos];
    ids.extend(encode_plain(tok, context.trim_end()));
    let mut conts = Vec::with_capacity(continuations.len());
    for c in continuations {
        let (_, cont) = split_ids(tok, context, c);
        if cont.is_empty() {
            return Err(format!("choice {c:?} has no tokens after the context"));
        }
        conts.push(cont);
    }
    Ok(Question { context: ids, continuations: conts })
}

impl<O: Ops> Scorer<'_, O> {
    /// Log-likelihoods of every multiple-choice question of `task` (its choices after their
    /// contexts), all questions batched together; `progress` sees each forward pass.
    fn multiple_choice(&mut self, task: &Task, ctxs: &[String], progress: impl FnMut(usize, usize)) -> Result<(Vec<Vec<f64>>, Stats), String> {
        let spec = &task.spec;
        let mut questions = Vec::with_capacity(ctxs.len());
        for (doc, ctx) in task.docs.iter().zip(ctxs) {
            let conts: Vec<String> = choices(spec, doc)?.iter().map(|c| format!("{}{c}", spec.target_delimiter)).collect();
            questions.push(question(self.tok, self.bos, ctx, &conts)?);
        }
        loglikelihoods(self.model, &questions, self.packing, progress)
    }

    /// Scores every document of `task`.
    pub fn run(&mut self, task: &Task) -> Result<TaskResult, String> {
        self.run_with_progress(task, |_, _| {})
    }

    /// [`Scorer::run`]; `progress(done, total)` is called after each forward pass of a
    /// multiple-choice task.
    pub fn run_with_progress(&mut self, task: &Task, progress: impl FnMut(usize, usize)) -> Result<TaskResult, String> {
        let start = Instant::now();
        let spec = &task.spec;
        let ctxs = contexts(task)?;
        let (all_lls, stats) = match spec.output_type {
            OutputType::MultipleChoice => self.multiple_choice(task, &ctxs, progress)?,
            OutputType::GenerateUntil => (Vec::new(), Stats::default()),
        };
        let mut examples = Vec::with_capacity(ctxs.len());
        let mut per_metric: Vec<(&'static str, Vec<f64>)> = Vec::new();
        let mut push = |name: &'static str, v: f64| match per_metric.iter_mut().find(|(n, _)| *n == name) {
            Some((_, vals)) => vals.push(v),
            None => per_metric.push((name, vec![v])),
        };
        for (i, (doc, ctx)) in task.docs.iter().zip(&ctxs).enumerate() {
            match spec.output_type {
                OutputType::MultipleChoice => {
                    let ch = choices(spec, doc)?;
                    let gold = gold_index(spec, doc, &ch)?;
                    let lls = &all_lls[i];
                    let (a, an) = (acc(lls, gold), acc_norm(lls, &ch, gold));
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
        Ok(TaskResult {
            task: spec.task.clone(),
            language: spec.language.clone(),
            shots: spec.num_fewshot,
            scores: scores.collect(),
            questions_per_s: task.docs.len() as f64 / secs,
            tokens_per_s: stats.tokens as f64 / secs,
            stats,
            examples,
        })
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
        let decoder = self.decoder.as_deref_mut().ok_or("a generation task needs the CPU decoder, and this scorer has none")?;
        decoder.reset();
        let limits = Limits { max_new_tokens: max_new, stop_tokens: vec![self.eot], max_context: prompt.len() + max_new + 1 };
        let mut sampler = Sampler::new(Strategy::new(0.0, 1.0)?, 0, decoder.config().vocab);
        let g = generate(decoder, &mut sampler, &prompt, &limits, |_| {})?;
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
