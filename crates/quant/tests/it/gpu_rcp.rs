//! The shipped reciprocal table (crates/quant/data/rcp_f32.bin.gz) against the summary the GPU
//! program wrote when it was measured (tests/fixtures/gpu_rcp/{rcp.cu, rcp.json}).

use qtune_quant::rcp::{delta, rcp_approx_ftz};
use serde::Deserialize;

use crate::fixtures::read;

#[derive(Deserialize)]
struct Summary {
    device_rcp: String,
    mantissas: usize,
    plus1: usize,
    minus1: usize,
    other: usize,
    exp_mismatches: usize,
    bf16: Vec<i8>,
    f16: Vec<i8>,
}

#[test]
fn table_matches_the_measured_summary() {
    let s: Summary = serde_json::from_slice(&read("gpu_rcp/rcp.json")).unwrap();
    assert_eq!(s.device_rcp, "rcp.approx.ftz.f32");
    assert_eq!((s.mantissas, s.other, s.exp_mismatches), (1 << 23, 0, 0));
    let (mut plus, mut minus) = (0, 0);
    for m in 0..1u32 << 23 {
        match delta(m) {
            1 => plus += 1,
            -1 => minus += 1,
            _ => {}
        }
    }
    assert_eq!((plus, minus), (s.plus1, s.minus1));
    // bf16 keeps the top 7 mantissa bits, f16 the top 10: the JSON lists their deltas directly.
    assert_eq!(s.bf16.len(), 128);
    assert_eq!(s.f16.len(), 1024);
    for (m, &d) in s.bf16.iter().enumerate() {
        assert_eq!(delta((m as u32) << 16), d, "bf16 mantissa {m}");
    }
    for (m, &d) in s.f16.iter().enumerate() {
        assert_eq!(delta((m as u32) << 13), d, "f16 mantissa {m}");
    }
    // And the function applies them at other exponents, as measured (e.g. 96.5 = 1.5078125·2^6).
    for (m, &d) in s.bf16.iter().enumerate() {
        let x = f32::from_bits((127 + 6) << 23 | (m as u32) << 16);
        let exact = (1.0 / f64::from(x)) as f32;
        let got = i64::from(rcp_approx_ftz(x).to_bits()) - i64::from(exact.to_bits());
        assert_eq!(got, i64::from(d), "x = {x}");
    }
}
