//! A checkpoint built as [`LoadOptions`] say, for every family: the source its build reads
//! ([`LoadOptions::source`]: host-quantized or as is) and the quantization it applies on load
//! ([`LoadOptions::load_quant`]); [`load_folder`] for a safetensors folder.
use std::path::Path;

use qtune_kernels::QBackend;
use qtune_quant::QuantSpec;

use super::{FileSource, HostQuantizing, LoadOptions, WeightFiles};
use crate::error::LmError;
use crate::prefetch::{load_files, threads};

impl LoadOptions {
    /// What a family's build reads: `src` with every block linear quantized on the host as it
    /// is read under `host_quantize` ([`HostQuantizing`]), else `src` as it is.
    pub fn source<'s, S: ?Sized>(&self, src: &'s mut S) -> HostQuantizing<'s, S> {
        HostQuantizing::with(src, self.host_quantize)
    }

    /// The quantization a family's build applies to the block linears as they load: `quant`,
    /// none under `host_quantize` (the source quantizes them).
    pub fn load_quant(&self) -> Option<QuantSpec> {
        self.quant.filter(|_| self.host_quantize.is_none())
    }
}

/// `build(source, quant)` over the safetensors files of checkpoint folder `dir` (single or
/// sharded), read ahead on [`threads`] reader threads ([`load_files`]), with the source and
/// quantization `opts` say ([`LoadOptions::source`], [`LoadOptions::load_quant`]).
pub fn load_folder<B: QBackend, T>(
    dir: &Path,
    opts: &LoadOptions,
    device: &B::Device,
    build: impl FnOnce(
        &mut HostQuantizing<'_, FileSource<'_, B>>,
        Option<QuantSpec>,
    ) -> Result<T, LmError>,
) -> Result<T, LmError> {
    let files = WeightFiles::open(dir)?;
    load_files::<B, _>(&files, opts.dtype, device, threads()?, |src| {
        build(&mut opts.source(src), opts.load_quant())
    })
}
