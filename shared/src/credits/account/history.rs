//! `GET /api/v1/credits/transactions`: the caller's ledger, newest first.
//!
//! Keyset pagination on `(created_at, id)` within the caller's rows, so a
//! client walking the pages while entries are posted sees every older entry
//! exactly once (new entries are newer than any cursor). The row comparison
//! `(created_at, id) < ($t, $id)` walks `idx_credit_transactions_user_created`
//! (or the per-type index) backwards and prunes monthly partitions.

use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::credits::ledger::TRANSACTION_TYPES;
use crate::kernel::error::{ApiError, FieldError};
use crate::users::account::Account;
use crate::web::http::ApiQuery;
use crate::web::input::finish;
use crate::web::pagination::{self, Page, TimeKey};
use crate::web::responses::ValidationFailed;
use crate::web::responses::{ServerFailures, SignedIn};

/// One `credit_transactions` row, every column.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LedgerEntry {
    pub id: String,
    pub user_id: String,
    /// One of `purchase`, `usage`, `refund`, `gift_sent`, `gift_received`, `daily_allowance`,
    /// `bonus`, `referral`, `achievement`, `admin_adjustment`.
    pub transaction_type: String,
    /// Positive credits in, negative credits out.
    pub amount: i32,
    /// `current_balance` right after this entry.
    pub balance_after: i32,
    /// What the entry is about (`generation_job`, `purchase_order`, `gift_transfer`, ...).
    pub related_entity_type: Option<String>,
    pub related_entity_id: Option<String>,
    pub description: String,
    pub metadata: Option<Value>,
    pub status: Option<String>,
    pub processed_at: Option<DateTime<Utc>>,
    pub api_endpoint: Option<String>,
    pub operation_details: Option<Value>,
    /// A `usage` entry's price and how the buckets paid it.
    pub cost_calculation: Option<Value>,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, user_id, transaction_type, amount, balance_after, related_entity_type, \
    related_entity_id, description, metadata, status, processed_at, api_endpoint, operation_details, \
    cost_calculation, created_at";

impl LedgerEntry {
    fn from_row(row: &tokio_postgres::Row) -> Result<Self, tokio_postgres::Error> {
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
            processed_at: row.try_get("processed_at")?,
            api_endpoint: row.try_get("api_endpoint")?,
            operation_details: row.try_get("operation_details")?,
            cost_calculation: row.try_get("cost_calculation")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

/// Unknown parameters are refused with a 422.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct HistoryQuery {
    /// Page size, 1 to 100 (default 24).
    #[param(minimum = 1, maximum = 100, nullable = false)]
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    #[param(nullable = false)]
    cursor: Option<String>,
    #[param(schema_with = transaction_type_param)]
    transaction_type: Option<String>,
}

fn transaction_type_param() -> utoipa::openapi::Object {
    crate::web::responses::string_enum(
        &TRANSACTION_TYPES,
        false,
        "Only entries of this transaction type.",
    )
}

/// The caller's credit ledger, newest first.
///
/// Every column of each entry. Pages are keyset-paginated on `(created_at, id)`, so a client
/// walking them while entries are posted sees every older entry exactly once.
#[utoipa::path(
    get,
    path = "/api/v1/credits/transactions",
    tag = "credits",
    operation_id = "list_credit_transactions",
    security(("bearer" = [])),
    params(HistoryQuery),
    responses(
        (status = 200, description = "A page of the caller's ledger entries.", body = Page<LedgerEntry>),
        (status = 422, response = ValidationFailed),
        SignedIn,
        ServerFailures,
    )
)]
pub(crate) async fn list(
    account: Account,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<Page<LedgerEntry>>, ApiError> {
    let mut errors = Vec::new();
    let (limit, after) = pagination::time_page(&mut errors, query.limit, query.cursor.as_deref());
    let kind = match query.transaction_type {
        Some(kind) if !TRANSACTION_TYPES.contains(&kind.as_str()) => {
            errors.push(FieldError::new(
                "transaction_type",
                format!("must be one of {}", TRANSACTION_TYPES.join(", ")),
            ));
            None
        }
        kind => kind,
    };
    finish((), errors)?;

    let client = account.client();
    let user = &account.user;
    // Static SQL per shape (no `$n IS NULL OR` branches), so each plan is the
    // plain index walk; every value is a parameter.
    let type_filter = if kind.is_some() {
        " AND transaction_type = $3"
    } else {
        " AND $3::text IS NULL"
    };
    let keyset = if after.is_some() {
        " AND (created_at, id) < ($4::timestamptz, $5::text)"
    } else {
        " AND $4::timestamptz IS NULL AND $5::text IS NULL"
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM credit_transactions WHERE user_id = $1{type_filter}{keyset} \
         ORDER BY created_at DESC, id DESC LIMIT $2"
    );
    let (after_at, after_id) = match after {
        Some(k) => (Some(k.at), Some(k.id)),
        None => (None, None),
    };
    let rows = client
        .query(&sql, &[&user.id, &(limit + 1), &kind, &after_at, &after_id])
        .await?;
    let entries = rows
        .iter()
        .map(LedgerEntry::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(pagination::page(entries, limit, |e| TimeKey {
        at: e.created_at,
        id: e.id.clone(),
    })))
}
