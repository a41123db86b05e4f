//! kormo-generate: text generation and long-context evaluation for kormo models on the CPU.
//!
//! * [`decoder`] — incremental decoding with a KV cache (prefill a prompt, then one token per
//!   step), numerically the training model's forward pass.
//! * [`sampling`] — greedy, temperature and top-p sampling (seeded).
//! * [`text`] — KORMo's chat template with the thinking switch, and streaming UTF-8 decode.
//! * [`serve`] — chat replies ([`serve::ChatModel`]) and an OpenAI-compatible chat-completions
//!   server for them, over the minimal HTTP/1.1 of [`http`].
//! * [`needle`] — needle-in-a-haystack evaluation in English and Korean over context lengths x
//!   needle depths, written as JSON, Markdown and a PNG heat map.
//!
//! Binaries: `generate` (one prompt, streamed), `needle` (the evaluation) and `serve` (the
//! chat-completions server).

pub mod decoder;
pub mod http;
pub mod needle;
pub mod sampling;
pub mod serve;
pub mod text;

use std::path::Path;

use kormo_hf::vocab::ModelTokenizer;
use kormo_hf::Weights;

pub use decoder::Decoder;
pub use sampling::{Sampler, Strategy};

/// Weights and tokenizer of the model at `path` (a kormo checkpoint, whose architecture is the
/// preset `preset`, or a Hugging Face folder), with the tokenizer from `tokenizer` or found
/// next to the model (see `kormo_hf::vocab::find_tokenizer`).
pub fn open_model(path: &Path, preset: &str, tokenizer: Option<&Path>) -> Result<(Weights, ModelTokenizer), String> {
    let base = kormo_hf::cli::preset(preset)?;
    let weights = kormo_hf::load_model(path, &base).map_err(|e| e.to_string())?;
    let tokenizer = kormo_hf::vocab::find_tokenizer(tokenizer, path, weights.config.vocab).map_err(|e| e.to_string())?;
    Ok((weights, tokenizer))
}

/// The options that name a model to run on the CPU, shared by `needle` and `eval`
/// (`#[command(flatten)]`).
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Architecture of a kormo checkpoint (which records none): tiny | proxy-1b | kormo-10.8b
    #[arg(long, value_name = "NAME", default_value = "tiny")]
    pub preset: String,
    /// tokenizer.json [default: the one next to the model]
    #[arg(long, value_name = "PATH")]
    pub tokenizer: Option<std::path::PathBuf>,
    /// CPU threads [default: all cores]
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

impl ModelArgs {
    /// `--threads`, or every available core.
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

/// Limits of one generation.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_new_tokens: usize,
    /// Generation ends when one of these is produced (it is not part of the output).
    pub stop_tokens: Vec<u32>,
    /// The longest sequence (prompt + output) to run; positions beyond training length are
    /// possible but meaningless.
    pub max_context: usize,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    StopToken(u32),
    MaxNewTokens,
    ContextFull,
}

/// Generated ids (without the prompt or the stop token) and why it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub stop: StopReason,
}

/// Runs `prompt` through `decoder` (from its current cache state) and samples until a limit;
/// `on_token` sees each id as it is produced (streaming). The prompt must be non-empty and
/// shorter than `limits.max_context`.
pub fn generate(decoder: &mut Decoder, sampler: &mut Sampler, prompt: &[u32], limits: &Limits, mut on_token: impl FnMut(u32)) -> Result<Generation, String> {
    if prompt.is_empty() {
        return Err("the prompt is empty".into());
    }
    if decoder.len() + prompt.len() >= limits.max_context {
        return Err(format!("the prompt has {} tokens; the context limit is {}", decoder.len() + prompt.len(), limits.max_context));
    }
    let vocab = decoder.config().vocab;
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
        return Err(format!("prompt token {bad} is outside the model's vocabulary of {vocab}"));
    }
    let mut logits = decoder.extend(prompt);
    let mut tokens = Vec::new();
    let stop = loop {
        if tokens.len() == limits.max_new_tokens {
            break StopReason::MaxNewTokens;
        }
        let id = sampler.pick(&logits);
        if limits.stop_tokens.contains(&id) {
            break StopReason::StopToken(id);
        }
        tokens.push(id);
        on_token(id);
        if decoder.len() >= limits.max_context {
            break StopReason::ContextFull;
        }
        logits = decoder.extend(&[id]);
    };
    Ok(Generation { tokens, stop })
}
