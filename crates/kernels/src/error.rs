//! Typed errors: each names the tensor it is about.

/// Errors from building, quantizing or exporting a [`crate::QuantWeight`].
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The quantized tensor is not a 2-D `[out, in]` weight.
    #[error(
        "tensor `{name}`: a quantized linear weight must be 2-D [out, in], got shape {shape:?}"
    )]
    NotMatrix { name: String, shape: Vec<usize> },
    /// Codes or absmax have a length that does not fit the shape and block size.
    #[error("tensor `{name}`: {field} has {got} entries, expected {expected}")]
    Length {
        name: String,
        field: &'static str,
        expected: usize,
        got: usize,
    },
    /// Reading a device tensor back to the host failed.
    #[error("tensor `{name}`: could not read {field} from the device: {reason}")]
    Readback {
        name: String,
        field: &'static str,
        reason: String,
    },
    /// The CPU reference quantizer rejected the input (NaN/Inf, block size, lengths).
    #[error("tensor `{name}`: {source}")]
    Quant {
        name: String,
        #[source]
        source: qtune_quant::QuantError,
    },
    /// Block size not supported by the quantizer.
    #[error("tensor `{name}`: unsupported block size {blocksize} for {format:?}")]
    Blocksize {
        name: String,
        format: qtune_quant::QuantFormat,
        blocksize: usize,
    },
    /// NaN or Inf in a weight that is being quantized.
    #[error("tensor `{name}`: contains NaN or Inf, cannot quantize")]
    NonFinite { name: String },
    /// Recording or replaying a device graph (CUDA graph) failed.
    #[error("device graph: {reason}")]
    Graph { reason: String },
    /// The GPU cannot run what was asked (compute capability, dtype), said before any work.
    #[error("{device}: {reason}")]
    Device { device: String, reason: String },
    /// An environment switch has a value other than the ones it takes.
    #[error("{var}={value:?}: expected {expected}")]
    Setting {
        var: &'static str,
        value: String,
        expected: String,
    },
}

/// An on/off environment switch `var` whose value is `value` (`None`: unset, which is on): `1`
/// on, `0` off (`off` and `on` say what each means, for the error).
///
/// # Errors
/// [`KernelError::Setting`] for any other value, naming the variable and both choices.
pub fn switch_setting(
    var: &'static str,
    value: Option<&str>,
    off: &str,
    on: &str,
) -> Result<bool, KernelError> {
    match value {
        None | Some("1") => Ok(true),
        Some("0") => Ok(false),
        Some(v) => Err(KernelError::Setting {
            var,
            value: v.to_string(),
            expected: format!("0 ({off}) or 1 ({on})"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_takes_0_and_1_and_names_the_variable_otherwise() {
        assert!(switch_setting("X", None, "off", "on").unwrap());
        assert!(switch_setting("X", Some("1"), "off", "on").unwrap());
        assert!(!switch_setting("X", Some("0"), "off", "on").unwrap());
        for bad in ["off", "", "true", "2"] {
            let e = switch_setting("QTUNE_X", Some(bad), "a", "b")
                .unwrap_err()
                .to_string();
            assert_eq!(e, format!("QTUNE_X={bad:?}: expected 0 (a) or 1 (b)"));
        }
    }
}
