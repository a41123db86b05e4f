//! Few-shot contexts: `description`, then `num_fewshot` examples (text, target delimiter,
//! target) joined by the few-shot delimiter, then the question's text.
//!
//! Shots are drawn as lm-evaluation-harness draws them: one `random.Random(fewshot_seed)`
//! per task (reproduced bit for bit by [`PyRandom`]), and for each question in order
//! `sample(fewshot_docs, num_fewshot)`; when the few-shot examples come from the test split,
//! `num_fewshot + 1` are drawn, documents equal to the question are dropped and the first
//! `num_fewshot` kept. The same seed and files therefore give the harness's examples.

use serde_json::{Map, Value};

use crate::pyrandom::PyRandom;

use crate::task::{render, target_text, Task};

/// Builds the contexts of every document of `task`, in order.
pub fn contexts(task: &Task) -> Result<Vec<String>, String> {
    let spec = &task.spec;
    let pool: &[Map<String, Value>] = task.fewshot_docs.as_deref().unwrap_or(&task.docs);
    let same_split = task.fewshot_docs.is_none();
    let mut rng = PyRandom::new(spec.fewshot_seed);
    let mut out = Vec::with_capacity(task.docs.len());
    for doc in &task.docs {
        let mut text = spec.description.clone();
        if spec.num_fewshot > 0 {
            let want = spec.num_fewshot + usize::from(same_split);
            if pool.len() < want {
                return Err(format!("task {}: {} few-shot examples asked, the few-shot split has {}", spec.task, spec.num_fewshot, pool.len()));
            }
            let mut picked: Vec<usize> = rng.sample(pool.len(), want).into_iter().filter(|&i| !(same_split && &pool[i] == doc)).take(spec.num_fewshot).collect();
            if picked.len() < spec.num_fewshot {
                // Copies of the question were drawn: resample from the pool without them.
                let rest: Vec<usize> = (0..pool.len()).filter(|&i| &pool[i] != doc).collect();
                if rest.len() < spec.num_fewshot {
                    return Err(format!("task {}: fewer than {} few-shot examples differ from a question", spec.task, spec.num_fewshot));
                }
                picked = rng.sample(rest.len(), spec.num_fewshot).into_iter().map(|i| rest[i]).collect();
            }
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
