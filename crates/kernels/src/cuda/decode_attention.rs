//! The attention core for one query row (T = 1: a decode step) in one launch: a cube per
//! (batch row, query head) computes the head's scores against the whole cache, its softmax and
//! the weighted sum of the values, where the general path (`attention.rs`) runs a cuBLAS GEMM,
//! the softmax kernel and a second GEMM. Those three launches took ~12 µs of each GPT-J block's
//! ~118 µs at decode (H100, session 21's step breakdown).
//!
//! Numerics as the general path: scores in f32 from the inputs' products, scaled by `1/div`, a
//! masked one `f32::MIN`; the softmax in f32 with the probabilities rounded to the values' dtype
//! (also returned, for a backward); the output summed in f32 from those rounded probabilities
//! and rounded once. Only the f32 summation order differs from cuBLAS'.

use burn::tensor::DType;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;
use cubecl::CubeDim;

use super::launch::{array, empty};

/// The longest cache the kernel takes (its scores live in shared memory: 16 KiB of f32); longer
/// ones take the general path.
pub(super) const MAX_LEN: usize = 4096;

/// Threads per cube: 8 planes of 32.
const THREADS: usize = 256;

/// `o[b, 0, h] = Σ_j p_j·v[b, j, h / n_rep]` with `p = softmax_j(masked(q[b, 0, h]·k[b, j, h /
/// n_rep] / div))` for cube `b·heads + h` (module docs); `p` is also written, `[B, H, 1, L]`.
/// `k` is read as vectors of `vec` values (`hd` a multiple of `vec`), `q` and `v` as values;
/// `hd` divides 256 (the output sum splits the cache rows over `256 / hd` groups of threads,
/// added in group order); `smem` ≥ `len` scores fit in shared memory.
// A comptime flag guards a runtime condition in its own `if` (see fused.rs).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments, clippy::collapsible_if)]
fn decode_attention_kernel<F: Float, N: Size>(
    q: &Array<F>,
    k: &Array<Vector<F, N>>,
    v: &Array<F>,
    mask: &Array<u8>,
    o: &mut Array<F>,
    p: &mut Array<F>,
    heads: usize,
    n_rep: usize,
    len: usize,
    inv_div: f32,
    #[comptime] hd: usize,
    #[comptime] vec: usize,
    #[comptime] smem: usize,
    #[comptime] masked: bool,
) {
    let bh = CUBE_POS;
    let b = bh / heads;
    let kv_heads = heads / n_rep;
    let hk = (bh % heads) / n_rep;
    let lane = UNIT_POS_X;
    let plane = UNIT_POS_Y as usize;
    let tid = plane * 32usize + usize::cast_from(lane);
    let mut qs = SharedMemory::<f32>::new(hd);
    let mut sc = SharedMemory::<f32>::new(smem);
    let mut red = SharedMemory::<f32>::new(8usize);
    let mut part = SharedMemory::<f32>::new(256usize);
    let iters = len.div_ceil(256usize);
    let chunks = comptime!(hd / vec);
    let groups = comptime!(256 / hd);

    // The query head in f32, shared by every thread (hd ≤ 256: one value per thread).
    if tid < hd {
        qs[tid] = f32::cast_from(q[bh * hd + tid]);
    }
    sync_cube();

    // Scores: a thread per cache row.
    let mut mx = 0.0f32;
    mx -= 3.402_823_5e38f32;
    for it in 0..iters {
        let j = tid + it * 256usize;
        if j < len {
            let kb = ((b * len + j) * kv_heads + hk) * chunks;
            let mut acc = 0.0f32;
            #[unroll]
            for c in 0..chunks {
                let kv = k[kb + c];
                #[unroll]
                for i in 0..vec {
                    acc += f32::cast_from(kv[i]) * qs[c * vec + i];
                }
            }
            let mut s = acc * inv_div;
            if masked {
                if mask[b * len + j] != 0u8 {
                    s = 0.0f32 - 3.402_823_5e38f32;
                }
            }
            sc[j] = s;
            mx = select(s > mx, s, mx);
        }
    }
    // The row's maximum and sum over the cube: each plane's, then the 8 planes' in order.
    mx = plane_max(mx);
    if lane == 0u32 {
        red[plane] = mx;
    }
    sync_cube();
    let mut row_max = red[0];
    #[unroll]
    for i in 1..8usize {
        row_max = select(red[i] > row_max, red[i], row_max);
    }
    sync_cube();
    let mut sum = 0.0f32;
    for it in 0..iters {
        let j = tid + it * 256usize;
        if j < len {
            sum += f32::exp(sc[j] - row_max);
        }
    }
    sum = plane_sum(sum);
    if lane == 0u32 {
        red[plane] = sum;
    }
    sync_cube();
    let mut total = 0.0f32;
    #[unroll]
    for i in 0..8usize {
        total += red[i];
    }
    let inv_sum = 1.0f32 / total;
    // Probabilities in F (returned), kept as their f32 values for the sum.
    for it in 0..iters {
        let j = tid + it * 256usize;
        if j < len {
            let pj = F::cast_from(f32::exp(sc[j] - row_max) * inv_sum);
            p[bh * len + j] = pj;
            sc[j] = f32::cast_from(pj);
        }
    }
    sync_cube();

    // Output: thread (g, d) sums rows g, g + groups, … of column d; the groups added in order.
    let g = tid / hd;
    let d = tid % hd;
    let rows_g = len.div_ceil(groups);
    let mut acc = 0.0f32;
    for it in 0..rows_g {
        let j = it * groups + g;
        if j < len {
            acc += sc[j] * f32::cast_from(v[((b * len + j) * kv_heads + hk) * hd + d]);
        }
    }
    part[tid] = acc;
    sync_cube();
    if g == 0usize {
        let mut out = 0.0f32;
        #[unroll]
        for gi in 0..groups {
            out += part[gi * hd + d];
        }
        o[bh * hd + d] = F::cast_from(out);
    }
}

/// `(o [B, 1, H, hd], p [B, H, 1, L])` of one query row by [`decode_attention_kernel`], or `None`
/// (nothing launched) where it does not apply: T ≠ 1, a cache longer than [`MAX_LEN`], a head
/// dim not dividing 256, a dtype other than F32/F16/BF16. `q`, `k`, `v` contiguous and checked
/// by the caller (`dims` = `[b, t, l, h, h_kv, hd]`); `mask [B, 1, 1, L]` u8-backed bools.
pub(super) fn attention<R: CubeRuntime>(
    q: &CubeTensor<R>,
    k: &CubeTensor<R>,
    v: &CubeTensor<R>,
    mask: Option<&CubeTensor<R>>,
    div: f32,
    [b, t, l, h, h_kv, hd]: [usize; 6],
) -> Option<(CubeTensor<R>, CubeTensor<R>)> {
    if t != 1
        || l == 0
        || l > MAX_LEN
        || hd == 0
        || hd > THREADS
        || THREADS % hd != 0
        || !matches!(q.dtype, DType::F32 | DType::F16 | DType::BF16)
        || b * h > 65_535
    {
        return None;
    }
    let mask = match mask {
        Some(m) => {
            let m = into_contiguous(m.clone());
            if m.meta.shape().to_vec() != vec![b, 1, 1, l] || m.dtype.size() != 1 {
                return None;
            }
            Some(m)
        }
        None => None,
    };
    let masked = mask.is_some();
    let mask = mask.unwrap_or_else(|| empty(q, vec![1], DType::U8));
    let vec = [8usize, 4, 2, 1].into_iter().find(|w| hd % w == 0)?;
    let o = empty(q, vec![b, 1, h, hd], q.dtype);
    let p = empty(q, vec![b, h, 1, l], v.dtype);
    let smem = l.next_power_of_two().max(THREADS);
    let count = CubeCount::Static((b * h) as u32, 1, 1);
    let dim = CubeDim::new_2d(32, 8);
    // SAFETY: contiguous q [B, 1, H, hd], k, v [B, L, H_kv, hd], mask B·L bytes, o and p fresh of
    // their shapes; every index is below those (cube < B·H, row < L, column < hd).
    unsafe {
        launch_float!(
            q.dtype,
            else return None,
            decode_attention_kernel(
                &q.client,
                count,
                dim,
                vec,
                array(q, b * h * hd),
                array(k, b * l * h_kv * hd),
                array(v, b * l * h_kv * hd),
                array(&mask, if masked { b * l } else { 1 }),
                array(&o, b * h * hd),
                array(&p, b * h * l),
                h,
                h / h_kv,
                l,
                1.0 / div,
                hd,
                vec,
                smem,
                masked,
            )
        )
    }
    Some((o, p))
}
