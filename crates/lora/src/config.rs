//! LoRA hyper-parameters with PEFT's `LoraConfig` field names, so an `adapter_config.json`
//! written by PEFT deserializes here unchanged (unknown PEFT fields are ignored).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The subset of PEFT's `LoraConfig` that changes the math of a LoRA layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank of the update `B·A`.
    pub r: usize,
    /// The update is scaled by `lora_alpha / r` (PEFT without rsLoRA).
    pub lora_alpha: f64,
    /// Dropout probability on the LoRA input path, training only.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Which linears get an adapter.
    pub target_modules: TargetModules,
}

/// PEFT's `target_modules`: the string `"all-linear"`, a list of module names, or any other
/// string, which PEFT reads as a regular expression over the full module path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetModules {
    /// Every linear layer except the output head (`lm_head`), as PEFT's `"all-linear"`.
    AllLinear,
    /// Modules whose name is one of these or ends with `.{name}` (PEFT's list matching).
    Names(Vec<String>),
    /// Modules whose whole dotted path matches (PEFT: `re.fullmatch(target_modules, key)`,
    /// e.g. `".*\\.(q_proj|v_proj)"` or `"model\\.layers\\.(0|1)\\..*_proj"`).
    Regex(TargetRegex),
}

/// A `target_modules` regular expression, compiled once, anchored at both ends as Python's
/// `re.fullmatch`. Rust's `regex` syntax covers what PEFT configs use (classes, groups,
/// alternation, repetition); look-around and back-references are refused when parsed.
#[derive(Debug, Clone)]
pub struct TargetRegex {
    pattern: String,
    re: regex::Regex,
}

impl TargetRegex {
    /// Compiles `pattern` for full matches.
    pub fn new(pattern: &str) -> Result<Self, LoraConfigError> {
        let re =
            regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| LoraConfigError::Regex {
                pattern: pattern.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            pattern: pattern.to_string(),
            re,
        })
    }

    /// The pattern as written in the config.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Whether the whole of `path` matches.
    pub fn is_match(&self, path: &str) -> bool {
        self.re.is_match(path)
    }
}

impl PartialEq for TargetRegex {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
    }
}

impl Eq for TargetRegex {}

impl TargetModules {
    /// PEFT's reading of a single string: `"all-linear"`, else a regular expression.
    pub fn from_string(s: &str) -> Result<Self, LoraConfigError> {
        if s == ALL_LINEAR {
            Ok(TargetModules::AllLinear)
        } else {
            Ok(TargetModules::Regex(TargetRegex::new(s)?))
        }
    }
}

/// Why a [`LoraConfig`] cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LoraConfigError {
    #[error("LoRA config: `r` must be at least 1")]
    ZeroRank,
    #[error("LoRA config: `lora_dropout` must be in [0, 1), got {0}")]
    Dropout(f64),
    #[error("LoRA config: `lora_alpha` must be finite, got {0}")]
    Alpha(f64),
    #[error("LoRA config: `target_modules` is an empty list")]
    NoTargets,
    #[error("LoRA config: `target_modules` {pattern:?} is not a regular expression qtune can read (PEFT reads a single string other than \"all-linear\" as one): {reason}")]
    Regex { pattern: String, reason: String },
}

impl LoraConfig {
    /// `lora_alpha / r`, the factor PEFT multiplies `B·A·x` by.
    pub fn scaling(&self) -> f64 {
        self.lora_alpha / self.r as f64
    }

    /// Rejects settings PEFT would reject or that make the update meaningless.
    pub fn validate(&self) -> Result<(), LoraConfigError> {
        if self.r == 0 {
            return Err(LoraConfigError::ZeroRank);
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(LoraConfigError::Dropout(self.lora_dropout));
        }
        if !self.lora_alpha.is_finite() {
            return Err(LoraConfigError::Alpha(self.lora_alpha));
        }
        if matches!(&self.target_modules, TargetModules::Names(n) if n.is_empty()) {
            return Err(LoraConfigError::NoTargets);
        }
        Ok(())
    }
}

impl TargetModules {
    /// Whether the module at `path` (HF dotted name, e.g. `transformer.h.0.attn.q_proj`) is a
    /// target. `is_output_layer` marks the LM head, which `"all-linear"` leaves out as PEFT does.
    pub fn matches(&self, path: &str, is_output_layer: bool) -> bool {
        match self {
            TargetModules::AllLinear => !is_output_layer,
            TargetModules::Names(names) => names
                .iter()
                .any(|n| path == n || path.ends_with(&format!(".{n}"))),
            TargetModules::Regex(re) => re.is_match(path),
        }
    }
}

const ALL_LINEAR: &str = "all-linear";

impl Serialize for TargetModules {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TargetModules::AllLinear => s.serialize_str(ALL_LINEAR),
            TargetModules::Names(names) => names.serialize(s),
            TargetModules::Regex(re) => s.serialize_str(re.pattern()),
        }
    }
}

impl<'de> Deserialize<'de> for TargetModules {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        match Raw::deserialize(d)? {
            Raw::One(s) => TargetModules::from_string(&s).map_err(serde::de::Error::custom),
            Raw::Many(v) => Ok(TargetModules::Names(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_json_round_trip() {
        let json = r#"{"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "bias": "none",
                       "target_modules": ["v_proj", "q_proj"], "task_type": "CAUSAL_LM"}"#;
        let cfg: LoraConfig = serde_json::from_str(json).unwrap();
        assert_eq!(cfg.r, 16);
        assert_eq!(cfg.scaling(), 2.0);
        assert!(cfg
            .target_modules
            .matches("transformer.h.3.attn.q_proj", false));
        assert!(!cfg
            .target_modules
            .matches("transformer.h.3.attn.k_proj", false));
        let back: LoraConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
        assert_eq!(cfg.validate(), Ok(()));
    }

    #[test]
    fn all_linear_excludes_head() {
        let t: TargetModules = serde_json::from_str("\"all-linear\"").unwrap();
        assert!(t.matches("transformer.h.0.mlp.fc_in", false));
        assert!(!t.matches("lm_head", true));
    }

    #[test]
    fn a_single_string_is_a_full_match_regex_as_in_peft() {
        let t: TargetModules =
            serde_json::from_str(r#""model\\.layers\\.(0|1)\\.self_attn\\.(q|v)_proj""#).unwrap();
        assert!(t.matches("model.layers.0.self_attn.q_proj", false));
        assert!(t.matches("model.layers.1.self_attn.v_proj", false));
        assert!(!t.matches("model.layers.2.self_attn.q_proj", false));
        assert!(!t.matches("model.layers.10.self_attn.q_proj", false));
        assert!(!t.matches("model.layers.0.self_attn.k_proj", false));
        // re.fullmatch: a pattern matching only part of the path selects nothing.
        let part: TargetModules = serde_json::from_str(r#""q_proj""#).unwrap();
        assert!(!part.matches("model.layers.0.self_attn.q_proj", false));
        assert!(part.matches("q_proj", false));
        let any: TargetModules = serde_json::from_str(r#"".*\\.(q_proj|v_proj)""#).unwrap();
        assert!(any.matches("transformer.h.3.attn.v_proj", false));
        // Round trip keeps the pattern.
        assert_eq!(
            serde_json::to_string(&any).unwrap(),
            r#"".*\\.(q_proj|v_proj)""#
        );
        // What Rust's regex cannot read is refused with the pattern named.
        let err = serde_json::from_str::<TargetModules>(r#""(?<=attn\\.)q_proj""#).unwrap_err();
        assert!(err.to_string().contains("(?<=attn"), "{err}");
        assert!(serde_json::from_str::<TargetModules>(r#""(q_proj""#).is_err());
    }

    #[test]
    fn invalid_configs_are_named() {
        let base = LoraConfig {
            r: 4,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            target_modules: TargetModules::AllLinear,
        };
        let zero = LoraConfig {
            r: 0,
            ..base.clone()
        };
        assert_eq!(zero.validate(), Err(LoraConfigError::ZeroRank));
        let drop = LoraConfig {
            lora_dropout: 1.0,
            ..base.clone()
        };
        assert_eq!(drop.validate(), Err(LoraConfigError::Dropout(1.0)));
        let empty = LoraConfig {
            target_modules: TargetModules::Names(vec![]),
            ..base
        };
        assert_eq!(empty.validate(), Err(LoraConfigError::NoTargets));
    }
}
