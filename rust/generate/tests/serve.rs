//! The `serve` binary on loopback: chat completions as OpenAI's API shapes them, the same text
//! as an in-process [`ChatModel`] reply, and errors as OpenAI-style JSON.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use kormo_cpu::CpuOps;
use kormo_generate::http::post_json;
use kormo_generate::serve::{ChatModel, ChatRequest, Finish};
use kormo_generate::Strategy;
use kormo_hf::vocab::byte_tokenizer;
use kormo_hf::Weights;
use kormo_model::{Model, ModelConfig};
use serde_json::{json, Value};

fn checkpoint(dir: &std::path::Path, weights: &Weights) -> PathBuf {
    let path = dir.join("run/sft/final");
    weights.save_checkpoint(&path, "sft", 1, json!({})).unwrap();
    path
}

#[test]
fn serve_answers_chat_completions_like_an_in_process_reply() {
    let weights = Weights::from_model(&Model::new(ModelConfig::tiny(), CpuOps::<f32>::with_threads(1), 7).unwrap());
    let base = std::env::var_os("TEST_TMPDIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("kormo-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let model = checkpoint(&dir, &weights);
    let mut child = Command::new(env!("CARGO_BIN_EXE_serve"))
        .arg("--model").arg(&model).args(["--addr", "127.0.0.1:0", "--name", "tiny", "--threads", "2"])
        .stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on http://").unwrap_or_else(|| panic!("{line:?}")).to_string();
    let url = format!("http://{addr}/v1/chat/completions");
    let timeout = Duration::from_secs(60);

    let question = "What is 2+2? Answer: ";
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": question}], "max_tokens": 12, "temperature": 0});
    let response = post_json(&url, &[], &body.to_string(), timeout).unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    let doc: Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(doc["object"], "chat.completion");
    assert_eq!(doc["model"], "tiny");
    let choice = &doc["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(choice["finish_reason"] == "stop" || choice["finish_reason"] == "length");
    let usage = &doc["usage"];
    assert_eq!(usage["total_tokens"].as_u64(), Some(usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()));

    // The same model in process gives the same greedy text.
    let mut local = ChatModel::new(&weights, byte_tokenizer(), 1, 4096).unwrap();
    let request = ChatRequest { messages: vec![("user".into(), question.into())], max_new_tokens: 12, strategy: Strategy::Greedy, seed: 0, thinking: false };
    let reply = local.reply(&request).unwrap();
    assert_eq!(choice["message"]["content"].as_str(), Some(reply.content.as_str()));
    assert_eq!(usage["completion_tokens"].as_u64(), Some(reply.completion_tokens as u64));
    assert_eq!(choice["finish_reason"] == "length", reply.finish == Finish::Length);
    // Thinking on: the reply's reasoning comes back as reasoning_content.
    let thinking = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "chat_template_kwargs": {"enable_thinking": true}});
    let doc: Value = serde_json::from_str(&post_json(&url, &[], &thinking.to_string(), timeout).unwrap().body).unwrap();
    assert!(doc["choices"][0]["message"]["reasoning_content"].is_string(), "{doc}");

    // Errors: OpenAI-style JSON with a message.
    for (path, body, status, expected) in [
        ("/v1/chat/completions", "{not json".to_string(), 400, "not JSON"),
        ("/v1/chat/completions", json!({"messages": []}).to_string(), 400, "empty"),
        ("/v1/chat/completions", json!({"messages": [{"role": "user", "content": "x".repeat(5000)}]}).to_string(), 400, "context limit"),
        ("/v1/completions", "{}".to_string(), 404, "no route"),
    ] {
        let r = post_json(&format!("http://{addr}{path}"), &[], &body, timeout).unwrap();
        assert_eq!(r.status, status, "{path}: {}", r.body);
        let doc: Value = serde_json::from_str(&r.body).unwrap();
        assert!(doc["error"]["message"].as_str().unwrap().contains(expected), "{}", r.body);
    }
    // A request cut off mid-head is answered 400 and the server goes on.
    let mut raw = TcpStream::connect(&addr).unwrap();
    raw.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{}").unwrap();
    raw.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    let _ = BufReader::new(raw).read_line(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    let r = post_json(&url, &[], &body.to_string(), timeout).unwrap();
    assert_eq!(r.status, 200);
    child.kill().unwrap();
    let _ = child.wait();
    std::fs::remove_dir_all(&dir).unwrap();
}
