//! Choosing the next token from logits: greedy (argmax, lowest id on ties) or sampling at a
//! temperature from the top-p nucleus (the smallest set of most likely tokens whose
//! probability reaches p), seeded with ChaCha8 so a seed reproduces a generation exactly.
//! Ids at or above `allowed` (embedding rows padding the vocabulary, which no tokenizer can
//! decode) are never chosen.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How to pick tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Strategy {
    Greedy,
    /// `temperature > 0`, `0 < top_p <= 1`.
    Sample { temperature: f32, top_p: f32 },
}

impl Strategy {
    /// Greedy for temperature 0, else sampling; errors name the bad option.
    pub fn new(temperature: f32, top_p: f32) -> Result<Strategy, String> {
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(format!("--top-p {top_p} must be in (0, 1]"));
        }
        if temperature == 0.0 {
            Ok(Strategy::Greedy)
        } else if temperature.is_finite() && temperature > 0.0 {
            Ok(Strategy::Sample { temperature, top_p })
        } else {
            Err(format!("--temperature {temperature} must be 0 (greedy) or positive"))
        }
    }
}

pub struct Sampler {
    strategy: Strategy,
    rng: ChaCha8Rng,
    allowed: usize,
}

impl Sampler {
    pub fn new(strategy: Strategy, seed: u64, allowed: usize) -> Sampler {
        Sampler { strategy, rng: ChaCha8Rng::seed_from_u64(seed), allowed }
    }

    /// The next token for `logits`.
    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        let logits = &logits[..self.allowed.min(logits.len())];
        match self.strategy {
            Strategy::Greedy => argmax(logits),
            Strategy::Sample { temperature, top_p } => {
                let nucleus = nucleus(logits, temperature, top_p);
                let mut u = self.rng.random::<f64>() * nucleus.iter().map(|&(_, p)| p).sum::<f64>();
                for &(id, p) in &nucleus {
                    if u < p {
                        return id;
                    }
                    u -= p;
                }
                nucleus.last().expect("nucleus is never empty").0
            }
        }
    }
}

/// Index of the largest logit (the first one on ties; NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// The top-p nucleus at `temperature`: (id, unnormalised probability), most likely first.
pub fn nucleus(logits: &[f32], temperature: f32, top_p: f32) -> Vec<(u32, f64)> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let mut probs: Vec<(u32, f64)> =
        logits.iter().enumerate().map(|(i, &x)| (i as u32, ((x as f64 - max) / temperature as f64).exp())).collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let total: f64 = probs.iter().map(|&(_, p)| p).sum();
    let mut kept = 0;
    let mut mass = 0.0;
    while kept < probs.len() && (kept == 0 || mass < top_p as f64 * total) {
        mass += probs[kept].1;
        kept += 1;
    }
    probs.truncate(kept);
    probs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum_and_respects_allowed() {
        assert_eq!(argmax(&[0.1, 2.0, -1.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5]), 1);
        let mut s = Sampler::new(Strategy::Greedy, 0, 2);
        assert_eq!(s.pick(&[0.0, 1.0, 9.0]), 1);
    }

    #[test]
    fn strategy_validation_names_the_option() {
        assert_eq!(Strategy::new(0.0, 1.0).unwrap(), Strategy::Greedy);
        assert!(Strategy::new(-1.0, 1.0).unwrap_err().contains("--temperature"));
        assert!(Strategy::new(0.7, 0.0).unwrap_err().contains("--top-p"));
        assert!(Strategy::new(0.7, 1.5).unwrap_err().contains("--top-p"));
    }

    #[test]
    fn nucleus_keeps_the_smallest_set_reaching_p() {
        // Probabilities 0.5, 0.25, 0.125, 0.125 at temperature 1.
        let logits = [(0.5f32).ln(), (0.25f32).ln(), (0.125f32).ln(), (0.125f32).ln()];
        let ids = |p: f32| nucleus(&logits, 1.0, p).iter().map(|&(i, _)| i).collect::<Vec<_>>();
        assert_eq!(ids(0.4), vec![0]);
        assert_eq!(ids(0.5), vec![0]);
        assert_eq!(ids(0.6), vec![0, 1]);
        assert_eq!(ids(0.8), vec![0, 1, 2]);
        assert_eq!(ids(1.0).len(), 4);
    }

    /// Frequencies of sampled tokens follow the renormalised nucleus distribution (chi-square
    /// bound far above its expected value, so a seed change cannot make it flaky), tokens
    /// outside the nucleus never appear, and a seed reproduces the draws.
    #[test]
    fn sampling_frequencies_follow_the_truncated_distribution() {
        let logits = [2.0f32, 1.0, 0.5, 0.0, -1.0, -3.0];
        let (temperature, top_p) = (0.8, 0.9);
        let nucleus = nucleus(&logits, temperature, top_p);
        let total: f64 = nucleus.iter().map(|&(_, p)| p).sum();
        assert!(nucleus.len() < logits.len() && nucleus.len() > 1);
        let draws = 40_000;
        let mut counts = vec![0usize; logits.len()];
        let mut sampler = Sampler::new(Strategy::Sample { temperature, top_p }, 42, logits.len());
        let first: Vec<u32> = (0..draws).map(|_| sampler.pick(&logits)).collect();
        first.iter().for_each(|&id| counts[id as usize] += 1);
        let mut chi2 = 0.0;
        for &(id, p) in &nucleus {
            let expected = draws as f64 * p / total;
            chi2 += (counts[id as usize] as f64 - expected).powi(2) / expected;
        }
        // Degrees of freedom = nucleus.len() - 1 (at most 4): chi2 > 30 has probability < 1e-5.
        assert!(chi2 < 30.0, "chi-square {chi2}, counts {counts:?}");
        let outside: usize = (0..logits.len()).filter(|i| !nucleus.iter().any(|&(id, _)| id as usize == *i)).map(|i| counts[i]).sum();
        assert_eq!(outside, 0);
        let mut again = Sampler::new(Strategy::Sample { temperature, top_p }, 42, logits.len());
        assert!(first.iter().take(100).all(|&id| id == again.pick(&logits)));
        // A low temperature concentrates the mass on the argmax.
        let mut cold = Sampler::new(Strategy::Sample { temperature: 0.05, top_p: 1.0 }, 1, logits.len());
        assert!((0..200).all(|_| cold.pick(&logits) == 0));
    }
}
