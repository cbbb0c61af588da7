//! bitsandbytes' 8-bit blockwise Adam step in one launch (`kOptimizerStatic8bit2StateBlockwise`,
//! Adam, 256 values a block): where the reference composes it from ~130 Burn ops (each a launch
//! the host pays for), a plane (warp) here takes one block through dequantization of both
//! moments, their update, the block's new absmax, the parameter update and requantization.
//!
//! The f32 operations and their order are the reference's (`qtune-optim`'s `update.rs`), but
//! NVRTC contracts `a·b + c` into one FMA as nvcc does for bitsandbytes' own kernel, so a moment
//! can differ from the composed one in its last bit, and a code by one step where that moves it
//! across a midpoint (the GPU check bounds both).

use burn::tensor::DType;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::rows::rows_launch;
use crate::cuda::kernels::search_8bit;
use crate::cuda::launch::{array, empty, CubeB};
use crate::{Adam8Input, Adam8State, ADAM8_BLOCK};

/// Values per lane: a plane of 32 lanes per 256-value block.
const PER_LANE: usize = ADAM8_BLOCK / 32;

/// One 8-bit Adam step; a plane per block, lane `l` holding values `l + 32·k` (`k < 8`). Both
/// 256-entry maps sit in shared memory (`maps`: signed then unsigned; 256 threads a cube load
/// them). Writes new values, codes and absmax to the `*_out` arrays.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn adam8_kernel(
    p: &Array<f32>,
    g: &Array<f32>,
    c1: &Array<u8>,
    c2: &Array<u8>,
    a1: &Array<f32>,
    a2: &Array<f32>,
    map1: &Array<f32>,
    map2: &Array<f32>,
    p_out: &mut Array<f32>,
    c1_out: &mut Array<u8>,
    c2_out: &mut Array<u8>,
    a1_out: &mut Array<f32>,
    a2_out: &mut Array<f32>,
    blocks: usize,
    beta1: f32,
    omb1: f32,
    beta2: f32,
    omb2: f32,
    step_size: f32,
    eps: f32,
    decay: f32,
    #[comptime] signed_zero: u32,
    #[comptime] with_decay: bool,
) {
    let mut lut = SharedMemory::<f32>::new(512usize);
    let t = UNIT_POS as usize;
    lut[t] = map1[t];
    lut[t + 256usize] = map2[t];
    sync_cube();
    let block = CUBE_POS * 8usize + usize::cast_from(UNIT_POS_Y);
    if block >= blocks {
        terminate!();
    }
    let lane = usize::cast_from(UNIT_POS_X);
    let base = block * 256usize + lane;
    let (am1, am2) = (a1[block], a2[block]);
    let mut s1 = Array::<f32>::new(PER_LANE);
    let mut s2 = Array::<f32>::new(PER_LANE);
    let mut m1 = 0.0f32;
    let mut m2 = 0.0f32;
    #[unroll]
    for k in 0..PER_LANE {
        let i = base + k * 32usize;
        let gv = g[i];
        let v2 = lut[256usize + usize::cast_from(c2[i])] * am2;
        let v2 = v2 * beta2 + gv * omb2 * gv;
        let v1 = lut[usize::cast_from(c1[i])] * am1;
        let v1 = v1 * beta1 + gv * omb1;
        s1[k] = v1;
        s2[k] = v2;
        m1 = f32::max(m1, f32::abs(v1));
        m2 = f32::max(m2, f32::abs(v2));
    }
    let n1 = plane_max(m1);
    let n2 = plane_max(m2);
    if lane == 0usize {
        a1_out[block] = n1;
        a2_out[block] = n2;
    }
    // An all-zero block normalizes by the smallest normal instead of 0/0 (as the reference).
    let d1 = f32::max(n1, 1.175_494_4e-38f32);
    let d2 = f32::max(n2, 1.175_494_4e-38f32);
    #[unroll]
    for k in 0..PER_LANE {
        let i = base + k * 32usize;
        let (v1, v2) = (s1[k], s2[k]);
        let mut pv = p[i] + v1 / (f32::sqrt(v2) + eps) * step_size;
        if with_decay {
            pv *= decay;
        }
        p_out[i] = pv;
        let mut q1 = search_8bit(v1 / d1, &lut, 0usize);
        // Keep the first moment's sign: a small value must not decode as 0 of the other sign.
        if q1 < signed_zero {
            if v1 > 0.0f32 {
                q1 += 1u32;
            }
        } else if v1 < 0.0f32 {
            q1 -= 1u32;
        }
        c1_out[i] = u8::cast_from(q1);
        c2_out[i] = u8::cast_from(search_8bit(v2 / d2, &lut, 256usize));
    }
}

/// Whether [`adam8_blockwise`] takes `a`: F32 values, gradients and maps, U8 codes, a whole
/// number of blocks, and every length consistent.
fn fits<R: CubeRuntime>(a: &Adam8Input<impl CubeB<R>>) -> bool {
    let n = a.p.meta.num_elements();
    let f32_of =
        |t: &CubeTensor<R>, len: usize| t.dtype == DType::F32 && t.meta.num_elements() == len;
    let codes = |t: &CubeTensor<R>| t.dtype == DType::U8 && t.meta.num_elements() == n;
    let s = &a.state;
    n > 0
        && n % ADAM8_BLOCK == 0
        && f32_of(&a.p, n)
        && f32_of(&a.g, n)
        && codes(&s.state1)
        && codes(&s.state2)
        && f32_of(&s.absmax1, n / ADAM8_BLOCK)
        && f32_of(&s.absmax2, n / ADAM8_BLOCK)
        && a.maps.iter().all(|m| f32_of(m, 256))
}

/// [`crate::QBackend::q_adam8_blockwise`] on CUDA: one [`adam8_kernel`] launch, into new
/// buffers (the inputs are left as they were). Hands back an input it does not fit.
///
/// # Errors
/// The input, unchanged, when it does not fit (see `fits`).
#[allow(clippy::result_large_err)]
pub fn adam8_blockwise<R: CubeRuntime, B: CubeB<R>>(
    a: Adam8Input<B>,
) -> Result<(CubeTensor<R>, Adam8State<B>), Adam8Input<B>> {
    if !fits(&a) {
        return Err(a);
    }
    let n = a.p.meta.num_elements();
    let blocks = n / ADAM8_BLOCK;
    let [p, g] = [a.p, a.g].map(into_contiguous);
    let st = a.state;
    let [c1, c2, a1, a2] = [st.state1, st.state2, st.absmax1, st.absmax2].map(into_contiguous);
    let [m1, m2] = a.maps.map(into_contiguous);
    let p_out = empty(&p, vec![n], DType::F32);
    let c1_out = empty(&p, vec![n], DType::U8);
    let c2_out = empty(&p, vec![n], DType::U8);
    let a1_out = empty(&p, vec![blocks], DType::F32);
    let a2_out = empty(&p, vec![blocks], DType::F32);
    let (count, dim, _) = rows_launch(blocks, ADAM8_BLOCK);
    let s = a.s;
    // SAFETY: p, g, codes n values; absmax n / 256; maps 256 each (checked by `fits`); a plane
    // per block and 8 planes (256 threads) a cube, as the kernel's map load needs.
    unsafe {
        adam8_kernel::launch_unchecked::<R>(
            &p.client,
            count,
            dim,
            array(&p, n),
            array(&g, n),
            array(&c1, n),
            array(&c2, n),
            array(&a1, blocks),
            array(&a2, blocks),
            array(&m1, 256),
            array(&m2, 256),
            array(&p_out, n),
            array(&c1_out, n),
            array(&c2_out, n),
            array(&a1_out, blocks),
            array(&a2_out, blocks),
            blocks,
            s.beta1,
            s.one_minus_beta1,
            s.beta2,
            s.one_minus_beta2,
            s.step_size,
            s.eps,
            s.decay.unwrap_or(1.0),
            u32::from(a.signed_zero),
            s.decay.is_some(),
        );
    }
    let state = Adam8State {
        state1: c1_out,
        absmax1: a1_out,
        state2: c2_out,
        absmax2: a2_out,
    };
    Ok((p_out, state))
}
