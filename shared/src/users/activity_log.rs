//! `GET /api/v1/me/activity`: the caller's own audit trail, newest first
//! (the rows [`crate::activity::record`] writes).

use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::activity::ActivityType;
use crate::kernel::error::{ApiError, FieldError};
use crate::users::account::Account;
use crate::web::http::ApiQuery;
use crate::web::input::finish;
use crate::web::pagination::{self, Page, TimeKey};
use crate::web::responses::ValidationFailed;
use crate::web::responses::{ServerFailures, SignedIn};
use crate::web::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/me/activity", get(list))
}

/// One `user_activity_logs` row, every column.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ActivityEntry {
    pub id: String,
    pub user_id: Option<String>,
    /// `login`, `character_created`, `image_generated`, `purchase_completed`...
    pub activity_type: String,
    /// `character`, `generation_job`, `purchase_order`, `user`...
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    /// The request id of the request that did it.
    pub session_id: Option<String>,
    /// The client's address as API Gateway saw it.
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub referrer: Option<String>,
    pub metadata: Option<Value>,
    pub created_at: DateTime<Utc>,
}

pub(crate) const COLUMNS: &str = "id, user_id, activity_type, entity_type, entity_id, \
    session_id, host(ip_address) AS ip_address, user_agent, referrer, metadata, created_at";

impl ActivityEntry {
    pub(crate) fn from_row(row: &tokio_postgres::Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            user_id: row.try_get("user_id")?,
            activity_type: row.try_get("activity_type")?,
            entity_type: row.try_get("entity_type")?,
            entity_id: row.try_get("entity_id")?,
            session_id: row.try_get("session_id")?,
            ip_address: row.try_get("ip_address")?,
            user_agent: row.try_get("user_agent")?,
            referrer: row.try_get("referrer")?,
            metadata: row.try_get("metadata")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

/// Unknown parameters are refused with a 422.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ActivityQuery {
    /// Page size, 1 to 100 (default 24).
    #[param(minimum = 1, maximum = 100, nullable = false)]
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    #[param(nullable = false)]
    cursor: Option<String>,
    /// Only entries of this type.
    #[param(nullable = false, schema_with = activity_type_schema)]
    activity_type: Option<String>,
}

fn activity_type_schema() -> utoipa::openapi::Object {
    crate::web::responses::string_enum(&ActivityType::NAMES, false, "Only entries of this type.")
}

/// The caller's activity log, newest first.
///
/// Everything the platform recorded about the caller's actions (sign-ins, characters,
/// generations, purchases, gifts, ratings, reports, exports; for an admin, the admin
/// actions they took), with the request id, address, user agent and referrer of each. Entries
/// older than the retention period (`ACTIVITY_LOG_RETENTION_DAYS`, default 180) are gone.
/// Keyset-paginated on `(created_at, id)`.
#[utoipa::path(
    get,
    path = "/api/v1/me/activity",
    tag = "auth",
    operation_id = "list_my_activity",
    security(("bearer" = [])),
    params(ActivityQuery),
    responses(
        (status = 200, description = "A page of the caller's activity entries.", body = Page<ActivityEntry>),
        (status = 422, response = ValidationFailed),
        SignedIn,
        ServerFailures,
    )
)]
pub(crate) async fn list(
    mut account: Account,
    ApiQuery(query): ApiQuery<ActivityQuery>,
) -> Result<Json<Page<ActivityEntry>>, ApiError> {
    let mut errors = Vec::new();
    let (limit, after) = pagination::time_page(&mut errors, query.limit, query.cursor.as_deref());
    let kind = match query.activity_type.as_deref().map(ActivityType::parse) {
        Some(Some(kind)) => Some(kind),
        Some(None) => {
            errors.push(FieldError::new(
                "activity_type",
                format!("must be one of {}", ActivityType::NAMES.join(", ")),
            ));
            None
        }
        None => None,
    };
    finish((), errors)?;

    // Row-level security shows app_api only the caller's rows; the user_id
    // condition is what lets the planner walk idx_user_activity_logs_user_id.
    let (tx, user) = account.begin_as_user().await?;
    let (after_at, after_id) = match after {
        Some(k) => (Some(k.at), Some(k.id)),
        None => (None, None),
    };
    let rows = tx
        .query(
            &format!(
                "SELECT {COLUMNS} FROM user_activity_logs \
                 WHERE user_id = $1 AND ($2::text IS NULL OR activity_type = $2) \
                   AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::text)) \
                 ORDER BY created_at DESC, id DESC LIMIT $5"
            ),
            &[&user.id, &kind, &after_at, &after_id, &(limit + 1)],
        )
        .await?;
    tx.commit().await?;
    let entries = rows
        .iter()
        .map(ActivityEntry::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(pagination::page(entries, limit, |e| TimeKey {
        at: e.created_at,
        id: e.id.clone(),
    })))
}
