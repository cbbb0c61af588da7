//! One linear layer for every case qtune needs: a frozen base weight (dense, or quantized and
//! dequantized just in time by `qtune-kernels`), an optional frozen bias, and an optional
//! trainable LoRA adapter, computed as PEFT's `lora.Linear`:
//! `y = x·Wᵀ + b + scaling · (dropout(x)·Aᵀ)·Bᵀ`.
//!
//! Only `lora_a` and `lora_b` require grads; the base and bias are `Param`s with
//! `require_grad = false`, so optimizers skip them and autodiff never computes a dW.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use qtune_kernels::{q_linear_with, Frozen, LinearBackward, QBackend, QuantWeight};
use rand::Rng;

use crate::config::LoraConfig;

/// How one forward of a [`Linear`] runs; a block builds it from its context for each of its
/// linears. The default is an evaluation forward (no dropout, quantized backward state).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// LoRA dropout seed of this linear; `None`: no dropout (evaluation).
    pub dropout_seed: Option<u64>,
    /// What a quantized base keeps for its backward (checkpointed recompute: the dense weight).
    pub backward: LinearBackward,
    /// Nobody reads this forward's output values, only its gradient path (a checkpointed
    /// recompute's block-output linears): a quantized base skips its product
    /// ([`qtune_kernels::q_linear_unread`]).
    pub output_unread: bool,
}

impl Pass {
    /// A training forward with LoRA dropout seeded by `seed` and the quantized backward state.
    pub fn dropout(seed: u64) -> Self {
        Self {
            dropout_seed: Some(seed),
            backward: LinearBackward::Quantized,
            output_unread: false,
        }
    }
}

/// The frozen base weight of a [`Linear`], `[out, in]` as in PyTorch/HF files.
#[derive(Module, Debug)]
pub enum LinearBase<B: Backend> {
    /// Dense weight `[out, in]`, frozen.
    Dense(Param<Tensor<B, 2>>),
    /// Quantized weight (8-bit blockwise, NF4 or FP4), frozen module constants.
    Quant(QuantWeight<B>),
}

/// A trainable low-rank update `scaling · B·A` (PEFT's `lora_A`/`lora_B`).
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// PEFT `lora_A.weight`, `[r, in]`.
    pub lora_a: Param<Tensor<B, 2>>,
    /// PEFT `lora_B.weight`, `[out, r]`.
    pub lora_b: Param<Tensor<B, 2>>,
    /// `lora_alpha / r`.
    pub scaling: f64,
    /// Dropout probability on the adapter's input, applied only when a dropout seed is given.
    pub dropout: f64,
}

/// `y = x·Wᵀ + b (+ LoRA)`; see the module docs.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    pub base: LinearBase<B>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub lora: Option<LoraAdapter<B>>,
}

/// `t` in `dtype`: itself when already there, else a cast.
fn in_dtype<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if t.dtype() == dtype {
        t
    } else {
        t.cast(dtype)
    }
}

fn frozen<B: Backend, const D: usize>(t: Tensor<B, D>) -> Param<Tensor<B, D>> {
    Param::from_tensor(t).set_require_grad(false)
}

impl<B: Backend> LoraAdapter<B> {
    /// PEFT's default init: `lora_A` kaiming-uniform with a = √5, which for a `[r, in]` matrix
    /// is U(−1/√in, 1/√in); `lora_B` zeros, so a fresh adapter leaves the model unchanged.
    /// Values are drawn on the host from `rng` (row-major over `[r, in]`), so a seeded RNG
    /// gives the same adapter on every backend.
    pub fn init<R: Rng + ?Sized>(
        in_features: usize,
        out_features: usize,
        cfg: &LoraConfig,
        rng: &mut R,
        device: &B::Device,
    ) -> Self {
        let bound = 1.0 / (in_features as f64).sqrt();
        let a: Vec<f32> = (0..cfg.r * in_features)
            .map(|_| rng.random_range(-bound..bound) as f32)
            .collect();
        // f32 whatever the model's dtype (PEFT's `autocast_adapter_dtype`): Adam's small
        // updates would round away in bf16 weights. The forward casts them to x's dtype.
        let lora_a = Tensor::from_data(
            TensorData::new(a, [cfg.r, in_features]),
            (device, DType::F32),
        );
        let lora_b = Tensor::zeros([out_features, cfg.r], (device, DType::F32));
        Self::from_tensors(lora_a, lora_b, cfg.scaling(), cfg.lora_dropout)
    }

    /// An adapter from given `A [r, in]` and `B [out, r]` (e.g. read from a PEFT file); both
    /// become trainable parameters.
    pub fn from_tensors(
        lora_a: Tensor<B, 2>,
        lora_b: Tensor<B, 2>,
        scaling: f64,
        dropout: f64,
    ) -> Self {
        Self {
            lora_a: Param::from_tensor(lora_a),
            lora_b: Param::from_tensor(lora_b),
            scaling,
            dropout,
        }
    }

    /// Rank `r`.
    pub fn rank(&self) -> usize {
        self.lora_a.shape().dims::<2>()[0]
    }

    /// `scaling · B·A`, `[out, in]`: the dense update that merging adds to the base weight.
    pub fn delta_weight(&self) -> Tensor<B, 2> {
        self.lora_b
            .val()
            .matmul(self.lora_a.val())
            .mul_scalar(self.scaling)
    }

    /// A copy with both factors in `dtype`, for inference in that dtype: the forward then skips
    /// its per-call casts (the same values: the forward casts to `x`'s dtype anyway). Not for
    /// training: the copies are new, untracked parameters.
    pub fn with_factor_dtype(&self, dtype: DType) -> Self {
        let cast = |p: &Param<Tensor<B, 2>>| frozen(in_dtype(p.val(), dtype));
        Self {
            lora_a: cast(&self.lora_a),
            lora_b: cast(&self.lora_b),
            scaling: self.scaling,
            dropout: self.dropout,
        }
    }

    /// `y + scaling · (dropout(x)·Aᵀ)·Bᵀ`, in `x`'s dtype (`y` the base output).
    ///
    /// Dropout is applied only when `dropout_seed` is `Some` and `dropout > 0`; its mask is a
    /// pure function of the seed and the element index (`qtune_kernels::dropout`), so a
    /// recomputed block (gradient checkpointing) sees the mask of its first forward and a resumed
    /// run replays the masks of an uninterrupted one, provided the caller derives the seeds from
    /// its own checkpointed RNG. The `B` product is accumulated onto `y` scaled in the same GEMM
    /// (`qtune_kernels::linear_t_acc`): no separate scale and add passes over the output.
    pub fn forward_onto<const D: usize>(
        &self,
        y: Tensor<B, D>,
        x: Tensor<B, D>,
        dropout_seed: Option<u64>,
    ) -> Tensor<B, D>
    where
        B: QBackend,
    {
        // Adapters are kept in f32 while activations may be bf16. As torch autocast does, the
        // (tiny) factors are cast to x's dtype, not the (large) activation to theirs; their
        // gradients come back in f32 (one fused op and backward: `qtune_kernels::lora_acc`).
        let opts = self.options(dropout_seed);
        qtune_kernels::lora_acc(y, x, [self.lora_a.val(), self.lora_b.val()], opts)
    }

    /// [`LoraAdapter::forward_onto`] of several adapters of one input, adapter `i` onto
    /// `ys[i]` (q and v at decode: `qtune_kernels::lora_acc_parts`, one pair of launches for a
    /// single row on CUDA), each result equal bit for bit to its own `forward_onto`.
    pub fn forward_onto_parts<const D: usize>(
        adapters: &[&Self],
        ys: Vec<Tensor<B, D>>,
        x: Tensor<B, D>,
        dropout_seeds: &[Option<u64>],
    ) -> Vec<Tensor<B, D>>
    where
        B: QBackend,
    {
        let opts = adapters
            .iter()
            .zip(dropout_seeds)
            .map(|(l, &seed)| l.options(seed))
            .collect();
        let factors = adapters
            .iter()
            .map(|l| [l.lora_a.val(), l.lora_b.val()])
            .collect();
        qtune_kernels::lora_acc_parts(ys, x, factors, opts)
    }

    /// The kernel options of one forward: the scaling, and the dropout when `dropout_seed` is
    /// `Some` and `dropout > 0`.
    fn options(&self, dropout_seed: Option<u64>) -> qtune_kernels::LoraOptions {
        let dropout = match dropout_seed {
            Some(seed) if self.dropout > 0.0 => Some((self.dropout as f32, seed)),
            _ => None,
        };
        qtune_kernels::LoraOptions {
            scaling: self.scaling as f32,
            dropout,
        }
    }

    /// The adapter's own contribution `scaling · (dropout(x)·Aᵀ)·Bᵀ` (see
    /// [`LoraAdapter::forward_onto`], here onto zeros).
    pub fn forward<const D: usize>(
        &self,
        x: Tensor<B, D>,
        dropout_seed: Option<u64>,
    ) -> Tensor<B, D>
    where
        B: QBackend,
    {
        let mut dims = x.dims();
        dims[D - 1] = self.lora_b.shape().dims::<2>()[0];
        let zeros = Tensor::zeros(dims, (&x.device(), x.dtype()));
        self.forward_onto(zeros, x, dropout_seed)
    }
}

/// `x · wᵀ` for `x [..., in]` and a dense `[out, in]` weight: one cuBLAS GEMM on CUDA (`qtune_kernels::linear_t`).
fn matmul_t<B: QBackend, const D: usize>(x: Tensor<B, D>, w: Tensor<B, 2>) -> Tensor<B, D> {
    qtune_kernels::linear_t(x, w)
}

impl<B: Backend> Linear<B> {
    /// A frozen dense linear from HF-layout `weight [out, in]` and optional `bias [out]`.
    pub fn dense(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Self {
            base: LinearBase::Dense(frozen(weight)),
            bias: bias.map(frozen),
            lora: None,
        }
    }

    /// `[out, in]`.
    pub fn shape(&self) -> [usize; 2] {
        match &self.base {
            LinearBase::Dense(w) => w.shape().dims(),
            LinearBase::Quant(q) => q.shape(),
        }
    }

    pub fn in_features(&self) -> usize {
        self.shape()[1]
    }

    pub fn out_features(&self) -> usize {
        self.shape()[0]
    }

    /// A frozen quantized linear; the weight is dequantized just in time by `qtune-kernels`.
    pub fn quantized(weight: QuantWeight<B>, bias: Option<Tensor<B, 1>>) -> Self {
        Self {
            base: LinearBase::Quant(weight),
            bias: bias.map(frozen),
            lora: None,
        }
    }

    /// Whether the base weight is stored quantized.
    pub fn is_quantized(&self) -> bool {
        !matches!(self.base, LinearBase::Dense(_))
    }

    /// The frozen bias `[out]`, if any.
    pub fn bias(&self) -> Option<Tensor<B, 1>> {
        self.bias.as_ref().map(|b| b.val())
    }

    /// The quantized base weight of a layer without an adapter (the whole layer frozen), for
    /// callers that fuse it with its neighbours (GPT-J's MLP: `qtune_kernels::mlp_gelu_new`).
    pub fn frozen_quant(&self) -> Option<&QuantWeight<B>> {
        match (&self.base, &self.lora) {
            (LinearBase::Quant(q), None) => Some(q),
            _ => None,
        }
    }

    /// The base weight of a layer that nothing trains, quantized ([`Linear::frozen_quant`]) or
    /// dense ([`Linear::frozen_dense`]'s weight, in `dtype`), for callers that fuse it with its
    /// neighbours (GPT-J's MLP: `qtune_kernels::mlp_gelu_new`).
    pub fn frozen_base(&self, dtype: DType) -> Option<Frozen<'_, B>> {
        match self.frozen_quant() {
            Some(q) => Some(Frozen::Quant(q)),
            None => self
                .frozen_dense_param()
                .map(|w| Frozen::Dense(in_dtype(w.val(), dtype))),
        }
    }

    /// The dense base weight `[out, in]` and bias of a layer that nothing trains (no adapter,
    /// neither tensor requiring a gradient), in `dtype`, for callers that fuse its product with
    /// what follows (the LM head's loss: `qtune_kernels::linear_cross_entropy`).
    pub fn frozen_dense(&self, dtype: DType) -> Option<(Tensor<B, 2>, Option<Tensor<B, 1>>)> {
        let w = self.frozen_dense_param()?;
        let bias = self.bias.as_ref().map(|b| in_dtype(b.val(), dtype));
        Some((in_dtype(w.val(), dtype), bias))
    }

    /// The dense base weight of a layer that nothing trains ([`Linear::frozen_dense`]'s test),
    /// as stored.
    fn frozen_dense_param(&self) -> Option<&Param<Tensor<B, 2>>> {
        let LinearBase::Dense(w) = &self.base else {
            return None;
        };
        let bias_frozen = self.bias.as_ref().is_none_or(|b| !b.is_require_grad());
        if self.lora.is_some() || w.is_require_grad() || !bias_frozen {
            return None;
        }
        Some(w)
    }

    /// Adds a freshly initialized adapter (replacing any existing one); see [`LoraAdapter::init`].
    pub fn attach_lora<R: Rng + ?Sized>(self, cfg: &LoraConfig, rng: &mut R) -> Self {
        let [out, inp] = self.shape();
        let device = self.device();
        let lora = LoraAdapter::init(inp, out, cfg, rng, &device);
        self.with_adapter(lora)
    }

    /// Sets the adapter (replacing any existing one).
    pub fn with_adapter(mut self, lora: LoraAdapter<B>) -> Self {
        self.lora = Some(lora);
        self
    }

    /// Removes and returns the adapter.
    pub fn take_adapter(&mut self) -> Option<LoraAdapter<B>> {
        self.lora.take()
    }

    /// The device the base weight lives on.
    pub fn device(&self) -> B::Device {
        match &self.base {
            LinearBase::Dense(w) => w.device(),
            LinearBase::Quant(q) => q.codes.device(),
        }
    }
}

impl<B: QBackend> Linear<B> {
    /// The base weight as a dense `[out, in]` tensor in `dtype` (dequantized if needed).
    pub fn base_weight(&self, dtype: DType) -> Tensor<B, 2> {
        match &self.base {
            LinearBase::Dense(w) => in_dtype(w.val(), dtype),
            LinearBase::Quant(q) => q.dequantize(dtype),
        }
    }

    /// A copy whose adapter factors are in `dtype` (see [`LoraAdapter::with_factor_dtype`]);
    /// the base and bias are shared, not copied.
    pub fn with_adapter_dtype(&self, dtype: DType) -> Self {
        Self {
            base: self.base.clone(),
            bias: self.bias.clone(),
            lora: self.lora.as_ref().map(|l| l.with_factor_dtype(dtype)),
        }
    }

    /// Evaluation forward (no dropout): `x [..., in] → [..., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.forward_with(x, Pass::default())
    }

    /// Forward as `pass` says: LoRA dropout driven by its seed (see
    /// [`LoraAdapter::forward_onto`]), a quantized base's backward state by its `backward`.
    pub fn forward_with<const D: usize>(&self, x: Tensor<B, D>, pass: Pass) -> Tensor<B, D> {
        let y = self.forward_unbiased(x, pass);
        self.plus(
            y,
            Pass {
                output_unread: false,
                ..pass
            },
            Vec::new(),
        )
    }

    /// `[l.forward_with(x, pass) for (l, pass) in layers]` for linears of one input (q, k and v;
    /// gate and up). For a single row of `x` where every base is quantized and every pass
    /// keeps the quantized backward, the base products run as one launch
    /// ([`qtune_kernels::q_linear_parts`], each equal bit for bit to its own product), each
    /// layer's adapter and bias then added as in `forward_with`; otherwise one `forward_with`
    /// each.
    pub fn forward_parts<const N: usize, const D: usize>(
        layers: [(&Self, Pass); N],
        x: Tensor<B, D>,
    ) -> [Tensor<B, D>; N] {
        let ys = Self::forward_parts_vec(&layers, x);
        ys.try_into()
            .unwrap_or_else(|_| unreachable!("one output per layer"))
    }

    fn forward_parts_vec<const D: usize>(
        layers: &[(&Self, Pass)],
        x: Tensor<B, D>,
    ) -> Vec<Tensor<B, D>> {
        let rows = x.dims()[..D - 1].iter().product::<usize>();
        let quant: Option<Vec<&QuantWeight<B>>> = layers
            .iter()
            .map(|(l, pass)| match &l.base {
                LinearBase::Quant(q)
                    if !pass.output_unread && pass.backward == LinearBackward::Quantized =>
                {
                    Some(q)
                }
                _ => None,
            })
            .collect();
        match quant {
            Some(qs) if rows == 1 && (2..=3).contains(&qs.len()) => {
                let mut ys: Vec<Option<Tensor<B, D>>> =
                    qtune_kernels::q_linear_parts(x.clone(), &qs)
                        .into_iter()
                        .map(Some)
                        .collect();
                // The adapters' products together (q and v: one pair of launches on CUDA).
                let adapted: Vec<usize> = (0..layers.len())
                    .filter(|&i| layers[i].0.lora.is_some())
                    .collect();
                let adapters: Vec<&LoraAdapter<B>> = adapted
                    .iter()
                    .filter_map(|&i| layers[i].0.lora.as_ref())
                    .collect();
                let seeds: Vec<Option<u64>> =
                    adapted.iter().map(|&i| layers[i].1.dropout_seed).collect();
                let bases = adapted.iter().filter_map(|&i| ys[i].take()).collect();
                let sums = LoraAdapter::forward_onto_parts(&adapters, bases, x.clone(), &seeds);
                for (i, y) in adapted.into_iter().zip(sums) {
                    ys[i] = Some(y);
                }
                ys.into_iter()
                    .zip(layers)
                    .map(|(y, (l, pass))| {
                        let y = y.unwrap_or_else(|| unreachable!("every part's output is set"));
                        l.plus(y, *pass, Vec::new())
                    })
                    .collect()
            }
            _ => layers
                .iter()
                .map(|(l, pass)| l.forward_with(x.clone(), *pass))
                .collect(),
        }
    }

    /// `forward_with(x, pass) + adds[0] + adds[1] + …` (each of the output's shape, in
    /// its dtype: residual branches joining after this layer). For a single row of a quantized
    /// layer the bias and up to two addends go into the product's kernel
    /// ([`qtune_kernels::q_linear_add`]: one launch instead of one per add, e.g. GPT-J's fc_out
    /// at decode), the adapter then accumulated onto that sum; otherwise the sums are the same
    /// tensor adds, in order, as adding to [`Linear::forward_with`].
    pub fn forward_plus<const D: usize>(
        &self,
        x: Tensor<B, D>,
        pass: Pass,
        adds: Vec<Tensor<B, D>>,
    ) -> Tensor<B, D> {
        let rows = x.dims()[..D - 1].iter().product::<usize>();
        match &self.base {
            LinearBase::Quant(q) if rows == 1 && adds.len() <= 2 => {
                let mut all = Vec::with_capacity(adds.len() + 1);
                if let Some(b) = &self.bias {
                    let b = in_dtype(b.val(), x.dtype());
                    let mut dims = x.dims();
                    dims[D - 1] = b.dims()[0];
                    all.push(b.reshape(dims));
                }
                all.extend(adds);
                let y = qtune_kernels::q_linear_add(x.clone(), q, all);
                match &self.lora {
                    Some(lora) => lora.forward_onto(y, x, pass.dropout_seed),
                    None => y,
                }
            }
            _ => self.plus(self.forward_unbiased(x, pass), pass, adds),
        }
    }

    /// `y + bias + adds[0] + …` for `y`, this layer's product without its bias (computed by a
    /// caller that fused it: see [`Linear::frozen_quant`]), as [`Linear::forward_plus`] sums it.
    pub fn plus<const D: usize>(
        &self,
        y: Tensor<B, D>,
        pass: Pass,
        adds: Vec<Tensor<B, D>>,
    ) -> Tensor<B, D> {
        // Nobody reads the sum (a recompute's block output): its adds (and a frozen bias,
        // which needs no gradient) are skipped, the gradient still reaches every term.
        if pass.output_unread && self.bias.as_ref().is_none_or(|b| !b.is_require_grad()) {
            let mut parts = vec![y];
            parts.extend(adds);
            return qtune_kernels::sum_unread(parts);
        }
        let y = match &self.bias {
            Some(b) => {
                let b = in_dtype(b.val(), y.dtype());
                y + b.unsqueeze::<D>()
            }
            None => y,
        };
        adds.into_iter().fold(y, |y, a| y + a)
    }

    /// [`Linear::forward_with`] without the bias, for callers that fold [`Linear::bias`] into
    /// the next fused op (GPT-J's `fc_in` bias goes into the `gelu_new` kernel).
    pub fn forward_unbiased<const D: usize>(&self, x: Tensor<B, D>, pass: Pass) -> Tensor<B, D> {
        let y = match &self.base {
            LinearBase::Dense(w) if pass.output_unread => {
                qtune_kernels::linear_t_unread(x.clone(), in_dtype(w.val(), x.dtype()))
            }
            LinearBase::Dense(w) => matmul_t(x.clone(), in_dtype(w.val(), x.dtype())),
            LinearBase::Quant(q) if pass.output_unread => {
                qtune_kernels::q_linear_unread(x.clone(), q, pass.backward)
            }
            LinearBase::Quant(q) => q_linear_with(x.clone(), q, pass.backward),
        };
        match &self.lora {
            Some(lora) => lora.forward_onto(y, x, pass.dropout_seed),
            None => y,
        }
    }
}
