//! `hf`: Hugging Face interop from the command line (`hf --help`, `hf <command> --help`).
//!
//! `export` reads a kormo checkpoint (or an HF folder, to convert between flavours) and writes a
//! model folder; `import` writes an HF folder's weights as a kormo checkpoint (model weights
//! only, step 0), which a stage whose `init` names that stage starts from; `logits` writes kormo's
//! own logits for a token sequence (`{"tokens", "logits"}`), the reference that
//! tools/hf_transformers_check.py compares transformers against.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kormo_hf::cli::{parse_bytes, preset, user_path};
use kormo_hf::{vocab, ExportDtype, ExportOptions, Flavor};

/// Hugging Face interop: export kormo checkpoints as HF model folders, import HF folders as
/// kormo checkpoints, and write kormo's logits as a reference for transformers.
#[derive(Parser)]
#[command(name = "hf", disable_version_flag = true, after_help = "\
Examples:
  hf export --model runs/tiny/sft/final --out exports/kormo-tiny --flavor llama --dtype f32
  hf import --folder exports/kormo-tiny --out runs/tiny/import/final
  hf logits --model exports/kormo-tiny --tokens 1,2,3 --out reference.json")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes a kormo checkpoint (or an HF folder) as a Hugging Face model folder
    Export(ExportArgs),
    /// Writes an HF folder's weights as a kormo checkpoint (model weights only, step 0)
    Import(ImportArgs),
    /// Writes kormo's logits for a token sequence as JSON {"tokens", "logits"}
    Logits(LogitsArgs),
}

#[derive(clap::Args)]
#[command(after_help = "Example:\n  hf export --model runs/tiny/sft/final --out exports/kormo-tiny --flavor llama --dtype f32")]
struct ExportArgs {
    /// A kormo checkpoint directory or an HF model folder
    #[arg(long, value_name = "CHECKPOINT_OR_HF_FOLDER")]
    model: PathBuf,
    /// The model folder written
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Tensor naming: kormo | llama
    #[arg(long, value_name = "NAME", default_value = "kormo")]
    flavor: String,
    /// Weight dtype: bf16 | f32
    #[arg(long, value_name = "DTYPE", default_value = "bf16")]
    dtype: String,
    /// Largest weight file, e.g. 5GB, 500MB, 2GiB
    #[arg(long, value_name = "SIZE", default_value = "5GB")]
    shard_size: String,
    /// max_position_embeddings written to config.json
    #[arg(long, value_name = "N", default_value_t = ExportOptions::default().max_positions)]
    max_positions: usize,
    /// Architecture of a kormo checkpoint (which records none): tiny | proxy-1b | kormo-10.8b
    #[arg(long, value_name = "NAME", default_value = "tiny")]
    preset: String,
    /// tokenizer.json to ship [default: the one next to the model, else a byte vocabulary]
    #[arg(long, value_name = "PATH")]
    tokenizer: Option<PathBuf>,
}

#[derive(clap::Args)]
#[command(after_help = "Example:\n  hf import --folder exports/kormo-tiny --out runs/tiny/import/final")]
struct ImportArgs {
    /// A Hugging Face model folder (KORMo or Llama naming)
    #[arg(long, value_name = "HF_FOLDER")]
    folder: PathBuf,
    /// The checkpoint directory written
    #[arg(long, value_name = "CHECKPOINT_DIR")]
    out: PathBuf,
}

#[derive(clap::Args)]
#[command(after_help = "Example:\n  hf logits --model exports/kormo-tiny --tokens 1,2,3 --out reference.json")]
struct LogitsArgs {
    /// A kormo checkpoint directory or an HF model folder
    #[arg(long, value_name = "CHECKPOINT_OR_HF_FOLDER")]
    model: PathBuf,
    /// Token ids, comma-separated
    #[arg(long, value_name = "IDS")]
    tokens: String,
    /// The JSON file written
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Architecture of a kormo checkpoint: tiny | proxy-1b | kormo-10.8b
    #[arg(long, value_name = "NAME", default_value = "tiny")]
    preset: String,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Export(a) => export(a),
        Cmd::Import(a) => import(a),
        Cmd::Logits(a) => logits(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("hf: {message}");
            ExitCode::FAILURE
        }
    }
}

fn export(a: ExportArgs) -> Result<(), String> {
    let model_path = user_path(&a.model);
    let out = user_path(&a.out);
    let flavor = Flavor::parse(&a.flavor).ok_or(format!("--flavor: `{}` is not kormo or llama", a.flavor))?;
    let dtype_name = a.dtype;
    let dtype = ExportDtype::parse(&dtype_name).ok_or(format!("--dtype: `{dtype_name}` is not bf16 or f32"))?;
    let max_shard_bytes =
        parse_bytes(&a.shard_size).filter(|&b| b > 0).ok_or(format!("--shard-size: `{}` is not a size like 5GB", a.shard_size))?;
    let max_positions = a.max_positions;
    let base = preset(&a.preset)?;
    let tokenizer_path = a.tokenizer.as_deref().map(user_path);

    let weights = load_model(&model_path, &base)?;
    let tokenizer = vocab::find_tokenizer(tokenizer_path.as_deref(), &model_path, weights.config.vocab).map_err(|e| e.to_string())?;
    let opts = ExportOptions { flavor, dtype, max_shard_bytes, max_positions };
    let summary = kormo_hf::export_folder(&weights, &tokenizer, &out, &opts).map_err(|e| e.to_string())?;
    let dropped_params: u64 = weights.tensors.iter().filter(|t| summary.dropped.contains(&t.name)).map(|t| t.values.len() as u64).sum();
    if !summary.dropped.is_empty() {
        println!(
            "dropped the multi-token-prediction heads (mtp_depth = {}: {} tensors, {dropped_params} parameters; \
             transformers has no MTP heads, and the next-token model is whole without them): {}",
            weights.config.mtp_depth,
            summary.dropped.len(),
            summary.dropped.join(", ")
        );
    }
    println!(
        "exported {} ({} parameters, {}) to {}: {} weight file(s), {:.1} MB; tokenizer {}",
        flavor.architecture(),
        weights.config.param_count() - dropped_params,
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

fn import(a: ImportArgs) -> Result<(), String> {
    let folder = user_path(&a.folder);
    let out = user_path(&a.out);
    let kormo_hf::Imported { weights, notes } = kormo_hf::import_hf_folder(&folder).map_err(|e| e.to_string())?;
    print_notes(&notes);
    write_checkpoint(&weights, &notes, &folder, &out)?;
    println!(
        "imported {} ({} parameters) into the kormo checkpoint {}",
        folder.display(),
        weights.config.param_count(),
        out.display()
    );
    Ok(())
}

/// How an HF folder's import settled a disagreement between config.json and its weights.
fn print_notes(notes: &[String]) {
    for note in notes {
        eprintln!("hf: note: {note}");
    }
}

/// A kormo checkpoint or an HF folder's weights, printing the import's notes.
fn load_model(path: &Path, base: &kormo_model::ModelConfig) -> Result<kormo_hf::Weights, String> {
    let imported = kormo_hf::load_model_with_notes(path, base).map_err(|e| e.to_string())?;
    print_notes(&imported.notes);
    Ok(imported.weights)
}

fn write_checkpoint(weights: &kormo_hf::Weights, notes: &[String], folder: &Path, out: &Path) -> Result<(), String> {
    let trainer = serde_json::json!({"imported_from": folder.display().to_string(), "import_notes": notes});
    weights.save_checkpoint(out, "import", 0, trainer).map_err(|e| e.to_string())
}

fn logits(a: LogitsArgs) -> Result<(), String> {
    let model_path = user_path(&a.model);
    let out = user_path(&a.out);
    let base = preset(&a.preset)?;
    let tokens: Vec<u32> = a.tokens
        .split(',')
        .map(|t| t.trim().parse().map_err(|_| format!("--tokens: `{t}` is not a token id")))
        .collect::<Result<_, _>>()?;
    let weights = load_model(&model_path, &base)?;
    let mut model = weights.to_model(kormo_cpu::CpuOps::<f32>::new(), &model_path).map_err(|e| e.to_string())?;
    let logits = model.forward(&kormo_model::Batch::forward_only(&tokens)).map_err(|e| format!("--tokens: {e}"))?;
    let rows: Vec<&[f32]> = logits.chunks(weights.config.vocab).collect();
    // Serialised directly, not through a `Value` (which would widen each f32): every logit is
    // written as its shortest f32 decimal.
    let text = |json: serde_json::Result<String>| json.expect("plain data serialises");
    let doc = format!(
        "{{\"model\":{},\"tokens\":{},\"logits\":{}}}",
        text(serde_json::to_string(&model_path.display().to_string())),
        text(serde_json::to_string(&tokens)),
        text(serde_json::to_string(&rows)),
    );
    std::fs::write(&out, doc).map_err(|e| format!("{}: cannot write: {e}", out.display()))?;
    println!("wrote kormo's logits for {} tokens to {}", tokens.len(), out.display());
    Ok(())
}
