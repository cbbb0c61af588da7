//! Dequant bandwidth and quantized-linear timing on the GPU (`cargo xtask bench dequant`). Bytes are counted as bitsandbytes' peer benchmark does
//! (shared/bench/peer_hf.py): 4-bit `n/2 + 2n`, 8-bit `3n` (bf16 output), copy `4n`. Every timing
//! is `sync → iters × op → sync` after warm-up iterations (JIT compile, autotune, pool growth).

use std::time::Instant;

use burn::tensor::{DType, Distribution, Tensor};
use qtune_quant::{FloatDType, QuantFormat, QuantSpec};

use qtune_kernels::cuda::gemm::{gemm, linear_t_acc_via, linear_t_via, OneRow, Product};
use qtune_kernels::cuda::{launch, sync, Cuda};
use qtune_kernels::{QBackend, QuantWeight};

type C = Cuda<f32>;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Dequant weight shape (bitsandbytes' peer uses 16384×4096).
    pub dequant_shape: [usize; 2],
    /// Timed iterations for dequant/copy.
    pub iters: usize,
    /// Warm-up iterations before each timing.
    pub warmup: usize,
    /// Tokens (rows of x) for the linear timings.
    pub tokens: usize,
    /// `(in, out)` shapes of the linear timings.
    pub linears: Vec<(usize, usize)>,
    /// Timed iterations for the linear timings.
    pub linear_iters: usize,
    /// Only the batch-1 (decode) products.
    pub decode_only: bool,
    /// Only the pieces of a prefill block ([`prefill`]) at `tokens` rows.
    pub prefill_only: bool,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            dequant_shape: [16384, 4096],
            iters: 50,
            warmup: 3,
            tokens: 4096,
            linears: vec![(4096, 4096), (4096, 16384), (16384, 4096)],
            linear_iters: 20,
            decode_only: false,
            prefill_only: false,
        }
    }
}

/// One result line.
#[derive(Clone, Debug)]
pub struct Record {
    /// `dequant`, `copy`, `quantize`, `linear`, `gemv`, `prefill` or `prefill_bw`.
    pub kind: &'static str,
    /// Format / variant name.
    pub name: String,
    /// Milliseconds per iteration.
    pub ms: f64,
    /// GB/s (bandwidth records) or TFLOP/s (`linear` and `prefill` records).
    pub rate: f64,
    /// Extra JSON fields (already formatted, leading comma).
    pub extra: String,
}

/// Print `r`'s JSON line at once (a later panic keeps what was measured before it) and keep it
/// for the table at the end.
pub(crate) fn keep(out: &mut Vec<Record>, r: Record) {
    println!("{}", r.json());
    out.push(r);
}

impl Record {
    /// One JSON line.
    pub fn json(&self) -> String {
        let unit = if matches!(self.kind, "linear" | "prefill") {
            "tflops"
        } else {
            "GBps"
        };
        format!(
            "{{\"bench\":\"{}\",\"name\":\"{}\",\"ms\":{:.4},\"{unit}\":{:.1}{}}}",
            self.kind, self.name, self.ms, self.rate, self.extra
        )
    }
}

pub(crate) fn time_ms(
    dev: &cubecl::cuda::CudaDevice,
    warmup: usize,
    iters: usize,
    mut f: impl FnMut(),
) -> f64 {
    for _ in 0..warmup {
        f();
    }
    sync::<C>(dev);
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    sync::<C>(dev);
    t.elapsed().as_secs_f64() * 1e3 / iters as f64
}

/// Dequant of each format, the copy reference, and the GPU quantizer's speed.
pub fn dequant(cfg: &BenchConfig) -> Vec<Record> {
    let dev = Default::default();
    let [rows, cols] = cfg.dequant_shape;
    let n = (rows * cols) as f64;
    let w = Tensor::<C, 2>::random([rows, cols], Distribution::Normal(0.0, 1.0), &dev)
        .cast(DType::BF16);
    let mut out = Vec::new();

    let ms = time_ms(&dev, cfg.warmup, cfg.iters, || {
        drop(qtune_kernels::cuda::copy::copy_bf16(&w))
    });
    keep(
        &mut out,
        Record {
            kind: "copy",
            name: "bf16_cube_copy".into(),
            ms,
            rate: 4.0 * n / ms / 1e6,
            extra: String::new(),
        },
    );
    let copy_gbps = 4.0 * n / ms / 1e6;

    let specs = [
        ("nf4", QuantSpec::nf4(), 2.5),
        (
            "nf4_plain_absmax",
            QuantSpec {
                double_quant: false,
                ..QuantSpec::nf4()
            },
            2.5,
        ),
        ("fp4", QuantSpec::fp4(), 2.5),
        ("blockwise8", QuantSpec::blockwise8(), 3.0),
    ];
    let default = qtune_kernels::cuda::launch::dequant_variant();
    for (name, spec, bytes_per) in specs {
        let quantize = || {
            QuantWeight::<C>::quantize(
                name,
                w.clone(),
                spec.format,
                spec.blocksize,
                spec.double_quant,
                FloatDType::BF16,
            )
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let qms = time_ms(&dev, 1, 3, || drop(quantize()));
        let gptj_s = qms * 6.05e9 / n / 1e3;
        keep(
            &mut out,
            Record {
                kind: "quantize",
                name: name.into(),
                ms: qms,
                rate: 2.0 * n / qms / 1e6,
                extra: format!(
                    ",\"gptj6b_estimate_s\":{gptj_s:.2},\"double_quant\":{}",
                    spec.double_quant
                ),
            },
        );
        let q = quantize();
        // 4-bit: every kernel variant (they are bit-identical; the default is the fastest).
        let variants: &[(usize, bool)] = if spec.format == QuantFormat::Blockwise8 {
            &[(1, false)]
        } else if spec.double_quant {
            &[(1, false), (2, false), (1, true), (2, true)]
        } else {
            &[(1, false), (2, false)]
        };
        for &(wpu, fused) in variants {
            qtune_kernels::cuda::launch::set_dequant_variant(wpu, fused);
            let ms = time_ms(&dev, cfg.warmup, cfg.iters, || {
                drop(q.dequantize(DType::BF16))
            });
            let gbps = bytes_per * n / ms / 1e6;
            keep(&mut out, Record {
                kind: "dequant",
                name: format!("{name} wpu{wpu}{}", if fused { " fused" } else { "" }),
                ms,
                rate: gbps,
                extra: format!(
                    ",\"vs_copy\":{:.3},\"blocksize\":{},\"double_quant\":{},\"default_variant\":{}",
                    gbps / copy_gbps,
                    spec.blocksize,
                    spec.double_quant,
                    (wpu, fused) == default
                ),
            });
        }
        qtune_kernels::cuda::launch::set_dequant_variant(default.0, default.1);
    }
    out
}

/// `w` in NF4 with double quantization, block 64 (the format the linear timings use).
pub(crate) fn nf4_dq(w: Tensor<C, 2>) -> QuantWeight<C> {
    QuantWeight::<C>::quantize("w", w, QuantFormat::Nf4, 64, true, FloatDType::BF16)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Quantized linear forward + input-gradient time vs the same with a dense bf16 weight through
/// the same cuBLAS path (both pay the same host syncs), at `cfg.tokens` tokens.
pub fn linear(cfg: &BenchConfig) -> Vec<Record> {
    let dev = Default::default();
    let mut out = Vec::new();
    for &(in_f, out_f) in &cfg.linears {
        let m = cfg.tokens;
        let wd = Tensor::<C, 2>::random([out_f, in_f], Distribution::Normal(0.0, 0.02), &dev)
            .cast(DType::BF16);
        let x = Tensor::<C, 2>::random([m, in_f], Distribution::Normal(0.0, 1.0), &dev)
            .cast(DType::BF16);
        let dy = Tensor::<C, 2>::random([m, out_f], Distribution::Normal(0.0, 1.0), &dev)
            .cast(DType::BF16);
        let flops = 2.0 * 2.0 * (m * in_f * out_f) as f64;
        let q = nf4_dq(wd.clone());
        let (xp, dyp, wp) = (
            x.into_primitive().tensor(),
            dy.into_primitive().tensor(),
            wd.into_primitive().tensor(),
        );
        let qms = time_ms(&dev, cfg.warmup, cfg.linear_iters, || {
            drop(C::q_linear(xp.clone(), q.primitive()));
            drop(C::q_linear_dx(dyp.clone(), q.primitive()));
        });
        let dms = time_ms(&dev, cfg.warmup, cfg.linear_iters, || {
            drop(gemm::<C>(xp.clone(), &wp, Product::ATransB));
            drop(gemm::<C>(dyp.clone(), &wp, Product::AB));
        });
        let shape = format!("{in_f}->{out_f}");
        keep(
            &mut out,
            Record {
                kind: "linear",
                name: format!("nf4_dq {shape}"),
                ms: qms,
                rate: flops / qms / 1e9,
                extra: format!(",\"tokens\":{m},\"vs_dense\":{:.3}", qms / dms),
            },
        );
        keep(
            &mut out,
            Record {
                kind: "linear",
                name: format!("dense_bf16_cublas {shape}"),
                ms: dms,
                rate: flops / dms / 1e9,
                extra: format!(",\"tokens\":{m}"),
            },
        );
    }
    out
}

/// Device time of one call of `f`: `reps` calls recorded in one device graph, replayed `iters`
/// times (so launch gaps are those of the decode graph, not of the host).
fn graph_us(dev: &cubecl::cuda::CudaDevice, reps: usize, iters: usize, f: &mut dyn FnMut()) -> f64 {
    f(); // compile, warm the pool
    let graph = C::q_graph_capture(dev, &mut || (0..reps).for_each(|_| f()))
        .unwrap_or_else(|e| panic!("recording a graph: {e}"))
        .unwrap_or_else(|| panic!("the CUDA backend records graphs"));
    graph.replay().unwrap_or_else(|e| panic!("{e}"));
    sync::<C>(dev);
    let t = Instant::now();
    for _ in 0..iters {
        graph.replay().unwrap_or_else(|e| panic!("{e}"));
    }
    sync::<C>(dev);
    t.elapsed().as_secs_f64() * 1e6 / (iters * reps) as f64
}

/// Batch-1 (decode) products on GPT-J-6B shapes, device time per call inside a CUDA graph:
/// the quantized GEMV for NF4 + double quant and blockwise 8-bit at 1, 2 and 4 output rows per
/// plane (`r1`, `r2`, `r4` in the name), each with `x` staged in shared memory where it fits
/// and read from global memory (`xg`), and the dense bf16 products of decode (LoRA `A` and `B`
/// at r = 16, the LM head) through the GEMV kernel and through cuBLAS. Rates count the bytes
/// read: codes + scales, or the dense weight.
pub fn decode_gemv(cfg: &BenchConfig) -> Vec<Record> {
    let dev = Default::default();
    let (reps, iters) = (20, cfg.iters.max(3));
    let default_rows = launch::gemv_rows_per_plane();
    let default_staged = launch::gemv_x_shared();
    let mut out = Vec::new();
    let x_of = |k: usize| {
        Tensor::<C, 2>::random([1, k], Distribution::Normal(0.0, 1.0), &dev).cast(DType::BF16)
    };
    for (name, format, bs, dq, shapes) in [
        (
            "nf4_dq",
            QuantFormat::Nf4,
            64,
            true,
            vec![(4096, 4096), (4096, 16384), (16384, 4096)],
        ),
        (
            "int8",
            QuantFormat::Blockwise8,
            256,
            false,
            vec![(4096, 4096)],
        ),
    ] {
        for (in_f, out_f) in shapes {
            let wd = Tensor::<C, 2>::random([out_f, in_f], Distribution::Normal(0.0, 0.02), &dev)
                .cast(DType::BF16);
            let q = QuantWeight::<C>::quantize(name, wd, format, bs, dq, FloatDType::BF16)
                .unwrap_or_else(|e| panic!("{e}"));
            let xp = x_of(in_f).into_primitive().tensor();
            let bytes = q.resident_bytes() as f64;
            // Every output-rows-per-plane setting of the kernel, `x` staged in shared memory
            // where it fits or read from global memory (`xg` in the name; same outputs by
            // design).
            for (r, staged) in [1, 2, 4].into_iter().flat_map(|r| [(r, true), (r, false)]) {
                launch::set_gemv_rows_per_plane(r);
                launch::set_gemv_x_shared(staged);
                let us = graph_us(&dev, reps, iters, &mut || {
                    drop(C::q_linear(xp.clone(), q.primitive()))
                });
                let is_default = r == default_rows && staged == default_staged;
                keep(&mut out, Record {
                    kind: "gemv",
                    name: format!("{name} {in_f}->{out_f} r{r}{}", if staged { "" } else { " xg" }),
                    ms: us / 1e3,
                    rate: bytes / us / 1e3,
                    extra: format!(
                        ",\"us\":{us:.2},\"rows_per_plane\":{r},\"x_shared\":{staged},\"default\":{is_default}"
                    ),
                });
            }
            launch::set_gemv_x_shared(default_staged);
            launch::set_gemv_rows_per_plane(default_rows);
        }
    }
    for (name, in_f, out_f, acc) in [
        ("lora_a", 4096, 16, false),
        ("lora_b_acc", 16, 4096, true),
        ("head", 4096, 50400, false),
    ] {
        let w = Tensor::<C, 2>::random([out_f, in_f], Distribution::Normal(0.0, 0.02), &dev)
            .cast(DType::BF16);
        let x = x_of(in_f);
        let y0 = x_of(out_f);
        for one_row in [OneRow::Gemv, OneRow::Cublas] {
            let us = graph_us(&dev, reps, iters, &mut || {
                let y = if acc {
                    // A fresh base output per call, as LoRA's `forward_onto` gets.
                    let y0 = y0.clone().add_scalar(0.0);
                    linear_t_acc_via(y0, x.clone(), w.clone(), 2.0, one_row)
                } else {
                    linear_t_via(x.clone(), w.clone(), one_row)
                };
                drop(y);
            });
            keep(
                &mut out,
                Record {
                    kind: "gemv",
                    name: format!(
                        "{name} {in_f}->{out_f} {}",
                        match one_row {
                            OneRow::Gemv => "gemv",
                            OneRow::Cublas => "cublas",
                        }
                    ),
                    ms: us / 1e3,
                    rate: (2 * in_f * out_f) as f64 / us / 1e3, // bf16 weight bytes
                    extra: format!(",\"us\":{us:.2}"),
                },
            );
        }
    }
    out
}

/// Everything: each record's JSON line as it is measured, then a table.
pub fn run(cfg: &BenchConfig) -> Vec<Record> {
    let mut all = if cfg.prefill_only {
        crate::bench_prefill::prefill(cfg)
    } else if cfg.decode_only {
        Vec::new()
    } else {
        let mut all = dequant(cfg);
        all.extend(linear(cfg));
        all
    };
    if !cfg.prefill_only {
        all.extend(decode_gemv(cfg));
    }
    println!(
        "\n{:<10} {:<28} {:>10} {:>12}  extra",
        "kind", "name", "ms", "GB/s|TFLOP/s"
    );
    for r in &all {
        println!(
            "{:<10} {:<28} {:>10.3} {:>12.1}  {}",
            r.kind,
            r.name,
            r.ms,
            r.rate,
            r.extra.trim_start_matches(',')
        );
    }
    all
}
