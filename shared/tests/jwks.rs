//! The JWKS cache against a real HTTP issuer that counts its hits: keys are
//! fetched once and cached, a rotated-in key is picked up on its first use,
//! and invented kids cannot make the service hammer the issuer.
//!
//! The cache reads the time from a clock these tests move by hand
//! ([`TestClock`]), so every interval is checked at its exact edges and no
//! outcome depends on how fast the machine verifies or signs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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

/// A clock that stands still until the test moves it.
#[derive(Clone)]
struct TestClock {
    start: Instant,
    offset: Arc<Mutex<Duration>>,
}

impl TestClock {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            offset: Arc::new(Mutex::new(Duration::ZERO)),
        }
    }

    fn advance(&self, by: Duration) {
        *self.offset.lock().unwrap() += by;
    }

    fn as_clock(&self) -> shared::web::auth::jwks::Clock {
        let clock = self.clone();
        Arc::new(move || clock.start + *clock.offset.lock().unwrap())
    }
}

/// One millisecond: how far from an interval's edge the tests check it.
const TICK: Duration = Duration::from_millis(1);

fn verifier(issuer: &Issuer, min_refresh: Duration, clock: &TestClock) -> TokenVerifier {
    TokenVerifier::new(&AuthConfig {
        issuer: issuer.url.clone(),
        audiences: vec!["api".into()],
        jwks_url: format!("{}.well-known/jwks.json", issuer.url),
        email_claim: shared::kernel::config::DEFAULT_EMAIL_CLAIM.into(),
        leeway_seconds: 30,
        jwks_min_refresh: min_refresh,
        trust_gateway_claims: false,
    })
    .with_jwks_clock(clock.as_clock())
}

#[tokio::test]
async fn keys_are_cached_rotation_is_picked_up_and_unknown_kids_are_rate_limited() {
    let old_key = testkit::signing_key();
    let issuer = start_issuer(json!({"keys": [old_key.jwk()]})).await;
    let dev = DevIssuer::new(old_key.clone(), issuer.url.clone(), "api");
    let min_refresh = Duration::from_secs(2);
    let clock = TestClock::new();
    let verifier = verifier(&issuer, min_refresh, &clock);
    let hits = || issuer.hits.load(Ordering::SeqCst);
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
    for _ in 0..20 {
        let identity = verifier.verify(&token).await.unwrap();
        assert_eq!(identity.email.as_deref(), Some("ann@example.com"));
    }
    assert_eq!(hits(), 1);

    // A flood of invented kids right after a fetch costs the issuer nothing,
    // up to the last instant of the interval.
    for forged in &forged {
        assert!(matches!(
            verifier.verify(forged).await,
            Err(AuthError::UnknownKey)
        ));
    }
    assert_eq!(
        hits(),
        1,
        "unknown kids must not refetch within the interval"
    );
    clock.advance(min_refresh - TICK);
    for forged in &forged[..5] {
        assert!(matches!(
            verifier.verify(forged).await,
            Err(AuthError::UnknownKey)
        ));
    }
    assert_eq!(hits(), 1, "nor at its last instant");

    // The issuer rotates in a new key: within the interval its tokens are
    // unknown; once the interval has passed, the first one triggers one
    // refetch and is accepted.
    let new_key = SigningKey::generate().unwrap();
    *issuer.published.write().await = json!({"keys": [old_key.jwk(), new_key.jwk()]});
    let rotated = DevIssuer::new(new_key, issuer.url.clone(), "api")
        .mint("ann@example.com", &[], Duration::from_secs(60))
        .unwrap();
    assert!(matches!(
        verifier.verify(&rotated).await,
        Err(AuthError::UnknownKey)
    ));
    assert_eq!(hits(), 1);
    clock.advance(TICK);
    verifier.verify(&rotated).await.unwrap();
    assert_eq!(hits(), 2);
    verifier.verify(&rotated).await.unwrap();
    verifier.verify(&token).await.unwrap();
    assert_eq!(hits(), 2, "both keys are cached now");

    // The issuer revokes the old key: trusted until the set is an hour old,
    // then the whole set is fetched again and the old key's tokens fail.
    *issuer.published.write().await = json!({"keys": [SigningKey::generate().unwrap().jwk()]});
    clock.advance(Duration::from_secs(3600) - TICK);
    verifier.verify(&token).await.unwrap();
    assert_eq!(hits(), 2, "still fresh");
    clock.advance(TICK);
    assert!(matches!(
        verifier.verify(&token).await,
        Err(AuthError::UnknownKey)
    ));
    assert_eq!(hits(), 3, "one refetch of the stale set");
}

#[tokio::test]
async fn concurrent_misses_make_one_fetch() {
    let key = testkit::signing_key();
    let issuer = start_issuer(json!({"keys": [key.jwk()]})).await;
    let dev = DevIssuer::new(key, issuer.url.clone(), "api");
    let verifier = Arc::new(verifier(
        &issuer,
        Duration::from_secs(60),
        &TestClock::new(),
    ));
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
    let verifier = verifier(&issuer, Duration::from_secs(60), &TestClock::new());
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
    let clock = TestClock::new();
    let verifier = Arc::new(verifier(&issuer, min_refresh, &clock));
    let token = dev
        .mint("ann@example.com", &[], Duration::from_secs(60))
        .unwrap();
    let hits = || issuer.hits.load(Ordering::SeqCst);
    let unavailable = |outcome: Result<_, AuthError>| match outcome {
        Err(AuthError::KeysUnavailable) => {}
        other => panic!("expected KeysUnavailable, got {other:?}"),
    };

    // A burst of tokens, half of them concurrent: one fetch, every answer a 503.
    let concurrent: Vec<_> = (0..25)
        .map(|_| {
            let (verifier, token) = (verifier.clone(), token.clone());
            tokio::spawn(async move { verifier.verify(&token).await })
        })
        .collect();
    for task in concurrent {
        unavailable(task.await.unwrap());
    }
    for _ in 0..25 {
        unavailable(verifier.verify(&token).await);
    }
    assert_eq!(hits(), 1, "one fetch for 50 tokens");

    // The wait after each failure: min_refresh, then doubling. Up to its last
    // instant nothing is asked; at its end, the next token asks once more.
    let mut expected = 1;
    for wait in [min_refresh, 2 * min_refresh, 4 * min_refresh] {
        clock.advance(wait - TICK);
        for _ in 0..20 {
            unavailable(verifier.verify(&token).await);
        }
        assert_eq!(hits(), expected, "asked again within a wait of {wait:?}");
        clock.advance(TICK);
        unavailable(verifier.verify(&token).await);
        expected += 1;
        assert_eq!(hits(), expected, "not asked again after a wait of {wait:?}");
    }

    // The issuer recovers: once the wait is over, its keys are fetched and used.
    *issuer.published.write().await = json!({"keys": [key.jwk()]});
    clock.advance(8 * min_refresh - TICK);
    unavailable(verifier.verify(&token).await);
    assert_eq!(hits(), expected);
    clock.advance(TICK);
    let identity = verifier.verify(&token).await.unwrap();
    assert_eq!(identity.email.as_deref(), Some("ann@example.com"));
    assert_eq!(hits(), expected + 1);
    verifier.verify(&token).await.unwrap();
    assert_eq!(hits(), expected + 1, "a trusted key needs no fetch");
}
