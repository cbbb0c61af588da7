//! One decode step's rotary and KV-cache writes in one launch ([`crate::QBackend::q_rope_write_kv`]
//! on CUDA): the query rotated into a new tensor, the key rotated and the value copied straight
//! into their rows of the fixed caches. It replaces four launches a layer (two rotaries, two
//! `write_row`s) with the same values bit for bit: the rotation is `cuda/fused/rotary.rs`' own
//! math ([`rotate_pairs`], [`rotate_halves`]) and a cache row receives the rotated values as
//! `write_row` would copy them.

use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::cuda::CudaRuntime;
use cubecl::prelude::*;

use super::decode::dispatch_float_int;
use super::fused::{half_unit, rotate_halves, rotate_pairs};
use super::launch::{array, cube_count, cube_dim, empty, CubeB};
use crate::{RopeKvInput, RotaryOptions};

/// Unit `i` of the launch: the first `q_units` rotate `q` into `q_out`, the next `k_units`
/// rotate `k` into `kc`, the last `k_units` copy `v` into `vc`. A unit is one vector (`lanes`
/// values) of GPT-J's rotate-every-two, or with `halves` one vector of each half of a head (the
/// same dims of both). Keys and values of batch row `s` go to cache row `row[s]`, `cols`
/// vectors a row; a row index outside `0..rows` writes nothing (as `write_row`).
/// Every-two: `hd` the head dim, `half` the rotated pairs of a head, `q_len` / `k_len` the
/// values of one batch row of q / k. Halves: `half` the vectors of half a head, `q_len` /
/// `k_len` the heads of q / k.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn rope_write_kv_kernel<F: Float, I: Int, N: Size>(
    q: &Array<Vector<F, N>>,
    k: &Array<Vector<F, N>>,
    v: &Array<Vector<F, N>>,
    cos: &Array<f32>,
    sin: &Array<f32>,
    cos_v: &Array<Vector<f32, N>>,
    sin_v: &Array<Vector<f32, N>>,
    row: &Array<I>,
    q_out: &mut Array<Vector<F, N>>,
    kc: &mut Array<Vector<F, N>>,
    vc: &mut Array<Vector<F, N>>,
    q_units: usize,
    k_units: usize,
    rows: u32,
    cols: usize,
    hd: u32,
    half: u32,
    q_len: u32,
    k_len: u32,
    #[comptime] lanes: usize,
    #[comptime] halves: bool,
) {
    let i = ABSOLUTE_POS;
    if i >= q_units + 2usize * k_units {
        terminate!();
    }
    if i < q_units {
        if halves {
            let (lo, hi, a) = half_unit(i, half, q_len);
            let (o1, o2) = rotate_halves::<F, N>(q[lo], q[hi], cos_v[a], sin_v[a], 1.0f32, lanes);
            q_out[lo] = o1;
            q_out[hi] = o2;
        } else {
            q_out[i] = rotate_pairs::<F, N>(q[i], i, cos, sin, hd, q_len, half, 1.0f32, lanes);
        }
    } else {
        let is_k = i < q_units + k_units;
        let u = select(is_k, i - q_units, i - q_units - k_units);
        // The unit's vectors in k / v and their batch row.
        let mut lo = u;
        let mut hi = u;
        if halves {
            let (l, h, _) = half_unit(u, half, k_len);
            lo = l;
            hi = h;
        }
        let s = lo / cols;
        let r = u32::cast_from(row[s]);
        // A negative index wraps to a large u32 and writes nothing, like one past the end.
        if r < rows {
            // Vector `lo` of batch row `s` goes to the same place in cache row `r`.
            let at_lo = usize::cast_from(r) * cols + (lo - s * cols);
            let at_hi = usize::cast_from(r) * cols + (hi - s * cols);
            if is_k {
                if halves {
                    let (_, _, a) = half_unit(u, half, k_len);
                    let (o1, o2) =
                        rotate_halves::<F, N>(k[lo], k[hi], cos_v[a], sin_v[a], 1.0f32, lanes);
                    kc[at_lo] = o1;
                    kc[at_hi] = o2;
                } else {
                    kc[at_lo] =
                        rotate_pairs::<F, N>(k[lo], lo, cos, sin, hd, k_len, half, 1.0f32, lanes);
                }
            } else {
                vc[at_lo] = v[lo];
                if halves {
                    vc[at_hi] = v[hi];
                }
            }
        }
    }
}

/// [`crate::QBackend::q_rope_write_kv`] on CUDA: one launch when the caches can be written in
/// place in their own dtype (not shared, dense, `q`/`k`/`v` in that dtype, one token per batch
/// row, tables of `B·half` values, a forward rotation); else the input back, for the
/// composition.
#[allow(clippy::result_large_err)]
pub(crate) fn rope_write_kv<B: CubeB<CudaRuntime>>(
    r: RopeKvInput<B>,
) -> Result<[CubeTensor<CudaRuntime>; 3], RopeKvInput<B>> {
    let dt = r.kc.dtype;
    let (qs, ks, vs) = (
        r.q.meta.shape().to_vec(),
        r.k.meta.shape().to_vec(),
        r.v.meta.shape().to_vec(),
    );
    let kcs = r.kc.meta.shape().to_vec();
    let fits = qs.len() == 4
        && ks.len() == 4
        && ks == vs
        && qs[1] == 1
        && ks[1] == 1
        && qs[0] == ks[0]
        && qs[3] == ks[3]
        && kcs.len() == 2
        && r.vc.meta.shape().to_vec() == kcs
        && kcs[1] == ks[2] * ks[3]
        && r.row.meta.num_elements() == ks[0]
        && [r.q.dtype, r.k.dtype, r.v.dtype, r.vc.dtype]
            .iter()
            .all(|&d| d == dt)
        && r.kc.can_mut()
        && r.vc.can_mut()
        && r.kc.is_contiguous_buffer()
        && r.vc.is_contiguous_buffer()
        && !r.rotary.inverse;
    if !fits {
        return Err(r);
    }
    let (b, h, kv, hd) = (qs[0], qs[2], ks[2], qs[3]);
    let RopeKvInput {
        q,
        k,
        v,
        kc,
        vc,
        row,
        rotary: RotaryOptions { cos, sin, .. },
        halves,
    } = r;
    let (cos, sin) = (
        super::fused::as_f32_contiguous(cos),
        super::fused::as_f32_contiguous(sin),
    );
    let tab = cos.meta.num_elements();
    let half = tab / b.max(1);
    let tables_fit = sin.meta.num_elements() == tab
        && tab == b * half
        && if halves {
            2 * half == hd
        } else {
            2 * half <= hd && hd % 2 == 0
        };
    assert!(
        tables_fit,
        "qtune-kernels: rope_write_kv: cos/sin of {tab} values for {b} rows of head_dim {hd}"
    );
    let (q, k, v, row) = (
        into_contiguous(q),
        into_contiguous(k),
        into_contiguous(v),
        into_contiguous(row),
    );
    let (nq, nk) = (q.meta.num_elements(), k.meta.num_elements());
    let q_out = empty(&q, qs, dt);
    if nq == 0 || nk == 0 {
        return Ok([q_out, kc, vc]);
    }
    assert!(
        u32::try_from(nq.max(kcs[0] * kcs[1])).is_ok(),
        "qtune-kernels: rope_write_kv of more than 2³² values"
    );
    // As the rotary kernels choose their vectors (the values do not depend on it).
    let lanes = if halves {
        super::fused::row_vec(half)
    } else if hd % 8 == 0 && (2 * half) % 8 == 0 {
        8
    } else {
        2
    };
    let per_unit = if halves { 2 * lanes } else { lanes };
    let (q_units, k_units) = (nq / per_unit, nk / per_unit);
    let (half_arg, q_len, k_len) = if halves {
        (half / lanes, h, kv)
    } else {
        (half, h * hd, kv * hd)
    };
    let cols = kcs[1] / lanes;
    macro_rules! go {
        ($f:ty, $i:ty) => {
            // SAFETY: q/q_out hold nq values, k/v nk, kc/vc rows·cols·lanes, cos/sin tab, row b;
            // units index inside them (shapes checked above; a cache row outside 0..rows is
            // skipped in the kernel).
            unsafe {
                rope_write_kv_kernel::launch_unchecked::<$f, $i, CudaRuntime>(
                    &q.client,
                    cube_count(q_units + 2 * k_units),
                    cube_dim(),
                    lanes,
                    array(&q, nq),
                    array(&k, nk),
                    array(&v, nk),
                    array(&cos, tab),
                    array(&sin, tab),
                    array(&cos, tab),
                    array(&sin, tab),
                    array(&row, b),
                    array(&q_out, nq),
                    array(&kc, kcs[0] * kcs[1]),
                    array(&vc, kcs[0] * kcs[1]),
                    q_units,
                    k_units,
                    kcs[0] as u32,
                    cols,
                    hd as u32,
                    half_arg as u32,
                    q_len as u32,
                    k_len as u32,
                    lanes,
                    halves,
                )
            }
        };
    }
    dispatch_float_int!(dt, row.dtype, "rope_write_kv", go);
    Ok([q_out, kc, vc])
}
