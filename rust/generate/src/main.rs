//! `generate`: one prompt through a kormo model, tokens printed as they are produced.
//!
//! ```text
//! generate --model RUN/sft/final --prompt "하늘은 무슨 색인가요?" --chat [--thinking on|off]
//!          [--system TEXT] [--max-new-tokens 200] [--temperature 0] [--top-p 1.0] [--seed 0]
//!          [--preset tiny] [--tokenizer PATH] [--max-context 4096] [--threads N]
//! ```
//! Without `--chat` the prompt is raw text after `<|BOS|>` (special tokens written in it are
//! recognised). Temperature 0 is greedy decoding.

use std::io::Write;
use std::process::ExitCode;

use kormo_generate::text::{chat_prompt, ChatTokens, StreamDecoder};
use kormo_generate::{generate, open_model, Decoder, Limits, Sampler, StopReason, Strategy};
use kormo_hf::cli::Args;

fn main() -> ExitCode {
    match Args::parse(std::env::args().skip(1), &["chat", "help"]).and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("generate: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(mut args: Args) -> Result<(), String> {
    if args.flag("help")? {
        println!("usage: generate --model CHECKPOINT_OR_HF_FOLDER --prompt TEXT [--chat] [--thinking on|off] [--system TEXT]\n                [--max-new-tokens 200] [--temperature 0] [--top-p 1.0] [--seed 0] [--preset tiny]\n                [--tokenizer PATH] [--max-context 4096] [--threads N]");
        return Ok(());
    }
    let model = args.required_path("model")?;
    let prompt = args.required("prompt")?;
    let chat = args.flag("chat")?;
    let thinking = match args.take("thinking")?.as_deref() {
        None | Some("off") => false,
        Some("on") => true,
        Some(other) => return Err(format!("--thinking: `{other}` is not on or off")),
    };
    let system = args.take("system")?;
    let max_new_tokens = args.parsed("max-new-tokens", 200usize)?;
    let strategy = Strategy::new(args.parsed("temperature", 0.0f32)?, args.parsed("top-p", 1.0f32)?)?;
    let seed = args.parsed("seed", 0u64)?;
    let preset = args.take("preset")?.unwrap_or_else(|| "tiny".into());
    let tokenizer_path = args.path("tokenizer")?;
    let max_context = args.parsed("max-context", 4096usize)?;
    let threads = args.parsed("threads", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))?;
    args.finish()?;
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
