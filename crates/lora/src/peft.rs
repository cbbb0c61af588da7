//! PEFT LoRA adapter folders, as `PeftModel.save_pretrained` writes them (PEFT 0.21):
//! - `adapter_config.json`: PEFT's `LoraConfig` (`peft_type` "LORA", `r`, `lora_alpha`,
//!   `lora_dropout`, `target_modules`, `use_rslora`, `base_model_name_or_path`, …).
//! - `adapter_model.safetensors`: for each adapted module `M` (HF path, e.g.
//!   `transformer.h.0.attn.q_proj`) two tensors
//!   `base_model.model.{M}.lora_A.weight` `[r, in]` and `base_model.model.{M}.lora_B.weight`
//!   `[out, r]`, F32/F16/BF16. The adapter name (`default`) is not part of saved keys.
//!
//! The effective update is `W + scaling · B·A` with `scaling = lora_alpha / r`
//! (`lora_alpha / sqrt(r)` with `use_rslora`). Features we cannot reproduce (DoRA, per-module
//! rank/alpha patterns, LoRA biases) are refused on load rather than silently ignored.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use serde::{Deserialize, Serialize};

mod tensors;

pub use tensors::decode_f32;
use tensors::{encode, read_factors};

/// File names inside an adapter folder (PEFT's `CONFIG_NAME`, `SAFETENSORS_WEIGHTS_NAME`).
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// PEFT prefixes every key with the wrapper path of `PeftModelForCausalLM`.
pub const PEFT_KEY_PREFIX: &str = "base_model.model.";

#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid adapter_config.json: {source}")]
    Config {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {what} is not supported by qtune (only plain LoRA adapters are)")]
    Unsupported { path: PathBuf, what: String },
    #[error("{path}: invalid safetensors file: {source}")]
    Safetensors {
        path: PathBuf,
        source: safetensors::SafeTensorError,
    },
    #[error("{path}: tensor `{name}`: {msg}")]
    Tensor {
        path: PathBuf,
        name: String,
        msg: String,
    },
    #[error("{path}: module `{module}` has {has} but not {missing}")]
    Unpaired {
        path: PathBuf,
        module: String,
        has: &'static str,
        missing: &'static str,
    },
    #[error("{path}: no LoRA tensors (keys `base_model.model.*.lora_A.weight`) found")]
    Empty { path: PathBuf },
    #[error("{path}: adapter_config.json's target_modules {targets} do not match the tensors of {ADAPTER_WEIGHTS_FILE}: {msg}")]
    TargetMismatch {
        path: PathBuf,
        targets: String,
        msg: String,
    },
}

/// `target_modules` as PEFT stores it: a list of module-name suffixes, or one string
/// (`"all-linear"` or a regex matched against the full module path).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PeftTargets {
    List(Vec<String>),
    One(String),
}

/// The fields of PEFT's `LoraConfig` that change what an adapter computes, plus the
/// bookkeeping ones PEFT writes. Unknown fields are ignored on load (PEFT adds some in every
/// release); the ones that would change the math are checked by [`PeftAdapterConfig::check`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftAdapterConfig {
    #[serde(default = "lora_type")]
    pub peft_type: String,
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    pub target_modules: PeftTargets,
    #[serde(default = "bias_none")]
    pub bias: String,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub inference_mode: bool,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub rank_pattern: HashMap<String, serde_json::Value>,
    #[serde(default)]
    pub alpha_pattern: HashMap<String, serde_json::Value>,
    #[serde(default)]
    pub init_lora_weights: serde_json::Value,
    #[serde(default)]
    pub peft_version: Option<String>,
}

fn lora_type() -> String {
    "LORA".into()
}
fn bias_none() -> String {
    "none".into()
}

impl PeftAdapterConfig {
    /// A config for a plain LoRA adapter, as `get_peft_model(.., LoraConfig(..))` would save it.
    pub fn new(r: usize, lora_alpha: f64, lora_dropout: f64, target_modules: PeftTargets) -> Self {
        Self {
            peft_type: lora_type(),
            task_type: Some("CAUSAL_LM".into()),
            base_model_name_or_path: None,
            r,
            lora_alpha,
            lora_dropout,
            target_modules,
            bias: bias_none(),
            fan_in_fan_out: false,
            use_rslora: false,
            use_dora: false,
            inference_mode: true,
            modules_to_save: None,
            rank_pattern: HashMap::new(),
            alpha_pattern: HashMap::new(),
            init_lora_weights: serde_json::Value::Bool(true),
            peft_version: Some("0.21.0".into()),
        }
    }

    /// PEFT's `scaling`: `lora_alpha / r`, or `lora_alpha / sqrt(r)` with rsLoRA.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// Refuses what we would otherwise compute wrongly.
    pub fn check(&self, path: &Path) -> Result<(), PeftError> {
        let bad = |what: String| {
            Err(PeftError::Unsupported {
                path: path.to_path_buf(),
                what,
            })
        };
        if self.peft_type != "LORA" {
            return bad(format!("peft_type `{}`", self.peft_type));
        }
        if self.r == 0 {
            return bad("r = 0".into());
        }
        if self.use_dora {
            return bad("use_dora = true".into());
        }
        if self.fan_in_fan_out {
            return bad("fan_in_fan_out = true (GPT-2 Conv1D layout)".into());
        }
        if self.bias != "none" {
            return bad(format!("bias = `{}`", self.bias));
        }
        if !self.rank_pattern.is_empty() || !self.alpha_pattern.is_empty() {
            return bad("per-module rank_pattern/alpha_pattern".into());
        }
        if self.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return bad("modules_to_save".into());
        }
        Ok(())
    }
}

/// One adapted module's factors, row-major f32: `a` is `[r, in]`, `b` is `[out, r]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraTensors {
    pub a: Vec<f32>,
    pub a_shape: [usize; 2],
    pub b: Vec<f32>,
    pub b_shape: [usize; 2],
}

impl LoraTensors {
    /// `[out, in]` of the base weight this pair adapts.
    pub fn weight_shape(&self) -> [usize; 2] {
        [self.b_shape[0], self.a_shape[1]]
    }
}

/// An adapter folder in memory: config + factors keyed by HF module path
/// (`transformer.h.{i}.attn.q_proj`), sorted so saved files are deterministic.
#[derive(Debug, Clone, PartialEq)]
pub struct PeftAdapter {
    pub config: PeftAdapterConfig,
    pub modules: BTreeMap<String, LoraTensors>,
}

/// dtype for the saved factors (PEFT saves the training dtype; F32 is always exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterDType {
    F32,
    F16,
    BF16,
}

impl PeftAdapter {
    /// Reads `dir/adapter_config.json` and `dir/adapter_model.safetensors`.
    pub fn load(dir: &Path) -> Result<Self, PeftError> {
        let cfg_path = dir.join(ADAPTER_CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path).map_err(|source| PeftError::Io {
            path: cfg_path.clone(),
            source,
        })?;
        let config: PeftAdapterConfig =
            serde_json::from_str(&text).map_err(|source| PeftError::Config {
                path: cfg_path.clone(),
                source,
            })?;
        config.check(&cfg_path)?;
        let path = dir.join(ADAPTER_WEIGHTS_FILE);
        let bytes = std::fs::read(&path).map_err(|source| PeftError::Io {
            path: path.clone(),
            source,
        })?;
        let modules = read_factors(&path, &bytes, config.r)?;
        check_targets(&cfg_path, &config.target_modules, &modules)?;
        Ok(Self { config, modules })
    }

    /// Writes the two files into `dir` (created if needed). Callers wanting atomicity write
    /// into a temporary folder and rename it (the training loop does).
    pub fn save(&self, dir: &Path, dtype: AdapterDType) -> Result<(), PeftError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PeftError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let cfg_path = dir.join(ADAPTER_CONFIG_FILE);
        let json =
            serde_json::to_string_pretty(&self.config).map_err(|source| PeftError::Config {
                path: cfg_path.clone(),
                source,
            })?;
        std::fs::write(&cfg_path, json + "\n").map_err(io(&cfg_path))?;

        let path = dir.join(ADAPTER_WEIGHTS_FILE);
        let mut blobs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (module, t) in &self.modules {
            for (kind, data, shape) in [("lora_A", &t.a, t.a_shape), ("lora_B", &t.b, t.b_shape)] {
                let name = format!("{PEFT_KEY_PREFIX}{module}.{kind}.weight");
                if data.len() != shape[0] * shape[1] {
                    return Err(PeftError::Tensor {
                        path,
                        name,
                        msg: format!("{} values for shape {:?}", data.len(), shape),
                    });
                }
                blobs.push((name, shape.to_vec(), encode(data, dtype)));
            }
        }
        let st_dtype = match dtype {
            AdapterDType::F32 => Dtype::F32,
            AdapterDType::F16 => Dtype::F16,
            AdapterDType::BF16 => Dtype::BF16,
        };
        let views = blobs
            .iter()
            .map(|(name, shape, bytes)| {
                safetensors::tensor::TensorView::new(st_dtype, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| PeftError::Safetensors {
                path: path.clone(),
                source,
            })?;
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(views, Some(meta), &path).map_err(|source| {
            PeftError::Safetensors {
                path: path.clone(),
                source,
            }
        })
    }
}

/// PEFT's list matching: the module path is the name or ends with `.{name}`.
fn list_matches(module: &str, name: &str) -> bool {
    module == name || module.ends_with(&format!(".{name}"))
}

/// Refuses an adapter whose `target_modules` do not describe its tensors: a tensor of a module
/// the targets do not select, a listed target without any tensor, `lm_head` under
/// `"all-linear"` (PEFT excludes the output layer), a module a single-string target (a regular
/// expression in PEFT, `re.fullmatch` over the module path) does not match in full.
fn check_targets(
    path: &Path,
    targets: &PeftTargets,
    modules: &BTreeMap<String, LoraTensors>,
) -> Result<(), PeftError> {
    let mismatch = |msg: String| PeftError::TargetMismatch {
        path: path.to_path_buf(),
        targets: serde_json::to_string(targets).unwrap_or_default(),
        msg,
    };
    match targets {
        PeftTargets::List(names) => {
            let outside: Vec<&str> = modules
                .keys()
                .filter(|m| !names.iter().any(|n| list_matches(m, n)))
                .map(String::as_str)
                .collect();
            if !outside.is_empty() {
                return Err(mismatch(format!(
                    "tensors for modules no target selects: {outside:?}"
                )));
            }
            let unused: Vec<&str> = names
                .iter()
                .filter(|n| !modules.keys().any(|m| list_matches(m, n)))
                .map(String::as_str)
                .collect();
            if !unused.is_empty() {
                return Err(mismatch(format!(
                    "targets without any tensor: {unused:?} (a truncated or foreign weights file?)"
                )));
            }
        }
        PeftTargets::One(s) if s == "all-linear" => {
            let heads: Vec<&str> = modules
                .keys()
                .filter(|m| list_matches(m, "lm_head"))
                .map(String::as_str)
                .collect();
            if !heads.is_empty() {
                return Err(mismatch(format!(
                    "\"all-linear\" excludes the output layer, but the file adapts {heads:?}"
                )));
            }
        }
        PeftTargets::One(s) => {
            let re = crate::TargetRegex::new(s).map_err(|e| mismatch(e.to_string()))?;
            let outside: Vec<&str> = modules
                .keys()
                .filter(|m| !re.is_match(m))
                .map(String::as_str)
                .collect();
            if !outside.is_empty() {
                return Err(mismatch(format!(
                    "tensors for modules the regular expression does not match in full: {outside:?}"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gptj_tiny/peft_adapter")
    }

    #[test]
    fn loads_peft_fixture() {
        let a = PeftAdapter::load(&fixture()).expect("fixture loads");
        assert_eq!(a.config.r, 4);
        assert_eq!(a.config.scaling(), 2.0);
        assert_eq!(a.modules.len(), 6); // 3 layers × {q_proj, v_proj}
        let q0 = &a.modules["transformer.h.0.attn.q_proj"];
        assert_eq!(q0.a_shape, [4, 64]);
        assert_eq!(q0.b_shape, [64, 4]);
        assert!(q0.b.iter().any(|v| *v != 0.0), "fixture has non-zero B");
    }

    #[test]
    fn save_load_roundtrip_is_exact() {
        let a = PeftAdapter::load(&fixture()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        a.save(dir.path(), AdapterDType::F32).unwrap();
        let b = PeftAdapter::load(dir.path()).unwrap();
        assert_eq!(a.modules, b.modules);
        assert_eq!(a.config.r, b.config.r);
        assert_eq!(a.config.target_modules, b.config.target_modules);
        // bf16: every value within bf16 rounding (rel 2^-8).
        a.save(dir.path(), AdapterDType::BF16).unwrap();
        let c = PeftAdapter::load(dir.path()).unwrap();
        for (m, t) in &a.modules {
            for (x, y) in t.a.iter().zip(&c.modules[m].a) {
                assert!((x - y).abs() <= x.abs() / 256.0, "{m}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn target_modules_must_match_the_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let a = PeftAdapter::load(&fixture()).unwrap();
        for (targets, needle) in [
            (vec!["q_proj"], "transformer.h.0.attn.v_proj"),
            (vec!["q_proj", "v_proj", "k_proj"], "k_proj"),
        ] {
            let mut b = a.clone();
            b.config.target_modules =
                PeftTargets::List(targets.iter().map(|s| s.to_string()).collect());
            b.save(dir.path(), AdapterDType::F32).unwrap();
            let err = PeftAdapter::load(dir.path()).unwrap_err().to_string();
            assert!(
                err.contains("target_modules") && err.contains(needle),
                "{targets:?}: {err}"
            );
        }
        let mut b = a.clone();
        b.config.target_modules = PeftTargets::One("all-linear".into());
        b.save(dir.path(), AdapterDType::F32).unwrap();
        PeftAdapter::load(dir.path()).unwrap();
        let head = b.modules["transformer.h.0.attn.q_proj"].clone();
        b.modules.insert("lm_head".into(), head);
        b.save(dir.path(), AdapterDType::F32).unwrap();
        let err = PeftAdapter::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("lm_head"), "{err}");
    }

    #[test]
    fn non_finite_factors_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = PeftAdapter::load(&fixture()).unwrap();
        a.modules.get_mut("transformer.h.2.attn.q_proj").unwrap().b[3] = f32::NAN;
        a.save(dir.path(), AdapterDType::F32).unwrap();
        let err = PeftAdapter::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("transformer.h.2.attn.q_proj.lora_B.weight") && err.contains("NaN"),
            "{err}"
        );
    }

    #[test]
    fn errors_name_file_and_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = PeftAdapter::load(&fixture()).unwrap();
        a.modules
            .get_mut("transformer.h.1.attn.v_proj")
            .unwrap()
            .a_shape = [2, 128];
        a.config.r = 4;
        a.save(dir.path(), AdapterDType::F32).unwrap();
        let err = PeftAdapter::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("adapter_model.safetensors")
                && err.contains("transformer.h.1.attn.v_proj.lora_A.weight"),
            "{err}"
        );

        let mut cfg = a.config.clone();
        cfg.use_dora = true;
        std::fs::write(
            dir.path().join(ADAPTER_CONFIG_FILE),
            serde_json::to_string(&cfg).unwrap(),
        )
        .unwrap();
        let err = PeftAdapter::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("use_dora"), "{err}");

        std::fs::remove_file(dir.path().join(ADAPTER_WEIGHTS_FILE)).unwrap();
        cfg.use_dora = false;
        std::fs::write(
            dir.path().join(ADAPTER_CONFIG_FILE),
            serde_json::to_string(&cfg).unwrap(),
        )
        .unwrap();
        let err = PeftAdapter::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains(ADAPTER_WEIGHTS_FILE), "{err}");
    }
}
