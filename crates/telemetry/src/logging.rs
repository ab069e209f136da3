//! Log output of both binaries: `tracing` events to standard error, as human-readable text or
//! as one JSON object per line (`--log-format json`, for log shippers). Colours are used only
//! when standard error is a terminal and `NO_COLOR` is unset, so that log files and container
//! logs carry no ANSI escapes.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The filter when `RUST_LOG` is unset: our own events at info, the chatty libraries (openraft,
/// sled, h2, tower) at warnings.
pub const DEFAULT_FILTER: &str = "info,openraft=warn,sled=warn,h2=warn,tower=warn";

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `2026-12-01T10:00:00.000Z  INFO replica{node=1}: ravel_node: message key=value`.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields`, `spans`.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?} (expected text or json)"
            )),
        }
    }
}

/// Whether text logs may use colours: only on a terminal, and never with `NO_COLOR` set.
pub fn use_colours() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the process's log subscriber. `RUST_LOG` overrides [`DEFAULT_FILTER`].
pub fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(use_colours()).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}
