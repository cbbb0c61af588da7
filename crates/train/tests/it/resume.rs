//! Exact resume: stop, resume from the last checkpoint, and the remaining losses equal an
//! uninterrupted run's bit for bit (dropout on, accumulation 2, checkpointing on).
use qtune_gptj::CausalLm;
use qtune_train::TrainOptions;

use crate::common::*;

#[test]
fn resumed_run_matches_uninterrupted_bit_for_bit() {
    let _g = rng_lock();
    let data = (synthetic(24, 1), synthetic(8, 2));

    let dir_a = tempfile::tempdir().unwrap();
    let cfg_a = tiny_config(dir_a.path());
    let model = lm(&cfg_a);
    let (_, full) = train_model(&cfg_a, model, &data, &TrainOptions::default()).unwrap();
    assert!(full.finished);
    assert_eq!(full.losses.len(), 6);

    // Interrupted after step 3: the last checkpoint is step 2 (save_steps = 2), so the resumed
    // run redoes step 3 from the checkpoint, as after a crash.
    let dir_b = tempfile::tempdir().unwrap();
    let cfg_b = tiny_config(dir_b.path());
    let model = lm(&cfg_b);
    let stop = TrainOptions {
        stop_at_step: Some(3),
        ..Default::default()
    };
    let (_, first) = train_model(&cfg_b, model, &data, &stop).unwrap();
    assert!(!first.finished);
    assert_eq!(first.losses, full.losses[..3]);

    let model = lm(&cfg_b);
    let resume = TrainOptions {
        resume: true,
        ..Default::default()
    };
    let (_, rest) = train_model(&cfg_b, model, &data, &resume).unwrap();
    assert!(rest.finished);
    let bits = |v: &[(usize, f64)]| v.iter().map(|(s, l)| (*s, l.to_bits())).collect::<Vec<_>>();
    assert_eq!(
        bits(&rest.losses),
        bits(&full.losses[2..]),
        "steps 3..=6 after resume"
    );
    assert_eq!(
        rest.best_eval_loss.map(f64::to_bits),
        full.best_eval_loss.map(f64::to_bits)
    );
    println!("losses: {:?}", full.losses);

    // Outputs of a finished run.
    let out = dir_a.path();
    for f in [
        "metrics.jsonl",
        "loss.png",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "checkpoints/latest",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let adapter = qtune_lora::peft::PeftAdapter::load(&out.join("adapter")).unwrap();
    assert_eq!(adapter.modules.len(), 3 * 6);
}

#[test]
fn loss_falls_on_a_learnable_task() {
    let (_g, dir) = locked_tempdir();
    let mut cfg = tiny_config(dir.path());
    cfg.training.max_steps = 30;
    cfg.training.eval_steps = 10;
    cfg.training.save_steps = 30;
    cfg.training.learning_rate = 1e-2;
    cfg.lora.lora_dropout = 0.0;
    // A random base with init std 0.02 has near-uniform logits that LoRA on the blocks alone
    // moves only slowly (ln_f bounds the hidden state); an adapter on lm_head can move them.
    cfg.lora.target_modules = qtune_train::config::TargetList::Names(
        ["q_proj", "v_proj", "fc_in", "fc_out", "lm_head"]
            .map(String::from)
            .to_vec(),
    );
    let model = lm(&cfg);
    let val = synthetic(16, 6);
    use burn::module::AutodiffModule;
    let (first, _) = qtune_train::evaluate::eval_loss(&model.valid(), &val, 4, 0).unwrap();
    let (_, s) = train_model(
        &cfg,
        model,
        &(synthetic(64, 5), val),
        &TrainOptions::default(),
    )
    .unwrap();
    let last = s.eval_losses.last().unwrap().1;
    println!("eval loss before {first}, during {:?}", s.eval_losses);
    assert!(last < first - 0.25, "eval loss {first} -> {last}");
}

#[test]
fn qlora_nf4_base_8bit_adamw_trains_and_resumes_exactly() {
    let _g = rng_lock();
    let data = (synthetic(24, 1), synthetic(8, 2));
    let quantized = |dir: &std::path::Path| {
        let mut c = tiny_config(dir);
        c.model.quantization = Some(qtune_train::config::QuantizationConfig {
            load_in_4bit: true,
            load_in_8bit: false,
            bnb_4bit_quant_type: "nf4".into(),
            bnb_4bit_use_double_quant: true,
            blocksize: None,
        });
        c.training.max_steps = 4;
        // 8-bit AdamW; r 64 makes fc_out's lora_A [64, 128] big enough (≥ 4096 values) for
        // blockwise 8-bit state, the smaller tensors keep 32-bit state (as bitsandbytes).
        c.training.optim = qtune_train::config::OptimName::AdamwBnb8bit;
        c.lora.r = 64;
        c.lora.lora_alpha = 128.0;
        c
    };
    let dir_a = tempfile::tempdir().unwrap();
    let cfg = quantized(dir_a.path());
    let model = lm(&cfg);
    assert!(model.linears()[0].1.is_quantized());
    let trainable = model.param_counts().trainable as usize;
    let (_, full) = train_model(&cfg, model, &data, &TrainOptions::default()).unwrap();
    assert!(full.losses.iter().all(|(_, l)| l.is_finite()));
    // 32-bit AdamW state would be exactly 8 bytes per parameter.
    let per_param = full.optimizer_state_bytes as f64 / trainable as f64;
    println!("optimizer state: {per_param:.3} bytes/param over {trainable} params");
    assert!(per_param < 8.0, "{per_param}");

    let dir_b = tempfile::tempdir().unwrap();
    let cfg = quantized(dir_b.path());
    let model = lm(&cfg);
    let stop = TrainOptions {
        stop_at_step: Some(2),
        ..Default::default()
    };
    train_model(&cfg, model, &data, &stop).unwrap();
    let model = lm(&cfg);
    let resume = TrainOptions {
        resume: true,
        ..Default::default()
    };
    let (_, rest) = train_model(&cfg, model, &data, &resume).unwrap();
    let bits = |v: &[(usize, f64)]| v.iter().map(|(s, l)| (*s, l.to_bits())).collect::<Vec<_>>();
    assert_eq!(bits(&rest.losses), bits(&full.losses[2..]));
}
