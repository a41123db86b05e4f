//! Hugging Face `tokenizers` interchange: `tokenizer.json` (the full tokenizer) and
//! `tokenizer_config.json` (what `transformers` reads: special-token roles, chat template).
//!
//! Written layout, as Qwen2 does it: BPE model (vocab of byte-level strings, merges as
//! "left right" strings, which every `tokenizers` version reads), pre-tokenizer =
//! Sequence[Split(pattern regex, Isolated), ByteLevel(use_regex = false)], ByteLevel decoder,
//! special tokens as `added_tokens` (special, not normalized, no strip). Reading accepts any
//! byte-level BPE `tokenizer.json` built the same way with a pattern kormo implements
//! (Qwen2, Llama 3, GPT-2's, also as a lone ByteLevel(use_regex = true) pre-tokenizer),
//! with merges as strings or pairs, `ignore_merges` and an NFC normalizer; anything kormo
//! would encode differently (another normalizer, strip options, added tokens matched after
//! normalization, truncation or padding, another pre-tokenizer, post-processor or model) is refused with an error
//! naming the file and key rather than silently mis-encoded.
//!
//! [`Tokenizer::encode`] gives the ids `tokenizers` gives with `add_special_tokens=False`. The
//! special tokens a `TemplateProcessing` post-processor adds with `add_special_tokens=True`
//! (Llama 3.1's `<|begin_of_text|>`) are read into a [`Template`] ([`load_with_template`]);
//! kormo's data preparation adds its own BOS/EOS and does not use it.
//! `tests/published.rs` checks published Qwen3, Qwen2.5, Llama 3 and Llama 3.1 files
//! document by document against `tokenizers`.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::bpe::{Normalizer, SpecialToken, Tokenizer, TokenizerError};
use crate::bytelevel::{bytes_to_string, string_to_bytes};
use crate::pretokenize::Pattern;

/// KORMo's chat template in Jinja (crate::chat renders the same in Rust).
pub use crate::chat::CHAT_TEMPLATE;

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": use_regex})
}

/// The `tokenizer.json` document of `tok`.
pub fn tokenizer_json(tok: &Tokenizer) -> Value {
    let mut vocab = Map::new();
    for id in 0..tok.vocab_size() as u32 {
        if !tok.is_special(id) {
            vocab.insert(
                bytes_to_string(tok.token_bytes(id).expect("id in range")),
                json!(id),
            );
        }
    }
    let piece = |id: u32| bytes_to_string(tok.token_bytes(id).expect("merge ids are valid"));
    let merges: Vec<Value> = tok
        .merges()
        .iter()
        .map(|&(a, b)| json!(format!("{} {}", piece(a), piece(b))))
        .collect();
    let added: Vec<Value> = tok
        .specials()
        .iter()
        .map(|s| {
            json!({"id": s.id, "content": s.content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": !tok.is_kept_on_skip(s.id)})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": match tok.normalizer() {
            Normalizer::None => Value::Null,
            Normalizer::Nfc => json!({"type": "NFC"}),
        },
        "pre_tokenizer": match tok.pattern() {
            Pattern::Gpt2 => byte_level(true),
            pattern => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": pattern.regex()}, "behavior": "Isolated", "invert": false},
                byte_level(false),
            ]}),
        },
        "post_processor": byte_level(false),
        "decoder": byte_level(true),
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": tok.ignore_merges(), "vocab": vocab, "merges": merges,
        },
    })
}

/// The `tokenizer_config.json` document: `<|BOS|>`/`<|EOT|>` as bos/eos when present, the
/// chat template when `<|BOT|>` exists. Documents get their BOS/EOS from kormo-prep, so
/// `add_bos_token` is false (the post-processor adds nothing).
pub fn tokenizer_config_json(tok: &Tokenizer) -> Value {
    let mut decoder = Map::new();
    for s in tok.specials() {
        decoder.insert(
            s.id.to_string(),
            json!({"content": s.content, "lstrip": false, "normalized": false, "rstrip": false,
                   "single_word": false, "special": true}),
        );
    }
    let mut config = Map::new();
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    config.insert("add_bos_token".into(), json!(false));
    config.insert("add_eos_token".into(), json!(false));
    config.insert("clean_up_tokenization_spaces".into(), json!(false));
    config.insert("added_tokens_decoder".into(), Value::Object(decoder));
    if tok.special_id("<|BOS|>").is_some() {
        config.insert("bos_token".into(), json!("<|BOS|>"));
    }
    if tok.special_id("<|EOT|>").is_some() {
        config.insert("eos_token".into(), json!("<|EOT|>"));
        config.insert("pad_token".into(), json!("<|EOT|>"));
    }
    if tok.special_id("<|BOT|>").is_some() {
        config.insert("chat_template".into(), json!(CHAT_TEMPLATE));
    }
    Value::Object(config)
}

/// Writes `tokenizer.json` and `tokenizer_config.json` into `dir` (created if missing).
pub fn save(tok: &Tokenizer, dir: &Path) -> Result<(), TokenizerError> {
    let io = |e: std::io::Error, p: &Path| TokenizerError(format!("{}: {e}", p.display()));
    std::fs::create_dir_all(dir).map_err(|e| io(e, dir))?;
    for (name, doc) in [
        ("tokenizer.json", tokenizer_json(tok)),
        ("tokenizer_config.json", tokenizer_config_json(tok)),
    ] {
        let path = dir.join(name);
        let text = serde_json::to_string_pretty(&doc).expect("JSON values always serialize");
        std::fs::write(&path, text).map_err(|e| io(e, &path))?;
    }
    Ok(())
}

/// Special tokens a `tokenizer.json`'s post-processor puts around one sequence when
/// `tokenizers` encodes with `add_special_tokens=True` (a `TemplateProcessing`'s `single`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Template {
    pub prefix: Vec<u32>,
    pub suffix: Vec<u32>,
}

impl Template {
    /// `ids` with the template's special tokens around them.
    pub fn apply(&self, ids: &[u32]) -> Vec<u32> {
        [self.prefix.as_slice(), ids, self.suffix.as_slice()].concat()
    }
}

/// Reads a `tokenizer.json` file.
pub fn load(path: &Path) -> Result<Tokenizer, TokenizerError> {
    load_with_template(path).map(|(tok, _)| tok)
}

/// Reads a `tokenizer.json` file and its post-processor's template.
pub fn load_with_template(path: &Path) -> Result<(Tokenizer, Template), TokenizerError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TokenizerError(format!("{}: {e}", path.display())))?;
    parse_with_template(&text, &path.display().to_string())
}

/// Parses `tokenizer.json` text; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Tokenizer, TokenizerError> {
    parse_with_template(text, origin).map(|(tok, _)| tok)
}

/// Parses `tokenizer.json` text and its post-processor's template; `origin` names it in errors.
pub fn parse_with_template(text: &str, origin: &str) -> Result<(Tokenizer, Template), TokenizerError> {
    let fail = |key: &str, what: String| TokenizerError(format!("{origin}: {key}: {what}"));
    let doc: Value = serde_json::from_str(text)
        .map_err(|e| TokenizerError(format!("{origin}: not valid JSON: {e}")))?;

    // `tokenizers` truncates or pads every encoding when these are set; kormo never does.
    for key in ["truncation", "padding"] {
        if !doc[key].is_null() {
            return Err(fail(key, format!("{} is not supported (kormo encodes whole texts)", doc[key])));
        }
    }
    let normalizer = parse_normalizer(&doc["normalizer"]).ok_or_else(|| {
        fail(
            "normalizer",
            format!(
                "{} is not supported (kormo implements NFC only)",
                doc["normalizer"]
            ),
        )
    })?;
    let pattern =
        parse_pre_tokenizer(&doc["pre_tokenizer"]).map_err(|w| fail("pre_tokenizer", w))?;
    match doc["decoder"]["type"].as_str() {
        Some("ByteLevel") => {}
        _ => {
            return Err(fail(
                "decoder",
                format!("expected ByteLevel, found {}", doc["decoder"]),
            ))
        }
    }

    let model = &doc["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(fail(
            "model.type",
            format!("expected \"BPE\", found {}", model["type"]),
        ));
    }
    for key in ["continuing_subword_prefix", "end_of_word_suffix", "dropout"] {
        // An empty prefix or suffix means none, as `tokenizers` reads it.
        let unset = |v: &Value| v.is_null() || (key != "dropout" && v.as_str() == Some(""));
        if !model.get(key).is_none_or(unset) {
            return Err(fail(
                &format!("model.{key}"),
                format!("{} is not supported", model[key]),
            ));
        }
    }
    if model.get("byte_fallback").and_then(Value::as_bool) == Some(true) {
        return Err(fail(
            "model.byte_fallback",
            "true is not supported (byte-level BPE needs no fallback)".into(),
        ));
    }
    let ignore_merges = model
        .get("ignore_merges")
        .and_then(Value::as_bool)
        .unwrap_or(false);

    let Some(vocab_map) = model["vocab"].as_object() else {
        return Err(fail("model.vocab", "missing or not an object".into()));
    };
    let mut vocab: Vec<Vec<u8>> = Vec::new();
    let mut by_string = std::collections::HashMap::new();
    for (token, id) in vocab_map {
        let Some(id) = id.as_u64().filter(|&i| i < u32::MAX as u64) else {
            return Err(fail(
                "model.vocab",
                format!("token {token:?} has id {id}, not a u32"),
            ));
        };
        let Some(bytes) = string_to_bytes(token) else {
            return Err(fail(
                "model.vocab",
                format!("token {token:?} is not a byte-level string"),
            ));
        };
        if vocab.len() <= id as usize {
            vocab.resize(id as usize + 1, Vec::new());
        }
        vocab[id as usize] = bytes;
        by_string.insert(token.as_str(), id as u32);
    }

    let mut specials = Vec::new();
    let mut kept_on_skip = Vec::new();
    for (i, added) in doc["added_tokens"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        let key = format!("added_tokens[{i}]");
        let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) else {
            return Err(fail(&key, "needs \"id\" and \"content\"".into()));
        };
        for flag in ["lstrip", "rstrip", "single_word"] {
            if added.get(flag).and_then(Value::as_bool) == Some(true) {
                return Err(fail(
                    &key,
                    format!("{content:?}: {flag} = true is not supported"),
                ));
            }
        }
        // `tokenizers` finds a `normalized` added token in the normalized text (where, say, a
        // Kelvin sign has become K); kormo finds added tokens in the text as given.
        if normalizer != Normalizer::None
            && added.get("normalized").and_then(Value::as_bool) == Some(true)
        {
            return Err(fail(
                &key,
                format!("{content:?}: normalized = true with a normalizer is not supported (kormo matches added tokens before normalizing)"),
            ));
        }
        // GPT-2 style files list a special token in the model vocabulary too; it is matched
        // as a special token first, so the vocabulary entry is never reached.
        if let Some(slot) = vocab.get_mut(id as usize) {
            if !slot.is_empty() {
                if string_to_bytes(content).as_deref() == Some(slot.as_slice())
                    || content.as_bytes() == slot.as_slice()
                {
                    slot.clear();
                } else {
                    return Err(fail(
                        &key,
                        format!("{content:?} has id {id}, which the model vocabulary also uses"),
                    ));
                }
            }
        }
        if added.get("special").and_then(Value::as_bool) == Some(false) {
            kept_on_skip.push(id as u32);
        }
        specials.push(SpecialToken {
            content: content.to_owned(),
            id: id as u32,
        });
    }

    let Some(merge_list) = model["merges"].as_array() else {
        return Err(fail("model.merges", "missing or not an array".into()));
    };
    let mut merges = Vec::with_capacity(merge_list.len());
    for (i, m) in merge_list.iter().enumerate() {
        let (left, right) = match m {
            Value::String(s) => match s.split_once(' ') {
                Some(p) => p,
                None => {
                    return Err(fail(
                        "model.merges",
                        format!("#{i} {s:?} is not \"left right\""),
                    ))
                }
            },
            Value::Array(a) if a.len() == 2 && a[0].is_string() && a[1].is_string() => (
                a[0].as_str().unwrap_or_default(),
                a[1].as_str().unwrap_or_default(),
            ),
            other => {
                return Err(fail(
                    "model.merges",
                    format!("#{i} {other} is neither \"a b\" nor [\"a\", \"b\"]"),
                ))
            }
        };
        match (by_string.get(left), by_string.get(right)) {
            (Some(&a), Some(&b)) => merges.push((a, b)),
            _ => {
                return Err(fail(
                    "model.merges",
                    format!("#{i} uses a token not in the vocabulary: {left:?} {right:?}"),
                ))
            }
        }
    }
    let tok = Tokenizer::new(pattern, vocab, merges, specials, ignore_merges)
        .map_err(|e| TokenizerError(format!("{origin}: {e}")))?;
    let template = parse_post_processor(&doc["post_processor"], &tok)
        .map_err(|w| fail("post_processor", w))?;
    Ok((tok.with_normalizer(normalizer).with_kept_on_skip(&kept_on_skip), template))
}

/// null or ByteLevel (which only trims offsets) add nothing; a TemplateProcessing whose
/// `single` template is special tokens around the sequence gives them; a Sequence of these.
fn parse_post_processor(p: &Value, tok: &Tokenizer) -> Result<Template, String> {
    match p["type"].as_str() {
        _ if p.is_null() => Ok(Template::default()),
        Some("ByteLevel") => Ok(Template::default()),
        Some("Sequence") => {
            let mut template = Template::default();
            for step in p["processors"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                let next = parse_post_processor(step, tok)?;
                if next != Template::default() && template != Template::default() {
                    return Err(format!("more than one TemplateProcessing in {p}"));
                }
                if next != Template::default() {
                    template = next;
                }
            }
            Ok(template)
        }
        Some("TemplateProcessing") => {
            let special_ids = |name: &str| -> Result<Vec<u32>, String> {
                let ids = p["special_tokens"][name]["ids"]
                    .as_array()
                    .ok_or(format!("TemplateProcessing uses {name:?}, which its special_tokens lack"))?;
                ids.iter()
                    .map(|id| {
                        id.as_u64()
                            .filter(|&i| (i as usize) < tok.vocab_size())
                            .map(|i| i as u32)
                            .ok_or(format!("special token {name:?} has id {id}, not a token of the vocabulary"))
                    })
                    .collect()
            };
            let mut template = Template::default();
            let mut seen_sequence = false;
            for piece in p["single"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                if let Some(special) = piece.get("SpecialToken") {
                    let name = special["id"].as_str().ok_or(format!("TemplateProcessing piece {piece} has no id"))?;
                    let ids = special_ids(name)?;
                    if seen_sequence { template.suffix.extend(ids) } else { template.prefix.extend(ids) }
                } else if piece["Sequence"]["id"].as_str() == Some("A") && !seen_sequence {
                    seen_sequence = true;
                } else {
                    return Err(format!("TemplateProcessing single piece {piece} is not supported (special tokens around sequence A)"));
                }
            }
            if !seen_sequence {
                return Err(format!("TemplateProcessing single template {} has no sequence A", p["single"]));
            }
            Ok(template)
        }
        _ => Err(format!("{p} is not supported (null, ByteLevel or TemplateProcessing)")),
    }
}

/// null, NFC, or a Sequence holding at most NFC.
fn parse_normalizer(n: &Value) -> Option<Normalizer> {
    match n["type"].as_str() {
        _ if n.is_null() => Some(Normalizer::None),
        Some("NFC") => Some(Normalizer::Nfc),
        Some("Sequence") => match n["normalizers"].as_array()?.as_slice() {
            [] => Some(Normalizer::None),
            [one] => parse_normalizer(one),
            _ => None,
        },
        _ => None,
    }
}

fn parse_pre_tokenizer(p: &Value) -> Result<Pattern, String> {
    // GPT-2 style: a lone ByteLevel that splits with GPT-2's pattern itself.
    if p["type"].as_str() == Some("ByteLevel") && p["use_regex"].as_bool() != Some(false) {
        if p["add_prefix_space"].as_bool() == Some(true) {
            return Err(format!(
                "ByteLevel add_prefix_space = true is not supported, found {p}"
            ));
        }
        return Ok(Pattern::Gpt2);
    }
    let steps = match p["type"].as_str() {
        Some("Sequence") => p["pretokenizers"].as_array().cloned().unwrap_or_default(),
        _ => vec![p.clone()],
    };
    let [split, byte_level] = steps.as_slice() else {
        return Err(format!("expected Sequence[Split, ByteLevel], found {p}"));
    };
    if split["type"].as_str() != Some("Split")
        || split["behavior"].as_str() != Some("Isolated")
        || split["invert"].as_bool() == Some(true)
    {
        return Err(format!(
            "expected an Isolated, non-inverted Split first, found {split}"
        ));
    }
    let regex = split["pattern"]["Regex"]
        .as_str()
        .ok_or_else(|| format!("Split needs a Regex pattern, found {split}"))?;
    let pattern = Pattern::from_regex(regex).ok_or_else(|| {
        format!("pattern {regex:?} is not one kormo implements (Qwen2, Llama 3, GPT-2)")
    })?;
    if byte_level["type"].as_str() != Some("ByteLevel")
        || byte_level["use_regex"].as_bool() != Some(false)
        || byte_level["add_prefix_space"].as_bool() == Some(true)
    {
        return Err(format!("expected ByteLevel(use_regex = false, add_prefix_space = false) second, found {byte_level}"));
    }
    Ok(pattern)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::{train, TrainConfig, WordCounts};

    fn small_tokenizer() -> Tokenizer {
        let mut c = WordCounts::default();
        let text = "Debian is a free operating system. 데비안은 자유 운영체제입니다.\n\n  Don't panic: it's 2024!";
        for _ in 0..20 {
            c.add_text(text, Pattern::Qwen2, &[], usize::MAX);
        }
        train(&c.counts, &TrainConfig::kormo(256 + 50 + 5)).unwrap()
    }

    #[test]
    fn template_processing_gives_the_specials_around_the_sequence() {
        let tok = small_tokenizer();
        let bos = tok.special_id("<|BOS|>").unwrap();
        let eot = tok.special_id("<|EOT|>").unwrap();
        let mut doc = tokenizer_json(&tok);
        let special = |name: &str, id: u32| json!({"id": name, "ids": [id], "tokens": [name]});
        doc["post_processor"] = json!({"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|BOS|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                        {"SpecialToken": {"id": "<|EOT|>", "type_id": 0}}],
             "pair": [],
             "special_tokens": {"<|BOS|>": special("<|BOS|>", bos), "<|EOT|>": special("<|EOT|>", eot)}},
        ]});
        let (_, template) = parse_with_template(&doc.to_string(), "x.json").unwrap();
        assert_eq!(template, Template { prefix: vec![bos], suffix: vec![eot] });
        assert_eq!(template.apply(&[7, 8]), vec![bos, 7, 8, eot]);
        let (_, plain) = parse_with_template(&tokenizer_json(&tok).to_string(), "x.json").unwrap();
        assert_eq!(plain, Template::default());
        doc["post_processor"]["processors"][1]["special_tokens"]["<|EOT|>"]["ids"] = json!([1_000_000]);
        let e = parse(&doc.to_string(), "x.json").unwrap_err();
        assert!(e.0.starts_with("x.json: post_processor: ") && e.0.contains("1000000"), "{e}");
    }

    #[test]
    fn non_special_added_tokens_survive_decode_skipping_specials_and_a_round_trip() {
        let tok = small_tokenizer();
        let think = tok.special_id("<think>").unwrap();
        let eot = tok.special_id("<|EOT|>").unwrap();
        let mut doc = tokenizer_json(&tok);
        let index = doc["added_tokens"].as_array().unwrap().iter().position(|a| a["id"] == think).unwrap();
        doc["added_tokens"][index]["special"] = json!(false);
        let loaded = parse(&doc.to_string(), "x.json").unwrap();
        assert!(loaded.is_kept_on_skip(think) && !loaded.is_kept_on_skip(eot));
        let ids = loaded.encode("<think>Debian<|EOT|>");
        assert_eq!(ids[0], think, "still matched as an added token");
        assert_eq!(loaded.decode(&ids, true).unwrap(), "<think>Debian");
        assert_eq!(loaded.decode(&ids, false).unwrap(), "<think>Debian<|EOT|>");
        let again = parse(&tokenizer_json(&loaded).to_string(), "y.json").unwrap();
        assert!(again.is_kept_on_skip(think) && !again.is_kept_on_skip(eot));
        assert_eq!(again.fingerprint(), tok.fingerprint(), "decoding flags leave the encoding's fingerprint alone");
    }

    #[test]
    fn json_round_trip_preserves_encoding_and_fingerprint() {
        let tok = small_tokenizer();
        let text = serde_json::to_string(&tokenizer_json(&tok)).unwrap();
        let back = parse(&text, "memory").unwrap();
        assert_eq!(back.fingerprint(), tok.fingerprint());
        let sample = "<|BOS|>Debian 데비안 it's free<|EOT|>";
        assert_eq!(back.encode(sample), tok.encode(sample));
        let config = tokenizer_config_json(&tok);
        assert_eq!(config["bos_token"], "<|BOS|>");
        assert_eq!(
            config["added_tokens_decoder"][tok.special_id("<|EOT|>").unwrap().to_string()]
                ["content"],
            "<|EOT|>"
        );
    }

    #[test]
    fn reads_pair_merges_and_rejects_what_it_cannot_encode_faithfully() {
        let tok = small_tokenizer();
        let mut doc = tokenizer_json(&tok);
        let pairs: Vec<Value> = doc["model"]["merges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let (a, b) = m.as_str().unwrap().split_once(' ').unwrap();
                json!([a, b])
            })
            .collect();
        doc["model"]["merges"] = Value::Array(pairs);
        assert_eq!(
            parse(&doc.to_string(), "pairs").unwrap().fingerprint(),
            tok.fingerprint()
        );

        let mut empty = doc.clone();
        empty["model"]["continuing_subword_prefix"] = json!("");
        empty["model"]["end_of_word_suffix"] = json!("");
        let read = parse(&empty.to_string(), "empty.json").unwrap();
        assert_eq!(read.fingerprint(), tok.fingerprint());
        empty["model"]["continuing_subword_prefix"] = json!("##");
        let e = parse(&empty.to_string(), "empty.json").unwrap_err();
        assert!(e.0.contains("model.continuing_subword_prefix"), "{e}");

        let mut nfc = doc.clone();
        nfc["normalizer"] = json!({"type": "Sequence", "normalizers": [{"type": "NFC"}]});
        let with_nfc = parse(&nfc.to_string(), "x.json").unwrap();
        assert_eq!(with_nfc.normalizer(), Normalizer::Nfc);
        assert_eq!(
            with_nfc.encode("데비안"),
            with_nfc.encode("\u{1103}\u{1166}\u{1107}\u{1175}\u{110b}\u{1161}\u{11ab}")
        );
        let mut nfkc = doc.clone();
        nfkc["normalizer"] = json!({"type": "NFKC"});
        let e = parse(&nfkc.to_string(), "x.json").unwrap_err();
        assert!(e.0.starts_with("x.json: normalizer:"), "{e}");
        let mut other = doc.clone();
        other["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = json!("\\w+");
        assert!(parse(&other.to_string(), "x.json")
            .unwrap_err()
            .0
            .contains("pre_tokenizer"));
        let mut strip = doc.clone();
        strip["added_tokens"][0]["lstrip"] = json!(true);
        assert!(parse(&strip.to_string(), "x.json")
            .unwrap_err()
            .0
            .contains("lstrip"));
        let mut normalized = doc.clone();
        normalized["normalizer"] = json!({"type": "NFC"});
        normalized["added_tokens"][0]["normalized"] = json!(true);
        let e = parse(&normalized.to_string(), "x.json").unwrap_err();
        assert!(e.0.starts_with("x.json: added_tokens[0]: ") && e.0.contains("normalized"), "{e}");
        for key in ["truncation", "padding"] {
            let mut cut = doc.clone();
            cut[key] = json!({"max_length": 512});
            let e = parse(&cut.to_string(), "x.json").unwrap_err();
            assert!(e.0.starts_with(&format!("x.json: {key}: ")), "{e}");
        }
        let mut roberta = doc.clone();
        roberta["post_processor"] = json!({"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0]});
        let e = parse(&roberta.to_string(), "x.json").unwrap_err();
        assert!(e.0.starts_with("x.json: post_processor: "), "{e}");
        assert!(parse("{", "bad.json")
            .unwrap_err()
            .0
            .starts_with("bad.json: not valid JSON"));
    }
}
