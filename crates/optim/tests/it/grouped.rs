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

/// 4096 + 17 and 5000: 8-bit with partial last blocks; 300: below min_8bit_size (32-bit).
const SIZES: [usize; 3] = [4096 + 17, 300, 5000];

/// The optimizer config of `optim` and the three tensors' initial values (noise from `seed`).
fn setup(optim: OptimKind, seed: u64) -> (OptimizerConfig, Vec<Vec<f32>>) {
    let cfg = OptimizerConfig {
        optim,
        ..OptimizerConfig::default()
    };
    let init = SIZES
        .iter()
        .enumerate()
        .map(|(i, &n)| noise(n, i as u64 + seed, 1.0))
        .collect();
    (cfg, init)
}

fn three(init: &[Vec<f32>]) -> Three<B> {
    Three {
        a: Param::from_tensor(tensor(&init[0])),
        b: Param::from_tensor(tensor(&init[1])),
        c: Param::from_tensor(tensor(&init[2])),
    }
}

#[test]
fn grouped_step_equals_per_tensor_steps_bit_for_bit() {
    let sizes = SIZES;
    for optim in [OptimKind::AdamW8bit, OptimKind::AdamW] {
        let (cfg, init) = setup(optim, 1);
        let mut together = three(&init);
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

/// From its second step a group starts from its last concatenated state (no re-concatenation
/// of the slices). That must equal the state rebuilt from the slices: an optimizer reloaded
/// from its saved bytes before every step (which has no cache) gives the same parameters and
/// state bit for bit, for AdamW and 8-bit AdamW, with partial 8-bit blocks.
#[test]
fn cached_group_state_equals_state_rebuilt_from_slices() {
    let sizes = SIZES;
    for optim in [OptimKind::AdamW8bit, OptimKind::AdamW] {
        let (cfg, init) = setup(optim, 11);
        let (mut cached, mut reloaded) = (three(&init), three(&init));
        let mut opt_cached = Optimizer::<B>::new(cfg).expect("config");
        let mut opt_reloaded = Optimizer::<B>::new(cfg).expect("config");
        for step in 0..5u64 {
            let g: Vec<Vec<f32>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| noise(n, 100 * step + i as u64 + 3, 1.0 + step as f32))
                .collect();
            let grads_for = |m: &Three<B>| {
                let mut grads = GradientsParams::new();
                grads.register::<Inner, 1>(m.a.id, inner(&g[0]));
                grads.register::<Inner, 1>(m.b.id, inner(&g[1]));
                grads.register::<Inner, 1>(m.c.id, inner(&g[2]));
                grads
            };
            let grads = grads_for(&cached);
            cached = opt_cached.step(1e-2, cached, grads).expect("step");
            let bytes = opt_reloaded.state_to_bytes().expect("save");
            opt_reloaded =
                Optimizer::<B>::state_from_bytes(&bytes, &Default::default()).expect("load");
            let grads = grads_for(&reloaded);
            reloaded = opt_reloaded.step(1e-2, reloaded, grads).expect("step");
            for (x, y, name) in [
                (cached.a.val(), reloaded.a.val(), "a"),
                (cached.b.val(), reloaded.b.val(), "b"),
                (cached.c.val(), reloaded.c.val(), "c"),
            ] {
                assert_eq!(
                    bits(&values(x)),
                    bits(&values(y)),
                    "{optim:?} step {step}: {name} differs"
                );
            }
            let (x, y) = (
                opt_cached.state_to_bytes().expect("save"),
                opt_reloaded.state_to_bytes().expect("save"),
            );
            let x = safetensors::SafeTensors::deserialize(&x).expect("valid");
            let y = safetensors::SafeTensors::deserialize(&y).expect("valid");
            let mut names: Vec<String> = x.names().into_iter().map(String::from).collect();
            names.sort();
            assert!(names.len() >= 6, "{optim:?}: {names:?}");
            for name in names {
                let same = y
                    .tensor(&name)
                    .is_ok_and(|t| t.data() == x.tensor(&name).expect("listed").data());
                assert!(same, "{optim:?} step {step}: state {name} differs");
            }
        }
    }
}
