//! The GDPR routes of the `auth` function.
//!
//! | route | what |
//! |---|---|
//! | `GET /api/v1/me/export` | everything held about the caller, inline or as a link |
//! | `DELETE /api/v1/me` | erases the caller's account (confirmed by its email) |

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::erasure::{self, Outcome};
use super::export::{self, Delivery, ExportAnswer};
use crate::kernel::error::{ApiError, FieldError, Problem};
use crate::ports::storage::ObjectStore;
use crate::users::account::Account;
use crate::web::auth::Caller;
use crate::web::http::{RawBody, RequestMeta};
use crate::web::input::{RequestBody, decode};
use crate::web::responses::{BodyRefused, ServerFailures, SignedIn};
use crate::web::responses::{InternalError, Unauthorized, ValidationFailed};
use crate::web::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/me", delete(erase))
        .route("/api/v1/me/export", get(export_me))
}

/// Export everything the platform holds about the caller.
///
/// One JSON document, format `charplat-export` version 1 (the README's "GDPR export format
/// v1" lists its keys): the account, profile, characters (image links valid for an hour),
/// collections with their members' ids, generation jobs, the credit account, the whole
/// ledger, holds, purchase orders, job refunds, gifts sent and received, ratings and likes
/// given, reports filed and the activity log. Nothing of anyone else's: other users appear
/// only as the ids and usernames the caller's own rows hold.
///
/// A document larger than `EXPORT_INLINE_MAX_BYTES` (default 5 MiB) is written to storage
/// instead, and the answer is a link to it (`format: charplat-export-link`, valid for an
/// hour): clients switch on `format`. Every export is logged as an `export` activity.
#[utoipa::path(
    get,
    path = "/api/v1/me/export",
    tag = "auth",
    operation_id = "export_me",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The export document (`format: charplat-export`), or, when it is larger than `EXPORT_INLINE_MAX_BYTES`, a link to it (`format: charplat-export-link`). Sent with `Cache-Control: no-store`.", body = ExportAnswer),
        (status = 503, description = "The document is too large to send inline and storage is not configured or failed (nothing was logged), or the database is briefly unavailable. Retry after `Retry-After` seconds.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
        (status = 500, response = InternalError),
        SignedIn,
    )
)]
pub(crate) async fn export_me(
    State(state): State<AppState>,
    mut account: Account,
    meta: RequestMeta,
) -> Result<Response, ApiError> {
    let (client, user) = account.parts();
    let delivery = export::export(
        client,
        user,
        state.storage.as_deref(),
        state.config.gdpr.export_inline_max_bytes,
        &meta,
    )
    .await?;
    let mut response = match delivery {
        Delivery::Inline(bytes) => (
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            bytes,
        )
            .into_response(),
        Delivery::Stored(link) => Json(link).into_response(),
    };
    // Personal data: neither browsers nor proxies keep a copy.
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The confirmation an erasure needs.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EraseRequest {
    /// The email address of the account being erased (compared regardless of case).
    #[serde(default)]
    #[schema(value_type = String, format = "email", example = "ann@example.com", required = true)]
    confirm: Option<String>,
}

impl RequestBody for EraseRequest {
    /// The confirmation, compared with the account's email by the caller.
    type Valid = String;

    fn validate(self, errors: &mut Vec<FieldError>) -> String {
        match self.confirm {
            Some(confirm) if !confirm.trim().is_empty() => confirm,
            _ => {
                errors.push(FieldError::new(
                    "confirm",
                    "is required: the email address of the account, to confirm its erasure",
                ));
                String::new()
            }
        }
    }
}

/// Erase the caller's account.
///
/// Irreversible. The body must confirm it: `{"confirm": "<the account's email>"}`; a missing
/// or wrong confirmation is a 422 and changes nothing. Then, in one transaction: the
/// caller's queued and running jobs are cancelled and their credits released; characters
/// (with their images), collections, ratings, likes and the profile are deleted; the
/// account becomes a tombstone (status `deleted`, email, identity, names and avatar gone);
/// the ledger and purchase orders stay for the audit trail, scrubbed of anything naming the
/// caller, as do the other side of gifts and the activity log (without addresses and user
/// agents); reports filed stay without their reporter. The remaining credits are forfeited.
///
/// Afterwards tokens issued before the erasure are refused (403 wherever the account is
/// looked up), while a sign-in with a newer token starts a new, empty account (which the
/// identity then maps to). Repeating
/// the request with the same identity answers 204 again and changes nothing, so a client
/// whose first answer was lost can simply retry.
#[utoipa::path(
    delete,
    path = "/api/v1/me",
    tag = "auth",
    operation_id = "erase_me",
    security(("bearer" = [])),
    request_body(content = EraseRequest, description = "Required."),
    responses(
        (status = 204, description = "Erased; or this identity's account was already erased (nothing changed)."),
        (status = 401, response = Unauthorized),
        (status = 403, description = "The account is banned: it is kept for the moderation record (support can erase it).", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "This identity never had an account.", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = ValidationFailed),
        BodyRefused,
        ServerFailures,
    )
)]
pub(crate) async fn erase(
    State(state): State<AppState>,
    Caller(identity): Caller,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<StatusCode, ApiError> {
    let confirm = confirmation(&headers, &body)?;
    let mut conn = state.db.get().await?;
    let client: &mut tokio_postgres::Client = &mut conn;
    if let Outcome::Erased { objects } = erasure::erase(client, &identity, &confirm).await? {
        // The rows are gone; now the files. A failure leaves a logged orphan.
        delete_objects(state.storage.as_deref(), objects).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The `confirm` of the body. An empty body is a missing confirmation (422),
/// like an empty object; anything else must be a JSON object.
fn confirmation(headers: &HeaderMap, body: &[u8]) -> Result<String, ApiError> {
    let map = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        if !is_json(headers) {
            return Err(ApiError::UnsupportedMediaType(
                "send the body as `Content-Type: application/json`".into(),
            ));
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(ApiError::validation("body", "must be a JSON object")),
            Err(e) => {
                return Err(ApiError::BadRequest(format!(
                    "the body is not valid JSON: {e}"
                )));
            }
        }
    };
    decode::<EraseRequest>(map)
}

/// `application/json` or a `+json` type, as axum's `Json` accepts.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| mime.trim().to_ascii_lowercase())
        .is_some_and(|mime| {
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
}

async fn delete_objects(storage: Option<&dyn ObjectStore>, objects: Vec<String>) {
    if objects.is_empty() {
        return;
    }
    let Some(storage) = storage else {
        tracing::error!(
            count = objects.len(),
            "no storage configured: an erased account's objects were not deleted"
        );
        return;
    };
    futures::stream::iter(objects)
        .for_each_concurrent(16, |key| async move {
            if let Err(e) = storage.delete(&key).await {
                tracing::error!(%key, error = %e, "orphaned object after an erasure");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers
    }

    #[test]
    fn the_confirmation_is_a_required_non_blank_string() {
        let ok = confirmation(&json_headers(), br#"{"confirm": "ann@example.com"}"#).unwrap();
        assert_eq!(ok, "ann@example.com");
        for body in [
            &b""[..],
            b"  ",
            b"{}",
            br#"{"confirm": null}"#,
            br#"{"confirm": " "}"#,
            br#"{"confirm": 7}"#,
            br#"{"confirm": "a", "also": 1}"#,
            b"[1]",
        ] {
            let err = confirmation(&json_headers(), body).unwrap_err();
            assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body:?}");
        }
        assert_eq!(
            confirmation(&json_headers(), b"{nope")
                .unwrap_err()
                .status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            confirmation(&HeaderMap::new(), br#"{"confirm": "a@b.co"}"#)
                .unwrap_err()
                .status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }
}
