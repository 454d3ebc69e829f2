//! The JWKS cache against a real HTTP issuer that counts its hits: keys are
//! fetched once and cached, a rotated-in key is picked up on its first use,
//! and invented kids cannot make the service hammer the issuer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use serde_json::{Value, json};
use shared::auth::dev_issuer::{DevIssuer, SigningKey};
use shared::auth::{AuthError, TokenVerifier};
use shared::config::AuthConfig;
use tokio::sync::RwLock;

struct Issuer {
    hits: Arc<AtomicUsize>,
    published: Arc<RwLock<Value>>,
    url: String,
}

async fn start_issuer(initial: Value) -> Issuer {
    let hits = Arc::new(AtomicUsize::new(0));
    let published = Arc::new(RwLock::new(initial));
    let app = Router::new().route(
        "/.well-known/jwks.json",
        get({
            let hits = hits.clone();
            let published = published.clone();
            move || async move {
                hits.fetch_add(1, Ordering::SeqCst);
                axum::Json(published.read().await.clone())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Issuer {
        hits,
        published,
        url,
    }
}

fn verifier(issuer: &Issuer, min_refresh: Duration) -> TokenVerifier {
    TokenVerifier::new(&AuthConfig {
        issuer: issuer.url.clone(),
        audiences: vec!["api".into()],
        jwks_url: format!("{}.well-known/jwks.json", issuer.url),
        email_claim: shared::config::DEFAULT_EMAIL_CLAIM.into(),
        leeway_seconds: 30,
        jwks_min_refresh: min_refresh,
        trust_gateway_claims: false,
    })
}

#[tokio::test]
async fn keys_are_cached_rotation_is_picked_up_and_unknown_kids_are_rate_limited() {
    let old_key = testkit::signing_key();
    let issuer = start_issuer(json!({"keys": [old_key.jwk()]})).await;
    let dev = DevIssuer::new(old_key.clone(), issuer.url.clone(), "api");
    let verifier = verifier(&issuer, Duration::from_millis(400));

    // Many verifications, one fetch.
    let token = dev
        .mint("ann@example.com", &[], Duration::from_secs(60))
        .unwrap();
    for _ in 0..20 {
        let identity = verifier.verify(&token).await.unwrap();
        assert_eq!(identity.email.as_deref(), Some("ann@example.com"));
    }
    assert_eq!(issuer.hits.load(Ordering::SeqCst), 1);

    // A flood of invented kids right after a fetch costs the issuer nothing.
    for i in 0..50 {
        let forged = old_key
            .sign(
                &format!("invented-{i}"),
                &dev.claims_for("x@example.com", &[], Duration::from_secs(60)),
            )
            .unwrap();
        assert!(matches!(
            verifier.verify(&forged).await,
            Err(AuthError::UnknownKey)
        ));
    }
    assert_eq!(
        issuer.hits.load(Ordering::SeqCst),
        1,
        "unknown kids must not refetch within the interval"
    );

    // The issuer rotates in a new key; once the interval has passed, its first
    // token triggers one refetch and is accepted.
    let new_key = SigningKey::generate().unwrap();
    *issuer.published.write().await = json!({"keys": [old_key.jwk(), new_key.jwk()]});
    tokio::time::sleep(Duration::from_millis(450)).await;
    let rotated = DevIssuer::new(new_key, issuer.url.clone(), "api")
        .mint("ann@example.com", &[], Duration::from_secs(60))
        .unwrap();
    verifier.verify(&rotated).await.unwrap();
    assert_eq!(issuer.hits.load(Ordering::SeqCst), 2);
    verifier.verify(&rotated).await.unwrap();
    verifier.verify(&token).await.unwrap();
    assert_eq!(issuer.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn concurrent_misses_make_one_fetch() {
    let key = testkit::signing_key();
    let issuer = start_issuer(json!({"keys": [key.jwk()]})).await;
    let dev = DevIssuer::new(key, issuer.url.clone(), "api");
    let verifier = Arc::new(verifier(&issuer, Duration::from_secs(60)));
    let token = dev
        .mint("ann@example.com", &[], Duration::from_secs(60))
        .unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let verifier = verifier.clone();
            let token = token.clone();
            tokio::spawn(async move { verifier.verify(&token).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(issuer.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_unreachable_issuer_is_a_service_problem_not_a_client_one() {
    let key = testkit::signing_key();
    // Nothing listens on this port.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    drop(listener);
    let issuer = Issuer {
        hits: Arc::new(AtomicUsize::new(0)),
        published: Arc::new(RwLock::new(Value::Null)),
        url: url.clone(),
    };
    let verifier = verifier(&issuer, Duration::from_secs(60));
    let token = DevIssuer::new(key, url, "api")
        .mint("ann@example.com", &[], Duration::from_secs(60))
        .unwrap();
    let err = verifier.verify(&token).await.unwrap_err();
    assert!(matches!(err, AuthError::KeysUnavailable), "{err:?}");
    let api: shared::ApiError = err.into();
    assert_eq!(api.status().as_u16(), 503);
}
