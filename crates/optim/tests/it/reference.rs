//! The tensor implementation of the 8-bit blockwise step equals a plain scalar transcription of
//! bitsandbytes' `kOptimizerStatic8bit2StateBlockwise<ADAM, 256>` bit for bit, on a tensor whose
//! last block is short (4100 = 16 * 256 + 4 values), over several steps.

use crate::common::*;
use qtune_optim::dynamic_map::{create_dynamic_map, quantize_2d};
use qtune_optim::{OptimKind, Optimizer, OptimizerConfig};

const N: usize = 4100;
const BLOCK: usize = 256;

/// The scalar reference state: codes and per-block absmax of both moments.
struct HostState {
    c1: Vec<u8>,
    a1: Vec<f32>,
    c2: Vec<u8>,
    a2: Vec<f32>,
}

/// One step of bnb's kernel, element by element (f32 throughout; accurate powf).
fn host_step(
    p: &mut [f32],
    g: &[f32],
    s: &mut HostState,
    step: u64,
    lr: f32,
    cfg: &OptimizerConfig,
) {
    let (m1, m2) = (create_dynamic_map(true), create_dynamic_map(false));
    let (b1, b2, eps, wd) = (
        cfg.adam_beta1 as f32,
        cfg.adam_beta2 as f32,
        cfg.adam_epsilon as f32,
        cfg.weight_decay as f32,
    );
    let correction1 = 1.0f32 - b1.powf(step as f32);
    let correction2 = (1.0f32 - b2.powf(step as f32)).sqrt();
    let step_size = -lr * correction2 / correction1;
    for (blk, (pb, gb)) in p.chunks_mut(BLOCK).zip(g.chunks(BLOCK)).enumerate() {
        let base = blk * BLOCK;
        let mut s1 = vec![0f32; pb.len()];
        let mut s2 = vec![0f32; pb.len()];
        for j in 0..pb.len() {
            s2[j] = (m2[s.c2[base + j] as usize] * s.a2[blk]) * b2 + ((1.0 - b2) * gb[j]) * gb[j];
            s1[j] = (m1[s.c1[base + j] as usize] * s.a1[blk]) * b1 + gb[j] * (1.0 - b1);
        }
        let am1 = s1.iter().fold(0f32, |a, v| a.max(v.abs()));
        let am2 = s2.iter().fold(0f32, |a, v| a.max(v.abs()));
        for j in 0..pb.len() {
            pb[j] += s1[j] / (s2[j].sqrt() + correction2 * eps) * step_size;
            if wd > 0.0 {
                pb[j] *= 1.0 - lr * wd;
            }
            let mut c1 = quantize_2d(&m1, true, s1[j] / am1.max(f32::MIN_POSITIVE));
            if m1[c1 as usize] < 0.0 && s1[j] > 0.0 {
                c1 += 1;
            } else if m1[c1 as usize] >= 0.0 && s1[j] < 0.0 {
                c1 -= 1;
            }
            s.c1[base + j] = c1;
            s.c2[base + j] = quantize_2d(&m2, false, s2[j] / am2.max(f32::MIN_POSITIVE));
        }
        s.a1[blk] = am1;
        s.a2[blk] = am2;
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn blockwise_step_equals_scalar_transcription_of_bnb_kernel() {
    let fx = Fixture::load();
    let p0: Vec<f32> = fx.f32("p0.big")[..N].to_vec();
    let steps: Vec<(Vec<f32>, Vec<f32>)> = (1..=8u64)
        .map(|s| {
            (
                fx.f32(&format!("grad.{s}.big"))[..N].to_vec(),
                fx.f32(&format!("grad.{s}.small")),
            )
        })
        .collect();
    same_as_host(&p0, &fx.f32("p0.small"), &steps);
}

/// First moments next to zero relative to their block's absmax, of both signs, around the codes
/// either side of the signed map's exact zero and their midpoints: where bnb's sign keeping
/// moves a code (a small negative moment must not decode as +0), which random gradients
/// almost never reach.
#[test]
fn sign_keeping_near_zero_equals_the_scalar_transcription() {
    let m1 = create_dynamic_map(true);
    let z = 127usize;
    // The values either side of zero, their halves (the midpoints to zero) and nudges of them.
    let mut xs = Vec::new();
    for v in [m1[z - 1], m1[z + 1], m1[z - 2], m1[z + 2]] {
        for f in [0.25f32, 0.49, 0.5, 0.51, 0.75, 1.0, 1.25, 1.5] {
            xs.push(v * f);
            xs.push(-v * f);
        }
    }
    xs.extend([0.0, -0.0, 1e-30, -1e-30]);
    // Each block: one gradient of 1 sets the absmax; the rest cycle through `xs`.
    let g: Vec<f32> = (0..N)
        .map(|i| {
            if i % BLOCK == 0 {
                1.0
            } else {
                xs[i % xs.len()]
            }
        })
        .collect();
    let flip: Vec<f32> = g.iter().map(|v| -v * 0.5).collect();
    let p0: Vec<f32> = (0..N).map(|i| (i as f32 * 0.37).sin()).collect();
    let small = vec![0.01f32; 8];
    let steps = vec![
        (g.clone(), small.clone()),
        (flip, small.clone()),
        (g, small.clone()),
    ];
    same_as_host(&p0, &small, &steps);
}

/// `steps` (big, small gradients) through the optimizer and through [`host_step`]: the big
/// tensor's parameters and 8-bit state equal bit for bit after every step.
fn same_as_host(p0: &[f32], small: &[f32], steps: &[(Vec<f32>, Vec<f32>)]) {
    let cfg = OptimizerConfig {
        optim: OptimKind::AdamW8bit,
        ..OptimizerConfig::default()
    };
    let mut optim = Optimizer::<B>::new(cfg).expect("config");
    let mut m = pair(p0, small);
    let nb = N.div_ceil(BLOCK);
    let mut host = HostState {
        c1: vec![127; N],
        a1: vec![0.0; nb],
        c2: vec![0; N],
        a2: vec![0.0; nb],
    };
    let mut host_p = p0.to_vec();
    for (s, (g, gs)) in (1..).zip(steps) {
        let grads = grads_for(&m, g, gs);
        m = optim.step(1e-3, m, grads).expect("step");
        host_step(&mut host_p, g, &mut host, s, 1e-3, &cfg);
        let ours = values(m.big.val());
        let same = ours
            .iter()
            .zip(&host_p)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same,
            "step {s}: parameters differ from the scalar reference"
        );
        let bytes = optim.state_to_bytes().expect("save");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid");
        let t = |k: &str| {
            st.tensor(&format!("big.{k}"))
                .expect("state")
                .data()
                .to_vec()
        };
        assert_eq!(t("state1"), host.c1, "step {s}: state1");
        assert_eq!(t("state2"), host.c2, "step {s}: state2");
        assert_eq!(f32s(&t("absmax1")), host.a1, "step {s}: absmax1");
        assert_eq!(f32s(&t("absmax2")), host.a2, "step {s}: absmax2");
    }
}
