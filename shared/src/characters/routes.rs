//! Routes of characters and the gallery (the `characters` function).
//!
//! | route | what |
//! |---|---|
//! | `POST /api/v1/characters` | create (201) |
//! | `GET /api/v1/characters` | the caller's characters, filtered, paginated |
//! | `GET/PATCH/DELETE /api/v1/characters/{id}` | read (counts a view), edit, delete |
//! | `GET /api/v1/characters/{id}/images` | the character's images, newest first |
//! | `PUT /api/v1/characters/{id}/primary-image` | choose the primary image |
//! | `DELETE /api/v1/characters/{id}/images/{image_id}` | delete an image |
//! | `GET /api/v1/characters/{id}/variants` | the character's family of variants |
//! | `GET /api/v1/gallery` | public gallery, filtered and sorted |
//! | `GET /api/v1/gallery/featured` | featured gallery characters |

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::fields::{self, CharacterPatch, NewCharacter, Purpose};
use super::gallery::{self, GalleryFilter, Sort};
use super::images::{self, CharacterImage};
use super::repo::{self, ListFilter};
use super::views::{ViewCounter, Viewer};
use super::{Character, GalleryItem};
use crate::kernel::error::{ApiError, FieldError, Problem};
use crate::ports::db;
use crate::users;
use crate::users::account::Account;
use crate::users::fields::STYLE_TYPES;
use crate::web::auth::{Identity, OptionalCaller};
use crate::web::http::{ApiJson, ApiPath, ApiQuery, RequestMeta, resource_id};
use crate::web::input::checks::one_of;
use crate::web::input::{RequestBody, decode, finish, required};
use crate::web::pagination::{self, Page, PageQuery};
use crate::web::responses::NoAccountYet;
use crate::web::responses::{self, InternalError, Unauthorized, ValidationFailed};
use crate::web::responses::{Authenticated, BodyRefused, ServerFailures, SignedIn};
use crate::web::state::AppState;

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
        .route("/api/v1/characters/{id}/images", get(list_images))
        .route(
            "/api/v1/characters/{id}/images/{image_id}",
            delete(delete_image),
        )
        .route(
            "/api/v1/characters/{id}/primary-image",
            put(set_primary_image),
        )
        .route("/api/v1/characters/{id}/variants", get(list_variants))
        .route("/api/v1/gallery", get(list_gallery))
        .route(
            "/api/v1/users/{username}/characters",
            get(list_person_characters),
        )
        .route("/api/v1/gallery/featured", get(list_featured))
}

/// Create a character.
#[utoipa::path(
    post,
    path = "/api/v1/characters",
    tag = "characters",
    security(("bearer" = [])),
    request_body = NewCharacter,
    responses(
        (status = 201, description = "The new character, owned by the caller.", body = Character),
        (status = 401, response = Unauthorized),
        (status = 403, description = "The account is banned or erased, or suspended and the character is public.", body = Problem, content_type = "application/problem+json"),
        (status = 404, response = NoAccountYet),
        (status = 422, response = ValidationFailed),
        BodyRefused,
        ServerFailures,
    )
)]
pub(crate) async fn create_character(
    State(state): State<AppState>,
    mut account: Account,
    meta: RequestMeta,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<impl IntoResponse, ApiError> {
    let fields = fields::parse(body, Purpose::Create)?;
    let (tx, user) = account.begin_as_user().await?;
    let mut character = repo::create(&tx, user, &fields, &meta).await?;
    tx.commit().await?;
    character.present(state.storage.as_deref()).await;
    Ok((StatusCode::CREATED, Json(character)))
}

/// A character.
///
/// The caller's own characters and public ones are visible; anything else is the same 404 as
/// an unknown id. Reading someone else's public character counts a view: at most one per
/// viewer (the signed-in user, or an anonymous client's address and User-Agent) per
/// character per UTC day, written in batches, so `view_count` may trail by up to
/// `GALLERY_VIEW_FLUSH_SECONDS`.
#[utoipa::path(
    get,
    path = "/api/v1/characters/{id}",
    tag = "characters",
    security((), ("bearer" = [])),
    params(("id" = String, Path, description = "The character's id.")),
    responses(
        (status = 200, description = "The character.", body = Character),
        (status = 404, description = "No such character, or not visible to the caller.", body = Problem, content_type = "application/problem+json"),
        Authenticated,
        ServerFailures,
    )
)]
pub(crate) async fn get_character(
    State(state): State<AppState>,
    OptionalCaller(identity): OptionalCaller,
    meta: RequestMeta,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Character>, ApiError> {
    let id = resource_id(&id, "character")?;
    let mut client = state.db.get().await?;
    let viewer = users::repo::optional_user(&**client, identity.as_ref()).await?;
    let tx = db::begin_as(&mut client, viewer.as_ref().map(|u| u.id.as_str())).await?;
    let (mut character, is_view) = repo::read(&tx, viewer.as_ref(), id).await?;
    tx.commit().await?;
    drop(client);
    if is_view {
        let who = match &viewer {
            Some(user) => Viewer::User(&user.id),
            None => Viewer::Anonymous(&meta),
        };
        let views = state.cache::<ViewCounter>();
        if views.record(&character.id, who) {
            views.flush_logged(&state.db).await;
        }
    }
    character.present(state.storage.as_deref()).await;
    Ok(Json(character))
}

/// Change one of the caller's characters.
#[utoipa::path(
    patch,
    path = "/api/v1/characters/{id}",
    tag = "characters",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The character's id.")),
    request_body = CharacterPatch,
    responses(
        (status = 200, description = "The changed character (unchanged for `{}`).", body = Character),
        (status = 401, response = Unauthorized),
        (status = 403, description = "Someone else's public character, a suspended account publishing, or a banned or erased account.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such character, or not visible to the caller; or no account yet.", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = ValidationFailed),
        BodyRefused,
        ServerFailures,
    )
)]
pub(crate) async fn update_character(
    State(state): State<AppState>,
    mut account: Account,
    meta: RequestMeta,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<Json<Character>, ApiError> {
    let id = resource_id(&id, "character")?;
    let fields = fields::parse(body, Purpose::Update)?;
    let (tx, user) = account.begin_as_user().await?;
    let mut character = repo::update(&tx, user, id, &fields, &meta).await?;
    tx.commit().await?;
    character.present(state.storage.as_deref()).await;
    Ok(Json(character))
}

/// Delete one of the caller's characters.
#[utoipa::path(
    delete,
    path = "/api/v1/characters/{id}",
    tag = "characters",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The character's id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 401, response = Unauthorized),
        (status = 403, description = "Someone else's public character, or a banned or erased account.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such character, or not visible to the caller; or no account yet.", body = Problem, content_type = "application/problem+json"),
        ServerFailures,
    )
)]
pub(crate) async fn delete_character(
    State(state): State<AppState>,
    mut account: Account,
    meta: RequestMeta,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = resource_id(&id, "character")?;
    let (tx, user) = account.begin_system().await?;
    // As the system role: the caller's jobs still queued for this character are
    // cancelled and their credits released, so nobody pays for an image of a
    // character that no longer exists. Then the deletion itself, under RLS.
    crate::jobs::lifecycle::cancel_for_character(&tx, id, &user.id).await?;
    db::act_as(&tx, Some(&user.id)).await?;
    repo::owned(&tx, user, id).await?;
    let objects = repo::stored_objects(&tx, id).await?;
    repo::delete(&tx, user, id, &meta).await?;
    tx.commit().await?;
    // The rows are gone; now the images. A failure here leaves an orphan for
    // the bucket's lifecycle rule, never a character pointing at nothing.
    if let Some(storage) = state.storage.as_deref() {
        for key in &objects {
            if let Err(e) = storage.delete(key).await {
                tracing::warn!(%key, error = %e, "orphaned image after character deletion");
            }
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Unknown parameters are refused with a 422.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Page size, 1 to 100 (default 24).
    #[param(minimum = 1, maximum = 100, nullable = false)]
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    #[param(nullable = false)]
    cursor: Option<String>,
    #[param(schema_with = style_type_param)]
    style_type: Option<String>,
    /// Only characters with this tag (compared trimmed and lowercased).
    #[param(nullable = false, max_length = 32)]
    tag: Option<String>,
    #[param(schema_with = generation_status_param)]
    generation_status: Option<String>,
    /// Only members of this collection.
    #[param(nullable = false)]
    collection_id: Option<String>,
    /// Full-text search of the name, description, prompt and tags (web search syntax), at
    /// most 200 characters.
    #[param(nullable = false, max_length = 200)]
    q: Option<String>,
}

fn style_type_param() -> utoipa::openapi::Object {
    responses::string_enum(&STYLE_TYPES, false, "Only characters of this style type.")
}

fn generation_status_param() -> utoipa::openapi::Object {
    responses::string_enum(
        &GENERATION_STATUSES,
        false,
        "Only characters in this generation status.",
    )
}

fn sort_param() -> utoipa::openapi::Object {
    let mut schema = responses::string_enum(
        &["recent", "popular", "top_rated"],
        false,
        "`recent`: newest publication first; `popular`: most views + likes + downloads \
         first; `top_rated`: highest average rating first, among characters with enough \
         ratings (`GALLERY_TOP_RATED_MIN_RATINGS`).",
    );
    schema.default = Some("recent".into());
    schema
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

/// The caller's characters.
///
/// Newest first, filtered and paginated.
#[utoipa::path(
    get,
    path = "/api/v1/characters",
    tag = "characters",
    security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of the caller's characters.", body = Page<Character>),
        (status = 422, response = ValidationFailed),
        SignedIn,
        ServerFailures,
    )
)]
pub(crate) async fn list_characters(
    State(state): State<AppState>,
    mut account: Account,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<Character>>, ApiError> {
    let limit = pagination::limit(query.limit)?;
    let after = pagination::decode_time_key(query.cursor.as_deref())?;
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
            public_only: false,
        },
        errors,
    )?;
    let (tx, user) = account.begin_as_user().await?;
    let mut page = repo::list_own(&tx, user, &filter, limit, after).await?;
    tx.commit().await?;
    for character in &mut page.items {
        character.present(state.storage.as_deref()).await;
    }
    Ok(Json(page))
}

/// Unknown parameters are refused with a 422.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct GalleryQuery {
    /// Page size, 1 to 100 (default 24).
    #[param(minimum = 1, maximum = 100, nullable = false)]
    limit: Option<i64>,
    /// The `next_cursor` of the previous page, fetched with the same `sort`.
    #[param(nullable = false)]
    cursor: Option<String>,
    #[param(schema_with = sort_param)]
    sort: Option<String>,
    #[param(schema_with = style_type_param)]
    style_type: Option<String>,
    /// Only characters with this tag (compared trimmed and lowercased).
    #[param(nullable = false, max_length = 32)]
    tag: Option<String>,
    /// Full-text search of the name, description, prompt and tags (web search syntax), at
    /// most 200 characters.
    #[param(nullable = false, max_length = 200)]
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
    let viewer = users::repo::optional_user(&**client, identity.as_ref()).await?;
    let tx = db::begin_as(&mut client, viewer.as_ref().map(|u| u.id.as_str())).await?;
    let mut page = gallery::list(&tx, &state.config.gallery, &filter, sort, limit, after).await?;
    tx.commit().await?;
    for item in &mut page.items {
        item.character.present(state.storage.as_deref()).await;
    }
    Ok(Json(page))
}

/// The public gallery.
///
/// Public characters of active users who allow showcasing, minus those with open reports
/// from `GALLERY_REPORT_THRESHOLD` distinct users; filtered, sorted and paginated.
#[utoipa::path(
    get,
    path = "/api/v1/gallery",
    tag = "characters",
    security((), ("bearer" = [])),
    params(GalleryQuery),
    responses(
        (status = 200, description = "A page of the gallery.", body = Page<GalleryItem>),
        (status = 422, response = ValidationFailed),
        Authenticated,
        ServerFailures,
    )
)]
pub(crate) async fn list_gallery(
    State(state): State<AppState>,
    OptionalCaller(identity): OptionalCaller,
    ApiQuery(query): ApiQuery<GalleryQuery>,
) -> Result<Json<Page<GalleryItem>>, ApiError> {
    gallery_page(state, identity, query, false).await
}

/// The featured part of the gallery.
///
/// As `GET /api/v1/gallery`, limited to featured characters.
#[utoipa::path(
    get,
    path = "/api/v1/gallery/featured",
    tag = "characters",
    security((), ("bearer" = [])),
    params(GalleryQuery),
    responses(
        (status = 200, description = "A page of featured gallery characters.", body = Page<GalleryItem>),
        (status = 422, response = ValidationFailed),
        Authenticated,
        ServerFailures,
    )
)]
pub(crate) async fn list_featured(
    State(state): State<AppState>,
    OptionalCaller(identity): OptionalCaller,
    ApiQuery(query): ApiQuery<GalleryQuery>,
) -> Result<Json<Page<GalleryItem>>, ApiError> {
    gallery_page(state, identity, query, true).await
}

/// A link to a character's image.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct DownloadLink {
    /// Where to fetch the image: a signed link, or the image's own URL when it is hosted
    /// elsewhere.
    pub url: String,
    /// When `url` stops working (absent for an image hosted elsewhere).
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The character's download count, this download included.
    pub download_count: Option<i32>,
}

/// Download a character's image.
///
/// A time-limited (5 minute) link to the image of a character the caller may see (their own
/// or a public one), counting the download.
#[utoipa::path(
    post,
    path = "/api/v1/characters/{id}/download",
    tag = "characters",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The character's id.")),
    responses(
        (status = 200, description = "The link.", body = DownloadLink),
        (status = 404, description = "No such character, or not visible to the caller; or no account yet.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The character has no image yet.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Image storage is not configured (`Retry-After: 60`), or the database or the token issuer's keys are briefly unavailable.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
        (status = 500, response = InternalError),
        Authenticated,
    )
)]
pub(crate) async fn download_character(
    State(state): State<AppState>,
    mut account: Account,
    meta: RequestMeta,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DownloadLink>, ApiError> {
    let id = resource_id(&id, "character")?;
    let (tx, user) = account.begin_as_user().await?;
    let character = repo::visible(&tx, id)
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
            .presign_get(&image, state.config.storage.url_ttl)
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
            activity_type: crate::activity::ActivityType::CharacterDownloaded,
            entity_type: Some("character"),
            entity_id: Some(id),
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

/// A person's public characters.
///
/// The public characters of the user with this username that moderation has not hidden,
/// newest first, paginated, each with time-limited image links. Visible as the person's
/// profile is (`GET /api/v1/users/{username}`): a public profile to anyone, any profile to
/// its owner; anything else (unknown, suspended, a private or `friends` profile) is the same
/// 404.
#[utoipa::path(
    get,
    path = "/api/v1/users/{username}/characters",
    tag = "characters",
    security((), ("bearer" = [])),
    params(("username" = String, Path, description = "The person's username."), PageQuery),
    responses(
        (status = 200, description = "A page of the person's public characters, newest first.", body = Page<Character>),
        (status = 404, description = "No such user, or their profile is not visible to the caller.", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = ValidationFailed),
        Authenticated,
        ServerFailures,
    )
)]
pub(crate) async fn list_person_characters(
    State(state): State<AppState>,
    OptionalCaller(identity): OptionalCaller,
    ApiPath(username): ApiPath<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<Character>>, ApiError> {
    let limit = pagination::limit(query.limit)?;
    let after = pagination::decode_time_key(query.cursor.as_deref())?;
    let mut client = state.db.get().await?;
    let viewer = users::repo::optional_user(&**client, identity.as_ref()).await?;
    let viewer_id = viewer.as_ref().map(|v| v.id.as_str());
    let person = users::repo::visible_person(&**client, viewer_id, &username).await?;
    let tx = db::begin_as(&mut client, viewer_id).await?;
    let filter = repo::ListFilter {
        public_only: true,
        ..repo::ListFilter::default()
    };
    let mut page = repo::list_own(&tx, &person, &filter, limit, after).await?;
    tx.commit().await?;
    for character in &mut page.items {
        character.present(state.storage.as_deref()).await;
    }
    Ok(Json(page))
}

/// A character's images.
///
/// Every image generation made for the character, newest first, paginated: visible exactly
/// when the character is (the caller's own, or a public one). Each carries time-limited links
/// (an hour) to the image and its thumbnail, never a storage key.
#[utoipa::path(
    get,
    path = "/api/v1/characters/{id}/images",
    tag = "characters",
    security((), ("bearer" = [])),
    params(("id" = String, Path, description = "The character's id."), PageQuery),
    responses(
        (status = 200, description = "A page of the character's images.", body = Page<CharacterImage>),
        (status = 404, description = "No such character, or not visible to the caller.", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = ValidationFailed),
        Authenticated,
        ServerFailures,
    )
)]
pub(crate) async fn list_images(
    State(state): State<AppState>,
    OptionalCaller(identity): OptionalCaller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<CharacterImage>>, ApiError> {
    let id = resource_id(&id, "character")?;
    let limit = pagination::limit(query.limit)?;
    let after = pagination::decode_time_key(query.cursor.as_deref())?;
    let mut client = state.db.get().await?;
    let viewer = users::repo::optional_user(&**client, identity.as_ref()).await?;
    let tx = db::begin_as(&mut client, viewer.as_ref().map(|u| u.id.as_str())).await?;
    repo::visible(&tx, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such character".into()))?;
    let page = images::list(&tx, id, limit, after).await?;
    tx.commit().await?;
    let mut items = Vec::with_capacity(page.items.len());
    for image in page.items {
        items.push(image.present(state.storage.as_deref()).await);
    }
    Ok(Json(Page {
        items,
        next_cursor: page.next_cursor,
    }))
}

/// The body of `PUT /api/v1/characters/{id}/primary-image`. Unknown fields are refused with
/// a 422 naming them.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PrimaryImageChoice {
    /// One of the character's images (see `GET /api/v1/characters/{id}/images`).
    #[serde(default)]
    #[schema(value_type = String, required = true, min_length = 1, max_length = 128)]
    image_id: Option<String>,
}

impl RequestBody for PrimaryImageChoice {
    type Valid = String;

    /// A 422 naming `image_id` for anything but a plausible id.
    fn validate(self, errors: &mut Vec<FieldError>) -> String {
        let id = required("image_id", self.image_id, errors).unwrap_or_default();
        if !errors.is_empty() {
            return id;
        }
        if !(1..=128).contains(&id.len()) || id.chars().any(char::is_control) {
            errors.push(FieldError::new(
                "image_id",
                "is not an image of this character",
            ));
        }
        id
    }
}

/// Choose a character's primary image.
///
/// The image becomes the character's `primary_image_url` and `thumbnail_url` (the others are
/// its `additional_images`). Owner only; logged as `character_primary_image_set`.
#[utoipa::path(
    put,
    path = "/api/v1/characters/{id}/primary-image",
    tag = "characters",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The character's id.")),
    request_body = PrimaryImageChoice,
    responses(
        (status = 200, description = "The character, with its new primary image.", body = Character),
        (status = 401, response = Unauthorized),
        (status = 403, description = "Someone else's public character, or a banned or erased account.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such character, or not visible to the caller; or no account yet.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An invalid body, or `image_id` is not an image of this character (`errors` names `image_id`).", body = Problem, content_type = "application/problem+json"),
        BodyRefused,
        ServerFailures,
    )
)]
pub(crate) async fn set_primary_image(
    State(state): State<AppState>,
    mut account: Account,
    meta: RequestMeta,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<Json<Character>, ApiError> {
    let id = resource_id(&id, "character")?;
    let image_id = decode::<PrimaryImageChoice>(body)?;
    let (tx, user) = account.begin_as_user().await?;
    repo::owned(&tx, user, id).await?;
    let mut character = images::set_primary(&tx, user, id, &image_id, &meta).await?;
    tx.commit().await?;
    character.present(state.storage.as_deref()).await;
    Ok(Json(character))
}

/// Delete one of a character's images.
///
/// Owner only. When it was the primary image, the oldest remaining image becomes primary (none
/// left: the character has no image). The image leaves its job's `output_urls`; the image and
/// its thumbnail are deleted from storage once the deletion is committed. Logged as
/// `character_image_deleted`.
#[utoipa::path(
    delete,
    path = "/api/v1/characters/{id}/images/{image_id}",
    tag = "characters",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The character's id."),
        ("image_id" = String, Path, description = "The image's id."),
    ),
    responses(
        (status = 204, description = "Deleted."),
        (status = 401, response = Unauthorized),
        (status = 403, description = "Someone else's public character, or a banned or erased account.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such character (or not visible to the caller), no such image of it, or no account yet.", body = Problem, content_type = "application/problem+json"),
        ServerFailures,
    )
)]
pub(crate) async fn delete_image(
    State(state): State<AppState>,
    mut account: Account,
    meta: RequestMeta,
    ApiPath((id, image_id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id = resource_id(&id, "character")?;
    let image_id = resource_id(&image_id, "image of this character")?;
    let (tx, user) = account.begin_system().await?;
    // As the system role, scoped to the caller's own image: its job stops listing it.
    // Then the checks and the deletion, under RLS; a refusal rolls both back.
    images::forget_job_output(&tx, user, id, image_id).await?;
    db::act_as(&tx, Some(&user.id)).await?;
    repo::owned(&tx, user, id).await?;
    let objects = images::delete(&tx, user, id, image_id, &meta).await?;
    tx.commit().await?;
    // The row is gone; now the files. A failure leaves an orphan for the
    // bucket's lifecycle rule, never an image row pointing at nothing.
    if let Some(storage) = state.storage.as_deref() {
        for key in &objects {
            if let Err(e) = storage.delete(key).await {
                tracing::warn!(%key, error = %e, "orphaned image after its deletion");
            }
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A character's family of variants.
///
/// The character's family: the first character of its lineage and every variant made from it
/// or from its variants (`parent_character_id`, `version_number` and `variant_type` draw the
/// tree), ordered by version number, then creation. The caller sees their own members and
/// the public ones; 404 when the character itself is not visible.
#[utoipa::path(
    get,
    path = "/api/v1/characters/{id}/variants",
    tag = "characters",
    security((), ("bearer" = [])),
    params(("id" = String, Path, description = "The character's id."), PageQuery),
    responses(
        (status = 200, description = "A page of the family, by version number.", body = Page<Character>),
        (status = 404, description = "No such character, or not visible to the caller.", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = ValidationFailed),
        Authenticated,
        ServerFailures,
    )
)]
pub(crate) async fn list_variants(
    State(state): State<AppState>,
    OptionalCaller(identity): OptionalCaller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<Character>>, ApiError> {
    let id = resource_id(&id, "character")?;
    let limit = pagination::limit(query.limit)?;
    let after = pagination::decode_version_key(query.cursor.as_deref())?;
    let mut client = state.db.get().await?;
    let viewer = users::repo::optional_user(&**client, identity.as_ref()).await?;
    let tx = db::begin_as(&mut client, viewer.as_ref().map(|u| u.id.as_str())).await?;
    repo::visible(&tx, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such character".into()))?;
    let mut page = repo::family(&tx, id, limit, after).await?;
    tx.commit().await?;
    for character in &mut page.items {
        character.present(state.storage.as_deref()).await;
    }
    Ok(Json(page))
}
