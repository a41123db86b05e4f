//! AdamW with decoupled weight decay, exactly torch.optim.AdamW's update (non-amsgrad):
//!
//! ```text
//! t += 1
//! p *= 1 - lr * wd                      (only tensors with weight_decay)
//! m  = b1 m + (1 - b1) g
//! v  = b2 v + (1 - b2) g^2
//! p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//! ```
//!
//! Master parameters, gradients and both moments are f32 host buffers. Elements are
//! independent, so large tensors are split across threads without changing any result.
//! The state that a checkpoint must hold is the step count plus two tensors per parameter,
//! named `<param>.exp_avg` and `<param>.exp_avg_sq`.

use serde::{Deserialize, Serialize};

use crate::error::OptimError;

/// AdamW hyperparameters; the defaults are KORMo's pretraining values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay, applied only to tensors whose [`ParamInfo::weight_decay`] is set
    /// (KORMo: linear layers including the LM head; not embeddings or norms).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.033 }
    }
}

impl AdamWConfig {
    /// Checks ranges; the error names the key.
    pub fn validate(&self) -> Result<(), OptimError> {
        let unit = |key, value: f64| {
            if (0.0..1.0).contains(&value) {
                Ok(())
            } else {
                Err(OptimError::Config { key, message: format!("{value} must be in [0, 1)") })
            }
        };
        unit("beta1", self.beta1)?;
        unit("beta2", self.beta2)?;
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(OptimError::Config { key: "eps", message: format!("{} must be positive", self.eps) });
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(OptimError::Config {
                key: "weight_decay",
                message: format!("{} must be finite and >= 0", self.weight_decay),
            });
        }
        Ok(())
    }
}

/// One parameter tensor as the optimizer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamInfo {
    pub name: String,
    pub numel: usize,
    pub weight_decay: bool,
}

/// AdamW state for a fixed list of tensors.
#[derive(Debug, Clone)]
pub struct AdamW {
    config: AdamWConfig,
    params: Vec<ParamInfo>,
    step: u64,
    exp_avg: Vec<Vec<f32>>,
    exp_avg_sq: Vec<Vec<f32>>,
    threads: usize,
}

/// Elements per thread work unit; tensors smaller than this are updated on one thread.
const CHUNK: usize = 1 << 16;

const EXP_AVG: &str = ".exp_avg";
const EXP_AVG_SQ: &str = ".exp_avg_sq";

impl AdamW {
    /// Zero moments and step 0 for `params` (in the order `step` will receive them).
    pub fn new(config: AdamWConfig, params: Vec<ParamInfo>) -> Result<Self, OptimError> {
        config.validate()?;
        let exp_avg = params.iter().map(|p| vec![0.0; p.numel]).collect();
        let exp_avg_sq = params.iter().map(|p| vec![0.0; p.numel]).collect();
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Ok(AdamW { config, params, step: 0, exp_avg, exp_avg_sq, threads })
    }

    /// Uses `threads` threads (at least 1) for large tensors.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    pub fn params(&self) -> &[ParamInfo] {
        &self.params
    }

    /// Number of updates taken (the `t` of the bias correction).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Restores the step count from a checkpoint.
    pub fn set_step_count(&mut self, step: u64) {
        self.step = step;
    }

    /// One update of every tensor with learning rate `lr`. `params[i]` and `grads[i]` belong to
    /// `self.params()[i]`.
    pub fn step<P, G>(&mut self, params: &mut [P], grads: &[G], lr: f64) -> Result<(), OptimError>
    where
        P: AsMut<[f32]>,
        G: AsRef<[f32]>,
    {
        if params.len() != self.params.len() || grads.len() != self.params.len() {
            return Err(OptimError::Tensor(format!(
                "expected {} parameter and gradient tensors, got {} and {}",
                self.params.len(),
                params.len(),
                grads.len()
            )));
        }
        for (i, info) in self.params.iter().enumerate() {
            let (p, g) = (params[i].as_mut().len(), grads[i].as_ref().len());
            if p != info.numel || g != info.numel {
                return Err(OptimError::Tensor(format!(
                    "{}: expected {} elements, parameter has {p} and gradient {g}",
                    info.name, info.numel
                )));
            }
        }
        self.step += 1;
        let c = &self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        let coefficients = Coefficients {
            beta1: c.beta1 as f32,
            beta2: c.beta2 as f32,
            step_size: (lr / bias1) as f32,
            inv_sqrt_bias2: (1.0 / bias2.sqrt()) as f32,
            eps: c.eps as f32,
        };
        for (i, info) in self.params.iter().enumerate() {
            let decay = if info.weight_decay { (1.0 - lr * c.weight_decay) as f32 } else { 1.0 };
            let work = params[i]
                .as_mut()
                .chunks_mut(CHUNK)
                .zip(grads[i].as_ref().chunks(CHUNK))
                .zip(self.exp_avg[i].chunks_mut(CHUNK).zip(self.exp_avg_sq[i].chunks_mut(CHUNK)));
            let threads = self.threads.min(info.numel.div_ceil(CHUNK)).max(1);
            if threads == 1 {
                work.for_each(|((p, g), (m, v))| coefficients.update(p, g, m, v, decay));
            } else {
                let queue = std::sync::Mutex::new(work);
                std::thread::scope(|scope| {
                    for _ in 0..threads {
                        scope.spawn(|| loop {
                            let next = queue.lock().expect("work queue poisoned").next();
                            match next {
                                Some(((p, g), (m, v))) => coefficients.update(p, g, m, v, decay),
                                None => break,
                            }
                        });
                    }
                });
            }
        }
        Ok(())
    }

    /// Host bytes of the optimizer state (both f32 moments of every tensor), for memory
    /// reports: `8 * sum of numel`.
    pub fn state_bytes(&self) -> u64 {
        let elements: usize = self.exp_avg.iter().chain(&self.exp_avg_sq).map(Vec::len).sum();
        elements as u64 * std::mem::size_of::<f32>() as u64
    }

    /// Names of the state tensors in canonical order: `<param>.exp_avg`, `<param>.exp_avg_sq`
    /// for each parameter.
    pub fn state_names(&self) -> Vec<String> {
        self.params.iter().flat_map(|p| [format!("{}{EXP_AVG}", p.name), format!("{}{EXP_AVG_SQ}", p.name)]).collect()
    }

    /// The state tensors with their names (see [`AdamW::state_names`]).
    pub fn state_tensors(&self) -> Vec<(String, &[f32])> {
        self.state_names()
            .into_iter()
            .zip(self.exp_avg.iter().zip(&self.exp_avg_sq).flat_map(|(m, v)| [m.as_slice(), v.as_slice()]))
            .collect()
    }

    /// Mutable access to one state tensor by name.
    pub fn state_tensor_mut(&mut self, name: &str) -> Result<&mut [f32], OptimError> {
        let lookup = |suffix: &str| {
            let base = name.strip_suffix(suffix)?;
            self.params.iter().position(|p| p.name == base)
        };
        if let Some(i) = lookup(EXP_AVG_SQ) {
            return Ok(&mut self.exp_avg_sq[i]);
        }
        if let Some(i) = lookup(EXP_AVG) {
            return Ok(&mut self.exp_avg[i]);
        }
        Err(OptimError::Tensor(format!("no optimizer state tensor named `{name}`")))
    }

    /// Overwrites state tensor `name` with `values` (checkpoint restore).
    pub fn load_state_tensor(&mut self, name: &str, values: &[f32]) -> Result<(), OptimError> {
        let tensor = self.state_tensor_mut(name)?;
        if tensor.len() != values.len() {
            return Err(OptimError::Tensor(format!(
                "`{name}` has {} elements but the checkpoint holds {}",
                tensor.len(),
                values.len()
            )));
        }
        tensor.copy_from_slice(values);
        Ok(())
    }
}

/// Per-step scalars shared by every element.
struct Coefficients {
    beta1: f32,
    beta2: f32,
    step_size: f32,
    inv_sqrt_bias2: f32,
    eps: f32,
}

impl Coefficients {
    #[inline]
    fn update(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], decay: f32) {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *p *= decay;
            *m = self.beta1 * *m + (1.0 - self.beta1) * g;
            *v = self.beta2 * *v + (1.0 - self.beta2) * g * g;
            *p -= self.step_size * *m / (v.sqrt() * self.inv_sqrt_bias2 + self.eps);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn infos() -> Vec<ParamInfo> {
        vec![
            ParamInfo { name: "w".into(), numel: 3, weight_decay: true },
            ParamInfo { name: "norm".into(), numel: 2, weight_decay: false },
        ]
    }

    /// Scalar AdamW written from the paper's formula, in f64; `state` is (param, m, v).
    fn reference(state: &mut (f64, f64, f64), g: f64, t: i32, lr: f64, wd: f64, c: &AdamWConfig) {
        let (p, m, v) = (&mut state.0, &mut state.1, &mut state.2);
        *p -= lr * wd * *p;
        *m = c.beta1 * *m + (1.0 - c.beta1) * g;
        *v = c.beta2 * *v + (1.0 - c.beta2) * g * g;
        let m_hat = *m / (1.0 - c.beta1.powi(t));
        let v_hat = *v / (1.0 - c.beta2.powi(t));
        *p -= lr * m_hat / (v_hat.sqrt() + c.eps);
    }

    #[test]
    fn matches_scalar_reference_over_several_steps() {
        let config = AdamWConfig::default();
        let mut opt = AdamW::new(config.clone(), infos()).unwrap();
        let mut params = vec![vec![0.5f32, -1.0, 2.0], vec![1.0f32, 0.9]];
        let mut want: Vec<Vec<(f64, f64, f64)>> =
            params.iter().map(|p| p.iter().map(|&x| (x as f64, 0.0, 0.0)).collect()).collect();
        for t in 1..=5 {
            let lr = 1e-2 * t as f64;
            let grads = vec![
                vec![0.1f32 * t as f32, -0.3, 0.05],
                vec![-0.2f32, 0.4 / t as f32],
            ];
            opt.step(&mut params, &grads, lr).unwrap();
            for (i, tensor) in want.iter_mut().enumerate() {
                let wd = if opt.params()[i].weight_decay { config.weight_decay } else { 0.0 };
                for (j, state) in tensor.iter_mut().enumerate() {
                    reference(state, grads[i][j] as f64, t, lr, wd, &config);
                    assert!((params[i][j] as f64 - state.0).abs() < 1e-6, "step {t} tensor {i}[{j}]");
                }
            }
        }
        assert_eq!(opt.step_count(), 5);
    }

    #[test]
    fn weight_decay_only_where_flagged() {
        let mut opt = AdamW::new(AdamWConfig::default(), infos()).unwrap();
        let mut params = vec![vec![1.0f32; 3], vec![1.0f32; 2]];
        let zero = vec![vec![0.0f32; 3], vec![0.0f32; 2]];
        opt.step(&mut params, &zero, 0.1).unwrap();
        assert!((params[0][0] - (1.0 - 0.1 * 0.033)).abs() < 1e-7);
        assert_eq!(params[1], vec![1.0, 1.0]);
    }

    #[test]
    fn threaded_update_is_identical() {
        let n = 3 * CHUNK + 17;
        let info = vec![ParamInfo { name: "big".into(), numel: n, weight_decay: true }];
        let grads = vec![(0..n).map(|i| ((i % 97) as f32 - 48.0) * 1e-3).collect::<Vec<f32>>()];
        let run = |threads| {
            let mut opt = AdamW::new(AdamWConfig::default(), info.clone()).unwrap().with_threads(threads);
            let mut params = vec![(0..n).map(|i| (i % 13) as f32 * 0.1).collect::<Vec<f32>>()];
            opt.step(&mut params, &grads, 1e-3).unwrap();
            opt.step(&mut params, &grads, 1e-3).unwrap();
            params
        };
        assert_eq!(run(1), run(4));
    }

    #[test]
    fn state_round_trips_by_name() {
        let mut opt = AdamW::new(AdamWConfig::default(), infos()).unwrap();
        let mut params = vec![vec![0.5f32, -1.0, 2.0], vec![1.0f32, 0.9]];
        let grads = vec![vec![0.1f32, -0.3, 0.05], vec![-0.2f32, 0.4]];
        opt.step(&mut params, &grads, 1e-2).unwrap();
        assert_eq!(opt.state_names(), ["w.exp_avg", "w.exp_avg_sq", "norm.exp_avg", "norm.exp_avg_sq"]);
        // 3 + 2 elements, two f32 moments each.
        assert_eq!(opt.state_bytes(), 40);
        let listed: usize = opt.state_tensors().iter().map(|(_, t)| t.len() * 4).sum();
        assert_eq!(opt.state_bytes(), listed as u64);
        let saved: Vec<(String, Vec<f32>)> = opt.state_tensors().into_iter().map(|(n, t)| (n, t.to_vec())).collect();
        let mut restored = AdamW::new(AdamWConfig::default(), infos()).unwrap();
        for (name, values) in &saved {
            restored.load_state_tensor(name, values).unwrap();
        }
        restored.set_step_count(opt.step_count());
        let (mut a, mut b) = (params.clone(), params.clone());
        opt.step(&mut a, &grads, 1e-2).unwrap();
        restored.step(&mut b, &grads, 1e-2).unwrap();
        assert_eq!(a, b);
        assert!(restored.load_state_tensor("w.momentum", &[0.0; 3]).is_err());
        assert!(restored.load_state_tensor("w.exp_avg", &[0.0; 2]).unwrap_err().to_string().contains("w.exp_avg"));
    }

    #[test]
    fn rejects_bad_settings_and_mismatched_tensors() {
        let bad = AdamWConfig { beta2: 1.0, ..AdamWConfig::default() };
        assert!(AdamW::new(bad, infos()).unwrap_err().to_string().contains("beta2"));
        let mut opt = AdamW::new(AdamWConfig::default(), infos()).unwrap();
        let mut params = vec![vec![0.0f32; 3], vec![0.0f32; 3]];
        let grads = vec![vec![0.0f32; 3], vec![0.0f32; 3]];
        assert!(opt.step(&mut params, &grads, 0.1).unwrap_err().to_string().contains("norm"));
        assert_eq!(opt.step_count(), 0);
    }
}
