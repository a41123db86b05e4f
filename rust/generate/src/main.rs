//! `generate`: one prompt through a kormo model, tokens printed as they are produced
//! (`generate --help` lists every option).
//!
//! Without `--chat` the prompt is raw text after `<|BOS|>` (special tokens written in it are
//! recognised). Temperature 0 is greedy decoding.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kormo_generate::text::{chat_prompt, ChatTokens, StreamDecoder};
use kormo_generate::{generate, open_model, Decoder, Limits, Sampler, StopReason, Strategy};
use kormo_hf::cli::user_path;

/// Runs one prompt through a kormo model and prints the tokens as they are produced (stats on
/// stderr). Without --chat the prompt is raw text after <|BOS|>; temperature 0 is greedy.
#[derive(Parser)]
#[command(name = "generate", disable_version_flag = true, after_help = "\
Examples:
  generate --model runs/tiny/sft/final --prompt '하늘은 무슨 색인가요?' --chat
  generate --model exports/kormo-tiny --prompt 'Once upon a time' --temperature 0.8 --top-p 0.9 --seed 1")]
struct Cli {
    /// A kormo checkpoint directory or a Hugging Face model folder
    #[arg(long, value_name = "CHECKPOINT_OR_HF_FOLDER")]
    model: PathBuf,
    #[arg(long, value_name = "TEXT")]
    prompt: String,
    /// Wrap the prompt in the chat template (a user turn)
    #[arg(long)]
    chat: bool,
    /// Chat only: let the model think first: on | off
    #[arg(long, value_name = "on|off", default_value = "off")]
    thinking: String,
    /// Chat only: a system turn before the prompt
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    #[arg(long, value_name = "N", default_value_t = 200)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy
    #[arg(long, value_name = "T", default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f32,
    /// Nucleus sampling: smallest set of tokens with this much probability
    #[arg(long, value_name = "P", default_value_t = 1.0, allow_negative_numbers = true)]
    top_p: f32,
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
    /// Architecture of a kormo checkpoint (which records none): tiny | proxy-1b | kormo-10.8b
    #[arg(long, value_name = "NAME", default_value = "tiny")]
    preset: String,
    /// tokenizer.json [default: the one next to the model]
    #[arg(long, value_name = "PATH")]
    tokenizer: Option<PathBuf>,
    /// Stop when prompt + generated tokens reach N
    #[arg(long, value_name = "N", default_value_t = 4096)]
    max_context: usize,
    /// CPU threads [default: all cores]
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("generate: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let model = user_path(&cli.model);
    let prompt = cli.prompt;
    let chat = cli.chat;
    let thinking = match cli.thinking.as_str() {
        "off" => false,
        "on" => true,
        other => return Err(format!("--thinking: `{other}` is not on or off")),
    };
    let system = cli.system;
    let max_new_tokens = cli.max_new_tokens;
    let strategy = Strategy::new(cli.temperature, cli.top_p)?;
    let seed = cli.seed;
    let preset = cli.preset;
    let tokenizer_path = cli.tokenizer.as_deref().map(user_path);
    let max_context = cli.max_context;
    let threads = cli.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    if !chat && (system.is_some() || thinking) {
        return Err("--system and --thinking apply to --chat prompts".into());
    }

    let (weights, tokenizer) = open_model(&model, &preset, tokenizer_path.as_deref())?;
    let tok = &tokenizer.tokenizer;
    let specials = ChatTokens::find(tok).map_err(|e| format!("{}: {e}", model.display()))?;
    let prompt_ids = if chat {
        let mut messages = Vec::new();
        if let Some(system) = &system {
            messages.push(("system", system.as_str()));
        }
        messages.push(("user", prompt.as_str()));
        chat_prompt(tok, &messages, thinking).map_err(|e| format!("{}: {e}", model.display()))?
    } else {
        let mut ids = vec![specials.bos];
        ids.extend(tok.encode(&prompt));
        ids
    };
    let mut decoder = Decoder::new(&weights, threads.max(1));
    let mut sampler = Sampler::new(strategy, seed, tok.vocab_size());
    let limits = Limits { max_new_tokens, stop_tokens: vec![specials.eot], max_context };
    let mut stream = StreamDecoder::new(tok);
    let mut stdout = std::io::stdout().lock();
    let started = std::time::Instant::now();
    let generation = generate(&mut decoder, &mut sampler, &prompt_ids, &limits, |id| {
        // A closed pipe (`| head`) just ends the output; generation itself is unaffected.
        let _ = write!(stdout, "{}", stream.push(id));
        let _ = stdout.flush();
    })?;
    let _ = writeln!(stdout, "{}", stream.finish());
    let seconds = started.elapsed().as_secs_f64();
    let reason = match generation.stop {
        StopReason::StopToken(_) => "end of turn",
        StopReason::MaxNewTokens => "--max-new-tokens reached",
        StopReason::ContextFull => "--max-context reached",
    };
    eprintln!(
        "[{} prompt + {} generated tokens in {seconds:.2}s ({:.1} tok/s); {reason}]",
        prompt_ids.len(),
        generation.tokens.len(),
        generation.tokens.len() as f64 / seconds.max(1e-9)
    );
    Ok(())
}
