//! The built-in synthetic corpus of the tiny recipe, written as real token shards.
//!
//! Four generators, one per training phase, each deterministic from a seed and small enough to
//! generate in well under a second. The text is built from small tables so that a model of a
//! few hundred thousand parameters can learn it in minutes: the loss falling is the point.
//! * `bilingual_prose`: an English paragraph followed by its Korean rendering, sentence by
//!   sentence (web-like pretraining text; the Korean half is predictable from the English one).
//! * `long_context`: long filler documents with one fact ("The secret number of Minji is 4821.")
//!   at a random place and a question about it at the end, so the answer needs long-range attention.
//! * `reasoning`: arithmetic problems solved step by step inside `<think>...</think>`.
//! * `chat`: conversations in KORMo's chat template (kormo_tokenizer::chat, the renderer of
//!   `prepare`'s chat sources and `generate --chat`) whose assistant output (reasoning, answers,
//!   `<|EOT|>`) is the loss-mask spans; reasoning questions carry a filled think block, factual
//!   ones an empty one (KORMo's hybrid thinking format).
//!
//! The text is encoded with the run's [`Vocabulary`]: piece by piece (each run of plain text
//! encoded on its own, special tokens inserted by id), so chat loss-mask spans fall exactly on
//! token boundaries whatever the tokenizer. With the byte vocabulary the prose, long-context and
//! reasoning corpora are byte for byte the ones the golden losses were recorded on.
//!
//! Every document also gets a language code for cross-lingual document attention (`[attention]
//! mask = "xlda"`): the corpora mix both languages inside each document, so no document is
//! naturally Korean or English; instead each is labelled Korean or other by a coin drawn from
//! its own stream seeded from the spec's seed ([`language_seed`]), so runs of same-language and
//! alternating neighbours both occur in a packed row, and the tokens stay exactly as before.
//!
//! Output: `dir/shard-00000.kts` + `dir/manifest.json` + `dir/synthetic-v3.json` (what was generated,
//! so a changed request regenerates; a changed vocabulary shows in the manifest's tokenizer
//! fingerprint and regenerates too). Generation goes to a temp folder renamed into place.

use crate::vocab::{byte_tokenizer, SpecialIds, TextEncoder, Vocabulary};
use kormo_tokenizer::chat::{spans, ChatRenderer, Message, ThinkLoss, ASSISTANT};
use crate::DataError;
use kormo_shards::{Manifest, ShardMeta, ShardWriter};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Which synthetic corpus to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyntheticKind {
    BilingualProse,
    LongContext,
    Reasoning,
    Chat,
}

/// A generation request; stored next to the shards to detect a stale cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticSpec {
    pub kind: SyntheticKind,
    pub documents: u64,
    pub seed: u64,
}

/// The generator's version is in the name: a corpus an older generator wrote regenerates.
/// v3: the shards record each document's language.
const SPEC_FILE: &str = "synthetic-v3.json";
pub const MANIFEST_FILE: &str = "manifest.json";

/// One generated document: tokens of the vocabulary, optional trained spans and its language
/// label (kormo_shards::format::LANGUAGE_KOREAN or LANGUAGE_OTHER, see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticDocument {
    pub tokens: Vec<u32>,
    pub spans: Vec<(u32, u32)>,
    pub language: u8,
}

/// Seed of the language labels' coin stream, apart from the text's so the text is unchanged.
pub fn language_seed(spec: &SyntheticSpec) -> u64 {
    spec.seed ^ 0x4c41_4e47_5541_4745 // "LANGUAGE"
}

/// Makes sure `dir` holds the corpus `spec` describes, encoded with `vocab`; returns true when
/// it had to (re)generate.
pub fn ensure(dir: &Path, spec: &SyntheticSpec, vocab: &Vocabulary) -> Result<bool, DataError> {
    let current = std::fs::read_to_string(dir.join(SPEC_FILE))
        .ok()
        .and_then(|text| serde_json::from_str::<SyntheticSpec>(&text).ok());
    let same_vocab = Manifest::load(dir.join(MANIFEST_FILE)).is_ok_and(|m| {
        m.tokenizer_fingerprint == vocab.fingerprint() && m.vocab_size == vocab.size()
    });
    if current.as_ref() == Some(spec) && same_vocab {
        return Ok(false);
    }
    let io = |path: &Path, e: std::io::Error| DataError(format!("{}: {e}", path.display()));
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    let temp = parent.join(format!(
        ".tmp-{}-{}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("data"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&temp);
    std::fs::create_dir_all(&temp).map_err(|e| io(&temp, e))?;
    let meta = ShardMeta {
        vocab_size: vocab.size(),
        tokenizer_fingerprint: vocab.fingerprint().into(),
    };
    let mut writer = ShardWriter::create(temp.join("shard-00000.kts"), meta.clone())?;
    for doc in generate(spec, vocab) {
        writer.append_document_with_language(
            &doc.tokens,
            (!doc.spans.is_empty()).then_some(&doc.spans[..]),
            doc.language,
        )?;
    }
    let summary = writer.finish()?;
    let mut manifest = Manifest::new(meta);
    manifest.push("shard-00000.kts", &summary)?;
    manifest.save(temp.join(MANIFEST_FILE))?;
    let spec_path = temp.join(SPEC_FILE);
    std::fs::write(
        &spec_path,
        serde_json::to_string_pretty(spec).expect("spec serialises"),
    )
    .map_err(|e| io(&spec_path, e))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    std::fs::rename(&temp, dir).map_err(|e| io(dir, e))?;
    Ok(true)
}

/// All documents of `spec`, in order, encoded with `vocab`.
pub fn generate(spec: &SyntheticSpec, vocab: &Vocabulary) -> Vec<SyntheticDocument> {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let mut enc = Enc {
        text: vocab.encoder(),
        ids: *vocab.ids(),
    };
    let bytes = byte_tokenizer();
    let mut chat = ChatRenderer::new(vocab.tokenizer().unwrap_or(&bytes))
        .expect("a vocabulary has the chat special tokens");
    let mut coin = ChaCha8Rng::seed_from_u64(language_seed(spec));
    (0..spec.documents)
        .map(|_| {
            let mut doc = match spec.kind {
                SyntheticKind::BilingualProse => {
                    plain(&mut enc, bilingual_paragraphs(&mut rng, 3..6))
                }
                SyntheticKind::LongContext => plain(&mut enc, long_context_document(&mut rng)),
                SyntheticKind::Reasoning => reasoning_document(&mut rng, &mut enc),
                SyntheticKind::Chat => chat_document(&mut rng, &mut chat),
            };
            doc.language = u8::from(coin.random_bool(0.5));
            doc
        })
        .collect()
}

/// The vocabulary's text encoder and special ids, as the generators use them.
struct Enc<'v> {
    text: TextEncoder<'v>,
    ids: SpecialIds,
}

impl Enc<'_> {
    fn encode(&mut self, text: &str) -> Vec<u32> {
        self.text.encode(text)
    }
}

fn plain(enc: &mut Enc, text: String) -> SyntheticDocument {
    SyntheticDocument {
        tokens: enc.encode(&text),
        spans: Vec::new(),
        language: 0,
    }
}

fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

// Parallel English/Korean tables: index i of each pair means the same thing.
const SUBJECTS: [(&str, &str); 6] = [
    ("The farmer", "농부는"),
    ("My sister", "내 동생은"),
    ("The old teacher", "나이 든 선생님은"),
    ("A small robot", "작은 로봇은"),
    ("The baker", "빵집 주인은"),
    ("Our neighbor", "우리 이웃은"),
];
const OBJECTS: [(&str, &str); 6] = [
    ("an apple", "사과를"),
    ("a book", "책을"),
    ("a letter", "편지를"),
    ("some water", "물을"),
    ("a song", "노래를"),
    ("a map", "지도를"),
];
const VERBS: [(&str, &str); 5] = [
    ("found", "찾았다"),
    ("carried", "옮겼다"),
    ("bought", "샀다"),
    ("shared", "나누었다"),
    ("kept", "간직했다"),
];
const PLACES: [(&str, &str); 6] = [
    ("at the market", "시장에서"),
    ("at school", "학교에서"),
    ("by the river", "강가에서"),
    ("in the library", "도서관에서"),
    ("in the park", "공원에서"),
    ("at home", "집에서"),
];
const TIMES: [(&str, &str); 4] = [
    ("in the morning", "아침에"),
    ("yesterday", "어제"),
    ("at night", "밤에"),
    ("on Sunday", "일요일에"),
];

/// The parts of a synthetic sentence (English, Korean), in English word order; a sentence
/// picks one entry of each.
const PARTS: [&[(&str, &str)]; 5] = [&SUBJECTS, &VERBS, &OBJECTS, &PLACES, &TIMES];
/// Korean word order as indices into [`PARTS`]: subject, time, place, object, verb.
const KOREAN_ORDER: [usize; 5] = [0, 4, 3, 2, 1];

/// `sentences` random sentences as an English paragraph, a blank line, and the Korean paragraph.
fn bilingual_paragraphs(rng: &mut ChaCha8Rng, sentences: std::ops::Range<usize>) -> String {
    let count = rng.random_range(sentences);
    let picks: Vec<[usize; 5]> = (0..count)
        .map(|_| PARTS.map(|part| rng.random_range(0..part.len())))
        .collect();
    let paragraph = |order: [usize; 5], word: fn((&'static str, &'static str)) -> &'static str| {
        let sentences: Vec<String> = picks
            .iter()
            .map(|pick| {
                let words = order.map(|part| word(PARTS[part][pick[part]]));
                format!("{}.", words.join(" "))
            })
            .collect();
        sentences.join(" ")
    };
    let english = paragraph([0, 1, 2, 3, 4], |(en, _)| en);
    let korean = paragraph(KOREAN_ORDER, |(_, ko)| ko);
    format!("{english}\n\n{korean}")
}

const NAMES: [&str; 8] = [
    "Minji", "Jisoo", "Alex", "Hana", "Taeyang", "Sam", "Yuna", "Noah",
];

fn long_context_document(rng: &mut ChaCha8Rng) -> String {
    let name = *pick(rng, &NAMES);
    let number = rng.random_range(1000..10000);
    let fact = format!("The secret number of {name} is {number}.");
    let filler: Vec<String> = (0..rng.random_range(3..7))
        .map(|_| bilingual_paragraphs(rng, 2..4))
        .collect();
    let at = rng.random_range(0..=filler.len());
    let mut parts = filler;
    parts.insert(at, fact);
    parts.push(format!(
        "Question: What is the secret number of {name}? Answer: {number}."
    ));
    parts.join("\n\n")
}

/// One arithmetic problem: its statement, the think-trace steps, and the result.
fn arithmetic(rng: &mut ChaCha8Rng) -> (String, Vec<String>, i64) {
    let a = rng.random_range(2..50i64);
    let b = rng.random_range(2..10i64);
    let c = rng.random_range(2..10i64);
    let bc = b * c;
    if rng.random_bool(0.5) {
        let r = a + bc;
        (
            format!("{a} + {b} * {c}"),
            vec![format!("{b} * {c} = {bc}."), format!("{a} + {bc} = {r}.")],
            r,
        )
    } else {
        let r = bc - a;
        (
            format!("{b} * {c} - {a}"),
            vec![format!("{b} * {c} = {bc}."), format!("{bc} - {a} = {r}.")],
            r,
        )
    }
}

fn think_block(steps: &[String], enc: &mut Enc) -> Vec<u32> {
    let mut tokens = vec![enc.ids.think];
    for (i, step) in steps.iter().enumerate() {
        tokens.extend(enc.encode(&format!("\nStep {}: {step}", i + 1)));
    }
    tokens.extend(enc.encode("\n"));
    tokens.push(enc.ids.think_end);
    tokens
}

fn reasoning_document(rng: &mut ChaCha8Rng, enc: &mut Enc) -> SyntheticDocument {
    let (problem, steps, result) = arithmetic(rng);
    let korean = rng.random_bool(0.5);
    let mut tokens = enc.encode(&if korean {
        format!("문제: {problem} 를 계산하시오.\n")
    } else {
        format!("Problem: compute {problem}.\n")
    });
    tokens.extend(think_block(&steps, enc));
    tokens.extend(enc.encode(&if korean {
        format!("\n답: {result}")
    } else {
        format!("\nAnswer: {result}")
    }));
    SyntheticDocument {
        tokens,
        spans: Vec::new(),
        language: 0,
    }
}

const COLORS: [(&str, &str, &str, &str); 5] = [
    ("the sky", "blue", "하늘", "파란색"),
    ("grass", "green", "잔디", "초록색"),
    ("snow", "white", "눈", "흰색"),
    ("a banana", "yellow", "바나나", "노란색"),
    ("coal", "black", "석탄", "검은색"),
];

/// A question and the assistant's (reasoning, answer): reasoning for arithmetic, none for colors.
fn chat_turn(rng: &mut ChaCha8Rng) -> (String, String, String) {
    if rng.random_bool(0.5) {
        let (problem, steps, result) = arithmetic(rng);
        let reasoning: String = steps
            .iter()
            .enumerate()
            .map(|(i, step)| format!("\nStep {}: {step}", i + 1))
            .chain(std::iter::once("\n".to_string()))
            .collect();
        (format!("What is {problem}?"), reasoning, format!("\nThe answer is {result}."))
    } else {
        let (thing, color, thing_ko, color_ko) = *pick(rng, &COLORS);
        if rng.random_bool(0.5) {
            (format!("{thing_ko}은(는) 무슨 색인가요?"), String::new(), format!("\n{thing_ko}은(는) {color_ko}입니다."))
        } else {
            (format!("What color is {thing}?"), String::new(), format!("\nThe color of {thing} is {color}."))
        }
    }
}

/// One or two exchanges rendered with the chat template (kormo_tokenizer::chat, as `prepare`
/// renders chat sources): the document is the rendering without its `<|BOS|>` and final
/// `<|EOT|>` (the packer adds both), its spans the assistant's reasoning, answers and `<|EOT|>`s.
fn chat_document(rng: &mut ChaCha8Rng, chat: &mut ChatRenderer) -> SyntheticDocument {
    let mut messages = Vec::new();
    for _ in 0..rng.random_range(1..3) {
        let (question, reasoning, answer) = chat_turn(rng);
        messages.push(Message::new("user", &question));
        messages.push(Message { reasoning: Some(reasoning), ..Message::new(ASSISTANT, &answer) });
    }
    let rendered = chat.render(&messages, None);
    let inner = 1..rendered.ids.len() - 1;
    SyntheticDocument {
        tokens: rendered.ids[inner.clone()].to_vec(),
        spans: spans(&rendered.trained(ThinkLoss::Train)[inner]),
        language: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::ByteVocab;

    fn bytes() -> Vocabulary {
        Vocabulary::bytes()
    }

    fn spec(kind: SyntheticKind) -> SyntheticSpec {
        SyntheticSpec {
            kind,
            documents: 20,
            seed: 5,
        }
    }

    #[test]
    fn generation_is_deterministic_and_seeded() {
        for kind in [
            SyntheticKind::BilingualProse,
            SyntheticKind::LongContext,
            SyntheticKind::Reasoning,
            SyntheticKind::Chat,
        ] {
            assert_eq!(
                generate(&spec(kind), &bytes()),
                generate(&spec(kind), &bytes())
            );
            assert_ne!(
                generate(&spec(kind), &bytes()),
                generate(
                    &SyntheticSpec {
                        seed: 6,
                        ..spec(kind)
                    },
                    &bytes()
                )
            );
            for doc in generate(&spec(kind), &bytes()) {
                assert!(doc.tokens.iter().all(|&t| t < ByteVocab::SIZE));
                assert!(!doc.tokens.is_empty());
            }
        }
    }

    #[test]
    fn prose_is_bilingual() {
        let text =
            ByteVocab::decode(&generate(&spec(SyntheticKind::BilingualProse), &bytes())[0].tokens);
        assert!(!text.is_ascii() && text.contains(". "), "{text}");
        let (english, korean) = text.split_once("\n\n").unwrap();
        assert!(english.is_ascii());
        assert!(korean.chars().any(|c| ('가'..='힣').contains(&c)));
    }

    #[test]
    fn long_context_asks_about_its_fact() {
        for doc in generate(&spec(SyntheticKind::LongContext), &bytes()) {
            let text = ByteVocab::decode(&doc.tokens);
            let question = text.rsplit("\n\n").next().unwrap();
            let name = question
                .split("secret number of ")
                .nth(1)
                .unwrap()
                .split('?')
                .next()
                .unwrap();
            let answer = question
                .split("Answer: ")
                .nth(1)
                .unwrap()
                .trim_end_matches('.');
            assert!(
                text.contains(&format!("The secret number of {name} is {answer}.")),
                "{text}"
            );
            assert!(text.len() > 300);
        }
    }

    #[test]
    fn reasoning_traces_are_correct_arithmetic() {
        for doc in generate(&spec(SyntheticKind::Reasoning), &bytes()) {
            assert_eq!(
                doc.tokens
                    .iter()
                    .filter(|&&t| t == ByteVocab::THINK)
                    .count(),
                1
            );
            let text = ByteVocab::decode(&doc.tokens);
            for step in text.lines().filter(|l| l.starts_with("Step")) {
                let expr = step.split(": ").nth(1).unwrap().trim_end_matches('.');
                let (lhs, rhs) = expr.split_once(" = ").unwrap();
                let parts: Vec<&str> = lhs.split(' ').collect();
                let (x, y): (i64, i64) = (parts[0].parse().unwrap(), parts[2].parse().unwrap());
                let value = match parts[1] {
                    "+" => x + y,
                    "-" => x - y,
                    "*" => x * y,
                    op => panic!("{op}"),
                };
                assert_eq!(value.to_string(), rhs, "{text}");
            }
        }
    }

    #[test]
    fn chat_spans_cover_exactly_the_assistant_output() {
        for doc in generate(&spec(SyntheticKind::Chat), &bytes()) {
            let text = ByteVocab::decode(&doc.tokens);
            assert!(text.starts_with("<|BOT|>user\n") && !text.ends_with("<|EOT|>"), "{text}");
            assert!(!doc.spans.is_empty());
            for &(start, end) in &doc.spans {
                let before = ByteVocab::decode(&doc.tokens[..start as usize]);
                assert!(before.ends_with("<|BOT|>assistant\n<think>") || before.ends_with("<think></think>"), "{before}");
                let inside = ByteVocab::decode(&doc.tokens[start as usize..end as usize]);
                assert!(!inside.contains("user") && !inside.contains("<think>"), "{inside}");
                assert!(inside.starts_with('\n'), "reasoning or answer first: {inside}");
            }
            assert_eq!(
                doc.spans.last().unwrap().1 as usize,
                doc.tokens.len(),
                "final turn runs to the end"
            );
        }
    }

    #[test]
    fn ensure_writes_shards_and_caches() {
        let base = std::env::var_os("TEST_TMPDIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = base
            .join(format!("kormo-synth-{}", std::process::id()))
            .join("chat");
        let _ = std::fs::remove_dir_all(&dir);
        let spec = spec(SyntheticKind::Chat);
        assert!(ensure(&dir, &spec, &bytes()).unwrap());
        assert!(
            !ensure(&dir, &spec, &bytes()).unwrap(),
            "second call reuses the cache"
        );
        let manifest = Manifest::load(dir.join(MANIFEST_FILE)).unwrap();
        let shards = manifest.open_shards(&dir).unwrap();
        assert_eq!(shards[0].num_documents(), 20);
        let expected = generate(&spec, &bytes());
        let doc = shards[0].document(3).unwrap();
        assert_eq!(doc.tokens, &expected[3].tokens[..]);
        let spans: Vec<(u32, u32)> = doc
            .loss_mask_spans
            .iter()
            .map(|s| (s.start, s.end))
            .collect();
        assert_eq!(spans, expected[3].spans);
        let languages: Vec<u8> = expected.iter().map(|d| d.language).collect();
        assert_eq!(shards[0].languages(), Some(&languages[..]));
        assert!(languages.contains(&0) && languages.contains(&1), "{languages:?}");
        let changed = SyntheticSpec {
            documents: 21,
            ..spec
        };
        assert!(
            ensure(&dir, &changed, &bytes()).unwrap(),
            "changed spec regenerates"
        );
        std::fs::remove_file(dir.join(MANIFEST_FILE)).unwrap();
        assert!(
            ensure(&dir, &changed, &bytes()).unwrap(),
            "missing manifest regenerates"
        );
    }
}
