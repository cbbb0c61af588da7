//! [`HostQuantizing`]: block linears quantized on the host as a loader reads them (`qtune
//! quantize`), one dense weight at a time.
use burn::tensor::Tensor;
use qtune_kernels::QBackend;
use qtune_quant::{FloatDType, QuantSpec};

use super::TensorSource;
use crate::error::LmError;

/// How [`HostQuantizing`] quantizes: the format, and the dtype the values are rounded to first
/// (the export dtype, as transformers casts before bitsandbytes quantizes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostQuant {
    pub spec: QuantSpec,
    pub dtype: FloatDType,
}

/// A source whose block linears come out quantized by qtune-quant on the host
/// (`QuantizedTensor::quantize`, bit-exact with bitsandbytes), each from the inner source's f32
/// values as it is read, so a loader holds one dense weight at a time instead of the whole
/// model: `qtune quantize` of a 6B checkpoint needs ~4 GB, not the 24 GB of a dense f32 model.
/// A weight the inner source already stores quantized is passed through; `lm_head` stays dense.
/// Without a [`HostQuant`] it is the inner source as it is ([`crate::LoadOptions::source`]).
pub struct HostQuantizing<'s, S: ?Sized> {
    inner: &'s mut S,
    q: Option<HostQuant>,
}

impl<'s, S: ?Sized> HostQuantizing<'s, S> {
    pub fn new(inner: &'s mut S, q: HostQuant) -> Self {
        Self::with(inner, Some(q))
    }

    /// Quantizing as `q` says, or (`None`) passing `inner` through.
    pub fn with(inner: &'s mut S, q: Option<HostQuant>) -> Self {
        Self { inner, q }
    }
}

impl<B: QBackend, S: TensorSource<B> + ?Sized> TensorSource<B> for HostQuantizing<'_, S> {
    fn tensor1(&mut self, name: &str, shape: [usize; 1]) -> Result<Tensor<B, 1>, LmError> {
        self.inner.tensor1(name, shape)
    }

    fn tensor2(&mut self, name: &str, shape: [usize; 2]) -> Result<Tensor<B, 2>, LmError> {
        self.inner.tensor2(name, shape)
    }

    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }

    fn host_f32(&mut self, name: &str, shape: [usize; 2]) -> Result<Vec<f32>, LmError> {
        self.inner.host_f32(name, shape)
    }

    fn quantized(
        &mut self,
        module: &str,
        shape: [usize; 2],
    ) -> Result<Option<qtune_quant::QuantizedTensor>, LmError> {
        if let Some(stored) = self.inner.quantized(module, shape)? {
            return Ok(Some(stored));
        }
        let Some(q) = self.q.filter(|_| module != "lm_head") else {
            return Ok(None);
        };
        let name = format!("{module}.weight");
        let values = self.inner.host_f32(&name, shape)?;
        qtune_quant::QuantizedTensor::quantize(module, &values, &shape, q.spec, q.dtype)
            .map(Some)
            .map_err(|source| LmError::host_quantize(module, source))
    }
}
