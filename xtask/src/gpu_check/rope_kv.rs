//! `qtune_kernels::rope_write_kv` on the GPU (one launch: q and k rotated, k and v written into
//! their cache rows) against the composition it replaces (two rotaries, two `write_row`s): the
//! same bits for GPT-J's rotate-every-two and the Llama family's rotate-half under GQA, in bf16
//! and f32, two batch rows with one cache row out of range, and a shared cache (the op then
//! falls back to the composition and leaves the shared tensor as it was).

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use qtune_train::backend::Train;
use serde_json::json;

use super::Failures;

type I = <Train as AutodiffBackend>::InnerBackend;

/// Values that vary and are exact in bf16.
fn vals(n: usize, k: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            half::bf16::from_f32((((i * 7919 + k * 104_729) % 2001) as f32 - 1000.0) / 512.0)
                .to_f32()
        })
        .collect()
}

fn host(t: Tensor<I, 2>) -> anyhow::Result<Vec<u32>> {
    Ok(t.cast(DType::F32)
        .into_data()
        .into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?
        .iter()
        .map(|v| v.to_bits())
        .collect())
}

pub(super) fn rope_write_kv_check(
    dev: &burn::tensor::Device<Train>,
    fails: &mut Failures,
) -> anyhow::Result<()> {
    // (name, heads of q, heads of k/v, head dim, rotated pairs (half), rotate-half)
    let cases = [
        ("gptj_every_two", 16usize, 16usize, 256usize, 32usize, false),
        ("llama_half_gqa", 8, 2, 64, 32, true),
    ];
    for (name, h, kv, hd, half, halves) in cases {
        for dtype in [DType::BF16, DType::F32] {
            let (b, len) = (2usize, 6usize);
            let t4 = |heads: usize, k: usize| {
                Tensor::<I, 4>::from_data(
                    TensorData::new(vals(b * heads * hd, k), [b, 1, heads, hd]),
                    (dev, dtype),
                )
            };
            let (q, k, v) = (t4(h, 1), t4(kv, 2), t4(kv, 3));
            let table = |k: usize| {
                Tensor::<I, 5>::from_data(
                    TensorData::new(
                        vals(b * half, k).iter().map(|x| x.sin()).collect(),
                        [b, 1, 1, half, 1],
                    ),
                    (dev, DType::F32),
                )
            };
            let (cos, sin) = (table(4), table(5));
            let cache = |k: usize| {
                Tensor::<I, 2>::from_data(
                    TensorData::new(vals(b * len * kv * hd, k), [b * len, kv * hd]),
                    (dev, dtype),
                )
            };
            // Batch row 0 to cache row 3, row 1 to row 2·len (out of range: nothing written).
            let rows = Tensor::<I, 1, Int>::from_data(TensorData::new(vec![3i64, 12], [2]), dev);
            let rotate = |x: Tensor<I, 4>| match halves {
                true => qtune_kernels::rotary_half(x, cos.clone(), sin.clone()),
                false => qtune_kernels::rotary(x, cos.clone(), sin.clone()),
            };
            let want_q = rotate(q.clone());
            let want_kc = qtune_kernels::write_row(cache(6), rotate(k.clone()), rows.clone());
            let want_vc = qtune_kernels::write_row(cache(7), v.clone(), rows.clone());
            let fused = |kc, vc| {
                qtune_kernels::rope_write_kv(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    kc,
                    vc,
                    rows.clone(),
                    cos.clone(),
                    sin.clone(),
                    halves,
                )
            };
            let (got_q, got_kc, got_vc) = fused(cache(6), cache(7));
            let flat = |t: Tensor<I, 4>| t.reshape([b, h * hd]);
            let q_ok = host(flat(got_q))? == host(flat(want_q.clone()))?;
            let (want_kc, want_vc) = (host(want_kc)?, host(want_vc)?);
            let kv_ok = host(got_kc)? == want_kc && host(got_vc)? == want_vc;
            // A shared cache: the composition writes into a copy, the original stays.
            let shared = cache(6);
            let (_, shared_kc, _) = fused(shared.clone(), cache(7));
            let shared_ok = host(shared_kc)? == want_kc && host(shared)? == host(cache(6))?;
            let tag = format!("rope_write_kv {name} {dtype:?}");
            println!(
                "{}",
                json!({"check": "rope_write_kv", "case": name, "dtype": format!("{dtype:?}"),
                       "q_bit_identical": q_ok, "caches_bit_identical": kv_ok,
                       "shared_cache_ok": shared_ok})
            );
            fails.require(&format!("{tag} q_bit_identical"), q_ok);
            fails.require(&format!("{tag} caches_bit_identical"), kv_ok);
            fails.require(&format!("{tag} shared_cache_ok"), shared_ok);
        }
    }
    Ok(())
}
