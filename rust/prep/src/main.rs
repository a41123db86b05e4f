//! `prepare`: kormo's data preparation CLI (pipeline in kormo_prep::pipeline).
//!
//! ```text
//! prepare run --source NAME=PATH[,PATH...] [--source ...] --out DIR
//!             [--config prep.toml] [--tokenizer tokenizer.json] [--threads N] [--max-files N]
//! prepare quality-train --positive PATH[,PATH...] --negative PATH[,PATH...] --out MODEL
//!             [--epochs 5] [--dim 16] [--buckets 262144] [--learning-rate 0.5] [--seed 0] [--text-field text]
//! prepare quality-predict --model MODEL [--text-field text] PATH...
//! ```
//! A PATH is a file or a directory (every file below it); formats as in
//! kormo_tokenizer::documents (JSONL with a text field, HTML, blank-line separated text).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kormo_prep::pipeline::{run, PrepConfig, RunLimits, Source};
use kormo_prep::quality::{QualityModel, TrainSettings};
use kormo_tokenizer::documents::{expand_path, read_documents};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => cmd_run(&args[1..]),
        Some("quality-train") => cmd_quality_train(&args[1..]),
        Some("quality-predict") => cmd_quality_predict(&args[1..]),
        _ => Err(
            "usage: prepare run|quality-train|quality-predict ... (see the source header)".into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prepare: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--name value` pairs, in order (a flag may repeat).
type Flags = Vec<(String, String)>;

/// Flags and positional arguments.
fn parse(args: &[String]) -> Result<(Flags, Vec<String>), String> {
    let (mut flags, mut positional) = (Vec::new(), Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.strip_prefix("--") {
            Some(name) => flags.push((
                name.to_owned(),
                it.next().ok_or(format!("--{name} needs a value"))?.clone(),
            )),
            None => positional.push(a.clone()),
        }
    }
    Ok((flags, positional))
}

fn get<'a>(flags: &'a [(String, String)], name: &str) -> Option<&'a str> {
    flags
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn number<T: std::str::FromStr>(
    flags: &[(String, String)],
    name: &str,
    default: T,
) -> Result<T, String> {
    get(flags, name).map_or(Ok(default), |v| {
        v.parse()
            .map_err(|_| format!("--{name}: {v:?} is not a valid number"))
    })
}

fn files_of(list: &str) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for p in list.split(',') {
        files.extend(expand_path(Path::new(p))?);
    }
    Ok(files)
}

fn cmd_run(args: &[String]) -> Result<(), String> {
    let (flags, positional) = parse(args)?;
    if let Some(p) = positional.first() {
        return Err(format!("unexpected argument {p:?}"));
    }
    let mut config = match get(&flags, "config") {
        Some(path) => PrepConfig::load(Path::new(path))?,
        None => PrepConfig::default(),
    };
    if let Some(t) = get(&flags, "tokenizer") {
        config.tokenizer = t.to_owned();
    }
    config.threads = number(&flags, "threads", config.threads)?;
    let out = PathBuf::from(get(&flags, "out").ok_or("run needs --out DIR")?);
    let mut sources = Vec::new();
    for (_, spec) in flags.iter().filter(|(n, _)| n == "source") {
        let (name, paths) = spec
            .split_once('=')
            .ok_or(format!("--source {spec:?}: expected NAME=PATH[,PATH...]"))?;
        sources.push(Source {
            name: name.to_owned(),
            files: files_of(paths)?,
        });
    }
    if sources.is_empty() {
        return Err("run needs at least one --source NAME=PATH[,PATH...]".into());
    }
    let limits = RunLimits {
        max_files: get(&flags, "max-files")
            .map(|v| v.parse().map_err(|_| format!("--max-files: {v:?}")))
            .transpose()?,
    };
    let counts = run(&config, &sources, &out, limits)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&counts).expect("counts serialize")
    );
    Ok(())
}

fn read_all(files: &[PathBuf], field: &str) -> Vec<String> {
    let mut docs = Vec::new();
    for f in files {
        for d in read_documents(f, field) {
            match d {
                Ok(t) => docs.push(t),
                Err(e) => eprintln!("skipped malformed input: {e}"),
            }
        }
    }
    docs
}

fn cmd_quality_train(args: &[String]) -> Result<(), String> {
    let (flags, _) = parse(args)?;
    let field = get(&flags, "text-field").unwrap_or("text");
    let positive = read_all(
        &files_of(get(&flags, "positive").ok_or("quality-train needs --positive")?)?,
        field,
    );
    let negative = read_all(
        &files_of(get(&flags, "negative").ok_or("quality-train needs --negative")?)?,
        field,
    );
    let out = get(&flags, "out").ok_or("quality-train needs --out MODEL")?;
    let d = TrainSettings::default();
    let settings = TrainSettings {
        buckets: number(&flags, "buckets", d.buckets)?,
        dim: number(&flags, "dim", d.dim)?,
        epochs: number(&flags, "epochs", d.epochs)?,
        learning_rate: number(&flags, "learning-rate", d.learning_rate)?,
        seed: number(&flags, "seed", d.seed)?,
    };
    let examples: Vec<(&str, bool)> = positive
        .iter()
        .map(|t| (t.as_str(), true))
        .chain(negative.iter().map(|t| (t.as_str(), false)))
        .collect();
    let model = QualityModel::train(&examples, settings)?;
    let correct = examples
        .iter()
        .filter(|(t, l)| (model.predict(t) >= 0.5) == *l)
        .count();
    eprintln!(
        "trained on {} positive / {} negative documents; training accuracy {:.3}",
        positive.len(),
        negative.len(),
        correct as f64 / examples.len() as f64
    );
    model.save(Path::new(out))
}

fn cmd_quality_predict(args: &[String]) -> Result<(), String> {
    let (flags, positional) = parse(args)?;
    let model = QualityModel::load(Path::new(
        get(&flags, "model").ok_or("quality-predict needs --model")?,
    ))?;
    let field = get(&flags, "text-field").unwrap_or("text");
    for p in positional {
        for f in expand_path(Path::new(&p))? {
            for (i, d) in read_documents(&f, field).enumerate() {
                match d {
                    Ok(t) => println!(
                        "{{\"file\": {:?}, \"document\": {i}, \"score\": {:.4}}}",
                        f.display().to_string(),
                        model.predict(&t)
                    ),
                    Err(e) => eprintln!("skipped malformed input: {e}"),
                }
            }
        }
    }
    Ok(())
}
