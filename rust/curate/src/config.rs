//! `curate`'s TOML config: the input fields, the judges, the two stages and the output
//! (docs/curate.md has a worked example).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::extract::{placeholders, Rule};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CurateConfig {
    #[serde(default)]
    pub input: InputFields,
    #[serde(rename = "judge")]
    pub judges: Vec<JudgeConfig>,
    pub solve: SolveStage,
    pub label: LabelStage,
    #[serde(default)]
    pub output: OutputConfig,
}

/// Where a record keeps its parts (top-level fields).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InputFields {
    pub question: String,
    pub reference: String,
    /// Records without it are in domain `default`.
    pub domain: String,
    /// Unique per record; without it a record's id is `file:line`.
    pub id: Option<String>,
}

impl Default for InputFields {
    fn default() -> Self {
        InputFields { question: "question".into(), reference: "answer".into(), domain: "domain".into(), id: None }
    }
}

/// One judge model: `name`, `kind` and the kind's fields in one table.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JudgeConfig {
    pub name: String,
    #[serde(flatten)]
    pub backend: Backend,
}

// By hand: serde's `flatten` cannot refuse unknown fields, and a misspelt `timeout_s` must not
// silently fall back to its default.
impl<'de> Deserialize<'de> for JudgeConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        let name = match table.remove("name") {
            Some(toml::Value::String(name)) => name,
            _ => return Err(D::Error::custom("a [[judge]] needs name = \"...\"")),
        };
        let backend = toml::Value::Table(table).try_into::<Backend>().map_err(|e| D::Error::custom(format!("judge `{name}`: {}", e.message())))?;
        Ok(JudgeConfig { name, backend })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Backend {
    /// A kormo checkpoint or Hugging Face folder, run by kormo's generation on the CPU.
    Kormo {
        model: PathBuf,
        #[serde(default = "default_preset")]
        preset: String,
        tokenizer: Option<PathBuf>,
        threads: Option<usize>,
        #[serde(default = "default_context")]
        max_context: usize,
    },
    /// An OpenAI-compatible `POST .../chat/completions` endpoint.
    Openai {
        url: String,
        /// The `model` field of the request.
        model: String,
        /// Environment variable holding the API key (sent as `Authorization: Bearer`).
        api_key_env: Option<String>,
        #[serde(default = "default_timeout")]
        timeout_s: f64,
        /// Further attempts after a failed one (connection errors, timeouts, 408, 429, 5xx).
        #[serde(default = "default_retries")]
        retries: u32,
        /// Wait before the first retry; doubled each time, at most 60 s.
        #[serde(default = "default_backoff")]
        backoff_ms: u64,
    },
}

fn default_preset() -> String {
    "tiny".into()
}
fn default_context() -> usize {
    4096
}
fn default_timeout() -> f64 {
    600.0
}
fn default_retries() -> u32 {
    3
}
fn default_backoff() -> u64 {
    2000
}
fn default_solve_tokens() -> usize {
    1024
}
fn default_label_tokens() -> usize {
    64
}
fn default_true() -> bool {
    true
}

/// What a judge is asked to generate with.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Generation {
    /// The user turn; `{{question}}`, `{{reference}}`, `{{domain}}`, `{{id}}` are filled in.
    pub prompt: String,
    /// An optional system turn (same placeholders).
    pub system: Option<String>,
    pub max_tokens: usize,
    /// 0 is greedy.
    pub temperature: f32,
    pub seed: u64,
    /// Thinking on or off (kormo judges: the chat template's switch; OpenAI judges: vLLM's
    /// `chat_template_kwargs.enable_thinking`, sent only when set). Kormo default: off.
    pub thinking: Option<bool>,
}

/// Stage 1: every judge answers; a sample is kept when all of them are wrong.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SolveStage {
    /// Judge names, asked in this order [default: every judge].
    pub judges: Option<Vec<String>>,
    pub prompt: String,
    pub system: Option<String>,
    #[serde(default = "default_solve_tokens")]
    pub max_tokens: usize,
    #[serde(default)]
    pub temperature: f32,
    #[serde(default)]
    pub seed: u64,
    pub thinking: Option<bool>,
    /// How the answer is taken from a reply.
    pub extract: Rule,
    /// For `extract = "marker"` (and `reference_extract = "marker"`).
    #[serde(default)]
    pub marker: String,
    /// How the answer is taken from the reference field [default: whole].
    #[serde(default = "whole")]
    pub reference_extract: Rule,
    /// Stop asking once a judge is right (the sample is dropped either way).
    #[serde(default = "default_true")]
    pub short_circuit: bool,
}

fn whole() -> Rule {
    Rule::Whole
}

/// Stage 2: the survivors of stage 1 are labelled; kept when the consensus says hard.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LabelStage {
    /// Judge names [default: every judge].
    pub judges: Option<Vec<String>>,
    pub prompt: String,
    pub system: Option<String>,
    #[serde(default = "default_label_tokens")]
    pub max_tokens: usize,
    #[serde(default)]
    pub temperature: f32,
    #[serde(default)]
    pub seed: u64,
    pub thinking: Option<bool>,
    /// The words a judge may answer with (one word each).
    pub labels: Vec<String>,
    /// Which of them mean hard.
    pub hard: Vec<String>,
    /// Look for the label after the last occurrence of this text [default: the whole reply].
    #[serde(default)]
    pub marker: String,
    /// How many label judges must say hard: "all", "majority", "any", or a number.
    #[serde(default)]
    pub consensus: Consensus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consensus {
    #[default]
    All,
    Majority,
    Any,
    AtLeast(usize),
}

impl Consensus {
    /// Whether `hard` votes out of `judges` make a sample hard.
    pub fn holds(self, hard: usize, judges: usize) -> bool {
        match self {
            Consensus::All => hard == judges,
            Consensus::Majority => 2 * hard > judges,
            Consensus::Any => hard >= 1,
            Consensus::AtLeast(n) => hard >= n,
        }
    }
}

impl<'de> Deserialize<'de> for Consensus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            Count(usize),
        }
        match Raw::deserialize(d)? {
            Raw::Word(w) if w == "all" => Ok(Consensus::All),
            Raw::Word(w) if w == "majority" => Ok(Consensus::Majority),
            Raw::Word(w) if w == "any" => Ok(Consensus::Any),
            Raw::Count(n) if n >= 1 => Ok(Consensus::AtLeast(n)),
            Raw::Word(w) => Err(serde::de::Error::custom(format!("consensus `{w}`: expected \"all\", \"majority\", \"any\" or a count"))),
            Raw::Count(n) => Err(serde::de::Error::custom(format!("consensus {n}: a count is at least 1"))),
        }
    }
}

impl Serialize for Consensus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Consensus::All => s.serialize_str("all"),
            Consensus::Majority => s.serialize_str("majority"),
            Consensus::Any => s.serialize_str("any"),
            Consensus::AtLeast(n) => s.serialize_u64(*n as u64),
        }
    }
}

/// The curated dataset's records: the input records unchanged, plus a text field when a
/// template is given (for `prepare`'s text sources; its chat sources read question/answer).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    pub text_template: Option<String>,
    /// Name of that field [default: text].
    pub text_field: Option<String>,
}

const PLACEHOLDERS: [&str; 4] = ["question", "reference", "domain", "id"];

impl SolveStage {
    pub fn generation(&self) -> Generation {
        Generation { prompt: self.prompt.clone(), system: self.system.clone(), max_tokens: self.max_tokens, temperature: self.temperature, seed: self.seed, thinking: self.thinking }
    }
}

impl LabelStage {
    pub fn generation(&self) -> Generation {
        Generation { prompt: self.prompt.clone(), system: self.system.clone(), max_tokens: self.max_tokens, temperature: self.temperature, seed: self.seed, thinking: self.thinking }
    }
}

impl CurateConfig {
    /// Reads and checks `path`; errors name the file.
    pub fn load(path: &Path) -> Result<CurateConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let config: CurateConfig = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        config.validate().map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(config)
    }

    /// The judges' names a stage asks (its list, or every judge).
    pub fn stage_judges(&self, names: &Option<Vec<String>>) -> Vec<String> {
        names.clone().unwrap_or_else(|| self.judges.iter().map(|j| j.name.clone()).collect())
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.judges.is_empty() {
            return Err("no [[judge]]".into());
        }
        for (i, judge) in self.judges.iter().enumerate() {
            if judge.name.is_empty() || self.judges[..i].iter().any(|j| j.name == judge.name) {
                return Err(format!("judge names must be non-empty and unique: `{}`", judge.name));
            }
            if let Backend::Openai { url, timeout_s, .. } = &judge.backend {
                kormo_generate::http::split_url(url).map_err(|e| format!("judge `{}`: {e}", judge.name))?;
                if !(*timeout_s > 0.0 && timeout_s.is_finite()) {
                    return Err(format!("judge `{}`: timeout_s must be positive", judge.name));
                }
            }
        }
        for (stage, names) in [("solve", &self.solve.judges), ("label", &self.label.judges)] {
            let names = self.stage_judges(names);
            if names.is_empty() {
                return Err(format!("[{stage}] judges is empty"));
            }
            for name in &names {
                if !self.judges.iter().any(|j| &j.name == name) {
                    return Err(format!("[{stage}] judges: no [[judge]] named `{name}`"));
                }
            }
        }
        for (what, template) in [
            ("solve.prompt", Some(&self.solve.prompt)),
            ("solve.system", self.solve.system.as_ref()),
            ("label.prompt", Some(&self.label.prompt)),
            ("label.system", self.label.system.as_ref()),
            ("output.text_template", self.output.text_template.as_ref()),
        ] {
            for name in placeholders(template.map_or("", |s| s.as_str())).map_err(|e| format!("{what}: {e}"))? {
                if !PLACEHOLDERS.contains(&name.as_str()) {
                    return Err(format!("{what}: unknown placeholder {{{{{name}}}}} (known: {})", PLACEHOLDERS.join(", ")));
                }
            }
        }
        if (self.solve.extract == Rule::Marker || self.solve.reference_extract == Rule::Marker) && self.solve.marker.is_empty() {
            return Err("solve.extract = \"marker\" needs solve.marker".into());
        }
        let labels = &self.label.labels;
        if labels.is_empty() || labels.iter().any(|l| l.is_empty() || !l.chars().all(char::is_alphanumeric)) {
            return Err("label.labels must be non-empty words (letters and digits)".into());
        }
        if self.label.hard.is_empty() || self.label.hard.iter().any(|h| !labels.contains(h)) {
            return Err(format!("label.hard must name some of label.labels ({})", labels.join(", ")));
        }
        if let Consensus::AtLeast(n) = self.label.consensus {
            let judges = self.stage_judges(&self.label.judges).len();
            if n > judges {
                return Err(format!("label.consensus {n} is more than the {judges} label judges"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[[judge]]
name = "small"
kind = "kormo"
model = "runs/small/sft/final"

[[judge]]
name = "large"
kind = "openai"
url = "http://127.0.0.1:8000/v1/chat/completions"
model = "Qwen/Qwen3-30B-A3B"

[solve]
prompt = "{{question}}"
extract = "boxed"

[label]
prompt = "{{question}} easy or hard?"
labels = ["easy", "hard"]
hard = ["hard"]
"#;

    #[test]
    fn a_config_reads_with_defaults_and_checks_its_parts() {
        let config: CurateConfig = toml::from_str(EXAMPLE).unwrap();
        config.validate().unwrap();
        assert_eq!(config.input, InputFields::default());
        assert_eq!(config.stage_judges(&config.solve.judges), vec!["small", "large"]);
        assert_eq!(config.label.consensus, Consensus::All);
        assert!(config.solve.short_circuit);
        match &config.judges[1].backend {
            Backend::Openai { timeout_s, retries, backoff_ms, api_key_env, .. } => {
                assert_eq!((*timeout_s, *retries, *backoff_ms, api_key_env.as_deref()), (600.0, 3, 2000, None));
            }
            other => panic!("{other:?}"),
        }
        let bad = |edit: &dyn Fn(&str) -> String, expected: &str| {
            let text = edit(EXAMPLE);
            let err = toml::from_str::<CurateConfig>(&text).map_err(|e| e.to_string()).and_then(|c| c.validate()).unwrap_err();
            assert!(err.contains(expected), "{expected}: {err}");
        };
        bad(&|s| s.replace("name = \"large\"", "name = \"small\""), "unique");
        bad(&|s| s.replace("kind = \"kormo\"", "kind = \"vllm\""), "judge `small`");
        bad(&|s| s.replace("model = \"runs", "modle = \"runs"), "unknown field `modle`");
        bad(&|s| s.replace("extract = \"boxed\"", "extract = \"marker\""), "needs solve.marker");
        bad(&|s| s.replace("extract = \"boxed\"", "extract = \"regex\""), "unknown variant");
        bad(&|s| s.replace("labels = [\"easy\", \"hard\"]", "labels = [\"easy\", \"very hard\"]"), "label.labels");
        bad(&|s| format!("{s}consensus = 3\n"), "more than the 2 label judges");
        bad(&|s| format!("{s}consensus = \"most\"\n"), "consensus `most`");
        bad(&|s| format!("{s}consensus = 0\n"), "at least 1");
        bad(&|s| s.replace("{{question}} easy", "{{problem}} easy"), "unknown placeholder {{problem}}");
        bad(&|s| s.replace("[solve]\n", "[solve]\njudges = [\"medium\"]\n"), "no [[judge]] named `medium`");
    }

    #[test]
    fn consensus_rules_count_hard_votes() {
        assert!(Consensus::All.holds(2, 2) && !Consensus::All.holds(1, 2));
        assert!(Consensus::Majority.holds(2, 3) && !Consensus::Majority.holds(1, 2));
        assert!(Consensus::Any.holds(1, 3) && !Consensus::Any.holds(0, 3));
        assert!(Consensus::AtLeast(2).holds(2, 3) && !Consensus::AtLeast(2).holds(1, 3));
        let parsed: LabelStage = toml::from_str("prompt = \"p\"\nlabels = [\"a\"]\nhard = [\"a\"]\nconsensus = \"majority\"").unwrap();
        assert_eq!(parsed.consensus, Consensus::Majority);
    }
}

#[cfg(test)]
mod example {
    use super::*;

    /// configs/curate/reasoning.toml, the worked example of docs/curate.md, is a valid config.
    #[test]
    fn the_documented_example_config_loads() {
        let runfiles = Path::new("configs/curate/reasoning.toml");
        let path = if runfiles.is_file() { runfiles.to_path_buf() } else { Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/curate/reasoning.toml") };
        let config = CurateConfig::load(&path).unwrap();
        assert_eq!(config.stage_judges(&config.solve.judges), vec!["kormo-1b", "qwen3-30b"]);
        assert_eq!(config.solve.extract, Rule::Boxed);
        assert_eq!(config.label.consensus, Consensus::All);
        assert!(config.solve.prompt.contains("\\boxed{ANSWER}"));
        assert_eq!(config.output.text_template.as_deref(), Some("{{question}}\n\n{{reference}}"));
    }
}
