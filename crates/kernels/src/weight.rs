//! [`QuantWeight`]: a frozen quantized `[out, in]` weight whose codes and absmax live on the
//! device as Burn tensors, in exactly `qtune-quant`'s (= bitsandbytes') layout, so saving and
//! merging go through [`qtune_quant::QuantizedTensor`] without re-quantizing.

use burn::module::Module;
use burn::tensor::{
    backend::Backend,
    ops::{FloatTensor, IntTensor},
    DType, Element, Int, Tensor, TensorData, TensorPrimitive,
};
use qtune_quant::{Absmax, FloatDType, NestedAbsmax, QuantFormat, QuantizedTensor, DYNAMIC_MAP};

use crate::{KernelError, QBackend, QuantizeOptions};

/// Everything about a quantized weight that is not a tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QLayout {
    /// Code format of `codes`.
    pub format: QuantFormat,
    /// Rows of the dense weight (output features).
    pub out_features: usize,
    /// Columns of the dense weight (input features).
    pub in_features: usize,
    /// Elements per absmax block, counted over the row-major flattened weight.
    pub blocksize: usize,
}

impl QLayout {
    /// Number of weight elements.
    pub fn numel(&self) -> usize {
        self.out_features * self.in_features
    }

    /// Number of absmax blocks (the last one may be short).
    pub fn num_blocks(&self) -> usize {
        self.numel().div_ceil(self.blocksize)
    }

    /// Bytes of packed codes: two per byte for 4-bit (odd counts pad the last low nibble).
    pub fn num_code_bytes(&self) -> usize {
        match self.format {
            QuantFormat::Blockwise8 => self.numel(),
            QuantFormat::Nf4 | QuantFormat::Fp4 => self.numel().div_ceil(2),
        }
    }
}

/// Per-block scales of a [`QWeightPrimitive`]: plain, or double-quantized.
pub enum AbsmaxPrimitive<B: Backend> {
    /// One f32 per block.
    Plain(FloatTensor<B>),
    /// bitsandbytes `compress_statistics`: 8-bit codes over the dynamic map, nested f32 absmax.
    Nested(NestedPrimitive<B>),
}

/// Double-quantized absmax: `absmax[i] = map[codes[i]]·absmax2[i/bs] + offset`.
pub struct NestedPrimitive<B: Backend> {
    /// U8 codes, one per block of the weight.
    pub codes: IntTensor<B>,
    /// F32, one per `blocksize` codes.
    pub absmax: FloatTensor<B>,
    /// F32 [256] dynamic map (`qtune_quant::DYNAMIC_MAP`).
    pub map: FloatTensor<B>,
    /// Mean that was subtracted before the nested quantization.
    pub offset: f32,
    /// Nested block size (256 in bitsandbytes).
    pub blocksize: usize,
}

impl<B: Backend> Clone for NestedPrimitive<B> {
    fn clone(&self) -> Self {
        Self {
            codes: self.codes.clone(),
            absmax: self.absmax.clone(),
            map: self.map.clone(),
            offset: self.offset,
            blocksize: self.blocksize,
        }
    }
}

impl<B: Backend> Clone for AbsmaxPrimitive<B> {
    fn clone(&self) -> Self {
        match self {
            Self::Plain(a) => Self::Plain(a.clone()),
            Self::Nested(n) => Self::Nested(n.clone()),
        }
    }
}

impl<B: Backend> std::fmt::Debug for AbsmaxPrimitive<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plain(_) => f.write_str("Plain"),
            Self::Nested(n) => write!(
                f,
                "Nested {{ offset: {}, blocksize: {} }}",
                n.offset, n.blocksize
            ),
        }
    }
}

/// The backend-level view of a [`QuantWeight`] that [`QBackend`] ops take. Cloning only bumps
/// refcounts, which is why the autodiff backward can keep it instead of a dense `W`.
pub struct QWeightPrimitive<B: Backend> {
    /// U8 packed codes, 1-D, [`QLayout::num_code_bytes`] long.
    pub codes: IntTensor<B>,
    /// F32 code map: 256 entries (8-bit dynamic) or 16 (NF4/FP4).
    pub code_map: FloatTensor<B>,
    /// Per-block scales.
    pub absmax: AbsmaxPrimitive<B>,
    /// Shape, format, block size.
    pub layout: QLayout,
}

impl<B: Backend> Clone for QWeightPrimitive<B> {
    fn clone(&self) -> Self {
        Self {
            codes: self.codes.clone(),
            code_map: self.code_map.clone(),
            absmax: self.absmax.clone(),
            layout: self.layout,
        }
    }
}

impl<B: Backend> std::fmt::Debug for QWeightPrimitive<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QWeightPrimitive")
            .field("layout", &self.layout)
            .field("absmax", &self.absmax)
            .finish()
    }
}

/// Metadata kept beside the tensors (not a Burn module: skipped by records and optimizers).
#[derive(Clone, Debug)]
pub struct QMeta {
    /// Shape, format, block size.
    pub layout: QLayout,
    /// Dtype the weight dequantizes to in the original checkpoint (kept for saving).
    pub dtype: FloatDType,
    /// Double-quant offset and nested block size, when the absmax is nested.
    pub nested: Option<(f32, usize)>,
}

/// A frozen quantized `[out, in]` weight on the device.
///
/// All tensors are module *constants* (plain `Tensor` fields, not `Param`): optimizers never see
/// them and they get no gradient. Codes are U8 `Int` tensors (1 byte per 8-bit code, per two
/// 4-bit codes). Note that Burn records store Int tensors in the recorder's int type; the ops
/// accept any int dtype and cast back to U8 where a kernel needs it.
#[derive(Module, Debug)]
pub struct QuantWeight<B: Backend> {
    /// Packed codes (U8, 1-D).
    pub codes: Tensor<B, 1, Int>,
    /// Code map (F32; 256 dynamic-map entries or 16 NF4/FP4 entries).
    pub code_map: Tensor<B, 1>,
    /// Plain per-block absmax (F32), when not double-quantized.
    pub absmax: Option<Tensor<B, 1>>,
    /// Double quant: U8 code per block.
    pub nested_codes: Option<Tensor<B, 1, Int>>,
    /// Double quant: F32 absmax per nested block.
    pub nested_absmax: Option<Tensor<B, 1>>,
    /// Double quant: the dynamic map (F32 [256]).
    pub nested_map: Option<Tensor<B, 1>>,
    /// Shape, format, block size, original dtype, nested offset.
    #[module(skip)]
    pub meta: QMeta,
}

/// U8 codes on `device` through the backend's one-copy upload ([`QBackend::q_upload_int`]).
fn u8_tensor<B: QBackend>(bytes: Vec<u8>, device: &B::Device) -> Tensor<B, 1, Int> {
    let n = bytes.len();
    let data = TensorData::new(bytes, [n]);
    Tensor::from_primitive(B::q_upload_int(data, device))
}

/// F32 values on `device`, as [`u8_tensor`].
fn f32_tensor<B: QBackend>(values: &[f32], device: &B::Device) -> Tensor<B, 1> {
    let data = TensorData::new(values.to_vec(), [values.len()]);
    Tensor::from_primitive(TensorPrimitive::Float(B::q_upload_float(data, device)))
}

fn expect_len(
    name: &str,
    field: &'static str,
    expected: usize,
    got: usize,
) -> Result<(), KernelError> {
    if expected == got {
        Ok(())
    } else {
        Err(KernelError::Length {
            name: name.to_string(),
            field,
            expected,
            got,
        })
    }
}

/// A device tensor's values on the host as `E`. Records may bring U8 codes back as I32/I64
/// (burn pitfall 9): the conversion restores them, values are 0..=255.
fn read_vec<E: Element, T: std::fmt::Debug>(
    name: &str,
    field: &'static str,
    data: Result<TensorData, T>,
) -> Result<Vec<E>, KernelError> {
    let err = |reason: String| KernelError::Readback {
        name: name.to_string(),
        field,
        reason,
    };
    let data = data.map_err(|e| err(format!("{e:?}")))?;
    data.convert::<E>()
        .into_vec::<E>()
        .map_err(|e| err(format!("{e:?}")))
}

fn read_u8<B: Backend>(
    name: &str,
    field: &'static str,
    t: Tensor<B, 1, Int>,
) -> Result<Vec<u8>, KernelError> {
    read_vec(name, field, t.try_into_data())
}

fn read_f32<B: Backend>(
    name: &str,
    field: &'static str,
    t: Tensor<B, 1>,
) -> Result<Vec<f32>, KernelError> {
    read_vec(name, field, t.try_into_data())
}

impl<B: Backend> QuantWeight<B> {
    /// Codes and their code map without block scales yet (plain or nested: the caller sets
    /// them).
    fn without_scales(
        codes: Tensor<B, 1, Int>,
        code_map: Tensor<B, 1>,
        layout: QLayout,
        dtype: FloatDType,
    ) -> Self {
        Self {
            codes,
            code_map,
            absmax: None,
            nested_codes: None,
            nested_absmax: None,
            nested_map: None,
            meta: QMeta {
                layout,
                dtype,
                nested: None,
            },
        }
    }

    /// `[out, in]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.meta.layout.out_features, self.meta.layout.in_features]
    }

    /// Shape, format and block size.
    pub fn layout(&self) -> QLayout {
        self.meta.layout
    }

    /// Device bytes held: codes + absmax (+ nested state), as bitsandbytes counts them.
    pub fn resident_bytes(&self) -> usize {
        let l = self.meta.layout;
        let absmax = match self.meta.nested {
            None => 4 * l.num_blocks(),
            Some((_, nb)) => l.num_blocks() + 4 * l.num_blocks().div_ceil(nb),
        };
        l.num_code_bytes() + absmax
    }

    /// The backend-level view used by [`QBackend`] ops.
    ///
    /// # Panics
    /// If the module was built by hand with neither a plain nor a complete nested absmax.
    pub fn primitive(&self) -> QWeightPrimitive<B> {
        let absmax = match (
            &self.absmax,
            &self.nested_codes,
            &self.nested_absmax,
            &self.nested_map,
            self.meta.nested,
        ) {
            (Some(a), ..) => AbsmaxPrimitive::Plain(a.clone().into_primitive().tensor()),
            (None, Some(c), Some(a), Some(m), Some((offset, blocksize))) => {
                AbsmaxPrimitive::Nested(NestedPrimitive {
                    codes: c.clone().into_primitive(),
                    absmax: a.clone().into_primitive().tensor(),
                    map: m.clone().into_primitive().tensor(),
                    offset,
                    blocksize,
                })
            }
            _ => panic!("QuantWeight: neither plain nor complete nested absmax (built by hand?)"),
        };
        QWeightPrimitive {
            codes: self.codes.clone().into_primitive(),
            code_map: self.code_map.clone().into_primitive().tensor(),
            absmax,
            layout: self.meta.layout,
        }
    }

    /// Read the quantized state back to the host, exactly as it was uploaded.
    ///
    /// # Errors
    /// [`KernelError::Readback`] if the device read fails.
    pub fn try_to_quantized(&self, name: &str) -> Result<QuantizedTensor, KernelError> {
        let l = self.meta.layout;
        let codes = read_u8(name, "codes", self.codes.clone())?;
        let absmax = match (
            &self.absmax,
            &self.nested_codes,
            &self.nested_absmax,
            self.meta.nested,
        ) {
            (Some(a), ..) => Absmax::Plain(read_f32(name, "absmax", a.clone())?),
            (None, Some(c), Some(a), Some((offset, blocksize))) => Absmax::Nested(NestedAbsmax {
                codes: read_u8(name, "nested_codes", c.clone())?,
                absmax: read_f32(name, "nested_absmax", a.clone())?,
                offset,
                blocksize,
            }),
            _ => {
                return Err(KernelError::Readback {
                    name: name.to_string(),
                    field: "absmax",
                    reason: "neither plain nor complete nested absmax".to_string(),
                })
            }
        };
        Ok(QuantizedTensor {
            format: l.format,
            shape: vec![l.out_features, l.in_features],
            blocksize: l.blocksize,
            codes,
            absmax,
            dtype: self.meta.dtype,
        })
    }

    /// For saving and merging: the same bytes `from_quantized` was given.
    ///
    /// # Panics
    /// If the device read fails (see [`Self::try_to_quantized`]).
    pub fn to_quantized(&self) -> QuantizedTensor {
        self.try_to_quantized("<weight>")
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

impl<B: QBackend> QuantWeight<B> {
    /// Upload a quantized tensor (codes, absmax, nested state) to `device`, validating lengths.
    ///
    /// # Errors
    /// [`KernelError::NotMatrix`] for a non-2-D shape, [`KernelError::Length`] when codes or
    /// absmax do not fit the shape and block size.
    pub fn try_from_quantized(
        name: &str,
        q: &QuantizedTensor,
        device: &B::Device,
    ) -> Result<Self, KernelError> {
        Self::try_from_owned(name, q.clone(), device)
    }

    /// [`Self::try_from_quantized`] taking `q` by value: its codes move into the upload
    /// without a copy (a loaded GPT-J-6B has 2.9 GB of them).
    ///
    /// # Errors
    /// As [`Self::try_from_quantized`].
    pub fn try_from_owned(
        name: &str,
        mut q: QuantizedTensor,
        device: &B::Device,
    ) -> Result<Self, KernelError> {
        let [out_features, in_features] = match q.shape[..] {
            [o, i] => [o, i],
            _ => {
                return Err(KernelError::NotMatrix {
                    name: name.to_string(),
                    shape: q.shape.clone(),
                })
            }
        };
        let layout = QLayout {
            format: q.format,
            out_features,
            in_features,
            blocksize: q.blocksize,
        };
        if q.blocksize == 0 {
            return Err(KernelError::Blocksize {
                name: name.to_string(),
                format: q.format,
                blocksize: 0,
            });
        }
        expect_len(name, "codes", layout.num_code_bytes(), q.codes.len())?;
        let code_map = f32_tensor(q.code_map(), device);
        let codes = u8_tensor(std::mem::take(&mut q.codes), device);
        let mut w = Self::without_scales(codes, code_map, layout, q.dtype);
        match q.absmax {
            Absmax::Plain(a) => {
                expect_len(name, "absmax", layout.num_blocks(), a.len())?;
                w.absmax = Some(f32_tensor(&a, device));
            }
            Absmax::Nested(n) => {
                expect_len(
                    name,
                    "absmax (nested codes)",
                    layout.num_blocks(),
                    n.codes.len(),
                )?;
                if n.blocksize == 0 {
                    return Err(KernelError::Blocksize {
                        name: name.to_string(),
                        format: QuantFormat::Blockwise8,
                        blocksize: 0,
                    });
                }
                expect_len(
                    name,
                    "nested_absmax",
                    n.codes.len().div_ceil(n.blocksize),
                    n.absmax.len(),
                )?;
                w.nested_absmax = Some(f32_tensor(&n.absmax, device));
                w.nested_codes = Some(u8_tensor(n.codes, device));
                w.nested_map = Some(f32_tensor(&DYNAMIC_MAP, device));
                w.meta.nested = Some((n.offset, n.blocksize));
            }
        }
        Ok(w)
    }

    /// [`Self::try_from_quantized`] for tensors produced by `qtune-quant` (always well formed).
    ///
    /// # Panics
    /// If `q` is not a well-formed 2-D quantized tensor (see [`KernelError`]).
    pub fn from_quantized(q: &QuantizedTensor, device: &B::Device) -> Self {
        Self::try_from_quantized("<weight>", q, device).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl<B: QBackend> QuantWeight<B> {
    /// Dense `[out, in]` weight in `dtype` (bit-identical to `qtune-quant`'s dequantize rounded
    /// once to `dtype`).
    pub fn dequantize(&self, dtype: DType) -> Tensor<B, 2> {
        Tensor::from_primitive(TensorPrimitive::Float(B::q_dequantize(
            self.primitive(),
            dtype,
        )))
    }

    /// Quantize a dense `[out, in]` weight on its device (the GPU kernel on CUDA), then
    /// with `double_quant` compress the absmax as bitsandbytes does (offset = mean computed on the
    /// host from the read-back absmax, then blockwise 8-bit, block 256, on the device). On both
    /// backends the result equals `QuantizedTensor::quantize` (bit-exact with bnb's CUDA build)
    /// bit for bit: the CUDA kernels multiply by bnb's approximate reciprocal of the absmax,
    /// reproduced from qtune-quant's measured table (`cargo xtask bench gpu-check`, `load`
    /// group, checks it against bnb's golden codes on the GPU).
    ///
    /// # Errors
    /// NaN/Inf values, unsupported block size, or a failed absmax read-back.
    pub fn quantize(
        name: &str,
        w: Tensor<B, 2>,
        format: QuantFormat,
        blocksize: usize,
        double_quant: bool,
        dtype: FloatDType,
    ) -> Result<Self, KernelError> {
        let [out_features, in_features] = w.dims();
        let device = w.device();
        let (codes, absmax) = B::q_quantize(
            name,
            w.into_primitive().tensor(),
            QuantizeOptions { format, blocksize },
        )?;
        let codes = Tensor::<B, 1, Int>::from_primitive(codes);
        let absmax = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(absmax));
        let layout = QLayout {
            format,
            out_features,
            in_features,
            blocksize,
        };
        let map: &'static [f32] = match format {
            QuantFormat::Blockwise8 => &DYNAMIC_MAP,
            QuantFormat::Nf4 => &qtune_quant::NF4_MAP,
            QuantFormat::Fp4 => &qtune_quant::FP4_MAP,
        };
        let mut q = Self::without_scales(codes, f32_tensor(map, &device), layout, dtype);
        if double_quant {
            // bnb `compress_statistics`: offset = mean (ours: f64 sum, one f32 rounding, as
            // qtune-quant), then blockwise 8-bit of `absmax - offset` with block 256, on the
            // device. Only the mean needs the absmax on the host.
            let a = read_f32(name, "absmax", absmax.clone())?;
            let offset = qtune_quant::nested::mean_f32(&a);
            let shifted = absmax.sub_scalar(offset).reshape([1, a.len()]);
            let (ncodes, nabs) = B::q_quantize(
                name,
                shifted.into_primitive().tensor(),
                QuantizeOptions {
                    format: QuantFormat::Blockwise8,
                    blocksize: qtune_quant::nested::NESTED_BLOCKSIZE,
                },
            )?;
            q.nested_codes = Some(Tensor::from_primitive(ncodes));
            q.nested_absmax = Some(Tensor::from_primitive(TensorPrimitive::Float(nabs)));
            q.nested_map = Some(f32_tensor(&DYNAMIC_MAP, &device));
            q.meta.nested = Some((offset, qtune_quant::nested::NESTED_BLOCKSIZE));
        } else {
            q.absmax = Some(absmax);
        }
        Ok(q)
    }
}

/// What a tracked quantized linear keeps between its forward and its backward.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LinearBackward {
    /// The quantized weight (refcounted handles to its codes): the backward dequantizes again,
    /// as bitsandbytes' `MatMul4Bit`, and no dense `W` outlives the forward. A whole model
    /// without checkpointing runs this way.
    #[default]
    Quantized,
    /// The dequantized weight the forward made (in the activation dtype): the backward
    /// multiplies by it instead of dequantizing twice. For gradient checkpointing: one block's
    /// recompute runs this way and its dense weights live only until that block's backward
    /// (~0.4 GB for GPT-J-6B in bf16).
    Dense,
    /// [`LinearBackward::Dense`] for weights of at most this many elements,
    /// [`LinearBackward::Quantized`] for larger ones: a checkpointed recompute keeps the small
    /// (attention) weights dense and dequantizes the large (MLP) ones once more in the
    /// backward, trading one dequantization of those weights per step for their dense bytes
    /// at the step's memory peak.
    DenseUpTo(usize),
}

impl LinearBackward {
    /// Whether a weight of `elems` elements keeps its dense copy for the backward.
    pub fn keeps_dense(self, elems: usize) -> bool {
        match self {
            Self::Quantized => false,
            Self::Dense => true,
            Self::DenseUpTo(max) => elems <= max,
        }
    }
}
