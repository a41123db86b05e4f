//! fastText-style quality classifier (the kind DCLM and KORMo use to keep high-quality
//! text): features are hashed word unigrams and bigrams (lowercased) plus character 3-5-grams
//! of each word with `<`/`>` boundary marks (fastText "subwords", which help Korean's
//! agglutinated words); a document is the mean of its features' embeddings (rows of a
//! `buckets x dim` table); a logistic output gives P(high quality). Trained with SGD on
//! binary labels, the learning rate decaying linearly to 0 as in fastText, examples shuffled
//! by a seeded ChaCha RNG, so training is deterministic. Saved as a small binary file.

use std::io::{Read, Write};
use std::path::Path;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::words::words;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QualityConfig {
    /// Path of a trained model; empty = no quality filtering.
    pub model: String,
    /// Documents with P(high quality) below this are removed.
    pub threshold: f64,
}

impl Default for QualityConfig {
    fn default() -> Self {
        QualityConfig {
            model: String::new(),
            threshold: 0.5,
        }
    }
}

/// Training settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainSettings {
    pub buckets: usize,
    pub dim: usize,
    pub epochs: usize,
    pub learning_rate: f32,
    pub seed: u64,
}

impl Default for TrainSettings {
    fn default() -> Self {
        TrainSettings {
            buckets: 1 << 18,
            dim: 16,
            epochs: 5,
            learning_rate: 0.5,
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct QualityModel {
    buckets: usize,
    dim: usize,
    embeddings: Vec<f32>,
    output: Vec<f32>,
    bias: f32,
}

const MAGIC: &[u8; 8] = b"KORMOQC1";

struct Gradient {
    output: Vec<f32>,
    bias: f32,
    row_per_occurrence: Vec<f32>,
}

fn fnv(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Hashed feature indices of a text (unsorted, with repeats: counts weigh the mean).
pub fn features(text: &str, buckets: usize) -> Vec<u32> {
    let lower: Vec<String> = words(text).into_iter().map(str::to_lowercase).collect();
    let mut out = Vec::new();
    let bucket = |h: u64| (h % buckets as u64) as u32;
    for (i, w) in lower.iter().enumerate() {
        out.push(bucket(fnv(w.as_bytes(), 1)));
        if let Some(next) = lower.get(i + 1) {
            out.push(bucket(fnv(format!("{w} {next}").as_bytes(), 2)));
        }
        let marked: Vec<char> = std::iter::once('<')
            .chain(w.chars())
            .chain(std::iter::once('>'))
            .collect();
        for n in 3..=5 {
            for g in marked.windows(n) {
                let s: String = g.iter().collect();
                out.push(bucket(fnv(s.as_bytes(), 3)));
            }
        }
    }
    out
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl QualityModel {
    /// Trains on (text, is_high_quality) examples.
    pub fn train(examples: &[(&str, bool)], s: TrainSettings) -> Result<QualityModel, String> {
        if s.buckets == 0 || s.dim == 0 || s.epochs == 0 {
            return Err("quality training: buckets, dim and epochs must be positive".into());
        }
        if !examples.iter().any(|e| e.1) || !examples.iter().any(|e| !e.1) {
            return Err("quality training needs both positive and negative examples".into());
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(s.seed);
        let scale = 1.0 / s.dim as f32;
        let embeddings = (0..s.buckets * s.dim)
            .map(|_| rng.random_range(-scale..scale))
            .collect();
        let mut m = QualityModel {
            buckets: s.buckets,
            dim: s.dim,
            embeddings,
            output: vec![0.0; s.dim],
            bias: 0.0,
        };
        let feats: Vec<Vec<u32>> = examples
            .iter()
            .map(|(t, _)| features(t, s.buckets))
            .collect();
        let mut order: Vec<usize> = (0..examples.len()).collect();
        let total_steps = (s.epochs * examples.len()) as f32;
        let mut step = 0f32;
        let mut hidden = vec![0f32; s.dim];
        for _ in 0..s.epochs {
            order.shuffle(&mut rng);
            for &i in &order {
                let lr = s.learning_rate * (1.0 - step / total_steps);
                step += 1.0;
                let f = &feats[i];
                if f.is_empty() {
                    continue;
                }
                let g = m.gradient(f, examples[i].1, &mut hidden);
                for (w, d) in m.output.iter_mut().zip(&g.output) {
                    *w -= lr * d;
                }
                m.bias -= lr * g.bias;
                for &fi in f {
                    let row = &mut m.embeddings[fi as usize * s.dim..(fi as usize + 1) * s.dim];
                    for (e, d) in row.iter_mut().zip(&g.row_per_occurrence) {
                        *e -= lr * d;
                    }
                }
            }
        }
        Ok(m)
    }

    /// Gradient of the logistic loss -[y ln p + (1-y) ln(1-p)] of one example. The hidden
    /// vector is the mean of the feature rows, so each occurrence of a feature contributes
    /// `row_per_occurrence` to its row's gradient.
    fn gradient(&self, f: &[u32], label: bool, hidden: &mut [f32]) -> Gradient {
        self.hidden(f, hidden);
        let g = sigmoid(self.logit(hidden)) - if label { 1.0 } else { 0.0 };
        Gradient {
            output: hidden.iter().map(|h| g * h).collect(),
            bias: g,
            row_per_occurrence: self.output.iter().map(|w| g * w / f.len() as f32).collect(),
        }
    }

    fn hidden(&self, f: &[u32], out: &mut [f32]) {
        out.iter_mut().for_each(|h| *h = 0.0);
        for &fi in f {
            let row = &self.embeddings[fi as usize * self.dim..(fi as usize + 1) * self.dim];
            out.iter_mut().zip(row).for_each(|(h, e)| *h += e);
        }
        let n = f.len().max(1) as f32;
        out.iter_mut().for_each(|h| *h /= n);
    }

    fn logit(&self, hidden: &[f32]) -> f32 {
        self.bias
            + self
                .output
                .iter()
                .zip(hidden)
                .map(|(w, h)| w * h)
                .sum::<f32>()
    }

    /// P(high quality) of `text` (0.5-ish bias only for text without words).
    pub fn predict(&self, text: &str) -> f64 {
        let f = features(text, self.buckets);
        let mut hidden = vec![0f32; self.dim];
        self.hidden(&f, &mut hidden);
        sigmoid(self.logit(&hidden)) as f64
    }

    pub fn save(&self, path: &Path) -> Result<(), String> {
        let err = |e: std::io::Error| format!("{}: {e}", path.display());
        let mut bytes = Vec::with_capacity(24 + 4 * (self.embeddings.len() + self.dim + 1));
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(self.buckets as u64).to_le_bytes());
        bytes.extend_from_slice(&(self.dim as u64).to_le_bytes());
        for v in self
            .embeddings
            .iter()
            .chain(&self.output)
            .chain(std::iter::once(&self.bias))
        {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let mut f = std::fs::File::create(path).map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)
    }

    pub fn load(path: &Path) -> Result<QualityModel, String> {
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let bad = |what: &str| format!("{}: not a kormo quality model ({what})", path.display());
        if bytes.len() < 24 || &bytes[..8] != MAGIC {
            return Err(bad("bad magic"));
        }
        let buckets = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")) as usize;
        let dim = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")) as usize;
        let floats = buckets
            .checked_mul(dim)
            .and_then(|n| n.checked_add(dim + 1))
            .ok_or_else(|| bad("bad shape"))?;
        if bytes.len() != 24 + 4 * floats {
            return Err(bad(&format!(
                "{} bytes, expected {}",
                bytes.len(),
                24 + 4 * floats
            )));
        }
        let values: Vec<f32> = bytes[24..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let embeddings = values[..buckets * dim].to_vec();
        let output = values[buckets * dim..buckets * dim + dim].to_vec();
        Ok(QualityModel {
            buckets,
            dim,
            embeddings,
            output,
            bias: values[floats - 1],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random "prose" from one vocabulary vs random "spam" from another, sharing some words.
    fn examples(n: usize, seed: u64) -> Vec<(String, bool)> {
        let good = [
            "the",
            "system",
            "provides",
            "packages",
            "users",
            "install",
            "software",
            "은",
            "데비안",
            "설치합니다",
            "자유",
            "운영체제",
        ];
        let bad = [
            "buy", "cheap", "click", "free", "win", "casino", "the", "지금", "클릭", "무료",
            "당첨", "대박",
        ];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|i| {
                let label = i % 2 == 0;
                let vocab = if label { &good } else { &bad };
                let text: Vec<&str> = (0..rng.random_range(5..30))
                    .map(|_| vocab[rng.random_range(0..vocab.len())])
                    .collect();
                (text.join(" "), label)
            })
            .collect()
    }

    #[test]
    fn learns_separable_data_deterministically_and_round_trips() {
        let train: Vec<(String, bool)> = examples(400, 1);
        let refs: Vec<(&str, bool)> = train.iter().map(|(t, l)| (t.as_str(), *l)).collect();
        let s = TrainSettings {
            buckets: 1 << 12,
            dim: 8,
            ..TrainSettings::default()
        };
        let m = QualityModel::train(&refs, s).unwrap();
        let test = examples(200, 2);
        let correct = test
            .iter()
            .filter(|(t, l)| (m.predict(t) > 0.5) == *l)
            .count();
        assert!(correct >= 196, "{correct}/200");
        assert_eq!(QualityModel::train(&refs, s).unwrap(), m);
        let dir = kormo_testdeps::test_dir("quality");
        let path = dir.join("m.kqc");
        m.save(&path).unwrap();
        let loaded = QualityModel::load(&path).unwrap();
        assert_eq!(loaded, m);
        std::fs::write(&path, b"KORMOQC1short").unwrap();
        assert!(QualityModel::load(&path)
            .unwrap_err()
            .contains("not a kormo quality model"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Analytic gradients against central finite differences of an f64 reference loss.
    #[test]
    fn gradient_matches_finite_differences() {
        let train: Vec<(String, bool)> = examples(20, 3);
        let refs: Vec<(&str, bool)> = train.iter().map(|(t, l)| (t.as_str(), *l)).collect();
        let s = TrainSettings {
            buckets: 64,
            dim: 4,
            epochs: 1,
            ..TrainSettings::default()
        };
        let m = QualityModel::train(&refs, s).unwrap();
        let f = features("데비안 system provides the packages", s.buckets); // repeats some buckets
        let label = true;
        // f64 reference: parameters as [embeddings.., output.., bias].
        let params: Vec<f64> = m
            .embeddings
            .iter()
            .chain(&m.output)
            .chain([&m.bias])
            .map(|&v| v as f64)
            .collect();
        let loss = |p: &[f64]| {
            let mut h = vec![0f64; s.dim];
            for &fi in &f {
                for (d, hv) in h.iter_mut().enumerate() {
                    *hv += p[fi as usize * s.dim + d] / f.len() as f64;
                }
            }
            let out = &p[s.buckets * s.dim..];
            let z = out[s.dim] + (0..s.dim).map(|d| out[d] * h[d]).sum::<f64>();
            let prob = 1.0 / (1.0 + (-z).exp());
            if label {
                -prob.ln()
            } else {
                -(1.0 - prob).ln()
            }
        };
        let mut hidden = vec![0f32; s.dim];
        let g = m.gradient(&f, label, &mut hidden);
        let mut analytic = vec![0f64; params.len()];
        for &fi in &f {
            for d in 0..s.dim {
                analytic[fi as usize * s.dim + d] += g.row_per_occurrence[d] as f64;
            }
        }
        for d in 0..s.dim {
            analytic[s.buckets * s.dim + d] = g.output[d] as f64;
        }
        analytic[s.buckets * s.dim + s.dim] = g.bias as f64;
        let eps = 1e-6;
        let mut checked = 0;
        for i in 0..params.len() {
            let (mut plus, mut minus) = (params.clone(), params.clone());
            plus[i] += eps;
            minus[i] -= eps;
            let numeric = (loss(&plus) - loss(&minus)) / (2.0 * eps);
            assert!(
                (numeric - analytic[i]).abs() < 1e-4 + 1e-3 * numeric.abs(),
                "param {i}: {numeric} vs {}",
                analytic[i]
            );
            checked += (numeric.abs() > 1e-6) as usize;
        }
        assert!(checked > s.dim, "only {checked} non-zero gradients");
    }

    #[test]
    fn rejects_one_class_training() {
        assert!(QualityModel::train(&[("a b c", true)], TrainSettings::default()).is_err());
    }

    #[test]
    fn features_include_words_bigrams_and_subwords() {
        // "ab": unigram, 3-grams "<ab", "ab>", 4-gram "<ab>": 4 features; "ab cd": 2*4 + 1 bigram.
        assert_eq!(features("ab", 1 << 20).len(), 4);
        assert_eq!(features("ab cd", 1 << 20).len(), 9);
        assert_eq!(features("AB", 1 << 20), features("ab", 1 << 20));
    }
}
