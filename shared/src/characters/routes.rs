//! Routes of characters and the gallery (the `characters` function).
//!
//! | route | what |
//! |---|---|
//! | `POST /api/v1/characters` | create (201) |
//! | `GET /api/v1/characters` | the caller's characters, filtered, paginated |
//! | `GET/PATCH/DELETE /api/v1/characters/{id}` | read (counts a view), edit, delete |
//! | `GET /api/v1/gallery` | public gallery, filtered and sorted |
//! | `GET /api/v1/gallery/featured` | featured gallery characters |

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::fields::{self, Purpose};
use super::gallery::{self, GalleryFilter, Sort};
use super::repo::{self, ListFilter};
use super::{Character, GalleryItem};
use crate::app::AppState;
use crate::auth::{Caller, Identity, OptionalCaller};
use crate::db::{self, PooledClient};
use crate::error::{ApiError, FieldError};
use crate::http::{ApiJson, ApiPath, ApiQuery, RequestMeta};
use crate::input::finish;
use crate::pagination::{self, Page};
use crate::users::fields::{STYLE_TYPES, one_of};
use crate::users::{self, User};

pub const GENERATION_STATUSES: [&str; 5] =
    ["pending", "processing", "completed", "failed", "cancelled"];

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/characters",
            get(list_characters).post(create_character),
        )
        .route(
            "/api/v1/characters/{id}",
            get(get_character)
                .patch(update_character)
                .delete(delete_character),
        )
        .route("/api/v1/characters/{id}/download", post(download_character))
        .route("/api/v1/gallery", get(list_gallery))
        .route("/api/v1/gallery/featured", get(list_featured))
}

/// The user behind an optional identity; a signed-in caller without an
/// account yet reads as anonymous.
pub async fn viewer(
    client: &PooledClient,
    identity: Option<&Identity>,
) -> Result<Option<User>, ApiError> {
    match identity {
        None => Ok(None),
        Some(identity) => match users::repo::current_user(&***client, identity).await {
            Ok(user) => Ok(Some(user)),
            Err(ApiError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        },
    }
}

async fn create_character(
    State(state): State<AppState>,
    Caller(identity): Caller,
    meta: RequestMeta,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<impl IntoResponse, ApiError> {
    let fields = fields::parse(body, Purpose::Create)?;
    let mut client = state.db.get().await?;
    let user = users::repo::current_user(&**client, &identity).await?;
    let tx = db::begin_as(&mut client, Some(&user.id)).await?;
    let character = repo::create(&tx, &user, &fields, &meta).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(character)))
}

async fn get_character(
    State(state): State<AppState>,
    OptionalCaller(identity): OptionalCaller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Character>, ApiError> {
    let mut client = state.db.get().await?;
    let viewer = viewer(&client, identity.as_ref()).await?;
    let tx = db::begin_as(&mut client, viewer.as_ref().map(|u| u.id.as_str())).await?;
    let character = repo::read(&tx, viewer.as_ref(), &id).await?;
    tx.commit().await?;
    Ok(Json(character))
}

async fn update_character(
    State(state): State<AppState>,
    Caller(identity): Caller,
    meta: RequestMeta,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<Json<Character>, ApiError> {
    let fields = fields::parse(body, Purpose::Update)?;
    let mut client = state.db.get().await?;
    let user = users::repo::current_user(&**client, &identity).await?;
    let tx = db::begin_as(&mut client, Some(&user.id)).await?;
    let character = repo::update(&tx, &user, &id, &fields, &meta).await?;
    tx.commit().await?;
    Ok(Json(character))
}

async fn delete_character(
    State(state): State<AppState>,
    Caller(identity): Caller,
    meta: RequestMeta,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let mut client = state.db.get().await?;
    let user = users::repo::current_user(&**client, &identity).await?;
    let tx = db::begin_as(&mut client, Some(&user.id)).await?;
    repo::delete(&tx, &user, &id, &meta).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<i64>,
    cursor: Option<String>,
    style_type: Option<String>,
    tag: Option<String>,
    generation_status: Option<String>,
    collection_id: Option<String>,
    q: Option<String>,
}

/// Validates the filters shared by the own list and the gallery.
fn common_filters(
    errors: &mut Vec<FieldError>,
    style_type: Option<String>,
    tag: Option<String>,
    q: Option<String>,
) -> (Option<String>, Option<String>, Option<String>) {
    let style_type = style_type.and_then(|s| {
        one_of("style_type", &s, &STYLE_TYPES)
            .map_err(|e| errors.push(e))
            .ok()
    });
    let tag = tag.and_then(|t| fields::tag("tag", &t).map_err(|e| errors.push(e)).ok());
    let q = q.and_then(|q| {
        let q = q.trim().to_string();
        if q.chars().count() > 200 {
            errors.push(FieldError::new("q", "must be at most 200 characters"));
            None
        } else {
            (!q.is_empty()).then_some(q)
        }
    });
    (style_type, tag, q)
}

async fn list_characters(
    State(state): State<AppState>,
    Caller(identity): Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<Character>>, ApiError> {
    let limit = pagination::limit(query.limit)?;
    let after = pagination::decode(query.cursor.as_deref())?;
    let mut errors = Vec::new();
    let (style_type, tag, text) = common_filters(&mut errors, query.style_type, query.tag, query.q);
    let generation_status = query.generation_status.and_then(|s| {
        one_of("generation_status", &s, &GENERATION_STATUSES)
            .map_err(|e| errors.push(e))
            .ok()
    });
    let filter = finish(
        ListFilter {
            style_type,
            tag,
            generation_status,
            collection_id: query.collection_id,
            text,
        },
        errors,
    )?;
    let mut client = state.db.get().await?;
    let user = users::repo::current_user(&**client, &identity).await?;
    let tx = db::begin_as(&mut client, Some(&user.id)).await?;
    let page = repo::list_own(&tx, &user, &filter, limit, after).await?;
    tx.commit().await?;
    Ok(Json(page))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GalleryQuery {
    limit: Option<i64>,
    cursor: Option<String>,
    sort: Option<String>,
    style_type: Option<String>,
    tag: Option<String>,
    q: Option<String>,
}

async fn gallery_page(
    state: AppState,
    identity: Option<Identity>,
    query: GalleryQuery,
    featured_only: bool,
) -> Result<Json<Page<GalleryItem>>, ApiError> {
    let limit = pagination::limit(query.limit)?;
    let after = pagination::decode(query.cursor.as_deref())?;
    let mut errors = Vec::new();
    let sort = match query.sort.as_deref() {
        None | Some("recent") => Sort::Recent,
        Some("popular") => Sort::Popular,
        Some("top_rated") => Sort::TopRated,
        Some(_) => {
            errors.push(FieldError::new(
                "sort",
                "must be one of recent, popular, top_rated",
            ));
            Sort::Recent
        }
    };
    let (style_type, tag, text) = common_filters(&mut errors, query.style_type, query.tag, query.q);
    let filter = finish(
        GalleryFilter {
            style_type,
            tag,
            text,
            featured_only,
        },
        errors,
    )?;
    let mut client = state.db.get().await?;
    let viewer = viewer(&client, identity.as_ref()).await?;
    let tx = db::begin_as(&mut client, viewer.as_ref().map(|u| u.id.as_str())).await?;
    let page = gallery::list(&tx, &state.config.gallery, &filter, sort, limit, after).await?;
    tx.commit().await?;
    Ok(Json(page))
}

async fn list_gallery(
    State(state): State<AppState>,
    OptionalCaller(identity): OptionalCaller,
    ApiQuery(query): ApiQuery<GalleryQuery>,
) -> Result<Json<Page<GalleryItem>>, ApiError> {
    gallery_page(state, identity, query, false).await
}

async fn list_featured(
    State(state): State<AppState>,
    OptionalCaller(identity): OptionalCaller,
    ApiQuery(query): ApiQuery<GalleryQuery>,
) -> Result<Json<Page<GalleryItem>>, ApiError> {
    gallery_page(state, identity, query, true).await
}

/// How long a download link works.
pub const DOWNLOAD_LINK_TTL: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(Debug, serde::Serialize)]
pub struct DownloadLink {
    pub url: String,
    /// When `url` stops working (absent for an image hosted elsewhere).
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub download_count: Option<i32>,
}

/// A time-limited link to the character's image, counting the download.
async fn download_character(
    State(state): State<AppState>,
    Caller(identity): Caller,
    meta: RequestMeta,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DownloadLink>, ApiError> {
    let mut client = state.db.get().await?;
    let user = users::repo::current_user(&**client, &identity).await?;
    let tx = db::begin_as(&mut client, Some(&user.id)).await?;
    let character = repo::visible(&tx, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such character".into()))?;
    let image = character.primary_image_url.ok_or_else(|| {
        ApiError::Conflict("this character has no image yet; generate one first".into())
    })?;
    let link = if image.starts_with("https://") || image.starts_with("http://") {
        DownloadLink {
            url: image,
            expires_at: None,
            download_count: None,
        }
    } else {
        let storage = state
            .storage
            .as_ref()
            .ok_or_else(|| ApiError::ServiceUnavailable {
                detail: "image storage is not configured".into(),
                retry_after: 60,
            })?;
        let signed = storage
            .presign_get(&image, DOWNLOAD_LINK_TTL)
            .await
            .map_err(ApiError::internal)?;
        DownloadLink {
            url: signed.url,
            expires_at: Some(signed.expires_at),
            download_count: None,
        }
    };
    let count: Option<i32> = tx
        .query_one("SELECT count_character_download($1)", &[&id])
        .await?
        .try_get(0)?;
    crate::activity::record(
        &tx,
        crate::activity::Activity {
            user_id: Some(&user.id),
            activity_type: "character_downloaded",
            entity_type: Some("character"),
            entity_id: Some(&id),
            metadata: serde_json::json!({}),
        },
        &meta,
    )
    .await?;
    tx.commit().await?;
    Ok(Json(DownloadLink {
        download_count: count,
        ..link
    }))
}
