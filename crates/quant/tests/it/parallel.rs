//! A large tensor is quantized on several threads (runs of whole blocks): the result must be
//! the serial one byte for byte, and a NaN must be reported at its index in the whole tensor.

use qtune_quant::{
    blockwise8, fourbit, Absmax, FloatDType, QuantError, QuantSpec, QuantizedTensor,
};

/// Above the 2 × 2²⁰ values at which two threads start, with a short last block.
const N: usize = (1 << 21) + 4096 * 3 + 37;

fn values() -> Vec<f32> {
    (0..N)
        .map(|i| (((i * 2654435761) % 100_003) as f32 - 50_001.0) / 9_999.0)
        .collect()
}

fn plain(spec: QuantSpec) -> QuantSpec {
    QuantSpec {
        double_quant: false,
        ..spec
    }
}

#[test]
fn threaded_quantization_equals_the_serial_loop() {
    let x = values();
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    eprintln!(
        "{threads} threads available (runs of blocks: {})",
        threads.min(2)
    );
    for spec in [QuantSpec::nf4(), QuantSpec::fp4(), QuantSpec::blockwise8()] {
        let q = QuantizedTensor::quantize("w", &x, &[N], plain(spec), FloatDType::F32).unwrap();
        let (codes, absmax) = match spec.format.four_bit() {
            Some(kind) => fourbit::quantize(&x, spec.blocksize, kind).unwrap(),
            None => blockwise8::quantize(&x, spec.blocksize).unwrap(),
        };
        assert_eq!(q.codes, codes, "{:?} codes", spec.format);
        match &q.absmax {
            Absmax::Plain(a) => assert_eq!(a, &absmax, "{:?} absmax", spec.format),
            Absmax::Nested(_) => unreachable!("plain spec"),
        }
    }
}

#[test]
fn a_nan_in_a_later_run_is_named_at_its_index_in_the_tensor() {
    let mut x = values();
    let bad = N - 100; // in the last run
    x[bad] = f32::NAN;
    x[N - 10] = f32::INFINITY;
    let err =
        QuantizedTensor::quantize("h.3.mlp.fc_in", &x, &[N], QuantSpec::nf4(), FloatDType::F32)
            .unwrap_err();
    match err {
        QuantError::NonFinite { name, index, .. } => {
            assert_eq!(name, "h.3.mlp.fc_in");
            assert_eq!(index, bad);
        }
        other => panic!("expected NonFinite, got {other:?}"),
    }
}
