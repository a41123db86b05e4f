//! `needle`: needle-in-a-haystack evaluation of a kormo model (see `kormo_generate::needle`).
//!
//! ```text
//! needle --model RUN/midtrain/final [--out needle-results] [--languages en,ko]
//!        [--lengths 256,512,1024,2048] [--depths 0,25,50,75,100] [--trials 2] [--seed 0]
//!        [--max-new-tokens 10] [--preset tiny] [--tokenizer PATH] [--threads N]
//! ```
//! Writes OUT/needle.json, OUT/needle.md and OUT/needle.png.

use std::process::ExitCode;
use std::str::FromStr;

use kormo_generate::needle::{self, Language, NeedleConfig};
use kormo_generate::text::ChatTokens;
use kormo_generate::{open_model, Decoder};
use kormo_hf::cli::Args;

fn main() -> ExitCode {
    match Args::parse(std::env::args().skip(1), &[]).and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("needle: {message}");
            ExitCode::FAILURE
        }
    }
}

/// A comma-separated list for option `key`.
fn list<T: FromStr>(args: &mut Args, key: &str, default: &str) -> Result<Vec<T>, String> {
    let text = args.take(key)?.unwrap_or_else(|| default.to_string());
    let items: Result<Vec<T>, String> = text.split(',').map(|s| s.trim().parse().map_err(|_| format!("--{key}: cannot parse `{s}`"))).collect();
    let items = items?;
    if items.is_empty() {
        return Err(format!("--{key} is empty"));
    }
    Ok(items)
}

fn run(mut args: Args) -> Result<(), String> {
    let model = args.required_path("model")?;
    let out = args.path("out")?.unwrap_or_else(|| kormo_hf::cli::user_path(std::path::Path::new("needle-results")));
    let codes: Vec<String> = list(&mut args, "languages", "en,ko")?;
    let languages = codes.iter().map(|c| Language::parse(c).ok_or(format!("--languages: `{c}` is not en or ko"))).collect::<Result<Vec<_>, _>>()?;
    let lengths: Vec<usize> = list(&mut args, "lengths", "256,512,1024,2048")?;
    let depths: Vec<u32> = list(&mut args, "depths", "0,25,50,75,100")?;
    if let Some(d) = depths.iter().find(|&&d| d > 100) {
        return Err(format!("--depths: {d} is above 100 (percent)"));
    }
    let trials = args.parsed("trials", 2usize)?.max(1);
    let seed = args.parsed("seed", 0u64)?;
    let max_new_tokens = args.parsed("max-new-tokens", 10usize)?;
    let preset = args.take("preset")?.unwrap_or_else(|| "tiny".into());
    let tokenizer_path = args.path("tokenizer")?;
    let threads = args.parsed("threads", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))?;
    args.finish()?;

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
