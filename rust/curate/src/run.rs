//! The curation: samples streamed from the inputs, judged (or taken from the progress file),
//! then the kept records written as a JSON-lines dataset `prepare` reads, with a report of kept
//! fractions per domain. Outputs are written to a temporary name and renamed into place.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, sync_channel, Receiver};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kormo_corpus::records::read_records;
use kormo_corpus::Location;
use serde::Serialize;
use serde_json::Value;

use crate::config::{CurateConfig, Generation};
use crate::extract::{extract, find_label, render, same_answer, strip_thinking};
use crate::judge::{Answer, Judge};
use crate::progress::{fingerprint, LabelVerdict, Progress, SolveVerdict, Verdict};

pub const PROGRESS: &str = "progress.jsonl";
pub const CURATED: &str = "curated.jsonl";
pub const REPORT: &str = "report.json";

/// One input sample.
#[derive(Debug, Clone)]
pub struct Sample {
    pub id: String,
    pub domain: String,
    pub question: String,
    pub reference: String,
    /// The reference answer, extracted by `solve.reference_extract`.
    pub answer: String,
    /// The record as read.
    pub record: Value,
}

/// Why a record is not a sample.
fn sample(config: &CurateConfig, record: Value, fallback_id: String) -> Result<Sample, String> {
    let fields = &config.input;
    let text = |name: &str| match record.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(_) => Err(format!("field `{name}` is not a string")),
        None => Err(format!("no field `{name}`")),
    };
    let question = text(&fields.question)?;
    let reference = text(&fields.reference)?;
    let domain = text(&fields.domain).unwrap_or_else(|_| "default".into());
    let id = match &fields.id {
        Some(name) => text(name)?,
        None => fallback_id,
    };
    let answer = extract(&reference, config.solve.reference_extract, &config.solve.marker)
        .ok_or_else(|| format!("no reference answer in `{}` by the rule {:?}", fields.reference, config.solve.reference_extract))?;
    Ok(Sample { id, domain, question, reference, answer, record })
}

/// Calls `each` with every sample of `inputs` in order; malformed records are passed to
/// `skipped` (`file:line: reason`). Duplicate ids are an error.
fn for_each_sample(
    config: &CurateConfig,
    inputs: &[PathBuf],
    mut skipped: impl FnMut(String),
    mut each: impl FnMut(Sample) -> Result<bool, String>,
) -> Result<(), String> {
    let mut ids = HashSet::new();
    // A record without an id field is `file:line`, the file by its name, or by its path where
    // two inputs share a name.
    let file_name = |p: &PathBuf| p.file_name().map(|n| n.to_string_lossy().into_owned());
    for path in inputs {
        let shared = inputs.iter().filter(|p| file_name(p) == file_name(path)).count() > 1;
        let name = match file_name(path) {
            Some(name) if !shared => name,
            _ => path.display().to_string(),
        };
        for record in read_records(path, &[]) {
            let record = match record {
                Ok(r) => r,
                Err(e) if e.fatal => return Err(format!("{}: {}", e.file.display(), e.reason)),
                Err(e) => {
                    skipped(e.to_string());
                    continue;
                }
            };
            let location = match record.location {
                Location::Line(n) => n.to_string(),
                Location::Row(n) => format!("row{n}"),
                Location::File => "file".to_string(),
            };
            match sample(config, record.value, format!("{name}:{location}")) {
                Ok(s) => {
                    if !ids.insert(s.id.clone()) {
                        return Err(format!("{}:{location}: id `{}` is not unique (resuming keys on it)", path.display(), s.id));
                    }
                    if !each(s)? {
                        return Ok(());
                    }
                }
                Err(reason) => skipped(format!("{}:{location}: {reason}", path.display())),
            }
        }
    }
    Ok(())
}

/// The judges, opened the first time they are needed (a finished curation loads no model),
/// shared by the workers: a kormo judge answers one worker at a time (it holds its model and
/// KV cache), an endpoint any number at once.
struct Judges<'c> {
    config: &'c CurateConfig,
    slots: BTreeMap<String, Mutex<Option<Judge>>>,
}

impl<'c> Judges<'c> {
    fn new(config: &'c CurateConfig) -> Self {
        Judges { config, slots: config.judges.iter().map(|j| (j.name.clone(), Mutex::new(None))).collect() }
    }

    fn ask(&self, name: &str, messages: Vec<(String, String)>, generation: &Generation, sample: &str) -> Result<Answer, String> {
        let mut slot = self.slots[name].lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.is_none() {
            let config = self.config.judges.iter().find(|j| j.name == name).expect("names are validated");
            *slot = Some(Judge::open(config)?);
        }
        match slot.as_mut().expect("just opened") {
            Judge::Openai { endpoint, .. } => {
                let endpoint = endpoint.clone();
                drop(slot);
                endpoint.ask_for(name, &messages, generation, sample)
            }
            judge => judge.ask(messages, generation, sample),
        }
    }
}

fn messages(generation: &Generation, s: &Sample) -> Vec<(String, String)> {
    let value = |name: &str| match name {
        "question" => s.question.clone(),
        "reference" => s.reference.clone(),
        "domain" => s.domain.clone(),
        _ => s.id.clone(),
    };
    let mut out = Vec::new();
    if let Some(system) = &generation.system {
        out.push(("system".to_string(), render(system, value)));
    }
    out.push(("user".to_string(), render(&generation.prompt, value)));
    out
}

fn tail(text: &str) -> String {
    let start = text.char_indices().rev().nth(199).map_or(0, |(i, _)| i);
    text[start..].to_string()
}

/// Both stages for one sample.
fn judge_sample(config: &CurateConfig, judges: &Judges, s: &Sample) -> Result<Verdict, String> {
    let solve = &config.solve;
    let generation = solve.generation();
    let mut verdict = Verdict { id: s.id.clone(), domain: s.domain.clone(), solve: BTreeMap::new(), label: None };
    for name in config.stage_judges(&solve.judges) {
        let reply = judges.ask(&name, messages(&generation, s), &generation, &s.id)?;
        let answer = extract(strip_thinking(&reply.text), solve.extract, &solve.marker);
        let correct = answer.as_deref().is_some_and(|a| same_answer(a, &s.answer));
        verdict.solve.insert(name, SolveVerdict { answer, correct, truncated: reply.truncated, tail: tail(&reply.text) });
        if correct && solve.short_circuit {
            break;
        }
    }
    if verdict.unsolved() {
        let stage = &config.label;
        let generation = stage.generation();
        let mut labels = BTreeMap::new();
        for name in config.stage_judges(&stage.judges) {
            let reply = judges.ask(&name, messages(&generation, s), &generation, &s.id)?;
            let label = find_label(&reply.text, &stage.labels, &stage.marker);
            labels.insert(name, LabelVerdict { label, truncated: reply.truncated, tail: tail(&reply.text) });
        }
        verdict.label = Some(labels);
    }
    Ok(verdict)
}

/// Whether a verdict keeps its sample after stage 2 (under the config's consensus rule).
pub fn is_hard(config: &CurateConfig, verdict: &Verdict) -> bool {
    let Some(labels) = &verdict.label else { return false };
    let hard = labels.values().filter(|v| v.label.as_ref().is_some_and(|l| config.label.hard.contains(l))).count();
    config.label.consensus.holds(hard, labels.len())
}

/// Kept counts of one domain (or all).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Kept {
    pub samples: usize,
    /// Stage 1: every judge wrong.
    pub unsolved: usize,
    /// Stage 2: and labelled hard.
    pub hard: usize,
    pub unsolved_fraction: f64,
    pub hard_fraction: f64,
    /// Of the stage-1 survivors.
    pub hard_of_unsolved: f64,
}

impl Kept {
    fn add(&mut self, unsolved: bool, hard: bool) {
        self.samples += 1;
        self.unsolved += unsolved as usize;
        self.hard += hard as usize;
    }
    fn finish(&mut self) {
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        self.unsolved_fraction = ratio(self.unsolved, self.samples);
        self.hard_fraction = ratio(self.hard, self.samples);
        self.hard_of_unsolved = ratio(self.hard, self.unsolved);
    }
}

/// One judge's record over the curation.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct JudgeStats {
    pub solve_asked: usize,
    pub solve_correct: usize,
    pub solve_no_answer: usize,
    pub solve_truncated: usize,
    /// Label (or "none") -> count.
    pub labels: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub total: Kept,
    pub domains: BTreeMap<String, Kept>,
    pub judges: BTreeMap<String, JudgeStats>,
    /// Records that are not samples (`file:line: reason`); the first 100.
    pub skipped: Vec<String>,
    pub skipped_count: usize,
    pub consensus: String,
}

impl Report {
    fn count(&mut self, config: &CurateConfig, v: &Verdict) {
        let (unsolved, hard) = (v.unsolved(), is_hard(config, v));
        self.total.add(unsolved, hard);
        self.domains.entry(v.domain.clone()).or_default().add(unsolved, hard);
        for (name, s) in &v.solve {
            let j = self.judges.entry(name.clone()).or_default();
            j.solve_asked += 1;
            j.solve_correct += s.correct as usize;
            j.solve_no_answer += s.answer.is_none() as usize;
            j.solve_truncated += s.truncated as usize;
        }
        for (name, l) in v.label.iter().flatten() {
            let label = l.label.clone().unwrap_or_else(|| "none".into());
            *self.judges.entry(name.clone()).or_default().labels.entry(label).or_default() += 1;
        }
    }

    /// The printed table: kept counts and fractions per domain.
    pub fn table(&self) -> String {
        let mut out = format!("{:<16} {:>9} {:>18} {:>18}\n", "domain", "samples", "all judges wrong", "and hard");
        let row = |name: &str, k: &Kept| {
            format!(
                "{:<16} {:>9} {:>9} ({:>5.1}%) {:>9} ({:>5.1}%)\n",
                name, k.samples, k.unsolved, 100.0 * k.unsolved_fraction, k.hard, 100.0 * k.hard_fraction
            )
        };
        for (name, k) in &self.domains {
            out.push_str(&row(name, k));
        }
        out.push_str(&row("total", &self.total));
        out
    }
}

/// What a call of [`curate`] got to.
#[derive(Debug)]
pub enum Outcome {
    Finished(Report),
    /// `--max-samples` new samples were judged and some are left.
    Stopped { judged: usize },
}

/// How a curation runs (not what it decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// Judge at most this many new samples, then stop.
    pub max_samples: Option<usize>,
    /// Samples judged at once (requests in flight to endpoints; kormo judges take turns).
    pub jobs: usize,
}

/// Curates `inputs` into `out` (progress, curated dataset, report); `log` sees progress lines.
pub fn curate(config: &CurateConfig, inputs: &[PathBuf], out: &Path, options: RunOptions, mut log: impl FnMut(&str)) -> Result<Outcome, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut progress = Progress::open(&out.join(PROGRESS), &fingerprint(config))?;
    if !progress.done.is_empty() {
        log(&format!("resuming: {} samples already judged ({})", progress.done.len(), out.join(PROGRESS).display()));
    }
    let judges = Judges::new(config);
    let (judged, stopped) = judge_new_samples(config, inputs, &judges, &mut progress, options, &mut log)?;
    if stopped {
        return Ok(Outcome::Stopped { judged });
    }
    let report = write_outputs(config, inputs, out, &progress)?;
    Ok(Outcome::Finished(report))
}

/// Judges the samples the progress file lacks with `options.jobs` workers, appending each
/// verdict as it arrives. Returns how many were judged and whether `max_samples` stopped it.
/// After a judge's error no new sample is started; the verdicts in flight are still kept.
fn judge_new_samples(
    config: &CurateConfig,
    inputs: &[PathBuf],
    judges: &Judges,
    progress: &mut Progress,
    options: RunOptions,
    log: &mut dyn FnMut(&str),
) -> Result<(usize, bool), String> {
    let jobs = options.jobs.max(1);
    let failed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // A rendezvous channel: a sample is handed over only to an idle worker.
        let (work, queue) = sync_channel::<Sample>(0);
        let queue = Arc::new(Mutex::new(queue));
        let (verdicts, arrived) = channel::<Result<Verdict, String>>();
        for _ in 0..jobs {
            let (queue, verdicts, failed) = (queue.clone(), verdicts.clone(), &failed);
            scope.spawn(move || loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
                let Ok(sample) = next else { return };
                if failed.load(Ordering::SeqCst) {
                    continue;
                }
                let result = judge_sample(config, judges, &sample);
                failed.fetch_or(result.is_err(), Ordering::SeqCst);
                if verdicts.send(result).is_err() {
                    return;
                }
            });
        }
        // Only the workers hold the queue: if they all stopped, feeding fails instead of blocking.
        drop(queue);
        drop(verdicts);
        let (mut sent, mut judged, mut stopped, mut failure) = (0usize, 0usize, false, None::<String>);
        let mut record = |result: Result<Verdict, String>, progress: &mut Progress, failure: &mut Option<String>| -> Result<(), String> {
            match result {
                Ok(verdict) => {
                    progress.append(verdict)?;
                    judged += 1;
                    if judged.is_multiple_of(100) {
                        log(&format!("{judged} samples judged ({} in all)", progress.done.len()));
                    }
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
            Ok(())
        };
        let fed = for_each_sample(config, inputs, |_| {}, |s| {
            while let Ok(result) = arrived.try_recv() {
                record(result, progress, &mut failure)?;
            }
            if failure.is_some() || progress.done.contains_key(&s.id) {
                return Ok(failure.is_none());
            }
            if options.max_samples.is_some_and(|m| sent >= m) {
                stopped = true;
                return Ok(false);
            }
            work.send(s).map_err(|_| "the judging workers stopped".to_string())?;
            sent += 1;
            Ok(true)
        });
        drop(work);
        drain(&arrived, |result| record(result, progress, &mut failure))?;
        fed?;
        match failure {
            Some(e) => Err(e),
            None => Ok((judged, stopped)),
        }
    })
}

/// Every remaining message of `arrived` (until all senders are gone) through `each`.
fn drain<T>(arrived: &Receiver<T>, mut each: impl FnMut(T) -> Result<(), String>) -> Result<(), String> {
    for item in arrived.iter() {
        each(item)?;
    }
    Ok(())
}

/// Writes `path` through a temporary file renamed into place.
fn write_atomically(path: &Path, write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let err = |e: std::io::Error| format!("{}: {e}", tmp.display());
    let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(err)?);
    write(&mut file).map_err(err)?;
    let file = file.into_inner().map_err(|e| err(e.into_error()))?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{} -> {}: {e}", tmp.display(), path.display()))
}

/// The kept records (in input order) and the report.
fn write_outputs(config: &CurateConfig, inputs: &[PathBuf], out: &Path, progress: &Progress) -> Result<Report, String> {
    let mut report = Report { consensus: serde_json::to_value(config.label.consensus).expect("serialises").to_string().trim_matches('"').to_string(), ..Report::default() };
    let mut kept = Vec::new();
    let mut skipped = Vec::new();
    for_each_sample(config, inputs, |why| skipped.push(why), |s| {
        let verdict = progress.done.get(&s.id).ok_or_else(|| format!("sample `{}` has no verdict", s.id))?;
        report.count(config, verdict);
        if is_hard(config, verdict) {
            let mut record = s.record.clone();
            if let (Some(template), Some(object)) = (&config.output.text_template, record.as_object_mut()) {
                let text = render(template, |name| match name {
                    "question" => s.question.clone(),
                    "reference" => s.reference.clone(),
                    "domain" => s.domain.clone(),
                    _ => s.id.clone(),
                });
                object.insert(config.output.text_field.clone().unwrap_or_else(|| "text".into()), Value::String(text));
            }
            kept.push(record);
        }
        Ok(true)
    })?;
    report.total.finish();
    report.domains.values_mut().for_each(Kept::finish);
    report.skipped_count = skipped.len();
    report.skipped = skipped.into_iter().take(100).collect();
    write_atomically(&out.join(CURATED), |f| kept.iter().try_for_each(|r| writeln!(f, "{r}")))?;
    let json = serde_json::to_string_pretty(&report).expect("a report serialises");
    write_atomically(&out.join(REPORT), |f| writeln!(f, "{json}"))?;
    Ok(report)
}
