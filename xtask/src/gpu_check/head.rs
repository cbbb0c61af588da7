//! The LM head's loss (`qtune_kernels::linear_cross_entropy`: the input gradient computed in the
//! forward, the logits not kept) vs the unfused ops on the GPU (`linear_t`, the bias add,
//! `cross_entropy`), bf16 and f16, GPT-J's vocabulary: the losses (the same kernels in the same
//! order: bit for bit) and the input gradient under a different upstream gradient per row.
//! Metric: max |fused − unfused| / max |unfused|.

use burn::tensor::{DType, Int, Tensor, TensorData};
use qtune_kernels::{cross_entropy, linear_cross_entropy, linear_t};
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
    }
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
