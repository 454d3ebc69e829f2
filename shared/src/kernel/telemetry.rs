//! Tracing set-up: JSON lines in Lambda (CloudWatch Logs Insights parses them),
//! human-readable text locally.
//!
//! Every line logged while serving a Lambda invocation names it: the HTTP
//! request span, the worker's batch and message spans and the scheduler's task
//! span carry `lambda_request_id` (the id of the invocation, as in Lambda's
//! `REPORT` line) and `xray_trace_id`, taken from the invocation's context
//! ([`Invocation`]). The JSON formatter prints the innermost span's fields under
//! `span`, so each of those spans carries both.
//!
//! The level: `RUST_LOG` when set (an `EnvFilter`), else Lambda's
//! `AWS_LAMBDA_LOG_LEVEL` (the function's log-level control), else `info`.
//! The format is [`crate::kernel::config::Config::log_format`].

use std::future::Future;
use std::io::IsTerminal;
use std::sync::Mutex;

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{FmtSpan, FormatEvent, FormatFields, JsonFields, Writer};
use tracing_subscriber::registry::LookupSpan;

use crate::kernel::config::LogFormat;

/// Installs the global subscriber, its filter read from the process
/// environment (see [`filter_directives`]). Safe to call more than once
/// (later calls are ignored), which tests and the local stack rely on.
pub fn init(format: LogFormat) {
    let directives = filter_directives(|name| std::env::var(name).ok());
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::NONE);
    let _ = match format {
        LogFormat::Json => {
            let json = tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                // Lambda adds its own timestamp to every line.
                .without_time()
                .with_target(false);
            builder
                .fmt_fields(JsonFields::new())
                .event_format(NamingInvocation(json))
                .try_init()
        }
        // Colours only on a terminal: in Lambda (LOG_FORMAT=text) escape codes
        // would land in CloudWatch.
        LogFormat::Text => builder
            .with_target(false)
            .with_ansi(std::io::stdout().is_terminal())
            .try_init(),
    };
}

/// A JSON event format that names the invocation being served on lines that
/// do not: those logged outside its spans, by tasks the invocation started
/// without them (the database connection's task logging the server's
/// `NOTICE`s, for one). Their `span` gets the invocation's ids (and, if they
/// had none, the name `invocation`), so every line of an invocation has
/// `span.lambda_request_id`.
struct NamingInvocation<F>(F);

impl<S, N, F> FormatEvent<S, N> for NamingInvocation<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0
            .format_event(context, Writer::new(&mut line), event)?;
        match Invocation::serving() {
            Some(invocation) => writer.write_str(&name_invocation(line, &invocation)),
            None => writer.write_str(&line),
        }
    }
}

/// `line` (a JSON object and a newline) with `invocation`'s ids in its
/// `span`, unless it names an invocation already.
fn name_invocation(line: String, invocation: &Invocation) -> String {
    if line.contains("\"lambda_request_id\"") {
        return line;
    }
    let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_str(line.trim_end()) else {
        return line;
    };
    let span = fields
        .entry("span")
        .or_insert_with(|| serde_json::json!({"name": "invocation"}));
    if let serde_json::Value::Object(span) = span {
        if let Some(id) = invocation.request_id() {
            span.insert("lambda_request_id".into(), id.into());
        }
        if let Some(id) = invocation.trace_id() {
            span.insert("xray_trace_id".into(), id.into());
        }
    }
    format!("{}\n", serde_json::Value::Object(fields))
}

/// The filter: `RUST_LOG` when it is set and valid, else the level Lambda's
/// advanced logging controls give in `AWS_LAMBDA_LOG_LEVEL` (`TRACE`, `DEBUG`,
/// `INFO`, `WARN`, `ERROR`, `FATAL`, any case; `FATAL` is `error`), else `info`.
pub fn filter_directives(lookup: impl Fn(&str) -> Option<String>) -> String {
    let set = |name: &str| {
        lookup(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if let Some(rust_log) = set("RUST_LOG")
        && EnvFilter::try_new(&rust_log).is_ok()
    {
        return rust_log;
    }
    set("AWS_LAMBDA_LOG_LEVEL")
        .and_then(|level| lambda_level(&level))
        .unwrap_or("info")
        .to_string()
}

/// A level of Lambda's log-level control as a tracing level.
fn lambda_level(level: &str) -> Option<&'static str> {
    Some(match level.to_ascii_uppercase().as_str() {
        "TRACE" => "trace",
        "DEBUG" => "debug",
        "INFO" => "info",
        "WARN" | "WARNING" => "warn",
        "ERROR" | "FATAL" => "error",
        _ => return None,
    })
}

/// The ids of the Lambda invocation being served: its request id (Lambda's
/// `Lambda-Runtime-Aws-Request-Id`, the `RequestId` of its `START`/`REPORT`
/// lines) and its X-Ray trace header (`Root=1-…;Parent=…;Sampled=…`). Both
/// `None` outside Lambda (the local stack, tests calling the code directly).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invocation {
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
}

impl Invocation {
    pub fn from_context(context: &lambda_runtime::Context) -> Self {
        Self {
            request_id: Some(context.request_id.clone()).filter(|id| !id.is_empty()),
            trace_id: context.xray_trace_id.clone().filter(|id| !id.is_empty()),
        }
    }

    /// The request id as a span field value (omitted from the line when `None`).
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    /// The trace id as a span field value (omitted from the line when `None`).
    pub fn trace_id(&self) -> Option<&str> {
        self.trace_id.as_deref()
    }

    /// Runs `future` as this invocation: [`Invocation::current`] inside it
    /// answers `self` (metrics read it; spans are made from it). A Lambda
    /// invocation (one with a request id) is also the one the process is
    /// serving ([`Invocation::serving`]) until `future` ends: a Lambda
    /// execution environment serves one invocation at a time.
    pub async fn scope<F: Future>(self, future: F) -> F::Output {
        let _serving = self
            .request_id
            .is_some()
            .then(|| Serving::start(self.clone()));
        INVOCATION.scope(self, future).await
    }

    /// The Lambda invocation the process is serving, seen from any task.
    pub fn serving() -> Option<Self> {
        SERVING.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The invocation the current task serves, if it runs inside
    /// [`Invocation::scope`]; the empty one otherwise.
    pub fn current() -> Self {
        INVOCATION.try_with(Clone::clone).unwrap_or_default()
    }
}

tokio::task_local! {
    static INVOCATION: Invocation;
}

static SERVING: Mutex<Option<Invocation>> = Mutex::new(None);

/// Held by unit tests that serve an invocation, as the process serves one at a time.
#[cfg(test)]
pub(crate) static SERVING_IN_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Marks an invocation as the one being served, until dropped (then the one
/// served before it, if any, is again).
struct Serving(Option<Invocation>);

impl Serving {
    fn start(invocation: Invocation) -> Self {
        let mut serving = SERVING.lock().unwrap_or_else(|e| e.into_inner());
        Self(serving.replace(invocation))
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        *SERVING.lock().unwrap_or_else(|e| e.into_inner()) = self.0.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directives(pairs: &[(&str, &str)]) -> String {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        filter_directives(|name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn rust_log_wins_then_the_lambda_level_then_info() {
        assert_eq!(directives(&[]), "info");
        assert_eq!(directives(&[("AWS_LAMBDA_LOG_LEVEL", "DEBUG")]), "debug");
        assert_eq!(
            directives(&[
                ("RUST_LOG", "warn,shared=debug"),
                ("AWS_LAMBDA_LOG_LEVEL", "DEBUG")
            ]),
            "warn,shared=debug"
        );
        // An empty RUST_LOG is unset.
        assert_eq!(
            directives(&[("RUST_LOG", " "), ("AWS_LAMBDA_LOG_LEVEL", "ERROR")]),
            "error"
        );
    }

    #[test]
    fn every_lambda_level_maps_to_a_tracing_level() {
        for (lambda, tracing) in [
            ("TRACE", "trace"),
            ("DEBUG", "debug"),
            ("INFO", "info"),
            ("WARN", "warn"),
            ("ERROR", "error"),
            ("FATAL", "error"),
            ("warn", "warn"),
        ] {
            assert_eq!(directives(&[("AWS_LAMBDA_LOG_LEVEL", lambda)]), tracing);
            assert!(EnvFilter::try_new(tracing).is_ok());
        }
        // Anything else leaves the default.
        assert_eq!(directives(&[("AWS_LAMBDA_LOG_LEVEL", "LOUD")]), "info");
    }

    #[test]
    fn an_invalid_rust_log_falls_back_rather_than_silencing_the_function() {
        assert_eq!(
            directives(&[("RUST_LOG", "shared=[["), ("AWS_LAMBDA_LOG_LEVEL", "WARN")]),
            "warn"
        );
    }

    #[test]
    fn lines_outside_the_invocations_spans_are_given_its_ids() {
        let invocation = Invocation {
            request_id: Some("req-1".into()),
            trace_id: Some("Root=1-abc".into()),
        };
        let named = name_invocation(
            "{\"level\":\"INFO\",\"message\":\"NOTICE: skipping\"}\n".into(),
            &invocation,
        );
        assert!(named.ends_with('\n'));
        let line: serde_json::Value = serde_json::from_str(&named).unwrap();
        assert_eq!(
            line,
            serde_json::json!({
                "level": "INFO",
                "message": "NOTICE: skipping",
                "span": {"name": "invocation", "lambda_request_id": "req-1", "xray_trace_id": "Root=1-abc"},
            })
        );
        // A span without the ids (the runtime's own) gets them beside its fields.
        let named = name_invocation(
            "{\"message\":\"m\",\"span\":{\"name\":\"Lambda runtime invoke\",\"requestId\":\"req-1\"}}\n".into(),
            &invocation,
        );
        let line: serde_json::Value = serde_json::from_str(&named).unwrap();
        assert_eq!(line["span"]["name"], "Lambda runtime invoke");
        assert_eq!(line["span"]["lambda_request_id"], "req-1");
        // Lines that name an invocation, and lines that are not JSON, are left alone.
        let own = "{\"span\":{\"lambda_request_id\":\"req-0\"}}\n".to_string();
        assert_eq!(name_invocation(own.clone(), &invocation), own);
        assert_eq!(name_invocation("text\n".into(), &invocation), "text\n");
    }

    #[tokio::test]
    async fn the_invocation_is_current_inside_its_scope_only() {
        let _one_at_a_time = SERVING_IN_TESTS.lock().await;
        assert_eq!(Invocation::current(), Invocation::default());
        let invocation = Invocation {
            request_id: Some("req-1".into()),
            trace_id: Some("Root=1-abc".into()),
        };
        let seen = invocation
            .clone()
            .scope(async { Invocation::current() })
            .await;
        assert_eq!(seen, invocation);
        assert_eq!(Invocation::current(), Invocation::default());
        // Served process-wide while it runs, seen from a task it spawns.
        let spawned = invocation
            .clone()
            .scope(async { tokio::spawn(async { Invocation::serving() }).await.unwrap() })
            .await;
        assert_eq!(spawned, Some(invocation));
        // Outside Lambda (no request id) nothing is served process-wide.
        let local = Invocation::default()
            .scope(async { Invocation::serving() })
            .await;
        assert_eq!(local, None);
    }
}
