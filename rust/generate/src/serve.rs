//! Chat replies from a kormo model, and an OpenAI-compatible chat-completions server for them.
//!
//! [`ChatModel::reply`] is one chat turn: the messages in KORMo's chat template (`text::
//! chat_prompt`, thinking on or off), generation to `<|EOT|>` or a token limit, and the output
//! split at `</think>` into reasoning and answer. `curate`'s kormo judges call it directly;
//! [`serve`] answers `POST /v1/chat/completions` with it, one request at a time, so a judge over
//! HTTP and a judge in process give the same text for the same model.
//!
//! Request fields read: `messages` (`role`, `content` as a string or `[{type: "text", text}]`
//! parts), `max_tokens` or `max_completion_tokens` (default 256), `temperature` (default 0:
//! greedy), `top_p`, `seed`, and vLLM's `chat_template_kwargs.enable_thinking` (default off).
//! `stream: true` and `n` > 1 are refused (400). The response is a `chat.completion` object with
//! one choice (`finish_reason` `stop` or `length`, `reasoning_content` when thinking was on) and
//! `usage`. Errors are `{"error": {"message", "type"}}` with status 400 or 404.

use std::io::BufReader;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use kormo_hf::Weights;
use kormo_tokenizer::Tokenizer;
use serde_json::{json, Value};

use crate::http;
use crate::text::{chat_prompt, ChatTokens, StreamDecoder};
use crate::{generate, open_model, Decoder, Limits, Sampler, StopReason, Strategy};

/// A model with its tokenizer, ready to answer chats (the KV cache is reused between calls).
pub struct ChatModel {
    decoder: Decoder,
    tokenizer: Tokenizer,
    specials: ChatTokens,
    /// The longest prompt + reply run.
    pub max_context: usize,
}

/// One chat turn to answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// `(role, content)` in order.
    pub messages: Vec<(String, String)>,
    pub max_new_tokens: usize,
    pub strategy: Strategy,
    pub seed: u64,
    pub thinking: bool,
}

/// Why a reply ended, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model ended its turn.
    Stop,
    /// A token or context limit.
    Length,
}

/// A chat reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The answer (after `</think>` when thinking was on).
    pub content: String,
    /// The thinking, when it was on (everything, if `</think>` never came).
    pub reasoning: Option<String>,
    pub finish: Finish,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

impl ChatModel {
    /// The model at `path` (kormo checkpoint of architecture `preset`, or a Hugging Face folder).
    pub fn open(path: &Path, preset: &str, tokenizer: Option<&Path>, threads: usize, max_context: usize) -> Result<ChatModel, String> {
        let (weights, tok) = open_model(path, preset, tokenizer)?;
        ChatModel::new(&weights, tok.tokenizer, threads, max_context).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn new(weights: &Weights, tokenizer: Tokenizer, threads: usize, max_context: usize) -> Result<ChatModel, String> {
        let specials = ChatTokens::find(&tokenizer)?;
        Ok(ChatModel { decoder: Decoder::new(weights, threads.max(1)), tokenizer, specials, max_context })
    }

    /// Answers one chat turn.
    pub fn reply(&mut self, request: &ChatRequest) -> Result<Reply, String> {
        let messages: Vec<(&str, &str)> = request.messages.iter().map(|(r, c)| (r.as_str(), c.as_str())).collect();
        let prompt = chat_prompt(&self.tokenizer, &messages, request.thinking)?;
        let mut sampler = Sampler::new(request.strategy, request.seed, self.tokenizer.vocab_size());
        let limits = Limits { max_new_tokens: request.max_new_tokens, stop_tokens: vec![self.specials.eot], max_context: self.max_context };
        self.decoder.reset();
        let generation = generate(&mut self.decoder, &mut sampler, &prompt, &limits, |_| {})?;
        let finish = match generation.stop {
            StopReason::StopToken(_) => Finish::Stop,
            StopReason::MaxNewTokens | StopReason::ContextFull => Finish::Length,
        };
        let tokens = &generation.tokens;
        let (reasoning, answer) = if request.thinking {
            match tokens.iter().position(|&t| t == self.specials.think_end) {
                Some(at) => (Some(self.text(&tokens[..at])), &tokens[at + 1..]),
                None => (Some(self.text(tokens)), &tokens[tokens.len()..]),
            }
        } else {
            (None, &tokens[..])
        };
        Ok(Reply { content: self.text(answer), reasoning, finish, prompt_tokens: prompt.len(), completion_tokens: tokens.len() })
    }

    /// Text of `ids` (special tokens as their spelling, invalid UTF-8 as U+FFFD).
    fn text(&self, ids: &[u32]) -> String {
        let mut stream = StreamDecoder::new(&self.tokenizer);
        let mut text: String = ids.iter().map(|&id| stream.push(id)).collect();
        text.push_str(&stream.finish());
        text
    }
}

/// A request body's chat turn, or a message for a 400.
pub fn parse_request(body: &Value) -> Result<ChatRequest, String> {
    let list = body.get("messages").and_then(Value::as_array).ok_or("`messages` must be a list")?;
    let mut messages = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).ok_or_else(|| format!("messages[{i}].role must be a string"))?;
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => parts
                .iter()
                .map(|p| p.get("text").and_then(Value::as_str).ok_or_else(|| format!("messages[{i}].content parts need `text`")))
                .collect::<Result<String, String>>()?,
            _ => return Err(format!("messages[{i}].content must be a string or a list of text parts")),
        };
        messages.push((role.to_string(), content));
    }
    if messages.is_empty() {
        return Err("`messages` is empty".into());
    }
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err("streaming is not supported (send `stream: false`)".into());
    }
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n != 1) {
        return Err("only n = 1 is supported".into());
    }
    let number = |key: &str| body.get(key).filter(|v| !v.is_null());
    let max_new_tokens = match number("max_completion_tokens").or(number("max_tokens")) {
        None => 256,
        Some(v) => v.as_u64().ok_or("max_tokens must be a non-negative integer")? as usize,
    };
    let float = |key: &str, default: f64| number(key).map_or(Ok(default), |v| v.as_f64().ok_or(format!("`{key}` must be a number")));
    let strategy = Strategy::new(float("temperature", 0.0)? as f32, float("top_p", 1.0)? as f32)
        .map_err(|e| e.replace("--temperature", "temperature").replace("--top-p", "top_p"))?;
    let seed = number("seed").map_or(Ok(0), |v| v.as_u64().ok_or("`seed` must be a non-negative integer"))?;
    let thinking = body.pointer("/chat_template_kwargs/enable_thinking").and_then(Value::as_bool).unwrap_or(false);
    Ok(ChatRequest { messages, max_new_tokens, strategy, seed, thinking })
}

/// The `chat.completion` object for `reply`.
pub fn completion_json(reply: &Reply, model: &str, id: u64) -> Value {
    let mut message = json!({"role": "assistant", "content": reply.content});
    if let Some(reasoning) = &reply.reasoning {
        message["reasoning_content"] = json!(reasoning);
    }
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": match reply.finish { Finish::Stop => "stop", Finish::Length => "length" },
        }],
        "usage": {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        },
    })
}

fn error_json(message: &str, kind: &str) -> String {
    json!({"error": {"message": message, "type": kind}}).to_string()
}

/// Answers connections on `listener` one at a time, forever (or until `max_requests` have been
/// answered). `log` sees one line per request.
pub fn serve(listener: &TcpListener, model: &mut ChatModel, name: &str, max_requests: Option<usize>, mut log: impl FnMut(&str)) {
    let mut served = 0u64;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        served += 1;
        let line = handle(stream, model, name, served);
        log(&line);
        if max_requests.is_some_and(|m| served as usize >= m) {
            return;
        }
    }
}

/// One exchange; returns its log line.
fn handle(mut stream: TcpStream, model: &mut ChatModel, name: &str, id: u64) -> String {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(60)));
    let request = match stream.try_clone().map_err(|e| e.to_string()).and_then(|s| http::read_message(&mut BufReader::new(s), false)) {
        Ok(request) => request,
        Err(e) => {
            let _ = http::write_json_response(&mut stream, 400, &error_json(&e, "invalid_request_error"));
            return format!("#{id} unreadable request: {e}");
        }
    };
    let mut parts = request.start.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, body) = match (method, path) {
        ("POST", "/v1/chat/completions") => chat(&request.body, model, name, id),
        ("GET", "/v1/models") => (200, json!({"object": "list", "data": [{"id": name, "object": "model", "owned_by": "kormo"}]}).to_string()),
        ("GET", "/health") => (200, "{}".to_string()),
        (_, "/v1/chat/completions" | "/v1/models" | "/health") => (405, error_json(&format!("{method} is not allowed on {path}"), "invalid_request_error")),
        _ => (404, error_json(&format!("no route {method} {path}"), "not_found_error")),
    };
    let _ = http::write_json_response(&mut stream, status, &body);
    format!("#{id} {method} {path} -> {status}")
}

fn chat(body: &[u8], model: &mut ChatModel, name: &str, id: u64) -> (u16, String) {
    let parsed = serde_json::from_slice::<Value>(body).map_err(|e| format!("the body is not JSON: {e}"));
    match parsed.and_then(|v| parse_request(&v)).and_then(|r| model.reply(&r)) {
        Ok(reply) => (200, completion_json(&reply, name, id).to_string()),
        Err(e) => (400, error_json(&e, "invalid_request_error")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_openai_defaults_and_refuse_what_is_unsupported() {
        let r = parse_request(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})).unwrap();
        assert_eq!((r.max_new_tokens, r.strategy, r.seed, r.thinking), (256, Strategy::Greedy, 0, false));
        let r = parse_request(&json!({
            "messages": [{"role": "system", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}, {"role": "user", "content": "q"}],
            "max_completion_tokens": 7, "max_tokens": 9, "temperature": 0.5, "top_p": 0.9, "seed": 3,
            "chat_template_kwargs": {"enable_thinking": true}
        }))
        .unwrap();
        assert_eq!(r.messages, vec![("system".into(), "ab".into()), ("user".into(), "q".into())]);
        assert_eq!((r.max_new_tokens, r.seed, r.thinking), (7, 3, true));
        assert_eq!(r.strategy, Strategy::Sample { temperature: 0.5, top_p: 0.9 });
        for (body, expected) in [
            (json!({}), "`messages` must be a list"),
            (json!({"messages": []}), "empty"),
            (json!({"messages": [{"role": "user"}]}), "messages[0].content"),
            (json!({"messages": [{"role": "user", "content": "x"}], "stream": true}), "streaming"),
            (json!({"messages": [{"role": "user", "content": "x"}], "n": 2}), "n = 1"),
            (json!({"messages": [{"role": "user", "content": "x"}], "temperature": -1}), "temperature"),
            (json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}), "max_tokens"),
        ] {
            let err = parse_request(&body).unwrap_err();
            assert!(err.contains(expected), "{body}: {err}");
        }
    }
}
