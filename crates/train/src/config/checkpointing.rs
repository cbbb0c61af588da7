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

/// The host memory `"offload"` may pin at once on a backend that parks in host memory: the
/// inputs of all blocks but the last two, one micro-batch (`per_device_train_batch_size` ×
/// `max_length` tokens of `hidden` values of `dtype_bytes`) on each of the `ranks` devices of
/// this host, twice over (the parking arena is bounded by twice one step's parked bytes:
/// `qtune_kernels::park`).
pub fn offload_host_bytes(
    cfg: &super::RunConfig,
    layers: usize,
    hidden: usize,
    dtype_bytes: usize,
    ranks: usize,
) -> u64 {
    let tokens = (cfg.training.per_device_train_batch_size * cfg.data.max_length) as u64;
    2 * ranks as u64 * layers.saturating_sub(2) as u64 * tokens * (hidden * dtype_bytes) as u64
}

/// Refuses `gradient_checkpointing = "offload"` before any work when what it may pin
/// ([`offload_host_bytes`], `needed`) exceeds the host memory `available` now (`MemAvailable`):
/// the pinned allocation would otherwise fail mid-run.
pub fn check_offload_host_memory(needed: u64, available: u64) -> Result<(), super::ConfigError> {
    const GIB: f64 = (1u64 << 30) as f64;
    if needed <= available {
        return Ok(());
    }
    Err(super::ConfigError::Invalid {
        origin: "run config".into(),
        field: "training.gradient_checkpointing",
        msg: format!(
            "= \"offload\" may pin {:.2} GiB of host memory for the parked block inputs (all \
             blocks but the last two × per_device_train_batch_size × max_length × hidden size, \
             twice over), but only {:.2} GiB is available (MemAvailable in /proc/meminfo): use \
             gradient_checkpointing = true, or lower per_device_train_batch_size or max_length",
            needed as f64 / GIB,
            available as f64 / GIB
        ),
    })
}

/// `MemAvailable` of `/proc/meminfo` in bytes; `None` where it cannot be read (not Linux).
pub fn host_memory_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    mem_available(&text)
}

fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
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

    /// GPT-J-6B at 8 × 512 in bf16: 32 MiB per block input (as `qtune_kernels::park`'s docs
    /// count), 26 of its 28 blocks parked, twice over for the arena.
    #[test]
    fn offload_bytes_count_all_but_two_blocks_twice() {
        let mut cfg = crate::config::RunConfig::tiny();
        cfg.training.per_device_train_batch_size = 8;
        cfg.data.max_length = 512;
        let one_block = 8 * 512 * 4096 * 2u64; // 32 MiB
        assert_eq!(
            super::offload_host_bytes(&cfg, 28, 4096, 2, 1),
            2 * 26 * one_block
        );
        assert_eq!(
            super::offload_host_bytes(&cfg, 28, 4096, 2, 2),
            4 * 26 * one_block
        );
        assert_eq!(super::offload_host_bytes(&cfg, 2, 4096, 2, 1), 0);
    }

    #[test]
    fn offload_beyond_the_available_host_memory_is_refused_naming_the_field() {
        assert!(super::check_offload_host_memory(100, 100).is_ok());
        let e = super::check_offload_host_memory(3 << 30, 1 << 30)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("training.gradient_checkpointing")
                && e.contains("3.00 GiB")
                && e.contains("1.00 GiB"),
            "{e}"
        );
    }

    #[test]
    fn mem_available_is_read_from_meminfo() {
        let text = "MemTotal:       131072000 kB\nMemFree:  1 kB\nMemAvailable:   65536 kB\n";
        assert_eq!(super::mem_available(text), Some(65536 * 1024));
        assert_eq!(super::mem_available("MemTotal: 5 kB\n"), None);
    }
}
