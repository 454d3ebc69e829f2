//! A Lambda Runtime API emulator (the `/2018-06-01/runtime/...` endpoints the
//! real Lambda service offers a function's process), so tests can run the
//! actual function binaries and feed them events exactly as AWS would.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::sync::{Notify, oneshot};

/// What the function answered for one invocation.
#[derive(Debug)]
pub enum Outcome {
    Response(Value),
    Error(Value),
}

struct Invocation {
    id: String,
    trace_id: String,
    event: Vec<u8>,
}

/// One invocation as the function saw it: the request id and X-Ray trace
/// header the emulator sent (`Lambda-Runtime-Aws-Request-Id`,
/// `Lambda-Runtime-Trace-Id`), and what the function answered.
#[derive(Debug)]
pub struct Invoked {
    pub request_id: String,
    pub trace_id: String,
    pub outcome: Outcome,
}

/// A fresh X-Ray trace header, as Lambda sends it: `Root=1-{epoch seconds,
/// 8 hex}-{24 hex}`, a parent segment id and the sampling decision.
fn trace_header() -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "Root=1-{:08x}-{};Parent={};Sampled=1",
        chrono::Utc::now().timestamp(),
        &random[..24],
        &uuid::Uuid::new_v4().simple().to_string()[..16],
    )
}

#[derive(Default)]
struct Inner {
    queue: Mutex<VecDeque<Invocation>>,
    waiting: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    init_error: Mutex<Option<Value>>,
    arrived: Notify,
}

pub struct RuntimeApi {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    server: tokio::task::JoinHandle<()>,
}

impl RuntimeApi {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(respond),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(fail))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            inner,
            server,
        }
    }

    /// Starts a function binary against this API with `env` added to a
    /// Lambda-like environment.
    pub fn spawn_function(&self, binary: &Path, name: &str, env: &[(&str, String)]) -> Child {
        let mut command = Command::new(binary);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_RUNTIME_API", self.addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", name)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}"))
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
            .env("AWS_REGION", "us-east-1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        command.spawn().expect("spawn the function binary")
    }

    /// Delivers `event` to the function and waits for its answer.
    pub async fn invoke(&self, event: &Value) -> Outcome {
        self.invoke_traced(event).await.outcome
    }

    /// [`RuntimeApi::invoke`], also returning the ids the invocation was given.
    pub async fn invoke_traced(&self, event: &Value) -> Invoked {
        let id = uuid::Uuid::new_v4().to_string();
        let trace_id = trace_header();
        let (tx, rx) = oneshot::channel();
        self.inner
            .waiting
            .lock()
            .expect("lock")
            .insert(id.clone(), tx);
        self.inner
            .queue
            .lock()
            .expect("lock")
            .push_back(Invocation {
                id: id.clone(),
                trace_id: trace_id.clone(),
                event: serde_json::to_vec(event).expect("event json"),
            });
        self.inner.arrived.notify_one();
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(outcome)) => Invoked {
                request_id: id,
                trace_id,
                outcome,
            },
            _ => panic!(
                "the function did not answer within 30 s (init error: {:?})",
                self.inner.init_error.lock().expect("lock").clone()
            ),
        }
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn next(State(inner): State<Arc<Inner>>) -> Response {
    loop {
        let notified = inner.arrived.notified();
        if let Some(invocation) = inner.queue.lock().expect("lock").pop_front() {
            let deadline = chrono::Utc::now().timestamp_millis() + 30_000;
            let mut headers = HeaderMap::new();
            let mut set = |name: &'static str, value: String| {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(name, value);
                }
            };
            set("lambda-runtime-aws-request-id", invocation.id.clone());
            set("lambda-runtime-deadline-ms", deadline.to_string());
            set(
                "lambda-runtime-invoked-function-arn",
                "arn:aws:lambda:us-east-1:123456789012:function:test".into(),
            );
            set("lambda-runtime-trace-id", invocation.trace_id.clone());
            set("content-type", "application/json".into());
            return (StatusCode::OK, headers, invocation.event).into_response();
        }
        notified.await;
    }
}

fn parse(body: &Bytes) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into()))
}

async fn respond(
    State(inner): State<Arc<Inner>>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> StatusCode {
    if let Some(tx) = inner.waiting.lock().expect("lock").remove(&id) {
        let _ = tx.send(Outcome::Response(parse(&body)));
    }
    StatusCode::ACCEPTED
}

async fn fail(
    State(inner): State<Arc<Inner>>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> StatusCode {
    if let Some(tx) = inner.waiting.lock().expect("lock").remove(&id) {
        let _ = tx.send(Outcome::Error(parse(&body)));
    }
    StatusCode::ACCEPTED
}

async fn init_error(State(inner): State<Arc<Inner>>, body: Bytes) -> StatusCode {
    *inner.init_error.lock().expect("lock") = Some(parse(&body));
    StatusCode::ACCEPTED
}

/// Stops a function started by [`RuntimeApi::spawn_function`] and returns
/// what it wrote to stdout, one entry per line. Everything it wrote before
/// answering an invocation is in the pipe by the time the answer arrived, so
/// the lines of every invocation already answered are all there.
pub async fn stop_and_read_stdout(mut child: Child) -> Vec<String> {
    let _ = child.start_kill();
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the killed function exits")
        .expect("the function's output");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A sample event from the repository's `events/` folder.
pub fn sample_event(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../events")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The event with a real bearer token in place of the sample's placeholder.
pub fn with_token(mut event: Value, token: &str) -> Value {
    event["headers"]["authorization"] = Value::String(format!("Bearer {token}"));
    event
}

/// An HTTP function's reply as (status, headers, JSON body).
pub fn http_reply(outcome: Outcome) -> (u16, Value, Value) {
    let Outcome::Response(response) = outcome else {
        panic!("the function reported an error: {outcome:?}");
    };
    let status = response["statusCode"].as_u64().unwrap_or(0) as u16;
    let body = response["body"].as_str().map_or(Value::Null, |b| {
        serde_json::from_str(b).unwrap_or(Value::String(b.to_string()))
    });
    (status, response["headers"].clone(), body)
}

/// The environment an HTTP function needs to serve against a test stack:
/// its database and its identity provider.
pub fn http_function_env(stack: &crate::TestStack) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", crate::runtime_url(&stack.database_url)),
        ("AUTH_ISSUER", stack.stack.issuer.issuer().to_string()),
        ("AUTH_AUDIENCE", local::LOCAL_AUDIENCE.to_string()),
        ("LOG_FORMAT", "json".to_string()),
    ]
}

/// [`http_function_env`] with the database login in a Secrets Manager secret
/// on moto (`DATABASE_SECRET_ARN` with `DATABASE_HOST`, `..._PORT`,
/// `..._NAME`), as template.yaml configures the functions, plus moto's
/// endpoint and credentials.
pub async fn http_function_env_with_secrets(
    stack: &crate::TestStack,
) -> Vec<(&'static str, String)> {
    let url = url::Url::parse(&crate::runtime_url(&stack.database_url)).expect("a URL");
    let arn = crate::moto::create_secret(
        "database",
        &serde_json::json!({"username": url.username(), "password": url.password()}),
    )
    .await;
    let mut env = vec![
        ("DATABASE_SECRET_ARN", arn),
        ("DATABASE_HOST", url.host_str().expect("a host").to_string()),
        ("DATABASE_PORT", url.port().unwrap_or(5432).to_string()),
        (
            "DATABASE_NAME",
            url.path().trim_start_matches('/').to_string(),
        ),
        ("AUTH_ISSUER", stack.stack.issuer.issuer().to_string()),
        ("AUTH_AUDIENCE", local::LOCAL_AUDIENCE.to_string()),
        ("LOG_FORMAT", "json".to_string()),
    ];
    env.extend(crate::moto::function_env());
    env
}
