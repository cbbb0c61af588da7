//! config.json in both spellings (transformers 5 `rope_parameters`, 4.x `rope_theta` +
//! `rope_scaling`) gives HF's RoPE frequencies; bad values are refused, naming the field.

use qtune_llama::LlamaConfig;

use crate::common::*;

fn inv_freq_of(r: &serde_json::Value) -> Vec<f32> {
    r["rope"]["inv_freq"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn rope_frequencies_equal_hfs_in_both_config_spellings() {
    for name in FIXTURES {
        let r = reference_json(name);
        let cfg = LlamaConfig::from_file(&fixture_dir(name).join("fp32/config.json")).unwrap();
        let want = inv_freq_of(&r);
        let got = cfg.positions().unwrap();
        assert_eq!(
            got.inv_freq, want,
            "{name}: inv_freq (transformers 5 spelling)"
        );
        // The same settings as a 4.x file writes them.
        let mut v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture_dir(name).join("fp32/config.json")).unwrap(),
        )
        .unwrap();
        let obj = v.as_object_mut().unwrap();
        obj.remove("rope_parameters");
        for (k, x) in r["rope"]["legacy_config_keys"].as_object().unwrap() {
            obj.insert(k.clone(), x.clone());
        }
        let legacy: LlamaConfig = serde_json::from_value(v).unwrap();
        assert_eq!(
            legacy.positions().unwrap().inv_freq,
            want,
            "{name}: 4.x spelling"
        );
        let window = r["sliding_window"].as_u64().map(|w| w as usize);
        assert_eq!(cfg.window(), window, "{name}: sliding window");
    }
}

/// HF counts each stored tensor once (a tied head is not stored): the config's count equals the
/// element count of the saved checkpoint.
#[test]
fn parameter_count_matches_the_checkpoint() {
    for name in FIXTURES {
        let cfg = LlamaConfig::from_file(&fixture_dir(name).join("fp32/config.json")).unwrap();
        let bytes = std::fs::read(fixture_dir(name).join("fp32/model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let stored: u64 = st
            .tensors()
            .iter()
            .map(|(_, t)| t.shape().iter().product::<usize>() as u64)
            .sum();
        assert_eq!(cfg.num_params(), stored, "{name}");
    }
}

#[test]
fn unknown_rope_type_and_bad_shapes_are_refused() {
    let base = std::fs::read_to_string(fixture_dir("llama_tiny").join("fp32/config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&base).unwrap();
    v["rope_parameters"]["rope_type"] = "yarn".into();
    let cfg: LlamaConfig = serde_json::from_value(v.clone()).unwrap();
    let err = cfg.validate().unwrap_err();
    assert!(err.contains("yarn"), "{err}");
    v["rope_parameters"]["rope_type"] = "default".into();
    v["num_key_value_heads"] = 3.into();
    let cfg: LlamaConfig = serde_json::from_value(v.clone()).unwrap();
    assert!(cfg.validate().unwrap_err().contains("num_key_value_heads"));
    v["num_key_value_heads"] = 2.into();
    v["hidden_act"] = "gelu".into();
    let cfg: LlamaConfig = serde_json::from_value(v).unwrap();
    assert!(cfg.validate().unwrap_err().contains("hidden_act"));
}

/// A Mistral config without `sliding_window` gets HF's default window (4096); `null` has none;
/// Llama never has one.
#[test]
fn missing_sliding_window_is_hfs_default() {
    let base =
        std::fs::read_to_string(fixture_dir("mistral_tiny").join("fp32/config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&base).unwrap();
    v.as_object_mut().unwrap().remove("sliding_window");
    let cfg: LlamaConfig = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(cfg.window(), Some(4096));
    v["sliding_window"] = serde_json::Value::Null;
    let cfg: LlamaConfig = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(cfg.window(), None);
    v["model_type"] = "llama".into();
    v.as_object_mut().unwrap().remove("sliding_window");
    let cfg: LlamaConfig = serde_json::from_value(v).unwrap();
    assert_eq!(cfg.window(), None);
}
