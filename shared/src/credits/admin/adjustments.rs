//! `POST /api/v1/admin/credits/adjustments`: an admin credits or debits a
//! user's balance with one `admin_adjustment` ledger entry, with a reason.
//! A debit can never take the user's available balance below zero (402 with
//! what was needed and what is available; nothing changes).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio_postgres::GenericClient;
use utoipa::ToSchema;

use super::{CreditTransaction, error_response};
use crate::activity::{self, Activity};
use crate::credits::ledger::{self, Entry};
use crate::kernel::error::{ApiError, FieldError, Problem};
use crate::users::account::AdminAccount;
use crate::web::http::{ApiJson, RequestMeta};
use crate::web::idempotency::{self, Claim, IdempotencyKey};
use crate::web::input::checks::{self, check};
use crate::web::input::{RequestBody, decode, required};
use crate::web::responses::Unauthorized;
use crate::web::responses::{BodyRefused, ServerFailures};

/// The route, as idempotency keys record it.
pub const ROUTE: &str = "/api/v1/admin/credits/adjustments";
/// Largest adjustment either way.
pub const MAX_ADJUSTMENT: i64 = 10_000_000;

/// A validated adjustment request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjustment {
    pub user_id: String,
    /// Non-zero; positive credits the user, negative debits them.
    pub amount: i32,
    /// The reason, kept as the ledger entry's description.
    pub description: String,
}

impl Adjustment {
    pub fn parse(body: Map<String, Value>) -> Result<Self, ApiError> {
        decode::<NewAdjustment>(body)?.ok_or_else(|| ApiError::validation("body", "is incomplete"))
    }
}

/// An adjustment of a user's balance. Unknown fields are refused with a 422 naming them.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAdjustment {
    /// The user whose balance changes (not the admin's own).
    #[serde(default)]
    #[schema(value_type = String, required = true, min_length = 1, max_length = 200)]
    user_id: Option<String>,
    /// Whole credits, not 0, from -10000000 to 10000000: positive credits the user, negative
    /// debits them (never below their available balance: 402).
    #[serde(default)]
    #[schema(value_type = i32, required = true, minimum = -10_000_000, maximum = 10_000_000)]
    amount: Option<i64>,
    /// The reason, kept as the ledger entry's description: 1 to 500 characters, multi-line,
    /// trimmed.
    #[serde(default)]
    #[schema(value_type = String, required = true, min_length = 1, max_length = 500)]
    description: Option<String>,
}

impl RequestBody for NewAdjustment {
    /// `None` when a check failed (and named its field).
    type Valid = Option<Adjustment>;

    fn validate(self, errors: &mut Vec<FieldError>) -> Option<Adjustment> {
        let user_id = required("user_id", self.user_id, errors).and_then(|id| {
            let plausible = (1..=200).contains(&id.len()) && !id.chars().any(char::is_control);
            let checked = if plausible {
                Ok(id)
            } else {
                Err(FieldError::new("user_id", "is not a user id"))
            };
            check(errors, checked)
        });
        let amount = required("amount", self.amount, errors).and_then(|n| {
            let valid = Some(n)
                .filter(|n| *n != 0 && n.abs() <= MAX_ADJUSTMENT)
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(|| {
                    FieldError::new(
                        "amount",
                        format!(
                            "must be a non-zero whole number from -{MAX_ADJUSTMENT} to {MAX_ADJUSTMENT}"
                        ),
                    )
                });
            check(errors, valid)
        });
        let description = required("description", self.description, errors)
            .and_then(|text| check(errors, checks::nonblank("description", &text, 500, true)));
        Some(Adjustment {
            user_id: user_id?,
            amount: amount?,
            description: description?,
        })
    }
}

/// Posts the adjustment and its audit row in the caller's transaction.
pub async fn adjust(
    client: &impl GenericClient,
    admin_id: &str,
    adjustment: &Adjustment,
    meta: &RequestMeta,
) -> Result<CreditTransaction, ApiError> {
    if adjustment.user_id == admin_id {
        return Err(ApiError::Forbidden(
            "an admin cannot adjust their own balance; ask another admin".into(),
        ));
    }
    let target = client
        .query_opt("SELECT 1 FROM users WHERE id = $1", &[&adjustment.user_id])
        .await?;
    if target.is_none() {
        return Err(ApiError::validation("user_id", "is not a user"));
    }
    let entry = Entry::new(
        "admin_adjustment",
        adjustment.amount,
        adjustment.description.clone(),
    )
    .metadata(json!({"admin_user_id": admin_id}));
    let posted = ledger::post(client, &adjustment.user_id, entry).await?;
    let transaction =
        CreditTransaction::load(client, &adjustment.user_id, &posted.transaction_id).await?;
    activity::record(
        client,
        Activity {
            user_id: Some(admin_id),
            activity_type: crate::activity::ActivityType::AdminCreditAdjustment,
            entity_type: Some("user"),
            entity_id: Some(&adjustment.user_id),
            metadata: json!({
                "target_user_id": adjustment.user_id,
                "amount": adjustment.amount,
                "description": adjustment.description,
                "transaction_id": transaction.id,
                "balance_after": transaction.balance_after,
            }),
        },
        meta,
    )
    .await?;
    Ok(transaction)
}

/// Credit or debit a user's balance.
///
/// One `admin_adjustment` ledger entry with the reason as its description. A debit may not
/// take the user's balance below what their jobs hold. The token must carry the `admin`
/// permission; the action is logged with the admin's id. Accepts `Idempotency-Key`.
#[utoipa::path(
    post,
    path = "/api/v1/admin/credits/adjustments",
    tag = "admin",
    operation_id = "admin_create_adjustment",
    security(("bearer" = ["admin"])),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 printable ASCII characters. Replays the stored response (with `Idempotent-Replayed: true`) for a repeated request (24 h)."),
    ),
    request_body = NewAdjustment,
    responses(
        (status = 201, description = "The posted ledger entry.", body = CreditTransaction),
        (status = 400, description = "The body is not valid JSON, or the Idempotency-Key is malformed (`/problems/bad-request`).", body = Problem, content_type = "application/problem+json"),
        (status = 401, response = Unauthorized),
        (status = 402, description = "A debit larger than the user's available balance: `needed` and `available` in the problem. Nothing changed.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the `admin` permission, the admin's account is banned or erased, or the adjustment is of the admin's own balance.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The admin has no account yet, or the user has no credit account.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A request with this Idempotency-Key is still in progress.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input, every invalid field named in `errors` (a `user_id` that is no user included), or an Idempotency-Key already used with a different request (`/problems/validation-error`).", body = Problem, content_type = "application/problem+json"),
        BodyRefused,
        ServerFailures,
    )
)]
pub async fn create(
    mut account: AdminAccount,
    IdempotencyKey(key): IdempotencyKey,
    meta: RequestMeta,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let request = Value::Object(body.clone());
    let adjustment = Adjustment::parse(body)?;
    let (tx, admin) = account.begin().await?;
    if let Some(key) = &key
        && let Claim::Replay { status, body } =
            idempotency::claim(&tx, &admin.id, key, "POST", ROUTE, &request).await?
    {
        tx.commit().await?;
        return Ok(Claim::replay(status, body));
    }
    let transaction = match adjust(&tx, &admin.id, &adjustment, &meta).await {
        Ok(transaction) => transaction,
        Err(err) => return Ok(error_response(err)),
    };
    let body = serde_json::to_value(&transaction).map_err(ApiError::internal)?;
    if let Some(key) = &key {
        idempotency::complete(&tx, &admin.id, key, StatusCode::CREATED, &body).await?;
    }
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<Adjustment, ApiError> {
        match v {
            Value::Object(m) => Adjustment::parse(m),
            _ => unreachable!(),
        }
    }

    fn fields_of(err: ApiError) -> Vec<String> {
        match err {
            ApiError::Validation { errors, .. } => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn adjustments_are_validated_field_by_field() {
        let ok =
            parse(json!({"user_id": "u1", "amount": -5, "description": " goodwill "})).unwrap();
        assert_eq!(ok.amount, -5);
        assert_eq!(ok.description, "goodwill");
        assert!(parse(json!({"user_id": "u1", "amount": 10_000_000, "description": "x"})).is_ok());
        for (body, field) in [
            (
                json!({"user_id": "u1", "amount": 0, "description": "x"}),
                "amount",
            ),
            (
                json!({"user_id": "u1", "amount": 1.5, "description": "x"}),
                "amount",
            ),
            (
                json!({"user_id": "u1", "amount": 10_000_001, "description": "x"}),
                "amount",
            ),
            (
                json!({"user_id": "u1", "amount": -10_000_001, "description": "x"}),
                "amount",
            ),
            (
                json!({"user_id": "u1", "amount": "5", "description": "x"}),
                "amount",
            ),
            (
                json!({"user_id": "u1", "amount": 5, "description": "  "}),
                "description",
            ),
            (
                json!({"user_id": "u1", "amount": 5, "description": "x".repeat(501)}),
                "description",
            ),
            (json!({"user_id": "u1", "amount": 5}), "description"),
            (json!({"amount": 5, "description": "x"}), "user_id"),
            (
                json!({"user_id": "", "amount": 5, "description": "x"}),
                "user_id",
            ),
            (
                json!({"user_id": "u1", "amount": 5, "description": "x", "currency": "USD"}),
                "currency",
            ),
        ] {
            assert_eq!(
                fields_of(parse(body.clone()).unwrap_err()),
                vec![field],
                "{body}"
            );
        }
    }
}
