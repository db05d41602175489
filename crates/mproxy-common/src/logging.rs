//! Where logs go and in what shape: `--log-format text|json`, `--log-file`
//!
//! Logs go to stderr by default (stdout is reserved for data, `--tee`);
//! `--log-file PATH` appends them to a file instead (opened once at
//! start-up with `O_APPEND`, so `logrotate`'s `copytruncate` works and
//! several processes may share one file without tearing lines).
//!
//! `text` writes one line per event, as before. `json` writes one JSON
//! object per line (tracing-subscriber's JSON formatter), with the event's
//! fields at the top level next to `timestamp`, `level` and `message`:
//!
//! ```text
//! {"timestamp":"2026-01-05T10:00:00.123456Z","level":"INFO","message":"connected","upstream":"feed.example.org:4001"}
//! ```
//!
//! Errors that stop a binary before it runs (bad input, exit code 2) are
//! not log events: they stay one plain line on stderr in every format, so
//! a supervisor shows why a service did not start.

use std::fs::{File, OpenOptions};
use std::io::IsTerminal as _;
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::EnvFilter;

/// Shape of the log lines
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event
    #[default]
    Text,
    /// One JSON object per line
    Json,
}

/// The log file cannot be opened; the message names the flag and the file
#[derive(Debug, thiserror::Error)]
#[error("--log-file {path}: cannot open for appending: {source}")]
pub struct LogError {
    path: String,
    source: std::io::Error,
}

/// Install the process-wide log subscriber
///
/// `level` is the default filter (`info`, `debug`, ...); `RUST_LOG`
/// overrides it. If a subscriber is already installed this does nothing
/// (and opens no file).
///
/// # Errors
/// The log file cannot be opened for appending.
pub fn init(level: &str, format: LogFormat, file: Option<&Path>) -> Result<(), LogError> {
    if tracing::dispatcher::has_been_set() {
        return Ok(());
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let (writer, ansi) = match file {
        Some(path) => (BoxMakeWriter::new(Mutex::new(open_append(path)?)), false),
        None => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::stderr().is_terminal(),
        ),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    // a second subscriber (tests, a library user) is not an error
    let _ = match format {
        LogFormat::Text => builder.with_ansi(ansi).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    Ok(())
}

fn open_append(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LogError {
            path: path.display().to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_unopenable_file_is_named() {
        let e = open_append(Path::new("/nonexistent/dir/x.log"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--log-file /nonexistent/dir/x.log: cannot open"),
            "{e}"
        );
    }
}
