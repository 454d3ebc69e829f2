//! Access-token verification over real HTTP: the local stack verifies tokens
//! through the same code path as Auth0's (JWKS fetched over HTTP by kid), so
//! every forged or wrong token below is refused the way production refuses it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};
use testkit::{TestStack, spawn_stack};

fn claims(stack: &TestStack, email: &str) -> Value {
    stack
        .stack
        .issuer
        .claims_for(email, &[], std::time::Duration::from_secs(600))
}

fn sign(stack: &TestStack, claims: &Value) -> String {
    let key = stack.stack.issuer.key();
    key.sign(key.kid(), claims).unwrap()
}

async fn assert_refused(stack: &TestStack, token: &str, why: &str) {
    let reply = stack
        .call(Method::POST, "/api/v1/auth/session", Some(token), None)
        .await;
    assert_eq!(reply.status.as_u16(), 401, "{why}: {}", reply.body);
    reply.assert_problem(401);
    assert!(
        reply.headers.contains_key("www-authenticate"),
        "{why}: 401 without WWW-Authenticate"
    );
    let users: i64 = stack
        .sql()
        .await
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(users, 0, "{why}: a refused token created a user");
}

#[tokio::test]
async fn a_valid_token_signs_in() {
    let stack = spawn_stack().await;
    let token = sign(&stack, &claims(&stack, "ann@example.com"));
    let reply = stack
        .call(Method::POST, "/api/v1/auth/session", Some(&token), None)
        .await;
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
    let me = stack.get("/api/v1/me", Some(&token)).await;
    assert_eq!(me.status.as_u16(), 200);
    assert_eq!(me.body["email"], "ann@example.com");
}

#[tokio::test]
async fn expired_and_not_yet_valid_tokens_are_refused() {
    let stack = spawn_stack().await;
    let now = chrono::Utc::now().timestamp();
    let mut expired = claims(&stack, "ann@example.com");
    // Beyond the 30 s leeway.
    expired["exp"] = json!(now - 120);
    assert_refused(&stack, &sign(&stack, &expired), "expired").await;
    let mut early = claims(&stack, "ann@example.com");
    early["nbf"] = json!(now + 600);
    assert_refused(&stack, &sign(&stack, &early), "not yet valid").await;
    let mut no_exp = claims(&stack, "ann@example.com");
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_refused(&stack, &sign(&stack, &no_exp), "no exp").await;
}

#[tokio::test]
async fn tokens_for_another_audience_or_issuer_are_refused() {
    let stack = spawn_stack().await;
    let mut wrong_aud = claims(&stack, "ann@example.com");
    wrong_aud["aud"] = json!("https://api.someone-else.example");
    assert_refused(&stack, &sign(&stack, &wrong_aud), "wrong aud").await;
    let mut wrong_aud_list = claims(&stack, "ann@example.com");
    wrong_aud_list["aud"] = json!(["https://a.example", "https://b.example"]);
    assert_refused(&stack, &sign(&stack, &wrong_aud_list), "wrong aud list").await;
    let mut wrong_iss = claims(&stack, "ann@example.com");
    wrong_iss["iss"] = json!("https://evil.auth0.com/");
    assert_refused(&stack, &sign(&stack, &wrong_iss), "wrong iss").await;
    // The issuer must match exactly, trailing slash included.
    let mut no_slash = claims(&stack, "ann@example.com");
    no_slash["iss"] = json!(stack.stack.issuer.issuer().trim_end_matches('/'));
    assert_refused(
        &stack,
        &sign(&stack, &no_slash),
        "iss without trailing slash",
    )
    .await;
}

#[tokio::test]
async fn an_audience_array_containing_ours_is_accepted() {
    let stack = spawn_stack().await;
    let mut token_claims = claims(&stack, "ann@example.com");
    token_claims["aud"] = json!("https://api.characters.local");
    let reply = stack
        .call(
            Method::POST,
            "/api/v1/auth/session",
            Some(&sign(&stack, &token_claims)),
            None,
        )
        .await;
    assert_eq!(reply.status.as_u16(), 201, "string aud: {}", reply.body);
}

#[tokio::test]
async fn unknown_kids_and_tampered_signatures_are_refused() {
    let stack = spawn_stack().await;
    let key = stack.stack.issuer.key();
    let unknown_kid = key
        .sign("not-a-published-kid", &claims(&stack, "ann@example.com"))
        .unwrap();
    assert_refused(&stack, &unknown_kid, "unknown kid").await;

    // Change the payload after signing: the signature no longer matches.
    let token = sign(&stack, &claims(&stack, "ann@example.com"));
    let parts: Vec<&str> = token.split('.').collect();
    let forged_payload = URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(&json!({
            "sub": "auth0|admin", "iss": stack.stack.issuer.issuer(), "aud": "https://api.characters.local",
            "exp": chrono::Utc::now().timestamp() + 600, "permissions": ["admin"]
        }))
        .unwrap(),
    );
    let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    assert_refused(&stack, &tampered, "tampered payload").await;

    let mut signature: Vec<u8> = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    signature[10] ^= 0x01;
    let flipped = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        URL_SAFE_NO_PAD.encode(signature)
    );
    assert_refused(&stack, &flipped, "flipped signature bit").await;
}

#[tokio::test]
async fn algorithm_confusion_is_refused() {
    let stack = spawn_stack().await;
    let key = stack.stack.issuer.key();
    let payload =
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(&stack, "ann@example.com")).unwrap());

    // alg: none, with and without a trailing empty signature.
    let header =
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT", "kid": key.kid()}).to_string());
    assert_refused(&stack, &format!("{header}.{payload}."), "alg none").await;
    assert_refused(
        &stack,
        &format!("{header}.{payload}"),
        "alg none, two segments",
    )
    .await;
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "None", "kid": key.kid()}).to_string());
    assert_refused(&stack, &format!("{header}.{payload}."), "alg None").await;

    // HS256 keyed with the public key, the classic RS/HS confusion.
    let public_pem = key.public_key_pem().unwrap();
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some(key.kid().to_string());
    let hs = jsonwebtoken::encode(
        &hs_header,
        &claims(&stack, "ann@example.com"),
        &EncodingKey::from_secret(public_pem.as_bytes()),
    )
    .unwrap();
    assert_refused(&stack, &hs, "HS256 with the public key").await;
}

#[tokio::test]
async fn missing_or_malformed_credentials_are_refused() {
    let stack = spawn_stack().await;
    let reply = stack
        .call(Method::POST, "/api/v1/auth/session", None, None)
        .await;
    reply.assert_problem(401);
    for header in [
        "Basic YW5uOnB3",
        "Bearer",
        "Bearer not.a.jwt",
        "Bearer a.b.c",
        "token",
    ] {
        let response = stack
            .http
            .get(format!("{}/api/v1/me", stack.base_url))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        testkit::read(response).await.assert_problem(401);
    }
}

#[tokio::test]
async fn the_jwks_is_published_and_dev_tokens_work() {
    let stack = spawn_stack().await;
    let jwks = stack.get("/.well-known/jwks.json", None).await;
    assert_eq!(jwks.body["keys"][0]["kid"], stack.stack.issuer.key().kid());
    assert_eq!(jwks.body["keys"][0]["alg"], "RS256");
    assert!(
        jwks.body["keys"][0].get("d").is_none(),
        "the private exponent must never be published"
    );

    let minted = stack
        .call(
            Method::POST,
            "/dev/token",
            None,
            Some(json!({"email": "ann@example.com", "permissions": ["admin"]})),
        )
        .await;
    assert_eq!(minted.status.as_u16(), 200);
    let token = minted.body["access_token"].as_str().unwrap();
    let reply = stack
        .call(Method::POST, "/api/v1/auth/session", Some(token), None)
        .await;
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);

    let bad = stack
        .call(
            Method::POST,
            "/dev/token",
            None,
            Some(json!({"email": "not an email"})),
        )
        .await;
    bad.assert_problem(422);
}
