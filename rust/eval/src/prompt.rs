//! Few-shot contexts: `description`, then `num_fewshot` examples (text, target delimiter,
//! target) joined by the few-shot delimiter, then the question's text.
//!
//! Shots are drawn per question by a ChaCha8 generator seeded with `fewshot_seed` (reset once
//! per task, as the harness seeds its sampler once per task): a partial Fisher-Yates sample
//! of the few-shot split, skipping the question itself when the split is the test split. The
//! harness samples with Python's `random.Random(1234).sample`, so the same seed selects
//! different examples here; selection is deterministic for a given seed and task file.

use rand::seq::index::sample;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};

use crate::task::{render, target_text, Task};

/// Builds the contexts of every document of `task`, in order.
pub fn contexts(task: &Task) -> Result<Vec<String>, String> {
    let spec = &task.spec;
    let pool: &[Map<String, Value>] = task.fewshot_docs.as_deref().unwrap_or(&task.docs);
    let same_split = task.fewshot_docs.is_none();
    let mut rng = ChaCha8Rng::seed_from_u64(spec.fewshot_seed);
    let mut out = Vec::with_capacity(task.docs.len());
    for (qi, doc) in task.docs.iter().enumerate() {
        let mut text = spec.description.clone();
        if spec.num_fewshot > 0 {
            let want = spec.num_fewshot + usize::from(same_split);
            if pool.len() < want {
                return Err(format!("task {}: {} few-shot examples asked, the few-shot split has {}", spec.task, spec.num_fewshot, pool.len()));
            }
            let picked: Vec<usize> = sample(&mut rng, pool.len(), want).into_iter().filter(|&i| !(same_split && i == qi)).take(spec.num_fewshot).collect();
            for i in picked {
                text.push_str(&render(&spec.doc_to_text, &pool[i])?);
                text.push_str(&spec.target_delimiter);
                text.push_str(&target_text(spec, &pool[i])?);
                text.push_str(&spec.fewshot_delimiter);
            }
        }
        text.push_str(&render(&spec.doc_to_text, doc)?);
        out.push(text);
    }
    Ok(out)
}
