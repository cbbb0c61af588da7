//! Bad input gives a typed error naming the tensor; nothing panics.

use std::path::Path;

use qtune_quant::{
    blockwise8, fourbit, io, Absmax, FloatDType, QuantError, QuantFormat, QuantSpec,
    QuantizedTensor,
};
use safetensors::SafeTensors;

#[test]
fn non_finite_values_name_tensor_and_index() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut x = vec![0.5f32; 300];
        x[257] = bad;
        for spec in [QuantSpec::nf4(), QuantSpec::fp4(), QuantSpec::blockwise8()] {
            let err =
                QuantizedTensor::quantize("h.3.mlp.fc_in", &x, &[3, 100], spec, FloatDType::F32)
                    .unwrap_err();
            assert!(
                matches!(&err, QuantError::NonFinite { name, index: 257, .. } if name == "h.3.mlp.fc_in"),
                "{err}"
            );
            assert!(err.to_string().contains("h.3.mlp.fc_in"));
        }
    }
    // An f32 beyond the f16 range becomes inf when rounded to the weight dtype.
    let err = QuantizedTensor::quantize("w", &[1.0, 1e6], &[2], QuantSpec::nf4(), FloatDType::F16)
        .unwrap_err();
    assert!(
        matches!(err, QuantError::NonFinite { index: 1, .. }),
        "{err}"
    );
}

#[test]
fn unsupported_block_sizes_are_rejected() {
    let x = vec![1.0f32; 128];
    for (format, b) in [
        (QuantFormat::Blockwise8, 32),
        (QuantFormat::Nf4, 16),
        (QuantFormat::Fp4, 8192),
        (QuantFormat::Nf4, 100),
        (QuantFormat::Blockwise8, 0),
    ] {
        let spec = QuantSpec {
            format,
            blocksize: b,
            double_quant: false,
        };
        let err = QuantizedTensor::quantize("w", &x, &[128], spec, FloatDType::F32).unwrap_err();
        assert!(
            matches!(err, QuantError::UnsupportedBlocksize { blocksize, .. } if blocksize == b),
            "{err}"
        );
    }
    assert!(blockwise8::quantize(&x, 48).is_err());
    assert!(fourbit::quantize(&x, 0, fourbit::FourBit::Nf4).is_err());
}

#[test]
fn mismatched_lengths_are_rejected() {
    let x = vec![1.0f32; 100];
    let err = QuantizedTensor::quantize("w", &x, &[10, 11], QuantSpec::nf4(), FloatDType::F32)
        .unwrap_err();
    assert!(
        matches!(
            err,
            QuantError::Length {
                expected: 110,
                got: 100,
                ..
            }
        ),
        "{err}"
    );
    let err =
        QuantizedTensor::quantize_bytes("w", &[0u8; 7], FloatDType::BF16, &[3], QuantSpec::nf4())
            .unwrap_err();
    assert!(matches!(err, QuantError::Invalid { .. }), "{err}");
    let err =
        QuantizedTensor::quantize("w", &[], &[0], QuantSpec::nf4(), FloatDType::F32).unwrap_err();
    assert!(matches!(err, QuantError::Empty { .. }), "{err}");
    // Decoders check codes against absmax and n.
    assert!(matches!(blockwise8::dequantize(&[1; 100], &[1.0; 2], 64), Ok(v) if v.len() == 100));
    assert!(matches!(
        blockwise8::dequantize(&[1; 100], &[1.0; 3], 64),
        Err(QuantError::Length { .. })
    ));
    assert!(matches!(
        fourbit::dequantize(&[1; 50], &[1.0; 2], 101, 64, fourbit::FourBit::Nf4),
        Err(QuantError::Length { .. })
    ));
    assert!(matches!(
        fourbit::dequantize(&[1; 51], &[1.0; 1], 101, 64, fourbit::FourBit::Nf4),
        Err(QuantError::Length { .. })
    ));
}

#[test]
fn inconsistent_tensor_fails_validate_and_does_not_panic() {
    let mut q =
        QuantizedTensor::quantize("w", &[0.5; 130], &[130], QuantSpec::nf4(), FloatDType::BF16)
            .unwrap();
    q.validate("w").unwrap();
    q.codes.pop();
    assert!(matches!(
        q.validate("w"),
        Err(QuantError::Length { what: "codes", .. })
    ));
    assert!(q.try_dequantize().is_err());
    assert!(q.dequantize().iter().all(|v| v.is_nan()));
    let dir = tempfile::tempdir().unwrap();
    let err = io::save_file(&[("w", &q)], &dir.path().join("bad.safetensors")).unwrap_err();
    assert!(
        matches!(err, QuantError::Length { what: "codes", .. }),
        "{err}"
    );
    q.codes.push(0);
    if let Absmax::Nested(n) = &mut q.absmax {
        n.absmax.clear();
    }
    assert!(q.validate("w").is_err());
    assert!(q.absmax_f32().iter().all(|v| v.is_nan()));
}

#[test]
fn loading_reports_missing_and_malformed_tensors() {
    let q = QuantizedTensor::quantize("w", &[0.25; 64], &[8, 8], QuantSpec::nf4(), FloatDType::F32)
        .unwrap();
    let path = Path::new("mem.safetensors");
    let save = |drop: Option<&str>, patch: Option<(&str, Vec<u8>)>| {
        let mut owned = q.to_safetensors("m");
        owned.retain(|(n, _)| Some(n.as_str()) != drop);
        if let Some((name, data)) = &patch {
            for (n, t) in owned.iter_mut() {
                if n == name {
                    t.shape = vec![data.len()];
                    t.data = data.clone();
                }
            }
        }
        let views: Vec<(&str, &io::OwnedTensor)> =
            owned.iter().map(|(n, t)| (n.as_str(), t)).collect();
        safetensors::serialize(views, None).unwrap()
    };
    let bytes = save(Some("m.weight.nested_absmax"), None);
    let err =
        QuantizedTensor::from_safetensors(&SafeTensors::deserialize(&bytes).unwrap(), "m", path)
            .unwrap_err();
    assert!(
        matches!(&err, QuantError::MissingTensor { name, .. } if name == "m.weight.nested_absmax"),
        "{err}"
    );
    let bytes = save(
        None,
        Some((
            "m.weight.quant_state.bitsandbytes__nf4",
            b"{not json".to_vec(),
        )),
    );
    let err =
        QuantizedTensor::from_safetensors(&SafeTensors::deserialize(&bytes).unwrap(), "m", path)
            .unwrap_err();
    assert!(matches!(err, QuantError::BadState { .. }), "{err}");
    let bytes = save(None, Some(("m.weight", vec![0; 5])));
    let err =
        QuantizedTensor::from_safetensors(&SafeTensors::deserialize(&bytes).unwrap(), "m", path)
            .unwrap_err();
    assert!(
        matches!(&err, QuantError::BadTensor { name, .. } if name == "m.weight"),
        "{err}"
    );
    let err = QuantizedTensor::from_safetensors(
        &SafeTensors::deserialize(&bytes).unwrap(),
        "other",
        path,
    )
    .unwrap_err();
    assert!(matches!(err, QuantError::MissingTensor { .. }), "{err}");
    let err = io::load_file(Path::new("/nonexistent/x.safetensors"), "m").unwrap_err();
    assert!(matches!(err, QuantError::Io { .. }), "{err}");
}
