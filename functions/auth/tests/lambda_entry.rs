//! The real `auth` binary, run under a Lambda Runtime API emulator and fed the
//! sample HTTP API v2 events from `events/`: this exercises `lambda_http`'s
//! event conversion, the request context (source IP, request id, authorizer
//! claims) and the response encoding, not only the axum router.

use std::path::Path;

use serde_json::Value;
use testkit::lambda::{RuntimeApi, http_reply, sample_event, with_token};
use testkit::{TestStack, spawn_stack};

fn start_function(
    api: &RuntimeApi,
    stack: &TestStack,
    trust_gateway: bool,
) -> tokio::process::Child {
    api.spawn_function(
        Path::new(env!("CARGO_BIN_EXE_auth")),
        "auth",
        &[
            ("DATABASE_URL", testkit::runtime_url(&stack.database_url)),
            ("AUTH_ISSUER", stack.stack.issuer.issuer().to_string()),
            ("AUTH_AUDIENCE", local::LOCAL_AUDIENCE.to_string()),
            ("AUTH_TRUST_GATEWAY_CLAIMS", trust_gateway.to_string()),
            ("LOG_FORMAT", "json".to_string()),
        ],
    )
}

#[tokio::test]
async fn the_lambda_binary_serves_sample_http_api_events() {
    let stack = spawn_stack().await;
    let api = RuntimeApi::start().await;
    let _function = start_function(&api, &stack, false);
    let token = stack.token("ann@example.com");

    let (status, headers, body) = http_reply(
        api.invoke(&with_token(
            sample_event("auth-create-session.json"),
            &token,
        ))
        .await,
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body["email"], "ann@example.com");
    let user_id = body["id"].as_str().unwrap().to_string();

    // The source IP and request id come from the API Gateway request context.
    let login = stack
        .sql()
        .await
        .query_one(
            "SELECT host(ip_address), session_id FROM user_activity_logs WHERE user_id = $1",
            &[&user_id],
        )
        .await
        .unwrap();
    assert_eq!(login.get::<_, String>(0), "203.0.113.7");
    assert_eq!(
        login.get::<_, String>(1),
        "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"
    );

    let (status, _, body) = http_reply(
        api.invoke(&with_token(sample_event("auth-patch-me.json"), &token))
            .await,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["timezone"], "Asia/Tokyo");

    let (status, _, body) = http_reply(
        api.invoke(&with_token(sample_event("auth-get-me.json"), &token))
            .await,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], user_id.as_str());
    assert_eq!(body["username"], "ann_lee");

    // The sample as committed carries a placeholder token: a 401 problem.
    let (status, headers, body) = http_reply(api.invoke(&sample_event("auth-get-me.json")).await);
    assert_eq!(status, 401);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(body["type"], "/problems/unauthorized");

    // Private profile: anonymous callers get a 404 through Lambda as well.
    let (status, _, _) = http_reply(api.invoke(&sample_event("auth-get-public-user.json")).await);
    assert_eq!(status, 404);

    // Every function serves the OpenAPI document (added by `shared::runtime::app::finish`).
    let mut event = sample_event("auth-get-public-user.json");
    event["routeKey"] = "GET /api/v1/openapi.json".into();
    event["rawPath"] = "/api/v1/openapi.json".into();
    event["requestContext"]["routeKey"] = "GET /api/v1/openapi.json".into();
    event["requestContext"]["http"]["path"] = "/api/v1/openapi.json".into();
    let (status, headers, body) = http_reply(api.invoke(&event).await);
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    let document: Value = serde_json::from_str(&shared::runtime::openapi::json()).unwrap();
    assert_eq!(body, document);
}

#[tokio::test]
async fn gateway_verified_claims_are_used_only_when_trusted() {
    let stack = spawn_stack().await;
    stack.sign_in("ann@example.com").await;
    let subject = shared::web::auth::dev_issuer::DevIssuer::subject_for("ann@example.com");
    let mut event = sample_event("auth-get-me-gateway-claims.json");
    event["requestContext"]["authorizer"]["jwt"]["claims"]["sub"] = Value::String(subject);

    let untrusting = RuntimeApi::start().await;
    let _a = start_function(&untrusting, &stack, false);
    let (status, _, _) = http_reply(untrusting.invoke(&event).await);
    assert_eq!(status, 401, "claims must not be trusted unless configured");

    let trusting = RuntimeApi::start().await;
    let _b = start_function(&trusting, &stack, true);
    let (status, _, body) = http_reply(trusting.invoke(&event).await);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["email"], "ann@example.com");
}

#[tokio::test]
async fn the_lambda_binary_exports_and_erases_an_account() {
    let stack = spawn_stack().await;
    let api = RuntimeApi::start().await;
    let _function = start_function(&api, &stack, false);
    let token = stack.token("ann@example.com");
    let (status, _, body) = http_reply(
        api.invoke(&with_token(
            sample_event("auth-create-session.json"),
            &token,
        ))
        .await,
    );
    assert_eq!(status, 201, "{body}");
    let user_id = body["id"].as_str().unwrap().to_string();

    let (status, headers, body) = http_reply(
        api.invoke(&with_token(sample_event("auth-export-me.json"), &token))
            .await,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(body["format"], "charplat-export");
    assert_eq!(body["account"]["id"], user_id.as_str());
    assert_eq!(body["activity"][0]["ip_address"], "203.0.113.7");

    // The DELETE's body travels through the event; a repeat is answered the same.
    for _ in 0..2 {
        let (status, _, body) = http_reply(
            api.invoke(&with_token(sample_event("auth-erase-me.json"), &token))
                .await,
        );
        assert_eq!(status, 204, "{body}");
    }
    let status: String = stack
        .sql()
        .await
        .query_one(
            "SELECT account_status FROM users WHERE id = $1",
            &[&user_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "deleted");

    // Behind the gateway's authorizer the token's `iat` comes as a string claim: a token
    // issued before the erasure is refused, a later one may sign up again.
    let trusting = RuntimeApi::start().await;
    let _trusting = start_function(&trusting, &stack, true);
    let subject = shared::web::auth::dev_issuer::DevIssuer::subject_for("ann@example.com");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for (iat, expected) in [(Some(now - 3600), 403), (None, 403), (Some(now + 1), 404)] {
        let mut event = sample_event("auth-get-me-gateway-claims.json");
        let claims = &mut event["requestContext"]["authorizer"]["jwt"]["claims"];
        claims["sub"] = Value::String(subject.clone());
        match iat {
            Some(iat) => claims["iat"] = Value::String(iat.to_string()),
            None => {
                claims.as_object_mut().unwrap().remove("iat");
            }
        }
        let (status, _, body) = http_reply(trusting.invoke(&event).await);
        assert_eq!(status, expected, "iat {iat:?}: {body}");
    }
}

#[tokio::test]
async fn a_misconfigured_function_fails_its_init_with_a_clear_message() {
    let api = RuntimeApi::start().await;
    let child = api.spawn_function(Path::new(env!("CARGO_BIN_EXE_auth")), "auth", &[]);
    let output = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the function should exit")
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("DATABASE_URL"), "stderr: {stderr}");
}

/// On AWS the function's environment names the database login's secret, not
/// the password: the binary fetches it from Secrets Manager (moto here) at init
/// and serves requests that need the database as the runtime login.
#[tokio::test]
async fn the_database_login_comes_from_secrets_manager_at_init() {
    let stack = spawn_stack().await;
    let api = RuntimeApi::start().await;
    let env = testkit::lambda::http_function_env_with_secrets(&stack).await;
    assert!(!env.iter().any(|(name, _)| *name == "DATABASE_URL"));
    let _function = api.spawn_function(Path::new(env!("CARGO_BIN_EXE_auth")), "auth", &env);
    let token = stack.token("secrets@example.com");

    let (status, _, body) = http_reply(
        api.invoke(&with_token(
            sample_event("auth-create-session.json"),
            &token,
        ))
        .await,
    );
    assert!(status == 200 || status == 201, "{status}: {body}");
    // The account was written by the function, through the runtime login.
    let sql = stack.sql().await;
    let created: i64 = sql
        .query_one(
            "SELECT count(*) FROM users WHERE email = 'secrets@example.com'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(created, 1);
    let logins: Vec<String> = sql
        .query(
            "SELECT DISTINCT usename::text FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = 'auth'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(logins, vec![testkit::RUNTIME_USER.to_string()]);
}
