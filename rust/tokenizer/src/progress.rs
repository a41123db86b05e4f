//! Progress bars on stderr, and the logger that prints log lines above them; shared by
//! `kormo-tokenizer` and `prepare` (whose library code reports through the `log` facade).
//!
//! Bars (indicatif: position, rate, ETA) are drawn only when stderr is a terminal (and `TERM` is
//! not `dumb`); otherwise they are hidden and cost nothing, so logs and pipes get no escape codes.
//! Every bar belongs to one process-wide [`MultiProgress`], and the logger installed by
//! [`log_above_bars`] suspends it while writing a line, so log lines never tear a bar.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use std::fmt::Write;
use std::sync::OnceLock;

fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// What a bar counts.
#[derive(Clone, Copy, Debug)]
pub enum Unit {
    /// Input bytes, shown as sizes and a byte rate.
    Bytes,
    /// Items, named in the plural (`"merges"`), shown as counts and a per-second rate.
    Items(&'static str),
}

/// A bar of `len` units titled `prefix`, hidden unless stderr is a terminal. Its message
/// (`set_message`) is shown after the ETA.
pub fn bar(prefix: &str, len: u64, unit: Unit) -> ProgressBar {
    let template = match unit {
        Unit::Bytes => {
            "{prefix} [{wide_bar}] {decimal_bytes}/{decimal_total_bytes}, {decimal_bytes_per_sec}, ETA {eta} {msg}"
        }
        Unit::Items(_) => "{prefix} [{wide_bar}] {human_pos}/{human_len}, {rate}, ETA {eta} {msg}",
    };
    let mut style = ProgressStyle::with_template(template)
        .expect("progress template is valid")
        .progress_chars("=> ");
    if let Unit::Items(name) = unit {
        // Whole items per second (indicatif's `{per_sec}` prints four decimals).
        style = style.with_key("rate", move |state: &ProgressState, w: &mut dyn Write| {
            let _ = write!(w, "{:.0} {name}/s", state.per_sec());
        });
    }
    let bar = bars().add(ProgressBar::new(len).with_style(style));
    bar.set_prefix(prefix.to_string());
    bar
}

/// Whether bars are drawn (stderr is an attended terminal).
pub fn drawn() -> bool {
    !bars().is_hidden()
}

/// Installs the binaries' stderr logger (call it first thing in `main`): env_logger, filtered
/// by `RUST_LOG` (`warn` hides the info lines, `kormo_prep=debug` adds that crate's debug lines;
/// default `info`), writing [`write_record`] lines through the bars (each line is printed with
/// the bars cleared, then they are redrawn). Does nothing if a logger is already installed.
pub fn init_logging() {
    let logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
            .format(write_record)
            .build();
    let level = logger.filter();
    if log::set_boxed_logger(Box::new(AboveBars(logger))).is_ok() {
        log::set_max_level(level);
    }
}

/// A logger that clears the bars while `0` writes a line, then redraws them.
struct AboveBars<L>(L);

impl<L: log::Log> log::Log for AboveBars<L> {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        if self.0.enabled(record.metadata()) {
            bars().suspend(|| self.0.log(record));
        }
    }

    fn flush(&self) {
        self.0.flush()
    }
}

/// One log line as the binaries print it: info as the bare message (it is the tool's normal
/// output), other levels prefixed (`warning: skipped malformed input: ...`).
pub fn write_record(out: &mut impl std::io::Write, record: &log::Record) -> std::io::Result<()> {
    let prefix = match record.level() {
        log::Level::Info => return writeln!(out, "{}", record.args()),
        log::Level::Error => "error",
        log::Level::Warn => "warning",
        log::Level::Debug => "debug",
        log::Level::Trace => "trace",
    };
    writeln!(out, "{prefix}: {}", record.args())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(level: log::Level, message: &str) -> String {
        let mut out = Vec::new();
        let args = format_args!("{message}");
        let record = log::Record::builder().level(level).args(args).build();
        write_record(&mut out, &record).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn log_lines_are_plain_with_a_level_prefix_except_info() {
        assert_eq!(
            line(log::Level::Info, "source en: 3 files"),
            "source en: 3 files\n"
        );
        assert_eq!(line(log::Level::Warn, "skipped x"), "warning: skipped x\n");
        assert_eq!(line(log::Level::Error, "bad"), "error: bad\n");
        assert_eq!(line(log::Level::Debug, "d"), "debug: d\n");
    }

    #[test]
    fn bars_are_hidden_when_stderr_is_not_a_terminal() {
        // Under Bazel (and cargo in CI) stderr is a file; run from a terminal, there is
        // nothing to check.
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            return;
        }
        assert!(!drawn());
        for unit in [Unit::Bytes, Unit::Items("merges")] {
            let bar = bar("count en", 100, unit);
            bar.inc(50);
            assert!(bar.is_hidden());
        }
    }
}
