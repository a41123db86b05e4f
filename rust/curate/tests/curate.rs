//! `curate` end to end: a kormo judge in process and the same model behind a real
//! chat-completions server on loopback (kormo's `serve` code, started here), a scripted
//! OpenAI-compatible server for labels and failures; the curated dataset read by `prepare`'s
//! readers; an interrupted curation resumed to the same outputs; errors naming the endpoint and
//! the sample.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use kormo_cpu::CpuOps;
use kormo_curate::extract::{extract, Rule};
use kormo_generate::http::{read_message, write_json_response};
use kormo_generate::serve::{serve, ChatModel, ChatRequest};
use kormo_generate::Strategy;
use kormo_hf::vocab::byte_tokenizer;
use kormo_hf::Weights;
use kormo_model::{Model, ModelConfig};
use serde_json::{json, Value};

fn scratch(name: &str) -> PathBuf {
    let base = std::env::var_os("TEST_TMPDIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("kormo-curate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tiny_weights() -> Weights {
    // The `tiny` preset, which a kormo checkpoint's judge is read as by default.
    Weights::from_model(&Model::new(ModelConfig::tiny(), CpuOps::<f32>::with_threads(1), 5).unwrap())
}

fn save_checkpoint(dir: &Path, weights: &Weights) -> PathBuf {
    let path = dir.join("judge/final");
    weights.save_checkpoint(&path, "sft", 1, json!({})).unwrap();
    path
}

/// kormo's chat-completions server for `weights` on 127.0.0.1 (a free port), on a thread.
fn start_kormo_server(weights: &Weights) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut model = ChatModel::new(weights, byte_tokenizer(), 1, 4096).unwrap();
    std::thread::spawn(move || serve(&listener, &mut model, "tiny", None, |_| {}));
    addr
}

type Requests = Arc<Mutex<Vec<(Value, Option<String>)>>>;

/// A scripted OpenAI-compatible server: `respond(request body, index)` gives status and body,
/// each connection on its own thread. Returns its address, the requests it got (body,
/// Authorization header) and the most it had in flight at once.
fn start_scripted(respond: impl Fn(&Value, usize) -> (u16, String) + Send + Sync + 'static) -> (String, Requests, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let requests: Requests = Arc::default();
    let (seen, peak) = (requests.clone(), Arc::new(AtomicUsize::new(0)));
    let (respond, in_flight, most) = (Arc::new(respond), Arc::new(AtomicUsize::new(0)), peak.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let (seen, respond, in_flight, most) = (seen.clone(), respond.clone(), in_flight.clone(), most.clone());
            std::thread::spawn(move || {
                // A client killed mid-request (as one test does) leaves nothing to answer.
                let Ok(message) = read_message(&mut std::io::BufReader::new(stream.try_clone().unwrap()), false) else { return };
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let body: Value = serde_json::from_slice(&message.body).unwrap();
                let index = {
                    let mut seen = seen.lock().unwrap();
                    seen.push((body.clone(), message.header("authorization").map(str::to_string)));
                    seen.len() - 1
                };
                let (status, reply) = respond(&body, index);
                in_flight.fetch_sub(1, Ordering::SeqCst);
                let _ = write_json_response(&mut stream, status, &reply);
            });
        }
    });
    (addr, requests, peak)
}

fn completion(content: &str) -> String {
    json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}).to_string()
}

fn user_turn(body: &Value) -> String {
    body["messages"].as_array().unwrap().last().unwrap()["content"].as_str().unwrap().to_string()
}

/// Labels: "hard" for questions marked HARD, nothing for UNSURE, else "easy"; requires the key.
fn labeller(body: &Value, _: usize) -> (u16, String) {
    let question = user_turn(body);
    let reply = if question.contains("HARD") {
        "Multi-step. Difficulty: hard"
    } else if question.contains("UNSURE") {
        "I cannot tell."
    } else {
        "Difficulty: easy"
    };
    (200, completion(reply))
}

const QUESTIONS: [(&str, &str, &str); 8] = [
    ("m1", "math", "HARD: integrate x^x"),
    ("m2", "math", "what is 1+1"),
    ("m3", "math", "HARD: count the primes below 10^6"),
    ("m4", "math", "UNSURE: a limit"),
    ("m5", "math", "solve x+2=5"),
    ("s1", "stem", "HARD: the Reynolds number of honey in a straw"),
    ("s2", "stem", "name a noble gas"),
    ("s3", "stem", "UNSURE: why is the sky blue"),
];

const SOLVE_PROMPT: &str = "Solve: {{question}}";
const MAX_TOKENS: usize = 12;

/// The dataset: m2's reference is what the judge model itself answers (so both judges are
/// right and stage 1 drops it); the others' references are answers it does not give.
fn write_dataset(path: &Path, weights: &Weights) {
    let mut model = ChatModel::new(weights, byte_tokenizer(), 1, 4096).unwrap();
    let mut lines = String::new();
    for (id, domain, question) in QUESTIONS {
        let answer = if id == "m2" {
            let request = ChatRequest {
                messages: vec![("user".into(), SOLVE_PROMPT.replace("{{question}}", question))],
                max_new_tokens: MAX_TOKENS, strategy: Strategy::Greedy, seed: 0, thinking: false,
            };
            let reply = model.reply(&request).unwrap();
            extract(&reply.content, Rule::LastLine, "").expect("the tiny model's reply has a non-empty line")
        } else {
            format!("reference answer of {id}")
        };
        lines.push_str(&json!({"id": id, "domain": domain, "question": question, "answer": answer, "source": "test"}).to_string());
        lines.push('\n');
    }
    std::fs::write(path, lines).unwrap();
}

fn config(judges: &str, solve_judges: &str, label_judges: &str, consensus: &str) -> String {
    format!(
        r#"
[input]
question = "question"
reference = "answer"
domain = "domain"
id = "id"
{judges}
[solve]
judges = {solve_judges}
prompt = "{SOLVE_PROMPT}"
max_tokens = {MAX_TOKENS}
extract = "last-line"

[label]
judges = {label_judges}
prompt = "How hard is this problem? {{{{question}}}} Reference: {{{{reference}}}}. One word: easy, medium or hard."
max_tokens = 8
labels = ["easy", "medium", "hard"]
hard = ["hard"]
consensus = {consensus}

[output]
text_template = "Problem: {{{{question}}}}\n\nAnswer: {{{{reference}}}}"
"#
    )
}

fn openai_judge(name: &str, addr: &str, extra: &str) -> String {
    format!("\n[[judge]]\nname = \"{name}\"\nkind = \"openai\"\nurl = \"http://{addr}/v1/chat/completions\"\nmodel = \"m\"\nretries = 1\nbackoff_ms = 1\ntimeout_s = 30\n{extra}\n")
}

fn run_curate(dir: &Path, config: &str, input: &Path, out: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let path = dir.join(format!("curate-{}.toml", out.file_name().unwrap().to_string_lossy()));
    std::fs::write(&path, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_curate"))
        .arg("--config").arg(&path).arg("--input").arg(input).arg("--out").arg(out).args(extra)
        .env("CURATE_TEST_KEY", "sekrit")
        .output().unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

fn progress_lines(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("progress.jsonl")).unwrap().lines().skip(1).map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn curation_keeps_unsolved_hard_samples_and_resumes_to_the_same_outputs() {
    let dir = scratch("e2e");
    let weights = tiny_weights();
    let checkpoint = save_checkpoint(&dir, &weights);
    let input = dir.join("reasoning.jsonl");
    write_dataset(&input, &weights);
    let served = start_kormo_server(&weights);
    let (scripted, labels_asked, _) = start_scripted(labeller);
    let judges = format!(
        "\n[[judge]]\nname = \"direct\"\nkind = \"kormo\"\nmodel = \"{}\"\nthreads = 1\n{}{}",
        checkpoint.display(),
        openai_judge("served", &served, ""),
        openai_judge("scripted", &scripted, "api_key_env = \"CURATE_TEST_KEY\""),
    );
    let full = config(&judges, r#"["direct", "served"]"#, r#"["served", "scripted"]"#, "1");

    let out = dir.join("out");
    let (code, table, stderr) = run_curate(&dir, &full, &input, &out, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    for row in ["domain", "math", "stem", "total"] {
        assert!(table.contains(row), "{table}");
    }
    // Stage 1: both judges are the same model, in process and over HTTP: the same answers.
    let verdicts = progress_lines(&out);
    assert_eq!(verdicts.len(), QUESTIONS.len());
    for v in &verdicts {
        let solve = &v["solve"];
        if v["id"] == "m2" {
            assert_eq!(solve["direct"]["correct"], true);
            assert!(solve.get("served").is_none(), "short circuit: {v}");
            assert!(v["label"].is_null());
        } else {
            assert_eq!(solve["direct"]["correct"], false, "{v}");
            assert_eq!(solve["direct"]["answer"], solve["served"]["answer"], "{v}");
            assert_eq!(solve["direct"]["tail"], solve["served"]["tail"], "{v}");
            assert!(v["label"]["scripted"].is_object() && v["label"]["served"].is_object(), "{v}");
        }
    }
    let asked = labels_asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 7);
    assert!(asked.iter().all(|(_, key)| key.as_deref() == Some("Bearer sekrit")));
    let label_request = &asked[0].0;
    assert_eq!(label_request["max_tokens"], 8);
    assert!(user_turn(label_request).contains("Reference: reference answer of m1"));

    let report: Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let kept = |domain: &str| {
        let d = &report["domains"][domain];
        (d["samples"].as_u64().unwrap(), d["unsolved"].as_u64().unwrap(), d["hard"].as_u64().unwrap())
    };
    assert_eq!(kept("math"), (5, 4, 2));
    assert_eq!(kept("stem"), (3, 3, 1));
    assert_eq!(report["total"]["hard_fraction"], 3.0 / 8.0);
    assert_eq!(report["domains"]["math"]["hard_of_unsolved"], 0.5);
    assert_eq!(report["judges"]["direct"]["solve_asked"], 8);
    assert_eq!(report["judges"]["direct"]["solve_correct"], 1);
    assert_eq!(report["judges"]["served"]["solve_asked"], 7);
    assert_eq!(report["judges"]["scripted"]["labels"], json!({"hard": 3, "easy": 2, "none": 2}));

    // The curated dataset: the kept records in input order, as prepare reads them.
    let curated = out.join("curated.jsonl");
    let records: Vec<Value> = std::fs::read_to_string(&curated).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ids: Vec<&str> = records.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["m1", "m3", "s1"]);
    assert!(records.iter().all(|r| r["source"] == "test"));
    let texts: Vec<String> = kormo_corpus::documents::read_documents(&curated, "text").map(Result::unwrap).collect();
    assert_eq!(texts[0], "Problem: HARD: integrate x^x\n\nAnswer: reference answer of m1");
    for record in &records {
        let conversation = kormo_prep::chat::conversation(record).unwrap();
        assert_eq!(conversation.len(), 2, "{record}");
    }

    // Interrupted after 3 samples (and a record cut off mid-line), then resumed.
    let resumed = dir.join("resumed");
    let before = labels_asked.lock().unwrap().len();
    let (code, _, stderr) = run_curate(&dir, &full, &input, &resumed, &["--max-samples", "3"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("stopped after 3 new samples"), "{stderr}");
    assert!(!resumed.join("curated.jsonl").exists());
    assert_eq!(progress_lines(&resumed).len(), 3);
    std::fs::OpenOptions::new().append(true).open(resumed.join("progress.jsonl")).unwrap().write_all(b"{\"id\":\"m4\",\"dom").unwrap();
    // Resumed with two samples at a time: the kormo judge takes turns, the endpoints do not.
    let (code, _, stderr) = run_curate(&dir, &full, &input, &resumed, &["--jobs", "2"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("resuming: 3 samples already judged"), "{stderr}");
    // Each sample was labelled once over the two runs.
    assert_eq!(labels_asked.lock().unwrap().len() - before, 7);
    for file in ["curated.jsonl", "report.json"] {
        assert_eq!(std::fs::read(out.join(file)).unwrap(), std::fs::read(resumed.join(file)).unwrap(), "{file}");
    }
    let by_id = |mut lines: Vec<Value>| {
        lines.sort_by_key(|v| v["id"].as_str().unwrap().to_string());
        lines
    };
    assert_eq!(by_id(progress_lines(&resumed)), by_id(verdicts.clone()));

    // A finished curation re-reported under another consensus judges nothing again.
    let before = labels_asked.lock().unwrap().len();
    let all = config(&judges, r#"["direct", "served"]"#, r#"["served", "scripted"]"#, "\"all\"");
    let (code, table, stderr) = run_curate(&dir, &all, &input, &out, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(labels_asked.lock().unwrap().len(), before);
    assert!(table.lines().any(|l| l.starts_with("total") && l.contains(" 0 (  0.0%)")), "{table}");
    assert_eq!(std::fs::read_to_string(out.join("curated.jsonl")).unwrap(), "");
    // Other prompts on the same progress file are refused.
    let changed = full.replace("Solve: ", "Answer: ");
    let (code, _, stderr) = run_curate(&dir, &changed, &input, &out, &[]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("written with different judges, prompts"), "{stderr}");

    // The same model as a Hugging Face Llama folder: a kormo judge reads it, same answers.
    let folder = dir.join("hf-llama");
    let tokenizer = kormo_hf::vocab::ModelTokenizer { tokenizer: byte_tokenizer(), source: kormo_hf::vocab::TokenizerSource::ByteVocab };
    let options = kormo_hf::ExportOptions { flavor: kormo_hf::Flavor::Llama, dtype: kormo_hf::ExportDtype::F32, ..Default::default() };
    kormo_hf::export_folder(&weights, &tokenizer, &folder, &options).unwrap();
    let hf_judges = format!("\n[[judge]]\nname = \"hf\"\nkind = \"kormo\"\nmodel = \"{}\"\nthreads = 1\n{}", folder.display(), openai_judge("scripted", &scripted, "api_key_env = \"CURATE_TEST_KEY\""));
    let hf_out = dir.join("hf-out");
    let (code, _, stderr) = run_curate(&dir, &config(&hf_judges, r#"["hf"]"#, r#"["scripted"]"#, "1"), &input, &hf_out, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    for (hf, direct) in progress_lines(&hf_out).iter().zip(&verdicts) {
        assert_eq!(hf["solve"]["hf"], direct["solve"]["direct"], "{hf} {direct}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn judge_failures_name_the_endpoint_and_the_sample() {
    let dir = scratch("errors");
    let input = dir.join("in.jsonl");
    std::fs::write(&input, "{\"question\": \"q1\", \"answer\": \"1\"}\n{\"question\": \"q2\", \"answer\": \"2\"}\n").unwrap();
    let with = |judge: &str| config(judge, r#"["j"]"#, r#"["j"]"#, "\"all\"").replace("id = \"id\"\n", "");
    // Nothing listens on the port: retried once, then the error.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let (code, _, stderr) = run_curate(&dir, &with(&openai_judge("j", &dead, "")), &input, &dir.join("dead"), &[]);
    assert_eq!(code, Some(1));
    for part in [format!("judge `j` (http://{dead}/v1/chat/completions)"), "sample `in.jsonl:1`".into(), "gave up after 2 attempts".into()] {
        assert!(stderr.contains(&part), "{part}: {stderr}");
    }
    // A 200 that is not a chat completion: not retried.
    let (addr, requests, _) = start_scripted(|_, _| (200, "<html>busy</html>".into()));
    let (code, _, stderr) = run_curate(&dir, &with(&openai_judge("j", &addr, "")), &input, &dir.join("malformed"), &[]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("malformed response (not JSON): <html>busy</html>") && stderr.contains("sample `in.jsonl:1`") && stderr.contains(&addr), "{stderr}");
    assert_eq!(requests.lock().unwrap().len(), 1);
    let (addr, _, _) = start_scripted(|_, _| (200, json!({"choices": []}).to_string()));
    let (code, _, stderr) = run_curate(&dir, &with(&openai_judge("j", &addr, "")), &input, &dir.join("empty"), &[]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no choices[0]"), "{stderr}");
    // 503 then answers: retried; a 400 is not.
    let (addr, requests, _) = start_scripted(|_, i| if i == 0 { (503, "{}".into()) } else { (200, completion("Difficulty: hard")) });
    let (code, _, stderr) = run_curate(&dir, &with(&openai_judge("j", &addr, "")), &input, &dir.join("retry"), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(requests.lock().unwrap().len(), 5);
    let (addr, requests, _) = start_scripted(|_, _| (400, json!({"error": {"message": "model not found"}}).to_string()));
    let (code, _, stderr) = run_curate(&dir, &with(&openai_judge("j", &addr, "")), &input, &dir.join("bad-request"), &[]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("HTTP 400") && stderr.contains("model not found"), "{stderr}");
    assert_eq!(requests.lock().unwrap().len(), 1);
    // The API key's variable must be set.
    let (code, _, stderr) = run_curate(&dir, &with(&openai_judge("j", &addr, "api_key_env = \"CURATE_NO_SUCH_KEY\"")), &input, &dir.join("key"), &[]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("CURATE_NO_SUCH_KEY is not set"), "{stderr}");
    // Config mistakes are named.
    for (config, expected) in [
        (with(&openai_judge("j", &addr, "")).replace("{{question}} Reference", "{{question}} {{answer}}"), "unknown placeholder {{answer}}"),
        (with(&openai_judge("j", &addr, "")).replace("hard = [\"hard\"]", "hard = [\"tough\"]"), "label.hard"),
        (with(&openai_judge("j", &addr, "")).replace("judges = [\"j\"]\nprompt = \"Solve", "judges = [\"k\"]\nprompt = \"Solve"), "no [[judge]] named `k`"),
        (with(&openai_judge("j", "127.0.0.1:1", "")).replace("http://", "https://"), "https is not supported"),
        (with(&openai_judge("j", &addr, "colour = 1")), "unknown field"),
    ] {
        let (code, _, stderr) = run_curate(&dir, &config, &input, &dir.join("config"), &[]);
        assert_eq!(code, Some(1), "{expected}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_curation_killed_mid_run_with_several_jobs_resumes_to_the_outputs_of_an_uninterrupted_one() {
    let dir = scratch("kill");
    let input = dir.join("in.jsonl");
    let domain = |i: usize| if i.is_multiple_of(2) { "math" } else { "stem" };
    let lines: String = (0..12).map(|i| format!("{}\n", json!({"question": format!("q{i}"), "answer": "7", "domain": domain(i)}))).collect();
    std::fs::write(&input, lines).unwrap();
    // Wrong answers for every question, "hard" for even ones, each reply after 50 ms.
    let (addr, requests, peak) = start_scripted(|body, _| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let turn = user_turn(body);
        let n: usize = turn.trim_start_matches(|c: char| !c.is_ascii_digit()).split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap();
        (200, completion(if turn.starts_with("Solve") { "0" } else if n.is_multiple_of(2) { "hard" } else { "easy" }))
    });
    let config = config(&openai_judge("j", &addr, ""), r#"["j"]"#, r#"["j"]"#, "\"all\"").replace("id = \"id\"\n", "");
    let (code, _, stderr) = run_curate(&dir, &config, &input, &dir.join("whole"), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let asked = requests.lock().unwrap().len();
    assert_eq!(asked, 24);
    assert_eq!(peak.load(Ordering::SeqCst), 1, "--jobs 1 asks one request at a time");

    let out = dir.join("killed");
    let path = dir.join("curate-killed.toml");
    std::fs::write(&path, &config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_curate"))
        .arg("--config").arg(&path).arg("--input").arg(&input).arg("--out").arg(&out).args(["--jobs", "3"])
        .stderr(std::process::Stdio::null()).spawn().unwrap();
    let progress = out.join("progress.jsonl");
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&progress).map_or(0, |t| t.lines().count()) < 4 {
        assert!(started.elapsed().as_secs() < 60, "no progress");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let judged = std::fs::read_to_string(&progress).unwrap().lines().count() - 1;
    assert!((3..12).contains(&judged), "{judged} samples judged before the kill");
    assert!(!out.join("curated.jsonl").exists());
    let (code, _, stderr) = run_curate(&dir, &config, &input, &out, &["--jobs", "3"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(peak.load(Ordering::SeqCst) > 1, "--jobs 3 has requests in flight together");
    for file in ["curated.jsonl", "report.json"] {
        assert_eq!(std::fs::read(dir.join("whole").join(file)).unwrap(), std::fs::read(out.join(file)).unwrap(), "{file}");
    }
    // The same verdicts, in the order they arrived.
    let sorted = |out: &Path| {
        let mut lines: Vec<String> = std::fs::read_to_string(out.join("progress.jsonl")).unwrap().lines().map(str::to_string).collect();
        lines.sort();
        lines
    };
    assert_eq!(sorted(&dir.join("whole")), sorted(&out));
    // Killed and resumed, each sample was asked about once, but for those in flight at the kill
    // (up to 3 workers, each asking its two questions).
    let again = requests.lock().unwrap().len() - asked;
    assert!((24..=30).contains(&again), "{again} requests");
    std::fs::remove_dir_all(&dir).unwrap();
}
