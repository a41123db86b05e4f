//! [`DeviceAdamW`]: kormo_optim's AdamW (same hyperparameters, same update, same state names) with
//! its state on the device, for models on [`CudaOps`], so a training step never moves
//! parameters or gradients to the host.
//!
//! Per parameter tensor it keeps f32 master weights and both moments in device memory; the
//! model's bf16 parameter is rewritten from the master after each update (`kormo_adamw_step`).
//!
//! A step is two calls, so that a caller can look at the gradient norm before anything changes
//! (the trainer's outlier guard skips an update from it): [`DeviceAdamW::clip_grad_norm`] sums
//! the squared gradients on the device (`kormo_grad_sumsq` into one f32, or in the backend's
//! deterministic mode the atomic-free pair, see [`CudaOps::add_grad_sumsq`]), derives the clip scale
//! there (`kormo_clip_scale`, torch's rule) and returns the pre-clip norm (the step's one host
//! sync); [`DeviceAdamW::apply`] then updates every tensor with the gradients times that device
//! scale, the learning rate being a device scalar written by a fill kernel. Skipping a step is
//! simply not calling `apply`: weights, moments and the step count stay as they were.
//!
//! The update equals `kormo_optim::AdamW::step` on `clip_grad_norm`-ed gradients (the GPU test
//! `device_adamw_matches_kormo_optim` checks it), so checkpoints are interchangeable: state
//! tensors are named `<param>.exp_avg` / `<param>.exp_avg_sq` like kormo_optim's.

use kormo_model::{Ops, ParamSpec};
use kormo_optim::{AdamWConfig, ParamInfo};

use crate::bindings::*;
use crate::device::CudaError;
use crate::kernel_launch;
use crate::ops::{CudaBuf, CudaOps, Dtype};

/// The AdamW tensor list of a model's parameters (`Model::param_specs`): name, size and
/// whether weight decay applies, in parameter order.
pub fn param_infos(specs: &[ParamSpec]) -> Vec<ParamInfo> {
    specs.iter().map(|s| ParamInfo { name: s.name.clone(), numel: s.numel(), weight_decay: s.weight_decay() }).collect()
}

/// Device scalars of one step: learning rate, sum of squared gradients, clip scale.
const LR: usize = 0;
const SUMSQ: usize = 1;
const CLIP_SCALE: usize = 2;

pub struct DeviceAdamW {
    config: AdamWConfig,
    params: Vec<ParamInfo>,
    step: u64,
    master: Vec<CudaBuf>,
    exp_avg: Vec<CudaBuf>,
    exp_avg_sq: Vec<CudaBuf>,
    scalars: [CudaBuf; 3],
    /// Set by `clip_grad_norm`, taken by `apply`: the device clip scale is this step's.
    clip_scale_ready: bool,
}

fn refuse(reason: String) -> CudaError {
    CudaError::InvalidLaunch { kernel: "DeviceAdamW", reason }
}

impl DeviceAdamW {
    /// Zero moments and step 0; master weights from `initial` (f32 host values, one slice per
    /// tensor of `params`, in order: the values the model was initialised or restored with).
    pub fn new(ops: &CudaOps, config: AdamWConfig, params: Vec<ParamInfo>, initial: &[&[f32]]) -> Result<Self, CudaError> {
        config.validate().map_err(|e| refuse(e.to_string()))?;
        if initial.len() != params.len() {
            return Err(refuse(format!("{} initial tensors for {} parameters", initial.len(), params.len())));
        }
        let mut master = Vec::with_capacity(params.len());
        for (info, values) in params.iter().zip(initial) {
            if values.len() != info.numel {
                return Err(refuse(format!("{}: {} initial values, expected {}", info.name, values.len(), info.numel)));
            }
            master.push(ops.upload_f32(values));
        }
        let zeros = || params.iter().map(|p| ops.zeros_f32(p.numel)).collect::<Vec<_>>();
        let (exp_avg, exp_avg_sq) = (zeros(), zeros());
        let scalars = [ops.zeros_f32(1), ops.zeros_f32(1), ops.zeros_f32(1)];
        Ok(DeviceAdamW { config, params, step: 0, master, exp_avg, exp_avg_sq, scalars, clip_scale_ready: false })
    }

    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Restores the step count from a checkpoint.
    pub fn set_step_count(&mut self, step: u64) {
        self.step = step;
    }

    /// Refuses `bufs` (`what`: parameter or gradient) unless there is one per tensor, of its size.
    fn check_tensors(&self, what: &str, bufs: &[CudaBuf]) -> Result<(), CudaError> {
        if bufs.len() != self.params.len() {
            return Err(refuse(format!("expected {} {what} tensors, got {}", self.params.len(), bufs.len())));
        }
        for (info, buf) in self.params.iter().zip(bufs) {
            if buf.len() != info.numel {
                return Err(refuse(format!("{}: expected {} {what} elements, got {}", info.name, info.numel, buf.len())));
            }
        }
        Ok(())
    }

    /// Returns the global L2 norm of `grads` before clipping (waits for the device) and sets the
    /// clip scale the next [`DeviceAdamW::apply`] uses: `max_norm / (norm + 1e-6)` when the
    /// norm exceeds `max_grad_norm`, else 1 (None or a non-positive value: no clipping; a
    /// non-finite norm leaves the gradients unscaled, for the caller to skip the step). `grads`
    /// are the model's gradient buffers (f32 after the first backward; a bf16 one is converted
    /// once). Changes no weights and no optimizer state.
    pub fn clip_grad_norm(&mut self, ops: &CudaOps, grads: &mut [CudaBuf], max_grad_norm: Option<f64>) -> Result<f64, CudaError> {
        self.check_tensors("gradient", grads)?;
        for g in grads.iter_mut() {
            ops.ensure_dtype(g, Dtype::F32);
        }
        ops.fill(&mut self.scalars[SUMSQ], 0.0);
        for (g, info) in grads.iter().zip(&self.params) {
            let a = KormoGradSumsqArgs { grad: g.device_ptr(), sumsq: self.scalars[SUMSQ].device_ptr(), n: info.numel as i64 };
            // SAFETY: g holds numel f32 (checked and converted above); sumsq is one f32.
            unsafe { ops.add_grad_sumsq(&a) }?;
        }
        let c = KormoClipScaleArgs {
            sumsq: self.scalars[SUMSQ].device_ptr(),
            clip_scale: self.scalars[CLIP_SCALE].device_ptr(),
            max_norm: max_grad_norm.unwrap_or(0.0) as f32,
            _pad0: 0,
        };
        // SAFETY: two single f32 device values.
        unsafe { kernel_launch::clip_scale(ops.kernels(), &c) }?;
        self.clip_scale_ready = true;
        Ok(ops.sum(&self.scalars[SUMSQ]).sqrt())
    }

    /// One update of every tensor at learning rate `lr`, with `grads` (the ones the preceding
    /// [`DeviceAdamW::clip_grad_norm`] measured) times its clip scale; `params` get the new
    /// bf16 weights. Refused without a `clip_grad_norm` since the last update.
    pub fn apply(&mut self, ops: &CudaOps, params: &mut [CudaBuf], grads: &mut [CudaBuf], lr: f64) -> Result<(), CudaError> {
        self.check_tensors("parameter", params)?;
        self.check_tensors("gradient", grads)?;
        if !self.clip_scale_ready {
            return Err(refuse("apply without clip_grad_norm of this step's gradients".into()));
        }
        self.clip_scale_ready = false;
        self.step += 1;
        let t = self.step as i32;
        let (bias_correction1, bias_correction2) = (1.0 - self.config.beta1.powi(t), 1.0 - self.config.beta2.powi(t));
        ops.fill(&mut self.scalars[LR], lr as f32);
        for i in 0..self.params.len() {
            // No-ops after clip_grad_norm (f32 gradients) and the first update (bf16 weights).
            ops.ensure_dtype(&mut grads[i], Dtype::F32);
            ops.ensure_dtype(&mut params[i], Dtype::Bf16);
            let a = KormoAdamwArgs {
                master: self.master[i].device_ptr(),
                grad: grads[i].device_ptr(),
                exp_avg: self.exp_avg[i].device_ptr(),
                exp_avg_sq: self.exp_avg_sq[i].device_ptr(),
                weight: params[i].device_ptr(),
                lr: self.scalars[LR].device_ptr(),
                clip_scale: self.scalars[CLIP_SCALE].device_ptr(),
                n: self.params[i].numel as i64,
                beta1: self.config.beta1 as f32,
                beta2: self.config.beta2 as f32,
                eps: self.config.eps as f32,
                weight_decay: self.config.weight_decay as f32,
                bias_correction1: bias_correction1 as f32,
                bias_correction2: bias_correction2 as f32,
                apply_weight_decay: self.params[i].weight_decay as i32,
                _pad0: 0,
            };
            // SAFETY: every buffer holds numel elements (f32; the weight bf16, ensured above).
            unsafe { kernel_launch::adamw_step(ops.kernels(), &a) }?;
        }
        Ok(())
    }

    /// The f32 master weights of tensor `index` (for checkpoints).
    pub fn master(&self, ops: &CudaOps, index: usize) -> Vec<f32> {
        let mut host = vec![0.0; self.master[index].len()];
        ops.read(&self.master[index], &mut host);
        host
    }

    /// Which moment (`exp_avg` false, `exp_avg_sq` true) and parameter `name` is.
    fn state_index(&self, name: &str) -> Result<(bool, usize), CudaError> {
        let find = |suffix: &str| self.params.iter().position(|p| name.strip_suffix(suffix) == Some(&p.name));
        if let Some(i) = find(".exp_avg_sq") {
            return Ok((true, i));
        }
        find(".exp_avg").map(|i| (false, i)).ok_or_else(|| refuse(format!("no optimizer state tensor named {name}")))
    }

    /// Names of the state tensors: `<param>.exp_avg`, `<param>.exp_avg_sq` per parameter.
    pub fn state_names(&self) -> Vec<String> {
        self.params.iter().flat_map(|p| [format!("{}.exp_avg", p.name), format!("{}.exp_avg_sq", p.name)]).collect()
    }

    /// A state tensor copied to the host.
    pub fn state_tensor(&self, ops: &CudaOps, name: &str) -> Result<Vec<f32>, CudaError> {
        let buf = match self.state_index(name)? {
            (true, i) => &self.exp_avg_sq[i],
            (false, i) => &self.exp_avg[i],
        };
        let mut host = vec![0.0; buf.len()];
        ops.read(buf, &mut host);
        Ok(host)
    }

    /// Overwrites a state tensor from host values (checkpoint restore).
    pub fn load_state_tensor(&mut self, ops: &CudaOps, name: &str, values: &[f32]) -> Result<(), CudaError> {
        let buf = match self.state_index(name)? {
            (true, i) => &mut self.exp_avg_sq[i],
            (false, i) => &mut self.exp_avg[i],
        };
        if buf.len() != values.len() {
            return Err(refuse(format!("{name}: {} values, expected {}", values.len(), buf.len())));
        }
        ops.write(buf, values);
        Ok(())
    }
}
