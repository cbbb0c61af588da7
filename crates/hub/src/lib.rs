//! The Hugging Face Hub's environment switches, read as huggingface_hub reads them, in one place
//! for model folders (qtune-lm's `hub`) and datasets (qtune-data's `source`, `hub_dataset`).

/// `HF_HUB_OFFLINE` as huggingface_hub reads it: true (cache only, no network) when it is one of
/// 1/ON/YES/TRUE, any case.
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| is_true(&v))
}

/// The Hub's address: `HF_ENDPOINT` if set and non-empty (a mirror or a local test server),
/// else `https://huggingface.co`, as huggingface_hub reads it (a trailing `/` dropped).
pub fn endpoint() -> String {
    endpoint_from(std::env::var("HF_ENDPOINT").ok().as_deref())
}

/// [`endpoint`] for a given `HF_ENDPOINT` value.
fn endpoint_from(v: Option<&str>) -> String {
    match v.map(str::trim) {
        Some(v) if !v.is_empty() => v.trim_end_matches('/').to_string(),
        _ => DEFAULT_ENDPOINT.to_string(),
    }
}

/// The public Hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// huggingface_hub's `constants._is_true`: 1/ON/YES/TRUE in any case, surrounding spaces ignored.
pub fn is_true(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_uppercase().as_str(),
        "1" | "ON" | "YES" | "TRUE"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn endpoint_is_hf_endpoint_trimmed_else_the_public_hub() {
        assert_eq!(super::endpoint_from(None), super::DEFAULT_ENDPOINT);
        assert_eq!(super::endpoint_from(Some("  ")), super::DEFAULT_ENDPOINT);
        assert_eq!(
            super::endpoint_from(Some(" http://127.0.0.1:8080/ ")),
            "http://127.0.0.1:8080"
        );
    }

    #[test]
    fn offline_values_follow_huggingface_hub() {
        for v in ["1", "ON", "yes", "True", " true "] {
            assert!(super::is_true(v), "{v}");
        }
        for v in ["", "0", "off", "no", "false", "2"] {
            assert!(!super::is_true(v), "{v}");
        }
    }
}
