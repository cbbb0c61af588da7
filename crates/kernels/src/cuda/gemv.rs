//! Host side of the batch-1 decode GEMVs (`kernels/gemv.rs`): a quantized weight's product
//! straight from its codes ([`gemv`], [`gemv_add`]), two or three weights of one input in one
//! launch ([`gemv_parts`]), and the dense GEMV of the LoRA factors and the LM head
//! ([`dense_gemv`]).

use burn_cubecl::{kernel::into_contiguous, tensor::CubeTensor, CubeRuntime};
use cubecl::CubeDim;
use qtune_quant::QuantFormat;

use super::kernels;
use super::launch::{array, as_f32, as_u8, empty, grid, scale_args, CubeB, ScaleArgs, PER_UNIT};
use crate::{QLayout, QWeightPrimitive};

/// Output rows per plane of the quantized GEMV ([`kernels::gemv_kernel`]'s `rows_per_plane`):
/// 1 (one plane per row), 2 or 4 (a lane's `x` vectors serve that many rows). Every value gives
/// the same outputs bit for bit (the GPU check compares them). The default, 2, is the fastest
/// measured on an H100 (session 16, `bench dequant --decode`): NF4 + DQ 4096→16384 31.0 / 23.3 /
/// 23.8 µs for 1 / 2 / 4, 16384→4096 31.6 / 24.0 / 32.7, 4096→4096 9.6 / 7.8 / 9.5; 8-bit
/// 4096→4096 10.9 / 10.4 / 11.4.
static GEMV_ROWS_PER_PLANE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(2);

/// Select the quantized GEMV's output rows per plane (1, 2 or 4); for the bench and the GPU
/// check, which compare them.
///
/// # Panics
/// For any other value.
pub fn set_gemv_rows_per_plane(rows: usize) {
    assert!(
        matches!(rows, 1 | 2 | 4),
        "qtune-kernels: set_gemv_rows_per_plane({rows}): the quantized GEMV takes 1, 2 or 4 \
         rows per plane"
    );
    GEMV_ROWS_PER_PLANE.store(rows, std::sync::atomic::Ordering::Relaxed);
}

/// The quantized GEMV's current output rows per plane (1, 2 or 4; default 2).
pub fn gemv_rows_per_plane() -> usize {
    GEMV_ROWS_PER_PLANE.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether the quantized GEMV stages `x` in shared memory where it fits (the default; see
/// [`x_stage_vecs`]). For the bench and the GPU check, which compare both ways (the same bits).
static GEMV_X_SHARED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Select whether the quantized GEMV stages `x` in shared memory ([`x_stage_vecs`]).
pub fn set_gemv_x_shared(on: bool) {
    GEMV_X_SHARED.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether the quantized GEMV stages `x` in shared memory where it fits (default true).
pub fn gemv_x_shared() -> bool {
    GEMV_X_SHARED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Most bytes of `x` (with the bank padding) a GEMV cube stages in shared memory.
const X_STAGE_BYTES: usize = 40 * 1024;

/// The `x_vecs` comptime argument of the GEMV kernels: the vectors of `x` (`in_features / 8`)
/// when it is staged in shared memory, else 0 (read from global memory). Read from global
/// memory, the 16-byte `x` loads of a plane's lanes lie 64 bytes apart (a lane's code vector
/// covers 32 weights), so each touches 16 cache lines and the L1 pipe moved 4× the bytes used:
/// ncu put the L1/TEX pipe at 83 % on fc_in (session 25). Staged with a bank-conflict-free
/// padding, each such load is 4 wavefronts.
fn x_stage_vecs(in_features: usize, dtype: burn::tensor::DType) -> usize {
    let vecs = in_features / PER_UNIT;
    let bytes = (vecs + vecs / 8 + 1) * PER_UNIT * dtype.size();
    if gemv_x_shared() && bytes <= X_STAGE_BYTES {
        vecs
    } else {
        0
    }
}

/// How [`kernels::gemv_kernel`] walks a weight of layout `l`: codes per row in u32 words (8
/// 4-bit values or 4 8-bit values each), read 4 words (16 bytes) per load where rows allow, else
/// one unit's worth (1 word, or 2 for 8-bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    four_bit: bool,
    vec_words: usize,
    units_per_vec: usize,
    vecs_per_row: usize,
    scale_per_vec: bool,
}

impl Plan {
    /// The plan for `x [1, in]` times `l`'s weight, or `None` when the kernel does not apply:
    /// `x` not a single row of `in_features`, `in_features`/`blocksize` not multiples of 8, no
    /// output rows.
    fn of(x: &[usize], l: &QLayout) -> Option<Self> {
        if x.len() != 2
            || x[0] != 1
            || x[1] != l.in_features
            || l.in_features % PER_UNIT != 0
            || l.blocksize % PER_UNIT != 0
            || l.out_features == 0
        {
            return None;
        }
        let four_bit = l.format != QuantFormat::Blockwise8;
        let words_per_row = if four_bit {
            l.in_features / 8
        } else {
            l.in_features / 4
        };
        let vec_words = if words_per_row % 4 == 0 {
            4
        } else if four_bit {
            1
        } else {
            2
        };
        let units_per_vec = if four_bit { vec_words } else { vec_words / 2 };
        Some(Self {
            four_bit,
            vec_words,
            units_per_vec,
            vecs_per_row: words_per_row / vec_words,
            scale_per_vec: l.blocksize % (units_per_vec * PER_UNIT) == 0,
        })
    }

    /// u32 words of `l`'s codes (of bytes for 8-bit, of nibble pairs for 4-bit).
    fn words(&self, l: &QLayout) -> usize {
        if self.four_bit {
            l.numel() / 8
        } else {
            l.numel() / 4
        }
    }

    /// Entries of the code map.
    fn map_len(&self) -> usize {
        if self.four_bit {
            16
        } else {
            256
        }
    }
}

/// A weight's arrays as [`kernels::gemv_kernel`] reads them (codes as bytes, the map in f32,
/// a double-quantized absmax as is: resolved in the kernel).
struct Operands<R: CubeRuntime> {
    codes: CubeTensor<R>,
    map: CubeTensor<R>,
    sa: ScaleArgs<R>,
    layout: QLayout,
}

fn operands<R: CubeRuntime, B: CubeB<R>>(w: &QWeightPrimitive<B>) -> Operands<R> {
    let w = w.clone();
    let codes = as_u8(w.codes);
    let sa = scale_args(w.absmax, w.layout.num_blocks(), true, &codes);
    Operands {
        codes,
        map: as_f32(w.code_map),
        sa,
        layout: w.layout,
    }
}

/// Cubes of [`kernels::GEMV_ROWS`] planes of `rows_per_plane` rows each for `rows` rows.
fn cubes(rows: usize, rows_per_plane: usize) -> usize {
    rows.div_ceil(kernels::GEMV_ROWS as usize * rows_per_plane)
}

/// `x [1, in] · dequant(w)ᵀ → [1, out]` in `x`'s dtype by [`kernels::gemv_kernel`], straight from
/// the codes (batch-1 decode; [`gemv_rows_per_plane`] output rows per plane), or `None` when it
/// does not apply: `x` not a single row, or `in_features`/`blocksize` not multiples of 8 (then
/// dequantize + GEMM).
pub fn gemv<R: CubeRuntime, B: CubeB<R>>(
    x: &CubeTensor<R>,
    w: &QWeightPrimitive<B>,
) -> Option<CubeTensor<R>> {
    gemv_add(x, w, &[])
}

/// [`gemv`] with up to three addends (`[1, out]` or `[out]`, `x`'s dtype) summed into the
/// result in f32 before its one rounding; `None` as [`gemv`] or for other addends.
pub fn gemv_add<R: CubeRuntime, B: CubeB<R>>(
    x: &CubeTensor<R>,
    w: &QWeightPrimitive<B>,
    adds: &[CubeTensor<R>],
) -> Option<CubeTensor<R>> {
    gemv_epilogue(x, w, adds, false)
}

/// `gelu_new(x · dequant(w)ᵀ + bias)` for one row (`bias` `[out]` in `x`'s dtype), the bias and
/// the activation on the f32 sum before its one rounding (GPT-J's `fc_in` at decode: no
/// separate `gelu_new` launch); `None` as [`gemv_add`].
pub fn gemv_bias_gelu<R: CubeRuntime, B: CubeB<R>>(
    x: &CubeTensor<R>,
    w: &QWeightPrimitive<B>,
    bias: &CubeTensor<R>,
) -> Option<CubeTensor<R>> {
    gemv_epilogue(x, w, std::slice::from_ref(bias), true)
}

/// [`gemv_add`], then `gelu_new` of the sum with `gelu`.
fn gemv_epilogue<R: CubeRuntime, B: CubeB<R>>(
    x: &CubeTensor<R>,
    w: &QWeightPrimitive<B>,
    adds: &[CubeTensor<R>],
    gelu: bool,
) -> Option<CubeTensor<R>> {
    let l = w.layout;
    let plan = Plan::of(x.meta.shape(), &l)?;
    if adds.len() > 3
        || adds
            .iter()
            .any(|a| a.dtype != x.dtype || a.meta.num_elements() != l.out_features)
    {
        return None;
    }
    let adds: Vec<CubeTensor<R>> = adds.iter().map(|a| into_contiguous(a.clone())).collect();
    let x = into_contiguous(x.clone());
    let op = operands(w);
    let sa = &op.sa;
    let y = empty(&x, vec![1, l.out_features], x.dtype);
    let rows = l.out_features;
    let rows_per_plane = gemv_rows_per_plane();
    let count = grid(cubes(rows, rows_per_plane));
    let dim = CubeDim::new_2d(32, kernels::GEMV_ROWS);
    // SAFETY: codes hold `words` u32 words (validated layout); absmax one scale per
    // block, or (fused) nested codes per block, nested absmax per nested block and a
    // 256-entry map; map 16/256 entries; x `in` values (a multiple of 8); y `out` values.
    unsafe {
        launch_float!(
            x.dtype,
            else return None,
            kernels::gemv_kernel(
            &x.client,
            count,
            dim,
            PER_UNIT,
            plan.vec_words,
            array(&op.codes, plan.words(&l)),
            array(&sa.scales, sa.lens[0]),
            array(&sa.ncodes, sa.lens[1]),
            array(&sa.nabs, sa.lens[2]),
            array(&sa.nmap, sa.lens[3]),
            array(&op.map, plan.map_len()),
            array(&x, l.in_features),
            array(adds.first().unwrap_or(&y), rows),
            array(adds.get(1).unwrap_or(&y), rows),
            array(adds.get(2).unwrap_or(&y), rows),
            array(&y, rows),
            rows,
            plan.vecs_per_row,
            sa.offset,
            l.blocksize,
            sa.nested,
            sa.fused,
            sa.nested_blocksize,
            plan.four_bit,
            plan.units_per_vec,
            plan.scale_per_vec,
            adds.len() as u32,
            rows_per_plane,
            gelu,
            x_stage_vecs(l.in_features, x.dtype),
            )
        )
    }
    Some(y)
}

/// `[x · dequant(w)ᵀ for w in ws]` for two or three weights of one input `x [1, in]` in one launch
/// ([`kernels::gemv_parts_kernel`]: q, k and v; gate and up), each output equal bit for bit to
/// that weight's [`gemv`]. `None` (nothing launched) where `gemv` would not apply to one of them,
/// or where they differ in format, `in_features`, block size or how their absmax is stored.
pub fn gemv_parts<R: CubeRuntime, B: CubeB<R>>(
    x: &CubeTensor<R>,
    ws: &[&QWeightPrimitive<B>],
) -> Option<Vec<CubeTensor<R>>> {
    if !(2..=3).contains(&ws.len()) {
        return None;
    }
    let plans: Vec<Plan> = ws
        .iter()
        .map(|w| Plan::of(x.meta.shape(), &w.layout))
        .collect::<Option<_>>()?;
    let l0 = ws[0].layout;
    let same = |w: &&QWeightPrimitive<B>| {
        let l = w.layout;
        l.format == l0.format && l.in_features == l0.in_features && l.blocksize == l0.blocksize
    };
    if !ws.iter().all(same) || plans.iter().any(|p| *p != plans[0]) {
        return None;
    }
    let plan = plans[0];
    let ops: Vec<Operands<R>> = ws.iter().map(|w| operands(w)).collect();
    let s0 = &ops[0].sa;
    let kind = |sa: &ScaleArgs<R>| (sa.nested, sa.fused, sa.nested_blocksize);
    if ops.iter().any(|o| kind(&o.sa) != kind(s0)) {
        return None;
    }
    let x = into_contiguous(x.clone());
    let ys: Vec<CubeTensor<R>> = ops
        .iter()
        .map(|o| empty(&x, vec![1, o.layout.out_features], x.dtype))
        .collect();
    let rows_per_plane = gemv_rows_per_plane();
    let rows: Vec<usize> = ops.iter().map(|o| o.layout.out_features).collect();
    let part_cubes: Vec<usize> = rows.iter().map(|&r| cubes(r, rows_per_plane)).collect();
    let count = grid(part_cubes.iter().sum());
    let dim = CubeDim::new_2d(32, kernels::GEMV_ROWS);
    // A two-part launch repeats part 1 as part 2: no cube reaches it.
    let p2 = ops.len() - 1;
    let (o0, o1, o2) = (&ops[0], &ops[1], &ops[p2]);
    let (y0, y1, y2) = (&ys[0], &ys[1], &ys[p2]);
    // SAFETY: as `gemv_add` for each part (its own codes, scales, map and output, the lengths
    // from its own layout); x holds `in` values, shared.
    unsafe {
        launch_float!(
            x.dtype,
            else return None,
            kernels::gemv_parts_kernel(
            &x.client,
            count,
            dim,
            PER_UNIT,
            plan.vec_words,
            array(&o0.codes, plan.words(&o0.layout)),
            array(&o0.sa.scales, o0.sa.lens[0]),
            array(&o0.sa.ncodes, o0.sa.lens[1]),
            array(&o0.sa.nabs, o0.sa.lens[2]),
            array(&o0.sa.nmap, o0.sa.lens[3]),
            array(&o0.map, plan.map_len()),
            array(y0, rows[0]),
            array(&o1.codes, plan.words(&o1.layout)),
            array(&o1.sa.scales, o1.sa.lens[0]),
            array(&o1.sa.ncodes, o1.sa.lens[1]),
            array(&o1.sa.nabs, o1.sa.lens[2]),
            array(&o1.sa.nmap, o1.sa.lens[3]),
            array(&o1.map, plan.map_len()),
            array(y1, rows[1]),
            array(&o2.codes, plan.words(&o2.layout)),
            array(&o2.sa.scales, o2.sa.lens[0]),
            array(&o2.sa.ncodes, o2.sa.lens[1]),
            array(&o2.sa.nabs, o2.sa.lens[2]),
            array(&o2.sa.nmap, o2.sa.lens[3]),
            array(&o2.map, plan.map_len()),
            array(y2, rows[p2]),
            array(&x, l0.in_features),
            array(y0, 1),
            rows[0],
            rows[1],
            rows[p2],
            part_cubes[0],
            part_cubes[1],
            plan.vecs_per_row,
            o0.sa.offset,
            o1.sa.offset,
            o2.sa.offset,
            l0.blocksize,
            s0.nested,
            s0.fused,
            s0.nested_blocksize,
            plan.four_bit,
            plan.units_per_vec,
            plan.scale_per_vec,
            rows_per_plane,
            x_stage_vecs(l0.in_features, x.dtype),
            )
        )
    }
    Some(ys)
}

/// How [`kernels::dense_gemv_kernel`] lays out `n` rows of `vecs` vectors: a cube per row when
/// rows are few and long (LoRA A: 16 × 4096), a lane per row when they are short (LoRA B:
/// 4096 × 16), else a plane per row; `(split, per_lane, cubes)`.
fn dense_layout(n: usize, vecs: usize) -> (bool, bool, usize) {
    let planes = kernels::GEMV_ROWS as usize;
    if n < 256 && vecs >= 256 {
        (true, false, n)
    } else if vecs <= kernels::LANE_ROW_VECS {
        (false, true, n.div_ceil(32 * planes))
    } else {
        (false, false, n.div_ceil(planes))
    }
}

/// Whether [`dense_gemv`] applies to `x [.., k]`, `w [n, k]` and `y [.., n]`: `k` a multiple of
/// 8, one float dtype, the element counts of one row.
fn dense_fits<R: CubeRuntime>(x: &CubeTensor<R>, w: &CubeTensor<R>, y: &CubeTensor<R>) -> bool {
    let (sx, sw) = (x.meta.shape(), w.meta.shape());
    let (n, k) = (sw[sw.len() - 2], sw[sw.len() - 1]);
    let numel = |s: &[usize]| s.iter().product::<usize>();
    k % PER_UNIT == 0
        && k != 0
        && n != 0
        && numel(sx) == k
        && numel(sw) == n * k
        && numel(y.meta.shape()) == n
        && x.dtype == w.dtype
        && x.dtype == y.dtype
}

/// `x [1, k] · w[n, k]ᵀ` (contiguous, one float dtype) by [`kernels::dense_gemv_kernel`] into
/// `y [.., n]` in that dtype: written, or with `alpha` accumulated (`y += alpha·x·wᵀ`, `y`
/// then already holding values and not shared). `None` (nothing launched) when the kernel does
/// not apply: `k` not a multiple of 8, a dtype other than F32/F16/BF16.
pub(crate) fn dense_gemv<R: CubeRuntime>(
    x: &CubeTensor<R>,
    w: &CubeTensor<R>,
    y: &CubeTensor<R>,
    alpha: Option<f32>,
) -> Option<()> {
    if !dense_fits(x, w, y) {
        return None;
    }
    let sw = w.meta.shape();
    let (n, k) = (sw[sw.len() - 2], sw[sw.len() - 1]);
    let vecs = k / PER_UNIT;
    let (split, per_lane, cubes) = dense_layout(n, vecs);
    let count = grid(cubes);
    let dim = CubeDim::new_2d(32, kernels::GEMV_ROWS);
    // SAFETY: x holds k values, w n·k, y n (checked above), all contiguous; k is a
    // multiple of the vector width.
    unsafe {
        launch_float!(
            x.dtype,
            else return None,
            kernels::dense_gemv_kernel(
            &x.client,
            count,
            dim,
            PER_UNIT,
            array(x, k),
            array(w, n * k),
            array(y, n),
            n,
            vecs,
            alpha.unwrap_or(1.0),
            PER_UNIT,
            alpha.is_some(),
            split,
            per_lane,
            )
        )
    }
    Some(())
}

/// Whether [`dense_gemv_parts`] applies to `parts`: two or three, each fit for [`dense_gemv`],
/// one weight shape and one dtype.
fn dense_parts_fit<R: CubeRuntime>(
    parts: &[(&CubeTensor<R>, &CubeTensor<R>, &CubeTensor<R>)],
) -> bool {
    let Some(&(x0, w0, _)) = parts.first() else {
        return false;
    };
    (2..=3).contains(&parts.len())
        && parts.iter().all(|&(x, w, y)| {
            dense_fits(x, w, y) && w.meta.shape() == w0.meta.shape() && x.dtype == x0.dtype
        })
}

/// LoRA's `y_i + scaling_i·(x·A_iᵀ)·B_iᵀ` for two or three adapters of one row `x [1, in]`
/// without dropout, the factors already in `x`'s dtype: the `A` products in one
/// [`dense_gemv_parts`] launch, the `B` products accumulated onto the `ys` in another (one each
/// where the outputs differ in size). Each result equals the adapter's own two-GEMV product bit
/// for bit (the same rows of the same kernel). `Err` with the `ys` (nothing launched) where that
/// does not apply: a `y` that is shared or not dense, `A` factors of different shapes, a rank not
/// a multiple of 8.
pub(crate) fn lora_acc_parts<R: CubeRuntime>(
    ys: Vec<CubeTensor<R>>,
    x: &CubeTensor<R>,
    factors: &[[CubeTensor<R>; 2]],
    scalings: &[f32],
) -> Result<Vec<CubeTensor<R>>, Vec<CubeTensor<R>>> {
    let ys: Vec<CubeTensor<R>> = ys.into_iter().map(into_contiguous).collect();
    if ys.len() != factors.len()
        || x.meta.shape().first() != Some(&1)
        || ys
            .iter()
            .any(|y| !(y.can_mut() && y.is_contiguous_buffer()))
    {
        return Err(ys);
    }
    let x = into_contiguous(x.clone());
    let factors: Vec<[CubeTensor<R>; 2]> = factors
        .iter()
        .map(|[a, b]| [into_contiguous(a.clone()), into_contiguous(b.clone())])
        .collect();
    let us: Vec<CubeTensor<R>> = factors
        .iter()
        .map(|[a, _]| empty(&x, vec![1, a.meta.shape()[0]], x.dtype))
        .collect();
    let launched = {
        let down: Vec<_> = factors
            .iter()
            .zip(&us)
            .map(|([a, _], u)| (&x, a, u))
            .collect();
        let up: Vec<_> = factors
            .iter()
            .zip(&us)
            .zip(&ys)
            .map(|(([_, b], u), y)| (u, b, y))
            .collect();
        // Outputs of different sizes (Llama's q and v under GQA) take one `B` launch each.
        let up_each = !dense_parts_fit(&up);
        dense_parts_fit(&down)
            && up.iter().all(|&(u, b, y)| dense_fits(u, b, y))
            && dense_gemv_parts(&down, None).is_some()
            && if up_each {
                up.iter()
                    .zip(scalings)
                    .all(|(&(u, b, y), &s)| dense_gemv(u, b, y, Some(s)).is_some())
            } else {
                dense_gemv_parts(&up, Some(scalings)).is_some()
            }
    };
    if launched {
        Ok(ys)
    } else {
        Err(ys)
    }
}

/// [`dense_gemv`] of two or three parts `(x, w, y)` whose weights share one shape and whose
/// operands share one dtype, in one launch ([`kernels::dense_gemv_parts_kernel`]): written, or
/// with `alphas` accumulated, each part with its own alpha. Each output equals that part's own
/// [`dense_gemv`] bit for bit. `None` (nothing launched) where `dense_gemv` would not apply to
/// a part or the shapes or dtypes differ.
pub(crate) fn dense_gemv_parts<R: CubeRuntime>(
    parts: &[(&CubeTensor<R>, &CubeTensor<R>, &CubeTensor<R>)],
    alphas: Option<&[f32]>,
) -> Option<()> {
    if !dense_parts_fit(parts) || alphas.is_some_and(|a| a.len() != parts.len()) {
        return None;
    }
    let (x0, w0, _) = parts[0];
    let sw = w0.meta.shape();
    let (n, k) = (sw[sw.len() - 2], sw[sw.len() - 1]);
    let vecs = k / PER_UNIT;
    let (split, per_lane, cubes) = dense_layout(n, vecs);
    let count = grid(cubes * parts.len());
    let dim = CubeDim::new_2d(32, kernels::GEMV_ROWS);
    let last = parts.len() - 1;
    let ((xa, wa, ya), (xb, wb, yb), (xc, wc, yc)) = (parts[0], parts[1], parts[last]);
    let alpha = |i: usize| alphas.map_or(1.0, |a| a[i]);
    // SAFETY: as `dense_gemv` for each part (checked above); a two-part launch repeats part 1
    // as part 2, which no cube reaches.
    unsafe {
        launch_float!(
            x0.dtype,
            else return None,
            kernels::dense_gemv_parts_kernel(
            &x0.client,
            count,
            dim,
            PER_UNIT,
            array(xa, k),
            array(wa, n * k),
            array(ya, n),
            array(xb, k),
            array(wb, n * k),
            array(yb, n),
            array(xc, k),
            array(wc, n * k),
            array(yc, n),
            n,
            vecs,
            cubes,
            alpha(0),
            alpha(1),
            alpha(last),
            PER_UNIT,
            alphas.is_some(),
            split,
            per_lane,
            )
        )
    }
    Some(())
}
