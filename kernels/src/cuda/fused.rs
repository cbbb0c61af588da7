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

/// `y = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, computed in f32.
#[cube(launch_unchecked)]
fn gelu_new_kernel<F: Float>(x: &Array<F>, y: &mut Array<F>, n: usize) {
    let i = ABSOLUTE_POS;
    if i >= n {
        terminate!();
    }
    let v = f32::cast_from(x[i]);
    let t = f32::tanh(GELU_C * (v + 0.044715f32 * v * v * v));
    y[i] = F::cast_from(0.5f32 * v * (1.0f32 + t));
}

/// `dx = dy · gelu_new'(x)`, computed in f32.
#[cube(launch_unchecked)]
fn gelu_new_backward_kernel<F: Float>(x: &Array<F>, dy: &Array<F>, dx: &mut Array<F>, n: usize) {
    let i = ABSOLUTE_POS;
    if i >= n {
        terminate!();
    }
    let v = f32::cast_from(x[i]);
    let t = f32::tanh(GELU_C * (v + 0.044715f32 * v * v * v));
    let inner = GELU_C * (1.0f32 + 0.134145f32 * v * v);
    let d = 0.5f32 * (1.0f32 + t) + 0.5f32 * v * (1.0f32 - t * t) * inner;
    dx[i] = F::cast_from(f32::cast_from(dy[i]) * d);
}

fn launch_gelu<R: CubeRuntime, F: Float + CubeElement>(
    x: &CubeTensor<R>,
    dy: Option<&CubeTensor<R>>,
    out: &CubeTensor<R>,
    n: usize,
) {
    // SAFETY: all buffers are contiguous with n elements of F (checked by the caller).
    unsafe {
        match dy {
            None => gelu_new_kernel::launch_unchecked::<F, R>(
                &x.client,
                cube_count(n),
                cube_dim(),
                array(x, n),
                array(out, n),
                n,
            ),
            Some(dy) => gelu_new_backward_kernel::launch_unchecked::<F, R>(
                &x.client,
                cube_count(n),
                cube_dim(),
                array(x, n),
                array(dy, n),
                array(out, n),
                n,
            ),
        }
    }
}

/// `gelu_new(x)` (no `dy`) or its input gradient `dy·gelu_new'(x)`, in `x`'s dtype.
///
/// # Panics
/// On a dtype other than F32/F16/BF16, or `dy` of another shape/dtype (a wiring bug).
pub fn gelu_new<R: CubeRuntime>(x: CubeTensor<R>, dy: Option<CubeTensor<R>>) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let dy = dy.map(into_contiguous);
    if let Some(d) = &dy {
        assert!(
            d.meta.shape() == x.meta.shape() && d.dtype == x.dtype,
            "qtune-kernels: gelu_new backward: dy must match x"
        );
    }
    let n = x.meta.num_elements();
    let out = empty(&x, x.meta.shape().to_vec(), x.dtype);
    if n == 0 {
        return out;
    }
    macro_rules! go {
        ($f:ty) => {
            launch_gelu::<R, $f>(&x, dy.as_ref(), &out, n)
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

/// Counter-based dropout (see `crate::dropout`): keep `x[i]·scale` iff
/// `mix32(mix32(i ^ seed_lo) ^ seed_hi) ≥ threshold`, else 0; f32 math.
#[cube(launch_unchecked)]
fn dropout_kernel<F: Float>(
    x: &Array<F>,
    y: &mut Array<F>,
    n: usize,
    seed_lo: u32,
    seed_hi: u32,
    threshold: u32,
    scale: f32,
) {
    let i = ABSOLUTE_POS;
    if i >= n {
        terminate!();
    }
    let h = mix32(mix32(u32::cast_from(i) ^ seed_lo) ^ seed_hi);
    let mut v = 0.0f32;
    if h >= threshold {
        v = f32::cast_from(x[i]) * scale;
    }
    y[i] = F::cast_from(v);
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
    macro_rules! go {
        ($f:ty) => {
            // SAFETY: contiguous buffers of n values of the dispatched type.
            unsafe {
                dropout_kernel::launch_unchecked::<$f, R>(
                    &x.client,
                    cube_count(n),
                    cube_dim(),
                    array(&x, n),
                    array(&out, n),
                    n,
                    seed as u32,
                    (seed >> 32) as u32,
                    threshold,
                    scale,
                )
            }
        };
    }
    dispatch_float!(x.dtype, "dropout", go);
    out
}

/// Lanes per row in the attention-softmax kernels: one plane (warp) per row, reduced with
/// plane intrinsics.
const LANES: u32 = 32;

/// `p[r, j] = softmax_j(masked(s[r, j] / div))` for rows `r` of `[B, H, T, L]` scores; `mask`
/// is `[B, T, L]` (1 = masked, broadcast over heads), masked scores become `f32::MIN` (a fully
/// masked row comes out uniform, as Burn's `mask_fill` + softmax). f32 math, `p` in `F`.
#[cube(launch_unchecked)]
fn attn_softmax_kernel<F: Float>(
    s: &Array<f32>,
    mask: &Array<u8>,
    p: &mut Array<F>,
    rows: usize,
    len: usize,
    heads_t: usize,
    t: usize,
    div: f32,
    #[comptime] masked: bool,
) {
    let row = CUBE_POS;
    if row >= rows {
        terminate!();
    }
    let lane = usize::cast_from(UNIT_POS);
    let base = row * len;
    let mbase = ((row / heads_t) * t + row % t) * len;
    let iters = len.div_ceil(32usize);
    let mut mx = 0.0f32;
    mx -= 3.402_823_5e38f32;
    for k in 0..iters {
        let j = lane + k * 32usize;
        if j < len {
            let mut v = s[base + j] / div;
            if masked {
                if mask[mbase + j] != 0u8 {
                    v = 0.0f32 - 3.402_823_5e38f32;
                }
            }
            if v > mx {
                mx = v;
            }
        }
    }
    mx = plane_max(mx);
    let mut sum = 0.0f32;
    for k in 0..iters {
        let j = lane + k * 32usize;
        if j < len {
            let mut v = s[base + j] / div;
            if masked {
                if mask[mbase + j] != 0u8 {
                    v = 0.0f32 - 3.402_823_5e38f32;
                }
            }
            sum += f32::exp(v - mx);
        }
    }
    sum = plane_sum(sum);
    for k in 0..iters {
        let j = lane + k * 32usize;
        if j < len {
            let mut v = s[base + j] / div;
            if masked {
                if mask[mbase + j] != 0u8 {
                    v = 0.0f32 - 3.402_823_5e38f32;
                }
            }
            p[base + j] = F::cast_from(f32::exp(v - mx) / sum);
        }
    }
}

/// `ds[r, j] = p[r, j] · (dp[r, j] − Σ_k p[r, k]·dp[r, k]) / div` (f32 math, `G` out), and 0
/// where masked (a masked score does not reach the output; for a fully masked row `p` is
/// uniform, not 0).
#[cube(launch_unchecked)]
fn attn_softmax_backward_kernel<F: Float, G: Float>(
    p: &Array<F>,
    dp: &Array<F>,
    mask: &Array<u8>,
    ds: &mut Array<G>,
    rows: usize,
    len: usize,
    heads_t: usize,
    t: usize,
    div: f32,
    #[comptime] masked: bool,
) {
    let row = CUBE_POS;
    if row >= rows {
        terminate!();
    }
    let lane = usize::cast_from(UNIT_POS);
    let base = row * len;
    let mbase = ((row / heads_t) * t + row % t) * len;
    let iters = len.div_ceil(32usize);
    let mut dot = 0.0f32;
    for k in 0..iters {
        let j = lane + k * 32usize;
        if j < len {
            dot += f32::cast_from(p[base + j]) * f32::cast_from(dp[base + j]);
        }
    }
    dot = plane_sum(dot);
    for k in 0..iters {
        let j = lane + k * 32usize;
        if j < len {
            let pj = f32::cast_from(p[base + j]);
            let mut g = pj * (f32::cast_from(dp[base + j]) - dot) / div;
            if masked {
                if mask[mbase + j] != 0u8 {
                    g = 0.0f32;
                }
            }
            ds[base + j] = G::cast_from(g);
        }
    }
}

fn rows_count(rows: usize) -> CubeCount {
    const MAX_X: usize = 65_535;
    if rows <= MAX_X {
        CubeCount::Static(rows as u32, 1, 1)
    } else {
        CubeCount::Static(MAX_X as u32, rows.div_ceil(MAX_X) as u32, 1)
    }
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
    macro_rules! go {
        ($f:ty) => {
            // SAFETY: contiguous buffers of the stated lengths; one plane per row.
            unsafe {
                attn_softmax_kernel::launch_unchecked::<$f, R>(
                    &s.client,
                    rows_count(rows),
                    CubeDim::new_1d(LANES),
                    array(&s, rows * len),
                    array(&mask_t, mask_len),
                    array(&p, rows * len),
                    rows,
                    len,
                    h * t,
                    t,
                    div,
                    masked,
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
    macro_rules! launch {
        ($f:ty, $g:ty) => {
            // SAFETY: contiguous buffers of rows × len values; one plane per row.
            unsafe {
                attn_softmax_backward_kernel::launch_unchecked::<$f, $g, R>(
                    &p.client,
                    rows_count(rows),
                    CubeDim::new_1d(LANES),
                    array(&p, rows * len),
                    array(&dp, rows * len),
                    array(&mask_t, mask_len),
                    array(&ds, rows * len),
                    rows,
                    len,
                    h * t,
                    t,
                    div,
                    masked,
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
fn layer_norm_kernel<F: Float>(
    x: &Array<F>,
    w: &Array<f32>,
    b: &Array<f32>,
    dy: &Array<F>,
    out: &mut Array<F>,
    rows: usize,
    len: usize,
    eps: f32,
    #[comptime] backward: bool,
) {
    let row = CUBE_POS;
    if row >= rows {
        terminate!();
    }
    let lane = usize::cast_from(UNIT_POS);
    let base = row * len;
    let iters = len.div_ceil(32usize);
    let n = f32::cast_from(len);
    let mut sum = 0.0f32;
    for k in 0..iters {
        let j = lane + k * 32usize;
        if j < len {
            sum += f32::cast_from(x[base + j]);
        }
    }
    let mean = plane_sum(sum) / n;
    let mut sq = 0.0f32;
    for k in 0..iters {
        let j = lane + k * 32usize;
        if j < len {
            let d = f32::cast_from(x[base + j]) - mean;
            sq += d * d;
        }
    }
    let rstd = 1.0f32 / f32::sqrt(plane_sum(sq) / n + eps);
    if backward {
        let mut sg = 0.0f32;
        let mut sgx = 0.0f32;
        for k in 0..iters {
            let j = lane + k * 32usize;
            if j < len {
                let g = f32::cast_from(dy[base + j]) * w[j];
                let xh = (f32::cast_from(x[base + j]) - mean) * rstd;
                sg += g;
                sgx += g * xh;
            }
        }
        let mg = plane_sum(sg) / n;
        let mgx = plane_sum(sgx) / n;
        for k in 0..iters {
            let j = lane + k * 32usize;
            if j < len {
                let g = f32::cast_from(dy[base + j]) * w[j];
                let xh = (f32::cast_from(x[base + j]) - mean) * rstd;
                out[base + j] = F::cast_from(rstd * (g - mg - xh * mgx));
            }
        }
    } else {
        for k in 0..iters {
            let j = lane + k * 32usize;
            if j < len {
                let xh = (f32::cast_from(x[base + j]) - mean) * rstd;
                out[base + j] = F::cast_from(xh * w[j] + b[j]);
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
    macro_rules! go {
        ($f:ty) => {
            // SAFETY: contiguous buffers: x, dy, out rows × len; w, b len; one plane per row.
            unsafe {
                layer_norm_kernel::launch_unchecked::<$f, R>(
                    &x.client,
                    rows_count(rows),
                    CubeDim::new_1d(LANES),
                    array(&x, rows * len),
                    array(&w, len),
                    array(&b, len),
                    array(&dy_t, rows * len),
                    array(&out, rows * len),
                    rows,
                    len,
                    eps,
                    backward,
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
fn rotary_kernel<F: Float>(
    x: &Array<F>,
    cos: &Array<f32>,
    sin: &Array<f32>,
    out: &mut Array<F>,
    n: usize,
    hd: usize,
    row: usize,
    half: usize,
    sign: f32,
) {
    let e = ABSOLUTE_POS;
    if e >= n {
        terminate!();
    }
    let j = e % hd;
    let v = f32::cast_from(x[e]);
    if j < 2usize * half {
        let i = j / 2usize;
        let a = (e / row) * half + i;
        let c = cos[a];
        let s = sin[a] * sign;
        if j % 2usize == 0usize {
            out[e] = F::cast_from(v * c - f32::cast_from(x[e + 1usize]) * s);
        } else {
            out[e] = F::cast_from(v * c + f32::cast_from(x[e - 1usize]) * s);
        }
    } else {
        out[e] = x[e];
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
    let sign = if inverse { -1.0f32 } else { 1.0 };
    macro_rules! go {
        ($f:ty) => {
            // SAFETY: x/out hold n values; cos/sin bt × half; partners stay in the same pair.
            unsafe {
                rotary_kernel::launch_unchecked::<$f, R>(
                    &x.client,
                    cube_count(n),
                    cube_dim(),
                    array(&x, n),
                    array(&cos, bt * half),
                    array(&sin, bt * half),
                    array(&out, n),
                    n,
                    hd,
                    h * hd,
                    half,
                    sign,
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
fn cross_entropy_kernel<F: Float>(
    x: &Array<F>,
    targets: &Array<i32>,
    g: &Array<f32>,
    nll: &mut Array<f32>,
    dx: &mut Array<F>,
    rows: usize,
    len: usize,
    #[comptime] backward: bool,
) {
    let row = CUBE_POS;
    if row >= rows {
        terminate!();
    }
    let lane = usize::cast_from(UNIT_POS);
    let base = row * len;
    let iters = len.div_ceil(32usize);
    let mut mx = 0.0f32;
    mx -= 3.402_823_5e38f32;
    for k in 0..iters {
        let j = lane + k * 32usize;
        if j < len {
            let v = f32::cast_from(x[base + j]);
            if v > mx {
                mx = v;
            }
        }
    }
    mx = plane_max(mx);
    let mut sum = 0.0f32;
    for k in 0..iters {
        let j = lane + k * 32usize;
        if j < len {
            sum += f32::exp(f32::cast_from(x[base + j]) - mx);
        }
    }
    sum = plane_sum(sum);
    let t = usize::cast_from(targets[row]);
    if backward {
        let gr = g[row];
        for k in 0..iters {
            let j = lane + k * 32usize;
            if j < len {
                let mut d = f32::exp(f32::cast_from(x[base + j]) - mx) / sum;
                if j == t {
                    d -= 1.0f32;
                }
                dx[base + j] = F::cast_from(d * gr);
            }
        }
    } else {
        if lane == 0usize {
            nll[row] = mx + f32::ln(sum) - f32::cast_from(x[base + t]);
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
    macro_rules! go {
        ($f:ty) => {
            // SAFETY: x rows × len, targets/g/nll rows, dx rows × len (or an unused 1); one
            // plane per row; targets index inside the row (checked on the host by callers).
            unsafe {
                cross_entropy_kernel::launch_unchecked::<$f, R>(
                    &x.client,
                    rows_count(rows),
                    CubeDim::new_1d(LANES),
                    array(&x, rows * len),
                    array(&targets, rows),
                    array(&g_t, rows),
                    array(&nll, rows),
                    array(&dx, dx_len),
                    rows,
                    len,
                    backward,
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
