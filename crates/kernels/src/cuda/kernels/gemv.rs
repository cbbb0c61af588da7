//! Batch-1 quantized GEMV kernels for decoding, straight from the codes (block scale applied to
//! each block's sum): one weight, or two or three of one input in one launch. The dense one
//! (LoRA factors, the LM head) is in `dense_gemv.rs`.

use cubecl::prelude::*;

use super::{block_scale, ftz, gelu_tanh};

/// Rows (planes) per cube of [`gemv_kernel`].
pub const GEMV_ROWS: u32 = 8;

/// Batch-1 quantized GEMV `y[o] = Σ_k x[k]·W[o, k]` straight from the codes (4-bit NF4/FP4 with
/// `four_bit`, else blockwise 8-bit): one plane per `rows_per_plane` (R = 1, 2 or 4) adjacent
/// output rows. Codes are read as `Vector<u32, W>` (`words` = W words: 16 bytes per lane with
/// W = 4), two vectors per lane per row per iteration, 32 vectors apart, all 2·R loads issued
/// before any is used (decode is memory-latency bound: one 4-byte word per lane in flight reached
/// ~10 % of the bandwidth; adjacent pairs, 32 bytes per lane, measured slower). A vector holds
/// `units_per_vec` units of 8 values (one 4-bit word, or two 8-bit words, per unit), each against
/// one `Vector<F, 8>` of `x`; a lane loads its `x` vectors once per vector position and uses them
/// for all R rows (x was re-read through L1 for every row with R = 1).
///
/// Each row's f32 sum is formed exactly as with R = 1 (the same terms in the same order, its own
/// accumulator, its own `plane_sum`), so R only changes which plane computes it: outputs are
/// designed to be bit-identical for every R (the GPU check compares them). A plane whose last
/// rows lie past `rows` reads the last row again for them (clamped loads) and writes nothing
/// there.
///
/// The block scale is applied to a sum, not to each weight: `Σ_block absmax·(Σ x·code)` in f32
/// (one multiply per vector with `scale_per_vec`, a vector then never straddles a block; else
/// one per unit). That is the product with the f32-dequantized weight; dequantize-then-GEMM
/// rounds each weight to `F` first (and flushes subnormal products), so the two differ by those
/// roundings (relative 2⁻⁹ per bf16 weight, unbiased) and by summation order. Per weight this
/// leaves a nibble, a table read and an FMA: the per-weight scale, flush and rounding made the
/// kernel ALU-bound at ~1 TB/s. With `fused` a double-quantized absmax is resolved in the kernel
/// (one launch per linear). The first `adds` (≤ 3) of `add0..add2` (one value per row: a bias,
/// residuals) are added to the f32 sum before its one rounding; unused ones are not read. With
/// `gelu`, `gelu_new` of that sum is written instead (GPT-J's `fc_in` at decode, its bias the
/// one add: the cuBLASLt GELU_BIAS epilogue's order, on the f32 sum, rounded once).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn gemv_kernel<F: Float, N: Size, W: Size>(
    codes: &Array<Vector<u32, W>>,
    absmax: &Array<f32>,
    nested_codes: &Array<u8>,
    nested_absmax: &Array<f32>,
    nested_map: &Array<f32>,
    map: &Array<f32>,
    x: &Array<Vector<F, N>>,
    add0: &Array<F>,
    add1: &Array<F>,
    add2: &Array<F>,
    y: &mut Array<F>,
    rows: usize,
    vecs_per_row: usize,
    offset: f32,
    #[comptime] blocksize: usize,
    #[comptime] nested: bool,
    #[comptime] fused: bool,
    #[comptime] nested_blocksize: usize,
    #[comptime] four_bit: bool,
    #[comptime] units_per_vec: usize,
    #[comptime] scale_per_vec: bool,
    #[comptime] adds: u32,
    #[comptime] rows_per_plane: usize,
    #[comptime] gelu: bool,
    #[comptime] x_vecs: usize,
) {
    gemv_rows::<F, N, W>(
        codes,
        absmax,
        nested_codes,
        nested_absmax,
        nested_map,
        map,
        x,
        add0,
        add1,
        add2,
        y,
        rows,
        vecs_per_row,
        offset,
        CUBE_POS,
        blocksize,
        nested,
        fused,
        nested_blocksize,
        four_bit,
        units_per_vec,
        scale_per_vec,
        adds,
        rows_per_plane,
        gelu,
        x_vecs,
    );
}

/// The rows of cube `cube` of [`gemv_kernel`] (or of one part of [`gemv_parts_kernel`]), with
/// the code map `map` staged in shared memory here.
#[cube]
#[allow(clippy::too_many_arguments)]
fn gemv_rows<F: Float, N: Size, W: Size>(
    codes: &Array<Vector<u32, W>>,
    absmax: &Array<f32>,
    nested_codes: &Array<u8>,
    nested_absmax: &Array<f32>,
    nested_map: &Array<f32>,
    map: &Array<f32>,
    x: &Array<Vector<F, N>>,
    add0: &Array<F>,
    add1: &Array<F>,
    add2: &Array<F>,
    y: &mut Array<F>,
    rows: usize,
    vecs_per_row: usize,
    offset: f32,
    cube: usize,
    #[comptime] blocksize: usize,
    #[comptime] nested: bool,
    #[comptime] fused: bool,
    #[comptime] nested_blocksize: usize,
    #[comptime] four_bit: bool,
    #[comptime] units_per_vec: usize,
    #[comptime] scale_per_vec: bool,
    #[comptime] adds: u32,
    #[comptime] rows_per_plane: usize,
    #[comptime] gelu: bool,
    #[comptime] x_vecs: usize,
) {
    // The plane's first row; its rows are `row0 .. row0 + rows_per_plane`.
    let row0 = (cube * (GEMV_ROWS as usize) + usize::cast_from(UNIT_POS_Y)) * rows_per_plane;
    let lane = usize::cast_from(UNIT_POS_X);
    let last = vecs_per_row - 1usize;
    let iters = vecs_per_row.div_ceil(64usize);
    // Per row (local arrays, indexed by unrolled constants only: registers): the f32 sum and
    // the two code vectors of the current iteration; the lane's `x` vectors for one position.
    let mut acc = Array::<f32>::new(rows_per_plane);
    let mut c0 = Array::<Vector<u32, W>>::new(rows_per_plane);
    let mut c1 = Array::<Vector<u32, W>>::new(rows_per_plane);
    let mut xs = Array::<Vector<F, N>>::new(units_per_vec);
    #[unroll]
    for r in 0..rows_per_plane {
        acc[r] = 0.0f32;
    }
    // The first iteration's loads (codes and the lane's first `x` vectors, clamped in range as
    // below; a plane past the last row reads the last row and stops after the barrier) go out
    // before the code map is staged and the cube synchronises, so the cube's first memory round
    // trip overlaps the map's. No register is added: the loop's own arrays hold them.
    let jc0 = select(lane < vecs_per_row, lane, last);
    let jc1 = select(lane + 32usize < vecs_per_row, lane + 32usize, last);
    #[unroll]
    for r in 0..rows_per_plane {
        let base = gemv_row(row0, r, rows) * vecs_per_row;
        c0[r] = codes[base + jc0];
        c1[r] = codes[base + jc1];
    }
    // `x_vecs` > 0: the whole `x` (that many vectors) staged in shared memory.
    let x_shared = comptime!(x_vecs > 0);
    let mut xsh = SharedMemory::<Vector<F, N>>::new(comptime!(x_vecs + x_vecs / 8 + 1));
    let tid = UNIT_POS_Y * 32u32 + UNIT_POS_X;
    if x_shared {
        // The whole `x` into shared memory, coalesced, 4 vectors per unit in flight at a time.
        let threads = comptime!(GEMV_ROWS as usize * 32);
        let rounds = comptime!(x_vecs.div_ceil(4 * GEMV_ROWS as usize * 32));
        let t = usize::cast_from(tid);
        let mut stage = Array::<Vector<F, N>>::new(4usize);
        for m in 0..rounds {
            #[unroll]
            for u in 0..4usize {
                let c = t + (4usize * m + u) * threads;
                stage[u] = x[select(c < x_vecs, c, x_vecs - 1usize)];
            }
            #[unroll]
            for u in 0..4usize {
                let c = t + (4usize * m + u) * threads;
                if c < x_vecs {
                    xsh[x_slot(c)] = stage[u];
                }
            }
        }
    } else {
        #[unroll]
        for q in 0..units_per_vec {
            xs[q] = x[jc0 * units_per_vec + q];
        }
    }
    let entries = if four_bit { 16u32 } else { 256u32 };
    let mut lut = SharedMemory::<f32>::new(if four_bit { 16usize } else { 256usize });
    if tid < entries {
        lut[tid as usize] = map[tid as usize];
    }
    sync_cube();
    if row0 >= rows {
        terminate!();
    }
    for k in 0..iters {
        let j0 = lane + k * 64usize;
        let j1 = j0 + 32usize;
        if k > 0 {
            // Every load first (clamped in range; a clamped vector's terms are skipped below).
            let jc0 = select(j0 < vecs_per_row, j0, last);
            let jc1 = select(j1 < vecs_per_row, j1, last);
            #[unroll]
            for r in 0..rows_per_plane {
                let base = gemv_row(row0, r, rows) * vecs_per_row;
                c0[r] = codes[base + jc0];
                c1[r] = codes[base + jc1];
            }
        }
        if j0 < vecs_per_row {
            // (k = 0: the hoisted loads above, unless x is staged.)
            if x_shared {
                #[unroll]
                for q in 0..units_per_vec {
                    xs[q] = xsh[x_slot(j0 * units_per_vec + q)];
                }
            } else {
                if k > 0 {
                    #[unroll]
                    for q in 0..units_per_vec {
                        xs[q] = x[j0 * units_per_vec + q];
                    }
                }
            }
            #[unroll]
            for r in 0..rows_per_plane {
                acc[r] += gemv_vector::<F, N, W>(
                    c0[r],
                    j0,
                    gemv_row(row0, r, rows),
                    &xs,
                    &lut,
                    absmax,
                    nested_codes,
                    nested_absmax,
                    nested_map,
                    vecs_per_row,
                    offset,
                    blocksize,
                    nested,
                    fused,
                    nested_blocksize,
                    four_bit,
                    units_per_vec,
                    scale_per_vec,
                );
            }
        }
        if j1 < vecs_per_row {
            #[unroll]
            for q in 0..units_per_vec {
                if x_shared {
                    xs[q] = xsh[x_slot(j1 * units_per_vec + q)];
                } else {
                    xs[q] = x[j1 * units_per_vec + q];
                }
            }
            #[unroll]
            for r in 0..rows_per_plane {
                acc[r] += gemv_vector::<F, N, W>(
                    c1[r],
                    j1,
                    gemv_row(row0, r, rows),
                    &xs,
                    &lut,
                    absmax,
                    nested_codes,
                    nested_absmax,
                    nested_map,
                    vecs_per_row,
                    offset,
                    blocksize,
                    nested,
                    fused,
                    nested_blocksize,
                    four_bit,
                    units_per_vec,
                    scale_per_vec,
                );
            }
        }
    }
    // Row `row0 + r`'s sum goes to lane `r`, which adds the addends and writes it (one
    // coalesced store per plane).
    let mut sum = 0.0f32;
    #[unroll]
    for r in 0..rows_per_plane {
        let s = plane_sum(acc[r]);
        sum = select(lane == r, s, sum);
    }
    let row = row0 + lane;
    if lane < rows_per_plane && row < rows {
        if adds > 0u32 {
            sum += f32::cast_from(add0[row]);
        }
        if adds > 1u32 {
            sum += f32::cast_from(add1[row]);
        }
        if adds > 2u32 {
            sum += f32::cast_from(add2[row]);
        }
        if gelu {
            sum = 0.5f32 * sum * (1.0f32 + gelu_tanh(sum));
        }
        y[row] = F::cast_from(sum);
    }
}

/// [`gemv_kernel`] for two or three quantized weights of one input `x` in one launch (q, k and v;
/// Llama's gate and up): part `p`'s cubes are `cubes_before(p) .. cubes_before(p + 1)` (the
/// first `cubes0` cubes part 0, the next `cubes1` part 1, the rest part 2; a two-part launch has
/// no cube past part 1, and its part-2 arguments repeat part 1's, never read). Each part has its
/// own codes, scales, code map, offset and output; they share the format, block size and
/// `in_features` (the comptime arguments). A row's sum is computed exactly as by `gemv_kernel`
/// (same terms, same order), so each output equals that part's own GEMV bit for bit.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn gemv_parts_kernel<F: Float, N: Size, W: Size>(
    codes0: &Array<Vector<u32, W>>,
    absmax0: &Array<f32>,
    nested_codes0: &Array<u8>,
    nested_absmax0: &Array<f32>,
    nested_map0: &Array<f32>,
    map0: &Array<f32>,
    y0: &mut Array<F>,
    codes1: &Array<Vector<u32, W>>,
    absmax1: &Array<f32>,
    nested_codes1: &Array<u8>,
    nested_absmax1: &Array<f32>,
    nested_map1: &Array<f32>,
    map1: &Array<f32>,
    y1: &mut Array<F>,
    codes2: &Array<Vector<u32, W>>,
    absmax2: &Array<f32>,
    nested_codes2: &Array<u8>,
    nested_absmax2: &Array<f32>,
    nested_map2: &Array<f32>,
    map2: &Array<f32>,
    y2: &mut Array<F>,
    x: &Array<Vector<F, N>>,
    unused: &Array<F>,
    rows0: usize,
    rows1: usize,
    rows2: usize,
    cubes0: usize,
    cubes1: usize,
    vecs_per_row: usize,
    offset0: f32,
    offset1: f32,
    offset2: f32,
    #[comptime] blocksize: usize,
    #[comptime] nested: bool,
    #[comptime] fused: bool,
    #[comptime] nested_blocksize: usize,
    #[comptime] four_bit: bool,
    #[comptime] units_per_vec: usize,
    #[comptime] scale_per_vec: bool,
    #[comptime] rows_per_plane: usize,
    #[comptime] x_vecs: usize,
) {
    let cube = CUBE_POS;
    // The branch is uniform over a cube, so each `gemv_rows`' `sync_cube` is reached by all of
    // its units.
    if cube < cubes0 {
        gemv_rows::<F, N, W>(
            codes0,
            absmax0,
            nested_codes0,
            nested_absmax0,
            nested_map0,
            map0,
            x,
            unused,
            unused,
            unused,
            y0,
            rows0,
            vecs_per_row,
            offset0,
            cube,
            blocksize,
            nested,
            fused,
            nested_blocksize,
            four_bit,
            units_per_vec,
            scale_per_vec,
            0u32,
            rows_per_plane,
            false,
            x_vecs,
        );
    } else if cube < cubes0 + cubes1 {
        gemv_rows::<F, N, W>(
            codes1,
            absmax1,
            nested_codes1,
            nested_absmax1,
            nested_map1,
            map1,
            x,
            unused,
            unused,
            unused,
            y1,
            rows1,
            vecs_per_row,
            offset1,
            cube - cubes0,
            blocksize,
            nested,
            fused,
            nested_blocksize,
            four_bit,
            units_per_vec,
            scale_per_vec,
            0u32,
            rows_per_plane,
            false,
            x_vecs,
        );
    } else {
        gemv_rows::<F, N, W>(
            codes2,
            absmax2,
            nested_codes2,
            nested_absmax2,
            nested_map2,
            map2,
            x,
            unused,
            unused,
            unused,
            y2,
            rows2,
            vecs_per_row,
            offset2,
            cube - cubes0 - cubes1,
            blocksize,
            nested,
            fused,
            nested_blocksize,
            four_bit,
            units_per_vec,
            scale_per_vec,
            0u32,
            rows_per_plane,
            false,
            x_vecs,
        );
    }
}

/// The shared-memory slot of `x` vector `c`: one slot skipped after every 8, so that the 8 lanes
/// of a quarter plane, reading vectors `u·lane + q` (`u` = 1, 2 or 4 vectors per code vector),
/// hit 8 different 16-byte bank groups (no conflict). Read from global memory, lanes 64 bytes
/// apart touched 16 cache lines per 16-byte load: a quarter of each line used per wavefront.
#[cube]
fn x_slot(c: usize) -> usize {
    c + c / 8usize
}

/// Row `row0 + r` of a [`gemv_kernel`] plane, clamped to the last row (a ragged plane's rows
/// past the end re-read the last row and are never written).
#[cube]
fn gemv_row(row0: usize, r: usize, rows: usize) -> usize {
    let row = row0 + r;
    select(row < rows, row, rows - 1usize)
}

/// `Σ x·w` over code vector `j` of `row` for [`gemv_kernel`] (its `units_per_vec` units, against
/// the lane's `x` vectors `xs`): the block scale times the vector's unscaled sum
/// (`scale_per_vec`), or per unit.
#[cube]
#[allow(clippy::too_many_arguments)]
fn gemv_vector<F: Float, N: Size, W: Size>(
    cv: Vector<u32, W>,
    j: usize,
    row: usize,
    xs: &Array<Vector<F, N>>,
    lut: &SharedMemory<f32>,
    absmax: &Array<f32>,
    nested_codes: &Array<u8>,
    nested_absmax: &Array<f32>,
    nested_map: &Array<f32>,
    vecs_per_row: usize,
    offset: f32,
    #[comptime] blocksize: usize,
    #[comptime] nested: bool,
    #[comptime] fused: bool,
    #[comptime] nested_blocksize: usize,
    #[comptime] four_bit: bool,
    #[comptime] units_per_vec: usize,
    #[comptime] scale_per_vec: bool,
) -> f32 {
    let first = (row * vecs_per_row + j) * units_per_vec; // global unit index
    let mut acc = 0.0f32;
    #[unroll]
    for q in 0..units_per_vec {
        let u = gemv_unit::<F, N, W>(cv, q, xs[q], lut, four_bit);
        if scale_per_vec {
            acc += u;
        } else {
            let a = gemv_scale(
                absmax,
                nested_codes,
                nested_absmax,
                nested_map,
                first + q,
                offset,
                blocksize,
                nested,
                fused,
                nested_blocksize,
            );
            acc += a * u;
        }
    }
    if scale_per_vec {
        let a = gemv_scale(
            absmax,
            nested_codes,
            nested_absmax,
            nested_map,
            first,
            offset,
            blocksize,
            nested,
            fused,
            nested_blocksize,
        );
        acc *= a;
    }
    acc
}

/// `Σ x·code` over unit `q` (8 values) of code vector `cv`, unscaled.
#[cube]
fn gemv_unit<F: Float, N: Size, W: Size>(
    cv: Vector<u32, W>,
    q: usize,
    xv: Vector<F, N>,
    lut: &SharedMemory<f32>,
    #[comptime] four_bit: bool,
) -> f32 {
    let mut acc = 0.0f32;
    if four_bit {
        let word = cv[q];
        #[unroll]
        for b in 0..4u32 {
            let hi = lut[((word >> (b * 8 + 4)) & 15u32) as usize];
            let lo = lut[((word >> (b * 8)) & 15u32) as usize];
            acc += hi * f32::cast_from(xv[(2 * b) as usize]);
            acc += lo * f32::cast_from(xv[(2 * b + 1) as usize]);
        }
    } else {
        let w0 = cv[2 * q];
        let w1 = cv[2 * q + 1];
        #[unroll]
        for b in 0..4u32 {
            let v0 = lut[((w0 >> (b * 8)) & 255u32) as usize];
            let v1 = lut[((w1 >> (b * 8)) & 255u32) as usize];
            acc += v0 * f32::cast_from(xv[b as usize]);
            acc += v1 * f32::cast_from(xv[(b + 4) as usize]);
        }
    }
    acc
}

/// The scale of global unit `t` (8 values) for [`gemv_kernel`]: the block's absmax, with
/// `fused` the double-quantized one resolved here as the fused dequant variant does (product
/// flushed, a select so no FMA with the offset, then the offset added).
#[cube]
#[allow(clippy::too_many_arguments)]
fn gemv_scale(
    absmax: &Array<f32>,
    nested_codes: &Array<u8>,
    nested_absmax: &Array<f32>,
    nested_map: &Array<f32>,
    t: usize,
    offset: f32,
    #[comptime] blocksize: usize,
    #[comptime] nested: bool,
    #[comptime] fused: bool,
    #[comptime] nested_blocksize: usize,
) -> f32 {
    let mut a = 0.0f32;
    if fused {
        let blk = (t * 8) / blocksize;
        let c = usize::cast_from(nested_codes[blk]);
        let p = ftz(nested_map[c] * nested_absmax[blk / nested_blocksize]);
        a = p + offset;
    } else {
        a = block_scale(absmax, t * 8, offset, blocksize, nested);
    }
    a
}
