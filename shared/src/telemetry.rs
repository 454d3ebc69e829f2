//! Tracing set-up: JSON lines in Lambda (CloudWatch Logs Insights parses them),
//! human-readable text locally. Every request runs inside a `request` span
//! carrying its request id, so every line it logs names the request.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::LogFormat;

/// Installs the global subscriber. Safe to call more than once (later calls are
/// ignored), which tests and the local stack rely on.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::NONE);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            // Lambda adds its own timestamp to every line.
            .without_time()
            .with_target(false)
            .try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
}
