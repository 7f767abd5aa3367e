//! Progress reporting for long work: a bar on a terminal, JSON lines for
//! machines (`--json`), nothing otherwise.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use crate::units::{fmt_bytes, fmt_rate};

/// How progress is shown.
pub enum Progress {
    /// An indicatif bar on stderr.
    Bar(ProgressBar),
    /// One JSON object per line on stdout.
    Json { start: Instant, what: &'static str },
    /// Silent.
    None,
}

impl Progress {
    /// Pick a reporter: JSON when asked, a bar when stderr is a terminal.
    pub fn new(what: &'static str, total: u64, json: bool, quiet: bool) -> Progress {
        if json {
            return Progress::Json {
                start: Instant::now(),
                what,
            };
        }
        if quiet || !std::io::stderr().is_terminal() {
            return Progress::None;
        }
        let bar = ProgressBar::new(total);
        let style = ProgressStyle::with_template(
            "{prefix:>8} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(what);
        Progress::Bar(bar)
    }

    /// Report `done` of `total` bytes, with an optional phase message.
    pub fn update(&self, done: u64, total: u64, msg: &str) {
        match self {
            Progress::Bar(b) => {
                b.set_length(total);
                b.set_position(done);
                if !msg.is_empty() {
                    b.set_message(msg.to_string());
                }
            }
            Progress::Json { start, what } => {
                let secs = start.elapsed().as_secs_f64();
                let line = serde_json::json!({
                    "event": "progress",
                    "what": what,
                    "done": done,
                    "total": total,
                    "elapsed": (secs * 1000.0).round() / 1000.0,
                    "bytes_per_sec": if secs > 0.0 { (done as f64 / secs) as u64 } else { 0 },
                    "phase": msg,
                });
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            Progress::None => {}
        }
    }

    /// Clear the bar.
    pub fn finish(&self) {
        if let Progress::Bar(b) = self {
            b.finish_and_clear();
        }
    }
}

/// `1.00 GiB in 2.1 s (512 MB/s)`.
pub fn summary_line(bytes: u64, secs: f64) -> String {
    format!(
        "{} in {:.2} s ({})",
        fmt_bytes(bytes),
        secs,
        fmt_rate(bytes, secs)
    )
}
