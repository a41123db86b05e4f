//! The tokenizer study: several BPE tokenizers trained from one corpus with different source
//! mixes and vocabulary sizes, compared as the paper does — bytes per token (BPT) on each
//! source's held-out documents, vocabulary overlap between variants, and train time.
//!
//! A spec (TOML) names the sources (files or folders, optionally filtered by a file-name
//! suffix) and the variants (a vocabulary size and a weight per source). Every
//! `held_out_every`-th document of each source is held out; the rest is counted once and
//! re-weighted per variant (`kormo_tokenizer::train::weighted_counts`), so variants differ only
//! in mix and size.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use kormo_corpus::documents::read_documents;
use kormo_corpus::paths::expand_path;
use kormo_tokenizer::train::{count_documents, train, weighted_counts, TrainConfig, WordCounts};
use kormo_tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Every N-th document of each source is held out for BPT (default 10).
    #[serde(default = "default_every")]
    pub held_out_every: usize,
    /// JSONL field holding the text (default "text").
    #[serde(default = "default_field")]
    pub text_field: String,
    #[serde(rename = "source")]
    pub sources: Vec<SourceSpec>,
    #[serde(rename = "variant")]
    pub variants: Vec<VariantSpec>,
}

fn default_every() -> usize {
    10
}

fn default_field() -> String {
    "text".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub name: String,
    /// Files or folders (recursive); relative paths are against the spec's folder.
    pub paths: Vec<PathBuf>,
    /// Only files whose names end with this (e.g. ".ko.html").
    #[serde(default)]
    pub suffix: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    pub name: String,
    pub vocab_size: usize,
    /// Weight of each source in the training mix; sources left out are not trained on.
    pub mix: BTreeMap<String, f64>,
}

/// One variant's results.
#[derive(Debug, Serialize)]
pub struct VariantResult {
    pub name: String,
    pub vocab_size: usize,
    pub mix: BTreeMap<String, f64>,
    /// Held-out bytes per token, by source name.
    pub bpt: BTreeMap<String, f64>,
    /// Seconds to weight the counts and learn the merges.
    pub train_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct StudyResult {
    /// Held-out bytes and documents per source.
    pub held_out: BTreeMap<String, (u64, usize)>,
    /// Seconds spent counting pre-tokens of all sources (shared by the variants).
    pub count_seconds: f64,
    pub variants: Vec<VariantResult>,
    /// `overlap[i][j]`: Jaccard similarity of the learned (merged) tokens of variants i and j.
    pub overlap: Vec<Vec<f64>>,
}

impl Spec {
    /// Reads and checks a spec file; errors name the file and the bad key.
    pub fn load(path: &Path) -> Result<Spec, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut spec: Spec = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for s in &mut spec.sources {
            for p in &mut s.paths {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        spec.check().map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(spec)
    }

    fn check(&self) -> Result<(), String> {
        if self.held_out_every < 2 {
            return Err("held_out_every must be at least 2".into());
        }
        if self.variants.is_empty() || self.sources.is_empty() {
            return Err("the spec needs at least one [[source]] and one [[variant]]".into());
        }
        let names: HashSet<&str> = self.sources.iter().map(|s| s.name.as_str()).collect();
        if names.len() != self.sources.len() {
            return Err("two sources share a name".into());
        }
        for v in &self.variants {
            if v.mix.is_empty() {
                return Err(format!("variant {:?}: mix is empty", v.name));
            }
            for (source, w) in &v.mix {
                if !names.contains(source.as_str()) {
                    return Err(format!("variant {:?}: mix names unknown source {source:?}", v.name));
                }
                if !(*w > 0.0 && w.is_finite()) {
                    return Err(format!("variant {:?}: weight of {source:?} must be positive", v.name));
                }
            }
        }
        Ok(())
    }
}

/// Train and held-out documents of one source.
struct Split {
    train: Vec<String>,
    held_out: Vec<String>,
}

fn read_source(source: &SourceSpec, every: usize, text_field: &str) -> Result<Split, String> {
    let mut files = Vec::new();
    for p in &source.paths {
        files.extend(expand_path(p)?);
    }
    files.retain(|f| f.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(&source.suffix)));
    let mut split = Split { train: Vec::new(), held_out: Vec::new() };
    let mut index = 0usize;
    for file in &files {
        for doc in read_documents(file, text_field) {
            let doc = doc.map_err(|e| e.to_string())?;
            index += 1;
            if index % every == 0 {
                split.held_out.push(doc);
            } else {
                split.train.push(doc);
            }
        }
    }
    if split.held_out.is_empty() || split.train.is_empty() {
        return Err(format!(
            "source {:?}: {} documents in {} files, too few to hold out every {every}-th",
            source.name,
            index,
            files.len()
        ));
    }
    Ok(split)
}

/// Held-out bytes per token of `docs` under `tok` (special-token text is encoded as text).
pub fn bytes_per_token(tok: &Tokenizer, docs: &[String]) -> f64 {
    let mut encoder = tok.encoder();
    let (mut bytes, mut tokens, mut ids) = (0usize, 0usize, Vec::new());
    for d in docs {
        ids.clear();
        encoder.encode_ordinary(d, &mut ids);
        bytes += d.len();
        tokens += ids.len();
    }
    bytes as f64 / tokens.max(1) as f64
}

/// The learned tokens of `tok` (ids past the 256 bytes, specials excluded) as byte strings.
fn learned_tokens(tok: &Tokenizer) -> HashSet<Vec<u8>> {
    (256..tok.vocab_size() as u32)
        .filter(|&id| !tok.is_special(id))
        .filter_map(|id| tok.token_bytes(id).map(<[u8]>::to_vec))
        .collect()
}

fn jaccard(a: &HashSet<Vec<u8>>, b: &HashSet<Vec<u8>>) -> f64 {
    let union = a.union(b).count();
    if union == 0 {
        1.0
    } else {
        a.intersection(b).count() as f64 / union as f64
    }
}

/// Runs the study; `progress` hears one line per step.
pub fn run(spec: &Spec, threads: usize, progress: &mut dyn FnMut(&str)) -> Result<StudyResult, String> {
    let config = TrainConfig::kormo(0);
    let mut splits = BTreeMap::new();
    let mut counts: BTreeMap<String, WordCounts> = BTreeMap::new();
    let started = Instant::now();
    for source in &spec.sources {
        let split = read_source(source, spec.held_out_every, &spec.text_field)?;
        progress(&format!("source {}: {} train, {} held-out documents", source.name, split.train.len(), split.held_out.len()));
        let c = count_documents(split.train.iter().cloned(), config.pattern, &config.specials, threads, 8_000_000);
        counts.insert(source.name.clone(), c);
        splits.insert(source.name.clone(), split);
    }
    let count_seconds = started.elapsed().as_secs_f64();
    let mut variants = Vec::new();
    let mut learned = Vec::new();
    for v in &spec.variants {
        let started = Instant::now();
        let sources: Vec<(f64, WordCounts)> = v.mix.iter().map(|(s, w)| (*w, counts[s].clone())).collect();
        let combined = weighted_counts(&sources).map_err(|e| format!("variant {:?}: {e}", v.name))?;
        let tok = train(&combined, &TrainConfig::kormo(v.vocab_size)).map_err(|e| format!("variant {:?}: {e}", v.name))?;
        let train_seconds = started.elapsed().as_secs_f64();
        let bpt = splits.iter().map(|(name, s)| (name.clone(), bytes_per_token(&tok, &s.held_out))).collect();
        progress(&format!("variant {}: trained in {train_seconds:.2} s", v.name));
        learned.push(learned_tokens(&tok));
        variants.push(VariantResult { name: v.name.clone(), vocab_size: tok.vocab_size(), mix: v.mix.clone(), bpt, train_seconds });
    }
    let overlap = learned.iter().map(|a| learned.iter().map(|b| jaccard(a, b)).collect()).collect();
    let held_out = splits
        .iter()
        .map(|(n, s)| (n.clone(), (s.held_out.iter().map(|d| d.len() as u64).sum(), s.held_out.len())))
        .collect();
    Ok(StudyResult { held_out, count_seconds, variants, overlap })
}

/// The paper's kind of table: one row per variant with its BPT on each held-out split and
/// train time, then the vocabulary-overlap matrix.
pub fn markdown(result: &StudyResult) -> String {
    let sources: Vec<&String> = result.held_out.keys().collect();
    let mut out = String::from("| variant | vocab | mix |");
    for s in &sources {
        out.push_str(&format!(" BPT {s} |"));
    }
    out.push_str(" train s |\n|---|---:|---|");
    out.push_str(&"---:|".repeat(sources.len() + 1));
    out.push('\n');
    for v in &result.variants {
        let mix: Vec<String> = v.mix.iter().map(|(s, w)| format!("{s}:{w}")).collect();
        out.push_str(&format!("| {} | {} | {} |", v.name, v.vocab_size, mix.join(" ")));
        for s in &sources {
            out.push_str(&format!(" {:.3} |", v.bpt[*s]));
        }
        out.push_str(&format!(" {:.2} |\n", v.train_seconds));
    }
    out.push_str("\nVocabulary overlap (Jaccard of learned tokens):\n\n|   |");
    for v in &result.variants {
        out.push_str(&format!(" {} |", v.name));
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(result.variants.len()));
    out.push('\n');
    for (v, row) in result.variants.iter().zip(&result.overlap) {
        out.push_str(&format!("| {} |", v.name));
        for x in row {
            out.push_str(&format!(" {x:.3} |"));
        }
        out.push('\n');
    }
    let held: Vec<String> = result.held_out.iter().map(|(s, (b, d))| format!("{s} {d} docs / {b} bytes")).collect();
    out.push_str(&format!("\nHeld out: {}; counting took {:.2} s.\n", held.join(", "), result.count_seconds));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jaccard_of_sets() {
        let a: HashSet<Vec<u8>> = [b"ab".to_vec(), b"cd".to_vec()].into();
        let b: HashSet<Vec<u8>> = [b"ab".to_vec(), b"ef".to_vec()].into();
        assert!((jaccard(&a, &b) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(jaccard(&a, &a), 1.0);
    }

    #[test]
    fn spec_errors_name_the_key() {
        let spec: Spec = toml::from_str(
            "[[source]]\nname='en'\npaths=['x']\n[[variant]]\nname='v'\nvocab_size=300\nmix={ko=1.0}\n",
        )
        .unwrap();
        let err = spec.check().unwrap_err();
        assert!(err.contains("unknown source \"ko\""), "{err}");
        let typo = toml::from_str::<Spec>("held_out_evry = 3\n").unwrap_err().to_string();
        assert!(typo.contains("held_out_evry"), "{typo}");
    }
}
