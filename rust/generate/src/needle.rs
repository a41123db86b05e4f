//! Needle-in-a-haystack evaluation in English and Korean.
//!
//! For each language, context length L (tokens) and depth d (percent), `trials` prompts are
//! built: `<|BOS|>` + filler sentences of that language up to about L tokens, with one fact —
//! the needle, "The secret number of {name} is {number}." / "{name}의 비밀 번호는
//! {number}입니다." — as its own paragraph at d% of the filler, then a question about it in the
//! same language ("Question: What is the secret number of {name}? Answer:"). The format is the
//! one the long-context synthetic data teaches (`kormo_data::synthetic`), so a base model is
//! asked in a form it has seen. The model answers greedily; a trial counts as found when the
//! answer contains the number. Names, numbers and filler order come from a seeded ChaCha8
//! stream, so a run is reproducible.
//!
//! Results: a JSON document (every cell), a Markdown table per language (rows: depth, columns:
//! length) and a PNG heat map per language side by side (KORMo reports 99.04% English and
//! 69.04% Korean for its 10.8B base model, Korean falling beyond ~13K tokens).

use kormo_plot::{Canvas, HeatMap};
use kormo_tokenizer::Tokenizer;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use crate::sampling::Strategy;
use crate::text::encode_plain;
use crate::{generate, Decoder, Limits, Sampler};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    English,
    Korean,
}

const ENGLISH_FILLER: [&str; 16] = [
    "The river widened as it approached the old stone bridge.",
    "Farmers in the valley plant barley early in the spring.",
    "A light rain fell over the harbor for most of the afternoon.",
    "The library keeps its oldest maps in a cool, dry room.",
    "Children walked to school along the row of tall poplars.",
    "The market opens at dawn and closes shortly after noon.",
    "Engineers inspected the railway line after the winter storms.",
    "Bread from the corner bakery is usually gone by nine.",
    "The museum added a new wing for modern ceramics last year.",
    "Fishing boats returned with the tide just before sunset.",
    "The mountain trail is steep but well marked with red paint.",
    "A small orchestra rehearsed in the town hall every Thursday.",
    "The lighthouse keeper wrote the weather in a thick notebook.",
    "Tea grows on the terraced hills south of the city.",
    "The old clock in the square gained a minute every week.",
    "Students gathered in the courtyard to discuss the exam.",
];

const KOREAN_FILLER: [&str; 16] = [
    "강물은 오래된 돌다리에 가까워질수록 넓어졌다.",
    "골짜기의 농부들은 이른 봄에 보리를 심는다.",
    "오후 내내 항구 위로 가는 비가 내렸다.",
    "도서관은 가장 오래된 지도를 서늘하고 건조한 방에 보관한다.",
    "아이들은 키 큰 미루나무 길을 따라 학교에 걸어갔다.",
    "시장은 새벽에 문을 열고 정오가 조금 지나면 닫는다.",
    "기술자들은 겨울 폭풍이 지난 뒤 철도를 점검했다.",
    "모퉁이 빵집의 빵은 보통 아홉 시면 다 팔린다.",
    "박물관은 작년에 현대 도자기를 위한 새 전시관을 열었다.",
    "고깃배들은 해가 지기 직전에 밀물을 타고 돌아왔다.",
    "산길은 가파르지만 빨간 페인트로 잘 표시되어 있다.",
    "작은 관현악단이 매주 목요일 시청에서 연습했다.",
    "등대지기는 두꺼운 공책에 날씨를 적었다.",
    "도시 남쪽의 계단식 언덕에서 차가 자란다.",
    "광장의 낡은 시계는 매주 일 분씩 빨라졌다.",
    "학생들은 시험에 대해 이야기하려고 안뜰에 모였다.",
];

const ENGLISH_NAMES: [&str; 8] = ["Minji", "Daniel", "Sora", "Olivia", "Jisoo", "Marcus", "Hana", "Peter"];
const KOREAN_NAMES: [&str; 8] = ["민지", "서준", "하은", "지수", "도윤", "수아", "현우", "예린"];

impl Language {
    /// By its code: `en` or `ko`.
    pub fn parse(code: &str) -> Option<Language> {
        match code {
            "en" => Some(Language::English),
            "ko" => Some(Language::Korean),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Language::English => "en",
            Language::Korean => "ko",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Language::English => "English",
            Language::Korean => "Korean",
        }
    }

    fn filler(self) -> &'static [&'static str] {
        match self {
            Language::English => &ENGLISH_FILLER,
            Language::Korean => &KOREAN_FILLER,
        }
    }

    fn names(self) -> &'static [&'static str] {
        match self {
            Language::English => &ENGLISH_NAMES,
            Language::Korean => &KOREAN_NAMES,
        }
    }

    fn needle(self, name: &str, number: u32) -> String {
        match self {
            Language::English => format!("The secret number of {name} is {number}."),
            Language::Korean => format!("{name}의 비밀 번호는 {number}입니다."),
        }
    }

    fn question(self, name: &str) -> String {
        match self {
            Language::English => format!("Question: What is the secret number of {name}? Answer:"),
            Language::Korean => format!("질문: {name}의 비밀 번호는 무엇입니까? 답:"),
        }
    }
}

/// One test prompt and what a correct answer must contain.
#[derive(Debug, Clone, PartialEq)]
pub struct NeedlePrompt {
    pub ids: Vec<u32>,
    pub text: String,
    pub answer: String,
    /// Token offset of the needle paragraph inside `ids`.
    pub needle_at: usize,
}

/// Builds a prompt of at most `target` tokens (`<|BOS|>` included) with the needle at
/// `depth_percent` of the filler; None when `target` cannot hold the needle and question.
pub fn build_prompt(tok: &Tokenizer, bos: u32, language: Language, target: usize, depth_percent: u32, rng: &mut ChaCha8Rng) -> Option<NeedlePrompt> {
    let name = language.names()[rng.random_range(0..language.names().len())];
    let number: u32 = rng.random_range(1000..10000);
    let needle = language.needle(name, number);
    let question = language.question(name);
    let fixed = 1 + encode_plain(tok, &format!("{needle}\n\n")).len() + encode_plain(tok, &format!("\n\n{question}")).len();
    let budget = target.checked_sub(fixed)?;
    // Filler: shuffled passes over the sentences until the budget is used up.
    let mut sentences: Vec<&str> = Vec::new();
    let mut used = 0;
    'fill: loop {
        let mut pass: Vec<&str> = language.filler().to_vec();
        pass.shuffle(rng);
        for sentence in pass {
            let cost = encode_plain(tok, &format!("{sentence} ")).len();
            if used + cost > budget {
                break 'fill;
            }
            used += cost;
            sentences.push(sentence);
        }
    }
    let split = (sentences.len() * depth_percent.min(100) as usize + 50) / 100;
    let before = sentences[..split].join(" ");
    let after = sentences[split..].join(" ");
    let mut ids = vec![bos];
    let mut text = String::new();
    let mut push = |part: &str, ids: &mut Vec<u32>| {
        ids.extend(encode_plain(tok, part));
        text.push_str(part);
    };
    if !before.is_empty() {
        push(&format!("{before}\n\n"), &mut ids);
    }
    let needle_at = ids.len();
    push(&needle, &mut ids);
    if !after.is_empty() {
        push(&format!("\n\n{after}"), &mut ids);
    }
    push(&format!("\n\n{question}"), &mut ids);
    Some(NeedlePrompt { ids, text, answer: number.to_string(), needle_at })
}

/// Whether a generated answer contains the number (surrounding words and punctuation allowed,
/// but not a longer number that merely contains it).
pub fn is_found(generated: &str, answer: &str) -> bool {
    generated.match_indices(answer).any(|(at, _)| {
        let digit_before = generated[..at].chars().next_back().is_some_and(|c| c.is_ascii_digit());
        let digit_after = generated[at + answer.len()..].chars().next().is_some_and(|c| c.is_ascii_digit());
        !digit_before && !digit_after
    })
}

/// The grid to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct NeedleConfig {
    pub languages: Vec<Language>,
    /// Context lengths in tokens (prompt including BOS).
    pub lengths: Vec<usize>,
    pub depths: Vec<u32>,
    pub trials: usize,
    pub seed: u64,
    pub max_new_tokens: usize,
}

/// Result of one (language, length, depth) cell.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub language: Language,
    pub length: usize,
    pub depth: u32,
    pub trials: usize,
    pub found: usize,
    pub mean_prompt_tokens: f64,
    /// The last trial's answer, for the report.
    pub sample_answer: String,
}

impl Cell {
    pub fn accuracy(&self) -> f64 {
        self.found as f64 / self.trials.max(1) as f64
    }
}

/// Checks the grid's lengths against the context the model was trained for (`context`, where
/// known; `source` says where it comes from): a longer prompt measures nothing but positions
/// the model never saw, and costs time quadratic in its length. Returns a warning to print when
/// the context is unknown.
pub fn check_lengths(lengths: &[usize], context: Option<usize>, source: &str) -> Result<Option<String>, String> {
    let longest = lengths.iter().copied().max().unwrap_or(0);
    match context {
        Some(context) if longest > context => Err(format!(
            "--lengths {longest} is past the model's trained context of {context} tokens ({source}); use lengths up to {context}, or pass --max-context {longest} to run them anyway"
        )),
        Some(_) => Ok(None),
        None => Ok(Some(format!(
            "warning: {source} does not record the context it was trained for, so --lengths up to {longest} are not checked against it (pass --max-context N to check them)"
        ))),
    }
}

/// Runs the grid; `progress` sees each finished cell. Errors when a length is too short for
/// the needle and question.
pub fn evaluate(decoder: &mut Decoder, tok: &Tokenizer, bos: u32, eot: u32, cfg: &NeedleConfig, mut progress: impl FnMut(&Cell)) -> Result<Vec<Cell>, String> {
    let mut cells = Vec::new();
    for &language in &cfg.languages {
        for &length in &cfg.lengths {
            for &depth in &cfg.depths {
                // One stream per cell: adding a length or depth does not change other cells.
                let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
                rng.set_stream(((language as u64) << 48) | ((length as u64) << 8) | depth as u64);
                let mut found = 0;
                let mut tokens = 0;
                let mut sample_answer = String::new();
                for _ in 0..cfg.trials {
                    let prompt = build_prompt(tok, bos, language, length, depth, &mut rng)
                        .ok_or(format!("--lengths {length}: too short for the needle and the question"))?;
                    decoder.reset();
                    let mut sampler = Sampler::new(Strategy::Greedy, 0, tok.vocab_size());
                    let limits = Limits { max_new_tokens: cfg.max_new_tokens, stop_tokens: vec![eot], max_context: usize::MAX };
                    let generation = generate(decoder, &mut sampler, &prompt.ids, &limits, |_| {})?;
                    let mut bytes = Vec::new();
                    for &id in &generation.tokens {
                        bytes.extend_from_slice(tok.token_bytes(id).unwrap_or_default());
                    }
                    sample_answer = String::from_utf8_lossy(&bytes).into_owned();
                    found += is_found(&sample_answer, &prompt.answer) as usize;
                    tokens += prompt.ids.len();
                }
                let cell = Cell { language, length, depth, trials: cfg.trials, found, mean_prompt_tokens: tokens as f64 / cfg.trials.max(1) as f64, sample_answer };
                progress(&cell);
                cells.push(cell);
            }
        }
    }
    Ok(cells)
}

/// Accuracy over all cells of `language` (None if it was not evaluated).
pub fn overall(cells: &[Cell], language: Language) -> Option<f64> {
    let (found, trials) = cells.iter().filter(|c| c.language == language).fold((0, 0), |(f, t), c| (f + c.found, t + c.trials));
    (trials > 0).then(|| found as f64 / trials as f64)
}

pub fn to_json(cells: &[Cell], cfg: &NeedleConfig, model: &str) -> Value {
    let overall: serde_json::Map<String, Value> = cfg.languages.iter().filter_map(|&l| overall(cells, l).map(|a| (l.code().to_string(), json!(a)))).collect();
    json!({
        "model": model,
        "languages": cfg.languages.iter().map(|l| l.code()).collect::<Vec<_>>(),
        "lengths": cfg.lengths,
        "depths_percent": cfg.depths,
        "trials_per_cell": cfg.trials,
        "seed": cfg.seed,
        "overall_accuracy": overall,
        "cells": cells.iter().map(|c| json!({
            "language": c.language.code(),
            "length": c.length,
            "depth_percent": c.depth,
            "trials": c.trials,
            "found": c.found,
            "accuracy": c.accuracy(),
            "mean_prompt_tokens": c.mean_prompt_tokens,
            "sample_answer": c.sample_answer,
        })).collect::<Vec<_>>(),
    })
}

fn cell_at(cells: &[Cell], language: Language, length: usize, depth: u32) -> Option<&Cell> {
    cells.iter().find(|c| c.language == language && c.length == length && c.depth == depth)
}

/// One table per language: rows are depths, columns lengths, entries percent found.
pub fn to_markdown(cells: &[Cell], cfg: &NeedleConfig) -> String {
    let mut out = String::from("# Needle in a haystack\n");
    for &language in &cfg.languages {
        let accuracy = overall(cells, language).map(|a| format!("{:.2}%", a * 100.0)).unwrap_or_else(|| "-".into());
        out.push_str(&format!("\n## {} (overall {accuracy}, {} trials per cell)\n\n", language.name(), cfg.trials));
        out.push_str("| depth \\ length |");
        cfg.lengths.iter().for_each(|l| out.push_str(&format!(" {l} |")));
        out.push_str("\n|---|");
        cfg.lengths.iter().for_each(|_| out.push_str("---:|"));
        out.push('\n');
        for &depth in &cfg.depths {
            out.push_str(&format!("| {depth}% |"));
            for &length in &cfg.lengths {
                let value = cell_at(cells, language, length, depth).map(|c| format!("{:.0}%", c.accuracy() * 100.0)).unwrap_or_else(|| "-".into());
                out.push_str(&format!(" {value} |"));
            }
            out.push('\n');
        }
    }
    out
}

/// The heat maps of every language side by side.
pub fn heat_map(cells: &[Cell], cfg: &NeedleConfig) -> Canvas {
    let maps: Vec<HeatMap> = cfg
        .languages
        .iter()
        .map(|&language| HeatMap {
            title: format!("needle: {} ({})", language.name(), overall(cells, language).map(|a| format!("{:.1}%", a * 100.0)).unwrap_or_default()),
            x_label: "context length (tokens)".into(),
            y_label: "needle depth".into(),
            col_labels: cfg.lengths.iter().map(|l| l.to_string()).collect(),
            row_labels: cfg.depths.iter().map(|d| format!("{d}%")).collect(),
            cells: cfg.depths.iter().map(|&d| cfg.lengths.iter().map(|&l| cell_at(cells, language, l, d).map(Cell::accuracy)).collect()).collect(),
        })
        .collect();
    kormo_plot::heatmap::side_by_side(&maps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_matched_as_whole_numbers() {
        assert!(is_found(" 4821.", "4821"));
        assert!(is_found("답: 4821입니다", "4821"));
        assert!(!is_found(" 48210", "4821"));
        assert!(!is_found(" 14821", "4821"));
        assert!(!is_found(" 4812", "4821"));
        assert!(is_found("14821 or 4821", "4821"));
    }
}
