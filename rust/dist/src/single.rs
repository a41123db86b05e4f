//! [`SingleRank`]: the engine of a world of one rank, so the trainer's one step loop drives it
//! exactly as it drives the sharded ranks ([`FsdpEngine`]).
//!
//! It is the model itself plus the optimizer of a whole model ([`WholeAdamW`]): on the CPU the
//! host AdamW of kormo_optim updates the model's f32 parameters in place; on CUDA
//! `kormo_cuda::optim::DeviceAdamW` keeps f32 master weights and moments on the device and
//! rewrites the model's bf16 parameters. No weight is copied to stand in for a shard: the f32
//! weights of record are the model's own on the CPU and the optimizer's masters on CUDA. Its
//! checkpoints are the single-process files (`model.safetensors`, `optimizer.safetensors`),
//! written directly rather than through shards and consolidation, so they are the files every
//! world size reads. As a [`ShardedState`] it is one shard group of one rank whose shards are
//! the whole units.

use std::path::Path;

use kormo_checkpoint::{Checkpoint, DiskBudget, RunState, Tensor};
use kormo_cpu::CpuOps;
use kormo_cuda::optim::DeviceAdamW;
use kormo_cuda::CudaOps;
use kormo_model::{Batch, LossSum, Model, Ops, ParamSpec};
use kormo_optim::{AdamW, AdamWConfig};

use crate::error::DistError;
use crate::fsdp::{FsdpEngine, Gradients};
use crate::shard::{ShardRange, Unit};
use crate::sharded_checkpoint::{ShardedState, MODEL_FILE, OPTIMIZER_FILE};

/// AdamW over a whole model on one backend, its state readable and restorable by kormo_optim's
/// tensor names (`<param>.exp_avg`, `<param>.exp_avg_sq`), so checkpoints do not depend on
/// the backend. A step is split in two, gradient norm first ([`WholeAdamW::clip_grad_norm`])
/// and the update after ([`WholeAdamW::update`]), so the caller can skip an update from the norm.
pub trait WholeAdamW<O: Ops>: Sized {
    /// True when the f32 weights of record live in the optimizer (master weights), so the
    /// values a checkpoint was loaded with must seed it.
    const KEEPS_MASTER_WEIGHTS: bool;

    /// Zero moments and step 0 for `model`'s parameters. `weights`: the f32 weights of record
    /// (one vector per tensor, in canonical order) when the model holds them at lower precision.
    fn create(
        config: AdamWConfig,
        model: &Model<O>,
        threads: usize,
        weights: Option<Vec<Vec<f32>>>,
    ) -> Result<Self, DistError>;

    /// Returns the global L2 norm of the model's gradients before clipping, and clips them to
    /// `grad_clip` (0: no clipping) for the next update. Changes no weight and no state.
    fn clip_grad_norm(&mut self, model: &mut Model<O>, grad_clip: f64) -> Result<f64, DistError>;

    /// One update at learning rate `lr` with the gradients as the last clip left them.
    fn update(&mut self, model: &mut Model<O>, lr: f64) -> Result<(), DistError>;

    /// The f32 weights of record, one vector per tensor in canonical order.
    fn weights(&self, model: &Model<O>) -> Result<Vec<Vec<f32>>, DistError>;

    fn state_names(&self) -> Vec<String>;
    fn state_tensor(&self, name: &str) -> Result<Vec<f32>, DistError>;
    fn load_state_tensor(&mut self, name: &str, values: &[f32]) -> Result<(), DistError>;
    fn step_count(&self) -> u64;
    fn set_step_count(&mut self, step: u64);
}

/// A backend a [`SingleRank`] runs on, with the optimizer it updates the model by.
pub trait SingleOps: Ops + Clone {
    type AdamW: WholeAdamW<Self>;
}

impl SingleOps for CpuOps<f32> {
    type AdamW = AdamW;
}

impl SingleOps for CudaOps {
    type AdamW = CudaAdamW;
}

/// The model and its optimizer, as one rank of a world of one.
pub struct SingleRank<O: SingleOps> {
    model: Model<O>,
    adamw: O::AdamW,
    config: AdamWConfig,
    threads: usize,
    grad_clip: f64,
    units: Vec<Unit>,
    ranges: Vec<ShardRange>,
}

impl<O: SingleOps> SingleRank<O> {
    /// `model` holding the weights to start from; `weights`: their f32 values when the model
    /// holds them at lower precision and the optimizer keeps masters
    /// ([`WholeAdamW::KEEPS_MASTER_WEIGHTS`]); `threads`: the host optimizer's threads.
    pub fn new(
        model: Model<O>,
        config: AdamWConfig,
        grad_clip: f64,
        threads: usize,
        weights: Option<Vec<Vec<f32>>>,
    ) -> Result<Self, DistError> {
        let adamw = O::AdamW::create(config.clone(), &model, threads, weights)?;
        let units = crate::shard::units(model.config());
        let ranges = units.iter().map(|u| ShardRange::of(u.numel, 0, 1)).collect();
        Ok(SingleRank {
            model,
            adamw,
            config,
            threads,
            grad_clip,
            units,
            ranges,
        })
    }

    pub fn model(&self) -> &Model<O> {
        &self.model
    }

    pub fn model_mut(&mut self) -> &mut Model<O> {
        &mut self.model
    }

    /// The optimizer half of a step on the model's current gradients: clip to the global norm
    /// (returned, before clipping), then one update at `lr` (timed apart from the forward and
    /// backward passes by `train --benchmark`).
    pub fn optimizer_step(&mut self, lr: f64) -> Result<f64, DistError> {
        let grad_norm = self.adamw.clip_grad_norm(&mut self.model, self.grad_clip)?;
        self.adamw.update(&mut self.model, lr)?;
        Ok(grad_norm)
    }

    /// The full f32 weights of record, per unit as one flat vector (the shard layout).
    fn flat_units(&self, tensors: &[Vec<f32>]) -> Vec<Vec<f32>> {
        self.units
            .iter()
            .map(|unit| unit.tensors.iter().flat_map(|&t| tensors[t].iter().copied()).collect())
            .collect()
    }

    /// The tensors of per-unit flat vectors (the inverse of [`SingleRank::flat_units`]).
    fn split_units(&self, flat: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, DistError> {
        let specs = self.model.param_specs();
        let mut tensors = vec![Vec::new(); specs.len()];
        for (unit, values) in self.units.iter().zip(flat) {
            if values.len() != unit.numel {
                return Err(DistError::Config(format!(
                    "unit {}: {} values, expected {}",
                    unit.name,
                    values.len(),
                    unit.numel
                )));
            }
            for (&t, &offset) in unit.tensors.iter().zip(&unit.offsets) {
                tensors[t] = values[offset..offset + specs[t].numel()].to_vec();
            }
        }
        Ok(tensors)
    }

    /// Per tensor, one of AdamW's moments (`suffix`: `.exp_avg` or `.exp_avg_sq`).
    fn moments(&self, suffix: &str) -> Result<Vec<Vec<f32>>, DistError> {
        self.model
            .param_specs()
            .iter()
            .map(|spec| self.adamw.state_tensor(&format!("{}{suffix}", spec.name)))
            .collect()
    }

    /// Writes `weights` into the model and a fresh optimizer over them.
    fn install(&mut self, weights: Vec<Vec<f32>>) -> Result<(), DistError> {
        let specs = self.model.param_specs().to_vec();
        for (spec, values) in specs.iter().zip(&weights) {
            self.model.write_param(&spec.name, values)?;
        }
        let masters = <O::AdamW as WholeAdamW<O>>::KEEPS_MASTER_WEIGHTS.then_some(weights);
        self.adamw = O::AdamW::create(self.config.clone(), &self.model, self.threads, masters)?;
        Ok(())
    }
}

impl<O: SingleOps> FsdpEngine for SingleRank<O> {
    fn forward_backward(&mut self, micro_batches: &[Batch]) -> Result<Gradients, DistError> {
        // The gradient is the mean over every trained token of the step, however they fall
        // into micro-batches.
        let weight: f64 = micro_batches.iter().map(Batch::loss_weight_sum).sum();
        let grad_scale = if weight > 0.0 { (1.0 / weight) as f32 } else { 0.0 };
        self.model.zero_grads();
        let mut loss = LossSum::default();
        for batch in micro_batches {
            loss = loss.add(self.model.forward_backward(batch, grad_scale)?);
        }
        let grad_norm = self.adamw.clip_grad_norm(&mut self.model, self.grad_clip)?;
        Ok(Gradients { loss, grad_norm })
    }

    fn apply(&mut self, lr: f64) -> Result<(), DistError> {
        self.adamw.update(&mut self.model, lr)
    }

    fn evaluate(&mut self, batch: &Batch) -> Result<LossSum, DistError> {
        Ok(self.model.evaluate(batch)?)
    }

    fn full_params(&self) -> Result<Vec<Vec<f32>>, DistError> {
        self.adamw.weights(&self.model)
    }

    fn reset_optimizer(&mut self) -> Result<(), DistError> {
        let masters = <O::AdamW as WholeAdamW<O>>::KEEPS_MASTER_WEIGHTS
            .then(|| self.adamw.weights(&self.model))
            .transpose()?;
        self.adamw = O::AdamW::create(self.config.clone(), &self.model, self.threads, masters)?;
        Ok(())
    }

    fn load_optimizer(&mut self, checkpoint: &Checkpoint) -> Result<(), DistError> {
        let file = checkpoint.file(OPTIMIZER_FILE)?;
        for name in self.adamw.state_names() {
            self.adamw.load_state_tensor(&name, &file.f32(&name, None)?)?;
        }
        self.adamw.set_step_count(file.u64("step", Some(&[1]))?[0]);
        Ok(())
    }

    fn load_state(
        &mut self,
        full: &[Vec<f32>],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), DistError> {
        self.install(full.to_vec())?;
        match checkpoint {
            Some(checkpoint) => self.load_optimizer(checkpoint),
            None => Ok(()),
        }
    }

    fn save_checkpoint(
        &mut self,
        target: &Path,
        run: &RunState,
        disk: &DiskBudget,
    ) -> Result<(), DistError> {
        let specs = self.model.param_specs();
        let weights = specs
            .iter()
            .zip(self.adamw.weights(&self.model)?)
            .map(|(spec, values)| Tensor::f32(spec.name.clone(), spec.shape.clone(), &values))
            .collect();
        let mut optimizer = Vec::new();
        for name in self.adamw.state_names() {
            let values = self.adamw.state_tensor(&name)?;
            optimizer.push(Tensor::f32(name, vec![values.len()], &values));
        }
        optimizer.push(Tensor::u64("step", vec![1], &[self.adamw.step_count()]));
        kormo_checkpoint::save_with_budget(
            target,
            run.clone(),
            &[(MODEL_FILE, weights), (OPTIMIZER_FILE, optimizer)],
            disk,
        )?;
        Ok(())
    }
}

impl<O: SingleOps> ShardedState for SingleRank<O> {
    fn world_rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_world(&self, _values: &mut [f64]) -> Result<(), DistError> {
        // The sum over a world of one is the value itself.
        Ok(())
    }
    fn shard_rank(&self) -> usize {
        0
    }
    fn shard_count(&self) -> usize {
        1
    }
    fn replica_rank(&self) -> usize {
        0
    }
    fn units(&self) -> &[Unit] {
        &self.units
    }
    fn param_specs(&self) -> &[ParamSpec] {
        self.model.param_specs()
    }
    fn ranges(&self) -> &[ShardRange] {
        &self.ranges
    }
    fn host_shards(&self) -> Result<([Vec<Vec<f32>>; 3], u64), DistError> {
        let params = self.flat_units(&self.adamw.weights(&self.model)?);
        let exp_avg = self.flat_units(&self.moments(".exp_avg")?);
        let exp_avg_sq = self.flat_units(&self.moments(".exp_avg_sq")?);
        Ok(([params, exp_avg, exp_avg_sq], self.adamw.step_count()))
    }
    fn load_shards(
        &mut self,
        params: Vec<Vec<f32>>,
        exp_avg: &[Vec<f32>],
        exp_avg_sq: &[Vec<f32>],
        step: u64,
    ) -> Result<(), DistError> {
        let weights = self.split_units(&params)?;
        let (m, v) = (self.split_units(exp_avg)?, self.split_units(exp_avg_sq)?);
        self.install(weights)?;
        let names: Vec<String> = self.model.param_specs().iter().map(|s| s.name.clone()).collect();
        for ((name, m), v) in names.iter().zip(&m).zip(&v) {
            self.adamw.load_state_tensor(&format!("{name}.exp_avg"), m)?;
            self.adamw.load_state_tensor(&format!("{name}.exp_avg_sq"), v)?;
        }
        self.adamw.set_step_count(step);
        Ok(())
    }
}

/// Every parameter of `model`, copied to the host as f32.
pub fn read_params<O: Ops>(model: &Model<O>) -> Result<Vec<Vec<f32>>, DistError> {
    model
        .param_specs()
        .iter()
        .map(|spec| {
            let mut values = vec![0.0; spec.numel()];
            model.read_param(&spec.name, &mut values).map(|()| values)
        })
        .collect::<Result<_, _>>()
        .map_err(DistError::from)
}

impl WholeAdamW<CpuOps<f32>> for AdamW {
    const KEEPS_MASTER_WEIGHTS: bool = false;

    fn create(
        config: AdamWConfig,
        model: &Model<CpuOps<f32>>,
        threads: usize,
        _weights: Option<Vec<Vec<f32>>>,
    ) -> Result<Self, DistError> {
        Ok(AdamW::new(config, kormo_cuda::optim::param_infos(model.param_specs()))?.with_threads(threads))
    }

    fn clip_grad_norm(
        &mut self,
        model: &mut Model<CpuOps<f32>>,
        grad_clip: f64,
    ) -> Result<f64, DistError> {
        // Clipped in place: the gradients are the model's own f32 vectors.
        Ok(if grad_clip > 0.0 {
            kormo_optim::clip_grad_norm(model.grads_mut(), grad_clip)
        } else {
            kormo_optim::grad_norm(model.grads())
        })
    }

    fn update(&mut self, model: &mut Model<CpuOps<f32>>, lr: f64) -> Result<(), DistError> {
        let (params, grads) = model.params_and_grads_mut();
        Ok(AdamW::step(self, params, grads, lr)?)
    }

    fn weights(&self, model: &Model<CpuOps<f32>>) -> Result<Vec<Vec<f32>>, DistError> {
        Ok(model.params().to_vec())
    }

    fn state_names(&self) -> Vec<String> {
        AdamW::state_names(self)
    }

    fn state_tensor(&self, name: &str) -> Result<Vec<f32>, DistError> {
        self.state_tensors()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, values)| values.to_vec())
            .ok_or_else(|| {
                DistError::Optim(kormo_optim::OptimError::Tensor(format!(
                    "no optimizer state tensor named `{name}`"
                )))
            })
    }

    fn load_state_tensor(&mut self, name: &str, values: &[f32]) -> Result<(), DistError> {
        Ok(AdamW::load_state_tensor(self, name, values)?)
    }

    fn step_count(&self) -> u64 {
        AdamW::step_count(self)
    }

    fn set_step_count(&mut self, step: u64) {
        AdamW::set_step_count(self, step)
    }
}

/// [`DeviceAdamW`] with the backend handle its calls need.
pub struct CudaAdamW {
    ops: CudaOps,
    adamw: DeviceAdamW,
}

fn cuda_error(e: kormo_cuda::CudaError) -> DistError {
    DistError::Device(format!("CUDA optimizer: {e}"))
}

impl WholeAdamW<CudaOps> for CudaAdamW {
    const KEEPS_MASTER_WEIGHTS: bool = true;

    fn create(
        config: AdamWConfig,
        model: &Model<CudaOps>,
        _threads: usize,
        weights: Option<Vec<Vec<f32>>>,
    ) -> Result<Self, DistError> {
        // Without loaded f32 weights (a model from scratch) the masters start from the model's
        // bf16 values, which is what the first forward pass saw.
        let weights = match weights {
            Some(w) => w,
            None => read_params(model)?,
        };
        let slices: Vec<&[f32]> = weights.iter().map(Vec::as_slice).collect();
        let ops = model.ops().clone();
        let adamw =
            DeviceAdamW::new(&ops, config, kormo_cuda::optim::param_infos(model.param_specs()), &slices).map_err(cuda_error)?;
        Ok(CudaAdamW { ops, adamw })
    }

    fn clip_grad_norm(
        &mut self,
        model: &mut Model<CudaOps>,
        grad_clip: f64,
    ) -> Result<f64, DistError> {
        // The clip scale stays on the device; the update multiplies the gradients by it.
        let (_, grads) = model.params_and_grads_mut();
        self.adamw
            .clip_grad_norm(&self.ops, grads, (grad_clip > 0.0).then_some(grad_clip))
            .map_err(cuda_error)
    }

    fn update(&mut self, model: &mut Model<CudaOps>, lr: f64) -> Result<(), DistError> {
        let (params, grads) = model.params_and_grads_mut();
        self.adamw
            .apply(&self.ops, params, grads, lr)
            .map_err(cuda_error)
    }

    fn weights(&self, model: &Model<CudaOps>) -> Result<Vec<Vec<f32>>, DistError> {
        Ok((0..model.param_specs().len())
            .map(|i| self.adamw.master(&self.ops, i))
            .collect())
    }

    fn state_names(&self) -> Vec<String> {
        self.adamw.state_names()
    }

    fn state_tensor(&self, name: &str) -> Result<Vec<f32>, DistError> {
        self.adamw.state_tensor(&self.ops, name).map_err(cuda_error)
    }

    fn load_state_tensor(&mut self, name: &str, values: &[f32]) -> Result<(), DistError> {
        self.adamw
            .load_state_tensor(&self.ops, name, values)
            .map_err(cuda_error)
    }

    fn step_count(&self) -> u64 {
        self.adamw.step_count()
    }

    fn set_step_count(&mut self, step: u64) {
        self.adamw.set_step_count(step)
    }
}
