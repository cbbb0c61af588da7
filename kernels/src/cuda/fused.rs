//! Fused elementwise kernels for the ops that dominate once the GEMMs run in cuBLAS: one read and
//! one write per value instead of a chain of Burn ops (each a kernel launch and a full pass over
//! the activation) plus the autodiff copies of every intermediate.

// In `#[cube]` code a comptime flag (`masked`, `backward`) must guard a runtime condition in its
// own `if`: `comptime && runtime` or `else if runtime` under a comptime `if` do not expand as one.
#![allow(clippy::collapsible_if, clippy::collapsible_else_if)]

use burn::tensor::{bf16, f16, DType};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::launch::{array, cube_count, cube_dim, empty};

/// Expands the launcher macro `$go` with the Rust float type of a tensor's `$dtype` (F32, F16,
/// BF16); any other dtype is a wiring bug and panics naming the op.
macro_rules! dispatch_float {
    ($dtype:expr, $what:expr, $go:ident) => {
        match $dtype {
            DType::F32 => $go!(f32),
            DType::F16 => $go!(f16),
            DType::BF16 => $go!(bf16),
            other => panic!(
                "qtune-kernels: {} supports F32, F16, BF16, not {other:?}",
                $what
            ),
        }
    };
}

/// √(2/π), HF `NewGELUActivation`'s constant.
const GELU_C: f32 = 0.797_884_6;

/// Values per unit of the element-wise kernels when the length allows: one 16-byte load/store
/// per bf16 operand instead of eight 2-byte ones.
const LANES_EW: usize = 8;

/// Vector width for `n` values: [`LANES_EW`] when it divides `n`, else 1.
fn ew_lanes(n: usize) -> usize {
    if n % LANES_EW == 0 {
        LANES_EW
    } else {
        1
    }
}

/// `gelu_new` (`y = 0.5·v·(1 + tanh(√(2/π)·(v + 0.044715·v³)))`, `v = x + bias`) or, with
/// `backward`, its input gradient `dy·gelu_new'(v)`; f32 math, `lanes` values per unit; the
/// bias (when `has_bias`) has `bias_units` units, one row of `x`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn gelu_new_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    bias: &Array<Vector<F, N>>,
    dy: &Array<Vector<F, N>>,
    out: &mut Array<Vector<F, N>>,
    units: usize,
    bias_units: u32,
    #[comptime] lanes: usize,
    #[comptime] has_bias: bool,
    #[comptime] backward: bool,
) {
    let i = ABSOLUTE_POS;
    if i >= units {
        terminate!();
    }
    let xv = x[i];
    let mut bv = Vector::<F, N>::empty();
    if has_bias {
        bv = bias[(u32::cast_from(i) % bias_units) as usize];
    }
    let mut o = Vector::<F, N>::empty();
    if backward {
        let dv = dy[i];
        #[unroll]
        for k in 0..lanes {
            let mut v = f32::cast_from(xv[k]);
            if has_bias {
                v += f32::cast_from(bv[k]);
            }
            let t = f32::tanh(GELU_C * (v + 0.044715f32 * v * v * v));
            let inner = GELU_C * (1.0f32 + 0.134145f32 * v * v);
            let d = 0.5f32 * (1.0f32 + t) + 0.5f32 * v * (1.0f32 - t * t) * inner;
            o[k] = F::cast_from(f32::cast_from(dv[k]) * d);
        }
    } else {
        #[unroll]
        for k in 0..lanes {
            let mut v = f32::cast_from(xv[k]);
            if has_bias {
                v += f32::cast_from(bv[k]);
            }
            let t = f32::tanh(GELU_C * (v + 0.044715f32 * v * v * v));
            o[k] = F::cast_from(0.5f32 * v * (1.0f32 + t));
        }
    }
    out[i] = o;
}

/// `gelu_new(x + bias)` (no `dy`) or its input gradient `dy·gelu_new'(x + bias)`, in `x`'s
/// dtype; `bias` (optional) has `x`'s last dim.
///
/// # Panics
/// On a dtype other than F32/F16/BF16, or `dy`/`bias` not matching `x` (a wiring bug).
pub fn gelu_new<R: CubeRuntime>(
    x: CubeTensor<R>,
    bias: Option<CubeTensor<R>>,
    dy: Option<CubeTensor<R>>,
) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let dy = dy.map(into_contiguous);
    if let Some(d) = &dy {
        assert!(
            d.meta.shape() == x.meta.shape() && d.dtype == x.dtype,
            "qtune-kernels: gelu_new backward: dy must match x"
        );
    }
    let n = x.meta.num_elements();
    let d = x.meta.shape().to_vec().last().copied().unwrap_or(1).max(1);
    let bias = bias.map(into_contiguous);
    if let Some(b) = &bias {
        assert!(
            b.meta.num_elements() == d && b.dtype == x.dtype,
            "qtune-kernels: gelu_new bias must have x's last dim and dtype"
        );
    }
    assert!(
        u32::try_from(n).is_ok(),
        "qtune-kernels: gelu_new of more than 2³² values"
    );
    let out = empty(&x, x.meta.shape().to_vec(), x.dtype);
    if n == 0 {
        return out;
    }
    // The bias is indexed by unit within a row: a unit must not straddle two rows.
    let lanes = if d % LANES_EW == 0 { ew_lanes(n) } else { 1 };
    let units = n / lanes;
    let backward = dy.is_some();
    let has_bias = bias.is_some();
    let dy = dy.unwrap_or_else(|| x.clone()); // not read in the forward
    let bias = bias.unwrap_or_else(|| x.clone()); // not read without a bias
    let bias_len = if has_bias { d } else { n };
    macro_rules! go {
        ($f:ty) => {
            // SAFETY: contiguous buffers of n (bias: d) values of the dispatched type, both
            // multiples of lanes.
            unsafe {
                gelu_new_kernel::launch_unchecked::<$f, R>(
                    &x.client,
                    cube_count(units),
                    cube_dim(),
                    lanes,
                    array(&x, n),
                    array(&bias, bias_len),
                    array(&dy, n),
                    array(&out, n),
                    units,
                    (d / lanes) as u32,
                    lanes,
                    has_bias,
                    backward,
                )
            }
        };
    }
    dispatch_float!(x.dtype, "gelu_new", go);
    out
}

/// murmur3's 32-bit finalizer, as `crate::dropout::mix32` (u32 arithmetic wraps on the GPU).
#[cube]
fn mix32(x: u32) -> u32 {
    let mut h = x;
    h ^= h >> 16u32;
    h *= 0x85eb_ca6bu32;
    h ^= h >> 13u32;
    h *= 0xc2b2_ae35u32;
    h ^= h >> 16u32;
    h
}

/// Counter-based dropout (see `crate::dropout`): keep `x[e]·scale` iff
/// `mix32(mix32(e ^ seed_lo) ^ seed_hi) ≥ threshold`, else 0, for the `lanes` elements `e` of
/// unit `i`; f32 math.
#[cube(launch_unchecked)]
fn dropout_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    y: &mut Array<Vector<F, N>>,
    units: usize,
    seed_lo: u32,
    seed_hi: u32,
    threshold: u32,
    scale: f32,
    #[comptime] lanes: usize,
) {
    let i = ABSOLUTE_POS;
    if i >= units {
        terminate!();
    }
    let xv = x[i];
    let mut o = Vector::<F, N>::empty();
    let first = u32::cast_from(i) * (lanes as u32);
    #[unroll]
    for k in 0..lanes {
        let h = mix32(mix32((first + k as u32) ^ seed_lo) ^ seed_hi);
        let mut v = 0.0f32;
        if h >= threshold {
            v = f32::cast_from(xv[k]) * scale;
        }
        o[k] = F::cast_from(v);
    }
    y[i] = o;
}

/// Dropout of `x` (any shape; `x`'s dtype) with the counter-based mask of `seed`.
///
/// # Panics
/// On a dtype other than F32/F16/BF16 or more than 2³² values.
pub fn dropout<R: CubeRuntime>(x: CubeTensor<R>, p: f32, seed: u64) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let n = x.meta.num_elements();
    assert!(
        u32::try_from(n).is_ok(),
        "qtune-kernels: dropout of more than 2³² values"
    );
    let out = empty(&x, x.meta.shape().to_vec(), x.dtype);
    if n == 0 {
        return out;
    }
    let (threshold, scale) = crate::dropout::params(p);
    let lanes = ew_lanes(n);
    let units = n / lanes;
    macro_rules! go {
        ($f:ty) => {
            // SAFETY: contiguous buffers of n values of the dispatched type, n % lanes == 0.
            unsafe {
                dropout_kernel::launch_unchecked::<$f, R>(
                    &x.client,
                    cube_count(units),
                    cube_dim(),
                    lanes,
                    array(&x, n),
                    array(&out, n),
                    units,
                    seed as u32,
                    (seed >> 32) as u32,
                    threshold,
                    scale,
                    lanes,
                )
            }
        };
    }
    dispatch_float!(x.dtype, "dropout", go);
    out
}

/// Lanes per row in the row kernels (softmax, LayerNorm): one plane (warp) per row, reduced
/// with plane intrinsics; each lane reads `vec` consecutive values at a time.
const LANES: u32 = 32;
/// Rows (planes) per cube in the row kernels: 256 threads per cube keep the SMs occupied.
const ROWS_PER_CUBE: u32 = 8;

/// The widest of 8, 4, 2, 1 values per load that divides a row of `len`.
fn row_vec(len: usize) -> usize {
    [8, 4, 2].into_iter().find(|v| len % v == 0).unwrap_or(1)
}

/// `p[r, j] = softmax_j(masked(s[r, j] / div))` for rows `r` of `[B, H, T, L]` scores; `mask`
/// is `[B, T, L]` (1 = masked, broadcast over heads), masked scores become `f32::MIN` (a fully
/// masked row comes out uniform, as Burn's `mask_fill` + softmax). f32 math, `p` in `F`; rows
/// are `len` vectors of `vec` values.
#[cube(launch_unchecked)]
fn attn_softmax_kernel<F: Float, N: Size>(
    s: &Array<Vector<f32, N>>,
    mask: &Array<Vector<u8, N>>,
    p: &mut Array<Vector<F, N>>,
    rows: usize,
    len: usize,
    heads_t: usize,
    t: usize,
    div: f32,
    #[comptime] masked: bool,
    #[comptime] vec: usize,
) {
    let row = CUBE_POS * (ROWS_PER_CUBE as usize) + usize::cast_from(UNIT_POS_Y);
    if row >= rows {
        terminate!();
    }
    let lane = usize::cast_from(UNIT_POS_X);
    let base = row * len;
    let mbase = ((row / heads_t) * t + row % t) * len;
    let iters = len.div_ceil(32usize);
    let mut mx = 0.0f32;
    mx -= 3.402_823_5e38f32;
    for k in 0..iters {
        let j = lane + k * 32usize;
        if j < len {
            let sv = s[base + j];
            #[unroll]
            for q in 0..vec {
                let mut v = sv[q] / div;
                if masked {
                    if mask[mbase + j][q] != 0u8 {
                        v = 0.0f32 - 3.402_823_5e38f32;
                    }
                }
                if v > mx {
                    mx = v;
                }
            }
        }
    }
    mx = plane_max(mx);
    let mut sum = 0.0f32;
    for k in 0..iters {
        let j = lane + k * 32usize;
        if j < len {
            let sv = s[base + j];
            #[unroll]
            for q in 0..vec {
                let mut v = sv[q] / div;
                if masked {
                    if mask[mbase + j][q] != 0u8 {
                        v = 0.0f32 - 3.402_823_5e38f32;
                    }
                }
                sum += f32::exp(v - mx);
            }
        }
    }
    sum = plane_sum(sum);
    for k in 0..iters {
        let j = lane + k * 32usize;
        if j < len {
            let sv = s[base + j];
            let mut o = Vector::<F, N>::empty();
            #[unroll]
            for q in 0..vec {
                let mut v = sv[q] / div;
                if masked {
                    if mask[mbase + j][q] != 0u8 {
                        v = 0.0f32 - 3.402_823_5e38f32;
                    }
                }
                o[q] = F::cast_from(f32::exp(v - mx) / sum);
            }
            p[base + j] = o;
        }
    }
}

/// `ds[r, j] = p[r, j] · (dp[r, j] − Σ_k p[r, k]·dp[r, k]) / div` (f32 math, `G` out), and 0
/// where masked (a masked score does not reach the output; for a fully masked row `p` is
/// uniform, not 0). Rows are `len` vectors of `vec` values.
#[cube(launch_unchecked)]
fn attn_softmax_backward_kernel<F: Float, G: Float, N: Size>(
    p: &Array<Vector<F, N>>,
    dp: &Array<Vector<F, N>>,
    mask: &Array<Vector<u8, N>>,
    ds: &mut Array<Vector<G, N>>,
    rows: usize,
    len: usize,
    heads_t: usize,
    t: usize,
    div: f32,
    #[comptime] masked: bool,
    #[comptime] vec: usize,
) {
    let row = CUBE_POS * (ROWS_PER_CUBE as usize) + usize::cast_from(UNIT_POS_Y);
    if row >= rows {
        terminate!();
    }
    let lane = usize::cast_from(UNIT_POS_X);
    let base = row * len;
    let mbase = ((row / heads_t) * t + row % t) * len;
    let iters = len.div_ceil(32usize);
    let mut dot = 0.0f32;
    for k in 0..iters {
        let j = lane + k * 32usize;
        if j < len {
            let (pv, dv) = (p[base + j], dp[base + j]);
            #[unroll]
            for q in 0..vec {
                dot += f32::cast_from(pv[q]) * f32::cast_from(dv[q]);
            }
        }
    }
    dot = plane_sum(dot);
    for k in 0..iters {
        let j = lane + k * 32usize;
        if j < len {
            let (pv, dv) = (p[base + j], dp[base + j]);
            let mut o = Vector::<G, N>::empty();
            #[unroll]
            for q in 0..vec {
                let mut g = f32::cast_from(pv[q]) * (f32::cast_from(dv[q]) - dot) / div;
                if masked {
                    if mask[mbase + j][q] != 0u8 {
                        g = 0.0f32;
                    }
                }
                o[q] = G::cast_from(g);
            }
            ds[base + j] = o;
        }
    }
}

/// Cubes for `rows` rows at [`ROWS_PER_CUBE`] per cube, and their shape.
fn rows_launch(rows: usize) -> (CubeCount, CubeDim) {
    const MAX_X: usize = 65_535;
    let cubes = rows.div_ceil(ROWS_PER_CUBE as usize);
    let count = if cubes <= MAX_X {
        CubeCount::Static(cubes as u32, 1, 1)
    } else {
        CubeCount::Static(MAX_X as u32, cubes.div_ceil(MAX_X) as u32, 1)
    };
    (count, CubeDim::new_2d(LANES, ROWS_PER_CUBE))
}

/// Fused scale + mask + softmax of attention scores `s [B, H, T, L]` (F32) → probabilities in
/// `out` (F32/F16/BF16). `mask`: `[B, 1, T, L]` bool (u8 storage), true = masked.
///
/// # Panics
/// On a non-F32 `s`, a mask of another shape, or an unsupported `out` (wiring bugs).
pub fn attn_softmax<R: CubeRuntime>(
    s: CubeTensor<R>,
    mask: Option<CubeTensor<R>>,
    div: f32,
    out: DType,
) -> CubeTensor<R> {
    assert_eq!(
        s.dtype,
        DType::F32,
        "qtune-kernels: attention scores must be F32"
    );
    let s = into_contiguous(s);
    let shape = s.meta.shape().to_vec();
    assert_eq!(shape.len(), 4, "qtune-kernels: scores must be [B, H, T, L]");
    let (b, h, t, len) = (shape[0], shape[1], shape[2], shape[3]);
    let rows = b * h * t;
    let p = empty(&s, shape.clone(), out);
    if rows == 0 || len == 0 {
        return p;
    }
    let (mask_t, mask_len, masked) = mask_arg(&s, mask, b, t, len);
    let vec = row_vec(len);
    let (count, dim) = rows_launch(rows);
    macro_rules! go {
        ($f:ty) => {
            // SAFETY: contiguous buffers of the stated lengths (len % vec == 0); a plane per row.
            unsafe {
                attn_softmax_kernel::launch_unchecked::<$f, R>(
                    &s.client,
                    count,
                    dim,
                    vec,
                    array(&s, rows * len),
                    array(&mask_t, mask_len),
                    array(&p, rows * len),
                    rows,
                    len / vec,
                    h * t,
                    t,
                    div,
                    masked,
                    vec,
                )
            }
        };
    }
    dispatch_float!(out, "attention softmax", go);
    p
}

/// Backward of [`attn_softmax`]: `dp` (the probabilities' gradient, `p`'s dtype) → `ds` in
/// `out` (F32, or `p`'s dtype to feed the next GEMM directly), zero where `mask` is set.
///
/// # Panics
/// On mismatched shapes/dtypes or another `out` (wiring bugs).
pub fn attn_softmax_backward<R: CubeRuntime>(
    p: CubeTensor<R>,
    dp: CubeTensor<R>,
    mask: Option<CubeTensor<R>>,
    div: f32,
    out: DType,
) -> CubeTensor<R> {
    let (p, dp) = (into_contiguous(p), into_contiguous(dp));
    assert!(
        p.meta.shape() == dp.meta.shape() && p.dtype == dp.dtype,
        "qtune-kernels: softmax backward: dp must match p"
    );
    let shape = p.meta.shape().to_vec();
    assert_eq!(
        shape.len(),
        4,
        "qtune-kernels: probabilities must be [B, H, T, L]"
    );
    let (b, h, t, len) = (shape[0], shape[1], shape[2], shape[3]);
    let rows = b * h * t;
    assert!(
        out == DType::F32 || out == p.dtype,
        "qtune-kernels: softmax backward writes F32 or p's dtype, not {out:?}"
    );
    let ds = empty(&p, shape, out);
    if rows == 0 || len == 0 {
        return ds;
    }
    let (mask_t, mask_len, masked) = mask_arg(&p, mask, b, t, len);
    let vec = row_vec(len);
    let (count, dim) = rows_launch(rows);
    macro_rules! launch {
        ($f:ty, $g:ty) => {
            // SAFETY: contiguous buffers of rows × len values (len % vec == 0); a plane per row.
            unsafe {
                attn_softmax_backward_kernel::launch_unchecked::<$f, $g, R>(
                    &p.client,
                    count,
                    dim,
                    vec,
                    array(&p, rows * len),
                    array(&dp, rows * len),
                    array(&mask_t, mask_len),
                    array(&ds, rows * len),
                    rows,
                    len / vec,
                    h * t,
                    t,
                    div,
                    masked,
                    vec,
                )
            }
        };
    }
    macro_rules! go {
        ($f:ty) => {
            if out == DType::F32 {
                launch!($f, f32)
            } else {
                launch!($f, $f)
            }
        };
    }
    dispatch_float!(p.dtype, "attention softmax backward", go);
    ds
}

/// The mask as a kernel argument: `(buffer, length, masked)`; a 1-byte dummy when unmasked
/// (never read: `masked` is comptime false).
fn mask_arg<R: CubeRuntime>(
    like: &CubeTensor<R>,
    mask: Option<CubeTensor<R>>,
    b: usize,
    t: usize,
    len: usize,
) -> (CubeTensor<R>, usize, bool) {
    match mask.map(into_contiguous) {
        Some(m) => {
            assert!(
                m.meta.shape().to_vec() == vec![b, 1, t, len] && m.dtype.size() == 1,
                "qtune-kernels: attention mask must be [B, 1, T, L] u8-backed bools, got {:?} {:?}",
                m.meta.shape(),
                m.dtype
            );
            (m, b * t * len, true)
        }
        None => (empty(like, vec![1], DType::U8), 1, false),
    }
}

/// LayerNorm of rows of `len` values, one plane per row, f32 math (as HF under bf16 autocast:
/// GPT-J's `ln_1` runs in f32 and casts back): `y = (x − mean)/√(var + eps)·w + b`.
/// `w`/`b` are f32. With `backward`, writes instead `dx` for `dy` (frozen `w`, `b`):
/// `dx = rstd·(g − mean(g) − x̂·mean(g·x̂))`, `g = dy·w`, `x̂ = (x − mean)·rstd`.
#[cube(launch_unchecked)]
fn layer_norm_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    w: &Array<Vector<f32, N>>,
    b: &Array<Vector<f32, N>>,
    dy: &Array<Vector<F, N>>,
    out: &mut Array<Vector<F, N>>,
    rows: usize,
    len: usize,
    len_f: f32,
    eps: f32,
    #[comptime] backward: bool,
    #[comptime] vec: usize,
) {
    let row = CUBE_POS * (ROWS_PER_CUBE as usize) + usize::cast_from(UNIT_POS_Y);
    if row >= rows {
        terminate!();
    }
    let lane = usize::cast_from(UNIT_POS_X);
    let base = row * len;
    let iters = len.div_ceil(32usize);
    let mut sum = 0.0f32;
    for k in 0..iters {
        let j = lane + k * 32usize;
        if j < len {
            let xv = x[base + j];
            #[unroll]
            for q in 0..vec {
                sum += f32::cast_from(xv[q]);
            }
        }
    }
    let mean = plane_sum(sum) / len_f;
    let mut sq = 0.0f32;
    for k in 0..iters {
        let j = lane + k * 32usize;
        if j < len {
            let xv = x[base + j];
            #[unroll]
            for q in 0..vec {
                let d = f32::cast_from(xv[q]) - mean;
                sq += d * d;
            }
        }
    }
    let rstd = 1.0f32 / f32::sqrt(plane_sum(sq) / len_f + eps);
    if backward {
        let mut sg = 0.0f32;
        let mut sgx = 0.0f32;
        for k in 0..iters {
            let j = lane + k * 32usize;
            if j < len {
                let (xv, dv, wv) = (x[base + j], dy[base + j], w[j]);
                #[unroll]
                for q in 0..vec {
                    let g = f32::cast_from(dv[q]) * wv[q];
                    let xh = (f32::cast_from(xv[q]) - mean) * rstd;
                    sg += g;
                    sgx += g * xh;
                }
            }
        }
        let mg = plane_sum(sg) / len_f;
        let mgx = plane_sum(sgx) / len_f;
        for k in 0..iters {
            let j = lane + k * 32usize;
            if j < len {
                let (xv, dv, wv) = (x[base + j], dy[base + j], w[j]);
                let mut o = Vector::<F, N>::empty();
                #[unroll]
                for q in 0..vec {
                    let g = f32::cast_from(dv[q]) * wv[q];
                    let xh = (f32::cast_from(xv[q]) - mean) * rstd;
                    o[q] = F::cast_from(rstd * (g - mg - xh * mgx));
                }
                out[base + j] = o;
            }
        }
    } else {
        for k in 0..iters {
            let j = lane + k * 32usize;
            if j < len {
                let (xv, wv, bv) = (x[base + j], w[j], b[j]);
                let mut o = Vector::<F, N>::empty();
                #[unroll]
                for q in 0..vec {
                    let xh = (f32::cast_from(xv[q]) - mean) * rstd;
                    o[q] = F::cast_from(xh * wv[q] + bv[q]);
                }
                out[base + j] = o;
            }
        }
    }
}

fn as_f32_contiguous<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    into_contiguous(if t.dtype == DType::F32 {
        t
    } else {
        burn_cubecl::kernel::cast(t, DType::F32)
    })
}

/// LayerNorm over the last dim of `x` (any rank) with frozen `w`, `b` (`[len]`, any float
/// dtype), in `x`'s dtype; with `dy`, its input gradient instead.
///
/// # Panics
/// On mismatched shapes or an unsupported dtype (wiring bugs).
pub fn layer_norm<R: CubeRuntime>(
    x: CubeTensor<R>,
    w: CubeTensor<R>,
    b: CubeTensor<R>,
    dy: Option<CubeTensor<R>>,
    eps: f32,
) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let shape = x.meta.shape().to_vec();
    let len = *shape.last().unwrap_or(&0);
    let rows: usize = shape[..shape.len().saturating_sub(1)].iter().product();
    let (w, b) = (as_f32_contiguous(w), as_f32_contiguous(b));
    assert!(
        w.meta.num_elements() == len && b.meta.num_elements() == len,
        "qtune-kernels: layer norm weight/bias must have {len} values"
    );
    let dy = dy.map(into_contiguous);
    if let Some(d) = &dy {
        assert!(
            d.meta.shape() == x.meta.shape() && d.dtype == x.dtype,
            "qtune-kernels: layer norm backward: dy must match x"
        );
    }
    let out = empty(&x, shape, x.dtype);
    if rows == 0 || len == 0 {
        return out;
    }
    let backward = dy.is_some();
    let dy_t = dy.unwrap_or_else(|| x.clone());
    let vec = row_vec(len);
    let (count, dim) = rows_launch(rows);
    macro_rules! go {
        ($f:ty) => {
            // SAFETY: contiguous buffers: x, dy, out rows × len; w, b len (len % vec == 0); a
            // plane per row.
            unsafe {
                layer_norm_kernel::launch_unchecked::<$f, R>(
                    &x.client,
                    count,
                    dim,
                    vec,
                    array(&x, rows * len),
                    array(&w, len),
                    array(&b, len),
                    array(&dy_t, rows * len),
                    array(&out, rows * len),
                    rows,
                    len / vec,
                    len as f32,
                    eps,
                    backward,
                    vec,
                )
            }
        };
    }
    dispatch_float!(x.dtype, "layer norm", go);
    out
}

/// GPT-J rotary ("rotate every two") on `x [B, T, H, hd]`: pairs `(2i, 2i+1)`, `i < half`, turn
/// by the angle whose `cos`/`sin` are at `[b, t, i]` (f32 `[B, T, 1, half, 1]`); dims from
/// `2·half` on pass through. `sign = −1` turns backwards: the input gradient of the rotation.
#[cube(launch_unchecked)]
fn rotary_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    cos: &Array<f32>,
    sin: &Array<f32>,
    out: &mut Array<Vector<F, N>>,
    units: usize,
    hd: u32,
    row: u32,
    half: u32,
    sign: f32,
    #[comptime] lanes: usize,
) {
    // 32-bit index math (64-bit division is emulated on the GPU); unit i holds `lanes`
    // consecutive values of one head, so whole pairs, all inside or all outside the rotary dims.
    let i = ABSOLUTE_POS;
    if i >= units {
        terminate!();
    }
    let e0 = u32::cast_from(i) * (lanes as u32);
    let j0 = e0 % hd;
    let xv = x[i];
    if j0 < 2u32 * half {
        let a0 = (e0 / row) * half + j0 / 2u32;
        let mut o = Vector::<F, N>::empty();
        #[unroll]
        for p in 0..lanes / 2 {
            let c = cos[(a0 + p as u32) as usize];
            let s = sin[(a0 + p as u32) as usize] * sign;
            let u = f32::cast_from(xv[2 * p]);
            let v = f32::cast_from(xv[2 * p + 1]);
            o[2 * p] = F::cast_from(u * c - v * s);
            o[2 * p + 1] = F::cast_from(v * c + u * s);
        }
        out[i] = o;
    } else {
        out[i] = xv;
    }
}

/// Rotary embedding of `x [B, T, H, hd]` (see [`rotary_kernel`]); `inverse` rotates back.
///
/// # Panics
/// On shapes that do not fit (wiring bugs) or an unsupported dtype.
pub fn rotary<R: CubeRuntime>(
    x: CubeTensor<R>,
    cos: CubeTensor<R>,
    sin: CubeTensor<R>,
    inverse: bool,
) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let shape = x.meta.shape().to_vec();
    assert_eq!(
        shape.len(),
        4,
        "qtune-kernels: rotary input must be [B, T, H, hd]"
    );
    let (bt, h, hd) = (shape[0] * shape[1], shape[2], shape[3]);
    let (cos, sin) = (as_f32_contiguous(cos), as_f32_contiguous(sin));
    let half = cos.meta.num_elements() / bt.max(1);
    assert!(
        cos.meta.num_elements() == bt * half
            && sin.meta.num_elements() == bt * half
            && 2 * half <= hd
            && hd % 2 == 0,
        "qtune-kernels: rotary cos/sin must be [B, T, 1, half, 1] with 2·half ≤ head_dim"
    );
    let n = x.meta.num_elements();
    let out = empty(&x, shape, x.dtype);
    if n == 0 {
        return out;
    }
    assert!(
        u32::try_from(n).is_ok(),
        "qtune-kernels: rotary of more than 2³² values"
    );
    let sign = if inverse { -1.0f32 } else { 1.0 };
    // A unit must hold whole pairs of one head, all rotated or all passed through.
    let lanes = if hd % 8 == 0 && (2 * half) % 8 == 0 {
        8
    } else {
        2
    };
    let units = n / lanes;
    macro_rules! go {
        ($f:ty) => {
            // SAFETY: x/out hold n values (n % lanes == 0 as hd % lanes == 0); cos/sin bt × half.
            unsafe {
                rotary_kernel::launch_unchecked::<$f, R>(
                    &x.client,
                    cube_count(units),
                    cube_dim(),
                    lanes,
                    array(&x, n),
                    array(&cos, bt * half),
                    array(&sin, bt * half),
                    array(&out, n),
                    units,
                    hd as u32,
                    (h * hd) as u32,
                    half as u32,
                    sign,
                    lanes,
                )
            }
        };
    }
    dispatch_float!(x.dtype, "rotary", go);
    out
}

/// Cross-entropy of rows of logits (`x [rows, len]`, any float dtype, f32 math) against one
/// target class per row: forward writes `nll[r] = logsumexp(x[r]) − x[r, t[r]]` (f32);
/// `backward` writes instead `dx[r, j] = (softmax(x[r])_j − [j = t[r]]) · g[r]` in `x`'s dtype.
#[cube(launch_unchecked)]
fn cross_entropy_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    x_scalar: &Array<F>,
    targets: &Array<i32>,
    g: &Array<f32>,
    nll: &mut Array<f32>,
    dx: &mut Array<Vector<F, N>>,
    rows: usize,
    len: usize,
    #[comptime] backward: bool,
    #[comptime] vec: usize,
) {
    let row = CUBE_POS * (ROWS_PER_CUBE as usize) + usize::cast_from(UNIT_POS_Y);
    if row >= rows {
        terminate!();
    }
    let lane = usize::cast_from(UNIT_POS_X);
    let base = row * len;
    let iters = len.div_ceil(32usize);
    // One pass: running max and the sum of exp(v − max), rescaled when the max grows.
    let mut m = 0.0f32;
    m -= 3.402_823_5e38f32;
    let mut acc = 0.0f32;
    for k in 0..iters {
        let j = lane + k * 32usize;
        if j < len {
            let xv = x[base + j];
            #[unroll]
            for q in 0..vec {
                let v = f32::cast_from(xv[q]);
                if v > m {
                    acc = acc * f32::exp(m - v) + 1.0f32;
                    m = v;
                } else {
                    acc += f32::exp(v - m);
                }
            }
        }
    }
    let mx = plane_max(m);
    let mut part = 0.0f32;
    if acc > 0.0f32 {
        part = acc * f32::exp(m - mx);
    }
    let sum = plane_sum(part);
    let t = usize::cast_from(targets[row]);
    if backward {
        let gr = g[row];
        for k in 0..iters {
            let j = lane + k * 32usize;
            if j < len {
                let xv = x[base + j];
                let mut o = Vector::<F, N>::empty();
                #[unroll]
                for q in 0..vec {
                    let mut d = f32::exp(f32::cast_from(xv[q]) - mx) / sum;
                    if j * vec + q == t {
                        d -= 1.0f32;
                    }
                    o[q] = F::cast_from(d * gr);
                }
                dx[base + j] = o;
            }
        }
    } else {
        if lane == 0usize {
            let xt = f32::cast_from(x_scalar[base * vec + t]);
            nll[row] = mx + f32::ln(sum) - xt;
        }
    }
}

/// Per-row negative log-likelihood of `targets` (I32, `[rows]`, each in `[0, len)`) under the
/// logits `x [rows, len]` (F32): `nll` (no `g`), or with `g [rows]` the logits' gradient.
///
/// # Panics
/// On mismatched shapes or an unsupported dtype (wiring bugs; targets are checked by callers).
pub fn cross_entropy<R: CubeRuntime>(
    x: CubeTensor<R>,
    targets: CubeTensor<R>,
    g: Option<CubeTensor<R>>,
) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let shape = x.meta.shape().to_vec();
    assert_eq!(
        shape.len(),
        2,
        "qtune-kernels: cross-entropy logits must be [rows, vocab]"
    );
    let (rows, len) = (shape[0], shape[1]);
    let targets = into_contiguous(if targets.dtype == DType::I32 {
        targets
    } else {
        burn_cubecl::kernel::cast(targets, DType::I32)
    });
    assert_eq!(
        targets.meta.num_elements(),
        rows,
        "qtune-kernels: one target per row"
    );
    let backward = g.is_some();
    let g = g.map(as_f32_contiguous);
    let nll = empty(&x, vec![rows], DType::F32);
    let dx = if backward {
        empty(&x, shape, x.dtype)
    } else {
        empty(&x, vec![1], x.dtype)
    };
    if rows == 0 || len == 0 {
        return if backward { dx } else { nll };
    }
    let g_t = g.unwrap_or_else(|| nll.clone());
    let dx_len = if backward { rows * len } else { 1 };
    let vec = row_vec(len);
    let (count, dim) = rows_launch(rows);
    macro_rules! go {
        ($f:ty) => {
            // SAFETY: x rows × len (len % vec == 0), targets/g/nll rows, dx rows × len (or an
            // unused 1); a plane per row; targets index inside the row (checked by callers).
            unsafe {
                cross_entropy_kernel::launch_unchecked::<$f, R>(
                    &x.client,
                    count,
                    dim,
                    vec,
                    array(&x, rows * len),
                    array(&x, rows * len),
                    array(&targets, rows),
                    array(&g_t, rows),
                    array(&nll, rows),
                    array(&dx, dx_len),
                    rows,
                    len / vec,
                    backward,
                    vec,
                )
            }
        };
    }
    dispatch_float!(x.dtype, "cross-entropy", go);
    if backward {
        dx
    } else {
        nll
    }
}
