//! `hf`: Hugging Face interop from the command line.
//!
//! ```text
//! hf export --model RUN/sft/final --out OUT [--flavor kormo|llama] [--dtype bf16|f32]
//!           [--shard-size 5GB] [--max-positions 4096] [--preset tiny] [--tokenizer PATH]
//! hf import --folder HF_FOLDER --out RUN/STAGE/final
//! hf logits --model CHECKPOINT_OR_HF_FOLDER --tokens 1,2,3 --out reference.json [--preset tiny]
//! ```
//! `export` reads a kormo checkpoint (or an HF folder, to convert between flavours) and writes a
//! model folder; `import` writes an HF folder's weights as a kormo checkpoint (model weights
//! only, step 0), which a stage whose `init` names that stage starts from; `logits` writes kormo's
//! own logits for a token sequence (`{"tokens", "logits"}`), the reference that
//! tools/hf_transformers_check.py compares transformers against.

use std::path::Path;
use std::process::ExitCode;

use kormo_hf::cli::{parse_bytes, preset, Args};
use kormo_hf::{vocab, ExportDtype, ExportOptions, Flavor};

const USAGE: &str = "usage:
  hf export --model CHECKPOINT_OR_HF_FOLDER --out DIR [--flavor kormo|llama] [--dtype bf16|f32]
            [--shard-size 5GB] [--max-positions 4096] [--preset tiny|proxy-1b|kormo-10.8b] [--tokenizer PATH]
  hf import --folder HF_FOLDER --out CHECKPOINT_DIR
  hf logits --model CHECKPOINT_OR_HF_FOLDER --tokens 1,2,3 --out reference.json [--preset tiny]";

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1);
    let result = match argv.next().as_deref() {
        Some("export") => Args::parse(argv, &[]).and_then(export),
        Some("import") => Args::parse(argv, &[]).and_then(import),
        Some("logits") => Args::parse(argv, &[]).and_then(logits),
        Some("--help") | Some("-h") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => Err(format!("expected a command\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("hf: {message}");
            ExitCode::FAILURE
        }
    }
}

fn export(mut args: Args) -> Result<(), String> {
    let model_path = args.required_path("model")?;
    let out = args.required_path("out")?;
    let flavor_name = args.take("flavor")?.unwrap_or_else(|| "kormo".into());
    let flavor = Flavor::parse(&flavor_name).ok_or(format!("--flavor: `{flavor_name}` is not kormo or llama"))?;
    let dtype_name = args.take("dtype")?.unwrap_or_else(|| "bf16".into());
    let dtype = ExportDtype::parse(&dtype_name).ok_or(format!("--dtype: `{dtype_name}` is not bf16 or f32"))?;
    let max_shard_bytes = match args.take("shard-size")? {
        None => ExportOptions::default().max_shard_bytes,
        Some(text) => parse_bytes(&text).filter(|&b| b > 0).ok_or(format!("--shard-size: `{text}` is not a size like 5GB"))?,
    };
    let max_positions = args.parsed("max-positions", ExportOptions::default().max_positions)?;
    let base = preset(&args.take("preset")?.unwrap_or_else(|| "tiny".into()))?;
    let tokenizer_path = args.path("tokenizer")?;
    args.finish()?;

    let weights = kormo_hf::load_model(&model_path, &base).map_err(|e| e.to_string())?;
    let tokenizer = vocab::find_tokenizer(tokenizer_path.as_deref(), &model_path, weights.config.vocab).map_err(|e| e.to_string())?;
    let opts = ExportOptions { flavor, dtype, max_shard_bytes, max_positions };
    let summary = kormo_hf::export_folder(&weights, &tokenizer, &out, &opts).map_err(|e| e.to_string())?;
    println!(
        "exported {} ({} parameters, {}) to {}: {} weight file(s), {:.1} MB; tokenizer {}",
        flavor.architecture(),
        weights.config.param_count(),
        dtype_name,
        out.display(),
        summary.weight_files.len(),
        summary.total_bytes as f64 / 1e6,
        describe(&summary.tokenizer),
    );
    Ok(())
}

fn describe(source: &vocab::TokenizerSource) -> String {
    match source {
        vocab::TokenizerSource::File(p) => format!("copied from {}", p.display()),
        vocab::TokenizerSource::ByteVocab => "generated for the byte vocabulary".into(),
    }
}

fn import(mut args: Args) -> Result<(), String> {
    let folder = args.required_path("folder")?;
    let out = args.required_path("out")?;
    args.finish()?;
    let weights = kormo_hf::load_hf_folder(&folder).map_err(|e| e.to_string())?;
    write_checkpoint(&weights, &folder, &out)?;
    println!(
        "imported {} ({} parameters) into the kormo checkpoint {}",
        folder.display(),
        weights.config.param_count(),
        out.display()
    );
    Ok(())
}

fn write_checkpoint(weights: &kormo_hf::Weights, folder: &Path, out: &Path) -> Result<(), String> {
    let tensors = weights
        .tensors
        .iter()
        .map(|t| kormo_checkpoint::Tensor::f32(t.name.clone(), t.shape.clone(), &t.values))
        .collect();
    let run = kormo_checkpoint::RunState {
        step: 0,
        stage: "import".into(),
        phase: "import".into(),
        config_hash: String::new(),
        rng_state: serde_json::Value::Null,
        data_cursor: serde_json::Value::Null,
        trainer: serde_json::json!({
            "imported_from": folder.display().to_string(),
            "model": serde_json::to_value(&weights.config).expect("config serialises"),
        }),
    };
    kormo_checkpoint::save(out, run, &[(kormo_hf::weights::CHECKPOINT_MODEL_FILE, tensors)]).map_err(|e| e.to_string())?;
    Ok(())
}

fn logits(mut args: Args) -> Result<(), String> {
    let model_path = args.required_path("model")?;
    let tokens_text = args.required("tokens")?;
    let out = args.required_path("out")?;
    let base = preset(&args.take("preset")?.unwrap_or_else(|| "tiny".into()))?;
    args.finish()?;
    let tokens: Vec<u32> = tokens_text
        .split(',')
        .map(|t| t.trim().parse().map_err(|_| format!("--tokens: `{t}` is not a token id")))
        .collect::<Result<_, _>>()?;
    let weights = kormo_hf::load_model(&model_path, &base).map_err(|e| e.to_string())?;
    let mut model = weights.to_model(kormo_cpu::CpuOps::<f32>::new(), &model_path).map_err(|e| e.to_string())?;
    let logits = model.forward(&kormo_model::Batch::forward_only(&tokens)).map_err(|e| format!("--tokens: {e}"))?;
    let rows: Vec<&[f32]> = logits.chunks(weights.config.vocab).collect();
    let doc = serde_json::json!({"model": model_path.display().to_string(), "tokens": tokens, "logits": rows});
    std::fs::write(&out, doc.to_string()).map_err(|e| format!("{}: cannot write: {e}", out.display()))?;
    println!("wrote kormo's logits for {} tokens to {}", tokens.len(), out.display());
    Ok(())
}
