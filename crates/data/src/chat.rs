//! Chat templates: the Jinja `chat_template` of a checkpoint (`tokenizer_config.json` or the GGUF
//! `tokenizer.chat_template`) rendered byte for byte as HF transformers'
//! `tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=…)`.
//!
//! HF compiles a template in `ImmutableSandboxedEnvironment(trim_blocks=True,
//! lstrip_blocks=True, extensions=[loopcontrols])` with:
//! - the filter `tojson` = `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
//!   sort_keys=False)` (not Jinja's HTML-escaping one): [`python_json`] writes Python's text;
//! - the global `raise_exception(message)`, here a [`DataError::TemplateRaised`] naming the
//!   template;
//! - the context: the tokenizer's special tokens (`bos_token`, `eos_token`, …, see
//!   [`ChatTemplate::with_var`]), `messages`, `add_generation_prompt`; `tools` and `documents`
//!   stay undefined when not given.
//!
//! minijinja runs the template with its builtins, `loop_controls`, and minijinja-contrib's
//! `pycompat` for the Python methods templates call (`content.strip()`, `role.startswith(…)`,
//! `message.items()`). Not provided: `strftime_now` (templates that test `strftime_now is
//! defined`, like Llama 3.1's, fall back to their fixed date, so rendering stays deterministic)
//! and HF's `{% generation %}` tag. Golden strings: tests/fixtures/chat_templates (HF 5.25).
use std::fmt::Write as _;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// Marks the error `raise_exception` returns so rendering can tell it from engine errors.
const RAISED: &str = "\u{1}raise_exception\u{1}";

/// One chat turn as HF hands it to the template: `{"role": …, "content": …}` (in that order, so
/// `message | tojson` prints what Python prints).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template plus the special-token variables HF puts in its context.
pub struct ChatTemplate {
    name: String,
    env: Environment<'static>,
    vars: Vec<(String, String)>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("name", &self.name)
            .field("vars", &self.vars)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`; `name` (a file or model path) is what errors report. A syntax error
    /// is a [`DataError::ChatTemplate`].
    pub fn new(name: impl Into<String>, source: &str) -> Result<Self> {
        let name = name.into();
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| template_error(&name, &e))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<Value, Error> {
                Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("{RAISED}{message}"),
                ))
            },
        );
        env.add_filter("tojson", tojson_filter);
        env.add_template_owned("chat_template", source.to_string())
            .map_err(|e| template_error(&name, &e))?;
        Ok(ChatTemplate {
            name,
            env,
            vars: Vec::new(),
        })
    }

    /// Adds a context variable, e.g. `bos_token` / `eos_token` (the tokenizer's special tokens,
    /// or `apply_chat_template`'s keyword arguments, which override them).
    pub fn with_var(mut self, name: &str, value: &str) -> Self {
        self.vars.retain(|(k, _)| k != name);
        self.vars.push((name.to_string(), value.to_string()));
        self
    }

    /// What errors call this template.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=…)`.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat_template")
            .map_err(|e| template_error(&self.name, &e))?;
        let mut ctx: Vec<(String, Value)> = self
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        ctx.push((
            "messages".into(),
            Value::from(minijinja::value::Serde(messages)),
        ));
        ctx.push((
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        ));
        let ctx = Value::from_pairs(ctx);
        tmpl.render(ctx).map_err(|e| template_error(&self.name, &e))
    }
}

/// A minijinja error as a [`DataError`]: `raise_exception`'s message, or the engine's text with
/// its line.
fn template_error(name: &str, e: &Error) -> DataError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(mj) = err.downcast_ref::<Error>() {
            if let Some(msg) = mj.detail().and_then(|d| d.strip_prefix(RAISED)) {
                return DataError::TemplateRaised {
                    template: name.to_string(),
                    message: msg.to_string(),
                };
            }
        }
        cur = err.source();
    }
    let mut message = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let _ = write!(message, ": {s}");
        src = s.source();
    }
    DataError::ChatTemplate {
        template: name.to_string(),
        message,
    }
}

/// HF's `tojson` filter: `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`, each keyword settable.
fn tojson_filter(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let indent: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match (v.as_usize(), v.as_str()) {
            (Some(n), _) => Some(" ".repeat(n)),
            (None, Some(s)) => Some(s.to_string()),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                ))
            }
        },
    };
    let seps = match separators {
        Some(v) if !v.is_none() => {
            let items: Vec<Value> = v.try_iter()?.collect();
            match items.as_slice() {
                [a, b] if a.as_str().is_some() && b.as_str().is_some() => Some((
                    a.as_str().unwrap_or_default().to_string(),
                    b.as_str().unwrap_or_default().to_string(),
                )),
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair of strings",
                    ))
                }
            }
        }
        _ => None,
    };
    let opts = JsonOptions {
        ensure_ascii: ensure_ascii.unwrap_or(false),
        indent,
        separators: seps,
        sort_keys: sort_keys.unwrap_or(false),
    };
    Ok(Value::from(python_json(value, &opts)?))
}

/// `json.dumps` keyword arguments.
#[derive(Debug, Clone, Default)]
pub struct JsonOptions {
    pub ensure_ascii: bool,
    /// `None`: one line; `Some(unit)`: one item per line, nested levels repeat `unit`.
    pub indent: Option<String>,
    /// `(item, key)` separators; default `(", ", ": ")`, or `(",", ": ")` with an indent.
    pub separators: Option<(String, String)>,
    pub sort_keys: bool,
}

/// A template value as Python's `json.dumps` writes it (undefined and none → `null`, floats as
/// Python's `repr`, `NaN`/`Infinity` as Python allows them).
pub fn python_json(value: &Value, opts: &JsonOptions) -> Result<String, Error> {
    let (item_sep, key_sep) = match (&opts.separators, &opts.indent) {
        (Some((a, b)), _) => (a.clone(), b.clone()),
        (None, Some(_)) => (",".to_string(), ": ".to_string()),
        (None, None) => (", ".to_string(), ": ".to_string()),
    };
    let mut out = String::new();
    write_json(&mut out, value, opts, &item_sep, &key_sep, 0)?;
    Ok(out)
}

fn newline_indent(out: &mut String, opts: &JsonOptions, depth: usize) {
    if let Some(unit) = &opts.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(unit);
        }
    }
}

fn write_json(
    out: &mut String,
    value: &Value,
    opts: &JsonOptions,
    item_sep: &str,
    key_sep: &str,
    depth: usize,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number if value.is_integer() => out.push_str(&value.to_string()),
        ValueKind::Number => {
            let f = f64::try_from(value.clone())?;
            out.push_str(&python_float_repr(f));
        }
        ValueKind::String => write_json_str(out, value.as_str().unwrap_or_default(), opts),
        ValueKind::Bytes => {
            let s = String::from_utf8_lossy(value.as_bytes().unwrap_or_default()).into_owned();
            write_json_str(out, &s, opts);
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if opts.sort_keys {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline_indent(out, opts, depth + 1);
                // Python turns non-string keys into strings (`{1: 2}` → `{"1": 2}`).
                match k.as_str() {
                    Some(s) => write_json_str(out, s, opts),
                    None => {
                        let mut s = String::new();
                        write_json(&mut s, k, opts, item_sep, key_sep, depth + 1)?;
                        write_json_str(out, s.trim_matches('"'), opts);
                    }
                }
                out.push_str(key_sep);
                write_json(out, &value.get_item(k)?, opts, item_sep, key_sep, depth + 1)?;
            }
            newline_indent(out, opts, depth);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline_indent(out, opts, depth + 1);
                write_json(out, v, opts, item_sep, key_sep, depth + 1)?;
            }
            newline_indent(out, opts, depth);
            out.push(']');
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!(
                    "tojson: object of kind {} is not JSON serializable",
                    value.kind()
                ),
            ))
        }
    }
    Ok(())
}

/// Python's `json` string escaping: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`, other controls
/// as `\u00XX`; with `ensure_ascii` every non-ASCII character as `\uXXXX` (UTF-16 pairs).
fn write_json_str(out: &mut String, s: &str, opts: &JsonOptions) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if opts.ensure_ascii && !c.is_ascii() => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest round-trip digits, positional for exponents in
/// [-4, 16), else `d.ddde+XX`; `NaN`, `Infinity`, `-Infinity` as `json.dumps` writes them.
pub fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let sci = format!("{f:e}"); // shortest digits: "1.5e-5", "1e16"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let s = format!("{f}");
        if s.contains('.') {
            s
        } else {
            s + ".0"
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python_repr() {
        for (f, s) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (123456789012345.6, "123456789012345.6"),
            (-2.5, "-2.5"),
        ] {
            assert_eq!(python_float_repr(f), s);
        }
    }

    #[test]
    fn tojson_is_pythons_json_dumps() {
        let t = ChatTemplate::new(
            "t",
            "{{ messages[0] | tojson }}|{{ messages | tojson(indent=2) }}|{{ 'é<&>' | tojson }}",
        )
        .unwrap();
        let out = t
            .render(&[ChatMessage::new("user", "a\"b\n")], false)
            .unwrap();
        assert_eq!(
            out,
            "{\"role\": \"user\", \"content\": \"a\\\"b\\n\"}|[\n  {\n    \"role\": \"user\",\n    \
             \"content\": \"a\\\"b\\n\"\n  }\n]|\"é<&>\""
        );
    }

    #[test]
    fn raise_exception_is_a_typed_error_naming_the_template() {
        let t = ChatTemplate::new(
            "my.jinja",
            "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}",
        )
        .unwrap();
        let err = t
            .render(&[ChatMessage::new("assistant", "x")], false)
            .unwrap_err();
        assert!(
            matches!(&err, DataError::TemplateRaised { template, message }
                if template == "my.jinja" && message == "first must be user"),
            "{err:?}"
        );
        let err = ChatTemplate::new("bad.jinja", "{% for %}").unwrap_err();
        assert!(
            matches!(&err, DataError::ChatTemplate { template, .. } if template == "bad.jinja")
        );
    }

    #[test]
    fn python_string_methods_and_loop_controls_work() {
        let t = ChatTemplate::new(
            "t",
            "{% for m in messages %}{% if m.role.startswith('sys') %}{% continue %}{% endif %}\
             [{{ m.content.strip() }}]{% endfor %}",
        )
        .unwrap();
        let msgs = [
            ChatMessage::new("system", "s"),
            ChatMessage::new("user", "  u  "),
        ];
        assert_eq!(t.render(&msgs, false).unwrap(), "[u]");
    }
}
