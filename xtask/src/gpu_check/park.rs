//! Parking tensors in host memory (`qtune_kernels::park`, behind `gradient_checkpointing =
//! "offload"`) on the GPU:
//! 1. round trip, three rounds of other shapes: eight bf16 tensors are parked; six are settled
//!    (their device buffers go back to the pool) and the pool's memory is then written with
//!    other values by fresh tensors; half are prefetched, one is taken without either, one is
//!    dropped while parked; every taken tensor must equal its values before parking bit for bit;
//! 2. the tiny model's loss curve (checkpointed micro-steps, AdamW) with its block inputs parked
//!    and kept: the same kernels on the same values, so the curves must be equal bit for bit.

use burn::tensor::{backend::AutodiffBackend, DType, Tensor, TensorData};
use qtune_kernels::{park, Parked};
use qtune_train::backend::Train;
use qtune_train::step::Backprop;
use serde_json::json;

use super::{host, tiny_curve, values, Failures};

type Inner = <Train as AutodiffBackend>::InnerBackend;

pub(super) fn check(
    dev: &burn::tensor::Device<Train>,
    steps: usize,
    fails: &mut Failures,
) -> anyhow::Result<()> {
    // Three rounds of other shapes, as variable-length batches give: 8 × 2 MiB fills the
    // arena's first chunk, 8 × 4.7 MiB (rows of 600) grows it, the odd 8 × 0.3 MB (not a multiple
    // of the 512-byte alignment) runs on the consolidated chunk. Its rows of 2,000 bytes lie at a
    // pitch of 2,048 (cubecl's layout of fresh tensors): parked with their padding.
    for (round, shape) in [[4usize, 256, 1024], [4, 600, 1024], [2, 77, 1000]]
        .into_iter()
        .enumerate()
    {
        round_trip(dev, shape, 100 * (round as u64 + 1), fails)?;
    }

    // 2. The tiny model, block inputs parked vs kept.
    let mut cfg = qtune_train::RunConfig::tiny();
    cfg.lora.lora_dropout = 0.0;
    cfg.model.torch_dtype = "bfloat16".into();
    let kept = tiny_curve::<Train>(&cfg, steps, dev, Backprop::Checkpointed)?;
    let off = tiny_curve::<Train>(&cfg, steps, dev, Backprop::Offloaded)?;
    let same = kept.len() == off.len()
        && kept
            .iter()
            .zip(&off)
            .all(|(a, b)| a.to_bits() == b.to_bits());
    println!(
        "{}",
        json!({"check": "park_tiny_loss_curve", "steps": steps, "bit_identical": same,
               "kept_first_last": [kept.first(), kept.last()], "parked_first_last": [off.first(), off.last()]})
    );
    fails.require("park_tiny_loss_curve: parked = kept bit for bit", same);
    Ok(())
}

/// One round of `park_round_trip` on eight tensors of `shape` (module docs).
fn round_trip(
    dev: &burn::tensor::Device<Train>,
    shape: [usize; 3],
    seed: u64,
    fails: &mut Failures,
) -> anyhow::Result<()> {
    let n = shape.iter().product::<usize>();
    let fresh = |s: u64| {
        Tensor::<Inner, 3>::from_data(TensorData::new(values(n, s), shape), (dev, DType::BF16))
    };
    let xs: Vec<_> = (0..8).map(|i| fresh(seed + i)).collect();
    let want = xs
        .iter()
        .map(|x| host(x.clone()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut parked: Vec<Parked<Inner, 3>> = xs.into_iter().map(park).collect();
    let all_parked = parked.iter().all(Parked::is_parked);
    // 0 is taken as parked (never settled), 1 dropped while parked, 2..8 settled.
    for p in &mut parked[2..] {
        p.settle();
    }
    drop(parked.remove(1));
    // The freed buffers, written by other tensors while the copies may still run.
    let filler: Vec<_> = (0..8)
        .map(|i| fresh(seed + 50 + i).mul_scalar(2.0))
        .collect();
    for p in parked.iter_mut().skip(1).step_by(2) {
        p.prefetch();
    }
    let mut differ = 0usize;
    for (p, w) in parked
        .into_iter()
        .zip(want.iter().take(1).chain(&want[2..]))
    {
        let got = host(p.take())?;
        differ += got
            .iter()
            .zip(w)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
    }
    let filler_ok = filler
        .into_iter()
        .enumerate()
        .map(|(i, f)| Ok(host(f)? == host(fresh(seed + 50 + i as u64).mul_scalar(2.0))?))
        .collect::<anyhow::Result<Vec<bool>>>()?
        .into_iter()
        .all(|b| b);
    println!(
        "{}",
        json!({"check": "park_round_trip", "shape": shape, "tensors": 7, "values": 7 * n, "parked": all_parked,
               "differ": differ, "filler_intact": filler_ok})
    );
    fails.require("park_round_trip: CUDA parks off the device", all_parked);
    fails.require("park_round_trip: every value back bit for bit", differ == 0);
    fails.require(
        "park_round_trip: the reused memory's tensors intact",
        filler_ok,
    );

    Ok(())
}
