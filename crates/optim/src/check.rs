//! For the GPU check (`cargo xtask bench gpu-check`): one 8-bit blockwise Adam step on host
//! data, through the backend's fused step or through the Burn-op reference, so the two (and the
//! CPU) can be compared on the same inputs. Not part of the optimizer's API.

use burn::tensor::{DType, Int, IntDType, Tensor, TensorData};
use qtune_kernels::QBackend;

use crate::blockwise::Maps;
use crate::update::{self, Blockwise8, Hyper, Step};

/// A flat group's values and 8-bit state on the host: `p` (`n`), codes (`n` each), absmax
/// (`n / 256` each).
#[derive(Debug, Clone, PartialEq)]
pub struct Adam8Host {
    pub p: Vec<f32>,
    pub state1: Vec<u8>,
    pub absmax1: Vec<f32>,
    pub state2: Vec<u8>,
    pub absmax2: Vec<f32>,
}

/// A fresh state for `p`: zero codes (the maps' zeros) and zero absmax.
pub fn adam8_fresh(p: Vec<f32>) -> Adam8Host {
    let n = p.len();
    let nb = n.div_ceil(crate::blockwise::BLOCK);
    Adam8Host {
        p,
        state1: vec![crate::dynamic_map::SIGNED_ZERO_CODE; n],
        absmax1: vec![0.0; nb],
        state2: vec![crate::dynamic_map::UNSIGNED_ZERO_CODE; n],
        absmax2: vec![0.0; nb],
    }
}

/// One step (1-based `step`, `lr`, torch's default betas and eps, `weight_decay`) of `x` with
/// gradient `g` on `device`: the backend's fused step where it has one when `fused`, else the
/// reference composed of Burn ops.
///
/// # Panics
/// On lengths that disagree, or a read-back failure (a check harness, not user input).
pub fn adam8_step<B: QBackend>(
    device: &B::Device,
    x: &Adam8Host,
    g: &[f32],
    (step, lr, weight_decay): (u64, f64, f64),
    fused: bool,
) -> Adam8Host {
    let n = x.p.len();
    assert_eq!(g.len(), n, "gradient length");
    let float = |v: &[f32]| {
        Tensor::<B, 1>::from_data(TensorData::new(v.to_vec(), [v.len()]), (device, DType::F32))
    };
    let codes = |v: &[u8]| {
        Tensor::<B, 1, Int>::from_data(TensorData::new(v.to_vec(), [v.len()]), (device, DType::U8))
    };
    let state = Blockwise8 {
        state1: codes(&x.state1),
        absmax1: float(&x.absmax1),
        state2: codes(&x.state2),
        absmax2: float(&x.absmax2),
    };
    let s = Step {
        n: step,
        lr,
        h: Hyper {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        },
    };
    let maps = Maps::new(device);
    let (p, st) = if fused {
        update::bnb_adam8_blockwise(float(&x.p), float(g), state, &maps, s)
    } else {
        update::bnb_adam8_blockwise_ops(float(&x.p), float(g), state, &maps, s)
    };
    let f = |t: Tensor<B, 1>| t.into_data().convert::<f32>().to_vec::<f32>().expect("f32");
    let u = |t: Tensor<B, 1, Int>| t.cast(IntDType::U8).into_data().to_vec::<u8>().expect("u8");
    Adam8Host {
        p: f(p),
        state1: u(st.state1),
        absmax1: f(st.absmax1),
        state2: u(st.state2),
        absmax2: f(st.absmax2),
    }
}
