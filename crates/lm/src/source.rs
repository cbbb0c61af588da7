//! Where a model's dense tensors come from ([`TensorSource`]): HF checkpoints (`model.safetensors`
//! or a sharded `model.safetensors.index.json`, memory-mapped, F32/F16/BF16; [`FileSource`]) or
//! a seeded random init ([`RandomSource`]); and [`build_linear`], which quantizes each block
//! linear as soon as its dense tensor exists, so two full copies of the weights never coexist.
//! A bf16/f16 file loaded in its own dtype uploads its bytes; others convert on the host
//! (f32 → device dtype). [`crate::prefetch::load_files`] reads ahead on a pool of threads ([`crate::prefetch`])
//! while the build uploads and quantizes. `pytorch_model.bin` is refused: unpickling executes
//! code.

use std::path::Path;

use burn::tensor::{DType, Distribution, Tensor, TensorData, TensorPrimitive};
use qtune_kernels::{QBackend, QuantWeight};
use qtune_lora::Linear;
use qtune_quant::{FloatDType, QuantSpec};
use safetensors::Dtype;

use crate::context::to_dtype;
use crate::error::LmError;
use crate::prefetch::Prefetch;

mod files;
mod host_quant;
mod load;
pub(crate) use files::read_quantized;
pub use files::WeightFiles;
pub use host_quant::{HostQuant, HostQuantizing};
pub use load::load_folder;

/// Where dense tensors come from, by HF name and expected shape.
pub trait TensorSource<B: QBackend> {
    fn tensor1(&mut self, name: &str, shape: [usize; 1]) -> Result<Tensor<B, 1>, LmError>;
    fn tensor2(&mut self, name: &str, shape: [usize; 2]) -> Result<Tensor<B, 2>, LmError>;
    /// Whether the source has this tensor (tied `lm_head`, optional biases).
    fn contains(&self, name: &str) -> bool;
    /// The weight of linear `module` (`shape` `[out, in]`) if the source stores it already
    /// quantized (bnb/HF format), or quantizes it itself ([`HostQuantizing`]).
    fn quantized(
        &mut self,
        _module: &str,
        _shape: [usize; 2],
    ) -> Result<Option<qtune_quant::QuantizedTensor>, LmError> {
        Ok(None)
    }
    /// `name`'s values as f32 on the host, for a host quantizer. The default reads
    /// [`TensorSource::tensor2`] back from the device; a file source hands over what it read,
    /// without the trip to the device and back.
    fn host_f32(&mut self, name: &str, shape: [usize; 2]) -> Result<Vec<f32>, LmError> {
        let w = self.tensor2(name, shape)?;
        crate::context::host_f32(w).map_err(|e| LmError::Input(format!("{name}: {e}")))
    }
}

/// qtune-quant's name of a device dtype.
pub fn float_dtype(dtype: DType) -> FloatDType {
    match dtype {
        DType::BF16 => FloatDType::BF16,
        DType::F16 => FloatDType::F16,
        _ => FloatDType::F32,
    }
}

/// The linear `name` (`{name}.weight` `[out, in]`, `{name}.bias` if `bias`): as stored when the
/// source holds it pre-quantized, else quantized to `quant` right away, else dense.
#[allow(clippy::too_many_arguments)]
pub fn build_linear<B: QBackend, S: TensorSource<B> + ?Sized>(
    src: &mut S,
    name: &str,
    shape: [usize; 2],
    bias: bool,
    quant: Option<QuantSpec>,
    dtype: DType,
    device: &B::Device,
) -> Result<Linear<B>, LmError> {
    let b = if bias {
        Some(src.tensor1(&format!("{name}.bias"), [shape[0]])?)
    } else {
        None
    };
    let quant_err = |source| LmError::Quantize {
        name: name.to_string(),
        source: Box::new(source),
    };
    if let Some(q) = src.quantized(name, shape)? {
        // A pre-quantized checkpoint (e.g. saved by HF + bitsandbytes) is used as stored.
        if q.shape != shape {
            return Err(LmError::Input(format!(
                "{name}.weight: quantized shape {:?}, expected {shape:?}",
                q.shape
            )));
        }
        let w = QuantWeight::try_from_owned(name, q, device).map_err(quant_err)?;
        return Ok(Linear::quantized(w, b));
    }
    let w = src.tensor2(&format!("{name}.weight"), shape)?;
    Ok(match quant {
        None => Linear::dense(w, b),
        Some(spec) => {
            let q = QuantWeight::quantize(
                name,
                w,
                spec.format,
                spec.blocksize,
                spec.double_quant,
                float_dtype(dtype),
            )
            .map_err(quant_err)?;
            Linear::quantized(q, b)
        }
    })
}

/// A checkpoint tensor's `data` (already in the load dtype) on `device`, through the backend's
/// one-copy upload ([`QBackend::q_upload_float`]).
fn upload<B: QBackend, const D: usize>(data: TensorData, device: &B::Device) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::q_upload_float(data, device)))
}

/// HF's `_init_weights`: linear and embedding weights N(0, 0.02), biases 0, norm weights 1.
/// Drawn on the device after `B::seed(device, seed)` by the caller.
pub struct RandomSource<'a, B: QBackend> {
    pub device: &'a B::Device,
    pub dtype: DType,
    /// Which 1-D tensors are norm weights (initialized to 1).
    pub is_norm_weight: fn(&str) -> bool,
}

impl<B: QBackend> TensorSource<B> for RandomSource<'_, B> {
    fn tensor1(&mut self, name: &str, shape: [usize; 1]) -> Result<Tensor<B, 1>, LmError> {
        let t = if (self.is_norm_weight)(name) {
            Tensor::ones(shape, self.device)
        } else {
            Tensor::zeros(shape, self.device)
        };
        Ok(to_dtype(t, self.dtype))
    }

    fn tensor2(&mut self, _name: &str, shape: [usize; 2]) -> Result<Tensor<B, 2>, LmError> {
        let t = Tensor::random(shape, Distribution::Normal(0.0, 0.02), self.device);
        Ok(to_dtype(t, self.dtype))
    }

    fn contains(&self, _name: &str) -> bool {
        true
    }
}

/// How to materialize the weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadOptions {
    /// Device dtype of dense weights and activations (F32 on NdArray; BF16/F16/F32 on CUDA).
    pub dtype: DType,
    /// Quantize the block linears (q/k/v/out_proj, fc_in, fc_out) as they stream in;
    /// embeddings, LayerNorms and `lm_head` stay dense.
    pub quant: Option<QuantSpec>,
    /// `qtune quantize`: every block linear comes out quantized on the host, one at a time, from
    /// the checkpoint's values ([`HostQuantizing`]); the dense model is never held (`quant` is
    /// then ignored).
    pub host_quantize: Option<HostQuant>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            quant: None,
            host_quantize: None,
        }
    }
}

/// Stored `bytes` of tensor `name` (in `path`, of `dtype`) as f32 values, checked finite.
/// Large tensors are converted on all cores.
fn to_f32(path: &Path, name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>, LmError> {
    let convert: fn(&[u8]) -> f32 = match dtype {
        Dtype::F32 => |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
        Dtype::F16 => |c| half::f16::from_le_bytes([c[0], c[1]]).to_f32(),
        Dtype::BF16 => |c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32(),
        other => {
            return Err(LmError::DType {
                path: path.to_path_buf(),
                name: name.to_string(),
                got: format!("{other:?}"),
            })
        }
    };
    let width = dtype.bitsize() / 8;
    let values = parallel_map(bytes, width, convert);
    check_finite(path, name, &values)?;
    Ok(values)
}

/// `bytes` as `width`-byte elements through `f`, split over the machine's cores when large.
fn parallel_map(bytes: &[u8], width: usize, f: fn(&[u8]) -> f32) -> Vec<f32> {
    let n = bytes.len() / width;
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    if n < (1 << 20) || threads == 1 {
        return bytes.chunks_exact(width).map(f).collect();
    }
    let mut out = vec![0f32; n];
    let per = n.div_ceil(threads);
    std::thread::scope(|scope| {
        for (dst, src) in out.chunks_mut(per).zip(bytes.chunks(per * width)) {
            scope.spawn(move || {
                for (d, c) in dst.iter_mut().zip(src.chunks_exact(width)) {
                    *d = f(c);
                }
            });
        }
    });
    out
}

/// Errors naming `name` at its first NaN or ±inf among 16-bit floats stored as little-endian
/// bytes (`BF16`: exponent bits `0x7F80` all set; `F16`: `0x7C00`), without converting them.
fn check_finite_16(path: &Path, name: &str, bytes: &[u8], dtype: Dtype) -> Result<(), LmError> {
    let (exp, to_f32): (u16, fn(u16) -> f32) = match dtype {
        Dtype::BF16 => (0x7F80, |b| half::bf16::from_bits(b).to_f32()),
        _ => (0x7C00, |b| half::f16::from_bits(b).to_f32()),
    };
    let bad = bytes
        .chunks_exact(2)
        .position(|c| u16::from_le_bytes([c[0], c[1]]) & exp == exp);
    match bad {
        None => Ok(()),
        Some(index) => Err(LmError::NonFinite {
            path: path.to_path_buf(),
            name: name.to_string(),
            index,
            value: to_f32(u16::from_le_bytes([bytes[2 * index], bytes[2 * index + 1]])),
        }),
    }
}

/// Errors naming `name` (in `path`) at its first NaN or ±inf value.
pub fn check_finite(path: &Path, name: &str, values: &[f32]) -> Result<(), LmError> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(LmError::NonFinite {
            path: path.to_path_buf(),
            name: name.to_string(),
            index,
            value: values[index],
        }),
    }
}

/// The float tensor `name` (stored `bytes` of `stored` dtype in `path`, shape `shape` already
/// checked) as `TensorData` in `dtype`, checked finite. A bf16 (f16) file loaded in bf16 (f16)
/// keeps its bytes as they are, never through f32.
fn dense_from_view(
    path: &Path,
    name: &str,
    stored: Dtype,
    bytes: &[u8],
    shape: &[usize],
    dtype: DType,
) -> Result<TensorData, LmError> {
    // (Burn's bytes are native-endian, the file's little-endian.)
    let same = matches!(
        (stored, dtype),
        (Dtype::BF16, DType::BF16) | (Dtype::F16, DType::F16)
    );
    if same && cfg!(target_endian = "little") {
        check_finite_16(path, name, bytes, stored)?;
        // As 16-bit elements, not `TensorData::from_bytes_vec`: cubecl's `Bytes` copies a
        // `Vec<u8>` once more into an allocation of its maximal alignment (a quarter of the
        // host time of a quantized GPT-J-6B load, BENCHMARKS.md session 11).
        return Ok(match stored {
            Dtype::BF16 => TensorData::new(elems::<half::bf16>(bytes), shape.to_vec()),
            _ => TensorData::new(elems::<half::f16>(bytes), shape.to_vec()),
        });
    }
    let data = TensorData::new(to_f32(path, name, stored, bytes)?, shape.to_vec());
    Ok(if dtype == DType::F32 {
        data
    } else {
        data.convert_dtype(dtype)
    })
}

/// Little-endian `bytes` as a vector of `T` (one copy; the slice need not be aligned).
fn elems<T: bytemuck::Pod>(bytes: &[u8]) -> Vec<T> {
    let n = bytes.len() / std::mem::size_of::<T>();
    let mut out = Vec::<T>::with_capacity(n);
    // SAFETY: `out` has room for `n` elements, i.e. at least `bytes.len()` bytes, and does not
    // overlap `bytes`; `T: Pod`, so every byte pattern written is a valid `T` before `set_len`.
    // (No zero-fill first: this runs on every 16-bit tensor of a checkpoint.)
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            out.as_mut_ptr().cast::<u8>(),
            n * std::mem::size_of::<T>(),
        );
        out.set_len(n);
    }
    out
}

/// The float tensor `name`, checked against `shape`, as `TensorData` in `dtype` (a serial read;
/// [`crate::prefetch`] runs the same on its workers).
pub(crate) fn dense_data(
    files: &WeightFiles,
    name: &str,
    shape: &[usize],
    dtype: DType,
) -> Result<TensorData, LmError> {
    let (path, stored, bytes) = files.view(name, shape)?;
    dense_from_view(path, name, stored, bytes, shape, dtype)
}

/// Tensors of a checkpoint folder, uploaded in `dtype`; read ahead on other threads when
/// `prefetch` is set (see [`crate::prefetch::load_files`]).
pub struct FileSource<'a, B: QBackend> {
    pub files: &'a WeightFiles,
    pub dtype: DType,
    pub device: &'a B::Device,
    pub prefetch: Option<&'a Prefetch<'a>>,
}

impl<B: QBackend> FileSource<'_, B> {
    fn data(&self, name: &str, shape: &[usize]) -> Result<TensorData, LmError> {
        // The shape check first, so that errors come in the serial order.
        let (path, stored, bytes) = self.files.view(name, shape)?;
        if let Some(ready) = self.prefetch.and_then(|p| p.take_dense(name)) {
            return ready;
        }
        dense_from_view(path, name, stored, bytes, shape, self.dtype)
    }
}

impl<B: QBackend> TensorSource<B> for FileSource<'_, B> {
    fn tensor1(&mut self, name: &str, shape: [usize; 1]) -> Result<Tensor<B, 1>, LmError> {
        Ok(upload(self.data(name, &shape)?, self.device))
    }

    fn tensor2(&mut self, name: &str, shape: [usize; 2]) -> Result<Tensor<B, 2>, LmError> {
        Ok(upload(self.data(name, &shape)?, self.device))
    }

    fn contains(&self, name: &str) -> bool {
        self.files.contains(name)
    }

    fn host_f32(&mut self, name: &str, shape: [usize; 2]) -> Result<Vec<f32>, LmError> {
        let data = self.data(name, &shape)?;
        data.convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| LmError::Input(format!("{name}: {e:?}")))
    }

    fn quantized(
        &mut self,
        module: &str,
        _shape: [usize; 2],
    ) -> Result<Option<qtune_quant::QuantizedTensor>, LmError> {
        if let Some(ready) = self.prefetch.and_then(|p| p.take_quantized(module)) {
            return ready;
        }
        read_quantized(self.files, module)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    /// A folder with one safetensors file holding `tensors` (name, dtype, shape, bytes).
    fn folder(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let views: Vec<_> = tensors
            .iter()
            .map(|(n, d, s, b)| {
                (
                    n.to_string(),
                    safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
        dir
    }

    fn bf16_bytes(v: &[f32]) -> Vec<u8> {
        v.iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect()
    }

    #[test]
    fn bf16_loaded_as_bf16_keeps_the_bytes_and_equals_the_f32_round_trip() {
        let vals: Vec<f32> = (0..96).map(|i| (i as f32 - 40.0) * 0.37).collect();
        let dir = folder(&[("w", Dtype::BF16, vec![8, 12], bf16_bytes(&vals))]);
        let files = WeightFiles::open(dir.path()).unwrap();
        let device = Default::default();
        let src = FileSource::<NdArray> {
            files: &files,
            dtype: DType::BF16,
            device: &device,
            prefetch: None,
        };
        let raw = src.data("w", &[8, 12]).unwrap();
        let via_f32 = TensorData::new(files.read_f32("w", &[8, 12]).unwrap(), vec![8, 12])
            .convert_dtype(DType::BF16);
        assert_eq!(raw.dtype, DType::BF16);
        assert_eq!(raw.as_bytes(), via_f32.as_bytes());
        assert_eq!(raw.as_bytes(), &bf16_bytes(&vals)[..]);
    }

    #[test]
    fn elems_reads_an_unaligned_slice() {
        let bytes = bf16_bytes(&[1.5, -2.0, 3.25]);
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        let got: Vec<half::bf16> = elems(&shifted[1..]);
        assert_eq!(
            got.iter().map(|v| v.to_f32()).collect::<Vec<_>>(),
            [1.5, -2.0, 3.25]
        );
    }

    #[test]
    fn non_finite_16_bit_values_are_refused_naming_the_tensor() {
        for (dtype, bits) in [
            (Dtype::BF16, half::bf16::NAN.to_bits()),
            (Dtype::BF16, half::bf16::INFINITY.to_bits()),
            (Dtype::F16, half::f16::NEG_INFINITY.to_bits()),
        ] {
            let mut bytes = vec![0u8; 2 * 6];
            bytes[8..10].copy_from_slice(&bits.to_le_bytes());
            let dir = folder(&[("layer.w", dtype, vec![2, 3], bytes)]);
            let files = WeightFiles::open(dir.path()).unwrap();
            let device = Default::default();
            let dt = if dtype == Dtype::BF16 {
                DType::BF16
            } else {
                DType::F16
            };
            let src = FileSource::<NdArray> {
                files: &files,
                dtype: dt,
                device: &device,
                prefetch: None,
            };
            let err = src.data("layer.w", &[2, 3]).unwrap_err().to_string();
            assert!(err.contains("layer.w") && err.contains('4'), "{err}");
            // The f32 path refuses it the same way.
            assert!(files.read_f32("layer.w", &[2, 3]).is_err());
        }
    }

    #[test]
    fn large_tensors_convert_on_all_cores_to_the_same_values() {
        let n = (1 << 20) + 77;
        let vals: Vec<f32> = (0..n).map(|i| ((i % 1000) as f32 - 500.0) / 64.0).collect();
        let bytes = bf16_bytes(&vals);
        let f: fn(&[u8]) -> f32 = |c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
        let serial: Vec<f32> = bytes.chunks_exact(2).map(f).collect();
        assert_eq!(parallel_map(&bytes, 2, f), serial);
    }
}
