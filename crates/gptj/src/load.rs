//! Loading HF GPT-J checkpoints: `config.json` + `model.safetensors` or a sharded
//! `model.safetensors.index.json` (qtune-lm's [`WeightFiles`]), block linears quantized as they
//! stream in when [`LoadOptions::quant`] is set; tensors are read ahead on other threads
//! ([`qtune_lm::prefetch`]) while this one uploads and quantizes.

use std::path::Path;

use qtune_kernels::QBackend;
use qtune_lm::source::load_folder;
use qtune_lm::{LmError, LoadOptions};

use crate::build::build;
use crate::config::GptjConfig;
use crate::model::Gptj;

impl<B: QBackend> Gptj<B> {
    /// Loads a checkpoint folder (`config.json` + safetensors); see [`qtune_lm::hub::resolve`]
    /// for Hub ids. Tensors the model does not use (e.g. old `attn.bias` buffers) are ignored.
    pub fn load(dir: &Path, opts: &LoadOptions, device: &B::Device) -> Result<Self, LmError> {
        let cfg = GptjConfig::from_file(&dir.join("config.json"))?;
        let model = load_folder::<B, _>(dir, opts, device, |src, quant| {
            build(&cfg, src, quant, opts.dtype, device)
        })?;
        tracing::info!(dir = %dir.display(), quant = ?opts.quant, dtype = ?opts.dtype, "loaded GPT-J");
        Ok(model)
    }
}
