//! The backends the single-process step loop runs on, and how `--backend` picks one.
//!
//! The loop is generic over [`kormo_model::Ops`]; what differs between backends is the
//! optimizer, behind [`Optimizer`]: on the CPU the host AdamW of kormo_optim updates the model's
//! f32 parameters in place; on CUDA `kormo_cuda::optim::DeviceAdamW` keeps f32 master weights and
//! moments on the device and rewrites the model's bf16 parameters. The f32 weights of record
//! (what a checkpoint holds) are therefore the model's own on the CPU and the optimizer's masters
//! on CUDA ([`Optimizer::weights`]); both write the same checkpoint files, read back to the host.
//! Both split a step the same way, gradient norm first ([`Optimizer::clip_grad_norm`]) and the
//! update after ([`Optimizer::apply`]), so the loop can skip an update from the norm.
//!
//! Selection (`--backend auto|cpu|cuda`): auto takes CUDA when a device is present and the model
//! passes `CudaOps::check_config`, else the CPU, and says why; an explicit `cuda` that cannot be
//! had is an error carrying the same reason.

use crate::trainer::TrainError;
use kormo_cpu::CpuOps;
use kormo_cuda::optim::DeviceAdamW;
use kormo_cuda::{CudaOps, DeviceInfo};
use kormo_model::{Model, ModelConfig, Ops};
use kormo_optim::{AdamW, AdamWConfig, ParamInfo};

/// The CPU backend: the f32 reference.
pub type Cpu = CpuOps<f32>;

/// What `--backend` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// CUDA when a usable device is present, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

impl BackendChoice {
    pub fn parse(name: &str) -> Result<BackendChoice, String> {
        match name {
            "auto" => Ok(BackendChoice::Auto),
            "cpu" => Ok(BackendChoice::Cpu),
            "cuda" => Ok(BackendChoice::Cuda),
            other => Err(format!("unknown backend `{other}` (auto, cpu or cuda)")),
        }
    }
}

/// The backend a run uses, with the line that announces it.
pub enum Selected {
    Cpu { why: Option<String> },
    Cuda { ops: CudaOps, device: DeviceInfo },
}

impl Selected {
    /// `backend: ...`, the run's first line about its hardware.
    pub fn describe(&self, cpu_threads: usize) -> String {
        match self {
            Selected::Cpu { why: None } => {
                format!("backend: cpu (f32 reference, {cpu_threads} threads)")
            }
            Selected::Cpu { why: Some(why) } => format!(
                "backend: cpu ({why}; f32 reference, {cpu_threads} threads)"
            ),
            Selected::Cuda { device, .. } => format!(
                "backend: cuda ({}, driver {}, compute capability {}.{}, {:.1} GiB, device {}; bf16 weights, f32 master weights and AdamW state)",
                device.name,
                std::fs::read_to_string("/proc/driver/nvidia/version")
                    .ok()
                    .and_then(|text| driver_version(&text))
                    .unwrap_or_else(|| "version unknown".into()),
                device.compute_capability.0,
                device.compute_capability.1,
                device.total_memory_bytes as f64 / GIB,
                device.ordinal
            ),
        }
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// The driver version in the text of /proc/driver/nvidia/version ("NVRM version: NVIDIA UNIX
/// x86_64 Kernel Module  550.54.15  Tue Mar ...", or "... Open Kernel Module for x86_64
/// 580.65.06 ..."): the first number after "Kernel Module", read without a CUDA call.
fn driver_version(text: &str) -> Option<String> {
    let after = text.lines().next()?.split("Kernel Module").nth(1)?;
    after
        .split_whitespace()
        .find(|word| word.starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_string)
}

/// Picks the backend for `config`. `world_size > 1` (threads as FSDP ranks) is CPU only.
pub fn select(
    choice: BackendChoice,
    config: &ModelConfig,
    world_size: usize,
) -> Result<Selected, TrainError> {
    select_on(choice, config, world_size, 0)
}

/// [`select`] with CUDA on device `ordinal` (a launched rank's local rank: one process per GPU).
pub fn select_on(
    choice: BackendChoice,
    config: &ModelConfig,
    world_size: usize,
    ordinal: usize,
) -> Result<Selected, TrainError> {
    if choice == BackendChoice::Cpu {
        return Ok(Selected::Cpu { why: None });
    }
    if world_size > 1 {
        return match choice {
            BackendChoice::Cuda => Err(TrainError(format!(
                "--backend=cuda with --world-size={world_size}: --world-size runs the ranks as threads of one process, which would all share one GPU; \
                 for FSDP over several GPUs start one train process per GPU (--launcher, e.g. srun or RANK/WORLD_SIZE; see docs/distributed.md), or use --backend=cpu"
            ))),
            _ => Ok(Selected::Cpu {
                why: Some(format!(
                    "--world-size={world_size} runs its ranks on the CPU"
                )),
            }),
        };
    }
    // Presence first, so a machine without a GPU says so whatever the model.
    let opened = kormo_cuda::detect_devices()
        .and_then(|_| kormo_cuda::benchmark::open_for_model(config, ordinal));
    match opened {
        Ok((ops, device)) => Ok(Selected::Cuda { ops, device }),
        Err(e) => match choice {
            BackendChoice::Cuda => Err(TrainError(format!(
                "--backend=cuda: {e} (use --backend=cpu or auto)"
            ))),
            _ => Ok(Selected::Cpu {
                why: Some(match e {
                    kormo_cuda::CudaError::NoDevice(_) => e.to_string(),
                    kormo_cuda::CudaError::InvalidLaunch { .. } => {
                        format!("CUDA not usable for this model: {e}")
                    }
                    other => format!("CUDA not usable: {other}"),
                }),
            }),
        },
    }
}

/// The optimizer of a backend: AdamW with the recipe's hyperparameters, its state readable and
/// restorable by kormo_optim's tensor names, so checkpoints do not depend on the backend.
pub trait Optimizer<O: Ops>: Sized {
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
    ) -> Result<Self, TrainError>;

    /// Returns the global L2 norm of the model's gradients before clipping, and clips them to
    /// `grad_clip` (0: no clipping) for the next [`Optimizer::apply`]. Changes no weights and no
    /// optimizer state, so the caller can still decide against the update (a non-finite norm,
    /// the outlier guard).
    fn clip_grad_norm(&mut self, model: &mut Model<O>, grad_clip: f64) -> Result<f64, TrainError>;

    /// One update at learning rate `lr` with the gradients as the preceding
    /// [`Optimizer::clip_grad_norm`] clipped them.
    fn apply(&mut self, model: &mut Model<O>, lr: f64) -> Result<(), TrainError>;

    /// The f32 weights of record, one vector per tensor in canonical order.
    fn weights(&self, model: &Model<O>) -> Result<Vec<Vec<f32>>, TrainError>;

    fn state_names(&self) -> Vec<String>;
    fn state_tensor(&mut self, name: &str) -> Result<Vec<f32>, TrainError>;
    fn load_state_tensor(&mut self, name: &str, values: &[f32]) -> Result<(), TrainError>;
    fn step_count(&self) -> u64;
    fn set_step_count(&mut self, step: u64);
}

/// A backend the single-process step loop runs on.
pub trait TrainBackend: Ops + Sized {
    type Optimizer: Optimizer<Self>;
    /// Bytes per element of parameters, gradient accumulators and activations, and of optimizer
    /// state per parameter (see [`MemoryEstimate`]).
    const BYTES: ElementBytes;
    /// Where the memory is: `host` or `device`.
    const MEMORY: &'static str;

    /// Waits for all enqueued work (timing; a device fault surfaces here).
    fn synchronize(&self) -> Result<(), TrainError>;

    /// Bytes the backend's buffers held at most so far, where it counts them.
    fn measured_peak_bytes(&self) -> Option<u64>;
}

/// Element sizes of a backend's training state.
pub struct ElementBytes {
    pub weight: u64,
    pub grad: u64,
    pub activation: u64,
    pub optimizer_per_param: u64,
}

impl TrainBackend for Cpu {
    type Optimizer = AdamW;
    // Everything f32; AdamW's two moments.
    const BYTES: ElementBytes = ElementBytes {
        weight: 4,
        grad: 4,
        activation: 4,
        optimizer_per_param: 8,
    };
    const MEMORY: &'static str = "host";

    fn synchronize(&self) -> Result<(), TrainError> {
        // Every CPU op has finished when it returns.
        Ok(())
    }

    fn measured_peak_bytes(&self) -> Option<u64> {
        None
    }
}

impl TrainBackend for CudaOps {
    type Optimizer = CudaAdamW;
    // bf16 weights and activations (the few f32 statistics are counted as bf16), f32 gradient
    // accumulators, f32 master weights and two moments.
    const BYTES: ElementBytes = ElementBytes {
        weight: 2,
        grad: 4,
        activation: 2,
        optimizer_per_param: 12,
    };
    const MEMORY: &'static str = "device";

    fn synchronize(&self) -> Result<(), TrainError> {
        CudaOps::synchronize(self).map_err(|e| TrainError(e.to_string()))
    }

    fn measured_peak_bytes(&self) -> Option<u64> {
        Some(self.memory().peak_bytes as u64)
    }
}

/// Peak training memory of a stage on a backend, from the model's [`ActivationMemory`] sizing
/// for the stage's largest micro-batch (backend scratch, cuBLASLt's workspace and the CUDA
/// context come on top, hence an estimate).
///
/// [`ActivationMemory`]: kormo_model::ActivationMemory
/// In bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MemoryEstimate {
    pub weights: u64,
    pub grads: u64,
    pub optimizer: u64,
    pub activations: u64,
}

impl MemoryEstimate {
    pub fn new<O: TrainBackend>(
        config: &ModelConfig,
        micro_batch_tokens: usize,
        checkpointing: bool,
    ) -> Self {
        let params = config.param_count();
        let b = O::BYTES;
        MemoryEstimate {
            weights: params * b.weight,
            grads: params * b.grad,
            optimizer: params * b.optimizer_per_param,
            activations: kormo_model::ActivationMemory::new(
                config,
                micro_batch_tokens,
                checkpointing,
            )
            .bytes(b.activation),
        }
    }

    pub fn total(&self) -> u64 {
        self.weights + self.grads + self.optimizer + self.activations
    }

    /// `weights 1.9 GiB + gradients ... = 12.3 GiB`.
    pub fn describe(&self) -> String {
        format!(
            "weights {} + gradients {} + optimizer {} + activations {} = {}",
            human_bytes(self.weights),
            human_bytes(self.grads),
            human_bytes(self.optimizer),
            human_bytes(self.activations),
            human_bytes(self.total())
        )
    }
}

/// `1.86 GiB`, or `41.6 MiB` below a GiB.
pub fn human_bytes(bytes: u64) -> String {
    if bytes as f64 >= GIB {
        format!("{:.2} GiB", bytes as f64 / GIB)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

fn param_infos<O: Ops>(model: &Model<O>) -> Vec<ParamInfo> {
    model
        .param_specs()
        .iter()
        .map(|s| ParamInfo {
            name: s.name.clone(),
            numel: s.numel(),
            weight_decay: s.weight_decay(),
        })
        .collect()
}

/// Every parameter of `model`, copied to the host as f32.
pub fn read_params<O: Ops>(model: &Model<O>) -> Result<Vec<Vec<f32>>, TrainError> {
    model
        .param_specs()
        .iter()
        .map(|spec| {
            let mut values = vec![0.0; spec.numel()];
            model.read_param(&spec.name, &mut values).map(|()| values)
        })
        .collect::<Result<_, _>>()
        .map_err(TrainError::from)
}

impl Optimizer<Cpu> for AdamW {
    const KEEPS_MASTER_WEIGHTS: bool = false;

    fn create(
        config: AdamWConfig,
        model: &Model<Cpu>,
        threads: usize,
        _weights: Option<Vec<Vec<f32>>>,
    ) -> Result<Self, TrainError> {
        Ok(AdamW::new(config, param_infos(model))?.with_threads(threads))
    }

    fn clip_grad_norm(
        &mut self,
        model: &mut Model<Cpu>,
        grad_clip: f64,
    ) -> Result<f64, TrainError> {
        // Clipped in place: the gradients are the model's own f32 vectors.
        Ok(if grad_clip > 0.0 {
            kormo_optim::clip_grad_norm(model.grads_mut(), grad_clip)
        } else {
            kormo_optim::grad_norm(model.grads())
        })
    }

    fn apply(&mut self, model: &mut Model<Cpu>, lr: f64) -> Result<(), TrainError> {
        let (params, grads) = model.params_and_grads_mut();
        Ok(AdamW::step(self, params, grads, lr)?)
    }

    fn weights(&self, model: &Model<Cpu>) -> Result<Vec<Vec<f32>>, TrainError> {
        Ok(model.params().to_vec())
    }

    fn state_names(&self) -> Vec<String> {
        AdamW::state_names(self)
    }

    fn state_tensor(&mut self, name: &str) -> Result<Vec<f32>, TrainError> {
        Ok(self.state_tensor_mut(name)?.to_vec())
    }

    fn load_state_tensor(&mut self, name: &str, values: &[f32]) -> Result<(), TrainError> {
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

fn cuda_error(e: kormo_cuda::CudaError) -> TrainError {
    TrainError(format!("CUDA optimizer: {e}"))
}

impl Optimizer<CudaOps> for CudaAdamW {
    const KEEPS_MASTER_WEIGHTS: bool = true;

    fn create(
        config: AdamWConfig,
        model: &Model<CudaOps>,
        _threads: usize,
        weights: Option<Vec<Vec<f32>>>,
    ) -> Result<Self, TrainError> {
        // Without loaded f32 weights (a model from scratch) the masters start from the model's
        // bf16 values, which is what the first forward pass saw.
        let weights = match weights {
            Some(w) => w,
            None => read_params(model)?,
        };
        let slices: Vec<&[f32]> = weights.iter().map(Vec::as_slice).collect();
        let ops = model.ops().clone();
        let adamw =
            DeviceAdamW::new(&ops, config, param_infos(model), &slices).map_err(cuda_error)?;
        Ok(CudaAdamW { ops, adamw })
    }

    fn clip_grad_norm(
        &mut self,
        model: &mut Model<CudaOps>,
        grad_clip: f64,
    ) -> Result<f64, TrainError> {
        // The clip scale stays on the device; the update multiplies the gradients by it.
        let (_, grads) = model.params_and_grads_mut();
        self.adamw
            .clip_grad_norm(&self.ops, grads, (grad_clip > 0.0).then_some(grad_clip))
            .map_err(cuda_error)
    }

    fn apply(&mut self, model: &mut Model<CudaOps>, lr: f64) -> Result<(), TrainError> {
        let (params, grads) = model.params_and_grads_mut();
        self.adamw
            .apply(&self.ops, params, grads, lr)
            .map_err(cuda_error)
    }

    fn weights(&self, model: &Model<CudaOps>) -> Result<Vec<Vec<f32>>, TrainError> {
        Ok((0..model.param_specs().len())
            .map(|i| self.adamw.master(&self.ops, i))
            .collect())
    }

    fn state_names(&self) -> Vec<String> {
        self.adamw.state_names()
    }

    fn state_tensor(&mut self, name: &str) -> Result<Vec<f32>, TrainError> {
        self.adamw.state_tensor(&self.ops, name).map_err(cuda_error)
    }

    fn load_state_tensor(&mut self, name: &str, values: &[f32]) -> Result<(), TrainError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_cpu_needs_no_probe() {
        assert_eq!(BackendChoice::parse("auto"), Ok(BackendChoice::Auto));
        assert_eq!(BackendChoice::parse("cuda"), Ok(BackendChoice::Cuda));
        assert!(BackendChoice::parse("tpu")
            .unwrap_err()
            .contains("auto, cpu or cuda"));
        let cpu = select(BackendChoice::Cpu, &ModelConfig::tiny(), 1).unwrap();
        assert_eq!(cpu.describe(3), "backend: cpu (f32 reference, 3 threads)");
    }

    #[test]
    fn memory_estimates_follow_the_element_sizes() {
        let config = ModelConfig::proxy_1b();
        let n = config.param_count();
        let tokens = 4096;
        let cpu = MemoryEstimate::new::<Cpu>(&config, tokens, false);
        let cuda = MemoryEstimate::new::<CudaOps>(&config, tokens, false);
        // f32 everywhere + 2 moments = 16 bytes/param on the CPU; bf16 + f32 + 3 f32 = 18 on CUDA.
        assert_eq!(cpu.weights + cpu.grads + cpu.optimizer, 16 * n);
        assert_eq!(cuda.weights + cuda.grads + cuda.optimizer, 18 * n);
        assert_eq!(
            cpu.activations,
            2 * cuda.activations - 4 * 4 * tokens as u64
        );
        let saved = MemoryEstimate::new::<CudaOps>(&config, tokens, true);
        assert!(
            saved.activations < cuda.activations / 2,
            "{saved:?} vs {cuda:?}"
        );
        assert_eq!(
            cpu.total(),
            cpu.weights + cpu.grads + cpu.optimizer + cpu.activations
        );
        assert!(cuda
            .describe()
            .ends_with(&format!("= {:.2} GiB", cuda.total() as f64 / GIB)));
        assert_eq!(human_bytes(3 << 29), "1.50 GiB");
        assert_eq!(human_bytes(5 << 19), "2.5 MiB");
    }

    #[test]
    fn driver_version_from_the_kernel_module_line() {
        let text = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  (dvs-builder@U16-I3-B13-4-3)  Sun Jul 27 06:54:38 UTC 2025\nGCC version:  gcc version 12.2.0\n";
        assert_eq!(driver_version(text).as_deref(), Some("580.65.06"));
        let text = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n";
        assert_eq!(driver_version(text).as_deref(), Some("550.54.15"));
        assert_eq!(driver_version("nothing here"), None);
    }

    #[test]
    fn cuda_refusals_say_why_and_auto_falls_back() {
        // tiny's head dim 32 has no CUDA attention kernel: refused with or without a device.
        let tiny = ModelConfig::tiny();
        let err = select(BackendChoice::Cuda, &tiny, 1)
            .err()
            .expect("refused");
        assert!(err.0.starts_with("--backend=cuda: "), "{err}");
        let Selected::Cpu { why: Some(why) } = select(BackendChoice::Auto, &tiny, 1).unwrap()
        else {
            panic!("auto must fall back to the CPU for tiny")
        };
        assert!(
            why.contains("no CUDA device") || why.contains("head_dim 32"),
            "{why}"
        );
        let err = select(BackendChoice::Cuda, &ModelConfig::proxy_1b(), 2)
            .err()
            .unwrap();
        assert!(err.0.contains("--world-size=2"), "{err}");
    }
}
