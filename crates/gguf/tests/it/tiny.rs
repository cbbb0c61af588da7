//! tests/fixtures/gguf/tiny.gguf (gguf-py 0.19 `GGUFWriter`): metadata of every value type and
//! one tensor per supported ggml type, dequantized bit-for-bit as `gguf.quants.dequantize`.

use qtune_gguf::{GgmlType, GgufError, GgufFile, MetaValue};

use crate::common::{bits, json, tiny_path, to_bits};

#[test]
fn golden_dequant_is_bit_exact() {
    let f = GgufFile::open(&tiny_path()).expect("open tiny.gguf");
    let fx = json("tiny_expected.json");
    let tensors = fx["tensors"].as_object().expect("tensors");
    assert_eq!(f.tensors().len(), tensors.len());
    for (name, want) in tensors {
        let info = f.tensor(name).expect(name);
        assert_eq!(
            info.ggml_type.name(),
            want["type"].as_str().expect("type"),
            "{name}"
        );
        let shape: Vec<usize> = want["hf_shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|d| d.as_u64().expect("dim") as usize)
            .collect();
        assert_eq!(f.hf_shape(name).expect("shape"), shape, "{name}");
        let got = f.read_f32(name).expect(name);
        assert_eq!(to_bits(&got), bits(&want["bits"]), "{name}");
    }
    // Every supported type is covered.
    let types: Vec<GgmlType> = f.tensors().iter().map(|t| t.ggml_type).collect();
    for t in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
    ] {
        assert!(types.contains(&t), "{t:?}");
    }
}

#[test]
fn header_layout() {
    let f = GgufFile::open(&tiny_path()).expect("open");
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.data_offset() % 32, 0);
    let t = f.tensor("f32_3d").expect("f32_3d");
    assert_eq!(t.dims, vec![8, 3, 2], "GGUF order: ne0 first");
    assert_eq!(f.hf_shape("f32_3d").expect("shape"), vec![2, 3, 8]);
    assert_eq!(f.tensor_data("q8_0").expect("bytes").len(), 3 * 2 * 34);
    assert_eq!(f.tensor_data("q4_0").expect("bytes").len(), 2 * 3 * 18);
    assert_eq!(f.tensor_data("q4_1").expect("bytes").len(), 4 * 2 * 20);
}

#[test]
fn metadata_values() {
    let f = GgufFile::open(&tiny_path()).expect("open");
    let m = f.metadata();
    assert_eq!(f.architecture().expect("arch"), "llama");
    assert_eq!(m["t.u8"], MetaValue::U8(200));
    assert_eq!(m["t.i8"], MetaValue::I8(-100));
    assert_eq!(m["t.u16"], MetaValue::U16(60000));
    assert_eq!(m["t.i16"], MetaValue::I16(-30000));
    assert_eq!(m["t.u32"], MetaValue::U32(4_000_000_000));
    assert_eq!(m["t.i32"], MetaValue::I32(-2_000_000_000));
    assert_eq!(m["t.f32"], MetaValue::F32(1.5));
    assert_eq!(m["t.bool"], MetaValue::Bool(true));
    assert_eq!(m["t.str"], MetaValue::Str("héllo ✓".into()));
    assert_eq!(m["t.u64"], MetaValue::U64((1 << 63) + 5));
    assert_eq!(m["t.i64"], MetaValue::I64(-(1 << 62)));
    assert_eq!(m["t.f64"], MetaValue::F64(-2.25));
    use MetaValue as V;
    assert_eq!(
        m["t.arr_i32"],
        V::Array(vec![V::I32(1), V::I32(-2), V::I32(3)])
    );
    assert_eq!(m["t.arr_u8"], V::Array(vec![V::U8(0), V::U8(255)]));
    assert_eq!(m["t.arr_f32"], V::Array(vec![V::F32(0.5), V::F32(-1.0)]));
    assert_eq!(
        m["t.arr_str"],
        V::Array(vec![
            V::Str("a b".into()),
            V::Str(String::new()),
            V::Str("ü".into())
        ])
    );
    assert_eq!(
        m["t.arr_bool"],
        V::Array(vec![V::Bool(true), V::Bool(false)])
    );
    assert_eq!(
        m["t.arr_nested"],
        V::Array(vec![
            V::Array(vec![V::I32(1), V::I32(2)]),
            V::Array(vec![V::I32(3)])
        ])
    );

    // Typed getters: any integer type that fits.
    assert_eq!(f.get_u32("t.u8").expect("u8"), 200);
    assert_eq!(f.get_u32("t.u16").expect("u16"), 60000);
    assert_eq!(f.get_u32("llama.attention.head_count").expect("heads"), 2);
    assert_eq!(f.get_u64("t.u64").expect("u64"), (1 << 63) + 5);
    assert_eq!(f.get_u64("t.u32").expect("u32 as u64"), 4_000_000_000);
    assert_eq!(f.get_f32("t.f32").expect("f32"), 1.5);
    assert_eq!(f.get_f32("t.f64").expect("f64 narrowed"), -2.25);
    assert_eq!(f.get_str("t.str").expect("str"), "héllo ✓");
    assert!(f.get_bool("t.bool").expect("bool"));
    assert_eq!(f.get_array("t.arr_u8").expect("array").len(), 2);
    assert_eq!(f.get_u32_opt("no.such.key").expect("absent"), None);
    assert_eq!(f.get_str_opt("no.such.key").expect("absent"), None);
    assert_eq!(f.chat_template(), None);
}

#[test]
fn getter_errors_name_file_and_key() {
    let f = GgufFile::open(&tiny_path()).expect("open");
    let check = |e: GgufError, key: &str| {
        let msg = e.to_string();
        assert!(msg.contains("tiny.gguf") && msg.contains(key), "{msg}");
    };
    for (key, r) in [
        ("t.u64", f.get_u32("t.u64").map(|_| ())), // does not fit
        ("t.i8", f.get_u32("t.i8").map(|_| ())),   // negative
        ("t.str", f.get_u32("t.str").map(|_| ())),
        ("t.u32", f.get_str("t.u32").map(|_| ())),
        ("t.str", f.get_bool("t.str").map(|_| ())),
        ("t.bool", f.get_f32("t.bool").map(|_| ())),
    ] {
        let e = r.expect_err(key);
        assert!(matches!(e, GgufError::WrongType { .. }), "{key}: {e:?}");
        check(e, key);
    }
    let e = f.get_u32("missing.key").expect_err("missing");
    assert!(matches!(e, GgufError::MissingKey { .. }), "{e:?}");
    check(e, "missing.key");
    let e = f.read_f32("nope").expect_err("missing tensor");
    assert!(matches!(e, GgufError::MissingTensor { .. }), "{e:?}");
    check(e, "nope");
    let e = f.tokenizer().expect_err("no tokenizer keys");
    check(e, "tokenizer.ggml.model");
}
