//! Admin routes of the credit engine (permission `admin` in the token):
//!
//! | route | what |
//! |---|---|
//! | `GET/POST /api/v1/admin/pricing`, `PATCH /api/v1/admin/pricing/{id}` | `api_credit_configs` |
//! | `GET/POST /api/v1/admin/packages`, `PATCH /api/v1/admin/packages/{id}` | `credit_packages` |
//! | `POST /api/v1/admin/credits/adjustments` | one `admin_adjustment` ledger entry |
//! | `POST /api/v1/admin/jobs/{id}/refund` | refunds a completed job's usage, once |
//!
//! The permission is checked server-side by the [`Admin`] extractor before
//! anything else is read: no token is a 401, a token without `admin` a 403.
//! Every action runs as the system role in one transaction with the
//! `user_activity_logs` row naming the admin who did it.

pub mod adjustments;
pub mod packages;
pub mod pricing;
pub mod refunds;

use axum::Router;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::GenericClient;

use crate::kernel::error::{ApiError, PROBLEM_JSON};
use crate::web::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/admin/pricing",
            get(pricing::list).post(pricing::create),
        )
        .route("/api/v1/admin/pricing/{id}", patch(pricing::update))
        .route(
            "/api/v1/admin/packages",
            get(packages::list).post(packages::create),
        )
        .route("/api/v1/admin/packages/{id}", patch(packages::update))
        .route(
            "/api/v1/admin/credits/adjustments",
            post(adjustments::create),
        )
        .route("/api/v1/admin/jobs/{id}/refund", post(refunds::create))
}

/// The response of an error, with `needed` and `available` in the body of a
/// 402: `ApiError`'s own rendering leaves them out, and the API promises
/// them to the client.
pub(crate) fn error_response(err: ApiError) -> Response {
    let ApiError::PaymentRequired {
        detail,
        needed,
        available,
    } = &err
    else {
        return err.into_response();
    };
    let (slug, title) = err.kind();
    let body = serde_json::json!({
        "type": format!("/problems/{slug}"),
        "title": title,
        "status": err.status().as_u16(),
        "detail": detail,
        "needed": needed,
        "available": available,
    });
    (
        err.status(),
        [(header::CONTENT_TYPE, PROBLEM_JSON)],
        axum::Json(body),
    )
        .into_response()
}

/// A `credit_transactions` row, as admin routes answer it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct CreditTransaction {
    pub id: String,
    /// The user whose balance the entry moved.
    pub user_id: String,
    pub transaction_type: String,
    /// Positive credits in, negative credits out.
    pub amount: i32,
    /// The user's `current_balance` right after this entry.
    pub balance_after: i32,
    pub related_entity_type: Option<String>,
    pub related_entity_id: Option<String>,
    pub description: String,
    pub metadata: Option<Value>,
    pub status: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl CreditTransaction {
    /// Reads a posted transaction back (in the transaction that posted it).
    pub async fn load(
        client: &impl GenericClient,
        user_id: &str,
        id: &str,
    ) -> Result<Self, ApiError> {
        let row = client
            .query_opt(
                "SELECT id, user_id, transaction_type, amount, balance_after, related_entity_type, \
                        related_entity_id, description, metadata, status, created_at \
                 FROM credit_transactions WHERE user_id = $1 AND id = $2",
                &[&user_id, &id],
            )
            .await?
            .ok_or_else(|| ApiError::internal(format!("credit transaction {id} vanished")))?;
        Ok(Self {
            id: row.try_get("id")?,
            user_id: row.try_get("user_id")?,
            transaction_type: row.try_get("transaction_type")?,
            amount: row.try_get("amount")?,
            balance_after: row.try_get("balance_after")?,
            related_entity_type: row.try_get("related_entity_type")?,
            related_entity_id: row.try_get("related_entity_id")?,
            description: row.try_get("description")?,
            metadata: row.try_get("metadata")?,
            status: row.try_get("status")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_402_names_what_was_needed_and_available() {
        let response = error_response(ApiError::PaymentRequired {
            detail: "short".into(),
            needed: 11,
            available: 10,
        });
        assert_eq!(response.status(), 402);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["type"], "/problems/insufficient-credits");
        assert_eq!(
            (body["needed"].as_i64(), body["available"].as_i64()),
            (Some(11), Some(10))
        );
        assert_eq!(body["detail"], "short");
    }
}
