//! Scores as lm-evaluation-harness computes them: per-example 0/1 outcomes averaged, with the
//! standard error of the mean (sample standard deviation with n - 1, over sqrt(n)).

/// acc of one multiple-choice question: the argmax of the log-likelihoods (first on ties,
/// like numpy's argmax) is the gold.
pub fn acc(lls: &[f64], gold: usize) -> f64 {
    f64::from(argmax(lls) == gold)
}

/// acc_norm: the log-likelihood divided by the length of the choice string in characters
/// (Python's `len` of the choice, without the target delimiter), as the harness defines it.
pub fn acc_norm(lls: &[f64], choices: &[String], gold: usize) -> f64 {
    let normed: Vec<f64> = lls.iter().zip(choices).map(|(ll, c)| ll / c.chars().count() as f64).collect();
    f64::from(argmax(&normed) == gold)
}

fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Mean and its standard error (0 for fewer than two values).
pub fn mean_stderr(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}
