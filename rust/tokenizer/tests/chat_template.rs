//! kormo's chat renderer against transformers' `apply_chat_template`, as recorded by
//! tools/chat_template_check.py in tests/golden/chat_template/transformers_ids.json (versions
//! in that file). The folder's tokenizer_config.json must be exactly what kormo writes today, so
//! a template change without a new recording fails here.

use kormo_tokenizer::chat::{ChatRenderer, Message, Thinking, CHAT_TEMPLATE};
use kormo_tokenizer::hf;
use serde_json::Value;
use std::path::PathBuf;

fn folder() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/golden/chat_template"))
}

fn json(name: &str) -> Value {
    let path = folder().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn message(value: &Value) -> Message {
    let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
    Message {
        role: text("role").expect("role"),
        content: text("content").expect("content"),
        reasoning: text("reasoning_content"),
    }
}

#[test]
fn renderer_matches_recorded_transformers_ids() {
    let tok = hf::load(&folder().join("tokenizer.json")).unwrap();
    assert_eq!(json("tokenizer_config.json"), hf::tokenizer_config_json(&tok), "re-record: tools/chat_template_check.py");
    let recorded = json("transformers_ids.json");
    assert_eq!(recorded["chat_template"].as_str(), Some(CHAT_TEMPLATE), "recorded with another template");
    let versions = &recorded["versions"];
    assert!(versions["transformers"].is_string() && versions["tokenizers"].is_string(), "{versions}");
    let cases = json("conversations.json")["cases"].as_array().unwrap().clone();
    let outputs = recorded["cases"].as_array().unwrap();
    assert_eq!(cases.len(), outputs.len());
    assert!(cases.len() >= 8);
    let mut renderer = ChatRenderer::new(&tok).unwrap();
    let specials = renderer.tokens();
    for (case, output) in cases.iter().zip(outputs) {
        let name = case["name"].as_str().unwrap();
        assert_eq!(output["name"].as_str(), Some(name));
        let messages: Vec<Message> = case["messages"].as_array().unwrap().iter().map(message).collect();
        let generation = case["add_generation_prompt"].as_bool().unwrap().then(|| {
            if case["enable_thinking"].as_bool() == Some(true) { Thinking::On } else { Thinking::Off }
        });
        let ids = renderer.render(&messages, generation).ids;
        let expected: Vec<u32> = output["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        if case["diverges"].as_bool() == Some(true) {
            // transformers turns the user's special spellings into special tokens; kormo does not.
            let count = |ids: &[u32], id: u32| ids.iter().filter(|&&t| t == id).count();
            assert_ne!(ids, expected, "{name}");
            assert_eq!(count(&ids, specials.eot), 1, "{name}: only the real turn end");
            assert!(count(&expected, specials.eot) > 1, "{name}: transformers forged a turn end");
            assert_eq!(tok.decode(&ids, false).unwrap(), output["text"].as_str().unwrap(), "{name}: same text, other ids");
        } else {
            assert_eq!(ids, expected, "{name}: {:?}", output["text"]);
        }
    }
}
