//! Moderating a character: feature or unfeature it, hide it from (or return
//! it to) the gallery, unpublish it. Each action is a conditional update as the
//! system role (the columns are out of `app_api`'s reach), idempotent, and
//! logged with the admin's id in the same transaction.

use axum::Json;
use axum::Router;
use axum::routing::{post, put};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use tokio_postgres::{GenericClient, Row};
use utoipa::ToSchema;

use crate::activity::changes;
use crate::activity::{self, Activity};
use crate::kernel::error::{ApiError, Problem};
use crate::users::account::AdminAccount;
use crate::web::http::resource_id;
use crate::web::http::{ApiPath, RequestMeta};
use crate::web::responses::{AdminAuthenticated, ServerFailures};
use crate::web::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/admin/characters/{id}/feature",
            put(feature).delete(unfeature),
        )
        .route(
            "/api/v1/admin/characters/{id}/hidden",
            put(hide).delete(unhide),
        )
        .route("/api/v1/admin/characters/{id}/unpublish", post(unpublish))
}

/// What moderators see of a character: enough to decide, nothing of its images.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct ModeratedCharacter {
    pub id: String,
    /// The owner's `users.id`.
    pub user_id: String,
    pub name: String,
    pub is_public: bool,
    /// Listed in `GET /api/v1/gallery/featured` while in the gallery.
    pub is_featured: bool,
    /// Hidden from the gallery by a moderator; the owner publishing again does not undo it.
    pub moderation_hidden: bool,
    pub moderation_hidden_at: Option<DateTime<Utc>>,
    /// Listed in the gallery: public, not hidden, owner active and allowing showcase (the
    /// gallery also leaves out characters whose `report_score` reaches `GALLERY_REPORT_THRESHOLD`).
    pub in_gallery: bool,
    /// Distinct users with an open report against it.
    pub open_report_count: i32,
    /// The weights of its open reports filed since its last review, added up: at
    /// `GALLERY_REPORT_THRESHOLD` it leaves the gallery (see `shared::social::trust`).
    pub report_score: f64,
    /// When a moderator last resolved one of its reports or unhid it; reports filed
    /// before then no longer count towards `report_score`.
    pub moderation_reviewed_at: Option<DateTime<Utc>>,
    pub published_at: Option<DateTime<Utc>>,
}

/// The select list matching [`ModeratedCharacter::from_row`], for table alias `c`; the
/// columns are prefixed so that a query can return them beside a report's.
pub const MODERATED_COLUMNS: &str = "c.id AS c_id, c.user_id AS c_user_id, c.name AS c_name, \
    coalesce(c.is_public, false) AS c_is_public, coalesce(c.is_featured, false) AS c_is_featured, \
    c.moderation_hidden AS c_moderation_hidden, c.moderation_hidden_at AS c_moderation_hidden_at, \
    c.in_gallery AS c_in_gallery, c.open_report_count AS c_open_report_count, \
    c.report_score::float8 AS c_report_score, c.moderation_reviewed_at AS c_moderation_reviewed_at, \
    c.published_at AS c_published_at";

impl ModeratedCharacter {
    pub fn from_row(row: &Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            id: row.try_get("c_id")?,
            user_id: row.try_get("c_user_id")?,
            name: row.try_get("c_name")?,
            is_public: row.try_get("c_is_public")?,
            is_featured: row.try_get("c_is_featured")?,
            moderation_hidden: row.try_get("c_moderation_hidden")?,
            moderation_hidden_at: row.try_get("c_moderation_hidden_at")?,
            in_gallery: row.try_get("c_in_gallery")?,
            open_report_count: row.try_get("c_open_report_count")?,
            report_score: row.try_get("c_report_score")?,
            moderation_reviewed_at: row.try_get("c_moderation_reviewed_at")?,
            published_at: row.try_get("c_published_at")?,
        })
    }

    /// The character, locked for the rest of the transaction.
    pub async fn lock(client: &impl GenericClient, id: &str) -> Result<Self, ApiError> {
        let row = client
            .query_opt(
                &format!("SELECT {MODERATED_COLUMNS} FROM characters c WHERE c.id = $1 FOR UPDATE"),
                &[&id],
            )
            .await?
            .ok_or_else(|| ApiError::NotFound("no such character".into()))?;
        Ok(Self::from_row(&row)?)
    }
}

/// A moderator's action on a character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Feature,
    Unfeature,
    Hide,
    Unhide,
    Unpublish,
}

impl Action {
    /// The `user_activity_logs.activity_type` it is logged as.
    pub fn activity_type(self) -> crate::activity::ActivityType {
        match self {
            Self::Feature => crate::activity::ActivityType::AdminCharacterFeatured,
            Self::Unfeature => crate::activity::ActivityType::AdminCharacterUnfeatured,
            Self::Hide => crate::activity::ActivityType::AdminCharacterHidden,
            Self::Unhide => crate::activity::ActivityType::AdminCharacterUnhidden,
            Self::Unpublish => crate::activity::ActivityType::AdminCharacterUnpublished,
        }
    }

    /// The assignments, and the condition under which they change anything (so a repeated
    /// action touches nothing, not even `updated_at`).
    fn update(self) -> (&'static str, &'static str) {
        match self {
            Self::Feature => ("is_featured = true", "NOT coalesce(c.is_featured, false)"),
            Self::Unfeature => ("is_featured = false", "coalesce(c.is_featured, false)"),
            // A hidden character is not featured any more; unhiding does not feature it again.
            Self::Hide => (
                "moderation_hidden = true, moderation_hidden_at = coalesce(c.moderation_hidden_at, now()), \
                 is_featured = false",
                "NOT c.moderation_hidden OR coalesce(c.is_featured, false)",
            ),
            // Unhiding is a review: the reports filed so far stop counting (V18).
            Self::Unhide => (
                "moderation_hidden = false, moderation_hidden_at = NULL",
                "c.moderation_hidden",
            ),
            Self::Unpublish => (
                "is_public = false, is_featured = false",
                "coalesce(c.is_public, false) OR coalesce(c.is_featured, false)",
            ),
        }
    }
}

/// Applies `action` to the character and logs it, in the caller's (system-role)
/// transaction. `report_id` names the report whose resolution asked for it.
pub async fn apply(
    client: &impl GenericClient,
    admin_id: &str,
    character_id: &str,
    action: Action,
    report_id: Option<&str>,
    meta: &RequestMeta,
) -> Result<ModeratedCharacter, ApiError> {
    let before = ModeratedCharacter::lock(client, character_id).await?;
    if action == Action::Feature && !before.in_gallery {
        return Err(ApiError::Conflict(
            "only a character in the gallery can be featured: this one is private, hidden, \
             or its owner is not active or does not allow gallery showcase"
                .into(),
        ));
    }
    let (assignments, condition) = action.update();
    let updated = client
        .query_opt(
            &format!(
                "UPDATE characters AS c SET {assignments} WHERE c.id = $1 AND ({condition}) \
                 RETURNING {MODERATED_COLUMNS}"
            ),
            &[&character_id],
        )
        .await?;
    let changed = updated.is_some();
    let mut after = match updated {
        Some(row) => ModeratedCharacter::from_row(&row)?,
        None => before.clone(),
    };
    if action == Action::Unhide {
        after = review(client, character_id).await?;
    }
    let as_json = |c: &ModeratedCharacter| serde_json::to_value(c).unwrap_or_default();
    activity::record(
        client,
        Activity {
            user_id: Some(admin_id),
            activity_type: action.activity_type(),
            entity_type: Some("character"),
            entity_id: Some(character_id),
            metadata: json!({
                "character_id": character_id,
                "owner_id": after.user_id,
                "changed": changed,
                "changes": changes(
                    &as_json(&before),
                    &as_json(&after),
                    &["is_public", "is_featured", "moderation_hidden", "in_gallery"],
                ),
                "report_id": report_id,
            }),
        },
        meta,
    )
    .await?;
    Ok(after)
}

/// Records a moderator's review of the character (a report resolved, or the
/// character unhidden): `moderation_reviewed_at` is now, so the reports filed
/// until now no longer count towards `report_score`, which is recounted. The
/// caller holds the character's row lock ([`ModeratedCharacter::lock`]).
pub async fn review(
    client: &impl GenericClient,
    character_id: &str,
) -> Result<ModeratedCharacter, ApiError> {
    client
        .execute(
            "UPDATE characters SET moderation_reviewed_at = now() WHERE id = $1",
            &[&character_id],
        )
        .await?;
    client
        .execute(
            "SELECT recount_character_reports(ARRAY[$1::text])",
            &[&character_id],
        )
        .await?;
    let row = client
        .query_opt(
            &format!("SELECT {MODERATED_COLUMNS} FROM characters c WHERE c.id = $1"),
            &[&character_id],
        )
        .await?
        .ok_or_else(|| ApiError::NotFound("no such character".into()))?;
    Ok(ModeratedCharacter::from_row(&row)?)
}

async fn moderate(
    mut account: AdminAccount,
    meta: RequestMeta,
    id: String,
    action: Action,
) -> Result<Json<ModeratedCharacter>, ApiError> {
    let id = resource_id(&id, "character")?;
    let (tx, admin) = account.begin().await?;
    let character = apply(&tx, &admin.id, id, action, None, &meta).await?;
    tx.commit().await?;
    Ok(Json(character))
}

/// Feature a character.
///
/// Lists it in `GET /api/v1/gallery/featured` (while it stays in the gallery). Idempotent.
/// The token must carry the `admin` permission; each call is logged with the admin's id.
#[utoipa::path(
    put,
    path = "/api/v1/admin/characters/{id}/feature",
    tag = "admin",
    operation_id = "admin_feature_character",
    security(("bearer" = ["admin"])),
    params(("id" = String, Path, description = "The character's id.")),
    responses(
        (status = 200, description = "The character, featured.", body = ModeratedCharacter),
        (status = 404, description = "No such character, or the admin has no account yet.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The character is not in the gallery (private, hidden, or its owner is inactive or does not allow showcase).", body = Problem, content_type = "application/problem+json"),
        AdminAuthenticated,
        ServerFailures,
    )
)]
pub(crate) async fn feature(
    account: AdminAccount,
    meta: RequestMeta,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ModeratedCharacter>, ApiError> {
    moderate(account, meta, id, Action::Feature).await
}

/// Stop featuring a character.
///
/// Idempotent. The token must carry the `admin` permission; each call is logged with the
/// admin's id.
#[utoipa::path(
    delete,
    path = "/api/v1/admin/characters/{id}/feature",
    tag = "admin",
    operation_id = "admin_unfeature_character",
    security(("bearer" = ["admin"])),
    params(("id" = String, Path, description = "The character's id.")),
    responses(
        (status = 200, description = "The character, not featured.", body = ModeratedCharacter),
        (status = 404, description = "No such character, or the admin has no account yet.", body = Problem, content_type = "application/problem+json"),
        AdminAuthenticated,
        ServerFailures,
    )
)]
pub(crate) async fn unfeature(
    account: AdminAccount,
    meta: RequestMeta,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ModeratedCharacter>, ApiError> {
    moderate(account, meta, id, Action::Unfeature).await
}

/// Hide a character from the gallery.
///
/// Takes it out of every gallery listing (all sorts and the featured list) and ends its
/// featuring. It stays hidden when its owner publishes it again, until a moderator unhides
/// it; while public it is still reachable by its id. Idempotent. The token must carry the
/// `admin` permission; each call is logged with the admin's id.
#[utoipa::path(
    put,
    path = "/api/v1/admin/characters/{id}/hidden",
    tag = "admin",
    operation_id = "admin_hide_character",
    security(("bearer" = ["admin"])),
    params(("id" = String, Path, description = "The character's id.")),
    responses(
        (status = 200, description = "The character, hidden.", body = ModeratedCharacter),
        (status = 404, description = "No such character, or the admin has no account yet.", body = Problem, content_type = "application/problem+json"),
        AdminAuthenticated,
        ServerFailures,
    )
)]
pub(crate) async fn hide(
    account: AdminAccount,
    meta: RequestMeta,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ModeratedCharacter>, ApiError> {
    moderate(account, meta, id, Action::Hide).await
}

/// Return a hidden character to the gallery.
///
/// It is listed again if it is public and its owner is active and allows showcase; it is not
/// featured again. Unhiding is a review: the reports filed until now no longer count towards
/// hiding it (`report_score`), only reports filed afterwards do. Idempotent. The token must carry the `admin` permission; each call is
/// logged with the admin's id.
#[utoipa::path(
    delete,
    path = "/api/v1/admin/characters/{id}/hidden",
    tag = "admin",
    operation_id = "admin_unhide_character",
    security(("bearer" = ["admin"])),
    params(("id" = String, Path, description = "The character's id.")),
    responses(
        (status = 200, description = "The character, not hidden.", body = ModeratedCharacter),
        (status = 404, description = "No such character, or the admin has no account yet.", body = Problem, content_type = "application/problem+json"),
        AdminAuthenticated,
        ServerFailures,
    )
)]
pub(crate) async fn unhide(
    account: AdminAccount,
    meta: RequestMeta,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ModeratedCharacter>, ApiError> {
    moderate(account, meta, id, Action::Unhide).await
}

/// Unpublish a character.
///
/// Makes it private (`is_public = false`): only its owner sees it, and it is not featured any
/// more. The owner may publish it again (unless suspended); to keep it out of the gallery for
/// good, hide it. Idempotent. The token must carry the `admin` permission; each call is logged
/// with the admin's id.
#[utoipa::path(
    post,
    path = "/api/v1/admin/characters/{id}/unpublish",
    tag = "admin",
    operation_id = "admin_unpublish_character",
    security(("bearer" = ["admin"])),
    params(("id" = String, Path, description = "The character's id.")),
    responses(
        (status = 200, description = "The character, private.", body = ModeratedCharacter),
        (status = 404, description = "No such character, or the admin has no account yet.", body = Problem, content_type = "application/problem+json"),
        AdminAuthenticated,
        ServerFailures,
    )
)]
pub(crate) async fn unpublish(
    account: AdminAccount,
    meta: RequestMeta,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ModeratedCharacter>, ApiError> {
    moderate(account, meta, id, Action::Unpublish).await
}
