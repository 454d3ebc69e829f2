//! Routes of the social layer, served by the `characters` function.
//!
//! | route | what |
//! |---|---|
//! | `PUT/DELETE /api/v1/characters/{id}/like` | like / unlike, idempotent |
//! | `PUT/DELETE /api/v1/characters/{id}/rating` | the caller's one rating (upsert) / its removal |
//! | `GET /api/v1/characters/{id}/ratings` | ratings of a visible character, newest first, with the aggregate |
//! | `POST /api/v1/characters/{id}/reports` | report a character (one open report per reporter) |
//!
//! Every handler checks that the caller may see the character (first wall)
//! and runs its statements through [`begin_as`] so that row-level security
//! filters them again (second wall). A character the caller may not see is
//! the same 404 as one that does not exist.
//!
//! A suspended account may read, unlike and withdraw its rating, but not like,
//! rate or report (403). A report is weighed from its reporter when filed
//! ([`super::trust`]).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa::IntoParams;

use super::input::{RatingBody, RatingInput, ReportBody, ReportInput};
use super::repo;
use super::trust;
use super::{LikeState, RatingWithSummary, RatingsPage, Report};
use crate::activity::{self, Activity};
use crate::kernel::error::{ApiError, Problem};
use crate::ports::db::{act_as_system, begin_as};
use crate::users::account::Account;
use crate::web::auth::OptionalCaller;
use crate::web::http::{ApiJson, ApiPath, ApiQuery, RequestMeta};
use crate::web::pagination::{self, TimeKey};
use crate::web::responses::{Authenticated, BodyRefused, ServerFailures};
use crate::web::responses::{Unauthorized, ValidationFailed};
use crate::web::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/characters/{id}/like", put(like).delete(unlike))
        .route(
            "/api/v1/characters/{id}/rating",
            put(put_rating).delete(delete_rating),
        )
        .route("/api/v1/characters/{id}/ratings", get(list_ratings))
        .route("/api/v1/characters/{id}/reports", post(file_report))
}

/// Character ids are text (UUIDs in practice). An id no character could have
/// (empty, huge, or with control characters such as a NUL, which PostgreSQL
/// text cannot even hold) names nothing: 404 without asking the database.
fn character_id(raw: &str) -> Result<&str, ApiError> {
    crate::web::http::resource_id(raw, "character")
}

/// Like a character.
///
/// Idempotent: liking a liked character changes nothing. A suspended account may not like
/// (it may still unlike).
#[utoipa::path(
    put,
    path = "/api/v1/characters/{id}/like",
    tag = "social",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The character's id.")),
    responses(
        (status = 200, description = "The caller likes the character.", body = LikeState),
        (status = 401, response = Unauthorized),
        (status = 403, description = "The account is suspended, banned or erased.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such character, or not visible to the caller; or no account yet.", body = Problem, content_type = "application/problem+json"),
        ServerFailures,
    )
)]
pub(crate) async fn like(
    mut account: Account,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<LikeState>, ApiError> {
    let id = character_id(&id)?;
    account.user.require_active("like characters")?;
    let (tx, user) = account.begin_as_user().await?;
    let character = repo::visible_character(&tx, id, Some(&user.id)).await?;
    let like_count = repo::like(&tx, &character.id, &user.id).await?;
    tx.commit().await?;
    Ok(Json(LikeState {
        character_id: character.id,
        liked: true,
        like_count,
    }))
}

/// Unlike a character.
///
/// Idempotent: unliking a character the caller does not like changes nothing.
#[utoipa::path(
    delete,
    path = "/api/v1/characters/{id}/like",
    tag = "social",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The character's id.")),
    responses(
        (status = 200, description = "The caller does not like the character.", body = LikeState),
        (status = 404, description = "No such character, or not visible to the caller; or no account yet.", body = Problem, content_type = "application/problem+json"),
        Authenticated,
        ServerFailures,
    )
)]
pub(crate) async fn unlike(
    mut account: Account,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<LikeState>, ApiError> {
    let id = character_id(&id)?;
    let (tx, user) = account.begin_as_user().await?;
    let character = repo::visible_character(&tx, id, Some(&user.id)).await?;
    let like_count = repo::unlike(&tx, &character.id, &user.id).await?;
    tx.commit().await?;
    Ok(Json(LikeState {
        character_id: character.id,
        liked: false,
        like_count,
    }))
}

/// Rate a character.
///
/// The caller's one rating of the character, created (201) or replaced (200). Owners cannot
/// rate their own characters; a suspended account cannot rate (it may still withdraw a
/// rating).
#[utoipa::path(
    put,
    path = "/api/v1/characters/{id}/rating",
    tag = "social",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The character's id.")),
    request_body = RatingBody,
    responses(
        (status = 200, description = "The rating was replaced; with the character's new aggregate.", body = RatingWithSummary),
        (status = 201, description = "The rating was created; with the character's new aggregate.", body = RatingWithSummary),
        (status = 401, response = Unauthorized),
        (status = 403, description = "The caller owns the character, or the account is suspended, banned or erased.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such character, or not visible to the caller; or no account yet.", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = ValidationFailed),
        BodyRefused,
        ServerFailures,
    )
)]
pub(crate) async fn put_rating(
    mut account: Account,
    meta: RequestMeta,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<(StatusCode, Json<RatingWithSummary>), ApiError> {
    let id = character_id(&id)?;
    let input = RatingInput::from_body(&body)?;
    account.user.require_active("rate characters")?;
    let (tx, user) = account.begin_as_user().await?;
    let character = repo::visible_character(&tx, id, Some(&user.id)).await?;
    if character.user_id == user.id {
        return Err(ApiError::Forbidden(
            "you cannot rate your own character; ratings are for what others made".into(),
        ));
    }
    let upserted = repo::upsert_rating(&tx, &character.id, &user.id, &input).await?;
    activity::record(
        &tx,
        Activity {
            user_id: Some(&user.id),
            activity_type: crate::activity::ActivityType::CharacterRated,
            entity_type: Some("character"),
            entity_id: Some(&character.id),
            metadata: json!({"rating": upserted.rating.rating, "created": upserted.created}),
        },
        &meta,
    )
    .await?;
    let summary = repo::rating_summary(&tx, &character.id).await?;
    tx.commit().await?;
    let status = if upserted.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(RatingWithSummary {
            rating: upserted.rating,
            summary,
        }),
    ))
}

/// Withdraw the caller's rating of a character.
#[utoipa::path(
    delete,
    path = "/api/v1/characters/{id}/rating",
    tag = "social",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The character's id.")),
    responses(
        (status = 204, description = "The rating is gone."),
        (status = 404, description = "No such character (or not visible to the caller), the caller has not rated it, or no account yet.", body = Problem, content_type = "application/problem+json"),
        Authenticated,
        ServerFailures,
    )
)]
pub(crate) async fn delete_rating(
    mut account: Account,
    meta: RequestMeta,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = character_id(&id)?;
    let (tx, user) = account.begin_as_user().await?;
    let character = repo::visible_character(&tx, id, Some(&user.id)).await?;
    if !repo::delete_rating(&tx, &character.id, &user.id).await? {
        return Err(ApiError::NotFound(
            "you have not rated this character".into(),
        ));
    }
    activity::record(
        &tx,
        Activity {
            user_id: Some(&user.id),
            activity_type: crate::activity::ActivityType::RatingWithdrawn,
            entity_type: Some("character"),
            entity_id: Some(&character.id),
            metadata: json!({}),
        },
        &meta,
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Unknown parameters are refused with a 422.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Page size, 1 to 100 (default 24).
    #[param(minimum = 1, maximum = 100, nullable = false)]
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    #[param(nullable = false)]
    cursor: Option<String>,
}

/// The ratings of a character.
///
/// Newest first, paginated, with the character's aggregate; raters are shown by their public
/// handle only.
#[utoipa::path(
    get,
    path = "/api/v1/characters/{id}/ratings",
    tag = "social",
    security((), ("bearer" = [])),
    params(("id" = String, Path, description = "The character's id."), ListQuery),
    responses(
        (status = 200, description = "A page of ratings.", body = RatingsPage),
        (status = 404, description = "No such character, or not visible to the caller.", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = ValidationFailed),
        Authenticated,
        ServerFailures,
    )
)]
pub(crate) async fn list_ratings(
    State(state): State<AppState>,
    OptionalCaller(identity): OptionalCaller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<RatingsPage>, ApiError> {
    let id = character_id(&id)?;
    let limit = pagination::limit(query.limit)?;
    let after = pagination::decode_time_key(query.cursor.as_deref())?;
    let mut client = state.db.get().await?;
    let viewer = crate::users::repo::optional_user(&**client, identity.as_ref())
        .await?
        .map(|user| user.id);
    let tx = begin_as(&mut client, viewer.as_deref()).await?;
    let character = repo::visible_character(&tx, id, viewer.as_deref()).await?;
    let rows = repo::list_ratings(&tx, &character.id, after.as_ref(), limit + 1).await?;
    tx.commit().await?;
    let page = pagination::page(rows, limit, |r| TimeKey {
        at: r.created_at,
        id: r.id.clone(),
    });
    Ok(Json(RatingsPage {
        items: page.items,
        next_cursor: page.next_cursor,
        summary: character.summary,
    }))
}

/// Report a character.
///
/// A reporter has at most one open report per character: reporting again answers the open
/// report (200) instead of filing another (201). Each report is weighed from its reporter
/// (account age, verified email, how often moderators actioned their past reports); a
/// character leaves the gallery, until a moderator reviews it, once its open reports weigh
/// `GALLERY_REPORT_THRESHOLD`. A suspended account may not report.
#[utoipa::path(
    post,
    path = "/api/v1/characters/{id}/reports",
    tag = "social",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The character's id.")),
    request_body = ReportBody,
    responses(
        (status = 200, description = "The caller's open report of the character, unchanged.", body = Report),
        (status = 201, description = "The report was filed.", body = Report),
        (status = 401, response = Unauthorized),
        (status = 403, description = "The account is suspended, banned or erased.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such character, or not visible to the caller; or no account yet.", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = ValidationFailed),
        BodyRefused,
        ServerFailures,
    )
)]
pub(crate) async fn file_report(
    State(state): State<AppState>,
    mut account: Account,
    meta: RequestMeta,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<(StatusCode, Json<Report>), ApiError> {
    let id = character_id(&id)?;
    let input = ReportInput::from_body(&body)?;
    account.user.require_active("report characters")?;
    let record = trust::reporter_record(account.client(), &account.user.id).await?;
    let weight = trust::weight(&record, &state.config.gallery);
    let (tx, user) = account.begin_as_user().await?;
    let character = repo::visible_character(&tx, id, Some(&user.id)).await?;
    let filed = repo::file_report(&tx, &character.id, &user.id, &input).await?;
    if filed.created {
        // The API role writes the caller's own activity rows (V4), in the
        // same transaction: the report and its log row commit together.
        activity::record(
            &tx,
            Activity {
                user_id: Some(&user.id),
                activity_type: crate::activity::ActivityType::ReportFiled,
                entity_type: Some("character"),
                entity_id: Some(&character.id),
                metadata: json!({"reason": filed.report.reason, "report_id": filed.report.id}),
            },
            &meta,
        )
        .await?;
        // The weight is the system's to write (V18): back to the system role,
        // in the same transaction, once the report has passed row-level security.
        act_as_system(&tx).await?;
        trust::set_weight(&tx, &filed.report.id, weight).await?;
    }
    tx.commit().await?;
    let status = if filed.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(filed.report)))
}
