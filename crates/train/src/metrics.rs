//! Metrics as JSON lines (one object per event, appended and flushed as they happen, so a
//! crashed run keeps its history) and the loss-curve PNG drawn from them at the end.
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

pub use crate::files::{LOSS_PLOT_FILE, METRICS_FILE};

/// DejaVu Sans (Bitstream Vera license, assets/fonts/DejaVuSans-LICENSE.txt): plotters'
/// ab_glyph backend has no system font lookup, so the text face ships with the binary.
static FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: line {line}: {source}")]
    Parse {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
    #[error("{path}: drawing the loss curve failed: {msg}")]
    Plot { path: PathBuf, msg: String },
}

/// serde_json writes a non-finite f64 as `null`; read it back as NaN.
fn f64_or_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// One line of metrics.jsonl.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Train {
        step: usize,
        loss: f64,
        learning_rate: f64,
        /// The last step's global norm before clipping; `null` (read back as NaN) when that
        /// step's float16 gradients overflowed.
        #[serde(deserialize_with = "f64_or_null")]
        grad_norm: f64,
        /// Target (loss) tokens trained on so far.
        tokens: u64,
        /// Input tokens (non-pad, forward + backward) per second since the last line.
        tokens_per_s: f64,
        /// float16 loss scaling only: the scale after this step, and the steps skipped so far
        /// because their gradients overflowed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        loss_scale: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        skipped_steps: Option<u64>,
    },
    Eval {
        step: usize,
        eval_loss: f64,
        eval_tokens: u64,
        best: bool,
        /// `[training] eval_generate_samples`: the generation metric's JSON (e.g.
        /// `{"exact_match": 50.0, "correct": 2, "total": 4}`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        generation: Option<serde_json::Value>,
    },
    /// End-of-run task metrics (EM/F1 or accuracy) with free-form fields.
    Final {
        step: usize,
        metrics: serde_json::Value,
    },
}

impl Event {
    /// The optimizer step the event belongs to.
    pub fn step(&self) -> usize {
        match self {
            Event::Train { step, .. } | Event::Eval { step, .. } | Event::Final { step, .. } => {
                *step
            }
        }
    }
}

/// Drops the events of `dir/metrics.jsonl` after `step` (a resumed run redoes those steps), and
/// a torn last line (a crash mid-write). The file is rewritten atomically only if something is
/// dropped; a missing file is fine. Returns how many lines were dropped.
pub fn truncate_after(dir: &Path, step: usize) -> Result<usize, MetricsError> {
    let path = dir.join(METRICS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(MetricsError::Io { path, source }),
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut kept = String::with_capacity(text.len());
    let mut dropped = 0;
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Event>(line) {
            Ok(e) if e.step() <= step => {
                kept.push_str(line);
                kept.push('\n');
            }
            Ok(_) => dropped += 1,
            // Only the last line can be torn by a crash; anything else is a real error.
            Err(_) if i + 1 == lines.len() => {
                tracing::warn!(path = %path.display(), line = i + 1, "dropping a torn last line");
                dropped += 1;
            }
            Err(source) => {
                return Err(MetricsError::Parse {
                    path,
                    line: i + 1,
                    source,
                })
            }
        }
    }
    if dropped == 0 {
        return Ok(0);
    }
    let tmp = dir.join(format!(".tmp-{METRICS_FILE}"));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| MetricsError::Io { path: p, source }
    };
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(kept.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(dropped)
}

pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Appends to `dir/metrics.jsonl` (a resumed run continues the same file).
    pub fn open(dir: &Path) -> Result<Self, MetricsError> {
        let path = dir.join(METRICS_FILE);
        std::fs::create_dir_all(dir).map_err(|source| MetricsError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| MetricsError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(Self { path, file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, event: &Event) -> Result<(), MetricsError> {
        let mut line = serde_json::to_string(event).map_err(|source| MetricsError::Parse {
            path: self.path.clone(),
            line: 0,
            source,
        })?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|source| MetricsError::Io {
                path: self.path.clone(),
                source,
            })
    }
}

pub fn read_events(path: &Path) -> Result<Vec<Event>, MetricsError> {
    let f = File::open(path).map_err(|source| MetricsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|source| MetricsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line).map_err(|source| MetricsError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                source,
            })?,
        );
    }
    Ok(out)
}

/// Train loss (per logged step) and eval loss against the step, log-free linear axes.
/// A resumed run may have logged a step twice; the later value wins.
pub fn plot_loss(events: &[Event], out: &Path) -> Result<(), MetricsError> {
    let err = |msg: String| MetricsError::Plot {
        path: out.to_path_buf(),
        msg,
    };
    let mut train: std::collections::BTreeMap<usize, f64> = Default::default();
    let mut eval: std::collections::BTreeMap<usize, f64> = Default::default();
    for e in events {
        match e {
            Event::Train { step, loss, .. } => {
                train.insert(*step, *loss);
            }
            Event::Eval {
                step, eval_loss, ..
            } => {
                eval.insert(*step, *eval_loss);
            }
            Event::Final { .. } => {}
        }
    }
    let all: Vec<f64> = train
        .values()
        .chain(eval.values())
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    if all.is_empty() {
        return Err(err("no finite losses to plot".into()));
    }
    let (lo, hi) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let max_step = train
        .keys()
        .chain(eval.keys())
        .copied()
        .max()
        .unwrap_or(1)
        .max(1);

    // Registering twice is harmless (same bytes replace the entry).
    let has_font = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok();
    let root = BitMapBackend::new(out, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(60);
    if has_font {
        builder.caption("loss", ("sans-serif", 24));
    }
    let mut chart = builder
        .build_cartesian_2d(0f64..max_step as f64, (lo - pad)..(hi + pad))
        .map_err(|e| err(e.to_string()))?;
    let mut mesh = chart.configure_mesh();
    if has_font {
        mesh.x_desc("step").y_desc("loss (nats/token)");
    } else {
        mesh.disable_x_mesh().x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(|e| err(e.to_string()))?;
    let train_pts: Vec<(f64, f64)> = train.iter().map(|(s, l)| (*s as f64, *l)).collect();
    let eval_pts: Vec<(f64, f64)> = eval.iter().map(|(s, l)| (*s as f64, *l)).collect();
    let s = chart
        .draw_series(LineSeries::new(train_pts, BLUE.stroke_width(2)))
        .map_err(|e| err(e.to_string()))?;
    if has_font {
        s.label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    }
    let s = chart
        .draw_series(LineSeries::new(eval_pts.clone(), RED.stroke_width(2)))
        .map_err(|e| err(e.to_string()))?;
    if has_font {
        s.label("eval")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    }
    chart
        .draw_series(eval_pts.iter().map(|p| Circle::new(*p, 4, RED.filled())))
        .map_err(|e| err(e.to_string()))?;
    if has_font {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_after_drops_later_steps_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = MetricsLog::open(dir.path()).unwrap();
        let train = |step| Event::Train {
            step,
            loss: 1.0,
            learning_rate: 1e-3,
            grad_norm: 0.5,
            tokens: 10,
            tokens_per_s: 1.0,
            loss_scale: None,
            skipped_steps: None,
        };
        for step in 1..=5 {
            log.write(&train(step)).unwrap();
        }
        drop(log);
        let path = dir.path().join(METRICS_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"event\":\"train\",\"st").unwrap();
        drop(f);
        assert_eq!(truncate_after(dir.path(), 3).unwrap(), 3);
        assert_eq!(
            read_events(&path).unwrap(),
            (1..=3).map(train).collect::<Vec<_>>()
        );
        // Nothing to drop: the file is left as is; no file: fine.
        assert_eq!(truncate_after(dir.path(), 3).unwrap(), 0);
        assert_eq!(truncate_after(&dir.path().join("none"), 3).unwrap(), 0);
    }

    #[test]
    fn jsonl_roundtrip_and_png() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = MetricsLog::open(dir.path()).unwrap();
        let mut events = Vec::new();
        for step in 1..=20 {
            events.push(Event::Train {
                step,
                // Dyadic values: exact through JSON (serde_json's default float parsing is not
                // round-trip exact for every f64).
                loss: 10.0 - 0.25 * step as f64,
                learning_rate: 1e-3,
                grad_norm: 0.5,
                tokens: 100 * step as u64,
                tokens_per_s: 1000.0,
                loss_scale: None,
                skipped_steps: None,
            });
            if step % 5 == 0 {
                events.push(Event::Eval {
                    step,
                    eval_loss: 10.5 - 0.25 * step as f64,
                    eval_tokens: 64,
                    best: true,
                    generation: None,
                });
            }
        }
        events.push(Event::Final {
            step: 20,
            metrics: serde_json::json!({"exact": 12.5, "f1": 20.0}),
        });
        for e in &events {
            log.write(e).unwrap();
        }
        drop(log);
        let back = read_events(&dir.path().join(METRICS_FILE)).unwrap();
        assert_eq!(back, events);
        let png = dir.path().join(LOSS_PLOT_FILE);
        plot_loss(&back, &png).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(bytes.len() > 5000, "a drawn chart, not an empty image");
    }
}
