//! tests/fixtures/gptj_tiny/nf4/model.safetensors is transformers 5.17 + bnb 0.50.2's NF4
//! double-quant serialization of tests/fixtures/gptj_tiny/fp32/model.safetensors. Quantizing the
//! fp32 weights ourselves must give the same state, and the file must load and re-save as is.

use std::path::Path;

use qtune_quant::io::{quant_format_of, quantized_prefixes, QuantStateJson};
use qtune_quant::{Absmax, FloatDType, NestedAbsmax, QuantFormat, QuantSpec, QuantizedTensor};
use safetensors::SafeTensors;

use crate::fixtures::{f32_bits, f32s, fixtures_dir, read, ulps};

#[test]
fn our_nf4_of_the_fp32_weights_equals_hf_bnb_serialization() {
    let fp32_bytes = read("gptj_tiny/fp32/model.safetensors");
    let nf4_bytes = read("gptj_tiny/nf4/model.safetensors");
    let fp32 = SafeTensors::deserialize(&fp32_bytes).unwrap();
    let nf4 = SafeTensors::deserialize(&nf4_bytes).unwrap();
    let path = fixtures_dir().join("gptj_tiny/nf4/model.safetensors");
    let prefixes = quantized_prefixes(&nf4);
    // 3 layers × (q, k, v, out_proj, fc_in, fc_out); embeddings, lm_head, norms stay dense.
    assert_eq!(prefixes.len(), 18, "{prefixes:?}");
    assert_eq!(quant_format_of(&nf4, "lm_head"), None);
    let (mut offsets_exact, mut offsets_1ulp) = (0, 0);
    for p in &prefixes {
        let theirs = QuantizedTensor::from_safetensors(&nf4, p, &path).unwrap();
        let w = fp32.tensor(&format!("{p}.weight")).unwrap();
        let values = f32s(&fp32, &format!("{p}.weight"));
        let ours =
            QuantizedTensor::quantize(p, &values, w.shape(), QuantSpec::nf4(), FloatDType::F32)
                .unwrap();
        assert_eq!(ours.format, QuantFormat::Nf4);
        assert_eq!(
            (&ours.shape, ours.blocksize, ours.dtype),
            (&theirs.shape, theirs.blocksize, theirs.dtype),
            "{p}"
        );
        assert_eq!(ours.codes, theirs.codes, "{p}: packed codes");
        let (Absmax::Nested(o), Absmax::Nested(t)) = (&ours.absmax, &theirs.absmax) else {
            panic!("{p}: both must be double-quantized");
        };
        // torch's CUDA mean may differ from ours in the last bit; given bnb's offset the nested
        // state is bit-exact.
        match ulps(o.offset, t.offset) {
            0 => offsets_exact += 1,
            1 => offsets_1ulp += 1,
            d => panic!("{p}: offset {} vs {} ({d} ulps)", o.offset, t.offset),
        }
        let plain = QuantizedTensor::quantize(
            p,
            &values,
            w.shape(),
            QuantSpec {
                double_quant: false,
                ..QuantSpec::nf4()
            },
            FloatDType::F32,
        )
        .unwrap();
        let given = NestedAbsmax::quantize_with_offset(p, &plain.absmax_f32(), t.offset).unwrap();
        assert_eq!(given.codes, t.codes, "{p}: nested codes");
        assert_eq!(
            f32_bits(&given.absmax),
            f32_bits(&t.absmax),
            "{p}: nested absmax"
        );
        assert_eq!(given.blocksize, t.blocksize);
        if o.offset == t.offset {
            assert_eq!(o, t, "{p}");
            assert_eq!(
                f32_bits(&ours.dequantize()),
                f32_bits(&theirs.dequantize()),
                "{p}"
            );
        }
    }
    eprintln!("gptj_tiny nf4: 18 weights identical; offsets {offsets_exact} identical, {offsets_1ulp} within 1 ulp");
}

#[test]
fn hf_nf4_file_resaves_byte_for_byte() {
    let nf4_bytes = read("gptj_tiny/nf4/model.safetensors");
    let nf4 = SafeTensors::deserialize(&nf4_bytes).unwrap();
    let path = Path::new("gptj_tiny/nf4/model.safetensors");
    for p in quantized_prefixes(&nf4) {
        let q = QuantizedTensor::from_safetensors(&nf4, &p, path).unwrap();
        for (name, t) in q.to_safetensors(&p) {
            let orig = nf4.tensor(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                (orig.dtype(), orig.shape()),
                (t.dtype, t.shape.as_slice()),
                "{name}"
            );
            // Including the JSON state: same keys, order, separators and float digits.
            assert_eq!(orig.data(), t.data.as_slice(), "{name}");
            if name.contains("quant_state") {
                let state: QuantStateJson = serde_json::from_slice(&t.data).unwrap();
                assert_eq!(
                    (state.quant_type.as_str(), state.nested_blocksize),
                    ("nf4", Some(256))
                );
            }
        }
    }
}
