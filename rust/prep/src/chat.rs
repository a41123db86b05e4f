//! Chat and reasoning data as published, to masked shards: a source named under `[chat]` in the
//! prep config is read as conversations, rendered with KORMo's chat template
//! (kormo_tokenizer::chat, the renderer `generate --chat` and the exported Jinja template use)
//! and written with loss-mask spans over what the model is trained to say.
//!
//! Record shapes, detected per record (the first that applies):
//! * `messages: [{role, content}]` (Hugging Face chat datasets; an assistant message's reasoning
//!   in `reasoning_content`, `reasoning` or `thinking`; content may be a list of
//!   `{type: "text", text}` parts), with an optional top-level `system` string;
//! * `conversations: [{from, value}]` (ShareGPT; `{role, content}` items are accepted too);
//! * a prompt/response pair: prompt in `prompt`, `instruction` (plus a non-empty `input`,
//!   appended after a blank line, as Alpaca has it), `question`, `problem` or `query`; response
//!   in `response`, `completion`, `output`, `answer` or `solution`; reasoning in
//!   `reasoning_content`, `reasoning`, `thinking` or `think`; optional `system`. `prompt` and
//!   `completion` may also be message lists (TRL's conversational prompt-completion).
//!
//! Reasoning given inline, `<think>...</think>` at the start of an assistant's content, is split
//! out by the template itself. Roles: `system`, `user` (alias `human`), `assistant` (aliases
//! `gpt`, `model`, `bot`, `chatgpt`), `tool` (aliases `function`, `observation`, `ipython`);
//! anything else makes the record malformed.
//!
//! Per conversation: messages after the last assistant turn are dropped (they train nothing);
//! the rendering without its leading `<|BOS|>` and final `<|EOT|>` (the trainer's packer adds
//! both) is the document; its spans are the trained tokens: assistant answers and their
//! `<|EOT|>`, and the reasoning with its `</think>` when `think = "train"`. Never the template's
//! headers, `<think>`, or system/user/tool turns. A conversation with no assistant turn, or
//! nothing to train on, is skipped and counted (a document without spans would train on every
//! token). Heuristic filters, dedup and the quality model are for web text and do not apply.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kormo_shards::{ShardMeta, ShardSummary, ShardWriter};
use kormo_tokenizer::chat::{spans, ChatRenderer, Message, ThinkLoss, ASSISTANT};
use kormo_tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::batches::{par_map, read_ahead};
use crate::pipeline::StageCounts;
use kormo_corpus::records::read_records;
use kormo_corpus::MalformedInput;

/// `[chat.<source>]` in the prep config: the source holds conversations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatSourceConfig {
    /// Train on the reasoning (`"train"`, KORMo's reasoning data) or mask it (`"mask"`).
    pub think: ThinkSetting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThinkSetting {
    Train,
    Mask,
}

impl ThinkSetting {
    fn loss(self) -> ThinkLoss {
        match self {
            ThinkSetting::Train => ThinkLoss::Train,
            ThinkSetting::Mask => ThinkLoss::Mask,
        }
    }
}

/// Per-source counts of a chat source (in `report.json` next to the stage counts).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChatCounts {
    pub conversations_written: u64,
    /// Skipped conversations by reason (`no_assistant_turn`, `nothing_to_train`).
    pub conversations_skipped: BTreeMap<String, u64>,
    /// Messages written, and the assistant turns among them.
    pub turns: u64,
    pub assistant_turns: u64,
    /// Messages after the last assistant turn, dropped.
    pub trailing_turns_dropped: u64,
    /// Assistant turns with a non-empty reasoning part.
    pub reasoning_turns: u64,
    /// Tokens of the rendered conversations, `<|BOS|>` and final `<|EOT|>` included (as the
    /// packer lays them out), trained on and not.
    pub tokens_trained: u64,
    pub tokens_masked: u64,
    /// Of the masked tokens: reasoning (`think = "mask"`).
    pub reasoning_tokens_masked: u64,
    /// Messages whose text holds a special-token spelling (`<|EOT|>`, `<think>`, ...), kept as text.
    pub messages_with_special_text: u64,
}

const ROLES: [(&str, &str); 13] = [
    ("system", "system"),
    ("user", "user"),
    ("human", "user"),
    ("assistant", ASSISTANT),
    ("gpt", ASSISTANT),
    ("model", ASSISTANT),
    ("bot", ASSISTANT),
    ("chatgpt", ASSISTANT),
    ("tool", "tool"),
    ("function", "tool"),
    ("observation", "tool"),
    ("ipython", "tool"),
    ("developer", "system"),
];

fn role(name: &str) -> Result<&'static str, String> {
    ROLES
        .iter()
        .find(|(alias, _)| alias.eq_ignore_ascii_case(name))
        .map(|&(_, role)| role)
        .ok_or_else(|| {
            format!(
                "unknown role {name:?} (known: {})",
                ROLES.map(|(alias, _)| alias).join(", ")
            )
        })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A string, or a list of `{type: "text", text}` parts joined.
fn text(value: &Value, key: &str) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => parts
            .iter()
            .map(|part| match (part.get("type").and_then(Value::as_str), part.get("text")) {
                (Some("text"), Some(Value::String(s))) => Ok(s.as_str()),
                _ => Err(format!("`{key}`: only text parts are supported, found {part}")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|parts| parts.concat()),
        other => Err(format!("`{key}` is {}, not text", kind(other))),
    }
}

/// The first of `keys` present in `object` (a present non-text value is an error).
fn first_text(object: &Value, keys: &[&str]) -> Result<Option<String>, String> {
    match keys.iter().find_map(|&key| object.get(key).filter(|v| !v.is_null()).map(|v| (key, v))) {
        Some((key, value)) => text(value, key).map(Some),
        None => Ok(None),
    }
}

/// Where an assistant message keeps its reasoning (a prompt/response record also in `think`).
const REASONING_KEYS: [&str; 4] = ["reasoning_content", "reasoning", "thinking", "think"];

/// One `{role, content}` or `{from, value}` item.
fn message(item: &Value, index: usize) -> Result<Message, String> {
    let at = |e: String| format!("message {index}: {e}");
    let (role_key, content_key) = if item.get("from").is_some() { ("from", "value") } else { ("role", "content") };
    let name = match item.get(role_key) {
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(at(format!("`{role_key}` is {}", kind(other)))),
        None => return Err(at(format!("no `{role_key}`"))),
    };
    let role = role(name).map_err(at)?;
    let content = match item.get(content_key) {
        None | Some(Value::Null) if role == ASSISTANT => String::new(),
        None => return Err(at(format!("no `{content_key}`"))),
        Some(value) => text(value, content_key).map_err(at)?,
    };
    let reasoning = if role == ASSISTANT {
        first_text(item, &REASONING_KEYS[..3]).map_err(at)?
    } else {
        None
    };
    Ok(Message { role: role.to_string(), content, reasoning })
}

fn messages(list: &Value, key: &str) -> Result<Vec<Message>, String> {
    let items = list.as_array().ok_or_else(|| format!("`{key}` is {}, not a list", kind(list)))?;
    items.iter().enumerate().map(|(i, item)| message(item, i)).collect()
}

/// A prompt or completion: text, or a message list (TRL).
fn side(value: &Value, key: &str, text_role: &str) -> Result<Vec<Message>, String> {
    match value {
        Value::Array(_) if value.as_array().is_some_and(|a| a.iter().all(Value::is_object)) => messages(value, key),
        other => Ok(vec![Message::new(text_role, &text(other, key)?)]),
    }
}

const PROMPT_KEYS: [&str; 5] = ["prompt", "instruction", "question", "problem", "query"];
const RESPONSE_KEYS: [&str; 5] = ["response", "completion", "output", "answer", "solution"];

fn prompt_response(record: &Value) -> Result<Vec<Message>, String> {
    let found = |keys: &[&'static str]| keys.iter().copied().find(|k| record.get(*k).is_some_and(|v| !v.is_null()));
    let (Some(prompt_key), Some(response_key)) = (found(&PROMPT_KEYS), found(&RESPONSE_KEYS)) else {
        let keys: Vec<&str> = record.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
        return Err(format!(
            "not a conversation: no `messages`, `conversations` or prompt/response fields (prompt: {}; response: {}); the record has {}",
            PROMPT_KEYS.join(", "),
            RESPONSE_KEYS.join(", "),
            if keys.is_empty() { "no fields".to_string() } else { keys.join(", ") }
        ));
    };
    let mut prompt = side(&record[prompt_key], prompt_key, "user")?;
    if prompt_key == "instruction" {
        if let (Some(input), Some(last)) = (record.get("input"), prompt.last_mut()) {
            let input = text(input, "input")?;
            if !input.is_empty() {
                last.content = format!("{}\n\n{input}", last.content);
            }
        }
    }
    let mut response = side(&record[response_key], response_key, ASSISTANT)?;
    if let (Some(reasoning), Some(last)) = (first_text(record, &REASONING_KEYS)?, response.last_mut()) {
        if last.is_assistant() && last.reasoning.is_none() {
            last.reasoning = Some(reasoning);
        }
    }
    prompt.append(&mut response);
    Ok(prompt)
}

/// The conversation a record holds, in any of the shapes above.
pub fn conversation(record: &Value) -> Result<Vec<Message>, String> {
    if !record.is_object() {
        return Err(format!("a record is a JSON object, found {}", kind(record)));
    }
    let mut out = if let Some(list) = record.get("messages") {
        messages(list, "messages")?
    } else if let Some(list) = record.get("conversations") {
        messages(list, "conversations")?
    } else {
        prompt_response(record)?
    };
    if let Some(system) = record.get("system").filter(|v| !v.is_null()) {
        let system = text(system, "system")?;
        if !system.is_empty() && out.first().is_none_or(|m| m.role != "system") {
            out.insert(0, Message::new("system", &system));
        }
    }
    Ok(out)
}

/// One conversation ready for a shard.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedConversation {
    pub tokens: Vec<u32>,
    pub spans: Vec<(u32, u32)>,
    /// Bytes of message text written.
    pub text_bytes: u64,
    /// The conversation's language code (kormo_shards::language::classify over the text of
    /// all its messages, reasoning included).
    pub language: u8,
    pub counts: ChatCounts,
}

/// What of a message the template encodes as plain text: an assistant's (reasoning, content)
/// once an inline think block is split out, another role's content.
fn plain_texts(m: &Message) -> (&str, &str) {
    if m.is_assistant() {
        m.reasoning_and_content()
    } else {
        ("", &m.content)
    }
}

/// Renders `messages` as a shard document with its spans; Err: the reason it is skipped.
pub fn prepare_conversation(
    renderer: &mut ChatRenderer,
    conversation: &[Message],
    think: ThinkSetting,
    specials: &[String],
) -> Result<PreparedConversation, (&'static str, u64)> {
    let Some(last) = conversation.iter().rposition(Message::is_assistant) else {
        return Err(("no_assistant_turn", 0));
    };
    let dropped = (conversation.len() - last - 1) as u64;
    let messages = &conversation[..=last];
    let rendered = renderer.render(messages, None);
    let trained = rendered.trained(think.loss());
    let n = rendered.ids.len();
    let mut counts = ChatCounts {
        conversations_written: 1,
        turns: messages.len() as u64,
        assistant_turns: messages.iter().filter(|m| m.is_assistant()).count() as u64,
        trailing_turns_dropped: dropped,
        reasoning_turns: messages.iter().filter(|m| m.is_assistant() && !m.reasoning_and_content().0.is_empty()).count() as u64,
        tokens_trained: trained.iter().filter(|&&t| t).count() as u64,
        messages_with_special_text: messages
            .iter()
            .filter(|m| {
                let (reasoning, content) = plain_texts(m);
                specials.iter().any(|s| content.contains(s.as_str()) || reasoning.contains(s.as_str()))
            })
            .count() as u64,
        ..ChatCounts::default()
    };
    counts.tokens_masked = n as u64 - counts.tokens_trained;
    counts.reasoning_tokens_masked = rendered
        .parts
        .iter()
        .zip(&trained)
        .filter(|&(&p, &t)| p == kormo_tokenizer::chat::Part::Reasoning && !t)
        .count() as u64;
    if counts.tokens_trained == 0 {
        return Err(("nothing_to_train", dropped));
    }
    // The packer adds <|BOS|> before and <|EOT|> after (trained when the token before it is,
    // the rule the renderer used for the final <|EOT|>).
    let inner = 1..n - 1;
    let text: String = messages
        .iter()
        .flat_map(|m| {
            let (reasoning, content) = plain_texts(m);
            [reasoning, "\n", content, "\n"]
        })
        .collect();
    Ok(PreparedConversation {
        language: kormo_shards::language::classify(&text),
        text_bytes: messages.iter().map(|m| m.content.len() + m.reasoning.as_ref().map_or(0, String::len)).sum::<usize>() as u64,
        tokens: rendered.ids[inner.clone()].to_vec(),
        spans: spans(&trained[inner]),
        counts,
    })
}

fn add(total: &mut ChatCounts, one: &ChatCounts) {
    total.conversations_written += one.conversations_written;
    total.turns += one.turns;
    total.assistant_turns += one.assistant_turns;
    total.trailing_turns_dropped += one.trailing_turns_dropped;
    total.reasoning_turns += one.reasoning_turns;
    total.tokens_trained += one.tokens_trained;
    total.tokens_masked += one.tokens_masked;
    total.reasoning_tokens_masked += one.reasoning_tokens_masked;
    total.messages_with_special_text += one.messages_with_special_text;
}

/// The conversations of `files` (a chunk of a chat source, read one file after another) -> one
/// shard (none if no conversation survives).
#[allow(clippy::too_many_arguments)]
pub fn process_files(
    files: &[PathBuf],
    shard_path: &Path,
    config: ChatSourceConfig,
    batch_size: usize,
    meta: &ShardMeta,
    tokenizer: &Tokenizer,
    threads: usize,
    counts: &mut StageCounts,
) -> Result<Option<ShardSummary>, String> {
    let specials: Vec<String> = tokenizer.specials().into_iter().map(|s| s.content).collect();
    let conversations = files.iter().flat_map(|file| {
        read_records(file, &[]).map(move |record| {
            let record = record?;
            conversation(&record.value).map_err(|e| MalformedInput::new(file, record.location, e))
        })
    });
    let mut renderers: Vec<ChatRenderer> = (0..threads.max(1))
        .map(|_| ChatRenderer::new(tokenizer).expect("chat specials checked at start-up"))
        .collect();
    let mut writer: Option<ShardWriter> = None;
    std::thread::scope(|scope| {
        for batch in read_ahead(scope, conversations, batch_size, counts.malformed, |_| {}) {
            let batch = batch?;
            counts.malformed += batch.malformed;
            counts.documents_read += batch.items.len() as u64;
            let t = Instant::now();
            let prepared = par_map(&batch.items, &mut renderers, |renderer, messages| {
                prepare_conversation(renderer, messages, config.think, &specials)
            });
            counts.seconds_quality_and_tokenize += t.elapsed().as_secs_f64();
            write(&mut writer, shard_path, meta, prepared, counts)?;
        }
        Ok::<(), String>(())
    })?;
    match writer {
        Some(w) => Ok(Some(w.finish().map_err(|e| e.to_string())?)),
        None => Ok(None),
    }
}

/// Appends the prepared conversations to the shard (created with the first one); skipped
/// ones are counted by reason.
fn write(
    writer: &mut Option<ShardWriter>,
    shard_path: &Path,
    meta: &ShardMeta,
    prepared: Vec<Result<PreparedConversation, (&'static str, u64)>>,
    counts: &mut StageCounts,
) -> Result<(), String> {
    let t = Instant::now();
    let chat = counts.chat.get_or_insert_with(ChatCounts::default);
    for result in prepared {
        let conversation = match result {
            Ok(c) => c,
            Err((reason, dropped)) => {
                *chat.conversations_skipped.entry(reason.to_string()).or_insert(0) += 1;
                chat.trailing_turns_dropped += dropped;
                continue;
            }
        };
        let w = match writer {
            Some(w) => w,
            None => writer.insert(ShardWriter::create(shard_path, meta.clone()).map_err(|e| e.to_string())?),
        };
        w.append_document_with_language(&conversation.tokens, Some(&conversation.spans), conversation.language)
            .map_err(|e| e.to_string())?;
        add(chat, &conversation.counts);
        counts.documents_written += 1;
        counts.tokens_written += conversation.tokens.len() as u64;
        counts.text_bytes_written += conversation.text_bytes;
    }
    counts.seconds_write += t.elapsed().as_secs_f64();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(role: &str, content: &str, reasoning: Option<&str>) -> Message {
        Message { reasoning: reasoning.map(str::to_string), ..Message::new(role, content) }
    }

    #[test]
    fn hugging_face_messages_with_reasoning_parts_and_system() {
        let record = json!({"system": "be brief", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "c", "reasoning_content": "r"},
            {"role": "tool", "content": "{}"},
            {"role": "assistant", "content": null, "thinking": "t"}]});
        assert_eq!(
            conversation(&record).unwrap(),
            vec![m("system", "be brief", None), m("user", "ab", None), m("assistant", "c", Some("r")),
                 m("tool", "{}", None), m("assistant", "", Some("t"))]
        );
        // A system message already first is not doubled.
        let record = json!({"system": "x", "messages": [{"role": "system", "content": "y"}, {"role": "user", "content": "q"}]});
        assert_eq!(conversation(&record).unwrap().len(), 2);
    }

    #[test]
    fn sharegpt_conversations_with_role_aliases() {
        let record = json!({"conversations": [
            {"from": "system", "value": "s"}, {"from": "human", "value": "q"},
            {"from": "gpt", "value": "<think>r</think>a"}, {"from": "observation", "value": "o"},
            {"role": "user", "content": "q2"}]});
        assert_eq!(
            conversation(&record).unwrap(),
            vec![m("system", "s", None), m("user", "q", None), m("assistant", "<think>r</think>a", None),
                 m("tool", "o", None), m("user", "q2", None)]
        );
    }

    #[test]
    fn prompt_response_pairs_and_reasoning_traces() {
        let alpaca = json!({"instruction": "Translate", "input": "사과", "output": "apple"});
        assert_eq!(conversation(&alpaca).unwrap(), vec![m("user", "Translate\n\n사과", None), m("assistant", "apple", None)]);
        let empty_input = json!({"instruction": "Say hi", "input": "", "output": "hi"});
        assert_eq!(conversation(&empty_input).unwrap()[0].content, "Say hi");
        let trace = json!({"system": "s", "problem": "2+2", "thinking": "2+2=4", "solution": "4"});
        assert_eq!(
            conversation(&trace).unwrap(),
            vec![m("system", "s", None), m("user", "2+2", None), m("assistant", "4", Some("2+2=4"))]
        );
        let trl = json!({"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}]});
        assert_eq!(conversation(&trl).unwrap(), vec![m("user", "q", None), m("assistant", "a", None)]);
    }

    #[test]
    fn special_spellings_are_counted_wherever_they_stay_text() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/golden/chat_template/tokenizer.json");
        let tok = kormo_tokenizer::hf::load(std::path::Path::new(path)).unwrap();
        let specials: Vec<String> = tok.specials().into_iter().map(|s| s.content).collect();
        let mut renderer = ChatRenderer::new(&tok).unwrap();
        let count = |renderer: &mut ChatRenderer, messages: &[Message]| {
            prepare_conversation(renderer, messages, ThinkSetting::Train, &specials).unwrap().counts.messages_with_special_text
        };
        // An inline think block of an assistant is markup; in a user's text it stays text.
        let inline = [m("user", "q", None), m("assistant", "<think>r</think>a", None)];
        assert_eq!(count(&mut renderer, &inline), 0);
        let typed = [m("user", "<think>r</think>a", None), m("assistant", "a <|EOT|>", None)];
        assert_eq!(count(&mut renderer, &typed), 2);
        let skipped = prepare_conversation(&mut renderer, &[m("user", "q", None)], ThinkSetting::Train, &specials);
        assert_eq!(skipped.unwrap_err(), ("no_assistant_turn", 0));
        let empty = [m("user", "q", None), m("assistant", "", Some("r")), m("user", "more", None)];
        let skipped = prepare_conversation(&mut renderer, &empty, ThinkSetting::Mask, &specials);
        assert_eq!(skipped.unwrap_err(), ("nothing_to_train", 1));
    }

    #[test]
    fn malformed_records_say_why() {
        let cases = [
            (json!([1]), "JSON object"),
            (json!({"text": "plain"}), "the record has text"),
            (json!({"messages": [{"role": "wizard", "content": "x"}]}), "message 0: unknown role \"wizard\""),
            (json!({"messages": [{"role": "user"}]}), "message 0: no `content`"),
            (json!({"messages": {"role": "user"}}), "`messages` is an object, not a list"),
            (json!({"messages": [{"role": "user", "content": 3}]}), "`content` is a number"),
            (json!({"messages": [{"role": "user", "content": [{"type": "image"}]}]}), "only text parts"),
            (json!({"prompt": "q", "response": "a", "reasoning": 5}), "`reasoning` is a number"),
        ];
        for (record, expected) in cases {
            let err = conversation(&record).unwrap_err();
            assert!(err.contains(expected), "{record}: {err}");
        }
    }
}
