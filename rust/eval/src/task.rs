//! Task definitions: a JSON file whose keys are lm-evaluation-harness's task YAML fields, and
//! the documents as JSONL. Templates are `{{field}}` substitutions of a document's fields (the
//! subset of the harness's Jinja that the listed benchmarks use); `doc_to_choice` is a list of
//! templates or the name of a field holding a list; `doc_to_target` renders to an index into
//! the choices or to the gold text.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

/// How a task is scored (the harness's `output_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputType {
    /// Log-likelihood of each choice after the context: acc and acc_norm (BoolQ is this with
    /// the two choices "no"/"yes").
    MultipleChoice,
    /// Greedy generation until a stop string, compared to the target: exact_match.
    GenerateUntil,
}

/// A choice list: literal templates, or a field of the document holding the list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Choices {
    Templates(Vec<String>),
    Field(String),
}

fn space() -> String {
    " ".into()
}
fn blank_line() -> String {
    "\n\n".into()
}
fn seed() -> u64 {
    1234
}

/// One task file (`*.json`), field names as in lm-evaluation-harness.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub task: String,
    /// ISO code written into the records (ko, en); per-language averages group by it.
    #[serde(default)]
    pub language: Option<String>,
    pub output_type: OutputType,
    /// JSONL of the documents scored, relative to the task file.
    pub test_split: PathBuf,
    /// JSONL the few-shot examples are drawn from [default: test_split, without the question].
    #[serde(default)]
    pub fewshot_split: Option<PathBuf>,
    #[serde(default)]
    pub num_fewshot: usize,
    #[serde(default = "seed")]
    pub fewshot_seed: u64,
    pub doc_to_text: String,
    pub doc_to_target: String,
    #[serde(default)]
    pub doc_to_choice: Option<Choices>,
    #[serde(default = "space")]
    pub target_delimiter: String,
    #[serde(default = "blank_line")]
    pub fewshot_delimiter: String,
    #[serde(default)]
    pub description: String,
    /// generate_until: stop strings (`generation_kwargs.until`) [default: "\n\n"].
    #[serde(default)]
    pub until: Option<Vec<String>>,
    #[serde(default)]
    pub max_gen_toks: Option<usize>,
    /// generate_until with an SFT model: prompt in the chat template.
    #[serde(default)]
    pub chat: bool,
    #[serde(default)]
    pub thinking: bool,
    /// Score at most this many documents (the first N) [default: all].
    #[serde(default)]
    pub limit: Option<usize>,
}

/// A loaded task: its spec and documents.
#[derive(Debug, Clone)]
pub struct Task {
    pub spec: TaskSpec,
    pub docs: Vec<Map<String, Value>>,
    pub fewshot_docs: Option<Vec<Map<String, Value>>>,
}

impl Task {
    pub fn load(path: &Path) -> Result<Task, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let spec: TaskSpec = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if spec.output_type == OutputType::MultipleChoice && spec.doc_to_choice.is_none() {
            return Err(format!("{}: a multiple_choice task needs doc_to_choice", path.display()));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut docs = read_jsonl(&dir.join(&spec.test_split))?;
        if let Some(limit) = spec.limit {
            docs.truncate(limit);
        }
        let fewshot_docs = spec.fewshot_split.as_ref().map(|p| read_jsonl(&dir.join(p))).transpose()?;
        Ok(Task { spec, docs, fewshot_docs })
    }
}

/// Documents of a JSONL file, one JSON object a line (blank lines skipped).
pub fn read_jsonl(path: &Path) -> Result<Vec<Map<String, Value>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut docs = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        match serde_json::from_str(line) {
            Ok(Value::Object(doc)) => docs.push(doc),
            Ok(_) => return Err(format!("{}:{}: not a JSON object", path.display(), i + 1)),
            Err(e) => return Err(format!("{}:{}: {e}", path.display(), i + 1)),
        }
    }
    Ok(docs)
}

/// `template` with each `{{field}}` replaced by the document's field (strings as they are,
/// other values as JSON).
pub fn render(template: &str, doc: &Map<String, Value>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let close = rest[open..].find("}}").ok_or_else(|| format!("template {template:?}: '{{{{' without '}}}}'"))? + open;
        let name = rest[open + 2..close].trim();
        match doc.get(name) {
            Some(Value::String(s)) => out.push_str(s),
            Some(v) => out.push_str(&v.to_string()),
            None => return Err(format!("template {template:?}: the document has no field {name:?}")),
        }
        rest = &rest[close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The choices of a document.
pub fn choices(spec: &TaskSpec, doc: &Map<String, Value>) -> Result<Vec<String>, String> {
    match &spec.doc_to_choice {
        None => Ok(Vec::new()),
        Some(Choices::Templates(t)) => t.iter().map(|t| render(t, doc)).collect(),
        Some(Choices::Field(f)) => match doc.get(f) {
            Some(Value::Array(a)) => a.iter().map(|v| v.as_str().map(str::to_string).ok_or_else(|| format!("field {f:?}: a choice is not a string"))).collect(),
            _ => Err(format!("doc_to_choice: the document has no list field {f:?}")),
        },
    }
}

/// The gold choice index of a multiple-choice document: the target renders to an index or to
/// one of the choices' text (as in the harness).
pub fn gold_index(spec: &TaskSpec, doc: &Map<String, Value>, choices: &[String]) -> Result<usize, String> {
    let target = render(&spec.doc_to_target, doc)?;
    // A boolean label (BoolQ's) indexes the choices as Python's int(bool) does.
    let t = match target.trim() {
        "true" => "1",
        "false" => "0",
        t => t,
    };
    if let Ok(i) = t.parse::<usize>() {
        if i < choices.len() {
            return Ok(i);
        }
    }
    choices.iter().position(|c| c == t).ok_or_else(|| format!("doc_to_target {target:?} is neither a choice index nor a choice"))
}

/// The target text of a document as it follows the context (in a few-shot example, or as the
/// exact-match gold of a generation task).
pub fn target_text(spec: &TaskSpec, doc: &Map<String, Value>) -> Result<String, String> {
    match spec.output_type {
        OutputType::MultipleChoice => {
            let c = choices(spec, doc)?;
            Ok(c[gold_index(spec, doc, &c)?].clone())
        }
        OutputType::GenerateUntil => render(&spec.doc_to_target, doc),
    }
}
