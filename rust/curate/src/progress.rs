//! The append-only progress file: one JSON line per judged sample, written and fsync'd as soon
//! as its verdicts are in, so an interrupted curation resumes where it stopped. The first line
//! records the config parts that decide verdicts; a rerun with different ones is refused.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::{Backend, CurateConfig};

/// One judge's stage-1 answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SolveVerdict {
    /// The extracted answer (None: the rule found none, which counts as wrong).
    pub answer: Option<String>,
    pub correct: bool,
    /// The reply hit the token limit.
    pub truncated: bool,
    /// The reply's last characters, for audit.
    pub tail: String,
}

/// One judge's stage-2 label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelVerdict {
    /// None: the reply named no label (not hard).
    pub label: Option<String>,
    pub truncated: bool,
    pub tail: String,
}

/// Everything the judges said about one sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub id: String,
    pub domain: String,
    /// By judge name; with `short_circuit`, judges after the first right one are absent.
    pub solve: BTreeMap<String, SolveVerdict>,
    /// Present when every stage-1 judge was wrong.
    pub label: Option<BTreeMap<String, LabelVerdict>>,
}

impl Verdict {
    /// Stage 1: no judge answered correctly.
    pub fn unsolved(&self) -> bool {
        !self.solve.values().any(|v| v.correct)
    }
}

/// The config parts that decide verdicts (not timeouts, threads, URLs, keys, the consensus rule
/// or the output, which a rerun may change).
pub fn fingerprint(config: &CurateConfig) -> Value {
    let judges: Vec<Value> = config
        .judges
        .iter()
        .map(|j| match &j.backend {
            Backend::Kormo { model, preset, tokenizer, max_context, .. } => {
                json!({"name": j.name, "kind": "kormo", "model": model, "preset": preset, "tokenizer": tokenizer, "max_context": max_context})
            }
            Backend::Openai { model, .. } => json!({"name": j.name, "kind": "openai", "model": model}),
        })
        .collect();
    let mut label = serde_json::to_value(&config.label).expect("config serialises");
    label.as_object_mut().expect("an object").remove("consensus");
    json!({"input": config.input, "judges": judges, "solve": config.solve, "label": label})
}

pub struct Progress {
    path: PathBuf,
    file: File,
    pub done: HashMap<String, Verdict>,
}

const FORMAT: u64 = 1;

impl Progress {
    /// Opens (or starts) the progress file at `path` for a config with `fingerprint`. A last
    /// line cut off by an interruption is dropped; anything else unreadable is an error.
    pub fn open(path: &Path, fingerprint: &Value) -> Result<Progress, String> {
        let err = |e: std::io::Error| format!("{}: {e}", path.display());
        let header = json!({"curate_progress": FORMAT, "config": fingerprint});
        if !path.exists() {
            let mut file = File::create(path).map_err(err)?;
            writeln!(file, "{header}").and_then(|_| file.sync_all()).map_err(err)?;
            return Ok(Progress { path: path.to_path_buf(), file, done: HashMap::new() });
        }
        let mut reader = BufReader::new(File::open(path).map_err(err)?);
        let (mut good_end, mut line_no, mut done) = (0u64, 0usize, HashMap::new());
        let mut torn = false;
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).map_err(err)?;
            if n == 0 {
                break;
            }
            line_no += 1;
            let complete = line.ends_with('\n');
            let parsed: Result<Value, _> = serde_json::from_str(line.trim_end());
            match (line_no, parsed) {
                (1, Ok(found)) if complete => {
                    if found["curate_progress"] != json!(FORMAT) {
                        return Err(format!("{}: not a curate progress file (first line)", path.display()));
                    }
                    if found["config"] != *fingerprint {
                        return Err(format!(
                            "{}: written with different judges, prompts, extraction or labels; use another --out, or delete it to start over",
                            path.display()
                        ));
                    }
                }
                (_, Ok(value)) if complete && line_no > 1 => {
                    let verdict: Verdict = serde_json::from_value(value).map_err(|e| format!("{}:{line_no}: {e}", path.display()))?;
                    done.insert(verdict.id.clone(), verdict);
                }
                _ if !complete || reader.fill_buf().map_err(err)?.is_empty() => {
                    torn = true;
                    break;
                }
                (_, parsed) => {
                    let why = parsed.err().map_or("not a record".to_string(), |e| e.to_string());
                    return Err(format!("{}:{line_no}: unreadable ({why})", path.display()));
                }
            }
            good_end += n as u64;
        }
        if line_no == 0 || (torn && line_no == 1) {
            // Created but its header never finished: start it again.
            drop(reader);
            std::fs::remove_file(path).map_err(err)?;
            return Progress::open(path, fingerprint);
        }
        let mut file = OpenOptions::new().write(true).open(path).map_err(err)?;
        if torn {
            file.set_len(good_end).and_then(|_| file.sync_all()).map_err(err)?;
        }
        file.seek(SeekFrom::End(0)).map_err(err)?;
        Ok(Progress { path: path.to_path_buf(), file, done })
    }

    /// Appends `verdict` and waits until it is on disk.
    pub fn append(&mut self, verdict: Verdict) -> Result<(), String> {
        let line = serde_json::to_string(&verdict).expect("a verdict serialises");
        writeln!(self.file, "{line}").and_then(|_| self.file.sync_data()).map_err(|e| format!("{}: {e}", self.path.display()))?;
        self.done.insert(verdict.id.clone(), verdict);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(id: &str) -> Verdict {
        let solve = BTreeMap::from([("j".to_string(), SolveVerdict { answer: Some("1".into()), correct: false, truncated: false, tail: "1".into() })]);
        Verdict { id: id.into(), domain: "math".into(), solve, label: None }
    }

    #[test]
    fn progress_survives_a_torn_last_line_and_refuses_another_config() {
        let base = std::env::var_os("TEST_TMPDIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("kormo-curate-progress-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("progress.jsonl");
        let config = json!({"a": 1});
        let mut progress = Progress::open(&path, &config).unwrap();
        progress.append(verdict("x")).unwrap();
        progress.append(verdict("y")).unwrap();
        drop(progress);
        let full = std::fs::read(&path).unwrap();
        // Interrupted in the middle of a record: it is dropped, the rest kept.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"id\": \"z\", \"dom").unwrap();
        let mut progress = Progress::open(&path, &config).unwrap();
        assert_eq!(progress.done.len(), 2);
        assert_eq!(progress.done["y"], verdict("y"));
        assert_eq!(std::fs::read(&path).unwrap(), full);
        progress.append(verdict("z")).unwrap();
        drop(progress);
        assert_eq!(Progress::open(&path, &config).unwrap().done.len(), 3);
        assert!(Progress::open(&path, &json!({"a": 2})).err().unwrap().contains("different judges"));
        // A bad line in the middle is not an interruption.
        let mut text = std::fs::read_to_string(&path).unwrap();
        text = text.replacen("\"id\":\"x\"", "\"idd\":\"x\"", 1);
        std::fs::write(&path, text).unwrap();
        assert!(Progress::open(&path, &config).err().unwrap().contains("progress.jsonl:2"));
        // A header cut off: started again.
        std::fs::write(&path, "{\"curate_pro").unwrap();
        assert!(Progress::open(&path, &config).unwrap().done.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
