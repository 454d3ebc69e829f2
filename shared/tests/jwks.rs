//! The JWKS cache against a real HTTP issuer that counts its hits: keys are
//! fetched once and cached, a rotated-in key is picked up on its first use,
//! and invented kids cannot make the service hammer the issuer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};
use shared::kernel::config::AuthConfig;
use shared::web::auth::dev_issuer::{DevIssuer, SigningKey};
use shared::web::auth::{AuthError, TokenVerifier};
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
                // `null` published: the issuer is down and answers 500.
                let document = published.read().await.clone();
                if document.is_null() {
                    return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
                axum::Json(document).into_response()
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
        email_claim: shared::kernel::config::DEFAULT_EMAIL_CLAIM.into(),
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
    let min_refresh = Duration::from_secs(2);
    let verifier = verifier(&issuer, min_refresh);
    // Signing is the slow part: the forged tokens are made before the clock matters.
    let forged: Vec<String> = (0..50)
        .map(|i| {
            old_key
                .sign(
                    &format!("invented-{i}"),
                    &dev.claims_for("x@example.com", &[], Duration::from_secs(60)),
                )
                .unwrap()
        })
        .collect();

    // Many verifications, one fetch.
    let token = dev
        .mint("ann@example.com", &[], Duration::from_secs(60))
        .unwrap();
    let started = Instant::now();
    for _ in 0..20 {
        let identity = verifier.verify(&token).await.unwrap();
        assert_eq!(identity.email.as_deref(), Some("ann@example.com"));
    }
    assert_eq!(issuer.hits.load(Ordering::SeqCst), 1);

    // A flood of invented kids right after a fetch costs the issuer nothing.
    for forged in &forged {
        assert!(matches!(
            verifier.verify(forged).await,
            Err(AuthError::UnknownKey)
        ));
    }
    // (Only a machine stalled past the interval could have let one through.)
    if started.elapsed() < min_refresh {
        assert_eq!(
            issuer.hits.load(Ordering::SeqCst),
            1,
            "unknown kids must not refetch within the interval"
        );
    }

    // The issuer rotates in a new key; once the interval has passed, its first
    // token triggers one refetch and is accepted.
    let new_key = SigningKey::generate().unwrap();
    *issuer.published.write().await = json!({"keys": [old_key.jwk(), new_key.jwk()]});
    let rotated = DevIssuer::new(new_key, issuer.url.clone(), "api")
        .mint("ann@example.com", &[], Duration::from_secs(60))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(err) = verifier.verify(&rotated).await {
        assert!(matches!(err, AuthError::UnknownKey), "{err:?}");
        assert!(
            Instant::now() < deadline,
            "the rotated key was never fetched"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fetched = issuer.hits.load(Ordering::SeqCst);
    verifier.verify(&rotated).await.unwrap();
    verifier.verify(&token).await.unwrap();
    assert_eq!(
        issuer.hits.load(Ordering::SeqCst),
        fetched,
        "both keys are cached now"
    );
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

#[tokio::test]
async fn an_issuer_answering_500_is_asked_at_most_once_per_backoff_interval() {
    let key = testkit::signing_key();
    let issuer = start_issuer(Value::Null).await;
    let dev = DevIssuer::new(key.clone(), issuer.url.clone(), "api");
    let min_refresh = Duration::from_secs(1);
    let verifier = Arc::new(verifier(&issuer, min_refresh));
    let token = dev
        .mint("ann@example.com", &[], Duration::from_secs(60))
        .unwrap();
    let hits = || issuer.hits.load(Ordering::SeqCst);

    // A burst of tokens, half of them concurrent: one fetch, every answer a 503.
    let started = Instant::now();
    let concurrent: Vec<_> = (0..25)
        .map(|_| {
            let (verifier, token) = (verifier.clone(), token.clone());
            tokio::spawn(async move { verifier.verify(&token).await })
        })
        .collect();
    for task in concurrent {
        let err = task.await.unwrap().unwrap_err();
        assert!(matches!(err, AuthError::KeysUnavailable), "{err:?}");
    }
    for _ in 0..25 {
        let err = verifier.verify(&token).await.unwrap_err();
        assert!(matches!(err, AuthError::KeysUnavailable), "{err:?}");
    }
    // Only a machine stalled past the first interval could have made a second.
    let expected = if started.elapsed() < min_refresh {
        1
    } else {
        2
    };
    assert!(hits() <= expected, "{} fetches for 50 tokens", hits());
    assert_eq!(hits().min(1), 1);

    // After the interval, the next token tries once more; the wait then doubles.
    let deadline = Instant::now() + Duration::from_secs(20);
    let before = hits();
    while hits() == before {
        assert!(
            Instant::now() < deadline,
            "the issuer was never asked again"
        );
        let err = verifier.verify(&token).await.unwrap_err();
        assert!(matches!(err, AuthError::KeysUnavailable), "{err:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = Instant::now();
    let after_second = hits();
    for _ in 0..20 {
        verifier.verify(&token).await.unwrap_err();
    }
    if second.elapsed() < 2 * min_refresh {
        assert_eq!(hits(), after_second, "asked again within the doubled wait");
    }

    // The issuer recovers: once the wait is over, its keys are fetched and used.
    *issuer.published.write().await = json!({"keys": [key.jwk()]});
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match verifier.verify(&token).await {
            Ok(identity) => {
                assert_eq!(identity.email.as_deref(), Some("ann@example.com"));
                break;
            }
            Err(AuthError::KeysUnavailable) => {
                assert!(Instant::now() < deadline, "never recovered");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    let recovered = hits();
    verifier.verify(&token).await.unwrap();
    assert_eq!(hits(), recovered, "a trusted key needs no fetch");
}
