//! `needle`: needle-in-a-haystack evaluation of a kormo model (see `kormo_generate::needle`;
//! `needle --help` lists every option). Writes OUT/needle.json, OUT/needle.md and OUT/needle.png.

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use clap::Parser;
use kormo_generate::needle::{self, Language, NeedleConfig};
use kormo_generate::text::ChatTokens;
use kormo_generate::{open_model, Decoder};
use kormo_hf::cli::user_path;

/// Needle-in-a-haystack evaluation: hides a fact at several depths of haystacks of several
/// lengths and checks whether the model retrieves it; writes OUT/needle.json, OUT/needle.md
/// and OUT/needle.png.
#[derive(Parser)]
#[command(name = "needle", disable_version_flag = true, after_help = "\
Example:
  needle --model runs/tiny/midtrain/final --lengths 256,1024 --depths 0,50,100 --out needle-results")]
struct Cli {
    /// A kormo checkpoint directory or a Hugging Face model folder
    #[arg(long, value_name = "CHECKPOINT_OR_HF_FOLDER")]
    model: PathBuf,
    /// Output directory
    #[arg(long, value_name = "DIR", default_value = "needle-results")]
    out: PathBuf,
    /// Haystack languages, comma-separated: en, ko
    #[arg(long, value_name = "LIST", default_value = "en,ko")]
    languages: String,
    /// Haystack lengths in tokens, comma-separated
    #[arg(long, value_name = "LIST", default_value = "256,512,1024,2048")]
    lengths: String,
    /// Needle depths in percent of the haystack, comma-separated
    #[arg(long, value_name = "LIST", default_value = "0,25,50,75,100")]
    depths: String,
    /// Trials per cell (different needles)
    #[arg(long, value_name = "N", default_value_t = 2)]
    trials: usize,
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
    /// Tokens generated per answer
    #[arg(long, value_name = "N", default_value_t = 10)]
    max_new_tokens: usize,
    #[command(flatten)]
    model_args: kormo_generate::ModelArgs,
    /// Context the model was trained for; longer --lengths are refused [default: config.json's
    /// max_position_embeddings; a kormo checkpoint records none]
    #[arg(long, value_name = "N")]
    max_context: Option<usize>,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("needle: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The comma-separated list `text` of option `key`.
fn list<T: FromStr>(text: &str, key: &str) -> Result<Vec<T>, String> {
    let items: Result<Vec<T>, String> = text.split(',').map(|s| s.trim().parse().map_err(|_| format!("--{key}: cannot parse `{s}`"))).collect();
    let items = items?;
    if items.is_empty() {
        return Err(format!("--{key} is empty"));
    }
    Ok(items)
}

fn run(cli: Cli) -> Result<(), String> {
    let model = user_path(&cli.model);
    let out = user_path(&cli.out);
    let codes: Vec<String> = list(&cli.languages, "languages")?;
    let languages = codes.iter().map(|c| Language::parse(c).ok_or(format!("--languages: `{c}` is not en or ko"))).collect::<Result<Vec<_>, _>>()?;
    let lengths: Vec<usize> = list(&cli.lengths, "lengths")?;
    let depths: Vec<u32> = list(&cli.depths, "depths")?;
    if let Some(d) = depths.iter().find(|&&d| d > 100) {
        return Err(format!("--depths: {d} is above 100 (percent)"));
    }
    let trials = cli.trials.max(1);
    let seed = cli.seed;
    let max_new_tokens = cli.max_new_tokens;
    let threads = cli.model_args.threads();
    let preset = cli.model_args.preset;
    let tokenizer_path = cli.model_args.tokenizer.as_deref().map(user_path);
    let (context, source) = match cli.max_context {
        Some(n) => (Some(n), "--max-context".to_string()),
        None => (kormo_hf::trained_context(&model), model.display().to_string()),
    };
    if let Some(warning) = needle::check_lengths(&lengths, context, &source)? {
        eprintln!("needle: {warning}");
    }

    let (weights, tokenizer) = open_model(&model, &preset, tokenizer_path.as_deref())?;
    let tok = &tokenizer.tokenizer;
    let specials = ChatTokens::find(tok).map_err(|e| format!("{}: {e}", model.display()))?;
    let cfg = NeedleConfig { languages, lengths, depths, trials, seed, max_new_tokens };
    let mut decoder = Decoder::new(&weights, threads.max(1));
    let cells = needle::evaluate(&mut decoder, tok, specials.bos, specials.eot, &cfg, |c| {
        println!("{} length {:>6} depth {:>3}%: {}/{} found (answer {:?})", c.language.code(), c.length, c.depth, c.found, c.trials, c.sample_answer);
    })?;
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: cannot create: {e}", out.display()))?;
    let json_path = out.join("needle.json");
    let doc = needle::to_json(&cells, &cfg, &model.display().to_string());
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc).expect("JSON serialises") + "\n").map_err(|e| format!("{}: {e}", json_path.display()))?;
    let md_path = out.join("needle.md");
    let markdown = needle::to_markdown(&cells, &cfg);
    std::fs::write(&md_path, &markdown).map_err(|e| format!("{}: {e}", md_path.display()))?;
    let png_path = out.join("needle.png");
    needle::heat_map(&cells, &cfg).save_png(&png_path)?;
    println!("{markdown}");
    println!("wrote {}, {}, {}", json_path.display(), md_path.display(), png_path.display());
    Ok(())
}
