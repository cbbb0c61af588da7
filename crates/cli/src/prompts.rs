//! `qtune generate --prompts-file`: prompts from a file, continuations out as JSON lines.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};

/// The prompts of `path`: JSON lines with a string field `prompt` each (`.jsonl`), else one
/// prompt per line (a trailing `\r` dropped, empty lines skipped). Errors name the file and line.
pub fn read(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading prompts from {}", path.display()))?;
    let jsonl = path.extension().is_some_and(|e| e == "jsonl");
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        if !jsonl {
            out.push(line.to_string());
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        match v.get("prompt") {
            Some(serde_json::Value::String(p)) => out.push(p.clone()),
            Some(other) => bail!("{}: field `prompt` is {other}, not a string", at()),
            None => bail!("{}: no field `prompt`", at()),
        }
    }
    Ok(out)
}

/// Writes `{"index", "prompt", "completion"}` per prompt as JSON lines to `path` (created; an
/// existing file is an error) or standard output.
pub fn write(
    path: Option<&Path>,
    prompts: &[String],
    completions: &[String],
) -> anyhow::Result<()> {
    let mut w: Box<dyn Write> = match path {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create_new(p)
                .with_context(|| format!("creating {} (it must not exist)", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    for (i, (p, c)) in prompts.iter().zip(completions).enumerate() {
        let line = serde_json::json!({"index": i, "prompt": p, "completion": c});
        writeln!(w, "{line}").context("writing the completions")?;
    }
    w.flush().context("writing the completions")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_and_text_files_read_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.jsonl");
        std::fs::write(
            &f,
            "{\"prompt\": \"a b\"}\n\n{\"prompt\": \"c\", \"x\": 1}\r\n",
        )
        .unwrap();
        assert_eq!(read(&f).unwrap(), ["a b", "c"]);
        std::fs::write(&f, "{\"prompt\": \"a\"}\n{\"text\": \"b\"}\n").unwrap();
        let e = format!("{:#}", read(&f).unwrap_err());
        assert!(
            e.contains("p.jsonl:2") && e.contains("no field `prompt`"),
            "{e}"
        );
        std::fs::write(&f, "{\"prompt\": 3}\n").unwrap();
        let e = format!("{:#}", read(&f).unwrap_err());
        assert!(e.contains("p.jsonl:1") && e.contains("not a string"), "{e}");
        std::fs::write(&f, "{\"prompt\": \n").unwrap();
        let e = format!("{:#}", read(&f).unwrap_err());
        assert!(e.contains("p.jsonl:1: not JSON"), "{e}");
        let t = dir.path().join("p.txt");
        std::fs::write(&t, "first line\r\n\nsecond {\"prompt\"}\n").unwrap();
        assert_eq!(read(&t).unwrap(), ["first line", "second {\"prompt\"}"]);
    }

    #[test]
    fn output_is_json_lines_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("out.jsonl");
        write(
            Some(&f),
            &["p0".into(), "p1".into()],
            &[" x".into(), " y".into()],
        )
        .unwrap();
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&f)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[1]["index"], 1);
        assert_eq!(lines[1]["prompt"], "p1");
        assert_eq!(lines[1]["completion"], " y");
        let before = std::fs::read(&f).unwrap();
        assert!(write(Some(&f), &["q".into()], &["z".into()]).is_err());
        assert_eq!(std::fs::read(&f).unwrap(), before);
    }
}
