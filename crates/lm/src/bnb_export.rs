//! `qtune quantize`: a dense model written as HF transformers + bitsandbytes 0.50 save a
//! `BitsAndBytesConfig(load_in_4bit=True, …)` model with `save_pretrained`:
//! - every linear but `lm_head` (HF's `get_keys_to_not_convert` keeps the output embedding
//!   dense) as bnb's packed 4-bit tensors under its module path `p`: `p.weight`,
//!   `p.weight.absmax`, `p.weight.quant_map`, with double quant `p.weight.nested_absmax` and
//!   `p.weight.nested_quant_map`, and `p.weight.quant_state.bitsandbytes__nf4` (or `__fp4`), the
//!   JSON state (names and bytes: `qtune_quant::io`);
//! - every other tensor (embeddings, norms, biases, `lm_head`) in the export dtype;
//! - `config.json` with transformers' `quantization_config` block ([`quantization_config`]);
//! - one `model.safetensors`, or shards `model-0000i-of-0000n.safetensors` +
//!   `model.safetensors.index.json` above `max_shard_size` (huggingface_hub's greedy split; the
//!   tensors of one quantized weight always share a shard, as qtune's reader needs).
//!
//! The codes come from `qtune_quant::QuantizedTensor::quantize` (bnb's CUDA arithmetic, fast-math
//! reciprocal included), after rounding each weight to the export dtype as
//! `from_pretrained(dtype=…)` does before bnb quantizes it. Weights are quantized on every core.
//! bnb's 8-bit weights (`Linear8bitLt`: row-wise int8 + `SCB`) are a different format from
//! qtune's blockwise 8-bit, so 8-bit is refused here rather than written in a format bnb can't
//! load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Mutex;

use burn::tensor::Tensor;
use qtune_kernels::QBackend;
use qtune_lora::merge::ExportDType;
use qtune_quant::io::OwnedTensor;
use qtune_quant::{FloatDType, QuantFormat, QuantSpec, QuantizedTensor};
use safetensors::Dtype;
use serde::Serialize;

use crate::context::host_f32;
use crate::error::LmError;
use crate::lm::CausalLm;

/// transformers 5's default `max_shard_size` of `save_pretrained` ("50GB", decimal units).
pub const DEFAULT_MAX_SHARD_SIZE: u64 = 50_000_000_000;

/// How to write the quantized model.
#[derive(Debug, Clone, Copy)]
pub struct BnbExportOptions {
    /// NF4 or FP4, block 64 (bnb's only 4-bit block size in transformers), double quant or not.
    pub spec: QuantSpec,
    /// Dtype of the dense tensors, of the quant state (`dtype` in its JSON: the dtype bnb
    /// quantized) and `bnb_4bit_compute_dtype`.
    pub dtype: ExportDType,
    /// Shard above this many bytes of tensor data.
    pub max_shard_size: u64,
    /// Worker threads that quantize (0: every core).
    pub threads: usize,
}

/// What was written.
#[derive(Debug, Clone, Serialize)]
pub struct BnbExportReport {
    pub dir: PathBuf,
    /// The safetensors files, in order.
    pub files: Vec<String>,
    /// Module paths of the quantized linears.
    pub quantized_modules: Vec<String>,
    /// Tensors stored dense, in `torch_dtype`.
    pub dense_tensors: Vec<String>,
    /// Bytes of tensor data (the index's `total_size`).
    pub total_size: u64,
    pub torch_dtype: String,
    pub quant_type: String,
    pub double_quant: bool,
}

/// transformers' `BitsAndBytesConfig(...).to_dict()` for a 4-bit `spec` as `save_pretrained`
/// writes it into `config.json` (transformers 5.17, bnb 0.50.2: the keys of
/// tests/fixtures/gptj_tiny/nf4/config.json, sorted).
pub fn quantization_config(spec: QuantSpec, compute_dtype: ExportDType) -> serde_json::Value {
    let quant_type = match spec.format {
        QuantFormat::Fp4 => "fp4",
        _ => "nf4",
    };
    serde_json::json!({
        "_load_in_4bit": true,
        "_load_in_8bit": false,
        "bnb_4bit_compute_dtype": compute_dtype.torch_name(),
        "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": quant_type,
        "bnb_4bit_use_double_quant": spec.double_quant,
        "llm_int8_enable_fp32_cpu_offload": false,
        "llm_int8_has_fp16_weight": false,
        "llm_int8_skip_modules": null,
        "llm_int8_threshold": 6.0,
        "load_in_4bit": true,
        "load_in_8bit": false,
        "quant_method": "bitsandbytes",
    })
}

/// `config` (the source's `config.json`, or the model's own) with `quantization_config` and
/// the dtype set; keys sorted as transformers writes them (`sort_keys=True`).
pub fn quantized_config(
    config: &serde_json::Value,
    spec: QuantSpec,
    dtype: ExportDType,
) -> serde_json::Value {
    let mut map: BTreeMap<String, serde_json::Value> = config
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    // transformers 5 writes `dtype`, 4.x `torch_dtype`; both read either. Update what is there.
    let keys: Vec<&str> = ["dtype", "torch_dtype"]
        .into_iter()
        .filter(|k| map.contains_key(*k))
        .collect();
    for k in if keys.is_empty() {
        vec!["torch_dtype"]
    } else {
        keys
    } {
        map.insert(k.to_string(), dtype.torch_name().into());
    }
    map.insert(
        "quantization_config".into(),
        quantization_config(spec, dtype),
    );
    serde_json::Value::Object(map.into_iter().collect())
}

fn float_dtype(d: ExportDType) -> FloatDType {
    match d {
        ExportDType::F32 => FloatDType::F32,
        ExportDType::F16 => FloatDType::F16,
        ExportDType::BF16 => FloatDType::BF16,
    }
}

/// f32 values as a safetensors tensor of `dtype` (round to nearest even, as torch's `.to()`).
fn dense(dtype: ExportDType, shape: Vec<usize>, values: &[f32]) -> OwnedTensor {
    let (st, data): (Dtype, Vec<u8>) = match dtype {
        ExportDType::F32 => (
            Dtype::F32,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        ExportDType::F16 => (
            Dtype::F16,
            values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
        ),
        ExportDType::BF16 => (
            Dtype::BF16,
            values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
        ),
    };
    OwnedTensor {
        dtype: st,
        shape,
        data,
    }
}

/// Tensors that must land in the same file: one quantized weight's parts, or one dense tensor.
type Unit = Vec<(String, OwnedTensor)>;

fn unit_bytes(u: &Unit) -> u64 {
    u.iter().map(|(_, t)| t.data.len() as u64).sum()
}

/// Sort key that orders `h.2` before `h.10` (module order within a family).
fn natural_key(name: &str) -> Vec<(u64, String)> {
    name.split('.')
        .map(|s| match s.parse::<u64>() {
            Ok(n) => (n, String::new()),
            Err(_) => (u64::MAX, s.to_string()),
        })
        .collect()
}

/// Quantizes every linear of `model` but `lm_head` and writes the folder's weights and
/// `config.json` (built from `config`) into `out`, which must exist. Tokenizer files are the
/// caller's. `model` must be dense (loaded without quantization).
pub fn export_bnb<B: QBackend, M: CausalLm<B>>(
    model: &M,
    config: &serde_json::Value,
    out: &Path,
    opts: &BnbExportOptions,
) -> Result<BnbExportReport, LmError> {
    if opts.spec.format.four_bit().is_none() {
        return Err(LmError::Input(
            "8-bit export is not supported: qtune's 8-bit format is bnb's blockwise dynamic \
             8-bit, while transformers loads 8-bit bnb checkpoints as LLM.int8 (Linear8bitLt: \
             row-wise int8 + SCB); a file of ours would not load there"
                .into(),
        ));
    }
    let dtype = float_dtype(opts.dtype);
    let mut units: Vec<Unit> = Vec::new();
    let mut dense_names = Vec::new();
    let mut push_dense =
        |units: &mut Vec<Unit>, name: String, shape: Vec<usize>, t: Tensor<B, 1>| {
            let values = host_f32(t).map_err(|e| LmError::Input(format!("{name}: {e}")))?;
            dense_names.push(name.clone());
            units.push(vec![(name, dense(opts.dtype, shape, &values))]);
            Ok::<(), LmError>(())
        };
    for (name, shape, t) in model.other_tensors() {
        push_dense(&mut units, name, shape, t)?;
    }
    let (mut jobs, mut done, mut quantized_modules) = (Vec::new(), Vec::new(), Vec::new());
    for (name, lin) in model.linears() {
        if lin.lora.is_some() {
            return Err(LmError::Input(format!(
                "{name} has a LoRA adapter: merge it first (`qtune merge`), then quantize"
            )));
        }
        if let Some(b) = lin.bias() {
            let shape = b.dims().to_vec();
            push_dense(&mut units, format!("{name}.bias"), shape, b)?;
        }
        if name == "lm_head" {
            // A tied head is the embedding, already written under its own name.
            if !model.tied_head() {
                let w = lin.base_weight(burn::tensor::DType::F32);
                let shape = w.dims().to_vec();
                push_dense(&mut units, format!("{name}.weight"), shape, w.flatten(0, 1))?;
            }
            continue;
        }
        quantized_modules.push(name.clone());
        match &lin.base {
            // Loaded with `LoadOptions::host_quantize` (the spec and dtype of this export):
            // written as quantized on load.
            qtune_lora::LinearBase::Quant(w) => {
                let q = w
                    .try_to_quantized(&name)
                    .map_err(|e| LmError::Input(format!("{name}: {e}")))?;
                if !same_export(&q, opts.spec, dtype) {
                    return Err(LmError::Input(format!(
                        "{name} is already quantized ({:?}, block {}, {:?}; a bitsandbytes \
                         checkpoint?) unlike this export: quantize a dense model",
                        q.format, q.blocksize, q.dtype
                    )));
                }
                done.push(q.to_safetensors(&name));
            }
            qtune_lora::LinearBase::Dense(_) => jobs.push((name, lin)),
        }
    }
    units.extend(done);
    units.extend(quantize_all(&jobs, opts.spec, dtype, opts.threads)?);
    units.sort_by_cached_key(|u| natural_key(&u[0].0));

    let files = write_shards(out, &units, opts.max_shard_size)?;
    let cfg = quantized_config(config, opts.spec, opts.dtype);
    let path = out.join("config.json");
    let text = serde_json::to_string_pretty(&cfg)
        .map_err(|e| LmError::Input(format!("config.json: {e}")))?
        + "\n";
    std::fs::write(&path, text).map_err(|source| LmError::Io { path, source })?;
    Ok(BnbExportReport {
        dir: out.to_path_buf(),
        files,
        quantized_modules,
        dense_tensors: dense_names,
        total_size: units.iter().map(unit_bytes).sum(),
        torch_dtype: opts.dtype.torch_name().into(),
        quant_type: if opts.spec.format == QuantFormat::Fp4 {
            "fp4"
        } else {
            "nf4"
        }
        .into(),
        double_quant: opts.spec.double_quant,
    })
}

/// Whether a weight quantized on load is what this export writes: same format, block size,
/// double quantization and dtype.
fn same_export(q: &QuantizedTensor, spec: QuantSpec, dtype: FloatDType) -> bool {
    q.format == spec.format
        && q.blocksize == spec.blocksize
        && matches!(q.absmax, qtune_quant::Absmax::Nested(_)) == spec.double_quant
        && q.dtype == dtype
}

/// The [`crate::source::HostQuant`] that makes a load produce this export's weights (one dense
/// weight at a time; `qtune quantize` loads with it).
pub fn host_quant(opts: &BnbExportOptions) -> crate::source::HostQuant {
    crate::source::HostQuant {
        spec: opts.spec,
        dtype: float_dtype(opts.dtype),
    }
}

/// Quantizes the weights on `threads` workers (0: every core). This thread reads each weight
/// back to the host and hands it over; at most `threads` dense copies wait at a time.
fn quantize_all<B: QBackend>(
    jobs: &[(String, &qtune_lora::Linear<B>)],
    spec: QuantSpec,
    dtype: FloatDType,
    threads: usize,
) -> Result<Vec<Unit>, LmError> {
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    }
    .min(jobs.len().max(1));
    let (job_tx, job_rx) = mpsc::sync_channel::<(usize, Vec<f32>)>(threads);
    let job_rx = Mutex::new(job_rx);
    let (res_tx, res_rx) = mpsc::channel::<(usize, Result<Unit, LmError>)>();
    let mut read_err = None;
    std::thread::scope(|s| {
        for _ in 0..threads {
            let res_tx = res_tx.clone();
            let job_rx = &job_rx;
            s.spawn(move || loop {
                // A poisoned lock only means another worker panicked; the receiver is intact.
                let next = job_rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                let Ok((i, values)) = next else { break };
                let (name, lin) = &jobs[i];
                let r = QuantizedTensor::quantize(name, &values, &lin.shape(), spec, dtype)
                    .map(|q| q.to_safetensors(name))
                    .map_err(|source| LmError::host_quantize(name, source));
                if res_tx.send((i, r)).is_err() {
                    break;
                }
            });
        }
        for (i, (name, lin)) in jobs.iter().enumerate() {
            match host_f32(lin.base_weight(burn::tensor::DType::F32)) {
                Ok(values) => {
                    if job_tx.send((i, values)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    read_err = Some(LmError::Input(format!("{name}.weight: {e}")));
                    break;
                }
            }
        }
        drop(job_tx);
    });
    drop(res_tx);
    if let Some(e) = read_err {
        return Err(e);
    }
    let mut out: Vec<Option<Unit>> = (0..jobs.len()).map(|_| None).collect();
    for (i, r) in res_rx {
        out[i] = Some(r?);
    }
    out.into_iter()
        .zip(jobs)
        .map(|(u, (name, _))| {
            u.ok_or_else(|| LmError::Input(format!("{name}: a quantize worker stopped")))
        })
        .collect()
}

/// huggingface_hub's `split_state_dict_into_shards`: units in order; a unit larger than the
/// limit gets a shard of its own; otherwise a new shard starts when the unit would tip the
/// current one over. One shard is `model.safetensors`; several get HF's names and an index.
fn write_shards(out: &Path, units: &[Unit], max_shard_size: u64) -> Result<Vec<String>, LmError> {
    let mut shards: Vec<Vec<&Unit>> = Vec::new();
    let mut current: Vec<&Unit> = Vec::new();
    let mut current_size = 0u64;
    for u in units {
        let size = unit_bytes(u);
        if size > max_shard_size {
            shards.push(vec![u]);
            continue;
        }
        if current_size + size > max_shard_size && !current.is_empty() {
            shards.push(std::mem::take(&mut current));
            current_size = 0;
        }
        current.push(u);
        current_size += size;
    }
    if !current.is_empty() || shards.is_empty() {
        shards.push(current);
    }
    let n = shards.len();
    let names: Vec<String> = if n == 1 {
        vec!["model.safetensors".into()]
    } else {
        (1..=n)
            .map(|i| format!("model-{i:05}-of-{n:05}.safetensors"))
            .collect()
    };
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let mut weight_map = BTreeMap::new();
    for (shard, file) in shards.iter().zip(&names) {
        let path = out.join(file);
        let views: Vec<(&str, &OwnedTensor)> = shard
            .iter()
            .flat_map(|u| u.iter().map(|(name, t)| (name.as_str(), t)))
            .collect();
        for (name, _) in &views {
            weight_map.insert(name.to_string(), file.clone());
        }
        safetensors::serialize_to_file(views, Some(metadata.clone()), &path).map_err(|e| {
            LmError::Safetensors {
                path: path.clone(),
                reason: e.to_string(),
            }
        })?;
    }
    if n > 1 {
        let total: u64 = units.iter().map(unit_bytes).sum();
        let index = serde_json::json!({
            "metadata": { "total_size": total },
            "weight_map": weight_map,
        });
        let path = out.join("model.safetensors.index.json");
        let text = serde_json::to_string_pretty(&index)
            .map_err(|e| LmError::Input(format!("index: {e}")))?
            + "\n";
        std::fs::write(&path, text).map_err(|source| LmError::Io { path, source })?;
    }
    Ok(names)
}

/// HF's `max_shard_size` strings: an integer number of bytes, or digits with a unit (`"5GB"`,
/// `"500MB"`, `"2GiB"`; KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB of 1024;
/// transformers' `convert_file_size_to_int`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let upper = t.to_ascii_uppercase();
    let units: [(&str, u64); 9] = [
        ("TIB", 1 << 40),
        ("GIB", 1 << 30),
        ("MIB", 1 << 20),
        ("KIB", 1 << 10),
        ("TB", 1_000_000_000_000),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("KB", 1_000),
        ("B", 1),
    ];
    let (digits, mult) = units
        .iter()
        .find_map(|(u, m)| upper.strip_suffix(u).map(|d| (d.trim(), *m)))
        .unwrap_or((upper.as_str(), 1));
    let n: f64 = digits
        .parse()
        .map_err(|_| format!("`{s}`: expected bytes or digits with a unit, e.g. 5GB or 500MiB"))?;
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("`{s}`: must be positive"));
    }
    Ok((n * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_hf() {
        assert_eq!(parse_size("50GB"), Ok(50_000_000_000));
        assert_eq!(parse_size("300KB"), Ok(300_000));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1234"), Ok(1234));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0MB").is_err());
    }

    #[test]
    fn natural_order_puts_layer_2_before_10() {
        let mut v = vec!["m.layers.10.a", "m.layers.2.a", "lm_head.weight", "m.embed"];
        v.sort_by_cached_key(|n| natural_key(n));
        assert_eq!(
            v,
            ["lm_head.weight", "m.embed", "m.layers.2.a", "m.layers.10.a"]
        );
    }
}
