//! Save/load of every format through a real file: the loaded tensor equals the saved one
//! exactly, and loading needs nothing but the file.

use qtune_quant::io::{load_all, load_file, save_file};
use qtune_quant::{FloatDType, QuantFormat, QuantSpec, QuantizedTensor};

fn values(n: usize, seed: u32) -> Vec<f32> {
    // A cheap deterministic spread of magnitudes (no RNG dependency needed here).
    (0..n)
        .map(|i| {
            (((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32 - 0.5)
                * (1.0 + (i % 7) as f32)
        })
        .collect()
}

#[test]
fn every_format_round_trips_through_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut saved = Vec::new();
    for (k, format) in [QuantFormat::Blockwise8, QuantFormat::Nf4, QuantFormat::Fp4]
        .into_iter()
        .enumerate()
    {
        for dq in [false, true] {
            for (d, dtype) in [FloatDType::F32, FloatDType::F16, FloatDType::BF16]
                .into_iter()
                .enumerate()
            {
                // Odd element count and a short last block.
                let shape = [33, 65];
                let spec = QuantSpec {
                    format,
                    blocksize: if format == QuantFormat::Blockwise8 {
                        256
                    } else {
                        64
                    },
                    double_quant: dq,
                };
                let q = QuantizedTensor::quantize(
                    "w",
                    &values(33 * 65, (k * 10 + d) as u32),
                    &shape,
                    spec,
                    dtype,
                )
                .unwrap();
                let name = format!("layer.{k}.{dq}.{d}");
                let path = dir.path().join(format!("{name}.safetensors"));
                save_file(&[(&name, &q)], &path).unwrap();
                let back = load_file(&path, &name).unwrap();
                assert_eq!(back, q, "{name}");
                assert_eq!(back.dequantize_to_bits(), q.dequantize_to_bits(), "{name}");
                saved.push((name, q));
            }
        }
    }
    // Many weights in one file.
    let path = dir.path().join("all.safetensors");
    let refs: Vec<(&str, &QuantizedTensor)> = saved.iter().map(|(n, q)| (n.as_str(), q)).collect();
    save_file(&refs, &path).unwrap();
    let names: Vec<&str> = saved.iter().map(|(n, _)| n.as_str()).collect();
    let all = load_all(&path, &names).unwrap();
    for (n, q) in &saved {
        assert_eq!(&all[n], q, "{n}");
    }
}

#[test]
fn eight_bit_codes_keep_the_weight_shape() {
    let q = QuantizedTensor::quantize(
        "w",
        &values(96, 1),
        &[12, 8],
        QuantSpec {
            blocksize: 64,
            ..QuantSpec::blockwise8()
        },
        FloatDType::F32,
    )
    .unwrap();
    let tensors = q.to_safetensors("p");
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "p.weight",
            "p.weight.absmax",
            "p.weight.quant_map",
            "p.weight.quant_state.qtune__blockwise8"
        ]
    );
    assert_eq!(tensors[0].1.shape, [12, 8]);
    assert_eq!(tensors[1].1.shape, [2]);
    assert_eq!(tensors[2].1.shape, [256]);
    let json = String::from_utf8(tensors[3].1.data.clone()).unwrap();
    assert_eq!(
        json,
        r#"{"quant_type": "blockwise8", "blocksize": 64, "dtype": "float32", "shape": [12, 8]}"#
    );
}
