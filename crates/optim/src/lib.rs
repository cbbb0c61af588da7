//! qtune-optim: the optimizer side of LoRA fine-tuning on Burn.
//!
//! - [`Optimizer`] with [`OptimizerConfig`]: AdamW as `torch.optim.AdamW`, or 8-bit AdamW as
//!   bitsandbytes `AdamW8bit` (blockwise dynamic 8-bit moments, block 256, signed map for the
//!   first moment and unsigned map for the second, 32-bit state below 4096 values). State is
//!   keyed by module path and saved with [`Optimizer::state_to_bytes`] /
//!   [`Optimizer::state_from_bytes`] for bit-exact resume; [`Optimizer::state_bytes`] reports
//!   its device footprint.
//! - [`LrSchedule`]: linear warm-up, then linear or cosine decay to a floor, or constant.
//! - [`clip_grad_norm`]: global-norm clipping over all trainable parameters (torch semantics).
//! - [`TokenAccumulator`]: gradient accumulation normalized by the total target-token count.
//!
//! One training step:
//! ```ignore
//! let mut acc = TokenAccumulator::new();
//! for mb in micro_batches {
//!     let (loss_sum, n_tokens) = model.loss_sum(mb);          // summed, not averaged
//!     acc.accumulate(&model, GradientsParams::from_grads(loss_sum.backward(), &model), n_tokens);
//! }
//! let mut grads = acc.finish(&model)?;                        // / total target tokens
//! let norm = clip_grad_norm(&model, &mut grads, cfg.max_grad_norm);
//! model = optim.step(schedule.lr_at(step), model, grads)?;
//! ```

mod blockwise;
#[doc(hidden)]
pub mod check;
pub mod dynamic_map;
mod error;
mod grads;
mod optimizer;
mod passes;
mod schedule;
mod state_io;
mod update;

pub use blockwise::BLOCK as BLOCKWISE_BLOCK;
pub use error::OptimError;
pub use grads::{
    clip_grad_norm, global_grad_norm, normalize_by_tokens, GradNorm, TokenAccumulator, CLIP_EPS,
};
pub use optimizer::{OptimKind, Optimizer, OptimizerConfig};
pub use schedule::{LrSchedule, ScheduleKind};
