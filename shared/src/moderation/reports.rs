//! The report queue: `content_reports` for moderators, oldest first, and their
//! resolution. Resolving `actioned` resolves every open report of the same
//! character (the character was dealt with); `dismissed` resolves only the one
//! report (the others may be about something else). An action on the
//! character (hide, unpublish) commits with the resolution and its log rows.

use axum::Json;
use axum::Router;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio_postgres::{GenericClient, Row};
use utoipa::{IntoParams, ToSchema};

use super::characters::{self, Action, MODERATED_COLUMNS, ModeratedCharacter};
use crate::activity::{self, Activity};
use crate::kernel::error::{ApiError, FieldError, Problem};
use crate::users::account::AdminAccount;
use crate::web::http::resource_id;
use crate::web::http::{ApiJson, ApiPath, ApiQuery, RequestMeta};
use crate::web::input::checks::{self, one_of};
use crate::web::input::{RequestBody, check, decode, finish, required};
use crate::web::pagination::{self, Page, TimeKey};
use crate::web::responses::ValidationFailed;
use crate::web::responses::{AdminAuthenticated, AdminSignedIn, BodyRefused, ServerFailures};
use crate::web::state::AppState;

pub const REPORT_STATUSES: [&str; 3] = ["open", "actioned", "dismissed"];
/// What a resolution may set.
pub const RESOLVED_STATUSES: [&str; 2] = ["actioned", "dismissed"];
/// What a resolution may do to the character.
pub const RESOLUTION_ACTIONS: [&str; 3] = ["hide", "unpublish", "none"];
pub const MAX_NOTE: usize = 2000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/admin/reports", get(list))
        .route("/api/v1/admin/reports/{id}/resolve", post(resolve))
}

/// A `content_reports` row with the reported character, as moderators see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReportItem {
    pub id: String,
    pub character_id: String,
    /// The reporter's `users.id` (`null` once the reporter's account is gone).
    pub reporter_id: Option<String>,
    /// `spam`, `sexual_content`, `violence`, `hate`, `harassment`, `copyright`,
    /// `minor_safety` or `other`.
    pub reason: String,
    pub details: Option<String>,
    /// How much the report counts towards hiding the character, from its reporter when
    /// it was filed (0 to 2; see `shared::social::trust`).
    pub weight: f64,
    /// `open`, `actioned` or `dismissed`.
    pub status: String,
    pub resolution_note: Option<String>,
    /// The admin who resolved it.
    pub resolved_by: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The reported character, now.
    pub character: ModeratedCharacter,
}

const ITEM_COLUMNS: &str = "r.id, r.character_id, r.reporter_id, r.reason, r.details, \
    r.weight::float8 AS weight, r.status, \
    r.resolution_note, r.resolved_by, r.resolved_at, r.created_at, r.updated_at";

impl ReportItem {
    fn from_row(row: &Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            character_id: row.try_get("character_id")?,
            reporter_id: row.try_get("reporter_id")?,
            reason: row.try_get("reason")?,
            details: row.try_get("details")?,
            weight: row.try_get("weight")?,
            status: row.try_get("status")?,
            resolution_note: row.try_get("resolution_note")?,
            resolved_by: row.try_get("resolved_by")?,
            resolved_at: row.try_get("resolved_at")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            character: ModeratedCharacter::from_row(row)?,
        })
    }

    async fn load(client: &impl GenericClient, id: &str) -> Result<Option<Self>, ApiError> {
        let row = client
            .query_opt(
                &format!(
                    "SELECT {ITEM_COLUMNS}, {MODERATED_COLUMNS} \
                     FROM content_reports r JOIN characters c ON c.id = r.character_id \
                     WHERE r.id = $1"
                ),
                &[&id],
            )
            .await?;
        Ok(row.as_ref().map(Self::from_row).transpose()?)
    }
}

/// Unknown parameters are refused with a 422.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReportsQuery {
    /// `open` (default), `actioned` or `dismissed`.
    #[param(nullable = false)]
    status: Option<String>,
    /// Page size, 1 to 100 (default 24).
    #[param(minimum = 1, maximum = 100, nullable = false)]
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    #[param(nullable = false)]
    cursor: Option<String>,
}

/// The report queue.
///
/// Reports in one status (`open` by default), oldest first, each with the reported character
/// as it is now and the report's weight. Each call is logged (`admin_reports_listed`) with the
/// admin's id and the ids of the reports answered. The token must carry the `admin`
/// permission.
#[utoipa::path(
    get,
    path = "/api/v1/admin/reports",
    tag = "admin",
    operation_id = "admin_list_reports",
    security(("bearer" = ["admin"])),
    params(ReportsQuery),
    responses(
        (status = 200, description = "A page of reports, oldest first.", body = Page<ReportItem>),
        (status = 422, response = ValidationFailed),
        AdminSignedIn,
        ServerFailures,
    )
)]
pub(crate) async fn list(
    mut account: AdminAccount,
    meta: RequestMeta,
    ApiQuery(query): ApiQuery<ReportsQuery>,
) -> Result<Json<Page<ReportItem>>, ApiError> {
    let mut errors = Vec::new();
    let status = match query.status {
        None => "open".to_string(),
        Some(s) => check(&mut errors, one_of("status", &s, &REPORT_STATUSES)).unwrap_or_default(),
    };
    let (limit, after) = pagination::time_page(&mut errors, query.limit, query.cursor.as_deref());
    finish((), errors)?;
    let given_cursor = after.is_some();
    let (tx, admin) = account.begin().await?;
    let (after_at, after_id) = after
        .map(|k| (Some(k.at), Some(k.id)))
        .unwrap_or((None, None));
    let rows = tx
        .query(
            &format!(
                "SELECT {ITEM_COLUMNS}, {MODERATED_COLUMNS} \
                 FROM content_reports r JOIN characters c ON c.id = r.character_id \
                 WHERE r.status = $1 \
                   AND ($2::timestamptz IS NULL OR (r.created_at, r.id) > ($2, $3::text)) \
                 ORDER BY r.created_at, r.id LIMIT $4"
            ),
            &[&status, &after_at, &after_id, &(limit + 1)],
        )
        .await?;
    let items = rows
        .iter()
        .map(ReportItem::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let page = pagination::page(items, limit, |item| TimeKey {
        at: item.created_at,
        id: item.id.clone(),
    });
    // Reads are audited too: which reports (and so which reporters) the admin saw.
    let report_ids: Vec<&str> = page.items.iter().map(|item| item.id.as_str()).collect();
    activity::record(
        &tx,
        Activity {
            user_id: Some(&admin.id),
            activity_type: crate::activity::ActivityType::AdminReportsListed,
            entity_type: Some("content_report"),
            entity_id: None,
            metadata: json!({
                "status": status,
                "limit": limit,
                "after_cursor": given_cursor,
                "report_ids": report_ids,
            }),
        },
        &meta,
    )
    .await?;
    tx.commit().await?;
    Ok(Json(page))
}

/// A validated resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// `actioned` or `dismissed`.
    pub status: String,
    pub note: Option<String>,
    /// What to do to the character.
    pub action: Option<Action>,
}

impl Resolution {
    pub fn parse(body: Map<String, Value>) -> Result<Self, ApiError> {
        decode::<ResolutionBody>(body)?.ok_or_else(|| ApiError::validation("status", "is required"))
    }
}

/// Columns of a report that a resolution cannot set.
const RESOLUTION_READ_ONLY: [&str; 10] = [
    "id",
    "character_id",
    "reporter_id",
    "reason",
    "details",
    "resolution_note",
    "resolved_by",
    "resolved_at",
    "created_at",
    "updated_at",
];

/// A report's resolution. Unknown and read-only fields are refused with a 422 naming them.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolutionBody {
    /// `actioned`: the character was dealt with; every open report of it is resolved with
    /// this one. `dismissed`: this report leads to nothing; the character's other reports
    /// stay open.
    #[serde(default)]
    #[schema(required = true, schema_with = status_schema)]
    status: Option<String>,
    /// Why, for the record (stored as `resolution_note`): at most 2000 characters,
    /// multi-line, trimmed; empty or `null` stores none.
    #[serde(default)]
    #[schema(max_length = 2000)]
    note: Option<String>,
    #[serde(default)]
    #[schema(schema_with = action_schema)]
    action: Option<String>,
}

impl RequestBody for ResolutionBody {
    /// `None` when a check failed (and named its field).
    type Valid = Option<Resolution>;

    fn read_only(field: &str) -> bool {
        RESOLUTION_READ_ONLY.contains(&field)
    }

    fn validate(self, errors: &mut Vec<FieldError>) -> Option<Resolution> {
        let status = required("status", self.status, errors)
            .and_then(|status| check(errors, one_of("status", &status, &RESOLVED_STATUSES)));
        let note = self
            .note
            .and_then(|note| check(errors, checks::text("note", &note, MAX_NOTE, true)).flatten());
        let action = self
            .action
            .and_then(|action| check(errors, one_of("action", &action, &RESOLUTION_ACTIONS)));
        let action = match action.as_deref() {
            Some("hide") => Some(Action::Hide),
            Some("unpublish") => Some(Action::Unpublish),
            _ => None,
        };
        if status.as_deref() == Some("dismissed") && action.is_some() {
            errors.push(FieldError::new(
                "action",
                "must be none (or absent) when dismissing: a dismissed report leads to no action",
            ));
        }
        Some(Resolution {
            status: status?,
            note,
            action,
        })
    }
}

fn status_schema() -> utoipa::openapi::Object {
    crate::web::responses::string_enum(&RESOLVED_STATUSES, false, "The report's new status.")
}

fn action_schema() -> utoipa::openapi::Object {
    crate::web::responses::string_enum(
        &RESOLUTION_ACTIONS,
        false,
        "What to do to the character, in the same transaction: `hide` it from the gallery \
         (for good, until a moderator unhides it), `unpublish` it (make it private), or \
         `none` (the default). Dismissing takes `none` only.",
    )
}

/// A resolved report, and the other reports of its character resolved with it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResolvedReport {
    pub report: ReportItem,
    /// Ids of the character's other open reports that this resolution also resolved
    /// (`actioned` only; empty when dismissing).
    pub also_resolved: Vec<String>,
}

/// Resolve a report.
///
/// Sets the report's status (`actioned` or `dismissed`), `resolution_note`, `resolved_by` and
/// `resolved_at`, applies the action to the character, and logs it all with the admin's id, in
/// one transaction. `actioned` resolves every open report of the character alike; `dismissed`
/// only this one. Only an open report can be resolved. The token must carry the `admin`
/// permission.
#[utoipa::path(
    post,
    path = "/api/v1/admin/reports/{id}/resolve",
    tag = "admin",
    operation_id = "admin_resolve_report",
    security(("bearer" = ["admin"])),
    params(("id" = String, Path, description = "The report's id.")),
    request_body = ResolutionBody,
    responses(
        (status = 200, description = "The resolved report, with the character as it is now.", body = ResolvedReport),
        (status = 404, description = "No such report, or the admin has no account yet.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The report is not open (already actioned or dismissed). Nothing changed.", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = ValidationFailed),
        BodyRefused,
        AdminAuthenticated,
        ServerFailures,
    )
)]
pub(crate) async fn resolve(
    mut account: AdminAccount,
    meta: RequestMeta,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<Json<ResolvedReport>, ApiError> {
    let id = resource_id(&id, "report")?;
    let resolution = Resolution::parse(body)?;
    let (tx, admin) = account.begin().await?;
    let (character_id, character) = lock_open_report(&tx, id).await?;
    if let Some(action) = resolution.action {
        characters::apply(&tx, &admin.id, &character_id, action, Some(id), &meta).await?;
    }
    let also_resolved = close_reports(&tx, id, &character_id, &resolution, &admin.id).await?;
    let action_name = match resolution.action {
        Some(Action::Hide) => "hide",
        Some(Action::Unpublish) => "unpublish",
        _ => "none",
    };
    activity::record(
        &tx,
        Activity {
            user_id: Some(&admin.id),
            activity_type: crate::activity::ActivityType::AdminReportResolved,
            entity_type: Some("content_report"),
            entity_id: Some(id),
            metadata: json!({
                "report_id": id,
                "character_id": character_id,
                "owner_id": character.user_id,
                "status": resolution.status,
                "action": action_name,
                "note": resolution.note,
                "also_resolved": also_resolved,
            }),
        },
        &meta,
    )
    .await?;
    let report = ReportItem::load(&tx, id)
        .await?
        .ok_or_else(|| ApiError::internal(format!("report {id} vanished")))?;
    tx.commit().await?;
    Ok(Json(ResolvedReport {
        report,
        also_resolved,
    }))
}

/// Locks an open report's character, then the report, and answers the character's id
/// and row. The character first, then its reports: concurrent resolutions of reports of
/// one character take turns on the character, instead of each holding a report the
/// other's "resolve every open report" waits for (a deadlock). A report being filed
/// meanwhile holds only its own new row when it waits for the character (V5's trigger),
/// which this transaction never waits for.
async fn lock_open_report(
    tx: &impl GenericClient,
    id: &str,
) -> Result<(String, ModeratedCharacter), ApiError> {
    let no_such_report = || ApiError::NotFound("no such report".into());
    let character_id: String = tx
        .query_opt(
            "SELECT character_id FROM content_reports WHERE id = $1",
            &[&id],
        )
        .await?
        .ok_or_else(no_such_report)?
        .try_get(0)?;
    let character = match ModeratedCharacter::lock(tx, &character_id).await {
        Err(ApiError::NotFound(_)) => return Err(no_such_report()),
        other => other?,
    };
    let status: String = tx
        .query_opt(
            "SELECT status FROM content_reports WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?
        .ok_or_else(no_such_report)?
        .try_get(0)?;
    if status != "open" {
        return Err(ApiError::Conflict(format!(
            "the report is already {status}; only an open report can be resolved"
        )));
    }
    Ok((character_id, character))
}

/// Resolves the report (and, when actioned, every other open report of its character)
/// and marks the character reviewed; answers the ids of the others resolved with it.
async fn close_reports(
    tx: &impl GenericClient,
    id: &str,
    character_id: &str,
    resolution: &Resolution,
    admin_id: &str,
) -> Result<Vec<String>, ApiError> {
    let resolved = tx
        .query(
            "UPDATE content_reports SET status = $3, resolution_note = $4, resolved_by = $5, \
               resolved_at = now() \
             WHERE status = 'open' AND (id = $1 OR ($3 = 'actioned' AND character_id = $2)) \
             RETURNING id",
            &[
                &id,
                &character_id,
                &resolution.status,
                &resolution.note,
                &admin_id,
            ],
        )
        .await?;
    // A resolution is a review of the character: the reports filed until now stop counting
    // towards hiding it (V18), so a character a moderator kept is not hidden again by them.
    characters::review(tx, character_id).await?;
    Ok(resolved
        .iter()
        .map(|row| row.try_get::<_, String>(0))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|other| other != id)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<Resolution, ApiError> {
        match v {
            Value::Object(m) => Resolution::parse(m),
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
    fn resolutions_are_validated_field_by_field() {
        let ok = parse(json!({"status": "actioned", "note": " spam ", "action": "hide"})).unwrap();
        assert_eq!(
            ok,
            Resolution {
                status: "actioned".into(),
                note: Some("spam".into()),
                action: Some(Action::Hide),
            }
        );
        let plain = parse(json!({"status": "dismissed", "note": null, "action": "none"})).unwrap();
        assert_eq!((plain.note, plain.action), (None, None));
        for (body, field) in [
            (json!({}), "status"),
            (json!({"status": "open"}), "status"),
            (json!({"status": null}), "status"),
            (json!({"status": "actioned", "action": "delete"}), "action"),
            (json!({"status": "dismissed", "action": "hide"}), "action"),
            (json!({"status": "actioned", "note": 5}), "note"),
            (
                json!({"status": "actioned", "note": "x".repeat(2001)}),
                "note",
            ),
            (
                json!({"status": "actioned", "resolved_by": "me"}),
                "resolved_by",
            ),
            (json!({"status": "actioned", "colour": 1}), "colour"),
        ] {
            assert_eq!(
                fields_of(parse(body.clone()).unwrap_err()),
                vec![field],
                "{body}"
            );
        }
    }
}
