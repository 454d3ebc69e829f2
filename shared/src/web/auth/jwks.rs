//! The issuer's signing keys, fetched from its JWKS endpoint and cached by `kid`.
//!
//! An unknown `kid` triggers a refetch (the issuer may have rotated keys), but
//! at most once per `min_refresh`, so a flood of tokens with invented kids cannot
//! turn this service into a load generator against the issuer. The whole set is
//! also refreshed when older than `max_age`, so a revoked key stops working.
//!
//! While the issuer fails (an outage, a 500), failed fetches count as fetches:
//! the next one waits `min_refresh`, then twice as long after each further
//! failure, up to [`MAX_BACKOFF`]. Meanwhile keys already trusted keep working
//! and unknown ones are a 503 without any request to the issuer, so an outage
//! of the identity provider never becomes a fetch storm from every instance.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::DecodingKey;
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

use super::AuthError;

#[derive(Debug, Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

#[derive(Debug, Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    key_use: Option<String>,
    alg: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

/// The longest wait between fetches while the issuer keeps failing.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Default)]
struct Cached {
    keys: HashMap<String, DecodingKey>,
    /// The last successful fetch.
    fetched_at: Option<Instant>,
    /// The last fetch, successful or not.
    attempted_at: Option<Instant>,
    /// Fetches failed in a row since the last success.
    failures: u32,
}

impl Cached {
    /// How long after the last attempt the next fetch may be made.
    fn wait(&self, min_refresh: Duration) -> Duration {
        if self.failures == 0 {
            return min_refresh;
        }
        let doublings = (self.failures - 1).min(16);
        min_refresh
            .saturating_mul(1 << doublings)
            .min(MAX_BACKOFF)
            .max(min_refresh)
    }
}

/// Where the cache reads the time: [`Instant::now`], unless a test moves a
/// clock of its own by hand to check the intervals exactly.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

pub struct JwksCache {
    url: String,
    clock: Clock,
    http: reqwest::Client,
    min_refresh: Duration,
    max_age: Duration,
    cached: RwLock<Cached>,
    /// Held while fetching, so concurrent misses make one request.
    fetching: Mutex<()>,
}

impl JwksCache {
    pub fn new(url: String, min_refresh: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            url,
            clock: Arc::new(Instant::now),
            http,
            min_refresh,
            max_age: Duration::from_secs(3600),
            cached: RwLock::new(Cached::default()),
            fetching: Mutex::new(()),
        }
    }

    /// The same cache reading the time from `clock`.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn since(&self, at: Instant) -> Duration {
        (self.clock)().saturating_duration_since(at)
    }

    /// The RS256 verification key with this `kid`.
    pub async fn key(&self, kid: &str) -> Result<DecodingKey, AuthError> {
        if let Some(key) = self.lookup_fresh(kid).await {
            return Ok(key);
        }
        let _fetching = self.fetching.lock().await;
        // Another task may have refreshed while this one waited.
        if let Some(key) = self.lookup_fresh(kid).await {
            return Ok(key);
        }
        let (too_soon, failing, stale_key) = {
            let cached = self.cached.read().await;
            (
                cached
                    .attempted_at
                    .is_some_and(|at| self.since(at) < cached.wait(self.min_refresh)),
                cached.failures > 0,
                cached.keys.get(kid).cloned(),
            )
        };
        if too_soon {
            // Keep serving a key we already trusted; an unknown one is the issuer's
            // problem while it fails, the token's otherwise.
            return stale_key.ok_or(if failing {
                AuthError::KeysUnavailable
            } else {
                AuthError::UnknownKey
            });
        }
        let fetched = self.fetch().await;
        let mut cached = self.cached.write().await;
        cached.attempted_at = Some((self.clock)());
        match fetched {
            Ok(keys) => {
                let found = keys.get(kid).cloned();
                cached.keys = keys;
                cached.fetched_at = cached.attempted_at;
                cached.failures = 0;
                found.ok_or(AuthError::UnknownKey)
            }
            Err(reason) => {
                cached.failures = cached.failures.saturating_add(1);
                tracing::warn!(%reason, url = %self.url, failures = cached.failures,
                    next_attempt_in_s = cached.wait(self.min_refresh).as_secs(), "JWKS fetch failed");
                // Keep serving a key we already trusted rather than failing every request
                // while the issuer is briefly unreachable.
                stale_key.ok_or(AuthError::KeysUnavailable)
            }
        }
    }

    async fn lookup_fresh(&self, kid: &str) -> Option<DecodingKey> {
        let cached = self.cached.read().await;
        let fresh = cached
            .fetched_at
            .is_some_and(|at| self.since(at) < self.max_age);
        if fresh {
            cached.keys.get(kid).cloned()
        } else {
            None
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, DecodingKey>, String> {
        let response = self
            .http
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let set: JwkSet = response.json().await.map_err(|e| e.to_string())?;
        Ok(parse_keys(set))
    }
}

/// Keeps only RSA signing keys usable with RS256 that carry a `kid`.
fn parse_keys(set: JwkSet) -> HashMap<String, DecodingKey> {
    set.keys
        .into_iter()
        .filter(|k| k.kty == "RSA")
        .filter(|k| k.key_use.as_deref().is_none_or(|u| u == "sig"))
        .filter(|k| k.alg.as_deref().is_none_or(|a| a == "RS256"))
        .filter_map(|k| {
            let kid = k.kid?;
            let key = DecodingKey::from_rsa_components(k.n.as_deref()?, k.e.as_deref()?).ok()?;
            Some((kid, key))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_double_the_wait_up_to_the_cap() {
        let mut cached = Cached::default();
        let min = Duration::from_secs(10);
        assert_eq!(cached.wait(min), min);
        let waits: Vec<u64> = (1..=8)
            .map(|failures| {
                cached.failures = failures;
                cached.wait(min).as_secs()
            })
            .collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300, 300]);
        cached.failures = u32::MAX;
        assert_eq!(cached.wait(min), MAX_BACKOFF);
    }

    #[test]
    fn keeps_only_rs256_signing_keys_with_kid() {
        let set: JwkSet = serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "good", "use": "sig", "alg": "RS256", "n": "sXch", "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "sXch", "e": "AQAB"},
            {"kty": "RSA", "kid": "ps", "alg": "PS256", "n": "sXch", "e": "AQAB"},
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "a", "y": "b"},
            {"kty": "RSA", "n": "sXch", "e": "AQAB"}
        ]}))
        .unwrap();
        let keys = parse_keys(set);
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["good"]);
    }
}
