//! The real SmolLM2-135M-Instruct Q4_1 GGUF (not committed; `QTUNE_SMOLLM2_GGUF` or the default
//! cache path) against tests/fixtures/gguf/smollm2.json, made by HF transformers 5.25 + gguf-py.

use qtune_gguf::{GgmlType, GgufFile};

use crate::common::{bits, json, smollm2, to_bits};

#[test]
fn smollm2_header_and_shapes() {
    let Some(path) = smollm2("smollm2_header_and_shapes") else {
        return;
    };
    let f = GgufFile::open(&path).expect("open");
    let fx = json("smollm2.json");
    assert_eq!(
        f.tensors().len() as u64,
        fx["n_tensors"].as_u64().expect("n")
    );
    assert_eq!(f.architecture().expect("arch"), "llama");
    assert_eq!(f.get_u32("llama.block_count").expect("layers"), 30);
    assert_eq!(f.get_u32("llama.embedding_length").expect("dim"), 576);
    assert_eq!(f.get_u32("llama.attention.head_count").expect("heads"), 9);
    assert_eq!(
        f.get_u32("llama.attention.head_count_kv")
            .expect("kv heads"),
        3
    );
    assert_eq!(f.get_str("tokenizer.ggml.model").expect("model"), "gpt2");
    assert_eq!(f.get_str("tokenizer.ggml.pre").expect("pre"), "smollm");
    assert!(f
        .chat_template()
        .is_some_and(|t| t.contains("<|im_start|>")));
    assert_eq!(
        f.tensor("token_embd.weight").expect("embd").ggml_type,
        GgmlType::Q8_0
    );
    assert_eq!(
        f.hf_shape("token_embd.weight").expect("shape"),
        vec![49152, 576]
    );
    assert_eq!(
        f.hf_shape("blk.0.attn_k.weight").expect("shape"),
        vec![192, 576]
    );
    assert_eq!(
        f.hf_shape("blk.0.ffn_down.weight").expect("shape"),
        vec![576, 1536]
    );
    for t in f.tensors() {
        assert!(
            matches!(t.ggml_type, GgmlType::Q4_1 | GgmlType::F32 | GgmlType::Q8_0),
            "{}: {:?}",
            t.name,
            t.ggml_type
        );
    }
    for i in 0..30 {
        assert!(
            f.tensor(&format!("blk.{i}.attn_q.weight")).is_some(),
            "layer {i}"
        );
    }
}

#[test]
fn smollm2_golden_dequant() {
    let Some(path) = smollm2("smollm2_golden_dequant") else {
        return;
    };
    let f = GgufFile::open(&path).expect("open");
    let fx = json("smollm2.json");
    for (name, want) in fx["first64"].as_object().expect("first64") {
        assert_eq!(
            f.tensor(name).expect(name).ggml_type.name(),
            want["type"].as_str().expect("type")
        );
        let got = f.read_f32(name).expect(name);
        let n: usize = f.hf_shape(name).expect("shape").iter().product();
        assert_eq!(got.len(), n, "{name}");
        assert_eq!(to_bits(&got[..64]), bits(&want["bits"]), "{name}");
    }
}

#[test]
fn smollm2_unpermute_matches_hf() {
    let Some(path) = smollm2("smollm2_unpermute_matches_hf") else {
        return;
    };
    let f = GgufFile::open(&path).expect("open");
    let fx = json("smollm2.json");
    let n_head = f.get_u32("llama.attention.head_count").expect("heads") as usize;
    let n_kv = f.get_u32("llama.attention.head_count_kv").expect("kv") as usize;
    for (key, name, heads) in [
        ("q_proj", "blk.0.attn_q.weight", n_head),
        ("k_proj", "blk.0.attn_k.weight", n_kv),
    ] {
        let hf = &fx["hf_layer0"][key];
        let cols = f.hf_shape(name).expect("shape")[1];
        let w = f.read_qk_f32(name, heads).expect(name);
        let raw = f.read_f32(name).expect(name);
        let mut differs = false;
        for (row, want) in hf["rows"].as_object().expect("rows") {
            let r: usize = row.parse().expect("row");
            assert_eq!(
                to_bits(&w[r * cols..r * cols + 16]),
                bits(want),
                "{key} row {r}"
            );
            differs |= to_bits(&raw[r * cols..r * cols + 16]) != bits(want);
        }
        assert!(
            differs,
            "{key}: the permutation must matter for the sampled rows"
        );
    }
}

#[test]
fn smollm2_tokenizer_matches_hf() {
    let Some(path) = smollm2("smollm2_tokenizer_matches_hf") else {
        return;
    };
    let f = GgufFile::open(&path).expect("open");
    let fx = json("smollm2.json");
    let tok = f.tokenizer().expect("tokenizer");
    let t = &fx["tokenizer"];
    assert_eq!(
        tok.get_vocab_size(true) as u64,
        t["len"].as_u64().expect("len")
    );
    assert_eq!(
        tok.get_vocab_size(false) as u64,
        t["vocab_size"].as_u64().expect("vocab")
    );
    for name in ["bos", "eos", "unk", "pad"] {
        let s = t[name].as_str().expect(name);
        assert!(
            tok.get_added_vocabulary().is_special_token(s),
            "{name} {s} is special"
        );
    }
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .expect("ids")
            .iter()
            .map(|x| x.as_u64().expect("id") as u32)
            .collect()
    };
    let cases = t["cases"].as_array().expect("cases");
    assert!(cases.len() >= 10);
    for c in cases {
        let text = c["text"].as_str().expect("text");
        let with = tok.encode(text, true).expect("encode");
        assert_eq!(with.get_ids(), ids(&c["ids"]).as_slice(), "{text:?}");
        let without = tok.encode(text, false).expect("encode");
        assert_eq!(
            without.get_ids(),
            ids(&c["ids_no_special"]).as_slice(),
            "{text:?}"
        );
        let dec = tok.decode(with.get_ids(), false).expect("decode");
        assert_eq!(dec, c["decode"].as_str().expect("decode"), "{text:?}");
        let dec = tok.decode(with.get_ids(), true).expect("decode");
        assert_eq!(
            dec,
            c["decode_skip_special"].as_str().expect("decode"),
            "{text:?}"
        );
    }
}
