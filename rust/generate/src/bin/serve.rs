//! `serve`: an OpenAI-compatible chat-completions server for a kormo model (`serve --help`).

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kormo_generate::serve::{serve, ChatModel};
use kormo_generate::ModelArgs;
use kormo_hf::cli::user_path;

/// Serves a kormo checkpoint or Hugging Face folder as an OpenAI-compatible endpoint:
/// POST /v1/chat/completions (greedy at temperature 0, the default; thinking by
/// chat_template_kwargs.enable_thinking), GET /v1/models, GET /health. One request at a time,
/// plain HTTP. Prints `listening on http://ADDR` once bound (port 0 picks a free one).
#[derive(Parser)]
#[command(name = "serve", disable_version_flag = true, after_help = "\
Example:
  serve --model runs/tiny/sft/final --addr 127.0.0.1:8000
  curl -s http://127.0.0.1:8000/v1/chat/completions -d '{\"messages\":[{\"role\":\"user\",\"content\":\"2+2?\"}],\"max_tokens\":32}'")]
struct Cli {
    /// A kormo checkpoint directory or a Hugging Face model folder
    #[arg(long, value_name = "CHECKPOINT_OR_HF_FOLDER")]
    model: PathBuf,
    /// Address to listen on
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8000")]
    addr: String,
    /// The model name responses report [default: the model folder's name]
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Longest prompt + reply, in tokens
    #[arg(long, value_name = "N", default_value_t = 4096)]
    max_context: usize,
    /// Exit after answering N requests [default: never]
    #[arg(long, value_name = "N")]
    max_requests: Option<usize>,
    #[command(flatten)]
    model_args: ModelArgs,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("serve: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let path = user_path(&cli.model);
    let tokenizer = cli.model_args.tokenizer.as_deref().map(user_path);
    let mut model = ChatModel::open(&path, &cli.model_args.preset, tokenizer.as_deref(), cli.model_args.threads(), cli.max_context)?;
    let name = cli.name.unwrap_or_else(|| path.file_name().map_or("kormo".into(), |n| n.to_string_lossy().into_owned()));
    let listener = TcpListener::bind(&cli.addr).map_err(|e| format!("--addr {}: {e}", cli.addr))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening on http://{addr}");
    let _ = std::io::stdout().flush();
    serve(&listener, &mut model, &name, cli.max_requests, |line| eprintln!("{line}"));
    Ok(())
}
