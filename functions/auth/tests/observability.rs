//! What the real `auth` binary writes to stdout, run under the Lambda Runtime
//! API emulator as Lambda runs it: every line logged while serving an
//! invocation names it (the Lambda request id the emulator sent and its X-Ray
//! trace header), 4xx answers come with an embedded-metric-format document,
//! and Lambda's log-level and log-format controls are honoured.

use std::path::Path;

use serde_json::{Value, json};
use testkit::lambda::{RuntimeApi, http_reply, sample_event, stop_and_read_stdout, with_token};
use testkit::{TestStack, spawn_stack};

/// API Gateway's request id in the sample events.
const GATEWAY_REQUEST_ID: &str = "c6af9ac6-7b61-11e6-9a41-93e8deadbeef";

fn start(
    api: &RuntimeApi,
    stack: &TestStack,
    extra: &[(&'static str, &str)],
) -> tokio::process::Child {
    let mut env = vec![
        ("DATABASE_URL", testkit::runtime_url(&stack.database_url)),
        ("AUTH_ISSUER", stack.stack.issuer.issuer().to_string()),
        ("AUTH_AUDIENCE", local::LOCAL_AUDIENCE.to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    api.spawn_function(Path::new(env!("CARGO_BIN_EXE_auth")), "auth", &env)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The lines a JSON-logging function wrote: each one must be a JSON object.
fn json_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|line| {
            serde_json::from_str::<Value>(line)
                .ok()
                .filter(Value::is_object)
                .unwrap_or_else(|| panic!("not a JSON line: {line}"))
        })
        .collect()
}

/// The invocation a line names: `span.lambda_request_id` for a log line, the
/// top-level member for a metrics document.
fn invocation_of(line: &Value) -> Option<(&str, &str)> {
    let ids = if line.get("_aws").is_some() {
        line
    } else {
        &line["span"]
    };
    Some((
        ids["lambda_request_id"].as_str()?,
        ids["xray_trace_id"].as_str()?,
    ))
}

#[tokio::test]
async fn every_line_of_an_invocation_names_it_and_errors_are_counted_as_emf() {
    let stack = spawn_stack().await;
    let api = RuntimeApi::start().await;
    // No LOG_FORMAT: Lambda's own format control decides, as in the template.
    let function = start(
        &api,
        &stack,
        &[
            ("AWS_LAMBDA_LOG_FORMAT", "JSON"),
            ("AWS_LAMBDA_LOG_LEVEL", "INFO"),
        ],
    );
    let token = stack.token("ann@example.com");
    let before = now_ms();
    let signed_in = api
        .invoke_traced(&with_token(
            sample_event("auth-create-session.json"),
            &token,
        ))
        .await;
    let refused = api.invoke_traced(&sample_event("auth-get-me.json")).await;
    let after = now_ms();
    let invocations = [
        (
            signed_in.request_id.clone(),
            signed_in.trace_id.clone(),
            201,
        ),
        (refused.request_id.clone(), refused.trace_id.clone(), 401),
    ];
    assert_eq!(http_reply(signed_in.outcome).0, 201);
    assert_eq!(http_reply(refused.outcome).0, 401);
    assert_ne!(invocations[0].0, invocations[1].0);
    assert!(
        invocations[0].1.starts_with("Root=1-"),
        "{}",
        invocations[0].1
    );

    let lines = json_lines(&stop_and_read_stdout(function).await);
    // Lines before the first invocation come from the cold start; from the
    // first line naming an invocation on, every line names one, with the trace
    // header that invocation was sent.
    let first = lines
        .iter()
        .position(|line| invocation_of(line).is_some())
        .unwrap_or_else(|| panic!("no line names an invocation: {lines:#?}"));
    for line in &lines[first..] {
        let (request_id, trace_id) =
            invocation_of(line).unwrap_or_else(|| panic!("a line names no invocation: {line}"));
        let invocation = invocations
            .iter()
            .find(|(id, _, _)| id == request_id)
            .unwrap_or_else(|| panic!("a line names an unknown invocation: {line}"));
        assert_eq!(trace_id, invocation.1, "{line}");
    }

    for (request_id, trace_id, status) in &invocations {
        let logged: Vec<&Value> = lines
            .iter()
            .filter(|l| l.get("_aws").is_none() && l["span"]["lambda_request_id"] == *request_id)
            .collect();
        // The flattened JSON layout the README's Logs Insights queries rely on.
        let served = logged
            .iter()
            .find(|l| l["message"] == "served")
            .unwrap_or_else(|| panic!("no `served` line for {request_id}: {logged:#?}"));
        assert_eq!(served["level"], "INFO");
        assert_eq!(served["status"], *status);
        for line in &logged {
            assert_eq!(line["span"]["name"], "request", "{line}");
            assert_eq!(line["span"]["request_id"], GATEWAY_REQUEST_ID, "{line}");
            assert_eq!(line["span"]["xray_trace_id"], trace_id.as_str(), "{line}");
            assert!(line["message"].is_string(), "{line}");
        }
    }

    // The 401 was counted, by route, in one EMF document naming its invocation;
    // the 201 made no HTTP error metric.
    let documents: Vec<&Value> = lines.iter().filter(|l| l.get("_aws").is_some()).collect();
    let errors: Vec<&&Value> = documents
        .iter()
        .filter(|d| d.get("Http4xx").is_some() || d.get("Http5xx").is_some())
        .collect();
    assert_eq!(errors.len(), 1, "{documents:#?}");
    let document = errors[0];
    let timestamp = document["_aws"]["Timestamp"]
        .as_i64()
        .expect("an integer Timestamp");
    assert!(
        (before..=after).contains(&timestamp),
        "{timestamp} not in {before}..={after}"
    );
    assert_eq!(
        document["_aws"]["CloudWatchMetrics"],
        json!([{
            "Namespace": "CharacterPlatform",
            "Dimensions": [["Route"]],
            "Metrics": [{"Name": "Http4xx", "Unit": "Count"}],
        }])
    );
    assert_eq!(document["Route"], "GET /api/v1/me");
    assert_eq!(document["Http4xx"], 1);
    assert_eq!(document["status"], 401);
    assert_eq!(document["lambda_request_id"], invocations[1].0.as_str());
    assert_eq!(document["xray_trace_id"], invocations[1].1.as_str());
}

#[tokio::test]
async fn lambdas_log_level_and_format_apply_unless_rust_log_is_set() {
    let stack = spawn_stack().await;

    // WARN from Lambda's level control: no INFO line, but metrics still.
    let api = RuntimeApi::start().await;
    let function = start(
        &api,
        &stack,
        &[
            ("AWS_LAMBDA_LOG_FORMAT", "JSON"),
            ("AWS_LAMBDA_LOG_LEVEL", "WARN"),
        ],
    );
    let refused = api.invoke_traced(&sample_event("auth-get-me.json")).await;
    assert_eq!(http_reply(refused.outcome).0, 401);
    let lines = json_lines(&stop_and_read_stdout(function).await);
    assert!(
        !lines
            .iter()
            .any(|l| l["level"] == "INFO" || l["level"] == "DEBUG"),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["Http4xx"] == 1 && l["lambda_request_id"] == refused.request_id.as_str()),
        "{lines:#?}"
    );

    // Text from Lambda's format control, and RUST_LOG over its level: the
    // `served` line is there, as text; metrics documents stay JSON.
    let api = RuntimeApi::start().await;
    let function = start(
        &api,
        &stack,
        &[
            ("AWS_LAMBDA_LOG_FORMAT", "Text"),
            ("AWS_LAMBDA_LOG_LEVEL", "ERROR"),
            ("RUST_LOG", "info"),
        ],
    );
    let refused = api.invoke_traced(&sample_event("auth-get-me.json")).await;
    assert_eq!(http_reply(refused.outcome).0, 401);
    let lines = stop_and_read_stdout(function).await;
    let served = lines
        .iter()
        .find(|l| l.contains("served"))
        .unwrap_or_else(|| panic!("no `served` line: {lines:#?}"));
    assert!(serde_json::from_str::<Value>(served).is_err(), "{served}");
    assert!(served.contains(&refused.request_id), "{served}");
    assert!(
        lines
            .iter()
            .any(|l| serde_json::from_str::<Value>(l).is_ok_and(
                |d| d["Http4xx"] == 1 && d["lambda_request_id"] == refused.request_id.as_str()
            )),
        "{lines:#?}"
    );
}
