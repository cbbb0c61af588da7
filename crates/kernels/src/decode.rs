//! Device-side pieces of static-shape greedy decoding (see `qtune-lm`'s `greedy_fixed`): row
//! writes into a preallocated KV cache, the argmax bookkeeping that feeds the next step, and
//! replayable device graphs. The host versions here are the reference and the trait defaults.

use burn::tensor::{
    ops::{FloatTensor, IntTensor},
    DType, Int, Shape, Tensor, TensorData, TensorPrimitive,
};

use crate::{KernelError, QBackend, RopeKvInput, RotaryOptions};

/// Device work recorded once by [`QBackend::q_graph_capture`] and replayed with one call.
pub trait DeviceGraph {
    /// Enqueues the recorded work again (asynchronously, after earlier work on the device).
    ///
    /// # Errors
    /// [`KernelError::Graph`] if the driver refuses the launch.
    fn replay(&self) -> Result<(), KernelError>;

    /// What the graph holds, for diagnostics (e.g. node counts by type); empty if unknown.
    fn describe(&self) -> String {
        String::new()
    }
}

fn host_i64<B: QBackend>(t: IntTensor<B>) -> Vec<i64> {
    Tensor::<B, 1, Int>::from_primitive(t)
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .expect("converted to i64 just above")
}

/// The greedy token of one row of logits: the first maximum (as `torch.argmax`; NaN counts as
/// the maximum, as there).
pub fn first_argmax(xs: &[f32]) -> usize {
    // Branch-free passes (the one-pass loop with NaN checks dominated the host profile of a
    // 32-row decode: 1.6 M logits a step).
    if let Some(i) = xs.iter().position(|x| x.is_nan()) {
        return i;
    }
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    xs.iter().position(|&x| x == max).unwrap_or(0)
}

/// [`QBackend::q_write_row`]'s default: reads the row indices back, then one `slice_assign`
/// per row.
pub(crate) fn host_write_row<B: QBackend>(
    dst: FloatTensor<B>,
    src: FloatTensor<B>,
    row: IntTensor<B>,
) -> FloatTensor<B> {
    let mut dst = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(dst));
    let [rows, cols] = dst.dims();
    let idx = host_i64::<B>(row);
    let src = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(B::float_reshape(
        src,
        Shape::new([idx.len(), cols]),
    )))
    .cast(dst.dtype());
    for (s, &r) in idx.iter().enumerate() {
        if (0..rows as i64).contains(&r) {
            let r = r as usize;
            dst = dst.slice_assign([r..r + 1, 0..cols], src.clone().narrow(0, s, 1));
        }
    }
    dst.into_primitive().tensor()
}

/// The state update of [`QBackend::q_greedy_advance`] on host values.
pub(crate) fn advance_state(state: &mut [i64], logits: &[f32]) {
    let tok = first_argmax(logits) as i64;
    let cap = state.len().saturating_sub(3);
    state[0] = tok;
    let count = state[2];
    if (0..cap as i64).contains(&count) {
        state[3 + count as usize] = tok;
    }
    state[1] += 1;
    state[2] += 1;
}

/// [`QBackend::q_greedy_advance`]'s default: reads state and logits back, updates on the host.
pub(crate) fn host_greedy_advance<B: QBackend>(
    state: IntTensor<B>,
    logits: FloatTensor<B>,
) -> IntTensor<B> {
    let state = Tensor::<B, 1, Int>::from_primitive(state);
    let (device, dtype) = (state.device(), state.dtype());
    let mut s = host_i64::<B>(state.into_primitive());
    let shape = burn::tensor::TensorMetadata::shape(&logits);
    let rows = if shape.num_dims() == 2 { shape[0] } else { 1 };
    assert!(
        rows >= 1 && s.len() % rows == 0 && s.len() / rows >= 3,
        "qtune-kernels: greedy state of {} values for {rows} rows needs [token, pos, count, ..] each",
        s.len()
    );
    let n = shape.num_elements();
    let logits = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(B::float_reshape(
        logits,
        Shape::new([n]),
    )))
    .cast(DType::F32)
    .into_data()
    .into_vec::<f32>()
    .expect("cast to F32 just above");
    let per = s.len() / rows;
    for (state, row) in s.chunks_mut(per).zip(logits.chunks(n / rows)) {
        advance_state(state, row);
    }
    let n = s.len();
    Tensor::<B, 1, Int>::from_data(TensorData::new(s, [n]), (&device, dtype)).into_primitive()
}

/// `dst [R, C]` with row `s` of `src` (`n·C` values) written into row `row[s]` for each of the
/// `n` indices, through [`QBackend::q_write_row`] (in place on CUDA when `dst` is not shared).
pub fn write_row<B: QBackend, const D: usize>(
    dst: Tensor<B, 2>,
    src: Tensor<B, D>,
    row: Tensor<B, 1, Int>,
) -> Tensor<B, 2> {
    let out = B::q_write_row(
        dst.into_primitive().tensor(),
        src.into_primitive().tensor(),
        row.into_primitive(),
    );
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// [`QBackend::q_rope_write_kv`]'s default: two rotaries and two [`QBackend::q_write_row`]s.
pub(crate) fn rope_write_kv_ops<B: QBackend>(r: RopeKvInput<B>) -> [FloatTensor<B>; 3] {
    let RopeKvInput {
        q,
        k,
        v,
        kc,
        vc,
        row,
        rotary,
        halves,
    } = r;
    let rotate = |x| match halves {
        true => B::q_rotary_half(x, rotary.clone()),
        false => B::q_rotary(x, rotary.clone()),
    };
    let (q, k) = (rotate(q), rotate(k));
    let kc = B::q_write_row(kc, k, row.clone());
    let vc = B::q_write_row(vc, v, row);
    [q, kc, vc]
}

/// One decode step's rotary and fixed-cache writes through [`QBackend::q_rope_write_kv`]:
/// `q [B, 1, H, hd]` and `k [B, 1, H_kv, hd]` rotated by the f32 tables `cos`/`sin
/// [B, 1, 1, half, 1]` (GPT-J's rotate-every-two, or with `halves` rotate-half), the rotated
/// `k` and `v` written into rows `row[s]` of `kc`/`vc [R, H_kv·hd]` (in place on CUDA when
/// they are not shared). Returns the rotated `q`, `kc` and `vc`.
#[allow(clippy::too_many_arguments)]
pub fn rope_write_kv<B: QBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    kc: Tensor<B, 2>,
    vc: Tensor<B, 2>,
    row: Tensor<B, 1, Int>,
    cos: Tensor<B, 5>,
    sin: Tensor<B, 5>,
    halves: bool,
) -> (Tensor<B, 4>, Tensor<B, 2>, Tensor<B, 2>) {
    let [q, kc, vc] = B::q_rope_write_kv(RopeKvInput {
        q: q.into_primitive().tensor(),
        k: k.into_primitive().tensor(),
        v: v.into_primitive().tensor(),
        kc: kc.into_primitive().tensor(),
        vc: vc.into_primitive().tensor(),
        row: row.into_primitive(),
        rotary: RotaryOptions {
            cos: cos.into_primitive().tensor(),
            sin: sin.into_primitive().tensor(),
            inverse: false,
        },
        halves,
    });
    let f = |t| TensorPrimitive::Float(t);
    (
        Tensor::from_primitive(f(q)),
        Tensor::from_primitive(f(kc)),
        Tensor::from_primitive(f(vc)),
    )
}

/// Greedy bookkeeping through [`QBackend::q_greedy_advance`]: `state` = one
/// `[token, pos, count, out…]` per row of `logits [rows, V]`, back to back.
pub fn greedy_advance<B: QBackend>(
    state: Tensor<B, 1, Int>,
    logits: Tensor<B, 2>,
) -> Tensor<B, 1, Int> {
    Tensor::from_primitive(B::q_greedy_advance(
        state.into_primitive(),
        logits.into_primitive().tensor(),
    ))
}

/// Records `record`'s device work as a replayable graph ([`QBackend::q_graph_capture`]);
/// `Ok(None)` on backends without graphs (then `record` did not run).
///
/// # Errors
/// [`KernelError::Graph`] if the driver rejects the capture.
pub fn graph_capture<B: QBackend>(
    device: &B::Device,
    mut record: impl FnMut(),
) -> Result<Option<Box<dyn DeviceGraph>>, KernelError> {
    B::q_graph_capture(device, &mut record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_maximum_and_nan() {
        assert_eq!(first_argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
        assert_eq!(first_argmax(&[1.0, f32::NAN, 5.0]), 1);
        assert_eq!(first_argmax(&[-2.0]), 0);
        assert_eq!(first_argmax(&[]), 0);
        assert_eq!(first_argmax(&[f32::NEG_INFINITY; 3]), 0);
        assert_eq!(first_argmax(&[2.0, f32::NAN, 9.0, f32::NAN]), 1);
        assert_eq!(first_argmax(&[-0.0, 0.0]), 0);
        assert_eq!(first_argmax(&[0.0, -0.0]), 0);
        assert_eq!(
            first_argmax(&[f32::NEG_INFINITY, -1e30, f32::INFINITY, 1.0]),
            2
        );
    }

    /// The passes agree with the one-pass definition (first strict maximum, NaN as the
    /// maximum) on random rows with ties and NaNs.
    #[test]
    fn argmax_equals_the_one_pass_definition() {
        let one_pass = |xs: &[f32]| {
            let mut best = 0;
            for (i, &x) in xs.iter().enumerate() {
                let b = xs[best];
                if !b.is_nan() && (x > b || x.is_nan()) {
                    best = i;
                }
            }
            best
        };
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for case in 0..2000 {
            let n = 1 + case % 40;
            let xs: Vec<f32> = (0..n)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    match s % 23 {
                        0 => f32::NAN,
                        1 => -0.0,
                        2 => f32::NEG_INFINITY,
                        _ => (s % 7) as f32 - 3.0,
                    }
                })
                .collect();
            assert_eq!(first_argmax(&xs), one_pass(&xs), "{xs:?}");
        }
    }

    #[test]
    fn advance_appends_until_full() {
        let mut s = vec![0, 4, 0, -1, -1];
        advance_state(&mut s, &[0.0, 2.0, 1.0]);
        assert_eq!(s, vec![1, 5, 1, 1, -1]);
        advance_state(&mut s, &[3.0, 2.0, 1.0]);
        assert_eq!(s, vec![0, 6, 2, 1, 0]);
        // Full: the token and counters still advance, the outputs stay.
        advance_state(&mut s, &[0.0, 0.0, 9.0]);
        assert_eq!(s, vec![2, 7, 3, 1, 0]);
    }
}
