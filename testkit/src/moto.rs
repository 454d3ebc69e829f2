//! moto (`moto_server`, PyPI `moto[server]`): a local S3 and SQS for the
//! AWS adapters' tests.
//!
//! [`endpoint`] is `MOTO_ENDPOINT_URL` when set (the test script starts one
//! server for the whole run); otherwise the test process starts its own
//! `moto_server` on a free port, once, so `cargo test` alone works too: the
//! one in the project's virtual environment `.venv/test` (which `scripts/test`
//! makes on first use), else the one on `PATH`. That server runs under a small
//! shell that kills it when the test process's end of its stdin closes, i.e.
//! when the test binary exits, however it exits.
//!
//! moto keeps state per server, so every test uses its own bucket and queue
//! names ([`unique_name`]).

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{Credentials, Region};

/// The region and dummy credentials moto accepts.
pub const REGION: &str = "us-east-1";
pub const ACCESS_KEY_ID: &str = "testing";
pub const SECRET_ACCESS_KEY: &str = "testing";

/// The moto server's base URL (`http://127.0.0.1:PORT`).
pub fn endpoint() -> String {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT
        .get_or_init(|| match std::env::var("MOTO_ENDPOINT_URL") {
            Ok(url) if !url.trim().is_empty() => url.trim().trim_end_matches('/').to_string(),
            _ => start_own_server(),
        })
        .clone()
}

/// The environment a function binary needs to talk to moto through the
/// SDK's standard configuration chain.
pub fn function_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID.to_string()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.to_string()),
        ("AWS_REGION", REGION.to_string()),
    ]
}

/// SDK configuration pointed at moto, with the workspace's HTTPS client.
pub async fn sdk_config() -> aws_config::SdkConfig {
    shared::ports::aws::config_loader()
        .endpoint_url(endpoint())
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new(
            ACCESS_KEY_ID,
            SECRET_ACCESS_KEY,
            None,
            None,
            "moto",
        ))
        .load()
        .await
}

/// An S3 client on moto (path-style addressing, as `S3ObjectStore` uses
/// with a custom endpoint).
pub async fn s3_client() -> aws_sdk_s3::Client {
    let config = sdk_config().await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    )
}

pub async fn sqs_client() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&sdk_config().await)
}

/// A bucket or queue name no other test uses (`prefix-<12 hex>`).
pub fn unique_name(prefix: &str) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &random[..12])
}

/// Creates a fresh bucket and returns its name.
pub async fn create_bucket(prefix: &str) -> String {
    let name = unique_name(prefix);
    s3_client()
        .await
        .create_bucket()
        .bucket(&name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create bucket {name} on moto: {e:?}"));
    name
}

/// Creates a Secrets Manager secret on moto holding `value` (as JSON text)
/// under a fresh name, and returns its ARN.
pub async fn create_secret(prefix: &str, value: &serde_json::Value) -> String {
    let name = unique_name(prefix);
    let client = aws_sdk_secretsmanager::Client::new(&sdk_config().await);
    let created = client
        .create_secret()
        .name(&name)
        .secret_string(value.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("create secret {name} on moto: {e:?}"));
    created.arn().expect("moto returns the ARN").to_string()
}

/// How to install moto where this module looks for it.
const INSTALL_HINT: &str = "run scripts/test once (it makes .venv/test from \
     scripts/requirements-test.txt), or put moto_server on PATH, or set MOTO_ENDPOINT_URL";

fn start_own_server() -> String {
    static SERVER: OnceLock<Mutex<Child>> = OnceLock::new();
    // The workspace's virtual environment first (testkit sits at its root).
    let venv_server =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/test/bin/moto_server");
    let server = if venv_server.is_file() {
        venv_server.to_string_lossy().into_owned()
    } else {
        "moto_server".to_string()
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port for moto_server");
    // `read` returns when the test process exits and its end of the pipe
    // closes; the shell then stops the server. A missing server exits 127 at
    // once rather than leaving the wait below to time out.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"command -v "$1" >/dev/null || exit 127; "$1" -H 127.0.0.1 -p "$0" >/dev/null 2>&1 & pid=$!; read _ignored; kill "$pid""#)
        .arg(port.to_string())
        .arg(&server)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {server}: {e}; {INSTALL_HINT}"));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{server} exited ({status}) before answering; {INSTALL_HINT}");
        }
        if Instant::now() > deadline {
            if let Some(stdin) = child.stdin.as_mut() {
                let _ = stdin.write_all(b"\n");
            }
            panic!("moto_server did not answer on {addr} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = SERVER.set(Mutex::new(child));
    format!("http://{addr}")
}
