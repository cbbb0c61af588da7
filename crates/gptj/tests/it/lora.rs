//! `with_lora`: PEFT names, counts, identity at init, gradients only to LoRA.

use burn::backend::Autodiff;
use burn::tensor::{Int, Tensor, TensorData};
use qtune_gptj::CausalLm;
use qtune_gptj::{Gptj, LoadOptions};
use qtune_lora::{LoraConfig, TargetModules};

use crate::common::*;

fn qv(r: usize) -> LoraConfig {
    LoraConfig {
        r,
        lora_alpha: 2.0 * r as f64,
        lora_dropout: 0.0,
        target_modules: TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]),
    }
}

#[test]
fn lora_keys_and_counts_follow_peft() {
    let model = load("fp32").with_lora(&qv(4), 0).unwrap();
    let keys: Vec<String> = model.lora_params().iter().map(|p| p.key.clone()).collect();
    assert_eq!(keys.len(), 3 * 2 * 2);
    assert_eq!(
        keys[0],
        "base_model.model.transformer.h.0.attn.q_proj.lora_A.weight"
    );
    assert_eq!(
        keys[3],
        "base_model.model.transformer.h.0.attn.v_proj.lora_B.weight"
    );
    // The fixture adapter (made by PEFT) has exactly these keys.
    let bytes =
        std::fs::read(fixture_dir().join("peft_adapter/adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut peft_keys: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    peft_keys.sort();
    let mut ours = keys.clone();
    ours.sort();
    assert_eq!(ours, peft_keys);
    for p in model.lora_params() {
        assert_eq!(
            st.tensor(&p.key).unwrap().shape(),
            p.param.shape().dims::<2>().as_slice(),
            "{}",
            p.key
        );
    }
    // Instance counts equal the config-only counts.
    assert_eq!(model.param_counts(), model.config.lora_param_counts(&qv(4)));
    assert_eq!(model.param_counts().trainable, 3 * 2 * 4 * (64 + 64));
}

#[test]
fn fresh_lora_leaves_logits_unchanged_and_all_linear_skips_lm_head() {
    let base = fixture_logits(&load("fp32"));
    let cfg = LoraConfig {
        target_modules: TargetModules::AllLinear,
        ..qv(2)
    };
    let model = load("fp32").with_lora(&cfg, 1).unwrap();
    assert_eq!(fixture_logits(&model), base);
    assert!(model.lm_head.lora.is_none());
    assert_eq!(model.lora_params().len(), 3 * 6 * 2);
    let none = LoraConfig {
        target_modules: TargetModules::Names(vec!["nope".into()]),
        ..qv(2)
    };
    assert!(load("fp32").with_lora(&none, 1).is_err());
}

#[test]
fn only_lora_tensors_get_gradients() {
    type Ad = Autodiff<Nd>;
    let dev = Default::default();
    let model = Gptj::<Ad>::load(&fixture_dir().join("fp32"), &LoadOptions::default(), &dev)
        .unwrap()
        .with_lora(&qv(2), 3)
        .unwrap();
    // Make B non-zero so A gets a gradient too.
    let ids = Tensor::<Ad, 2, Int>::from_data(
        TensorData::new(vec![3i64, 9, 27, 81, 243, 5], [1, 6]),
        &dev,
    );
    let ctx = model.context(1, 6, None, None, Some(11));
    let h = model.hidden(ids.clone(), &ctx, None);
    let (loss, n) = model.loss_sum(h, &[3, 9, 27, 81, 243, 5]).unwrap();
    assert_eq!(n, 5);
    let grads = loss.backward();
    for p in model.lora_params() {
        let g = p.param.val().grad(&grads);
        if p.key.contains("lora_B") {
            let g = g.unwrap_or_else(|| panic!("no grad for {}", p.key));
            assert!(g.abs().sum().into_scalar() > 0.0, "zero grad for {}", p.key);
        }
    }
    assert!(model.wte.val().grad(&grads).is_none());
    assert!(model.ln_f.weight.val().grad(&grads).is_none());
    let qv_base = match &model.blocks[0].attn.q_proj.base {
        qtune_lora::LinearBase::Dense(w) => w.val().grad(&grads),
        _ => unreachable!(),
    };
    assert!(qv_base.is_none(), "base weights are frozen");
}

/// With dropout, the same seed reproduces the same loss (what checkpointed recompute and
/// exact resume rely on) and another seed changes it.
#[test]
fn lora_dropout_is_reproducible_from_the_context_seed() {
    let cfg = LoraConfig {
        lora_dropout: 0.5,
        ..qv(2)
    };
    let mut model = load("fp32").with_lora(&cfg, 5).unwrap();
    for (_, lin) in model.linears_mut() {
        if let Some(l) = lin.lora.as_mut() {
            let [o, r] = l.lora_b.shape().dims();
            l.lora_b = burn::module::Param::from_tensor(Tensor::ones([o, r], &Default::default()));
        }
    }
    let ids = int_tensor(&[vec![3, 9, 27, 81, 243, 5]]);
    let loss = |seed: Option<u64>| {
        let ctx = model.context(1, 6, None, None, seed);
        let h = model.hidden(ids.clone(), &ctx, None);
        model
            .loss_sum(h, &[3, 9, 27, 81, 243, 5])
            .unwrap()
            .0
            .into_scalar()
    };
    assert_eq!(loss(Some(1)), loss(Some(1)));
    assert_ne!(loss(Some(1)), loss(Some(2)));
    assert_ne!(loss(Some(1)), loss(None));
}

/// The PEFT fixture adapter (PEFT 0.21), read with qtune-lora's PEFT reader and set on the
/// model's linears by HF module path, gives PEFT's logits (`peft_logits`).
#[test]
fn peft_fixture_adapter_gives_peft_logits() {
    let adapter = qtune_lora::peft::PeftAdapter::load(&fixture_dir().join("peft_adapter")).unwrap();
    let scaling = adapter.config.scaling();
    let dev = Default::default();
    let mut model = load("fp32");
    let mut set = 0;
    for (name, lin) in model.linears_mut() {
        if let Some(t) = adapter.modules.get(&name) {
            let a = Tensor::from_data(TensorData::new(t.a.clone(), t.a_shape), &dev);
            let b = Tensor::from_data(TensorData::new(t.b.clone(), t.b_shape), &dev);
            let taken = std::mem::replace(
                lin,
                qtune_lora::Linear::dense(Tensor::zeros([1, 1], &dev), None),
            );
            *lin = taken.with_adapter(qtune_lora::LoraAdapter::from_tensors(a, b, scaling, 0.0));
            set += 1;
        }
    }
    assert_eq!(set, adapter.modules.len());
    assert_eq!(set, 6);
    let (reference, shape) = reference_tensor("peft_logits");
    let err = max_rel_err_non_pad(&fixture_logits(&model), &reference, shape[2]);
    println!("peft adapter max rel err {err:e}");
    assert!(err <= 1e-4, "peft adapter max rel err {err:e}");
}
