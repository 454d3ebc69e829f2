//! The SAM template deploys every function crate, and nothing else: each crate
//! under `functions/` has an `AWS::Serverless::Function` resource whose
//! `Metadata.BuildProperties.Binary` names the crate's binary, and each function resource
//! names a binary some crate builds.
//!
//! And the HTTP API routes exactly the operations the OpenAPI document lists,
//! each to a function whose router serves it, with API Gateway's JWT
//! authorizer off exactly where the operation accepts anonymous callers.
//!
//! The template is read as text (no YAML crate in the workspace): top-level
//! resources are the keys indented two spaces under `Resources:`, and the
//! `Type`, `BuildMethod` and `Binary` lines inside each one, and the
//! `Method`/`Path`/`Auth` lines of its `HttpApi` events, are enough here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("shared/ has a parent")
        .to_path_buf()
}

/// The binary each crate under `functions/` builds: its `[[bin]] name`, else
/// the package name (what `cargo lambda build` and `Binary:` refer to).
fn function_binaries() -> BTreeMap<String, String> {
    let mut binaries = BTreeMap::new();
    let dir = repo_root().join("functions");
    for entry in std::fs::read_dir(&dir).expect("functions/ is readable") {
        let path = entry.expect("directory entry").path();
        let manifest = path.join("Cargo.toml");
        if !manifest.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&manifest).expect("Cargo.toml is readable");
        let mut section = String::new();
        let mut package_name = None;
        let mut bin_name = None;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line.to_string();
                continue;
            }
            let Some(value) = line
                .strip_prefix("name")
                .and_then(|rest| rest.trim_start().strip_prefix('='))
                .map(|v| v.trim().trim_matches('"').to_string())
            else {
                continue;
            };
            match section.as_str() {
                "[package]" => package_name = package_name.or(Some(value)),
                "[[bin]]" => bin_name = bin_name.or(Some(value)),
                _ => {}
            }
        }
        let crate_dir = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 directory name")
            .to_string();
        let binary = bin_name
            .or(package_name)
            .unwrap_or_else(|| panic!("{} has no package name", manifest.display()));
        binaries.insert(crate_dir, binary);
    }
    binaries
}

#[derive(Debug, Default)]
struct Resource {
    kind: Option<String>,
    build_method: Option<String>,
    binary: Option<String>,
    /// The function's `HttpApi` events.
    routes: Vec<Route>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Route {
    method: String,
    path: String,
    /// `Auth: {Authorizer: NONE}`: API Gateway lets anonymous callers through.
    public: bool,
}

/// The top-level resources of the template, by logical id.
fn template_resources(text: &str) -> BTreeMap<String, Resource> {
    let mut resources: BTreeMap<String, Resource> = BTreeMap::new();
    let mut in_resources = false;
    let mut current: Option<String> = None;
    let mut in_event = false;
    for raw in text.lines() {
        let line = raw.trim_end();
        let content = line.trim_start();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let indent = line.len() - content.len();
        if indent == 0 {
            in_resources = content == "Resources:";
            current = None;
            continue;
        }
        if !in_resources {
            continue;
        }
        if indent == 2 {
            let id = content.trim_end_matches(':').to_string();
            resources.entry(id.clone()).or_default();
            current = Some(id);
            continue;
        }
        let Some(id) = &current else { continue };
        let resource = resources.get_mut(id).expect("resource was inserted");
        // An event's name (indent 8 under `Events:`) starts a new route entry.
        if indent == 8 && content.ends_with(':') && !content.contains(' ') {
            in_event = true;
            resource.routes.push(Route::default());
            continue;
        }
        if indent <= 6 {
            in_event = false;
        }
        let value_of = |key: &str| {
            content
                .strip_prefix(key)
                .map(|v| v.trim().trim_matches(['"', '\'']).to_string())
        };
        if indent == 4 {
            if let Some(kind) = value_of("Type:") {
                resource.kind = Some(kind);
            }
        } else if let Some(method) = value_of("BuildMethod:") {
            resource.build_method = Some(method);
        } else if let Some(binary) = value_of("Binary:") {
            resource.binary = Some(binary);
        } else if in_event && let Some(route) = resource.routes.last_mut() {
            if let Some(method) = value_of("Method:") {
                route.method = method;
            } else if let Some(path) = value_of("Path:") {
                route.path = path;
            } else if let Some(auth) = value_of("Auth:") {
                route.public = auth.contains("NONE");
            }
        }
    }
    // Events of other kinds (SQS, schedules) have no Method/Path.
    for resource in resources.values_mut() {
        resource
            .routes
            .retain(|r| !r.method.is_empty() && !r.path.is_empty());
    }
    resources
}

#[test]
fn every_function_crate_has_a_template_resource_and_vice_versa() {
    let path = repo_root().join("template.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} is readable: {e}", path.display()));
    let resources = template_resources(&text);

    let crates = function_binaries();
    assert!(
        crates.len() >= 6,
        "expected the six function crates, found {crates:?}"
    );

    let mut deployed: BTreeMap<String, String> = BTreeMap::new();
    for (id, resource) in &resources {
        if resource.kind.as_deref() != Some("AWS::Serverless::Function") {
            continue;
        }
        let binary = resource
            .binary
            .clone()
            .unwrap_or_else(|| panic!("function resource {id} has no Metadata Binary"));
        assert_eq!(
            resource.build_method.as_deref(),
            Some("rust-cargolambda"),
            "function resource {id} must build with cargo lambda"
        );
        if let Some(other) = deployed.insert(binary.clone(), id.clone()) {
            panic!("binary {binary} is deployed twice: by {other} and {id}");
        }
    }

    let built: BTreeSet<&String> = crates.values().collect();
    for (crate_dir, binary) in &crates {
        assert!(
            deployed.contains_key(binary),
            "functions/{crate_dir} (binary {binary}) has no AWS::Serverless::Function \
             with `Binary: {binary}` in template.yaml"
        );
    }
    for (binary, id) in &deployed {
        assert!(
            built.contains(binary),
            "template resource {id} deploys binary {binary}, which no crate under functions/ builds"
        );
    }
}

#[test]
fn the_text_reader_finds_resources_types_and_binaries() {
    let text = "\
Transform: AWS::Serverless-2016-10-31
Resources:
  AuthFunction:
    Type: AWS::Serverless::Function
    Metadata:
      BuildMethod: rust-cargolambda
      Binary: auth
    Properties:
      Handler: bootstrap
  # a comment
  JobsQueue:
    Type: AWS::SQS::Queue
Outputs:
  Binary: not-a-resource
";
    let resources = template_resources(text);
    assert_eq!(resources.len(), 2);
    let auth = &resources["AuthFunction"];
    assert_eq!(auth.kind.as_deref(), Some("AWS::Serverless::Function"));
    assert_eq!(auth.build_method.as_deref(), Some("rust-cargolambda"));
    assert_eq!(auth.binary.as_deref(), Some("auth"));
    assert_eq!(
        resources["JobsQueue"].kind.as_deref(),
        Some("AWS::SQS::Queue")
    );
    assert!(resources["JobsQueue"].binary.is_none());
}

/// Every `(METHOD, path)` the OpenAPI document lists, with whether the
/// operation accepts anonymous callers (no `security`, or an empty requirement).
fn documented_operations() -> BTreeMap<(String, String), bool> {
    let doc: serde_json::Value =
        serde_json::from_str(&shared::runtime::openapi::json()).expect("the document is JSON");
    let mut operations = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            let anonymous = match operation.get("security").and_then(|s| s.as_array()) {
                None => true,
                Some(requirements) => requirements
                    .iter()
                    .any(|r| r.as_object().is_some_and(|o| o.is_empty())),
            };
            operations.insert((method.to_uppercase(), path.clone()), anonymous);
        }
    }
    operations
}

fn template_text() -> String {
    let path = repo_root().join("template.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{} is readable: {e}", path.display()))
}

#[test]
fn the_http_api_routes_exactly_the_documented_operations_with_matching_auth() {
    let resources = template_resources(&template_text());
    let mut routed: BTreeMap<(String, String), (String, bool)> = BTreeMap::new();
    for (id, resource) in &resources {
        for route in &resource.routes {
            if route.path == "$default" {
                continue;
            }
            let key = (route.method.clone(), route.path.clone());
            if let Some((other, _)) = routed.insert(key.clone(), (id.clone(), route.public)) {
                panic!("{key:?} is routed twice: to {other} and {id}");
            }
        }
    }
    let documented = documented_operations();
    for (key, anonymous) in &documented {
        let Some((function, public)) = routed.get(key) else {
            panic!("{key:?} is documented but template.yaml routes it to no function");
        };
        assert_eq!(
            public, anonymous,
            "{key:?} (routed to {function}): `Auth: {{Authorizer: NONE}}` must be set exactly \
             when the operation accepts anonymous callers"
        );
    }
    for (key, (function, _)) in &routed {
        assert!(
            documented.contains_key(key),
            "template.yaml routes {key:?} to {function}, but the OpenAPI document has no such operation"
        );
    }
}

/// The router a function binary serves (functions/<name>/src/main.rs calls
/// the matching `shared::runtime::app::*_router`).
fn routes_of(binary: &str) -> Option<axum::Router<shared::web::state::AppState>> {
    match binary {
        "auth" => Some(shared::runtime::app::auth_routes()),
        "characters" => Some(shared::runtime::app::characters_routes()),
        "credits" => Some(shared::runtime::app::credits_routes()),
        "jobs" => Some(shared::runtime::app::jobs_routes()),
        _ => None,
    }
}

#[tokio::test]
async fn each_routed_operation_is_served_by_the_function_it_is_routed_to() {
    use tower::ServiceExt;

    // No database is reachable: a served route answers 401 (no token), 4xx for
    // its input, or 503; only the router's own fallbacks say "no such route"
    // or 405, and those mean API Gateway would send the call to the wrong function.
    let state = testkit::offline_state().await;
    let resources = template_resources(&template_text());
    let mut checked = 0;
    for (id, resource) in &resources {
        let Some(binary) = &resource.binary else {
            continue;
        };
        for route in &resource.routes {
            if route.path == "$default" {
                continue;
            }
            let routes = routes_of(binary)
                .unwrap_or_else(|| panic!("{id} ({binary}) has HTTP routes but no router"));
            let app = shared::runtime::app::finish(routes, state.clone());
            let uri = route.path.replace('{', "x-").replace('}', "");
            let request = axum::http::Request::builder()
                .method(route.method.as_str())
                .uri(&uri)
                .body(axum::body::Body::empty())
                .expect("request");
            let response = app.oneshot(request).await.expect("infallible");
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("body");
            let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            assert!(
                status != 405 && !(status == 404 && body["detail"] == "no such route"),
                "{} {} is routed to {id} ({binary}), whose router does not serve it: {status} {body}",
                route.method,
                route.path
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 40,
        "only {checked} routes were read from template.yaml"
    );
}

#[test]
fn every_scheduled_task_has_a_schedule_and_on_demand_tasks_have_none() {
    let text = template_text();
    let scheduled: BTreeSet<String> = text
        .lines()
        .filter_map(|line| {
            let input = line.trim().strip_prefix("Input:")?;
            let json = input.trim().trim_matches('\'');
            let value: serde_json::Value = serde_json::from_str(json).ok()?;
            value["detail-type"].as_str().map(str::to_string)
        })
        .collect();
    let tasks: BTreeSet<String> = shared::runtime::scheduler::TASKS
        .iter()
        .map(|t| t.to_string())
        .collect();
    assert_eq!(
        scheduled, tasks,
        "each scheduler task needs exactly one ScheduleV2 event"
    );
    for task in shared::runtime::scheduler::ON_DEMAND_TASKS {
        assert!(!scheduled.contains(task), "{task} must not be scheduled");
    }
}

/// The text of each top-level resource of the template, by logical id.
fn resource_texts(text: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut in_resources = false;
    let mut current: Option<String> = None;
    for line in text.lines() {
        let content = line.trim_start();
        let indent = line.len() - content.len();
        if indent == 0 && !content.is_empty() && !content.starts_with('#') {
            in_resources = content == "Resources:";
            current = None;
            continue;
        }
        if !in_resources || content.is_empty() || content.starts_with('#') {
            continue;
        }
        if indent == 2 {
            current = Some(content.trim_end_matches(':').to_string());
        }
        if let Some(id) = &current {
            let entry = out.entry(id.clone()).or_default();
            entry.push_str(content);
            entry.push('\n');
        }
    }
    out
}

/// Least privilege in the bucket: no function gets a bucket-wide policy (SAM's
/// S3 policy templates grant every key), each grant names a prefix, and only
/// the auth function (GDPR exports and erasure) reaches `exports/`.
#[test]
fn each_function_reaches_only_the_bucket_prefixes_it_uses() {
    let text = template_text();
    let resources = resource_texts(&text);
    let functions: Vec<&String> = resources
        .iter()
        .filter(|(_, body)| body.contains("Type: AWS::Serverless::Function"))
        .map(|(id, _)| id)
        .collect();
    assert!(functions.len() >= 6, "{functions:?}");
    for id in functions {
        let body = &resources[id];
        for template in [
            "S3CrudPolicy",
            "S3ReadPolicy",
            "S3WritePolicy",
            "S3FullAccessPolicy",
        ] {
            assert!(
                !body.contains(template),
                "{id} uses {template}: bucket-wide access"
            );
        }
        for line in body.lines().filter(|l| l.contains("ImagesBucket.Arn}")) {
            let prefix = line
                .split("ImagesBucket.Arn}")
                .nth(1)
                .unwrap_or_default()
                .trim_matches(['"', ' ']);
            assert!(
                prefix == "/users/*" || (prefix == "/exports/*" && id == "AuthFunction"),
                "{id} reaches `{prefix}` of the bucket"
            );
        }
        if id == "CharactersFunction" || id == "JobsFunction" || id == "WorkerFunction" {
            assert!(
                body.contains("${ImagesBucket.Arn}/users/*"),
                "{id} needs the users' images"
            );
        }
    }
}

/// Secrets reach the functions as ARNs read at init, never as values: no
/// dynamic reference resolves one into an environment variable, no function
/// sets a plaintext secret variable, and each function may read exactly the
/// secrets it uses (the schema owner's: the scheduler alone).
#[test]
fn secrets_are_read_at_init_and_each_function_reads_only_its_own() {
    let text = template_text();
    assert!(
        !text.contains("{{resolve:secretsmanager"),
        "a secret is resolved into the template at deploy time"
    );
    for plaintext in [
        "DATABASE_URL:",
        "DATABASE_MIGRATION_URL:",
        "STRIPE_SECRET_KEY:",
        "STRIPE_WEBHOOK_SECRET:",
        "GALLERY_VIEW_KEY:",
    ] {
        assert!(!text.contains(plaintext), "{plaintext} is set in plaintext");
    }
    assert!(text.contains("DATABASE_SECRET_ARN: !Ref RuntimeDatabaseSecret"));
    let resources = resource_texts(&text);
    let readable = |body: &str| -> Vec<String> {
        body.lines()
            .filter_map(|l| {
                l.split("AWSSecretsManagerGetSecretValuePolicy: {SecretArn: !Ref ")
                    .nth(1)
            })
            .map(|rest| rest.trim_end_matches('}').to_string())
            .collect()
    };
    let mut functions = 0;
    for (id, body) in &resources {
        if !body.contains("Type: AWS::Serverless::Function") {
            continue;
        }
        functions += 1;
        let mut secrets = readable(body);
        secrets.sort();
        let expected: &[&str] = match id.as_str() {
            "CharactersFunction" => &["GalleryViewKeySecretArn", "RuntimeDatabaseSecret"],
            "CreditsFunction" => &["RuntimeDatabaseSecret", "StripeSecretArn"],
            "WorkerFunction" => &["GeneratorCredentialsSecretArn", "RuntimeDatabaseSecret"],
            "SchedulerFunction" => &["DatabaseSecretArn", "RuntimeDatabaseSecret"],
            _ => &["RuntimeDatabaseSecret"],
        };
        assert_eq!(secrets, expected, "{id} reads these secrets");
        assert!(
            !body.contains("secretsmanager:GetSecretValue"),
            "{id} has a hand-written secrets statement"
        );
        assert_eq!(
            body.contains("DATABASE_MIGRATION_SECRET_ARN"),
            id == "SchedulerFunction",
            "{id}: only the scheduler migrates"
        );
    }
    assert!(functions >= 6);
}

/// The namespace the template gives the functions' metrics (`METRICS_NAMESPACE`).
const METRICS_NAMESPACE: &str = "CharacterPlatform/${AWS::StackName}";

/// The operations alarms exist, each watching what it is named for and
/// notifying the optional `AlarmTopicArn` when it fires and when it clears;
/// alarms on the functions' own metrics read the namespace they write to and
/// name metrics the code emits.
#[test]
fn the_operations_alarms_exist_and_notify_the_alarm_topic() {
    let text = template_text();
    assert!(
        text.contains(&format!("METRICS_NAMESPACE: !Sub \"{METRICS_NAMESPACE}\"")),
        "the functions' metrics namespace is the stack's"
    );
    let resources = resource_texts(&text);
    let expected: [(&str, &[&str]); 7] = [
        (
            "ApiServerErrorRateAlarm",
            &[
                "Namespace: AWS/ApiGateway",
                "MetricName: 5xx",
                "MetricName: Count",
                "Value: !Ref HttpApi",
            ],
        ),
        (
            "ApiLatencyAlarm",
            &[
                "Namespace: AWS/ApiGateway",
                "MetricName: Latency",
                "ExtendedStatistic: p99",
                "Value: !Ref HttpApi",
            ],
        ),
        (
            "JobQueueAgeAlarm",
            &[
                "Namespace: AWS/SQS",
                "MetricName: ApproximateAgeOfOldestMessage",
                "Value: !GetAtt JobQueue.QueueName",
            ],
        ),
        (
            "DeadLetterQueueDepthAlarm",
            &[
                "Namespace: AWS/SQS",
                "MetricName: ApproximateNumberOfMessagesVisible",
                "Value: !GetAtt JobDeadLetterQueue.QueueName",
            ],
        ),
        (
            "WorkerErrorsAlarm",
            &[
                "Namespace: AWS/Lambda",
                "MetricName: Errors",
                "Value: !Ref WorkerFunction",
            ],
        ),
        (
            "WebhookFailuresAlarm",
            &[
                "MetricName: WebhookEvents",
                "Value: stripe",
                "Value: failed",
                "Value: rejected",
            ],
        ),
        (
            "DatabaseConnectionErrorsAlarm",
            &["MetricName: DatabaseConnectionErrors"],
        ),
    ];
    for (id, needles) in expected {
        let body = resources
            .get(id)
            .unwrap_or_else(|| panic!("template.yaml has no {id}"));
        assert!(
            body.contains("Type: AWS::CloudWatch::Alarm"),
            "{id} is not an alarm"
        );
        for needle in needles {
            assert!(body.contains(needle), "{id} lacks `{needle}`:\n{body}");
        }
        for actions in ["AlarmActions", "OKActions"] {
            assert!(
                body.contains(&format!(
                    "{actions}: !If [HasAlarmTopic, [!Ref AlarmTopicArn], !Ref AWS::NoValue]"
                )),
                "{id} has no {actions} to the alarm topic"
            );
        }
    }
    // Every alarm on the functions' own metrics reads their namespace and a metric they emit.
    for (id, body) in &resources {
        if !body.contains("Type: AWS::CloudWatch::Alarm") || body.contains("Namespace: AWS/") {
            continue;
        }
        assert!(
            body.contains(&format!("Namespace: !Sub \"{METRICS_NAMESPACE}\"")),
            "{id} reads another namespace"
        );
        for name in body.lines().filter_map(|l| l.strip_prefix("MetricName: ")) {
            assert!(
                shared::kernel::metrics::METRIC_NAMES.contains(&name.trim()),
                "{id} watches {name}, which no code emits"
            );
        }
    }
}

/// `${Name}` and `${Name.Attribute}` of a `!Sub` string, each replaced by `x`.
fn without_substitutions(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("a closed ${...}") + start;
        out.push('x');
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The dashboard exists, its body is a JSON document once `!Sub` has filled it
/// in, it shows every alarm of the template and every metric the functions
/// emit, and names no metric they do not.
#[test]
fn the_dashboard_shows_the_alarms_and_every_business_metric() {
    let text = template_text();
    let resources = resource_texts(&text);
    let dashboard = resources
        .get("Dashboard")
        .expect("template.yaml has a Dashboard");
    assert!(dashboard.contains("Type: AWS::CloudWatch::Dashboard"));

    // The body: the block scalar under `DashboardBody: !Sub |`.
    let mut lines = text
        .lines()
        .skip_while(|l| l.trim() != "DashboardBody: !Sub |");
    let header = lines.next().expect("DashboardBody is a !Sub block");
    let header_indent = header.len() - header.trim_start().len();
    let body: String = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > header_indent)
        .map(|l| format!("{l}\n"))
        .collect();
    let document: serde_json::Value = serde_json::from_str(&without_substitutions(&body))
        .unwrap_or_else(|e| panic!("the dashboard body is not JSON: {e}\n{body}"));
    let widgets = document["widgets"].as_array().expect("widgets");
    assert!(widgets.len() >= 10, "{} widgets", widgets.len());
    for widget in widgets {
        for key in ["x", "y", "width", "height"] {
            assert!(widget[key].is_u64(), "a widget without {key}: {widget}");
        }
    }

    for (id, resource) in &resources {
        if resource.contains("Type: AWS::CloudWatch::Alarm") {
            assert!(
                body.contains(&format!("\"${{{id}.Arn}}\"")),
                "the dashboard does not show {id}"
            );
        }
    }
    let namespace = format!("\\\"{METRICS_NAMESPACE}\\\"");
    for name in shared::kernel::metrics::METRIC_NAMES {
        let searched =
            body.contains(&format!("MetricName=\\\"{name}\\\"")) && body.contains(&namespace);
        let listed = body.contains(&format!("[\"{METRICS_NAMESPACE}\", \"{name}\"]"))
            || body.contains(&format!("[\".\", \"{name}\"]"));
        assert!(searched || listed, "the dashboard does not show {name}");
    }
    // Every metric name searched for is one the functions emit.
    for part in body.split("MetricName=\\\"").skip(1) {
        let name = part.split('\\').next().unwrap_or_default();
        assert!(
            shared::kernel::metrics::METRIC_NAMES.contains(&name),
            "the dashboard searches for {name}"
        );
    }
}
