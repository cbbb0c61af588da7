//! The [`QBackend`] trait (the backend extension every op goes through) and its autodiff bound.

use burn::tensor::{
    backend::{AutodiffBackend, Backend},
    ops::{FloatTensor, IntTensor},
    DType, Tensor, TensorData, TensorMetadata, TensorPrimitive,
};

use crate::{
    attention, decode, head, lora, mlp, Adam8Input, Adam8State, AttentionInput, AttnMask, BiasAct,
    DeviceGraph, FrozenPrimitive, GemmAccOptions, GemmOptions, KernelError, LoraOptions, NormInput,
    Place, QWeightPrimitive, QuantizeOptions, RopeKvInput, RotaryOptions,
};
// Named only in doc links.
#[cfg(doc)]
use crate::{
    linear_cross_entropy, mlp_gelu_new, mlp_gelu_new_plus, park, q_linear_unread, select_rows,
    sum_unread, LinearBackward, QuantWeight,
};

/// Backend extension for quantized weights: dequantize, quantized linear forward and its input
/// gradient, and quantization of a dense weight on the device.
///
/// The weight travels as a [`QWeightPrimitive`] (its tensors are cheap refcounted handles), so the
/// autodiff decorator can keep it as backward state without materialising a dense `W`.
pub trait QBackend: Backend {
    /// Dense `[out, in]` copy of `w` in `dtype` (values rounded from f32 exactly once, as bitsandbytes).
    fn q_dequantize(w: QWeightPrimitive<Self>, dtype: DType) -> FloatTensor<Self>;

    /// `y[m, out] = x[m, in] · dequant(w)ᵀ`, computed in `x`'s dtype.
    fn q_linear(x: FloatTensor<Self>, w: QWeightPrimitive<Self>) -> FloatTensor<Self>;

    /// `q_linear(x, w) + adds[0] + adds[1] + …` for `adds` of the output's shape and dtype (a
    /// bias row and residuals). The default adds them one by one in order (tracked under
    /// autodiff); CUDA folds up to three into the batch-1 GEMV's epilogue (one f32 sum, rounded
    /// once), so a decode step saves their launches.
    fn q_linear_add(
        x: FloatTensor<Self>,
        w: QWeightPrimitive<Self>,
        adds: Vec<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        adds.into_iter()
            .fold(Self::q_linear(x, w), |y, a| Self::float_add(y, a))
    }

    /// `[q_linear(x, w) for w in ws]`: several quantized weights of one input (q, k and v; gate
    /// and up). The default runs them one by one; CUDA runs two or three in one GEMV launch
    /// for a single row of `x` (decode) when they share format, `in_features` and block size,
    /// each output equal bit for bit to its own [`QBackend::q_linear`].
    fn q_linear_parts(
        x: FloatTensor<Self>,
        ws: Vec<QWeightPrimitive<Self>>,
    ) -> Vec<FloatTensor<Self>> {
        ws.into_iter()
            .map(|w| Self::q_linear(x.clone(), w))
            .collect()
    }

    /// [`QBackend::q_linear`] keeping the dequantized weight as backward state
    /// ([`LinearBackward::Dense`]). Only the autodiff decorator has a backward state; the
    /// default is `q_linear`.
    fn q_linear_dense_backward(
        x: FloatTensor<Self>,
        w: QWeightPrimitive<Self>,
    ) -> FloatTensor<Self> {
        Self::q_linear(x, w)
    }

    /// [`QBackend::q_linear`] (`keep_dense`: [`QBackend::q_linear_dense_backward`]) for a
    /// forward whose output values are never read, only its gradient path (see
    /// [`q_linear_unread`]). The default computes the product; under autodiff a tracked call
    /// returns an uninitialized output and runs neither the GEMM nor (unless `keep_dense`) the
    /// dequantization.
    fn q_linear_unread(
        x: FloatTensor<Self>,
        w: QWeightPrimitive<Self>,
        keep_dense: bool,
    ) -> FloatTensor<Self> {
        if keep_dense {
            Self::q_linear_dense_backward(x, w)
        } else {
            Self::q_linear(x, w)
        }
    }

    /// `x[m, in] · w[out, in]ᵀ` for a frozen dense `w` (in `x`'s dtype) whose output values are
    /// never read, only its gradient path: [`QBackend::q_linear_unread`] for a dense base weight
    /// (see [`crate::linear_t_unread`]). The default computes the product; under autodiff a
    /// tracked call returns an uninitialized output, runs no GEMM, and its backward is
    /// `dx = dy · w` (`w` gets no gradient).
    fn q_dense_linear_unread(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::linear::dense_linear::<Self>(x, w, false)
    }

    /// `parts[0] + parts[1] + …` (same shapes, at least one part) for a sum whose **values are
    /// never read**, only its gradient path (a checkpointed block's recompute output: see
    /// [`sum_unread`]). The default adds them; under autodiff a tracked call of two or three
    /// parts returns uninitialized memory and hands the sum's gradient to every part.
    ///
    /// # Panics
    /// With no parts.
    fn q_sum_unread(parts: Vec<FloatTensor<Self>>) -> FloatTensor<Self> {
        add_all::<Self>(parts)
    }

    /// `dx[m, in] = dy[m, out] · dequant(w)`, the only gradient a frozen base weight needs.
    fn q_linear_dx(dy: FloatTensor<Self>, w: QWeightPrimitive<Self>) -> FloatTensor<Self>;

    /// `x[m, in] · wᵀ + bias` for a frozen weight (quantized: dequantized; dense: in `x`'s
    /// dtype) and a frozen `bias [out]` in `x`'s dtype, then `act` ([`BiasAct`]); with
    /// [`BiasAct::GeluNewAux`] also the pre-activation (`x`'s dtype). No backward node of its
    /// own (the op of [`QBackend::q_mlp_gelu_new`]'s forward; under autodiff the default
    /// composition's ops are each tracked). CUDA computes the bias and the activation in the
    /// GEMM's epilogue (one row of a quantized weight: in the GEMV's), on the f32 accumulator,
    /// rounded once; the default is the product, then the model's bias and `gelu_new` ops.
    fn q_linear_bias_act(
        x: FloatTensor<Self>,
        w: FrozenPrimitive<Self>,
        bias: FloatTensor<Self>,
        act: BiasAct,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        mlp::linear_bias_act_ops::<Self>(x, w, bias, act)
    }

    /// `(dy[m, out] · w) ⊙ gelu_new'(pre)` for a frozen weight and the pre-activation
    /// `pre [m, in]`: the gradient reaching the activation's input through the next linear
    /// (CUDA: the dx GEMM's DGELU epilogue). No autodiff.
    fn q_linear_dx_dgelu(
        dy: FloatTensor<Self>,
        w: FrozenPrimitive<Self>,
        pre: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        mlp::linear_dx_dgelu_ops::<Self>(dy, w, pre)
    }

    /// `gelu_new(x·w_inᵀ + b_in)·w_outᵀ` for 2-D `x`, frozen weights (quantized or dense) and
    /// bias (see [`mlp_gelu_new`]). Under autodiff one node keeps the two weights (quantized
    /// ones as such) and the pre-activation; its backward is [`QBackend::q_linear_dx_dgelu`]
    /// then `W_in`'s input gradient. With `unread`, a tracked call computes only the
    /// pre-activation and returns uninitialized memory.
    fn q_mlp_gelu_new(
        x: FloatTensor<Self>,
        w: [FrozenPrimitive<Self>; 2],
        b_in: FloatTensor<Self>,
        unread: bool,
    ) -> FloatTensor<Self> {
        let _ = unread;
        mlp::mlp_gelu_new_ops::<Self>(x, w, b_in)
    }

    /// [`QBackend::q_mlp_gelu_new`] (read, not `unread`) `+ b_out + adds[0] + adds[1] + …`
    /// (`b_out [out]` in `x`'s dtype, `adds` of the output's shape; see [`mlp_gelu_new_plus`]).
    /// The default is that op, then the bias and the adds one by one in order (tracked under
    /// autodiff). CUDA sums the adds first and lets `W_out`'s GEMM add its product and the bias
    /// onto them (β = 1, BIAS epilogue) in place: one pass over `[m, out]` instead of three.
    fn q_mlp_gelu_new_plus(
        x: FloatTensor<Self>,
        w: [FrozenPrimitive<Self>; 2],
        [b_in, b_out]: [FloatTensor<Self>; 2],
        adds: Vec<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        mlp::mlp_gelu_new_plus_ops::<Self>(x, w, [b_in, b_out], adds)
    }

    /// Batched row-major matmul `c[i] = alpha·op(a[i])·op(b[i])` of 3-D `a`, `b` (same batch size and
    /// dtype; `op` transposes the last two dims when `opts.ta`/`opts.tb`), accumulated and scaled in f32 and written in
    /// `out` (the inputs' dtype, or F32). Every dense GEMM of the model goes through it: on CUDA
    /// it is one cuBLAS call, where Burn 0.21's matmul reaches a third of cuBLAS' speed and
    /// JIT-compiles a kernel per shape. Under autodiff both inputs get gradients (in their dtype).
    fn q_gemm(a: FloatTensor<Self>, b: FloatTensor<Self>, opts: GemmOptions) -> FloatTensor<Self>;

    /// `c + alpha·op(a)·op(b)` for 3-D `c [batch, m, n]` and `[a, b]` as in [`QBackend::q_gemm`]
    /// (`alpha` and the transposes from `opts`),
    /// all of one dtype (fp32 accumulation): LoRA's `y + scaling·(x·Aᵀ)·Bᵀ` in one cuBLAS call,
    /// written into `c`'s buffer when nothing else holds it (no add or scale pass over `y`).
    /// Under autodiff `c` gets `dy` and `a`, `b` the scaled matmul gradients.
    fn q_gemm_acc(
        c: FloatTensor<Self>,
        [a, b]: [FloatTensor<Self>; 2],
        opts: GemmAccOptions,
    ) -> FloatTensor<Self> {
        let dtype = c.dtype();
        let ab = Self::q_gemm(
            a,
            b,
            GemmOptions::new(opts.ta, opts.tb, dtype).scaled(opts.alpha),
        );
        Self::float_add(c, ab)
    }

    /// LoRA's `y + scaling·(dropout(x)·Aᵀ)·Bᵀ` for `y [m, out]`, `x [m, in]` in the activation
    /// dtype and the factors `A [r, in]`, `B [out, r]` in theirs (f32 in training, as PEFT keeps
    /// them), cast to `x`'s dtype for the product: the `A` product, then the `B` product
    /// accumulated onto `y` scaled ([`QBackend::q_gemm_acc`]). Under autodiff it is one node
    /// whose backward writes the factors' gradients straight in their dtype with the scale in
    /// the GEMMs' α: no cast or scaling passes, one graph node instead of five.
    fn q_lora_acc(
        y: FloatTensor<Self>,
        x: FloatTensor<Self>,
        [a, b]: [FloatTensor<Self>; 2],
        opts: LoraOptions,
    ) -> FloatTensor<Self> {
        lora::forward::<Self>(y, x, [a, b], opts).out
    }

    /// [`QBackend::q_lora_acc`] of two or three adapters of one input `x` (q and v at decode),
    /// part `i` onto `ys[i]`: the default runs them one by one; CUDA runs a single row without
    /// dropout as two launches for all parts (the `A` products, then the `B` products
    /// accumulated), each output equal bit for bit to its own `q_lora_acc`.
    fn q_lora_acc_parts(
        ys: Vec<FloatTensor<Self>>,
        x: FloatTensor<Self>,
        factors: Vec<[FloatTensor<Self>; 2]>,
        opts: Vec<LoraOptions>,
    ) -> Vec<FloatTensor<Self>> {
        lora::acc_parts_each::<Self>(ys, x, factors, opts)
    }

    /// The inputs of LoRA's products ([`QBackend::q_lora_acc`]): `dropout(x)` (or `x` itself
    /// without dropout) and both factors in `x`'s dtype. The default runs the casts and the
    /// dropout as separate ops; CUDA does all three in one launch (f32 factors, 16-bit `x`).
    fn q_lora_prep(
        x: FloatTensor<Self>,
        dropout: Option<(f32, u64)>,
        factors: [FloatTensor<Self>; 2],
    ) -> [FloatTensor<Self>; 3] {
        lora::prep_ops::<Self>(x, dropout, factors)
    }

    /// Dropout of `x` with drop probability `p ∈ [0, 1)` and a counter-based mask: element `i`
    /// is kept iff a 32-bit hash of `(seed, i)` clears `p` (see `dropout.rs`), kept values are
    /// scaled by `1/(1−p)` in f32; `x`'s dtype out. The mask is never stored: the backward is
    /// the same op on `dy` with the same seed. One kernel on CUDA, bit-identical to the CPU.
    fn q_dropout(x: FloatTensor<Self>, p: f32, seed: u64) -> FloatTensor<Self>;

    /// HF's `NewGELUActivation` (GPT-J's `gelu_new`), `0.5·v·(1 + tanh(√(2/π)·(v + 0.044715·v³)))`
    /// of `v = x + bias` (`bias [D]` broadcast over the last dim of `x`, frozen: the `fc_in`
    /// bias folded into the activation), computed in f32 and returned in `x`'s dtype: one fused
    /// kernel on CUDA. Under autodiff only `x` (and the bias) is kept for the backward
    /// ([`QBackend::q_gelu_new_backward`]).
    fn q_gelu_new(x: FloatTensor<Self>, bias: Option<FloatTensor<Self>>) -> FloatTensor<Self>;

    /// `dx = dy · gelu_new'(x + bias)` (f32 math, `x`'s dtype).
    fn q_gelu_new_backward(
        x: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        dy: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// Attention probabilities: `softmax` over the last dim of `s / div` with masked positions
    /// set to `f32::MIN` first (a fully masked row comes out uniform), for F32 scores
    /// `s [B, H, T, L]` and a `mask [B, 1, T, L]` (true = masked), written in `out`. One fused
    /// kernel on CUDA (one warp per row); under autodiff only the output (and mask) is kept.
    fn q_attn_softmax(s: FloatTensor<Self>, m: AttnMask<Self>, out: DType) -> FloatTensor<Self>;

    /// Its backward: `ds = p ⊙ (dp − Σ_row p ⊙ dp) / div`, in F32 (`dp` in `p`'s dtype), and 0
    /// where masked (masked scores never reach the output, even in a fully masked row).
    fn q_attn_softmax_backward(
        p: FloatTensor<Self>,
        dp: FloatTensor<Self>,
        m: AttnMask<Self>,
    ) -> FloatTensor<Self>;

    /// The attention core in token-major layout: `q [B, T, H, hd]`, `k, v [B, L, H_kv, hd]` →
    /// `o [B, T, H, hd]` with `o[b, :, h] = softmax(mask(q[b, :, h]·k[b, :, g]ᵀ / div))·v[b, :, g]`,
    /// `g = h / (H/H_kv)` (grouped-query attention as HF's `repeat_kv`; `H_kv` divides `H`)
    /// (scores accumulated and soft-maxed in f32, as [`QBackend::q_attn_softmax`]; `mask`
    /// `[B, 1, T, L]`, true = masked), and the probabilities `p [B, H, T, L]` in v's dtype, which
    /// the backward needs. q, k, v share a dtype. The default composes [`QBackend::q_gemm`] and
    /// the fused softmax (the reference); CUDA reads and writes the token-major buffers in place
    /// with strided cuBLAS GEMMs, so no head transposes are copied. Under autodiff q, k, v and
    /// `p` are kept for the backward.
    fn q_attention(a: AttentionInput<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        attention::forward::<Self>(a.q, a.k, a.v, a.mask, a.div)
    }

    /// [`QBackend::q_attention`]'s output alone, where no backward will need the probabilities
    /// (the prefill, scoring, evaluation): the default drops them; CUDA may compute it in one
    /// fused kernel instead (`QTUNE_FLASH_ATTN=1`, `cuda/flash_attn.rs`), which agrees to bf16's
    /// rounding, not bit for bit. Autodiff keeps the default (its `q_attention` records the
    /// backward).
    fn q_attention_output(a: AttentionInput<Self>) -> FloatTensor<Self> {
        Self::q_attention(a).0
    }

    /// Gradients `[dq, dk, dv]` of [`QBackend::q_attention`] for `d_o` (token-major, inputs'
    /// dtype), given its input `a` and the probabilities `p` it returned.
    fn q_attention_backward(
        a: AttentionInput<Self>,
        p: FloatTensor<Self>,
        d_o: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 3] {
        attention::backward::<Self>(a.q, a.k, a.v, p, d_o, a.mask, a.div)
    }

    /// LayerNorm over the last dim of `x` with frozen `w`, `b` (`[D]`): `(x − mean)/√(var + eps)·w + b`
    /// in f32 (biased variance, as torch), returned in `x`'s dtype. One fused kernel on CUDA.
    /// Under autodiff only `x` gets a gradient: `w` and `b` are frozen base weights in qtune.
    fn q_layer_norm(n: NormInput<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Input gradient of [`QBackend::q_layer_norm`] for `dy` (in `x`'s dtype).
    fn q_layer_norm_backward(n: NormInput<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self>;

    /// GPT-J's rotary embedding ("rotate every two") of `x [B, T, H, head_dim]`: pair
    /// `(2i, 2i+1)`, `i < half`, turns by the angle with f32 `cos`/`sin [B, T, 1, half, 1]`; the
    /// dims from `2·half` on pass through. f32 math, `x`'s dtype out. `inverse` turns back,
    /// which is also the rotation's input gradient.
    fn q_rotary(x: FloatTensor<Self>, r: RotaryOptions<Self>) -> FloatTensor<Self>;

    /// HF `LlamaRMSNorm` over the last dim of `x` with a frozen `w [D]`: `normed = x·(mean(x²) +
    /// eps)^(−1/2)` in f32, cast to `x`'s dtype, then times `w` cast to `x`'s dtype (the
    /// product rounded in `x`'s dtype, as HF). One fused kernel on CUDA. Under autodiff only `x`
    /// gets a gradient ([`QBackend::q_rms_norm_backward`]).
    fn q_rms_norm(n: NormInput<Self>) -> FloatTensor<Self>;

    /// Input gradient of [`QBackend::q_rms_norm`] for `dy` (in `x`'s dtype):
    /// `dx = r·g − x·r³·mean(g·x)`, `g = dy·w`, `r = (mean(x²) + eps)^(−1/2)`, f32 math.
    fn q_rms_norm_backward(n: NormInput<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self>;

    /// SwiGLU's product `silu(gate)·up` (same shape and dtype), as torch: `silu` in f32
    /// rounded to the inputs' dtype, then the product rounded in that dtype. One fused kernel
    /// on CUDA; under autodiff `gate` and `up` are kept ([`QBackend::q_silu_mul_backward`]).
    fn q_silu_mul(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `[dgate, dup]` of [`QBackend::q_silu_mul`] for `dy`: `dgate = dy·up·silu'(gate)`,
    /// `dup = dy·silu(gate)` (f32 math, `silu` rounded as in the forward; inputs' dtype out).
    fn q_silu_mul_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 2];

    /// HF's rotate-half RoPE (Llama, Mistral, Qwen2) of `x [B, T, H, head_dim]`: with the two
    /// halves `x1`, `x2` of each head, `lo = x1·cos − x2·sin`, `hi = x2·cos + x1·sin` for the
    /// f32 `cos`/`sin [B, T, 1, head_dim/2, 1]` (GPT-J's tables), every dim of the head rotated.
    /// `inverse` turns back, which is also the rotation's input gradient. The reference casts
    /// cos/sin to `x`'s dtype and does each product and sum in that dtype, as HF; CUDA computes
    /// in f32 and rounds once.
    fn q_rotary_half(x: FloatTensor<Self>, r: RotaryOptions<Self>) -> FloatTensor<Self>;

    /// Cross-entropy per row: `nll[r] = logsumexp(x[r]) − x[r, t[r]]` (F32 `[rows]`) for logits
    /// `x [rows, vocab]` (any float dtype, f32 math: HF casts logits to f32 first) and targets
    /// `t [rows]` inside the vocabulary (callers drop ignored positions and check the range).
    /// One fused kernel on CUDA; under autodiff the logits are kept (in their dtype) and the
    /// backward is one more kernel, never a full f32 softmax in memory.
    fn q_cross_entropy(x: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self>;

    /// Its backward: `dx = (softmax(x) − onehot(t)) · g[r]` in `x`'s dtype, for `g [rows]`.
    fn q_cross_entropy_backward(
        x: FloatTensor<Self>,
        targets: IntTensor<Self>,
        g: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// [`QBackend::q_cross_entropy`] of the logits `x·wᵀ (+ bias)` of a frozen head (see
    /// [`linear_cross_entropy`]). The default computes the logits, then the cross-entropy; under
    /// autodiff a tracked `x` gets its gradient computed in the forward and kept in f32 instead
    /// of the logits.
    fn q_linear_cross_entropy(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        targets: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        head::linear_cross_entropy_ops::<Self>(x, w, bias, targets)
    }

    /// Rows `idx` of `x [N, D]` → `[n, D]`, as `Tensor::select` on dim 0, for **distinct**
    /// indices ([`select_rows`] checks them): its backward writes each row's gradient into
    /// place without summing ([`QBackend::q_select_rows_backward`]).
    fn q_select_rows(x: FloatTensor<Self>, idx: IntTensor<Self>) -> FloatTensor<Self> {
        Self::float_select(x, 0, idx)
    }

    /// Its backward: `[rows, D]` zeros with row `idx[i]` set to `dy[i]` (distinct indices).
    /// The default is Burn's `select_add` onto zeros; CUDA writes each value once in parallel
    /// (Burn's CubeCL kernel loops over the selected rows in every thread: 0.9 ms for the 4,096
    /// rows of a llama-7b batch).
    fn q_select_rows_backward(
        dy: FloatTensor<Self>,
        idx: IntTensor<Self>,
        rows: usize,
    ) -> FloatTensor<Self> {
        let [_, d] = dy.shape().dims::<2>();
        let zeros = Self::float_zeros(
            burn::tensor::Shape::new([rows, d]),
            &Self::float_device(&dy),
            dy.dtype().into(),
        );
        Self::float_select_add(zeros, 0, idx, dy)
    }

    /// A scalar (one zero) whose backward gives `y` the gradient `dy` (same shape and dtype):
    /// `seed(y, dy).backward()` equals `(y ⊙ dy).sum().backward()` without computing the
    /// product and its full reduction (the checkpointed backward does this once per block).
    /// Without autodiff it is just the zero (the default).
    fn q_grad_seed(y: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        let _ = dy;
        let y = Tensor::<Self, 1>::from_primitive(TensorPrimitive::Float(y));
        Tensor::<Self, 1>::zeros([1], (&y.device(), y.dtype()))
            .into_primitive()
            .tensor()
    }

    /// Blockwise quantization of a dense `[out, in]` weight (any float dtype) with a plain f32
    /// absmax, bit-identical to `qtune_quant`'s CPU reference. Returns `(codes U8, absmax F32)`,
    /// both 1-D; double quantization of the absmax is done by [`QuantWeight::quantize`].
    ///
    /// # Errors
    /// [`KernelError`] if the values contain NaN/Inf or the block size is unsupported.
    fn q_quantize(
        name: &str,
        w: FloatTensor<Self>,
        opts: QuantizeOptions,
    ) -> Result<(IntTensor<Self>, FloatTensor<Self>), KernelError>;

    /// Writes row `s` of `src` (`n·C` values, any shape; cast to `dst`'s dtype) into row
    /// `row[s]` of `dst [R, C]`, for each of the `n` indices of `row` (distinct), and returns
    /// `dst`; an index outside `0..R` writes nothing. The indices stay on the device. CUDA writes in place when `dst` is not shared (the static KV cache of
    /// [`QBackend::q_graph_capture`]d decoding relies on it: the result is the same buffer);
    /// the default reads the row index back and uses `slice_assign`.
    fn q_write_row(
        dst: FloatTensor<Self>,
        src: FloatTensor<Self>,
        row: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        decode::host_write_row::<Self>(dst, src, row)
    }

    /// One decode step's positional and cache work on fixed KV caches: `q` and `k` rotated
    /// ([`QBackend::q_rotary`], with `halves` [`QBackend::q_rotary_half`]), the rotated `k` and
    /// `v` written into rows `row[s]` of `kc` / `vc` ([`QBackend::q_write_row`]); returns
    /// `[rotated q, kc, vc]`. The default is that composition; CUDA runs it as one launch with
    /// the same values bit for bit when the caches can be written in place in their dtype.
    fn q_rope_write_kv(r: RopeKvInput<Self>) -> [FloatTensor<Self>; 3] {
        decode::rope_write_kv_ops::<Self>(r)
    }

    /// One greedy decoding step's bookkeeping, on the device: `state` holds, for each row `r`
    /// of `logits [rows, V]` (any float dtype), the int vector
    /// `[token, pos, count, out_0 … out_{cap-1}]`, back to back; with `tok = argmax(logits[r, ..])`
    /// (the first maximum, as `torch.argmax`) it sets that row's `token = tok`, `out_count = tok`
    /// (if `count < cap`), `count += 1`, `pos += 1`. In place on CUDA when
    /// `state` is not shared; the default reads both back.
    fn q_greedy_advance(state: IntTensor<Self>, logits: FloatTensor<Self>) -> IntTensor<Self> {
        decode::host_greedy_advance::<Self>(state, logits)
    }

    /// Records the device work `record` enqueues (run once, on this thread) as a graph that
    /// [`DeviceGraph::replay`] re-runs with one call: CUDA graphs on CUDA, `None` elsewhere (the
    /// default; `record` is then *not* called and the caller runs its step eagerly). The
    /// recorded work must have static shapes, keep its inputs/outputs in buffers allocated before
    /// the recording and updated in place ([`QBackend::q_write_row`],
    /// [`QBackend::q_greedy_advance`]), and must not read anything back to the host.
    ///
    /// # Errors
    /// [`KernelError::Graph`] if the driver rejects the capture.
    fn q_graph_capture(
        device: &Self::Device,
        record: &mut dyn FnMut(),
    ) -> Result<Option<Box<dyn DeviceGraph>>, KernelError> {
        let _ = (device, record);
        Ok(None)
    }

    /// Starts moving `x` to host memory off the compute stream ([`park`]'s module docs): CUDA
    /// parks it in pinned memory; the default keeps it on the device.
    fn q_park(x: FloatTensor<Self>) -> Place<Self> {
        Place::Device(x)
    }

    /// Whether [`QBackend::q_park`] moves tensors into host memory (CUDA: pinned, which the OS
    /// cannot page out), so that parking's host memory can be checked before training starts.
    /// The default keeps them on the device.
    fn q_parks_to_host() -> bool {
        false
    }

    /// Whether `device` can compute in `dtype`, checked before a model is built: on CUDA the
    /// compute capability (≥ 7.0 for qtune's kernels, ≥ 8.0 for bfloat16), so an older GPU
    /// gets this error at start instead of a fallback or a wrong result. The default accepts.
    ///
    /// # Errors
    /// [`KernelError::Device`] naming the device, its compute capability and what to do.
    fn q_check_device(device: &Self::Device, dtype: DType) -> Result<(), KernelError> {
        let _ = (device, dtype);
        Ok(())
    }

    /// A float tensor holding `data` (its dtype kept) on `device`: `Tensor::from_data`, which
    /// is the default. CUDA copies the bytes straight to the device once (`cuda/upload.rs`
    /// says why cubecl's own upload is slow for checkpoints).
    fn q_upload_float(data: TensorData, device: &Self::Device) -> FloatTensor<Self> {
        Self::float_from_data(data, device)
    }

    /// An int tensor holding `data` (its dtype kept, e.g. U8 codes) on `device`, as
    /// [`QBackend::q_upload_float`].
    fn q_upload_int(data: TensorData, device: &Self::Device) -> IntTensor<Self> {
        Self::int_from_data(data, device)
    }

    /// `cat(parts, 0)` of 1-D tensors of one dtype (at least one): how the optimizer gathers a
    /// group's values and gradients. The default is Burn's `cat` (a kernel per part); CUDA
    /// enqueues one device-to-device copy per part from a single device-thread task.
    fn q_cat_flat(parts: Vec<FloatTensor<Self>>) -> FloatTensor<Self> {
        Self::float_cat(parts, 0)
    }

    /// One bitsandbytes 8-bit blockwise Adam step over a group's flat buffers, fused: the new
    /// values and state. The default hands the input back (`Err`), and the caller composes the
    /// step from Burn ops (qtune-optim's reference); CUDA runs one kernel, a plane per block.
    ///
    /// # Errors
    /// The input itself, unchanged, where this backend has no fused step for it.
    #[allow(clippy::result_large_err)]
    fn q_adam8_blockwise(
        a: Adam8Input<Self>,
    ) -> Result<(FloatTensor<Self>, Adam8State<Self>), Adam8Input<Self>> {
        Err(a)
    }
}

/// Bound for generic training code: a [`QBackend`] that can also differentiate, whose inner
/// backend (used by `.valid()` modules, e.g. the no-graph forward of gradient checkpointing) is
/// a [`QBackend`] too.
pub trait QAutodiffBackend: QBackend + AutodiffBackend<InnerBackend: QBackend> {}

impl<B, C> QAutodiffBackend for burn::backend::Autodiff<B, C>
where
    B: QBackend,
    C: burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy,
{
}

/// `parts[0] + parts[1] + …` in order.
///
/// # Panics
/// With no parts.
pub(crate) fn add_all<B: Backend>(parts: Vec<FloatTensor<B>>) -> FloatTensor<B> {
    let mut parts = parts.into_iter();
    let first = parts.next().expect("add_all: no parts");
    parts.fold(first, |a, b| {
        <B as burn::tensor::ops::FloatTensorOps<B>>::float_add(a, b)
    })
}
