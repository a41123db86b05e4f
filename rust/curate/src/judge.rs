//! The judges: a kormo model run in process ([`kormo_generate::serve::ChatModel`]) or an
//! OpenAI-compatible chat-completions endpoint over HTTP, with timeouts and retries.

use std::time::Duration;

use kormo_generate::serve::{ChatModel, ChatRequest, Finish};
use kormo_generate::Strategy;
use serde_json::{json, Value};

use crate::config::{Backend, Generation, JudgeConfig};

/// A judge's reply: its answer text (thinking excluded where the backend splits it off) and
/// whether it ended at a length limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub text: String,
    pub truncated: bool,
}

/// A judge ready to be asked.
pub enum Judge {
    Kormo { name: String, model: Box<ChatModel> },
    Openai { name: String, endpoint: Endpoint },
}

/// An OpenAI-compatible endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: String,
    pub model: String,
    pub api_key: Option<String>,
    pub timeout: Duration,
    pub retries: u32,
    pub backoff: Duration,
}

impl Judge {
    /// Loads a kormo judge's model, or reads an endpoint's API key from its variable.
    pub fn open(config: &JudgeConfig) -> Result<Judge, String> {
        let name = config.name.clone();
        match &config.backend {
            Backend::Kormo { model, preset, tokenizer, threads, max_context } => {
                let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
                let model = kormo_hf::cli::user_path(model);
                let tokenizer = tokenizer.as_deref().map(kormo_hf::cli::user_path);
                let chat = ChatModel::open(&model, preset, tokenizer.as_deref(), threads, *max_context).map_err(|e| format!("judge `{name}`: {e}"))?;
                Ok(Judge::Kormo { name, model: Box::new(chat) })
            }
            Backend::Openai { url, model, api_key_env, timeout_s, retries, backoff_ms } => {
                let api_key = match api_key_env {
                    None => None,
                    Some(var) => match std::env::var(var) {
                        Ok(key) if !key.is_empty() => Some(key),
                        _ => return Err(format!("judge `{name}`: the API key variable {var} is not set")),
                    },
                };
                let endpoint = Endpoint {
                    url: url.clone(),
                    model: model.clone(),
                    api_key,
                    timeout: Duration::from_secs_f64(*timeout_s),
                    retries: *retries,
                    backoff: Duration::from_millis(*backoff_ms),
                };
                Ok(Judge::Openai { name, endpoint })
            }
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Judge::Kormo { name, .. } | Judge::Openai { name, .. } => name,
        }
    }

    /// Asks the judge `messages` (`(role, content)`); errors name the judge, its endpoint and
    /// the sample.
    pub fn ask(&mut self, messages: Vec<(String, String)>, generation: &Generation, sample: &str) -> Result<Answer, String> {
        match self {
            Judge::Kormo { name, model } => {
                let strategy = Strategy::new(generation.temperature, 1.0).map_err(|e| format!("judge `{name}`: {e}"))?;
                let request = ChatRequest { messages, max_new_tokens: generation.max_tokens, strategy, seed: generation.seed, thinking: generation.thinking.unwrap_or(false) };
                let reply = model.reply(&request).map_err(|e| format!("judge `{name}`, sample `{sample}`: {e}"))?;
                Ok(Answer { text: reply.content, truncated: reply.finish == Finish::Length })
            }
            Judge::Openai { name, endpoint } => endpoint.ask_for(name, &messages, generation, sample),
        }
    }
}

/// Whether an HTTP status is worth another attempt.
fn transient(status: u16) -> bool {
    status == 408 || status == 429 || status >= 500
}

impl Endpoint {
    /// The request body for `messages`.
    pub fn body(&self, messages: &[(String, String)], generation: &Generation) -> Value {
        let messages: Vec<Value> = messages.iter().map(|(role, content)| json!({"role": role, "content": content})).collect();
        let mut body = json!({
            "model": self.model,
            "messages": messages,
            "max_tokens": generation.max_tokens,
            "temperature": generation.temperature,
            "seed": generation.seed,
            "stream": false,
        });
        if let Some(thinking) = generation.thinking {
            body["chat_template_kwargs"] = json!({"enable_thinking": thinking});
        }
        body
    }

    /// [`Endpoint::ask`] with errors naming the judge, the endpoint and the sample.
    pub fn ask_for(&self, judge: &str, messages: &[(String, String)], generation: &Generation, sample: &str) -> Result<Answer, String> {
        self.ask(messages, generation).map_err(|e| format!("judge `{judge}` ({}), sample `{sample}`: {e}", self.url))
    }

    /// One chat completion, retried on transient failures with doubling waits.
    pub fn ask(&self, messages: &[(String, String)], generation: &Generation) -> Result<Answer, String> {
        let body = self.body(messages, generation).to_string();
        let mut headers = Vec::new();
        if let Some(key) = &self.api_key {
            headers.push(("Authorization".to_string(), format!("Bearer {key}")));
        }
        let mut wait = self.backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match kormo_generate::http::post_json(&self.url, &headers, &body, self.timeout) {
                Ok(r) if r.status == 200 => return parse_completion(&r.body),
                Ok(r) if transient(r.status) => format!("HTTP {}: {}", r.status, snippet(&r.body)),
                Ok(r) => return Err(format!("HTTP {}: {}", r.status, snippet(&r.body))),
                Err(e) => e,
            };
            if attempt > self.retries {
                return Err(format!("{failure} (gave up after {attempt} attempts)"));
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_secs(60));
        }
    }
}

fn snippet(body: &str) -> String {
    let body = body.trim();
    match body.char_indices().nth(300) {
        Some((at, _)) => format!("{}...", &body[..at]),
        None => body.to_string(),
    }
}

/// The answer in a `chat.completion` response body.
pub fn parse_completion(body: &str) -> Result<Answer, String> {
    let malformed = |why: &str| format!("malformed response ({why}): {}", snippet(body));
    let doc: Value = serde_json::from_str(body).map_err(|_| malformed("not JSON"))?;
    let choice = doc.pointer("/choices/0").ok_or_else(|| malformed("no choices[0]"))?;
    let text = match choice.pointer("/message/content") {
        Some(Value::String(s)) => s.clone(),
        // A reasoning model that spent its tokens thinking may send null content.
        Some(Value::Null) => String::new(),
        _ => return Err(malformed("no choices[0].message.content string")),
    };
    let truncated = choice.get("finish_reason").and_then(Value::as_str) == Some("length");
    Ok(Answer { text, truncated })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_parse_and_malformed_ones_are_named() {
        let ok = parse_completion(r#"{"choices":[{"message":{"role":"assistant","content":"42"},"finish_reason":"length"}]}"#).unwrap();
        assert_eq!(ok, Answer { text: "42".into(), truncated: true });
        let null = parse_completion(r#"{"choices":[{"message":{"content":null},"finish_reason":"stop"}]}"#).unwrap();
        assert_eq!(null.text, "");
        assert!(parse_completion("<html>").unwrap_err().contains("malformed response (not JSON): <html>"));
        assert!(parse_completion(r#"{"choices":[]}"#).unwrap_err().contains("no choices[0]"));
        assert!(parse_completion(r#"{"choices":[{"message":{"content":7}}]}"#).unwrap_err().contains("content string"));
        assert!(transient(503) && transient(429) && !transient(400) && !transient(404));
    }
}
