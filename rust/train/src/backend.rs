//! The backends a stage trains on, and how `--backend` picks one.
//!
//! A backend is an [`Ops`] implementation with the engines the step loop drives on it
//! ([`TrainBackend`]): at world size 1 `kormo_dist::SingleRank` (the model and a whole-model
//! AdamW: the host AdamW of kormo_optim updating the f32 parameters in place on the CPU, the
//! device AdamW with f32 master weights on CUDA), and for ranks the sharded engine
//! ([`TrainBackend::Sharded`]: `FsdpRank` on the CPU, `DeviceFsdpRank` over NCCL on CUDA).
//! Both write the same checkpoint files, read back to the host.
//!
//! Selection (`--backend auto|cpu|cuda`): auto takes CUDA when a device is present and the model
//! passes `CudaOps::check_config`, else the CPU, and says why; an explicit `cuda` that cannot be
//! had is an error carrying the same reason.

use crate::error::TrainError;
use kormo_cpu::CpuOps;
use kormo_cuda::{CudaOps, DeviceInfo};
use kormo_dist::{
    DeviceFsdpRank, FsdpConfig, FsdpEngine, FsdpRank, HostTransport, SingleOps, Watchdog,
    WholeAdamW,
};
use kormo_model::{Model, ModelConfig};
use kormo_optim::AdamWConfig;
use std::sync::Arc;

/// The CPU backend: the f32 reference (and the backend of the thread ranks).
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
                "backend: cuda ({}, driver {}, compute capability {}.{}, {:.1} GiB, device {}; bf16 weights, f32 master weights and AdamW state; {})",
                device.name,
                std::fs::read_to_string("/proc/driver/nvidia/version")
                    .ok()
                    .and_then(|text| driver_version(&text))
                    .unwrap_or_else(|| "version unknown".into()),
                device.compute_capability.0,
                device.compute_capability.1,
                device.total_memory_bytes as f64 / GIB,
                device.ordinal,
                kormo_cuda::kernel_launch::AttentionPath::for_capability(device.compute_capability).describe()
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
        .and_then(|_| CudaOps::for_model(config, ordinal));
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

/// A backend a stage trains on: [`SingleOps`] gives its world-size-1 engine
/// (`kormo_dist::SingleRank<Self>`), [`TrainBackend::Sharded`] its FSDP rank.
pub trait TrainBackend: SingleOps {
    /// The FSDP engine of one rank on this backend.
    type Sharded: FsdpEngine;
    /// True when the sharded engine's collectives can block without a timeout (NCCL), so a
    /// launched rank runs a [`Watchdog`].
    const NEEDS_WATCHDOG: bool;
    /// True when the f32 weights of record live in the optimizer (master weights), so the
    /// values a checkpoint was loaded with must seed it.
    const KEEPS_MASTER_WEIGHTS: bool = <Self::AdamW as WholeAdamW<Self>>::KEEPS_MASTER_WEIGHTS;
    /// Bytes per element of parameters, gradient accumulators and activations, and of optimizer
    /// state per parameter (see [`MemoryEstimate`]).
    const BYTES: ElementBytes;
    /// Where the memory is: `host` or `device`.
    const MEMORY: &'static str;

    /// Waits for all enqueued work (timing; a device fault surfaces here).
    fn synchronize(&self) -> Result<(), TrainError>;

    /// Bytes the backend's buffers held at most so far, where it counts them.
    fn measured_peak_bytes(&self) -> Option<u64>;

    /// The sharded engine over `model` (built with the same seed on every rank) for rank
    /// `world.rank()` of the host group `world`; `watchdog` watches its communicators.
    fn sharded(
        model: Model<Self>,
        world: &Arc<dyn HostTransport>,
        adamw: AdamWConfig,
        fsdp: FsdpConfig,
        watchdog: Option<&Watchdog>,
    ) -> Result<Self::Sharded, TrainError>;
}

/// Element sizes of a backend's training state.
pub struct ElementBytes {
    pub weight: u64,
    pub grad: u64,
    pub activation: u64,
    pub optimizer_per_param: u64,
}

impl TrainBackend for Cpu {
    type Sharded = FsdpRank<Cpu>;
    // Every host collective has the group's timeout.
    const NEEDS_WATCHDOG: bool = false;
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

    fn sharded(
        model: Model<Self>,
        world: &Arc<dyn HostTransport>,
        adamw: AdamWConfig,
        fsdp: FsdpConfig,
        _watchdog: Option<&Watchdog>,
    ) -> Result<Self::Sharded, TrainError> {
        Ok(FsdpRank::new(world.clone(), model, adamw, fsdp)?)
    }
}

impl TrainBackend for CudaOps {
    type Sharded = DeviceFsdpRank;
    // NCCL waits forever for a peer that died inside a collective.
    const NEEDS_WATCHDOG: bool = true;
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

    fn sharded(
        model: Model<Self>,
        world: &Arc<dyn HostTransport>,
        adamw: AdamWConfig,
        fsdp: FsdpConfig,
        watchdog: Option<&Watchdog>,
    ) -> Result<Self::Sharded, TrainError> {
        Ok(DeviceFsdpRank::connect(world.as_ref(), model, adamw, fsdp, watchdog)?)
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
    /// What the LM head chunked over tokens (kormo_model's default chunk) does not hold of the
    /// `[tokens, vocab]` logits, net of the chunk's own buffers; 0 when the micro-batch fits one
    /// chunk.
    pub logits_not_held: u64,
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
            activations: kormo_model::ActivationMemory::new(config, micro_batch_tokens, checkpointing)
                .bytes(b.activation),
            logits_not_held: kormo_model::ActivationMemory::with_head_chunk(
                config,
                micro_batch_tokens,
                checkpointing,
                micro_batch_tokens,
            )
            .bytes(b.activation)
            .saturating_sub(
                kormo_model::ActivationMemory::new(config, micro_batch_tokens, checkpointing).bytes(b.activation),
            ),
        }
    }

    pub fn total(&self) -> u64 {
        self.weights + self.grads + self.optimizer + self.activations
    }

    /// `weights 1.9 GiB + gradients ... = 12.3 GiB`, the activations with what the chunked LM
    /// head saves where it saves anything.
    pub fn describe(&self) -> String {
        let head = match self.logits_not_held {
            0 => String::new(),
            freed => format!(
                " (the LM head in chunks of {} tokens: {} of logits not held)",
                kormo_model::DEFAULT_HEAD_CHUNK_TOKENS,
                human_bytes(freed)
            ),
        };
        format!(
            "weights {} + gradients {} + optimizer {} + activations {}{head} = {}",
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
        // One chunk's worth of tokens: nothing to save, nothing said. Four: the logits of three
        // chunks (less the chunk's buffers) are not held, and the line says so.
        assert_eq!(cuda.logits_not_held, 0);
        assert!(!cuda.describe().contains("LM head"));
        let big = MemoryEstimate::new::<CudaOps>(&config, 4 * tokens, false);
        let rows = 3 * tokens as u64 * config.vocab as u64 * 2;
        assert!(big.logits_not_held > rows * 9 / 10 && big.logits_not_held < rows, "{big:?}");
        assert!(big.describe().contains("(the LM head in chunks of 4096 tokens: "), "{}", big.describe());
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
