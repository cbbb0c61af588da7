//! One way to build any family's model from a checkpoint as [`LoadOptions`] say: a family names
//! its `build` ([`Build`], implemented by its config), and [`LoadOptions::build`] /
//! [`load_folder`] choose the source (quantize-on-load, host-quantized, dense) for it.
use std::path::Path;

use burn::tensor::DType;
use qtune_kernels::QBackend;
use qtune_quant::QuantSpec;

use super::{HostQuantizing, LoadOptions, TensorSource, WeightFiles};
use crate::error::LmError;
use crate::prefetch::{load_files, threads};

/// A family's model built from any [`TensorSource`]: block linears quantized to `quant` as they
/// load (or dense), other weights and activations in `dtype`.
pub trait Build<B: QBackend> {
    type Model;
    fn build<S: TensorSource<B>>(
        &self,
        src: &mut S,
        quant: Option<QuantSpec>,
        dtype: DType,
        device: &B::Device,
    ) -> Result<Self::Model, LmError>;
}

impl LoadOptions {
    /// `family`'s model from `src`: with `host_quantize`, every block linear quantized on the
    /// host as it is read ([`HostQuantizing`]; `quant` ignored), else quantized to `quant` on
    /// load, or dense.
    pub fn build<B: QBackend, S: TensorSource<B>, F: Build<B>>(
        &self,
        src: &mut S,
        family: &F,
        device: &B::Device,
    ) -> Result<F::Model, LmError> {
        match self.host_quantize {
            Some(q) => family.build(&mut HostQuantizing::new(src, q), None, self.dtype, device),
            None => family.build(src, self.quant, self.dtype, device),
        }
    }
}

/// `family`'s model from the safetensors files of checkpoint folder `dir` (single or sharded),
/// read ahead on [`threads`] reader threads ([`load_files`]), built as `opts` say.
pub fn load_folder<B: QBackend, F: Build<B>>(
    dir: &Path,
    opts: &LoadOptions,
    family: &F,
    device: &B::Device,
) -> Result<F::Model, LmError> {
    let files = WeightFiles::open(dir)?;
    load_files::<B, _>(&files, opts.dtype, device, threads()?, |src| {
        opts.build(src, family, device)
    })
}
