//! Test support shared by every crate's integration tests: a fresh PostgreSQL
//! database per test, the local stack on a random port, an HTTP client that
//! speaks its API, and a Lambda Runtime API emulator for driving the real
//! function binaries. Nothing here is mocked: tests talk to real PostgreSQL
//! over real HTTP.

pub mod a1111;
pub mod lambda;
pub mod ledger;
pub mod moto;

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use local::{LocalOptions, LocalStack};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::kernel::config::{DatabaseConfig, SslMode};
use shared::web::auth::dev_issuer::SigningKey;
use tokio_postgres::NoTls;

/// The server tests create their databases on: `TEST_DATABASE_URL`, else the
/// machine's server. The test script sets it to a private cluster when the
/// machine has none.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| local::database::MACHINE_SERVER.to_string())
}

/// A connection for setup and assertions; its driver task runs in the background.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", local::database::redact(url)));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Test databases are named `t_<unix seconds>_<random>`; ones older than this
/// are dropped by later runs, so crashed runs do not fill the server.
const STALE_AFTER_SECS: u64 = 2 * 3600;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn new_database_name() -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("t_{}_{}", unix_now(), &random[..12])
}

/// An empty database, for tests of the migrations themselves.
pub async fn empty_database() -> String {
    let admin = admin_url();
    let client = connect(&admin).await;
    let name = new_database_name();
    client
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .expect("create test database");
    local::database::with_database(&admin, &name)
}

/// A fresh, fully migrated database, cloned from a template that is migrated
/// once per schema version (and month, since partitions are made per month).
pub async fn fresh_database() -> String {
    let admin = admin_url();
    let client = connect(&admin).await;
    let template = ensure_template(&client, &admin).await;
    ensure_runtime_login(&client).await;
    let name = new_database_name();
    // CREATE DATABASE ... TEMPLATE fails while another session is connected to
    // the template; that window is brief, so retry.
    let mut attempts = 0;
    loop {
        match client
            .batch_execute(&format!(
                "CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""
            ))
            .await
        {
            Ok(()) => break,
            Err(e) if attempts < 50 => {
                attempts += 1;
                tracing::debug!("template busy: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot clone the template database: {e}"),
        }
    }
    local::database::with_database(&admin, &name)
}

async fn ensure_template(client: &tokio_postgres::Client, admin: &str) -> String {
    let month = chrono::Utc::now().format("%Y%m");
    let template = format!(
        "tpl_{}_{month}",
        shared::ports::db::migrations_fingerprint()
    );
    if database_exists(client, &template).await {
        return template;
    }
    // Serialise template creation across test processes.
    client
        .execute("SELECT pg_advisory_lock(7243120002)", &[])
        .await
        .expect("lock");
    if !database_exists(client, &template).await {
        drop_stale_databases(client).await;
        let building = format!("{template}_building");
        client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{building}\" WITH (FORCE)"
            ))
            .await
            .expect("drop a half-built template");
        client
            .batch_execute(&format!("CREATE DATABASE \"{building}\""))
            .await
            .expect("create template");
        let pool = shared::ports::db::create_pool(&DatabaseConfig {
            migration_url: None,
            url: local::database::with_database(admin, &building),
            sslmode: SslMode::Disable,
            ssl_root_cert: None,
            pool_size: 1,
            connect_timeout: Duration::from_secs(10),
        })
        .expect("template pool");
        shared::ports::db::migrate(&pool)
            .await
            .expect("migrate template");
        pool.close();
        drop(pool);
        // Renaming needs the template to have no sessions; the pool just closed.
        let mut attempts = 0;
        loop {
            match client
                .batch_execute(&format!(
                    "ALTER DATABASE \"{building}\" RENAME TO \"{template}\""
                ))
                .await
            {
                Ok(()) => break,
                Err(_) if attempts < 50 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot finish the template: {e}"),
            }
        }
    }
    client
        .execute("SELECT pg_advisory_unlock(7243120002)", &[])
        .await
        .expect("unlock");
    template
}

async fn database_exists(client: &tokio_postgres::Client, name: &str) -> bool {
    client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .expect("query pg_database")
        .is_some()
}

async fn drop_stale_databases(client: &tokio_postgres::Client) {
    let rows = client
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 't\\_%' OR datname LIKE 'tpl\\_%'",
            &[],
        )
        .await
        .expect("list databases");
    let now = unix_now();
    let current_month = chrono::Utc::now().format("%Y%m").to_string();
    for row in rows {
        let name: String = row.get(0);
        let stale = if let Some(rest) = name.strip_prefix("t_") {
            rest.split('_')
                .next()
                .and_then(|secs| secs.parse::<u64>().ok())
                .is_some_and(|created| now.saturating_sub(created) > STALE_AFTER_SECS)
        } else {
            // Templates of past months or older schemas are rebuilt when needed.
            !name.contains(&current_month)
        };
        if stale {
            let _ = client
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await;
        }
    }
}

/// The login the local stack of every test runs as: a member of
/// `app_service` that owns nothing, as the functions' login on AWS, so the
/// whole suite proves the runtime role's grants and policies suffice.
pub const RUNTIME_USER: &str = "charplat_test_runtime";
const RUNTIME_PASSWORD: &str = "charplat-test-runtime";

/// `database_url` (a test database) as the runtime login.
pub fn runtime_url(database_url: &str) -> String {
    let mut parsed = url::Url::parse(database_url).expect("test database URLs are URLs");
    parsed
        .set_username(RUNTIME_USER)
        .and_then(|()| parsed.set_password(Some(RUNTIME_PASSWORD)))
        .expect("a URL with a host");
    parsed.to_string()
}

/// Creates [`RUNTIME_USER`] once per test process (roles are cluster-wide),
/// under the same cross-process lock as the template, so concurrent test
/// binaries do not update the role at the same time.
async fn ensure_runtime_login(client: &tokio_postgres::Client) {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_init(|| async {
        client
            .execute("SELECT pg_advisory_lock(7243120002)", &[])
            .await
            .expect("lock");
        shared::ports::db::provision_runtime_login(client, RUNTIME_USER, RUNTIME_PASSWORD)
            .await
            .expect("provision the tests' runtime login");
        client
            .execute("SELECT pg_advisory_unlock(7243120002)", &[])
            .await
            .expect("unlock");
    })
    .await;
}

/// One RSA key per test process: generating one per test would dominate run time.
pub fn signing_key() -> SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate().expect("generate RSA key"))
        .clone()
}

/// Application state whose database cannot be reached (connections are
/// refused at once): for tests of routing and of what happens before any query.
pub async fn offline_state() -> shared::AppState {
    let config = shared::kernel::config::Config::from_lookup(|name| {
        match name {
            "DATABASE_URL" => Some("postgres://nobody@127.0.0.1:1/none"),
            "DATABASE_CONNECT_TIMEOUT_SECONDS" => Some("1"),
            "AUTH_ISSUER" => Some("https://issuer.example/"),
            "AUTH_AUDIENCE" => Some("https://api.example"),
            _ => None,
        }
        .map(str::to_string)
    })
    .expect("offline configuration");
    shared::AppState::from_config(config)
        .await
        .expect("offline state")
}

/// The local stack on a random port over a fresh database.
pub struct TestStack {
    pub stack: LocalStack,
    pub base_url: String,
    /// The database as its owner (the server's admin login), for setup and
    /// assertions; the stack itself runs as [`RUNTIME_USER`].
    pub database_url: String,
    pub http: reqwest::Client,
}

pub async fn spawn_stack() -> TestStack {
    let database_url = fresh_database().await;
    let stack = LocalStack::start(LocalOptions {
        port: 0,
        database_url: Some(runtime_url(&database_url)),
        migration_url: Some(database_url.clone()),
        data_dir: std::env::temp_dir(),
        signing_key: Some(signing_key()),
        background_tasks: false,
    })
    .await
    .expect("start the local stack");
    TestStack {
        base_url: stack.base_url.clone(),
        stack,
        database_url,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client"),
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// Asserts the reply is an RFC 9457 problem with this status.
    pub fn assert_problem(&self, status: u16) -> &Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.body
        );
        let content_type = self
            .headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert_eq!(
            content_type, "application/problem+json",
            "body: {}",
            self.body
        );
        assert_eq!(self.body["status"], status, "body: {}", self.body);
        assert!(
            self.body["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("/problems/"))
        );
        assert!(self.body["title"].is_string() && self.body["detail"].is_string());
        self
    }
}

impl TestStack {
    /// A database connection for setup and assertions.
    pub async fn sql(&self) -> tokio_postgres::Client {
        connect(&self.database_url).await
    }

    /// A token from the local issuer, as `POST /dev/token` would mint it.
    pub fn token(&self, email: &str) -> String {
        self.token_with(email, &[])
    }

    pub fn token_with(&self, email: &str, permissions: &[&str]) -> String {
        let permissions: Vec<String> = permissions.iter().map(|p| p.to_string()).collect();
        self.stack
            .issuer
            .mint(email, &permissions, Duration::from_secs(600))
            .expect("mint token")
    }

    /// Signs in `email` (creating the account) and returns its token.
    pub async fn sign_in(&self, email: &str) -> String {
        let token = self.token(email);
        let reply = self
            .call(Method::POST, "/api/v1/auth/session", Some(&token), None)
            .await;
        assert!(reply.status.is_success(), "sign-in failed: {}", reply.body);
        token
    }

    /// Signs in and sets a username.
    pub async fn user(&self, email: &str, username: &str) -> String {
        let token = self.sign_in(email).await;
        let reply = self
            .call(
                Method::PATCH,
                "/api/v1/me",
                Some(&token),
                Some(json!({"username": username})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        token
    }

    /// Signs in `email` as `username` with `credits` purchased credits and no
    /// free daily generations, so every generation is paid from the balance.
    /// Returns the token and the user's id.
    pub async fn buyer(&self, email: &str, username: &str, credits: i32) -> (String, String) {
        let token = self.user(email, username).await;
        let client = self.sql().await;
        let id: String = client
            .query_one(
                "UPDATE users SET daily_quota = 0 WHERE lower(email) = lower($1) RETURNING id",
                &[&email],
            )
            .await
            .expect("the signed-in user")
            .get(0);
        if credits > 0 {
            shared::credits::ledger::post(
                &client,
                &id,
                shared::credits::ledger::Entry::new("purchase", credits, "test credits"),
            )
            .await
            .expect("post the credits");
        }
        (token, id)
    }

    /// Creates a character over HTTP (it must answer 201) and returns its id.
    pub async fn character(&self, token: &str, body: Value) -> String {
        let reply = self
            .call(Method::POST, "/api/v1/characters", Some(token), Some(body))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.body["id"]
            .as_str()
            .expect("the character's id")
            .to_string()
    }

    /// The stack's worker with another image provider chain (the stack's own
    /// has only the procedural fallback).
    pub fn worker_with(
        &self,
        chain: shared::ports::generator::GeneratorChain,
    ) -> shared::jobs::worker::Worker {
        shared::jobs::worker::Worker {
            generator: std::sync::Arc::new(chain),
            ..self.stack.worker.clone()
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base_url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        read(response).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.call(Method::GET, path, token, None).await
    }
}

pub async fn read(response: reqwest::Response) -> Reply {
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    Reply {
        status,
        headers,
        body,
    }
}
