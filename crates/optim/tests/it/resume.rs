//! Save → load → continue equals uninterrupted stepping bit for bit; state sizes; bad states.

use crate::common::*;
use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use qtune_optim::{clip_grad_norm, OptimError, OptimKind, Optimizer, OptimizerConfig};
use qtune_testkit::values as noise;

/// LoRA A/B pairs of two layers, GPT-J-like but narrower: [r, d] and [d, r].
#[derive(Module, Debug)]
pub struct Adapter<B: Backend> {
    pub layers: Vec<LoraPair<B>>,
}

#[derive(Module, Debug)]
pub struct LoraPair<B: Backend> {
    pub lora_a: Param<Tensor<B, 2>>,
    pub lora_b: Param<Tensor<B, 2>>,
}

const R: usize = 8;
const D: usize = 600; // 4800 values per matrix: above bnb's 4096, 18.75 blocks of 256

fn mat(rows: usize, cols: usize, v: Vec<f32>) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(v, [rows, cols]), &Default::default())
}

/// Builds the adapter from flat values (fresh ParamIds, as a reloaded checkpoint would have).
fn adapter(vals: &[Vec<f32>]) -> Adapter<B> {
    let layers = vals
        .chunks(2)
        .map(|ab| LoraPair {
            lora_a: Param::from_tensor(mat(R, D, ab[0].clone())),
            lora_b: Param::from_tensor(mat(D, R, ab[1].clone())),
        })
        .collect();
    Adapter { layers }
}

fn params(m: &Adapter<B>) -> Vec<Vec<f32>> {
    m.layers
        .iter()
        .flat_map(|l| [values(l.lora_a.val()), values(l.lora_b.val())])
        .collect()
}

/// Deterministic gradients of step `s`, clipped by global norm like the training loop does.
fn grads(m: &Adapter<B>, s: usize) -> GradientsParams {
    let mut g = GradientsParams::new();
    for (i, l) in m.layers.iter().enumerate() {
        let a = mat(R, D, noise(R * D, (s * 10 + 2 * i) as u64, 1.0)).inner();
        let b = mat(D, R, noise(D * R, (s * 10 + 2 * i + 1) as u64, 1.0)).inner();
        g.register::<Inner, 2>(l.lora_a.id, a);
        g.register::<Inner, 2>(l.lora_b.id, b);
    }
    clip_grad_norm(m, &mut g, 20.0);
    g
}

fn start() -> Vec<Vec<f32>> {
    (0..4).map(|i| noise(R * D, 1000 + i, 1.0)).collect()
}

fn cfg(kind: OptimKind) -> OptimizerConfig {
    OptimizerConfig {
        optim: kind,
        ..OptimizerConfig::default()
    }
}

fn run_steps(
    optim: &mut Optimizer<B>,
    mut m: Adapter<B>,
    steps: std::ops::Range<usize>,
) -> Adapter<B> {
    for s in steps {
        let g = grads(&m, s);
        m = optim.step(1e-3, m, g).expect("step");
    }
    m
}

#[test]
fn save_load_continue_is_bit_exact() {
    for kind in [OptimKind::AdamW, OptimKind::AdamW8bit] {
        let mut straight = Optimizer::<B>::new(cfg(kind)).expect("config");
        let m = run_steps(&mut straight, adapter(&start()), 0..10);
        let expected = params(&m);

        let mut first = Optimizer::<B>::new(cfg(kind)).expect("config");
        let m = run_steps(&mut first, adapter(&start()), 0..4);
        let saved_params = params(&m);
        let bytes = first.state_to_bytes().expect("save");
        let bytes_at_save = first.state_bytes();
        drop((first, m));

        let mut resumed =
            Optimizer::<B>::state_from_bytes(&bytes, &Default::default()).expect("load");
        assert_eq!(resumed.config(), &cfg(kind));
        assert_eq!(
            resumed.state_bytes(),
            bytes_at_save,
            "{kind:?}: U8 codes came back as U8"
        );
        assert_eq!(
            resumed.steps().iter().map(|(_, s)| *s).collect::<Vec<_>>(),
            vec![4; 4]
        );
        let m = run_steps(&mut resumed, adapter(&saved_params), 4..10);
        let got = params(&m);
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            let same = g.iter().zip(e).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{kind:?}: tensor {i} differs after resume");
        }
        assert_same_state(&resumed, &straight, kind);

        // The comparison has teeth: continuing with a fresh optimizer (state lost) diverges.
        let mut fresh = Optimizer::<B>::new(cfg(kind)).expect("config");
        let lost = params(&run_steps(&mut fresh, adapter(&saved_params), 4..10));
        assert_ne!(
            lost, expected,
            "{kind:?}: a resume without state must differ"
        );
    }
}

/// Same tensors (bytes) and metadata; the blobs themselves may order the JSON header differently.
fn assert_same_state(a: &Optimizer<B>, b: &Optimizer<B>, kind: OptimKind) {
    let (ba, bb) = (
        a.state_to_bytes().expect("save"),
        b.state_to_bytes().expect("save"),
    );
    let (sa, sb) = (
        safetensors::SafeTensors::deserialize(&ba).expect("valid"),
        safetensors::SafeTensors::deserialize(&bb).expect("valid"),
    );
    let mut names = sa.names();
    names.sort();
    let mut names_b = sb.names();
    names_b.sort();
    assert_eq!(names, names_b, "{kind:?}");
    for n in names {
        let same = sa.tensor(n).expect("a").data() == sb.tensor(n).expect("b").data();
        assert!(same, "{kind:?}: state tensor {n} differs");
    }
    assert_eq!(a.steps(), b.steps(), "{kind:?}");
    assert_eq!(a.config(), b.config(), "{kind:?}");
}

#[test]
fn eight_bit_state_is_at_most_2_1_bytes_per_parameter() {
    let mut optim = Optimizer::<B>::new(cfg(OptimKind::AdamW8bit)).expect("config");
    let m = run_steps(&mut optim, adapter(&start()), 0..1);
    let n = optim.num_params();
    assert_eq!(n, 4 * R * D);
    // Per tensor: 2 U8 codes per value + 2 f32 absmax per started block of 256.
    let expected = 4 * (2 * R * D + 2 * 4 * (R * D).div_ceil(256));
    assert_eq!(optim.state_bytes(), expected);
    let per_param = optim.state_bytes() as f64 / n as f64;
    println!(
        "8-bit AdamW state: {} bytes for {n} params = {per_param:.4} B/param",
        optim.state_bytes()
    );
    assert!(per_param <= 2.1, "{per_param}");

    let mut full = Optimizer::<B>::new(cfg(OptimKind::AdamW)).expect("config");
    let _ = run_steps(&mut full, m, 0..1);
    assert_eq!(full.state_bytes(), 8 * n, "32-bit AdamW: two f32 moments");
}

#[test]
fn small_tensors_keep_32bit_state_in_adamw8bit() {
    let mut optim = Optimizer::<B>::new(cfg(OptimKind::AdamW8bit)).expect("config");
    let m = pair(&noise(4096, 1, 1.0), &noise(4095, 2, 1.0));
    let g = grads_for(&m, &noise(4096, 3, 1.0), &noise(4095, 4, 1.0));
    let _ = optim.step(1e-3, m, g).expect("step");
    let bytes = optim.state_to_bytes().expect("save");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid");
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "big.absmax1",
            "big.absmax2",
            "big.state1",
            "big.state2",
            "small.exp_avg",
            "small.exp_avg_sq"
        ]
    );
}

#[test]
fn mismatched_or_corrupt_state_is_an_error() {
    let mut optim = Optimizer::<B>::new(cfg(OptimKind::AdamW8bit)).expect("config");
    let m = run_steps(&mut optim, adapter(&start()), 0..1);
    let bytes = optim.state_to_bytes().expect("save");

    // A parameter whose size changed (e.g. another LoRA rank) is refused before any update.
    let other = start();
    let wrong = Adapter {
        layers: vec![LoraPair {
            lora_a: Param::from_tensor(mat(R - 1, D, other[0][..(R - 1) * D].to_vec())),
            lora_b: Param::from_tensor(mat(D, R, other[1].clone())),
        }],
    };
    let mut g = GradientsParams::new();
    g.register::<Inner, 2>(
        wrong.layers[0].lora_a.id,
        wrong.layers[0].lora_a.val().inner(),
    );
    g.register::<Inner, 2>(
        wrong.layers[0].lora_b.id,
        wrong.layers[0].lora_b.val().inner(),
    );
    let res = optim.step(1e-3, wrong, g).map(|_| ());
    let want = ("layers.0.lora_a", R * D, (R - 1) * D);
    assert!(
        matches!(&res, Err(OptimError::StateShape { path, expected, got })
            if (path.as_str(), *expected, *got) == want),
        "expected StateShape {want:?}, got {res:?}"
    );
    assert_eq!(
        optim.steps().iter().map(|(_, s)| *s).collect::<Vec<_>>(),
        vec![1; 4],
        "state untouched"
    );

    // A gradient that does not fit its parameter is refused too.
    let mut g = GradientsParams::new();
    g.register::<Inner, 2>(
        m.layers[0].lora_a.id,
        mat(R, 3, noise(R * 3, 9, 1.0)).inner(),
    );
    let res = optim.step(1e-3, m, g).map(|_| ());
    let want = ("layers.0.lora_a", R * D, R * 3);
    assert!(
        matches!(&res, Err(OptimError::GradShape { path, expected, got })
            if (path.as_str(), *expected, *got) == want),
        "expected GradShape {want:?}, got {res:?}"
    );
    let m = adapter(&start());

    for (what, blob) in [
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("empty", Vec::new()),
    ] {
        assert!(
            Optimizer::<B>::state_from_bytes(&blob, &Default::default()).is_err(),
            "{what}"
        );
    }
    let bad_lr = optim.step(f64::NAN, m, GradientsParams::new());
    assert!(matches!(
        bad_lr,
        Err(OptimError::Config { field: "lr", .. })
    ));
    let bad = OptimizerConfig {
        adam_beta2: 1.0,
        ..OptimizerConfig::default()
    };
    assert!(matches!(
        Optimizer::<B>::new(bad),
        Err(OptimError::Config {
            field: "adam_beta2",
            ..
        })
    ));
}

#[test]
fn config_uses_hf_names_and_torch_defaults() {
    let json = serde_json::to_value(OptimizerConfig::default()).expect("json");
    assert_eq!(json["optim"], "adamw_torch");
    assert_eq!(json["adam_epsilon"], 1e-8);
    assert_eq!(json["weight_decay"], 1e-2);
    let c: OptimizerConfig = serde_json::from_str(r#"{"optim": "adamw_bnb_8bit"}"#).expect("parse");
    assert_eq!(
        c,
        OptimizerConfig {
            optim: OptimKind::AdamW8bit,
            ..OptimizerConfig::default()
        }
    );
}
