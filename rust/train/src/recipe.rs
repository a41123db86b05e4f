//! The training recipe: typed, validated configuration of every stage (configs/*.toml).
//!
//! A recipe names a model (a preset of `kormo_model::ModelConfig` plus optional field
//! overrides), the token ids of its vocabulary, the optimizer and LR schedule defaults, the data
//! sources, and the four stages `pretrain1`, `pretrain2`, `midtrain`, `sft`. Each stage starts
//! from an init (scratch or the final checkpoint of an earlier stage) and runs one or more
//! phases (midtrain: `long_context` then `reasoning`); a phase fixes the data mixture, sequence
//! length, batch shape, length (tokens or steps), masking, and optional LR/schedule overrides.
//! Optimizer state is re-initialised at every stage and phase boundary (KORMo's practice).
//!
//! Every struct denies unknown keys. Any mistake — unparsable TOML, unknown or missing key, bad
//! value, a mixture naming an undefined source — is a [`RecipeError`] naming the file and the
//! dotted key, never a panic. The tiny recipe is compiled into the binary so it needs no file.

use kormo_data::{PositionMode, SyntheticKind};
use kormo_model::ModelConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The tiny recipe, embedded so `train` runs with no files at all.
pub const TINY_RECIPE: &str = include_str!("../../../configs/tiny.toml");

/// Stage names in training order.
pub const STAGES: [&str; 4] = ["pretrain1", "pretrain2", "midtrain", "sft"];

/// A recipe problem, naming the file and (when known) the key.
#[derive(Debug, Clone, PartialEq)]
pub struct RecipeError {
    pub file: String,
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for RecipeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: key `{}`: {}", self.file, self.key, self.message)
        }
    }
}

impl std::error::Error for RecipeError {}

/// The file as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeFile {
    pub name: String,
    /// Seeds model init and data order.
    pub seed: u64,
    /// Allow a stage whose init checkpoint is missing to start from scratch (tiny demo only).
    #[serde(default)]
    pub scratch_if_init_missing: bool,
    /// `preset = "tiny" | "proxy-1b" | "kormo-10.8b"` plus any `ModelConfig` field to override.
    pub model: toml::Table,
    pub tokens: TokensConfig,
    pub optimizer: OptimizerConfig,
    pub schedule: ScheduleConfig,
    pub checkpoint: CheckpointConfig,
    /// Spike and NaN handling, z-loss (optional table; defaults in [`StabilityConfig`]).
    #[serde(default)]
    pub stability: StabilityConfig,
    /// Held-out evaluation during training (optional table; off by default).
    #[serde(default)]
    pub eval: EvalConfig,
    /// How `train --world-size N` shards (optional table; default `full_shard`). Left out of
    /// the recipe hash when absent, so adding the feature did not change existing hashes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dist: Option<DistConfig>,
    /// How attention is masked inside a packed row (optional table; default the intra-document
    /// mask). Left out of the recipe hash at its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<AttentionConfig>,
    /// Downstream benchmark scores during training (optional table, docs/eval.md; paths
    /// relative to the recipe file). Scoring changes no weight, so it is left out of the
    /// recipe hash: adding it to a running recipe still resumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downstream: Option<kormo_eval::DownstreamSection>,
    pub sources: BTreeMap<String, SourceConfig>,
    pub stages: Stages,
}

/// `[attention]`: which tokens of a packed row attend to which.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttentionConfig {
    #[serde(default)]
    pub mask: MaskMode,
}

/// The attention mask of a packed row (docs/recipes.md, "Attention mask").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskMode {
    /// A token attends to the earlier tokens of its own document (KORMo's intra-document mask).
    #[default]
    Document,
    /// A token attends to every earlier token of the row, across document boundaries.
    Causal,
    /// Cross-lingual document attention (kormo's definition, docs/recipes.md): a token attends
    /// to the earlier tokens of its own document and to those of the earlier documents of its
    /// row in the other language (Korean / not Korean, as the shards record it).
    Xlda,
}

/// Training stability: the outlier guard (llm.c-style z-score over a running window of the
/// last `outlier_window` steps' loss and grad norm), NaN/Inf recovery, and z-loss.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StabilityConfig {
    /// Steps of loss / grad-norm history the z-score is taken over.
    pub outlier_window: usize,
    /// Skip the update when loss or grad norm is this many standard deviations above the
    /// window's mean (0 disables the guard).
    pub outlier_threshold: f64,
    /// Steps of history (in the phase) needed before the guard acts.
    pub outlier_warmup: usize,
    /// Times a run may restore its last good checkpoint after a NaN/Inf loss or grad norm
    /// before it gives up.
    pub nonfinite_retries: u32,
    /// z-loss coefficient (`z * logsumexp^2` per token); KORMo's code has 1e-5, off by default.
    pub z_loss: f64,
    /// CUDA kernels without order-dependent floating-point sums (attention dQ, embedding
    /// backward, the gradient norm: docs/kernels.md), so a CUDA run stopped and resumed is
    /// bitwise the uninterrupted one. The CPU backend is deterministic either way. Left out of
    /// the recipe hash when off, so adding the key did not change existing hashes.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deterministic: bool,
}

impl Default for StabilityConfig {
    fn default() -> Self {
        StabilityConfig {
            outlier_window: 128,
            outlier_threshold: 5.0,
            outlier_warmup: 64,
            nonfinite_retries: 3,
            z_loss: 0.0,
            deterministic: false,
        }
    }
}

/// FSDP settings of `train --world-size N` (kormo_dist::FsdpConfig minus the clip, which is
/// `optimizer.grad_clip`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistConfig {
    /// `full_shard` (default), `shard_grad_op` or `hybrid`.
    #[serde(default = "default_strategy")]
    pub strategy: kormo_dist::Strategy,
    /// Ranks per shard group for `hybrid` (GPUs per node); must divide the world size.
    #[serde(default)]
    pub hybrid_group_size: Option<usize>,
    /// `f32` (default) or `bf16` gradients in reduce-scatter.
    #[serde(default)]
    pub reduce_dtype: kormo_dist::ReduceDtype,
}

fn default_strategy() -> kormo_dist::Strategy {
    kormo_dist::Strategy::FullShard
}

impl Default for DistConfig {
    fn default() -> Self {
        DistConfig {
            strategy: default_strategy(),
            hybrid_group_size: None,
            reduce_dtype: kormo_dist::ReduceDtype::F32,
        }
    }
}

/// Held-out loss and perplexity per data source, on documents training never sees.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Evaluate every this many steps and at the end of each phase (0: never, and nothing is
    /// held out).
    pub every_steps: u64,
    /// Documents of each source (its last ones) held out from training for evaluation.
    pub holdout_documents: u64,
    /// Rows of the phase's `seq_len` evaluated per source (the same rows every time).
    pub rows: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            every_steps: 0,
            holdout_documents: 16,
            rows: 8,
        }
    }
}

/// Special token ids of the vocabulary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "vocabulary", rename_all = "snake_case", deny_unknown_fields)]
pub enum TokensConfig {
    /// The built-in byte-level vocabulary (kormo_data::ByteVocab).
    Bytes,
    /// A trained BPE tokenizer (`kormo-tokenizer train`): `tokenizer = "PATH"` names its
    /// tokenizer.json, relative to the recipe file. Its special tokens give the ids (by text:
    /// `<|BOS|>`, `<|EOT|>`, `<think>`, `</think>`, `<|BOT|>`, `<|pad|>` or else `<|EOT|>` for
    /// pad), its id count padded to a multiple of 128 is the model vocab, every shard must
    /// carry its fingerprint, and the synthetic corpora are encoded with it.
    Bpe { tokenizer: PathBuf },
    /// A trained tokenizer's ids, given explicitly.
    Tokenizer {
        bos: u32,
        eos: u32,
        think: u32,
        pad: u32,
        /// The tokenizer's fingerprint, which every shard must carry; without it the sources
        /// must merely agree with each other.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fingerprint: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay; not applied to embeddings or norms.
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 disables).
    pub grad_clip: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Warmup, stable, decay (KORMo).
    Wsd,
    Cosine,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    pub kind: ScheduleKind,
    /// Fraction of the phase's steps spent warming up linearly from 0.
    pub warmup_fraction: f64,
    /// WSD: fraction of the steps spent decaying at the end (ignored by cosine).
    #[serde(default)]
    pub decay_fraction: f64,
    /// Final LR as a fraction of the peak.
    pub min_lr_ratio: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Save a periodic checkpoint every this many steps (at least 1).
    pub every_steps: u64,
    /// Periodic checkpoints to keep per stage.
    pub keep_last: usize,
}

/// One dataset: a shard manifest on disk, or a built-in synthetic corpus.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Path of a shard manifest (kormo_shards), relative to the recipe file.
    pub path: Option<PathBuf>,
    /// Generate this corpus into RUN_DIR/data/<source> instead.
    pub synthetic: Option<SyntheticKind>,
    /// Number of synthetic documents.
    pub documents: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stages {
    pub pretrain1: StageConfig,
    pub pretrain2: StageConfig,
    pub midtrain: StageConfig,
    pub sft: StageConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// `"scratch"`, the stage whose final checkpoint this stage starts from, or
    /// `"hf:FOLDER"`: the weights of a Hugging Face model folder (relative to the recipe file).
    pub init: String,
    pub phases: Vec<PhaseConfig>,
    /// Keep only each layer's input and recompute the rest in the backward pass (less memory,
    /// about a third more compute; KORMo trains without). Not serialised: it changes neither
    /// the results nor the recipe hash, so a run may resume with it switched.
    #[serde(default, skip_serializing)]
    pub activation_checkpointing: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseConfig {
    pub name: String,
    /// Source name -> sampling weight (need not sum to 1).
    pub mixture: BTreeMap<String, f64>,
    pub seq_len: usize,
    pub micro_batch: usize,
    pub grad_accum: usize,
    /// Length as a token budget (rounded up to whole steps) ...
    pub tokens: Option<u64>,
    /// ... or as a step count; exactly one of the two.
    pub steps: Option<u64>,
    #[serde(default = "default_positions")]
    pub positions: PositionMode,
    /// Exclude `<think>` targets from the loss (reasoning phase).
    #[serde(default)]
    pub mask_think_token: bool,
    /// `"assistant"`: train only inside the documents' loss-mask spans (SFT on assistant turns,
    /// reasoning masked or not as `prepare` wrote them); every document of every source must
    /// have spans, checked at start-up. `"all"` (default): spans where documents have them,
    /// every token where they have none.
    #[serde(default, skip_serializing_if = "TrainOn::is_all")]
    pub train_on: TrainOn,
    /// Peak LR override for this phase.
    pub lr: Option<f64>,
    /// Schedule override for this phase.
    pub schedule: Option<ScheduleConfig>,
}

/// Which targets of a phase's documents carry loss ([`PhaseConfig::train_on`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainOn {
    #[default]
    All,
    Assistant,
}

impl TrainOn {
    fn is_all(&self) -> bool {
        *self == TrainOn::All
    }
}

fn default_positions() -> PositionMode {
    PositionMode::Row
}

impl PhaseConfig {
    pub fn tokens_per_step(&self) -> u64 {
        (self.seq_len * self.micro_batch * self.grad_accum) as u64
    }

    /// Refuses a source whose documents lack the loss-mask spans this phase trains on
    /// (`train_on = "assistant"`): without them the phase would silently train on every token
    /// (user turns, system prompts, masked reasoning). `origin` names the recipe file.
    pub fn check_loss_masks(&self, source: &kormo_data::Source, origin: &str) -> Result<(), String> {
        if self.train_on != TrainOn::Assistant {
            return Ok(());
        }
        match source.first_document_without_spans().map_err(|e| e.0)? {
            None => Ok(()),
            Some((shard, document)) => Err(format!(
                "{origin}: phase `{}` trains on assistant turns only (train_on = \"assistant\"), but \
                 source `{}` has documents without loss-mask spans (first: document {document} of {}); \
                 prepare it as a chat source (`[chat.{}]` in the prep config, docs/data-prep.md) or \
                 use train_on = \"all\"",
                self.name,
                source.name,
                shard.display(),
                source.name
            )),
        }
    }

    /// Optimizer steps of this phase.
    pub fn total_steps(&self) -> u64 {
        match (self.steps, self.tokens) {
            (Some(steps), _) => steps,
            (None, Some(tokens)) => tokens.div_ceil(self.tokens_per_step()),
            (None, None) => 0,
        }
    }
}

/// A loaded, validated recipe.
#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    pub file: RecipeFile,
    pub model: ModelConfig,
    /// Where the recipe came from (a path, or `<built-in tiny>`), for messages.
    pub origin: String,
    /// Directory that relative source paths resolve against.
    pub base_dir: PathBuf,
    /// The tokenizer `[tokens] vocabulary = "bpe"` names, loaded; None otherwise.
    pub vocabulary: Option<kormo_data::Vocabulary>,
}

impl Recipe {
    /// `spec` is a file path or a preset name (`tiny` is built in; `proxy-1b` and `kormo-10.8b`
    /// resolve to `configs/<name>.toml` under `repo_dir`).
    pub fn resolve(spec: &str, repo_dir: &Path) -> Result<Recipe, RecipeError> {
        match spec {
            "tiny" => Recipe::parse(TINY_RECIPE, "<built-in tiny recipe (configs/tiny.toml)>", repo_dir),
            "proxy-1b" | "kormo-10.8b" => Recipe::load(&repo_dir.join("configs").join(format!("{spec}.toml"))).map_err(|mut e| {
                if e.key.is_empty() {
                    e.message.push_str(" (preset recipes live in the repository's configs/: run from the repository or pass --config=PATH)");
                }
                e
            }),
            path => Recipe::load(Path::new(path)),
        }
    }

    /// What `--config=` takes to load this recipe again: None for the default built-in tiny
    /// recipe, the preset name for a shipped preset, else the file's path (shell-quoted when
    /// it needs it).
    pub fn config_arg(&self) -> Option<String> {
        if self.origin.starts_with("<built-in tiny") {
            return None;
        }
        let name = &self.file.name;
        let preset = ["proxy-1b", "kormo-10.8b"].contains(&name.as_str())
            && Path::new(&self.origin).ends_with(Path::new("configs").join(format!("{name}.toml")));
        if preset {
            return Some(name.clone());
        }
        let plain = self
            .origin
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c));
        Some(if plain {
            self.origin.clone()
        } else {
            format!("'{}'", self.origin.replace('\'', "'\\''"))
        })
    }

    pub fn load(path: &Path) -> Result<Recipe, RecipeError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| RecipeError {
            file: origin.clone(),
            key: String::new(),
            message: format!("cannot read recipe: {e}"),
        })?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Recipe::parse(&text, &origin, &base_dir)
    }

    pub fn parse(text: &str, origin: &str, base_dir: &Path) -> Result<Recipe, RecipeError> {
        let file: RecipeFile = toml::from_str(text).map_err(|e| toml_error(origin, text, &e))?;
        let err = |key: &str, message: String| RecipeError {
            file: origin.to_string(),
            key: key.to_string(),
            message,
        };
        let mut model = resolve_model(&file.model).map_err(|(key, message)| err(&key, message))?;
        validate(&file, &model).map_err(|(key, message)| err(&key, message))?;
        let vocabulary = match &file.tokens {
            TokensConfig::Bpe { tokenizer } => {
                let vocabulary = kormo_data::Vocabulary::load(&base_dir.join(tokenizer))
                    .map_err(|e| err("tokens.tokenizer", e.0))?;
                let size = vocabulary.size() as usize;
                // The model's vocab is the tokenizer's; an explicit `model.vocab` must agree.
                if file.model.contains_key("vocab") && model.vocab != size {
                    return Err(err(
                        "model.vocab",
                        format!(
                            "{} differs from the tokenizer's padded vocabulary {size} (leave \
                             `vocab` out: it comes from the tokenizer)",
                            model.vocab
                        ),
                    ));
                }
                model = model.with_vocab(size);
                Some(vocabulary)
            }
            TokensConfig::Bytes | TokensConfig::Tokenizer { .. } => None,
        };
        Ok(Recipe {
            file,
            model,
            origin: origin.to_string(),
            base_dir: base_dir.to_path_buf(),
            vocabulary,
        })
    }

    pub fn stage(&self, name: &str) -> Option<&StageConfig> {
        let s = &self.file.stages;
        match name {
            "pretrain1" => Some(&s.pretrain1),
            "pretrain2" => Some(&s.pretrain2),
            "midtrain" => Some(&s.midtrain),
            "sft" => Some(&s.sft),
            _ => None,
        }
    }

    /// FNV-1a (64-bit) of the canonical JSON form: equal recipes hash equal wherever they came from.
    pub fn hash(&self) -> String {
        // Settings that change no weight, and defaults written out, hash as if absent.
        let file = RecipeFile {
            downstream: None,
            attention: self.file.attention.filter(|a| *a != AttentionConfig::default()),
            ..self.file.clone()
        };
        let json = serde_json::to_string(&file).expect("recipe serialises");
        let hash = json.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        });
        format!("{hash:016x}")
    }

    /// The attention mask of every phase (`[attention] mask`).
    pub fn mask(&self) -> MaskMode {
        self.file.attention.unwrap_or_default().mask
    }

    pub fn special_tokens(&self) -> kormo_data::SpecialTokens {
        match self.file.tokens {
            TokensConfig::Bytes => kormo_data::ByteVocab::specials(),
            TokensConfig::Bpe { .. } => self.synthetic_vocabulary().specials(),
            TokensConfig::Tokenizer {
                bos,
                eos,
                think,
                pad,
                ..
            } => kormo_data::SpecialTokens {
                bos,
                eos,
                think,
                pad,
            },
        }
    }

    /// The tokenizer fingerprint every shard must carry, when the recipe fixes one.
    pub fn tokenizer_fingerprint(&self) -> Option<&str> {
        match &self.file.tokens {
            TokensConfig::Bytes => Some(kormo_data::ByteVocab::FINGERPRINT),
            TokensConfig::Bpe { .. } => self.vocabulary.as_ref().map(|v| v.fingerprint()),
            TokensConfig::Tokenizer { fingerprint, .. } => fingerprint.as_deref(),
        }
    }

    /// Copies the recipe's BPE tokenizer (tokenizer.json and its tokenizer_config.json sibling,
    /// when present) into RUN_DIR/tokenizer/, where `kormo-hf export` finds it next to the
    /// checkpoints. A run directory already holding a different tokenizer is refused: its
    /// earlier stages were trained on other ids. Returns the installed path (None: no BPE).
    pub fn install_tokenizer(&self, run_dir: &Path) -> Result<Option<PathBuf>, String> {
        let (TokensConfig::Bpe { tokenizer }, Some(vocabulary)) =
            (&self.file.tokens, &self.vocabulary)
        else {
            return Ok(None);
        };
        let source = self.base_dir.join(tokenizer);
        let dir = run_dir.join("tokenizer");
        let target = dir.join("tokenizer.json");
        if target.is_file() {
            let installed = kormo_data::Vocabulary::load(&target).map_err(|e| e.0)?;
            if installed.fingerprint() != vocabulary.fingerprint() {
                return Err(format!(
                    "{}: the run directory holds a tokenizer with fingerprint {}, but recipe {} \
                     uses {} (fingerprint {}); use a fresh run directory",
                    target.display(),
                    installed.fingerprint(),
                    self.origin,
                    source.display(),
                    vocabulary.fingerprint()
                ));
            }
        }
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let config = source.with_file_name("tokenizer_config.json");
        let files = std::iter::once((source.clone(), target.clone())).chain(
            config
                .is_file()
                .then(|| (config, dir.join("tokenizer_config.json"))),
        );
        for (from, to) in files {
            let bytes = std::fs::read(&from).map_err(|e| format!("{}: {e}", from.display()))?;
            // Temp + rename: an interrupted copy never leaves a truncated tokenizer behind.
            let temp = to.with_extension("json.tmp");
            std::fs::write(&temp, bytes)
                .and_then(|()| std::fs::rename(&temp, &to))
                .map_err(|e| format!("{}: {e}", to.display()))?;
        }
        Ok(Some(target))
    }

    /// The vocabulary synthetic corpora are encoded with: the recipe's BPE tokenizer, else bytes.
    pub fn synthetic_vocabulary(&self) -> kormo_data::Vocabulary {
        self.vocabulary
            .clone()
            .unwrap_or_else(kormo_data::Vocabulary::bytes)
    }

    /// The peak LR and schedule a phase runs with (phase overrides over recipe defaults).
    pub fn phase_schedule(&self, phase: &PhaseConfig) -> (f64, ScheduleConfig) {
        (
            phase.lr.unwrap_or(self.file.optimizer.lr),
            phase.schedule.unwrap_or(self.file.schedule),
        )
    }
}

fn resolve_model(table: &toml::Table) -> Result<ModelConfig, (String, String)> {
    let mut table = table.clone();
    let preset = match table.remove("preset") {
        Some(toml::Value::String(name)) => name,
        Some(other) => {
            return Err((
                "model.preset".into(),
                format!("expected a preset name, found {other}"),
            ))
        }
        None => {
            return Err((
                "model.preset".into(),
                "missing (tiny, proxy-1b or kormo-10.8b)".into(),
            ))
        }
    };
    let base = ModelConfig::preset(&preset).ok_or_else(|| {
        (
            "model.preset".to_string(),
            format!("unknown preset `{preset}` (tiny, proxy-1b or kormo-10.8b)"),
        )
    })?;
    let mut merged = toml::Table::try_from(&base).expect("model config serialises to a table");
    for (key, value) in table {
        // Settings left out of a preset's table at their defaults are known too.
        if !merged.contains_key(&key) && !ModelConfig::OPTIONAL_KEYS.contains(&key.as_str()) {
            return Err((
                format!("model.{key}"),
                format!(
                    "unknown model field (known: {})",
                    merged.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        merged.insert(key, value);
    }
    let model: ModelConfig = toml::Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| ("model".to_string(), e.message().to_string()))?;
    model.validate().map_err(|e| match e {
        kormo_model::ModelError::Config { key, message } => (format!("model.{key}"), message),
        other => ("model".to_string(), other.to_string()),
    })?;
    Ok(model)
}

type Invalid = (String, String);

fn check(ok: bool, key: impl Into<String>, message: impl Into<String>) -> Result<(), Invalid> {
    if ok {
        Ok(())
    } else {
        Err((key.into(), message.into()))
    }
}

fn positive(value: f64) -> bool {
    value.is_finite() && value > 0.0
}

fn validate_schedule(s: &ScheduleConfig, key: &str) -> Result<(), Invalid> {
    let unit = |v: f64| (0.0..=1.0).contains(&v);
    check(
        unit(s.warmup_fraction),
        format!("{key}.warmup_fraction"),
        format!("{} must be in [0, 1]", s.warmup_fraction),
    )?;
    check(
        unit(s.decay_fraction),
        format!("{key}.decay_fraction"),
        format!("{} must be in [0, 1]", s.decay_fraction),
    )?;
    check(
        s.warmup_fraction + s.decay_fraction <= 1.0,
        format!("{key}.decay_fraction"),
        "warmup_fraction + decay_fraction must not exceed 1",
    )?;
    check(
        unit(s.min_lr_ratio),
        format!("{key}.min_lr_ratio"),
        format!("{} must be in [0, 1]", s.min_lr_ratio),
    )
}

fn validate(file: &RecipeFile, model: &ModelConfig) -> Result<(), Invalid> {
    validate_settings(file)?;
    validate_tokens(file, model)?;
    validate_sources(file)?;
    for stage_name in STAGES {
        validate_stage(file, stage_name)?;
    }
    Ok(())
}

/// The run-wide tables: optimizer, schedule, stability, dist, eval, checkpoint.
fn validate_settings(file: &RecipeFile) -> Result<(), Invalid> {
    let o = &file.optimizer;
    check(
        positive(o.lr),
        "optimizer.lr",
        format!("{} must be a positive number", o.lr),
    )?;
    check(
        (0.0..1.0).contains(&o.beta1),
        "optimizer.beta1",
        format!("{} must be in [0, 1)", o.beta1),
    )?;
    check(
        (0.0..1.0).contains(&o.beta2),
        "optimizer.beta2",
        format!("{} must be in [0, 1)", o.beta2),
    )?;
    check(
        positive(o.eps),
        "optimizer.eps",
        format!("{} must be a positive number", o.eps),
    )?;
    check(
        o.weight_decay.is_finite() && o.weight_decay >= 0.0,
        "optimizer.weight_decay",
        format!("{} must be >= 0", o.weight_decay),
    )?;
    check(
        o.grad_clip.is_finite() && o.grad_clip >= 0.0,
        "optimizer.grad_clip",
        format!("{} must be >= 0 (0 disables)", o.grad_clip),
    )?;
    validate_schedule(&file.schedule, "schedule")?;
    let st = &file.stability;
    check(
        st.outlier_window >= 2,
        "stability.outlier_window",
        format!("{} must be at least 2", st.outlier_window),
    )?;
    check(
        st.outlier_threshold.is_finite() && st.outlier_threshold >= 0.0,
        "stability.outlier_threshold",
        format!("{} must be >= 0 (0 disables)", st.outlier_threshold),
    )?;
    check(
        (2..=st.outlier_window).contains(&st.outlier_warmup),
        "stability.outlier_warmup",
        format!(
            "{} must be in [2, outlier_window = {}]",
            st.outlier_warmup, st.outlier_window
        ),
    )?;
    check(
        st.z_loss.is_finite() && st.z_loss >= 0.0,
        "stability.z_loss",
        format!("{} must be >= 0 (0 disables)", st.z_loss),
    )?;
    if let Some(dist) = &file.dist {
        check(
            (dist.strategy == kormo_dist::Strategy::Hybrid) == dist.hybrid_group_size.is_some(),
            "dist.hybrid_group_size",
            "give it exactly when strategy = \"hybrid\" (ranks per node)",
        )?;
        check(
            dist.hybrid_group_size != Some(0),
            "dist.hybrid_group_size",
            "must be at least 1",
        )?;
    }
    let ev = &file.eval;
    if ev.every_steps > 0 {
        check(
            ev.holdout_documents >= 1,
            "eval.holdout_documents",
            "must be at least 1 when eval.every_steps is set",
        )?;
        check(
            ev.rows >= 1,
            "eval.rows",
            "must be at least 1 when eval.every_steps is set",
        )?;
    }
    check(
        file.checkpoint.every_steps >= 1,
        "checkpoint.every_steps",
        "must be at least 1 (a periodic checkpoint every this many steps; a run that stops \
         early or ends checkpoints as well)",
    )?;
    check(
        file.checkpoint.keep_last >= 1,
        "checkpoint.keep_last",
        "must be at least 1",
    )?;

    Ok(())
}

/// `[tokens]` against the model's vocabulary.
fn validate_tokens(file: &RecipeFile, model: &ModelConfig) -> Result<(), Invalid> {
    let vocab = model.vocab as u64;
    match file.tokens {
        TokensConfig::Bpe { ref tokenizer } => check(
            !tokenizer.as_os_str().is_empty(),
            "tokens.tokenizer",
            "must name a tokenizer.json (relative to the recipe file)",
        )?,
        TokensConfig::Bytes => check(
            vocab >= kormo_data::ByteVocab::SIZE as u64,
            "model.vocab",
            format!(
                "{vocab} is smaller than the byte vocabulary ({})",
                kormo_data::ByteVocab::SIZE
            ),
        )?,
        TokensConfig::Tokenizer {
            bos,
            eos,
            think,
            pad,
            ref fingerprint,
        } => {
            check(
                fingerprint.as_ref().is_none_or(|f| !f.is_empty()),
                "tokens.fingerprint",
                "must not be empty (leave it out to only require the sources to agree)",
            )?;
            for (key, id) in [("bos", bos), ("eos", eos), ("think", think), ("pad", pad)] {
                check(
                    (id as u64) < vocab,
                    format!("tokens.{key}"),
                    format!("id {id} is not below the model vocab {vocab}"),
                )?;
            }
        }
    }    Ok(())
}

/// Each `[sources.NAME]`: a path or a synthetic corpus.
fn validate_sources(file: &RecipeFile) -> Result<(), Invalid> {
    for (name, source) in &file.sources {
        let key = format!("sources.{name}");
        match (&source.path, &source.synthetic) {
            (Some(_), None) => check(
                source.documents.is_none(),
                format!("{key}.documents"),
                "only synthetic sources take `documents`",
            )?,
            (None, Some(_)) => check(
                source.documents.is_some_and(|d| d > 0),
                format!("{key}.documents"),
                "a synthetic source needs `documents` >= 1",
            )?,
            _ => return Err((key, "give exactly one of `path` or `synthetic`".into())),
        }
    }    Ok(())
}

/// `[stages.NAME]`: its init and each of its phases.
fn validate_stage(file: &RecipeFile, stage_name: &str) -> Result<(), Invalid> {
    let stage = match stage_name {
        "pretrain1" => &file.stages.pretrain1,
        "pretrain2" => &file.stages.pretrain2,
        "midtrain" => &file.stages.midtrain,
        _ => &file.stages.sft,
    };
    let key = format!("stages.{stage_name}");
    let position = STAGES
        .iter()
        .position(|s| *s == stage_name)
        .expect("listed");
    check(
        stage.init == "scratch"
            || STAGES[..position].contains(&stage.init.as_str())
            || stage
                .init
                .strip_prefix("hf:")
                .is_some_and(|f| !f.is_empty()),
        format!("{key}.init"),
        format!(
            "`{}` must be \"scratch\", an earlier stage ({}) or \"hf:FOLDER\"",
            stage.init,
            STAGES[..position].join(", ")
        ),
    )?;
    check(
        !stage.phases.is_empty(),
        format!("{key}.phases"),
        "a stage needs at least one phase",
    )?;
    for i in 0..stage.phases.len() {
        validate_phase(file, stage, &format!("{key}.phases[{i}]"), i)?;
    }
    Ok(())
}

/// Phase `i` of `stage`, at recipe key `key`.
fn validate_phase(file: &RecipeFile, stage: &StageConfig, key: &str, i: usize) -> Result<(), Invalid> {
    let phase = &stage.phases[i];
    check(
        !phase.name.is_empty()
            && phase
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
        format!("{key}.name"),
        format!(
            "`{}` must be a non-empty name of letters, digits, _ or -",
            phase.name
        ),
    )?;
    check(
        stage.phases[..i].iter().all(|p| p.name != phase.name),
        format!("{key}.name"),
        format!("phase name `{}` is used twice", phase.name),
    )?;
    check(
        phase.seq_len >= 2,
        format!("{key}.seq_len"),
        format!("{} must be at least 2", phase.seq_len),
    )?;
    check(
        phase.micro_batch >= 1,
        format!("{key}.micro_batch"),
        "must be at least 1",
    )?;
    check(
        phase.grad_accum >= 1,
        format!("{key}.grad_accum"),
        "must be at least 1",
    )?;
    match (phase.tokens, phase.steps) {
        (Some(t), None) => check(t > 0, format!("{key}.tokens"), "must be at least 1")?,
        (None, Some(s)) => check(s > 0, format!("{key}.steps"), "must be at least 1")?,
        _ => return Err((key.to_string(), "give exactly one of `tokens` or `steps`".into())),
    }
    check(
        !phase.mixture.is_empty(),
        format!("{key}.mixture"),
        "needs at least one source",
    )?;
    for (source, weight) in &phase.mixture {
        check(
            file.sources.contains_key(source),
            format!("{key}.mixture.{source}"),
            format!(
                "source `{source}` is not defined under [sources] ({})",
                file.sources.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        )?;
        check(
            positive(*weight),
            format!("{key}.mixture.{source}"),
            format!("weight {weight} must be a positive number"),
        )?;
    }
    if let Some(lr) = phase.lr {
        check(
            positive(lr),
            format!("{key}.lr"),
            format!("{lr} must be a positive number"),
        )?;
    }
    if let Some(schedule) = &phase.schedule {
        validate_schedule(schedule, &format!("{key}.schedule"))?;
    }
    Ok(())
}

/// Turns a TOML error into `file:line: key `a.b.c`: message`, recovering the dotted key from the
/// text (toml reports a span and a message, not the key path). An unknown key that is misspelled
/// the same way in several tables of one kind is reported at its first line, naming the others.
fn toml_error(origin: &str, text: &str, e: &toml::de::Error) -> RecipeError {
    let mut message = e.message().trim().to_string();
    let Some(span) = e.span() else {
        return RecipeError {
            file: origin.to_string(),
            key: String::new(),
            message,
        };
    };
    let start = span.start.min(text.len());
    let lines: Vec<&str> = text.lines().collect();
    let mut line_index = text[..start].matches('\n').count();
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    // Inside a `[a.b.c]` header, a span on one of its names is the table it names (`a` for an
    // implicit parent table); anywhere else, the innermost header at or above the line.
    let header_prefix = (start > line_start)
        .then(|| lines.get(line_index).copied().unwrap_or(""))
        .filter(|l| l.trim_start().starts_with('['))
        .map(|_| {
            let inner = &text[line_start..span.end.min(text.len())];
            inner
                .trim_start()
                .trim_start_matches('[')
                .trim()
                .to_string()
        });
    let mut key = match header_prefix {
        Some(prefix) => prefix,
        None => line_key(&lines, line_index),
    };
    if let Some(unknown) = quoted_after(&message, "unknown field `") {
        let same_kind = |other: &str| table_kind(other) == table_kind(&key);
        let places: Vec<usize> = (0..lines.len())
            .filter(|&i| {
                let k = line_key(&lines, i);
                k.rsplit('.').next() == Some(unknown.as_str()) && same_kind(&k)
            })
            .collect();
        if let Some(&first) = places.first().filter(|&&first| first < line_index) {
            line_index = first;
            key = line_key(&lines, first);
        }
        if places.len() > 1 {
            let others: Vec<String> = places
                .iter()
                .filter(|&&i| i != line_index)
                .map(|i| (i + 1).to_string())
                .collect();
            message.push_str(&format!(" (also on line {})", others.join(", ")));
        }
    }
    if let Some(missing) = quoted_after(&message, "missing field `") {
        key = if key.is_empty() {
            missing
        } else {
            format!("{key}.{missing}")
        };
    }
    RecipeError {
        file: format!("{origin}:{}", line_index + 1),
        key,
        message,
    }
}

/// The text between `prefix` and the next backquote in `message`.
fn quoted_after(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    Some(rest.split('`').next()?.to_string())
}

/// The dotted key of line `index`: its table (the innermost header at or above it, with
/// array-of-tables indices), plus the key of a `key = value` line.
fn line_key(lines: &[&str], index: usize) -> String {
    let mut table = String::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for l in lines.iter().take(index + 1) {
        let l = l.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            let n = counts.entry(name.clone()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_string();
        }
    }
    let line = lines.get(index).copied().unwrap_or("").trim();
    match line.split_once('=') {
        // A `key = value` line (not a comment): the key is on it.
        Some((local, _)) if !line.starts_with('[') && !line.starts_with('#') => {
            if table.is_empty() {
                local.trim().to_string()
            } else {
                format!("{table}.{}", local.trim())
            }
        }
        _ => table,
    }
}

/// What kind of table a dotted key's table is, for finding the same mistake elsewhere: its
/// first name, its depth and (below two levels) its last table name, indices dropped
/// (`stages.midtrain.phases[1]` and `stages.sft.phases[0]` are one kind, `sources.web` and
/// `sources.chat` another).
fn table_kind(key: &str) -> (String, usize, String) {
    let names: Vec<&str> = key
        .split('.')
        .map(|n| n.split('[').next().unwrap_or(n))
        .collect();
    let table = &names[..names.len().saturating_sub(1)];
    let last = if table.len() > 2 {
        table[table.len() - 1]
    } else {
        ""
    };
    (
        table.first().copied().unwrap_or("").to_string(),
        table.len(),
        last.to_string(),
    )
}

/// The name a value has in recipe files (`long_context`, `wsd`).
pub(crate) fn serde_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        other => format!("{other:?}"),
    }
}

/// ` --config=...` that loads this recipe again (see [`Recipe::config_arg`]); empty for the
/// default (built-in tiny).
pub(crate) fn config_flag(recipe: &Recipe) -> String {
    recipe
        .config_arg()
        .map_or_else(String::new, |arg| format!(" --config={arg}"))
}
