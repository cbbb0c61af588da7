//! The optimizer updates all tensors that share an update rule and step count in one fused
//! pass over their concatenation (tensors padded to whole 8-bit blocks). That must be the
//! per-tensor update bit for bit: parameters and saved state of a three-tensor module stepped
//! together equal three one-tensor modules stepped alone, for AdamW and 8-bit AdamW (with
//! partial last blocks and a tensor under `min_8bit_size` on the 32-bit path).

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::{backend::Backend, Tensor};
use qtune_optim::{OptimKind, Optimizer, OptimizerConfig};

use crate::common::{inner, tensor, values, Inner, B};
use qtune_testkit::values as noise;

#[derive(Module, Debug)]
struct Three<B: Backend> {
    a: Param<Tensor<B, 1>>,
    b: Param<Tensor<B, 1>>,
    c: Param<Tensor<B, 1>>,
}

#[derive(Module, Debug)]
struct One<B: Backend> {
    a: Param<Tensor<B, 1>>,
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn grouped_step_equals_per_tensor_steps_bit_for_bit() {
    // 4096 + 17 and 5000: 8-bit with partial last blocks; 300: below min_8bit_size (32-bit).
    let sizes = [4096 + 17, 300, 5000];
    for optim in [OptimKind::AdamW8bit, OptimKind::AdamW] {
        let cfg = OptimizerConfig {
            optim,
            ..OptimizerConfig::default()
        };
        let init: Vec<Vec<f32>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| noise(n, i as u64 + 1, 1.0))
            .collect();
        let mut together = Three::<B> {
            a: Param::from_tensor(tensor(&init[0])),
            b: Param::from_tensor(tensor(&init[1])),
            c: Param::from_tensor(tensor(&init[2])),
        };
        let mut alone: Vec<One<B>> = init
            .iter()
            .map(|v| One {
                a: Param::from_tensor(tensor(v)),
            })
            .collect();
        let mut opt_together = Optimizer::<B>::new(cfg).expect("config");
        let mut opt_alone: Vec<Optimizer<B>> = (0..3)
            .map(|_| Optimizer::<B>::new(cfg).expect("config"))
            .collect();
        for step in 0..4u64 {
            let g: Vec<Vec<f32>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| noise(n, 100 * step + i as u64 + 7, 1.0))
                .collect();
            let mut grads = GradientsParams::new();
            grads.register::<Inner, 1>(together.a.id, inner(&g[0]));
            grads.register::<Inner, 1>(together.b.id, inner(&g[1]));
            grads.register::<Inner, 1>(together.c.id, inner(&g[2]));
            together = opt_together.step(1e-2, together, grads).expect("step");
            for (i, m) in alone.iter_mut().enumerate() {
                let mut grads = GradientsParams::new();
                grads.register::<Inner, 1>(m.a.id, inner(&g[i]));
                let taken = std::mem::replace(
                    m,
                    One {
                        a: Param::from_tensor(tensor(&[0.0])),
                    },
                );
                *m = opt_alone[i].step(1e-2, taken, grads).expect("step");
            }
            let joint = [
                values(together.a.val()),
                values(together.b.val()),
                values(together.c.val()),
            ];
            for i in 0..3 {
                assert_eq!(
                    bits(&joint[i]),
                    bits(&values(alone[i].a.val())),
                    "{optim:?} step {step}: tensor {i} differs"
                );
            }
        }
        // Saved state: each tensor's entries equal its lone optimizer's (keys `a`, `b`, `c`
        // vs `a` in each lone one).
        let joint = opt_together.state_to_bytes().expect("save");
        let joint = safetensors::SafeTensors::deserialize(&joint).expect("valid");
        for (i, key) in ["a", "b", "c"].iter().enumerate() {
            let lone = opt_alone[i].state_to_bytes().expect("save");
            let lone = safetensors::SafeTensors::deserialize(&lone).expect("valid");
            let mut names: Vec<String> = lone.names().into_iter().map(String::from).collect();
            names.sort();
            assert!(!names.is_empty());
            for name in names {
                let Some(suffix) = name.strip_prefix("a.") else {
                    continue;
                };
                let ours = joint
                    .tensor(&format!("{key}.{suffix}"))
                    .unwrap_or_else(|_| panic!("{optim:?}: no state {key}.{suffix}"));
                assert_eq!(
                    ours.data(),
                    lone.tensor(&name).expect("lone state").data(),
                    "{optim:?}: state {key}.{suffix}"
                );
            }
        }
    }
}
