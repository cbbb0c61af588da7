//! The fused attention forward (`qtune_kernels::cuda` `flash_attn.rs`: scores, mask, online
//! softmax and the product with `v` in one kernel) against the unfused path (score GEMM, softmax
//! kernel, GEMM; itself checked against the CPU by the `fused` group), bf16, every shipped config
//! of head dims 64, 128 and 256: no mask; causal with left padding (fully masked query rows,
//! which must come out uniform); a few queries over past keys (decoding's shape, grouped-query),
//! once with most keys padded (the kernel skips their tiles); lengths off the tiles. Metric: max |fused − unfused| / max |unfused|. The launch counter
//! proves the fused kernel ran.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Bool, DType, Tensor, TensorData};
use qtune_kernels::cuda::{
    flash_attn_config, flash_attn_configs, flash_attn_launches, set_flash_attn,
    set_flash_attn_config,
};
use qtune_train::backend::Train;
use serde_json::json;

use super::{host, rel, values, Failures};

type Inner = <Train as AutodiffBackend>::InnerBackend;

/// The unfused path rounds the normalised probabilities to bf16 before the second GEMM, the
/// fused one the unnormalised ones (divided by their sum after it), and the score sums run in
/// other orders: a bf16 ulp or two of the output's scale (`ptx/flash_attn.py --check`'s
/// interpreter, in f32, agrees to 1e-6 with the reference's order).
const FUSED: f64 = 1e-2;

/// `[b, t, l, h, h_kv, left padding of the last batch row]` per case.
const CASES: [[usize; 6]; 5] = [
    [1, 130, 130, 4, 4, 0],
    [2, 70, 70, 4, 2, 5],
    [2, 9, 140, 6, 2, 3],
    [1, 20, 200, 4, 2, 130],
    [1, 512, 512, 2, 1, 0],
];

/// `[b, 1, t, l]`: causal over the last `t` of `l` keys, the last batch row's first `pad` keys
/// padded (its first query rows, when `t = l`, fully masked).
fn mask(
    dev: &burn::tensor::Device<Inner>,
    [b, t, l, _, _, pad]: [usize; 6],
) -> Tensor<Inner, 4, Bool> {
    let mut bits = Vec::with_capacity(b * t * l);
    for bi in 0..b {
        for i in 0..t {
            for j in 0..l {
                bits.push(j > i + (l - t) || (bi + 1 == b && j < pad));
            }
        }
    }
    Tensor::from_data(TensorData::new(bits, [b, 1, t, l]), dev)
}

pub(super) fn check(dev: &burn::tensor::Device<Train>, fails: &mut Failures) -> anyhow::Result<()> {
    let chosen = flash_attn_config();
    let mut lines = Vec::new();
    for hd in [64usize, 128, 256] {
        for (ci, case) in CASES.iter().enumerate() {
            let [b, t, l, h, h_kv, _] = *case;
            let mk = |rows: usize, heads: usize, seed: u64, scale: f32| {
                let n = b * rows * heads * hd;
                let v: Vec<f32> = values(n, seed).into_iter().map(|x| x * scale).collect();
                Tensor::<Inner, 4>::from_data(
                    TensorData::new(v, [b, rows, heads, hd]),
                    (dev, DType::BF16),
                )
            };
            let seed = 90 + 10 * ci as u64 + hd as u64;
            let (q, k, v) = (
                mk(t, h, seed, 3.0),
                mk(l, h_kv, seed + 1, 3.0),
                mk(l, h_kv, seed + 2, 1.0),
            );
            let div = (hd as f32).sqrt();
            for masked in [false, true] {
                let m = masked.then(|| mask(dev, *case));
                let run = || {
                    let o =
                        qtune_kernels::attention(q.clone(), k.clone(), v.clone(), m.clone(), div);
                    host(o.reshape([b, t, h * hd]))
                };
                set_flash_attn(Some(false));
                let want = run()?;
                set_flash_attn(Some(true));
                for c in 0..flash_attn_configs() {
                    set_flash_attn_config(c);
                    let before = flash_attn_launches();
                    let err = rel(run()?, want.clone());
                    let launched = flash_attn_launches() - before;
                    let what = format!("flash_attn hd {hd} case {ci} masked {masked} c{c}");
                    fails.at_most(&what, err, FUSED);
                    fails.require(
                        &format!("{what}: one fused launch ({launched})"),
                        launched == 1,
                    );
                    lines.push(
                        json!({"hd": hd, "case": case, "masked": masked, "config": c,
                        "launches": launched, "err": err}),
                    );
                }
            }
        }
    }
    set_flash_attn(None);
    set_flash_attn_config(chosen);
    println!(
        "{}",
        json!({"check": "flash_attn", "tolerance": FUSED, "results": lines})
    );
    Ok(())
}
