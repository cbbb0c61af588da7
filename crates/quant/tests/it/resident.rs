//! Memory per parameter of a 4096×4096 weight (GPT-J-6B's attention projections).

use qtune_quant::{FloatDType, QuantSpec, QuantizedTensor};

#[test]
fn bytes_per_param_of_a_4096_square_weight() {
    let n = 4096 * 4096;
    let x: Vec<f32> = (0..n).map(|i| ((i % 1013) as f32 - 506.0) / 97.0).collect();
    let nf4 = QuantizedTensor::quantize("w", &x, &[4096, 4096], QuantSpec::nf4(), FloatDType::BF16)
        .unwrap();
    // codes n/2 + absmax codes n/64 + nested absmax 4·n/64/256 + offset 4.
    assert_eq!(nf4.resident_bytes(), n / 2 + n / 64 + 4 * n / 64 / 256 + 4);
    let nf4_bpp = nf4.resident_bytes() as f64 / n as f64;
    let b8 = QuantizedTensor::quantize(
        "w",
        &x,
        &[4096, 4096],
        QuantSpec::blockwise8(),
        FloatDType::BF16,
    )
    .unwrap();
    assert_eq!(b8.resident_bytes(), n + 4 * n / 4096);
    let b8_bpp = b8.resident_bytes() as f64 / n as f64;
    let nf4_plain = QuantizedTensor::quantize(
        "w",
        &x,
        &[4096, 4096],
        QuantSpec {
            double_quant: false,
            ..QuantSpec::nf4()
        },
        FloatDType::BF16,
    )
    .unwrap();
    let plain_bpp = nf4_plain.resident_bytes() as f64 / n as f64;
    eprintln!("bytes/param: nf4+dq {nf4_bpp:.6}, nf4 {plain_bpp:.6}, blockwise8/4096 {b8_bpp:.6} (bf16: 2)");
    assert!((0.51..0.53).contains(&nf4_bpp), "{nf4_bpp}");
    assert!((1.0..1.01).contains(&b8_bpp), "{b8_bpp}");
    assert!(plain_bpp > nf4_bpp);
}
