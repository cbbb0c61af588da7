//! The optimizer's device ops: the flat concatenation that gathers a group of parameters or
//! gradients, and bitsandbytes' 8-bit blockwise Adam step (`kOptimizerStatic8bit2StateBlockwise`
//! with Adam, 256 values a block) over a group's flat buffers. qtune-optim owns the reference of
//! the step as Burn ops; a backend without a fused step hands the input back
//! ([`crate::QBackend::q_adam8_blockwise`]'s default) and the optimizer composes it.

use burn::tensor::{
    backend::Backend,
    ops::{FloatTensor, IntTensor},
};

/// Values per absmax block of bitsandbytes' blockwise optimizers.
pub const ADAM8_BLOCK: usize = 256;

/// A group's 8-bit Adam state: both moments as U8 codes (`n` each, `n` a multiple of
/// [`ADAM8_BLOCK`]) into the signed and unsigned dynamic maps, and their F32 per-block absmax
/// (`n / 256` each).
#[derive(Debug, Clone)]
pub struct Adam8State<B: Backend> {
    /// First-moment codes into the signed map.
    pub state1: IntTensor<B>,
    /// First-moment absmax per block.
    pub absmax1: FloatTensor<B>,
    /// Second-moment codes into the unsigned map.
    pub state2: IntTensor<B>,
    /// Second-moment absmax per block.
    pub absmax2: FloatTensor<B>,
}

/// One step's f32 scalars, as bitsandbytes' kernel receives them: the betas and `1 − beta`
/// (rounded once on the host, as the reference's scalar ops), the bias-corrected step size
/// (negative), `eps · sqrt(1 − beta2^t)`, and the decoupled weight-decay factor `1 − lr · wd`
/// applied after the update when there is one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adam8Scalars {
    /// `beta1`.
    pub beta1: f32,
    /// `1 − beta1`.
    pub one_minus_beta1: f32,
    /// `beta2`.
    pub beta2: f32,
    /// `1 − beta2`.
    pub one_minus_beta2: f32,
    /// `−lr · sqrt(1 − beta2^t) / (1 − beta1^t)`.
    pub step_size: f32,
    /// `eps · sqrt(1 − beta2^t)`.
    pub eps: f32,
    /// `1 − lr · weight_decay`, or `None` without decay.
    pub decay: Option<f32>,
}

/// The operands of one fused step: the group's F32 values `p` and gradients `g` (`n` each),
/// its state, the signed and unsigned maps (F32, 256 entries each, ascending) with the code
/// of the signed map's exact zero, and the scalars.
#[derive(Debug, Clone)]
pub struct Adam8Input<B: Backend> {
    /// Parameter values (F32, `n`).
    pub p: FloatTensor<B>,
    /// Gradients (F32, `n`).
    pub g: FloatTensor<B>,
    /// The state before the step.
    pub state: Adam8State<B>,
    /// `[signed, unsigned]` maps.
    pub maps: [FloatTensor<B>; 2],
    /// The signed map's code of 0.0: a first moment keeps its sign across requantization.
    pub signed_zero: u8,
    /// The step's scalars.
    pub s: Adam8Scalars,
}
