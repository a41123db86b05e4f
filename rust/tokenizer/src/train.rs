//! BPE training.
//!
//! 1. Counting: each source's text is split into pre-tokens (the same matcher as encoding,
//!    special tokens cut out first) and distinct pre-tokens are counted, on several threads
//!    (`count_documents`). Memory is bounded: a counter holding more than `max_words`
//!    distinct pre-tokens drops its rarest ones (reported), as SentencePiece does.
//! 2. Weighting: a source's share of the training mix is its weight, not its size: counts of
//!    source s are multiplied by (w_s / sum w) / (bytes_s / sum bytes), scaled so the smallest
//!    multiplier is 1 and rounded to integers (so 80/5/15 weights give an 80/5/15 mix
//!    whatever the sizes on disk).
//! 3. Merging: every distinct pre-token is a word of byte symbols with a count. Pair counts
//!    live in a hash map, the best pair comes from a max-heap of (count, pair) with lazy
//!    invalidation (a popped entry whose count is stale is re-pushed with the current one;
//!    counts of existing pairs only fall, so the heap top is never overtaken), and an index
//!    pair -> words lets each merge touch only the words containing the pair. Ties go to the
//!    smaller (left id, right id), so training is deterministic.
//!
//! The vocabulary is 256 byte tokens, then merged tokens in merge order, then special tokens.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{mpsc, Mutex};
use std::time::Instant;

use crate::bpe::{SpecialToken, Tokenizer, TokenizerError};
use crate::fxhash::FxHashMap;
use crate::pretokenize::{pre_tokens, Pattern};
use crate::progress;

/// KORMo's special tokens, in id order after the merged tokens.
pub const KORMO_SPECIALS: [&str; 5] = ["<|BOS|>", "<|EOT|>", "<|BOT|>", "<think>", "</think>"];

/// Counts of distinct pre-tokens of one source.
#[derive(Default, Debug, Clone)]
pub struct WordCounts {
    pub counts: FxHashMap<Box<str>, u64>,
    /// Bytes of text counted (the size used for weighting).
    pub bytes: u64,
    /// Distinct pre-tokens dropped to stay under the memory bound.
    pub pruned: u64,
}

impl WordCounts {
    /// Counts the pre-tokens of `text`, skipping special tokens in it.
    pub fn add_text(
        &mut self,
        text: &str,
        pattern: Pattern,
        specials: &[String],
        max_words: usize,
    ) {
        self.bytes += text.len() as u64;
        let mut rest = text;
        loop {
            let next = specials
                .iter()
                .filter_map(|s| rest.find(s.as_str()).map(|at| (at, s.len())))
                .min();
            let (segment, after) = match next {
                Some((at, len)) => (&rest[..at], Some(&rest[at + len..])),
                None => (rest, None),
            };
            for piece in pre_tokens(segment, pattern) {
                match self.counts.get_mut(piece) {
                    Some(c) => *c += 1,
                    None => {
                        self.counts.insert(piece.into(), 1);
                    }
                }
            }
            match after {
                Some(a) => rest = a,
                None => break,
            }
        }
        if self.counts.len() > max_words {
            self.prune(max_words / 2);
        }
    }

    /// Drops the rarest words until at most `keep` remain (all words of a count go together).
    fn prune(&mut self, keep: usize) {
        let mut counts: Vec<u64> = self.counts.values().copied().collect();
        let cut = counts.len().saturating_sub(keep);
        if cut == 0 {
            return;
        }
        let (_, &mut threshold, _) = counts.select_nth_unstable(cut - 1);
        let before = self.counts.len();
        self.counts.retain(|_, c| *c > threshold);
        self.pruned += (before - self.counts.len()) as u64;
    }

    fn merge_from(&mut self, other: WordCounts, max_words: usize) {
        self.bytes += other.bytes;
        self.pruned += other.pruned;
        for (w, c) in other.counts {
            *self.counts.entry(w).or_insert(0) += c;
        }
        if self.counts.len() > max_words {
            self.prune(max_words / 2);
        }
    }
}

/// Counts pre-tokens of a stream of documents on `threads` threads. Each document goes to
/// whichever worker is free; the sum does not depend on that unless pruning kicks in.
pub fn count_documents<I>(
    documents: I,
    pattern: Pattern,
    specials: &[String],
    threads: usize,
    max_words: usize,
) -> WordCounts
where
    I: Iterator<Item = String>,
{
    let threads = threads.max(1);
    // Documents travel in batches of about BATCH_BYTES so that small documents do not make
    // the channel and its lock the bottleneck.
    const BATCH_BYTES: usize = 1 << 18;
    let (sender, receiver) = mpsc::sync_channel::<Vec<String>>(threads * 2);
    let receiver = Mutex::new(receiver);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let receiver = &receiver;
                scope.spawn(move || {
                    let mut counts = WordCounts::default();
                    loop {
                        let batch = match receiver.lock().expect("counter lock poisoned").recv() {
                            Ok(b) => b,
                            Err(_) => break,
                        };
                        for doc in batch {
                            counts.add_text(&doc, pattern, specials, max_words);
                        }
                    }
                    counts
                })
            })
            .collect();
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        for doc in documents {
            batch_bytes += doc.len();
            batch.push(doc);
            if batch_bytes >= BATCH_BYTES {
                if sender.send(std::mem::take(&mut batch)).is_err() {
                    break;
                }
                batch_bytes = 0;
            }
        }
        if !batch.is_empty() {
            // A send error means a worker panicked; its join below reports it.
            let _ = sender.send(batch);
        }
        drop(sender);
        let mut total = WordCounts::default();
        for w in workers {
            total.merge_from(w.join().expect("counter thread panicked"), max_words);
        }
        total
    })
}

/// Weights per-source counts into one count table (see the module comment).
pub fn weighted_counts(
    sources: &[(f64, WordCounts)],
) -> Result<FxHashMap<Box<str>, u64>, TokenizerError> {
    let total_weight: f64 = sources.iter().map(|(w, _)| *w).sum();
    let total_bytes: f64 = sources.iter().map(|(_, c)| c.bytes as f64).sum();
    if sources.iter().any(|(w, _)| !(*w > 0.0 && w.is_finite())) {
        return Err(TokenizerError(
            "source weights must be positive numbers".into(),
        ));
    }
    let multipliers: Vec<f64> = sources
        .iter()
        .map(|(w, c)| {
            if c.bytes == 0 {
                0.0
            } else {
                (w / total_weight) / (c.bytes as f64 / total_bytes)
            }
        })
        .collect();
    let smallest = multipliers
        .iter()
        .copied()
        .filter(|&m| m > 0.0)
        .fold(f64::INFINITY, f64::min);
    let mut combined: FxHashMap<Box<str>, u64> = FxHashMap::default();
    for ((_, counts), m) in sources.iter().zip(&multipliers) {
        let scale = m / smallest;
        for (w, &c) in &counts.counts {
            *combined.entry(w.clone()).or_insert(0) += ((c as f64 * scale).round() as u64).max(1);
        }
    }
    Ok(combined)
}

/// Settings of the merge phase.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Total ids wanted: 256 bytes + merged tokens + special tokens.
    pub vocab_size: usize,
    /// Stop early when the best pair occurs fewer times than this (after weighting).
    pub min_frequency: u64,
    pub specials: Vec<String>,
    pub pattern: Pattern,
    /// Show a progress bar (merges, rate, ETA) on stderr when it is a terminal.
    pub progress: bool,
}

impl TrainConfig {
    pub fn kormo(vocab_size: usize) -> TrainConfig {
        TrainConfig {
            vocab_size,
            min_frequency: 2,
            specials: KORMO_SPECIALS.iter().map(|s| s.to_string()).collect(),
            pattern: Pattern::Qwen2,
            progress: false,
        }
    }
}

type Pair = (u32, u32);

/// Learns merges from pre-token counts and builds the tokenizer.
pub fn train(
    counts: &FxHashMap<Box<str>, u64>,
    config: &TrainConfig,
) -> Result<Tokenizer, TokenizerError> {
    let specials = config.specials.len();
    if config.vocab_size < 256 + specials {
        return Err(TokenizerError(format!(
            "vocab_size {} is below 256 byte tokens + {specials} special tokens",
            config.vocab_size
        )));
    }
    if counts.is_empty() {
        return Err(TokenizerError(
            "no text to train on: the pre-token counts are empty".into(),
        ));
    }
    let target_model_tokens = config.vocab_size - specials;
    let mut vocab: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    let mut token_ids: FxHashMap<Vec<u8>, u32> = vocab
        .iter()
        .enumerate()
        .map(|(i, b)| (b.clone(), i as u32))
        .collect();

    // Words sorted so that word indices (and thus everything after) are deterministic.
    let mut sorted: Vec<(&Box<str>, u64)> = counts
        .iter()
        .filter(|(w, _)| w.len() > 1)
        .map(|(w, &c)| (w, c))
        .collect();
    sorted.sort_unstable();
    let mut words: Vec<Vec<u32>> = sorted
        .iter()
        .map(|(w, _)| w.bytes().map(u32::from).collect())
        .collect();
    let word_counts: Vec<u64> = sorted.iter().map(|&(_, c)| c).collect();
    drop(sorted);

    let mut pair_counts: FxHashMap<Pair, u64> = FxHashMap::default();
    let mut pair_words: FxHashMap<Pair, Vec<u32>> = FxHashMap::default();
    for (wi, word) in words.iter().enumerate() {
        for p in word.windows(2) {
            let pair = (p[0], p[1]);
            *pair_counts.entry(pair).or_insert(0) += word_counts[wi];
            let list = pair_words.entry(pair).or_default();
            if list.last() != Some(&(wi as u32)) {
                list.push(wi as u32);
            }
        }
    }
    let mut heap: BinaryHeap<(u64, Reverse<Pair>)> =
        pair_counts.iter().map(|(&p, &c)| (c, Reverse(p))).collect();

    let mut merges: Vec<Pair> = Vec::new();
    let started = Instant::now();
    let mut last_report = started;
    let wanted = target_model_tokens.saturating_sub(vocab.len());
    let bar = config
        .progress
        .then(|| progress::bar("bpe", wanted as u64, progress::Unit::Items("merges")));
    let mut deltas: FxHashMap<Pair, i64> = FxHashMap::default();
    while vocab.len() < target_model_tokens {
        let Some((count, Reverse(pair))) = heap.pop() else {
            break;
        };
        let current = pair_counts.get(&pair).copied().unwrap_or(0);
        if current != count {
            if current > 0 {
                heap.push((current, Reverse(pair)));
            }
            continue;
        }
        if count < config.min_frequency {
            break;
        }
        let joined = [
            vocab[pair.0 as usize].as_slice(),
            vocab[pair.1 as usize].as_slice(),
        ]
        .concat();
        // Two merges can spell the same bytes ("ab"+"c", "a"+"bc"); they share one id.
        let new_id = match token_ids.get(&joined) {
            Some(&id) => id,
            None => {
                let id = vocab.len() as u32;
                token_ids.insert(joined.clone(), id);
                vocab.push(joined);
                id
            }
        };
        merges.push(pair);

        let mut affected = pair_words.remove(&pair).unwrap_or_default();
        affected.sort_unstable();
        affected.dedup();
        deltas.clear();
        for &wi in &affected {
            let word = &mut words[wi as usize];
            if !word.windows(2).any(|p| (p[0], p[1]) == pair) {
                continue; // stale index entry
            }
            let c = word_counts[wi as usize] as i64;
            for p in word.windows(2) {
                *deltas.entry((p[0], p[1])).or_insert(0) -= c;
            }
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && (word[i], word[i + 1]) == pair {
                    merged.push(new_id);
                    i += 2;
                } else {
                    merged.push(word[i]);
                    i += 1;
                }
            }
            *word = merged;
            for p in word.windows(2) {
                *deltas.entry((p[0], p[1])).or_insert(0) += c;
                if p[0] == new_id || p[1] == new_id {
                    let list = pair_words.entry((p[0], p[1])).or_default();
                    if list.last() != Some(&wi) {
                        list.push(wi);
                    }
                }
            }
        }
        for (&p, &d) in deltas.iter() {
            if d == 0 {
                continue;
            }
            let entry = pair_counts.entry(p).or_insert(0);
            *entry = (*entry as i64 + d) as u64;
            let now = *entry;
            if now == 0 {
                pair_counts.remove(&p);
            } else if d > 0 {
                // Only pairs with the new token grow; they enter the heap here.
                heap.push((now, Reverse(p)));
            }
        }
        if let Some(bar) = &bar {
            bar.set_position(merges.len() as u64);
            if last_report.elapsed().as_secs_f64() >= 0.5 {
                last_report = Instant::now();
                bar.set_message(format!("(best pair count {count})"));
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    log::info!(
        "bpe: {} merges, {} model tokens in {:.1}s",
        merges.len(),
        vocab.len(),
        started.elapsed().as_secs_f64()
    );
    let first_special = vocab.len() as u32;
    let specials = config
        .specials
        .iter()
        .enumerate()
        .map(|(i, s)| SpecialToken {
            content: s.clone(),
            id: first_special + i as u32,
        })
        .collect();
    Tokenizer::new(config.pattern, vocab, merges, specials, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn counts_of(texts: &[&str]) -> FxHashMap<Box<str>, u64> {
        let mut c = WordCounts::default();
        for t in texts {
            c.add_text(t, Pattern::Qwen2, &[], usize::MAX);
        }
        c.counts
    }

    /// Plain reference: recount every pair from scratch each step.
    fn reference_merges(counts: &FxHashMap<Box<str>, u64>, n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut words: Vec<(Vec<Vec<u8>>, u64)> = counts
            .iter()
            .map(|(w, &c)| (w.bytes().map(|b| vec![b]).collect(), c))
            .collect();
        let mut out = Vec::new();
        for _ in 0..n {
            let mut pc: std::collections::BTreeMap<(Vec<u8>, Vec<u8>), u64> = Default::default();
            for (w, c) in &words {
                for p in w.windows(2) {
                    *pc.entry((p[0].clone(), p[1].clone())).or_insert(0) += c;
                }
            }
            let Some(best) = pc
                .iter()
                .map(|(p, c)| (*c, p.clone()))
                .max_by(|a, b| a.0.cmp(&b.0))
            else {
                break;
            };
            if best.0 < 2 {
                break;
            }
            // Among equal counts the reference can't know kormo's id order; compare counts
            // only when the tie is broken differently (checked below via merged counts).
            let (a, b) = best.1.clone();
            for (w, _) in words.iter_mut() {
                let mut m = Vec::new();
                let mut i = 0;
                while i < w.len() {
                    if i + 1 < w.len() && w[i] == a && w[i + 1] == b {
                        m.push([a.clone(), b.clone()].concat());
                        i += 2;
                    } else {
                        m.push(w[i].clone());
                        i += 1;
                    }
                }
                *w = m;
            }
            out.push((a, b));
        }
        out
    }

    #[test]
    fn incremental_counts_match_recounting() {
        // Random words over a small alphabet, distinct counts so no ties exist among the top.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut counts: FxHashMap<Box<str>, u64> = FxHashMap::default();
        for i in 0..200u64 {
            let len = rng.random_range(2..9);
            let w: String = (0..len)
                .map(|_| ['a', 'b', 'c', 'd'][rng.random_range(0..4)])
                .collect();
            *counts.entry(w.into()).or_insert(0) += 1_000_003 * (i + 1) % 7919 + 1;
        }
        let config = TrainConfig {
            vocab_size: 256 + 30,
            specials: vec![],
            ..TrainConfig::kormo(0)
        };
        let tok = train(&counts, &config).unwrap();
        let ours: Vec<(Vec<u8>, Vec<u8>)> = tok
            .merges()
            .iter()
            .map(|&(a, b)| {
                (
                    tok.token_bytes(a).unwrap().to_vec(),
                    tok.token_bytes(b).unwrap().to_vec(),
                )
            })
            .collect();
        let reference = reference_merges(&counts, ours.len());
        assert!(ours.len() >= 20);
        assert_eq!(ours, reference);
    }

    #[test]
    fn training_on_no_text_is_an_error() {
        let err = train(&FxHashMap::default(), &TrainConfig::kormo(400)).unwrap_err();
        assert!(err.to_string().contains("no text to train on"), "{err}");
    }

    #[test]
    fn trained_tokenizer_round_trips_and_compresses() {
        let text = "the cat sat on the mat. the cat ate the rat! 고양이가 매트 위에 앉았다. 고양이가 쥐를 먹었다.\n";
        let counts = counts_of(&[text; 50]);
        let tok = train(
            &counts,
            &TrainConfig::kormo(256 + 40 + KORMO_SPECIALS.len()),
        )
        .unwrap();
        assert_eq!(tok.vocab_size(), 256 + 40 + KORMO_SPECIALS.len());
        assert_eq!(tok.special_id("<|BOS|>"), Some(296));
        let ids = tok.encode(text);
        assert!(
            ids.len() * 2 < text.len(),
            "{} ids for {} bytes",
            ids.len(),
            text.len()
        );
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        let with_special = format!("<|BOS|>{text}<|EOT|>");
        let ids = tok.encode(&with_special);
        assert_eq!(ids[0], 296);
        assert_eq!(*ids.last().unwrap(), 297);
    }

    #[test]
    fn weights_set_the_mix_not_the_sizes() {
        let mut big = WordCounts::default();
        big.add_text(
            "alpha ".repeat(1000).trim_end(),
            Pattern::Qwen2,
            &[],
            usize::MAX,
        );
        let mut small = WordCounts::default();
        small.add_text(
            "beta ".repeat(10).trim_end(),
            Pattern::Qwen2,
            &[],
            usize::MAX,
        );
        // Weights 3:1 -> the weighted byte mass of the sources is 3:1 although sizes are 120:1.
        let combined = weighted_counts(&[(3.0, big), (1.0, small)]).unwrap();
        let mass = |words: &[&str]| {
            words
                .iter()
                .map(|w| combined[*w] as f64 * w.len() as f64)
                .sum::<f64>()
        };
        let ratio = mass(&["alpha", " alpha"]) / mass(&["beta", " beta"]);
        assert!((ratio / 3.0 - 1.0).abs() < 0.01, "{ratio}");
    }

    #[test]
    fn pruning_keeps_frequent_words_and_counts_drops() {
        let mut c = WordCounts::default();
        let text: String = (0..100u8)
            .map(|i| format!(" w{}{}", (b'a' + i / 26) as char, (b'a' + i % 26) as char))
            .collect::<String>()
            + &" common".repeat(5);
        c.add_text(&text, Pattern::Qwen2, &[], 50);
        assert!(c.counts.len() <= 50 && c.pruned > 0);
        assert_eq!(c.counts.get(" common"), Some(&5));
    }

    #[test]
    fn parallel_counting_equals_serial() {
        let docs: Vec<String> = (0..64)
            .map(|i| format!("doc {i} has words and <|BOS|> specials {}", i % 7))
            .collect();
        let specials = vec!["<|BOS|>".to_string()];
        let parallel = count_documents(
            docs.clone().into_iter(),
            Pattern::Qwen2,
            &specials,
            3,
            usize::MAX,
        );
        let mut serial = WordCounts::default();
        for d in &docs {
            serial.add_text(d, Pattern::Qwen2, &specials, usize::MAX);
        }
        assert_eq!(parallel.counts, serial.counts);
        assert!(!serial.counts.keys().any(|k| k.contains("BOS")));
    }
}
