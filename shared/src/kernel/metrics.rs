//! Business metrics as CloudWatch Embedded Metric Format (EMF): one JSON
//! document per event, written to stdout as its own line. In Lambda, stdout
//! is the function's log stream, and CloudWatch Logs turns each document into
//! metric values in the configured namespace (`METRICS_NAMESPACE`, default
//! `CharacterPlatform`) without any API call or added latency.
//!
//! A document:
//!
//! ```json
//! {"_aws": {"Timestamp": 1700000000000, "CloudWatchMetrics": [{"Namespace": "CharacterPlatform",
//!    "Dimensions": [["JobType", "Provider"]], "Metrics": [{"Name": "JobsCompleted", "Unit": "Count"}]}]},
//!  "JobType": "character_generation", "Provider": "primary", "JobsCompleted": 1,
//!  "lambda_request_id": "…", "xray_trace_id": "Root=1-…"}
//! ```
//!
//! Dimensions are few and low-cardinality (a job type, a provider name, a route
//! template, an outcome); ids and amounts that vary go in as plain members,
//! which Logs Insights can query but which make no metric.
//!
//! `METRICS=emf` writes them (the default inside Lambda), `METRICS=off`
//! (the default elsewhere: the local stack, tests) drops them. Whatever the
//! setting, code running inside [`capture`] hands its documents to the capture
//! instead, which is how the tests read them.
//!
//! The metrics, by where they are emitted:
//!
//! | metric | unit | dimensions | emitted |
//! |---|---|---|---|
//! | `Http4xx`, `Http5xx` | Count | `Route` | by the HTTP functions, per answer of that class; `Route` is the method and matched route template (`GET /api/v1/characters/{id}`), `unmatched` when no route matched |
//! | `JobsCompleted` | Count | `JobType`, `Provider` | by the worker, when a job completes |
//! | `RenderTime` | Milliseconds | `JobType`, `Provider` | with `JobsCompleted`: how long the provider chain took |
//! | `FallbackUsed` | Count | `JobType` | when the procedural fallback served a job |
//! | `JobsFailed` | Count | `JobType`, `Provider` | when a job fails for good; `Provider` is the last provider that failed, `none` when it failed before rendering |
//! | `JobsRetried` | Count | `JobType` | when a job goes back to the queue for another attempt |
//! | `QueueWait` | Milliseconds | `JobType` | when the worker claims a job: since its message was (last) sent |
//! | `CreditsPurchased`, `CreditsSpent`, `CreditsRefunded`, `CreditsClawedBack` | Count | — | by the ledger, per posting of a `purchase`, a `usage`, a positive `refund` (credits given back), a negative `refund` (credits taken back after a Stripe refund or dispute, debt repaid) |
//! | `WebhookEvents` | Count | `Provider`, `Outcome` | by the Stripe webhook: `processed`, `duplicate`, `ignored`, `rejected` (a bad signature or body), `failed` (not configured, the database unavailable, an internal error) |
//! | `DatabaseConnectionErrors` | Count | — | when the database cannot be reached (refused, broken or timed-out connections, a server shutting down): where that becomes a 503, a retried message or a retryable task |

use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::kernel::config::{DEFAULT_NAMESPACE, MetricsConfig};
use crate::kernel::telemetry::Invocation;

/// Every metric name this module emits (the template's alarms and dashboard
/// may name only these; `shared/tests/template.rs` checks).
pub const METRIC_NAMES: [&str; 14] = [
    "Http4xx",
    "Http5xx",
    "JobsCompleted",
    "RenderTime",
    "FallbackUsed",
    "JobsFailed",
    "JobsRetried",
    "QueueWait",
    "CreditsPurchased",
    "CreditsSpent",
    "CreditsRefunded",
    "CreditsClawedBack",
    "WebhookEvents",
    "DatabaseConnectionErrors",
];

static SETTINGS: OnceLock<MetricsConfig> = OnceLock::new();

/// Sets this process's metrics configuration; the first call wins (a Lambda
/// function calls it once per cold start). Until then metrics are off.
pub fn init(config: &MetricsConfig) {
    let _ = SETTINGS.set(config.clone());
}

fn settings() -> Option<&'static MetricsConfig> {
    SETTINGS.get()
}

tokio::task_local! {
    static CAPTURE: Arc<Mutex<Vec<Value>>>;
}

/// Runs `future`, collecting the documents emitted inside it (on this task)
/// instead of writing them; they come back with its output, in order.
pub async fn capture<F: Future>(future: F) -> (F::Output, Vec<Value>) {
    let sink = Arc::new(Mutex::new(Vec::new()));
    let output = CAPTURE.scope(sink.clone(), future).await;
    let documents = std::mem::take(&mut *sink.lock().unwrap_or_else(|e| e.into_inner()));
    (output, documents)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
        }
    }
}

/// One EMF document: metric values sharing one set of dimensions, plus
/// members that are logged but make no metric.
#[derive(Debug, Clone, Default)]
pub struct Event {
    dimensions: Vec<(&'static str, String)>,
    metrics: Vec<(&'static str, f64, Unit)>,
    properties: Map<String, Value>,
}

/// The longest dimension value CloudWatch takes.
const MAX_DIMENSION_VALUE: usize = 1024;

impl Event {
    pub fn new() -> Self {
        Self::default()
    }

    /// A dimension: part of the metric's identity, so only for values from a
    /// small fixed set. An empty value becomes `none`.
    pub fn dimension(mut self, name: &'static str, value: impl Into<String>) -> Self {
        let mut value: String = value.into();
        if value.trim().is_empty() {
            value = "none".into();
        }
        if value.len() > MAX_DIMENSION_VALUE {
            let mut end = MAX_DIMENSION_VALUE;
            while !value.is_char_boundary(end) {
                end -= 1;
            }
            value.truncate(end);
        }
        self.dimensions.retain(|(n, _)| *n != name);
        self.dimensions.push((name, value));
        self
    }

    /// A metric value in `unit`. A value that is not finite is left out (JSON
    /// has no NaN).
    pub fn metric(mut self, name: &'static str, value: f64, unit: Unit) -> Self {
        if value.is_finite() {
            self.metrics.retain(|(n, _, _)| *n != name);
            self.metrics.push((name, value, unit));
        }
        self
    }

    pub fn count(self, name: &'static str, value: u64) -> Self {
        self.metric(name, value as f64, Unit::Count)
    }

    pub fn milliseconds(self, name: &'static str, duration: Duration) -> Self {
        self.metric(name, duration.as_secs_f64() * 1000.0, Unit::Milliseconds)
    }

    /// A member that is logged with the metrics but is no dimension.
    pub fn property(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.properties.insert(name.to_string(), value.into());
        self
    }

    /// The document, stamped `timestamp_ms` (milliseconds since the epoch).
    /// Members are properties first, then dimension values and metric values,
    /// which win over a property of the same name.
    pub fn document(&self, namespace: &str, timestamp_ms: i64) -> Value {
        let mut root = self.properties.clone();
        for (name, value) in &self.dimensions {
            root.insert((*name).to_string(), Value::String(value.clone()));
        }
        let mut definitions = Vec::with_capacity(self.metrics.len());
        for (name, value, unit) in &self.metrics {
            root.insert((*name).to_string(), number(*value));
            definitions.push(serde_json::json!({"Name": name, "Unit": unit.as_str()}));
        }
        let dimension_set: Vec<&str> = self.dimensions.iter().map(|(name, _)| *name).collect();
        root.insert(
            "_aws".into(),
            serde_json::json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": namespace,
                    "Dimensions": [dimension_set],
                    "Metrics": definitions,
                }],
            }),
        );
        Value::Object(root)
    }

    /// Emits the document: to the enclosing [`capture`], else as a line on
    /// stdout when metrics are on, else nowhere. It names the invocation
    /// being served (`lambda_request_id`, `xray_trace_id`), as log lines do.
    pub fn emit(self) {
        if self.metrics.is_empty() {
            return;
        }
        let captured = CAPTURE.try_with(Clone::clone).ok();
        let enabled = settings().filter(|s| s.enabled);
        if captured.is_none() && enabled.is_none() {
            return;
        }
        let invocation = Invocation::current();
        let mut event = self;
        if let Some(id) = invocation.request_id {
            event = event.property("lambda_request_id", id);
        }
        if let Some(id) = invocation.trace_id {
            event = event.property("xray_trace_id", id);
        }
        let namespace = settings().map_or(DEFAULT_NAMESPACE, |s| s.namespace.as_str());
        let document = event.document(namespace, chrono::Utc::now().timestamp_millis());
        if let Some(sink) = captured {
            sink.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(document);
            return;
        }
        // One write per line, as the log lines are written, so the two never
        // interleave within a line.
        let mut line = document.to_string().into_bytes();
        line.push(b'\n');
        let _ = std::io::stdout().lock().write_all(&line);
    }
}

/// Whole numbers as JSON integers, the rest as floats.
fn number(value: f64) -> Value {
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        Value::from(value as i64)
    } else {
        serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
    }
}

// ------------------------------------------------------------------------------------------
// The platform's metrics: one function per event, so names and dimensions are spelled once.
// ------------------------------------------------------------------------------------------

/// A 4xx or 5xx answer of an HTTP function (others emit nothing). `route` is
/// the matched route template, `None` when no route matched.
pub fn http_error(method: &http::Method, route: Option<&str>, status: u16) {
    let name = match status {
        400..=499 => "Http4xx",
        500..=599 => "Http5xx",
        _ => return,
    };
    Event::new()
        .dimension("Route", route_label(method, route))
        .count(name, 1)
        .property("status", status)
        .emit();
}

/// `GET /api/v1/characters/{id}`: the method (standard ones only, so a
/// client cannot mint dimension values) and the route template.
pub fn route_label(method: &http::Method, route: Option<&str>) -> String {
    let Some(route) = route else {
        return "unmatched".into();
    };
    let method = match *method {
        http::Method::GET
        | http::Method::POST
        | http::Method::PUT
        | http::Method::PATCH
        | http::Method::DELETE
        | http::Method::HEAD
        | http::Method::OPTIONS => method.as_str(),
        _ => "OTHER",
    };
    format!("{method} {route}")
}

/// What became of a webhook delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// Verified and acted on (whatever the action was).
    Processed,
    /// Verified, delivered before: nothing done.
    Duplicate,
    /// Verified, nothing to do (an unhandled type, an unknown order).
    Ignored,
    /// Refused: a bad signature or body (a 4xx).
    Rejected,
    /// Not processed, to be retried by the sender: not configured, the
    /// database unavailable, an internal error (a 5xx).
    Failed,
}

impl WebhookOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::Duplicate => "duplicate",
            Self::Ignored => "ignored",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
        }
    }
}

/// One webhook delivery; `detail` (the handler's own outcome) is logged, not a dimension.
pub fn webhook(provider: &'static str, outcome: WebhookOutcome, detail: Option<&str>) {
    let mut event = Event::new()
        .dimension("Provider", provider)
        .dimension("Outcome", outcome.as_str())
        .count("WebhookEvents", 1);
    if let Some(detail) = detail {
        event = event.property("webhook_outcome", detail);
    }
    event.emit();
}

/// A ledger posting of `amount` credits (positive in, negative out). Purchases,
/// usage and refunds make metrics; other kinds (gifts, bonuses...) do not.
pub fn credits_posted(transaction_type: &str, amount: i32) {
    let name = match (transaction_type, amount) {
        (_, 0) => return,
        ("purchase", _) => "CreditsPurchased",
        ("usage", _) => "CreditsSpent",
        ("refund", a) if a > 0 => "CreditsRefunded",
        ("refund", _) => "CreditsClawedBack",
        _ => return,
    };
    Event::new()
        .count(name, u64::from(amount.unsigned_abs()))
        .property("transaction_type", transaction_type.to_string())
        .emit();
}

/// The database could not be reached; `kind` says how (logged, not a dimension).
pub fn database_connection_error(kind: &'static str) {
    Event::new()
        .count("DatabaseConnectionErrors", 1)
        .property("kind", kind)
        .emit();
}

/// A job type as a dimension value: the known names, else `unknown`.
fn job_type_label(job_type: &str) -> &'static str {
    crate::kernel::vocabulary::JobType::parse(job_type).map_or("unknown", |t| t.as_str())
}

/// A provider as a dimension value: the chain's names, else `none`.
fn provider_label(provider: &str) -> &'static str {
    match provider {
        "primary" => "primary",
        "secondary" => "secondary",
        "fallback" => "fallback",
        _ => "none",
    }
}

/// A job completed, served by `provider`, whose render took `render`.
pub fn job_completed(job_type: &str, provider: &str, render: Duration) {
    let job_type = job_type_label(job_type);
    let provider = provider_label(provider);
    Event::new()
        .dimension("JobType", job_type)
        .dimension("Provider", provider)
        .count("JobsCompleted", 1)
        .milliseconds("RenderTime", render)
        .emit();
    if provider == "fallback" {
        Event::new()
            .dimension("JobType", job_type)
            .count("FallbackUsed", 1)
            .emit();
    }
}

/// A job failed for good; `provider` is the last that failed (`None` when it
/// failed before any rendered), `stage` is logged.
pub fn job_failed(job_type: &str, provider: Option<&str>, stage: &str) {
    Event::new()
        .dimension("JobType", job_type_label(job_type))
        .dimension("Provider", provider_label(provider.unwrap_or("none")))
        .count("JobsFailed", 1)
        .property("stage", stage.to_string())
        .emit();
}

/// A job went back to the queue for another attempt; `reason` is logged.
pub fn job_retried(job_type: &str, reason: &str) {
    Event::new()
        .dimension("JobType", job_type_label(job_type))
        .count("JobsRetried", 1)
        .property("reason", reason.to_string())
        .emit();
}

/// A job was claimed `wait` after its message was sent.
pub fn queue_wait(job_type: &str, wait: Duration) {
    Event::new()
        .dimension("JobType", job_type_label(job_type))
        .milliseconds("QueueWait", wait)
        .emit();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_document_has_the_emf_shape() {
        let document = Event::new()
            .dimension("JobType", "upscale")
            .dimension("Provider", "primary")
            .count("JobsCompleted", 1)
            .milliseconds("RenderTime", Duration::from_micros(1500))
            .property("job_id", "job-1")
            .document("CharacterPlatform", 1_700_000_000_123);
        assert_eq!(
            document,
            json!({
                "_aws": {
                    "Timestamp": 1_700_000_000_123_i64,
                    "CloudWatchMetrics": [{
                        "Namespace": "CharacterPlatform",
                        "Dimensions": [["JobType", "Provider"]],
                        "Metrics": [
                            {"Name": "JobsCompleted", "Unit": "Count"},
                            {"Name": "RenderTime", "Unit": "Milliseconds"},
                        ],
                    }],
                },
                "JobType": "upscale",
                "Provider": "primary",
                "JobsCompleted": 1,
                "RenderTime": 1.5,
                "job_id": "job-1",
            })
        );
    }

    #[test]
    fn no_dimensions_is_one_empty_dimension_set() {
        let document = Event::new().count("CreditsSpent", 7).document("Ns", 0);
        assert_eq!(
            document["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([[]])
        );
        assert_eq!(document["CreditsSpent"], 7);
    }

    #[test]
    fn dimension_and_metric_values_win_over_properties_and_repeat_names_replace() {
        let document = Event::new()
            .property("Route", "forged")
            .dimension("Route", "first")
            .dimension("Route", "")
            .count("Http4xx", 1)
            .count("Http4xx", 2)
            .metric("Broken", f64::NAN, Unit::Count)
            .document("Ns", 0);
        assert_eq!(document["Route"], "none");
        assert_eq!(document["Http4xx"], 2);
        assert!(document.get("Broken").is_none());
        let directive = &document["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Dimensions"], json!([["Route"]]));
        assert_eq!(
            directive["Metrics"],
            json!([{"Name": "Http4xx", "Unit": "Count"}])
        );
    }

    #[test]
    fn long_dimension_values_are_cut_to_what_cloudwatch_takes() {
        let document = Event::new()
            .dimension("Route", "é".repeat(1000))
            .count("Http4xx", 1)
            .document("Ns", 0);
        let value = document["Route"].as_str().unwrap();
        assert!(value.len() <= MAX_DIMENSION_VALUE && value.len() >= MAX_DIMENSION_VALUE - 1);
    }

    #[tokio::test]
    async fn captured_documents_name_the_invocation() {
        let _one_at_a_time = crate::kernel::telemetry::SERVING_IN_TESTS.lock().await;
        let invocation = Invocation {
            request_id: Some("8476a536-e9f4-11e8-9739-2dfe598c3fcd".into()),
            trace_id: Some("Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700".into()),
        };
        let ((), documents) = capture(invocation.scope(async {
            http_error(&http::Method::GET, Some("/api/v1/characters/{id}"), 404);
            http_error(&http::Method::GET, Some("/api/v1/characters/{id}"), 200);
            http_error(&http::Method::from_bytes(b"BREW").unwrap(), Some("/x"), 503);
            http_error(&http::Method::POST, None, 404);
        }))
        .await;
        assert_eq!(documents.len(), 3, "{documents:?}");
        assert_eq!(documents[0]["Route"], "GET /api/v1/characters/{id}");
        assert_eq!(documents[0]["Http4xx"], 1);
        assert_eq!(documents[0]["status"], 404);
        assert_eq!(
            documents[0]["lambda_request_id"],
            "8476a536-e9f4-11e8-9739-2dfe598c3fcd"
        );
        assert_eq!(
            documents[0]["xray_trace_id"],
            "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700"
        );
        assert_eq!(documents[1]["Route"], "OTHER /x");
        assert_eq!(documents[1]["Http5xx"], 1);
        assert_eq!(documents[2]["Route"], "unmatched");
    }

    #[tokio::test]
    async fn credit_postings_are_named_by_kind_and_counted_as_positive_credits() {
        let ((), documents) = capture(async {
            credits_posted("purchase", 100);
            credits_posted("usage", -12);
            credits_posted("usage", 0);
            credits_posted("refund", 5);
            credits_posted("refund", -30);
            credits_posted("gift_sent", -10);
        })
        .await;
        let values: Vec<(String, u64)> = documents
            .iter()
            .map(|d| {
                let name = d["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let value = d[&name].as_u64().unwrap();
                (name, value)
            })
            .collect();
        assert_eq!(
            values,
            vec![
                ("CreditsPurchased".to_string(), 100),
                ("CreditsSpent".to_string(), 12),
                ("CreditsRefunded".to_string(), 5),
                ("CreditsClawedBack".to_string(), 30),
            ]
        );
    }

    #[tokio::test]
    async fn job_metrics_keep_their_dimensions_to_known_values() {
        let ((), documents) = capture(async {
            job_completed("upscale", "fallback", Duration::from_millis(40));
            job_failed("no such type", Some("http://10.0.0.1"), "provider");
            queue_wait("variation", Duration::from_millis(2500));
        })
        .await;
        assert_eq!(documents.len(), 4, "{documents:?}");
        assert_eq!(documents[0]["JobType"], "upscale");
        assert_eq!(documents[0]["Provider"], "fallback");
        assert_eq!(documents[0]["RenderTime"], 40);
        assert_eq!(documents[1]["FallbackUsed"], 1);
        assert_eq!(
            documents[1]["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["JobType"]])
        );
        assert_eq!(documents[2]["JobType"], "unknown");
        assert_eq!(documents[2]["Provider"], "none");
        assert_eq!(documents[3]["QueueWait"], 2500);
    }

    #[tokio::test]
    async fn every_emitted_name_is_listed_and_every_listed_name_is_emitted() {
        let ((), documents) = capture(async {
            http_error(&http::Method::GET, None, 404);
            http_error(&http::Method::GET, None, 500);
            job_completed("upscale", "fallback", Duration::from_millis(1));
            job_failed("upscale", None, "prepare");
            job_retried("upscale", "provider");
            queue_wait("upscale", Duration::from_millis(1));
            for (kind, amount) in [
                ("purchase", 1),
                ("usage", -1),
                ("refund", 1),
                ("refund", -1),
            ] {
                credits_posted(kind, amount);
            }
            webhook("stripe", WebhookOutcome::Failed, None);
            database_connection_error("connection");
        })
        .await;
        let mut emitted: Vec<&str> = documents
            .iter()
            .flat_map(|d| {
                d["_aws"]["CloudWatchMetrics"][0]["Metrics"]
                    .as_array()
                    .unwrap()
            })
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        emitted.sort_unstable();
        emitted.dedup();
        let mut listed = METRIC_NAMES.to_vec();
        listed.sort_unstable();
        assert_eq!(emitted, listed);
    }

    #[test]
    fn the_setting_is_emf_in_lambda_and_off_elsewhere_unless_set() {
        let config = |pairs: &[(&str, &str)]| {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            MetricsConfig::from_lookup(|name| {
                pairs
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            })
        };
        assert_eq!(config(&[]).unwrap(), MetricsConfig::default());
        assert!(
            config(&[("AWS_LAMBDA_FUNCTION_NAME", "worker")])
                .unwrap()
                .enabled
        );
        assert!(
            !config(&[("AWS_LAMBDA_FUNCTION_NAME", "worker"), ("METRICS", "off")])
                .unwrap()
                .enabled
        );
        assert!(config(&[("METRICS", "EMF")]).unwrap().enabled);
        let err = config(&[("METRICS", "yes")]).unwrap_err().to_string();
        assert!(err.contains("METRICS"), "{err}");
        assert_eq!(
            config(&[("METRICS_NAMESPACE", "CharacterPlatform/prod")])
                .unwrap()
                .namespace,
            "CharacterPlatform/prod"
        );
        for bad in ["AWS/Lambda", "émoji", &"x".repeat(256)] {
            let err = config(&[("METRICS_NAMESPACE", bad)])
                .unwrap_err()
                .to_string();
            assert!(err.contains("METRICS_NAMESPACE"), "{bad}: {err}");
        }
    }
}
