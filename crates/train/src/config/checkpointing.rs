//! `[training] gradient_checkpointing`: `false`, `true`, or `"offload"` (Axolotl's spelling:
//! checkpointing with the kept block inputs parked in host memory).

use serde::{Deserialize, Serialize};

use crate::step::Backprop;

/// How the backward gets its activations (`[training] gradient_checkpointing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "Raw", into = "Raw")]
pub enum GradientCheckpointing {
    /// `false`: plain autodiff, every block's activations alive until the backward.
    #[default]
    Off,
    /// `true`: per-block checkpointing, only the block inputs kept.
    On,
    /// `"offload"`: per-block checkpointing with the kept block inputs in host memory between
    /// the forward and their block's backward (the copies overlap the blocks' compute).
    Offload,
}

/// What the TOML holds: a boolean or a word.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Raw {
    Bool(bool),
    Word(String),
}

impl TryFrom<Raw> for GradientCheckpointing {
    type Error = String;

    fn try_from(r: Raw) -> Result<Self, String> {
        match r {
            Raw::Bool(false) => Ok(Self::Off),
            Raw::Bool(true) => Ok(Self::On),
            Raw::Word(w) if w == "offload" => Ok(Self::Offload),
            Raw::Word(w) => Err(format!(
                "unknown `training.gradient_checkpointing` value \"{w}\"; accepted: true, false, \"offload\""
            )),
        }
    }
}

impl From<GradientCheckpointing> for Raw {
    fn from(g: GradientCheckpointing) -> Raw {
        match g {
            GradientCheckpointing::Off => Raw::Bool(false),
            GradientCheckpointing::On => Raw::Bool(true),
            GradientCheckpointing::Offload => Raw::Word("offload".into()),
        }
    }
}

impl GradientCheckpointing {
    /// The micro-step's backward mode.
    pub fn backprop(self) -> Backprop {
        match self {
            Self::Off => Backprop::Plain,
            Self::On => Backprop::Checkpointed,
            Self::Offload => Backprop::Offloaded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::GradientCheckpointing as G;

    #[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
    struct T {
        g: G,
    }

    #[test]
    fn reads_and_writes_bools_and_offload() {
        for (text, want) in [
            ("g = false", G::Off),
            ("g = true", G::On),
            ("g = \"offload\"", G::Offload),
        ] {
            let t: T = toml::from_str(text).unwrap();
            assert_eq!(t.g, want, "{text}");
            assert_eq!(toml::to_string(&t).unwrap().trim(), text);
        }
    }

    #[test]
    fn an_unknown_word_is_refused_by_name() {
        for bad in ["g = \"offload_disk\"", "g = \"yes\"", "g = 1"] {
            let e = toml::from_str::<T>(bad).unwrap_err().to_string();
            assert!(
                e.contains("gradient_checkpointing") || e.contains("did not match"),
                "{bad}: {e}"
            );
        }
    }
}
