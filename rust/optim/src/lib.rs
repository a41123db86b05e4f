//! kormo-optim: the optimizer side of a training step, on host f32 buffers.
//!
//! * [`AdamW`] — decoupled weight decay, fp32 master parameters and moments, a per-tensor
//!   weight-decay flag, bias correction; its state (step count + `<param>.exp_avg` /
//!   `<param>.exp_avg_sq` tensors) is exposed by name for exact checkpoint round trips.
//! * [`clip_grad_norm`] — global L2 gradient-norm clipping returning the pre-clip norm.
//! * [`LrSchedule`] — warmup-stable-decay (KORMo's), cosine and constant learning rates.
//!
//! The crate does not know the model: tensors are described by [`ParamInfo`] (name, length,
//! decay flag), which the trainer builds from `kormo_model::params::layout`.

mod adamw;
mod clip;
mod error;
mod schedule;

pub use adamw::{AdamW, AdamWConfig, ParamInfo};
pub use clip::{clip_grad_norm, grad_norm, sum_of_squares};
pub use error::OptimError;
pub use schedule::{LrSchedule, ScheduleKind};
