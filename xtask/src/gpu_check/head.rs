//! The LM head's loss (`qtune_kernels::linear_cross_entropy`: the input gradient computed in the
//! forward, the logits not kept) vs the unfused ops on the GPU (`linear_t`, the bias add,
//! `cross_entropy`), bf16 and f16, GPT-J's vocabulary: the losses (the same kernels in the same
//! order: bit for bit) and the input gradient under a different upstream gradient per row.
//! Metric: max |fused − unfused| / max |unfused|. Also: the cross-entropy backward written over
//! its exclusively owned logits gives the same bits as into a new tensor.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Int, Tensor, TensorData, TensorPrimitive};
use qtune_kernels::{cross_entropy, linear_cross_entropy, linear_t, QBackend};
use qtune_train::backend::Train;
use serde_json::json;

use super::{rel, values, Failures};

/// The unit gradient is rounded to bf16 before the product and the row's scale applied in f32
/// after it, where the unfused path scales before rounding: a bf16 ulp or two of the largest
/// value, as the fused MLP's gradient (`mlp.rs`).
const HEAD_GRAD: f64 = 1.5e-2;

pub(super) fn check(dev: &burn::tensor::Device<Train>, fails: &mut Failures) -> anyhow::Result<()> {
    for dtype in [DType::BF16, DType::F16] {
        check_in(dev, dtype, fails)?;
        in_place(dev, dtype, fails)?;
    }
    Ok(())
}

/// `q_cross_entropy_backward` on logits nobody else holds (written in place) against the same
/// logits while a clone is held (a new tensor): bit for bit, and the held clone unchanged.
fn in_place(
    dev: &burn::tensor::Device<Train>,
    dtype: DType,
    fails: &mut Failures,
) -> anyhow::Result<()> {
    type Inner = <Train as AutodiffBackend>::InnerBackend;
    let (rows, vocab) = (40usize, 50_400usize);
    let logits = || {
        Tensor::<Inner, 2>::from_data(
            TensorData::new(values(rows * vocab, 71), [rows, vocab]),
            (dev, dtype),
        )
        .mul_scalar(6.0)
        .into_primitive()
        .tensor()
    };
    let t: Vec<i64> = (0..rows).map(|r| ((r * 7919) % vocab) as i64).collect();
    let t = Tensor::<Inner, 1, Int>::from_data(TensorData::new(t, [rows]), dev).into_primitive();
    let g = Tensor::<Inner, 1>::from_data(TensorData::new(values(rows, 72), [rows]), dev)
        .into_primitive()
        .tensor();
    let bits = |x| -> anyhow::Result<Vec<u32>> {
        let v = Tensor::<Inner, 2>::from_primitive(TensorPrimitive::Float(x))
            .cast(DType::F32)
            .into_data()
            .into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(v.iter().map(|x| x.to_bits()).collect())
    };
    let got = bits(Inner::q_cross_entropy_backward(
        logits(),
        t.clone(),
        g.clone(),
    ))?;
    let held = logits();
    let want = bits(Inner::q_cross_entropy_backward(held.clone(), t, g))?;
    let held_kept = bits(held)? == bits(logits())?;
    let same = got == want;
    fails.require(
        &format!("cross-entropy backward in place = new tensor ({dtype:?})"),
        same,
    );
    fails.require(
        &format!("cross-entropy backward leaves held logits ({dtype:?})"),
        held_kept,
    );
    println!(
        "{}",
        json!({"check": "cross_entropy_backward_in_place", "dtype": format!("{dtype:?}"),
               "shape": [rows, vocab], "bit_identical": same, "held_logits_unchanged": held_kept})
    );
    Ok(())
}

fn check_in(
    dev: &burn::tensor::Device<Train>,
    dtype: DType,
    fails: &mut Failures,
) -> anyhow::Result<()> {
    let (rows, d, vocab) = (64usize, 256usize, 50_400usize);
    let tensor = |shape: [usize; 2], seed: u64, scale: f32| {
        let n = shape[0] * shape[1];
        Tensor::<Train, 2>::from_data(TensorData::new(values(n, seed), shape), (dev, dtype))
            .mul_scalar(scale)
    };
    let w = tensor([vocab, d], 61, 0.2);
    let bias = tensor([1, vocab], 62, 1.0).reshape([vocab]);
    let g = tensor([1, rows], 63, 1.0).reshape([rows]).cast(DType::F32);
    let t: Vec<i64> = (0..rows).map(|r| ((r * 7919) % vocab) as i64).collect();
    let t = Tensor::<Train, 1, Int>::from_data(TensorData::new(t, [rows]), dev);
    let run = |fused: bool| -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
        let x = tensor([rows, d], 64, 2.0).require_grad();
        let nll = if fused {
            linear_cross_entropy(x.clone(), w.clone(), Some(bias.clone()), t.clone())
        } else {
            cross_entropy(
                linear_t(x.clone(), w.clone()) + bias.clone().unsqueeze(),
                t.clone(),
            )
        };
        let grads = (nll.clone() * g.clone()).sum().backward();
        let dx = x
            .grad(&grads)
            .ok_or_else(|| anyhow::anyhow!("x got no gradient"))?;
        let host = |t: Tensor<_, 2>| -> anyhow::Result<Vec<f32>> {
            t.cast(DType::F32)
                .into_data()
                .into_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("{e:?}"))
        };
        Ok((host(nll.inner().reshape([1, rows]))?, host(dx)?))
    };
    let ((got_nll, got_dx), (want_nll, want_dx)) = (run(true)?, run(false)?);
    let same = if got_nll == want_nll { 0.0 } else { 1.0 };
    let mut res = serde_json::Map::new();
    for (key, v, tol) in [
        ("head_loss_bits_differ", same, 0.0),
        ("head_dx_rel_err", rel(got_dx, want_dx), HEAD_GRAD),
    ] {
        let what = format!("{key} ({dtype:?})");
        res.insert(key.into(), fails.at_most(&what, v, tol).into());
    }
    println!(
        "{}",
        json!({"check": "head_linear_cross_entropy", "dtype": format!("{dtype:?}"),
               "shape": [rows, d, vocab], "results": res})
    );
    Ok(())
}
