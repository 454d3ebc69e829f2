//! `Idempotency-Key` for every POST that moves credits or starts a job, with
//! Stripe's semantics: the same key with the same request answers the stored
//! response; the same key with a different request is a 422; keys are kept
//! 24 hours.
//!
//! The key row is claimed in the same database transaction as the effect and
//! completed with the response before commit. A concurrent duplicate blocks on
//! the key's unique index until the first commits, then replays its response;
//! if the first rolled back, the duplicate runs as new. So concurrent
//! duplicates have exactly one effect.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_postgres::GenericClient;

use crate::kernel::error::ApiError;

pub const HEADER: &str = "idempotency-key";
/// How long a key is remembered.
pub const RETENTION_HOURS: i32 = 24;

/// The request's `Idempotency-Key`, if it sent one: 1 to 255 printable ASCII
/// characters, else a 400.
#[derive(Debug, Clone)]
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(HEADER) else {
            return Ok(Self(None));
        };
        let key = value
            .to_str()
            .ok()
            .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                ApiError::BadRequest(
                    "Idempotency-Key must be 1 to 255 printable ASCII characters".into(),
                )
            })?;
        Ok(Self(Some(key.to_string())))
    }
}

/// What claiming a key found.
#[derive(Debug)]
pub enum Claim {
    /// First use (or the only live one): do the work, then [`complete`].
    New,
    /// Already done: answer this.
    Replay { status: StatusCode, body: Value },
}

impl Claim {
    /// The stored response, as a response.
    pub fn replay(status: StatusCode, body: Value) -> Response {
        (status, [("idempotent-replayed", "true")], axum::Json(body)).into_response()
    }
}

/// Digest of the request body (JSON re-serialised, so formatting differences
/// of the same value do not count as a different request).
pub fn request_hash(body: &Value) -> String {
    hex::encode(Sha256::digest(body.to_string().as_bytes()))
}

/// Claims `key` for this request, in the caller's transaction.
pub async fn claim(
    client: &impl GenericClient,
    user_id: &str,
    key: &str,
    method: &str,
    route: &str,
    body: &Value,
) -> Result<Claim, ApiError> {
    let hash = request_hash(body);
    // A key past its retention is forgotten, so it may be used again.
    client
        .execute(
            "DELETE FROM idempotency_keys WHERE user_id = $1 AND idempotency_key = $2 \
             AND created_at < now() - make_interval(hours => $3)",
            &[&user_id, &key, &RETENTION_HOURS],
        )
        .await?;
    let inserted = client
        .query_opt(
            "INSERT INTO idempotency_keys (user_id, idempotency_key, request_method, request_path, request_hash) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1",
            &[&user_id, &key, &method, &route, &hash],
        )
        .await?;
    if inserted.is_some() {
        return Ok(Claim::New);
    }
    let row = client
        .query_one(
            "SELECT request_method, request_path, request_hash, response_status, response_body \
             FROM idempotency_keys WHERE user_id = $1 AND idempotency_key = $2",
            &[&user_id, &key],
        )
        .await?;
    let (stored_method, stored_route, stored_hash): (String, String, String) =
        (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    if stored_method != method || stored_route != route || stored_hash != hash {
        return Err(ApiError::validation(
            "Idempotency-Key",
            "was already used with a different request; use a new key for a new request",
        ));
    }
    let status: Option<i32> = row.try_get(3)?;
    let body: Option<Value> = row.try_get(4)?;
    match (status, body) {
        (Some(status), Some(body)) => Ok(Claim::Replay {
            status: u16::try_from(status)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::OK),
            body,
        }),
        _ => Err(ApiError::Conflict(
            "a request with this Idempotency-Key is still in progress; retry shortly".into(),
        )),
    }
}

/// Stores the response of a claimed key, in the same transaction as the effect.
pub async fn complete(
    client: &impl GenericClient,
    user_id: &str,
    key: &str,
    status: StatusCode,
    body: &Value,
) -> Result<(), ApiError> {
    client
        .execute(
            "UPDATE idempotency_keys SET response_status = $3, response_body = $4, completed_at = now() \
             WHERE user_id = $1 AND idempotency_key = $2",
            &[&user_id, &key, &i32::from(status.as_u16()), body],
        )
        .await?;
    Ok(())
}

/// Forgets a claimed key (after a failure the client should be able to retry).
pub async fn forget(client: &impl GenericClient, user_id: &str, key: &str) -> Result<(), ApiError> {
    client
        .execute(
            "DELETE FROM idempotency_keys WHERE user_id = $1 AND idempotency_key = $2",
            &[&user_id, &key],
        )
        .await?;
    Ok(())
}

/// Drops keys past their retention (the scheduler's upkeep); returns how many.
pub async fn purge_expired(client: &impl GenericClient) -> Result<u64, ApiError> {
    Ok(client
        .execute(
            "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)",
            &[&RETENTION_HOURS],
        )
        .await?)
}
