//! The attention core for one query row (T = 1: a decode step), split over the cache rows as
//! flash-decoding does: [`decode_attn_split_kernel`] gives each (batch row, query head, split of
//! 32 cache rows) a cube that scores its rows (a plane per row, the row's loads coalesced), and
//! leaves the split's maximum, exponential sum and unnormalized weighted sum of the values;
//! [`decode_attn_combine_kernel`] (a cube per batch row and head) rescales and adds the splits
//! and writes the probabilities. Two launches where the general path (`attention.rs`) runs a
//! cuBLAS GEMM, the softmax kernel and a second GEMM, ~12 µs of each GPT-J block's ~118 at
//! decode (H100, session 21). A first version with one cube per head (16 cubes on 132 SMs) was
//! correct and slower (15.9 µs, 12.5 % occupancy): hence the splits.
//!
//! Numerics: scores in f32 from the inputs' products (each row's sum as `plane_sum` adds its
//! lanes), scaled by `1/div`, a masked one `f32::MIN`; the softmax in f32. The output sums the
//! unrounded `exp(s − m)` weights in f32 and divides once; the general path rounds the
//! probabilities to the values' dtype before its product, so the two differ by that rounding
//! (relative 2⁻⁹ per weight in bf16, unbiased) besides summation order. The returned
//! probabilities (for a backward) are rounded to the values' dtype as the general path's.

use burn::tensor::DType;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;
use cubecl::CubeDim;

use super::launch::{array, empty};

/// Cache rows per split (4 per plane of a cube of 8 planes).
const SPLIT_ROWS: usize = 32;

/// The longest cache the kernels take (128 splits); longer ones take the general path.
pub(super) const MAX_LEN: usize = 4096;

/// Threads per cube: 8 planes of 32.
const THREADS: usize = 256;

/// Split `CUBE_POS % splits` of batch row × head `CUBE_POS / splits` (module docs): rows
/// `split·32 ..` of the cache; plane `p` scores rows `p, p + 8, p + 16, p + 24` of them. Writes
/// the rows' scaled, masked scores to `scores [B·H, L]`, the split's max and exponential sum to
/// `ml [B·H·splits, 2]` and `Σ_j exp(s_j − max)·v_j` to `po [B·H·splits, hd]`. `q` and `k` are
/// read as vectors of `vec` values (`hd = chunks·vec`, `chunks ≤ 32·lane_vecs`), `v` as values;
/// `hd` divides 256.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments, clippy::collapsible_if)]
fn decode_attn_split_kernel<F: Float, N: Size>(
    q: &Array<Vector<F, N>>,
    k: &Array<Vector<F, N>>,
    v: &Array<F>,
    mask: &Array<u8>,
    scores: &mut Array<f32>,
    ml: &mut Array<f32>,
    po: &mut Array<f32>,
    heads: usize,
    n_rep: usize,
    len: usize,
    splits: usize,
    inv_div: f32,
    #[comptime] hd: usize,
    #[comptime] vec: usize,
    #[comptime] lane_vecs: usize,
    #[comptime] masked: bool,
) {
    let cube = CUBE_POS;
    let bh = cube / splits;
    let first = (cube % splits) * 32usize;
    let b = bh / heads;
    let kv_heads = heads / n_rep;
    let hk = (bh % heads) / n_rep;
    let lane = usize::cast_from(UNIT_POS_X);
    let plane = usize::cast_from(UNIT_POS_Y);
    let tid = plane * 32usize + lane;
    let chunks = comptime!(hd / vec);
    let groups = comptime!(256 / hd);
    let mut sc = SharedMemory::<f32>::new(32usize);
    let mut red = SharedMemory::<f32>::new(16usize);
    let mut part = SharedMemory::<f32>::new(256usize);

    // The lane's query vectors (c = lane, lane + 32, …), in registers.
    let mut qv = Array::<Vector<F, N>>::new(lane_vecs);
    #[unroll]
    for u in 0..lane_vecs {
        let c = lane + u * 32usize;
        qv[u] = q[bh * chunks + select(c < chunks, c, 0usize)];
    }
    // Scores of the plane's 4 rows: all loads first, then the sums.
    let mut kv = Array::<Vector<F, N>>::new(comptime!(4 * lane_vecs));
    #[unroll]
    for r in 0..4usize {
        let j = first + plane + r * 8usize;
        let jc = select(j < len, j, len - 1usize);
        let kb = ((b * len + jc) * kv_heads + hk) * chunks;
        #[unroll]
        for u in 0..lane_vecs {
            let c = lane + u * 32usize;
            kv[r * lane_vecs + u] = k[kb + select(c < chunks, c, 0usize)];
        }
    }
    #[unroll]
    for r in 0..4usize {
        let j = first + plane + r * 8usize;
        let mut acc = 0.0f32;
        #[unroll]
        for u in 0..lane_vecs {
            if lane + u * 32usize < chunks {
                let kr = kv[r * lane_vecs + u];
                let qr = qv[u];
                #[unroll]
                for i in 0..vec {
                    acc += f32::cast_from(kr[i]) * f32::cast_from(qr[i]);
                }
            }
        }
        let mut s = plane_sum(acc) * inv_div;
        if j < len {
            if masked {
                if mask[b * len + j] != 0u8 {
                    s = 0.0f32 - 3.402_823_5e38f32;
                }
            }
            if lane == 0usize {
                sc[plane + r * 8usize] = s;
                scores[bh * len + j] = s;
            }
        }
    }
    sync_cube();
    // The split's maximum and exponential sum (plane 0, over its ≤ 32 rows).
    let rows = select(len - first < 32usize, len - first, 32usize);
    if plane == 0usize {
        let mut m = 0.0f32;
        m -= 3.402_823_5e38f32;
        if lane < rows {
            m = sc[lane];
        }
        m = plane_max(m);
        let mut e = 0.0f32;
        if lane < rows {
            e = f32::exp(sc[lane] - m);
            sc[lane] = e;
        }
        let l = plane_sum(e);
        if lane == 0usize {
            red[0] = m;
            red[1] = l;
        }
    }
    sync_cube();
    // Σ_j e_j·v_j over the split's rows: thread (g, d) takes rows g, g + groups, … of column d.
    let g = tid / hd;
    let d = tid % hd;
    let mut acc = 0.0f32;
    #[unroll]
    for it in 0..comptime!(32 / groups) {
        let r = it * groups + g;
        if r < rows {
            let j = first + r;
            acc += sc[r] * f32::cast_from(v[((b * len + j) * kv_heads + hk) * hd + d]);
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
        po[cube * hd + d] = out;
        if d == 0usize {
            ml[cube * 2usize] = red[0];
            ml[cube * 2usize + 1usize] = red[1];
        }
    }
}

/// Batch row × head `CUBE_POS` of [`decode_attn_split_kernel`]'s splits added: the global
/// maximum `m`, `l = Σ_s exp(m_s − m)·l_s`, `o = Σ_s exp(m_s − m)·po_s / l` (splits in order)
/// in `F`, and the probabilities `p_j = exp(s_j − m) / l` in `F` (`[B, H, 1, L]`).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn decode_attn_combine_kernel<F: Float>(
    scores: &Array<f32>,
    ml: &Array<f32>,
    po: &Array<f32>,
    o: &mut Array<F>,
    p: &mut Array<F>,
    len: usize,
    splits: usize,
    #[comptime] hd: usize,
) {
    let bh = CUBE_POS;
    let tid = usize::cast_from(UNIT_POS_Y * 32u32 + UNIT_POS_X);
    let base = bh * splits;
    let mut m = 0.0f32;
    m -= 3.402_823_5e38f32;
    for s in 0..splits {
        let ms = ml[(base + s) * 2usize];
        m = select(ms > m, ms, m);
    }
    let mut l = 0.0f32;
    for s in 0..splits {
        l += f32::exp(ml[(base + s) * 2usize] - m) * ml[(base + s) * 2usize + 1usize];
    }
    let inv_l = 1.0f32 / l;
    if tid < hd {
        let mut acc = 0.0f32;
        for s in 0..splits {
            acc += f32::exp(ml[(base + s) * 2usize] - m) * po[(base + s) * hd + tid];
        }
        o[bh * hd + tid] = F::cast_from(acc * inv_l);
    }
    for it in 0..len.div_ceil(256usize) {
        let j = tid + it * 256usize;
        if j < len {
            p[bh * len + j] = F::cast_from(f32::exp(scores[bh * len + j] - m) * inv_l);
        }
    }
}

/// `(o [B, 1, H, hd], p [B, H, 1, L])` of one query row by the two kernels above, or `None`
/// (nothing launched) where they do not apply: T ≠ 1, a cache longer than [`MAX_LEN`], a head
/// dim not dividing 256 or not a multiple of 4, a dtype other than F32/F16/BF16. `q`, `k`, `v`
/// contiguous and checked by the caller (`dims` = `[b, t, l, h, h_kv, hd]`); `mask [B, 1, 1, L]`
/// u8-backed bools.
pub(super) fn attention<R: CubeRuntime>(
    q: &CubeTensor<R>,
    k: &CubeTensor<R>,
    v: &CubeTensor<R>,
    mask: Option<&CubeTensor<R>>,
    div: f32,
    [b, t, l, h, h_kv, hd]: [usize; 6],
) -> Option<(CubeTensor<R>, CubeTensor<R>)> {
    let splits = l.div_ceil(SPLIT_ROWS);
    if t != 1
        || l == 0
        || l > MAX_LEN
        || !(8..=THREADS).contains(&hd)
        || THREADS % hd != 0
        || !matches!(q.dtype, DType::F32 | DType::F16 | DType::BF16)
        || b * h * splits > 65_535
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
    // hd is a power of two from 8 to 256: vectors of 8, at most one per lane.
    let vec = 8usize;
    let lane_vecs = (hd / vec).div_ceil(32);
    let scores = empty(q, vec![b * h, l], DType::F32);
    let ml = empty(q, vec![b * h * splits, 2], DType::F32);
    let po = empty(q, vec![b * h * splits, hd], DType::F32);
    let o = empty(q, vec![b, 1, h, hd], q.dtype);
    let p = empty(q, vec![b, h, 1, l], v.dtype);
    let dim = CubeDim::new_2d(32, 8);
    // SAFETY: contiguous q [B, 1, H, hd], k, v [B, L, H_kv, hd], mask B·L bytes; the scratch and
    // outputs fresh of their shapes; every index is below those (split rows clamped to L − 1 for
    // loads, written only below L; columns below hd).
    unsafe {
        launch_float!(
            q.dtype,
            else return None,
            decode_attn_split_kernel(
                &q.client,
                CubeCount::Static((b * h * splits) as u32, 1, 1),
                dim,
                vec,
                array(q, b * h * hd),
                array(k, b * l * h_kv * hd),
                array(v, b * l * h_kv * hd),
                array(&mask, if masked { b * l } else { 1 }),
                array(&scores, b * h * l),
                array(&ml, b * h * splits * 2),
                array(&po, b * h * splits * hd),
                h,
                h / h_kv,
                l,
                splits,
                1.0 / div,
                hd,
                vec,
                lane_vecs,
                masked,
            )
        );
        launch_float!(
            q.dtype,
            else return None,
            decode_attn_combine_kernel(
                &q.client,
                CubeCount::Static((b * h) as u32, 1, 1),
                dim,
                array(&scores, b * h * l),
                array(&ml, b * h * splits * 2),
                array(&po, b * h * splits * hd),
                array(&o, b * h * hd),
                array(&p, b * h * l),
                l,
                splits,
                hd,
            )
        );
    }
    Some((o, p))
}
