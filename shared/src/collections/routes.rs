//! Routes of collections (served by the `characters` function).
//!
//! | route | what |
//! |---|---|
//! | `POST /api/v1/collections` | create one of the caller's collections (201) |
//! | `GET /api/v1/collections` | the caller's collections, newest first, paginated |
//! | `GET/PATCH/DELETE /api/v1/collections/{id}` | read (owner or public), change, delete |
//! | `GET /api/v1/collections/{id}/characters` | the members in order, paginated |
//! | `PUT/DELETE /api/v1/collections/{id}/characters/{character_id}` | add or reorder, remove |
//!
//! A collection the caller cannot see is a 404, whoever owns it; one they can
//! see but do not own (a public one) is a 403 for every change. Each handler
//! checks this itself and runs its statements through [`begin_as`], so
//! row-level security is the second wall. A suspended account may not publish
//! a collection (`is_public: true` on create or change: 403).

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio_postgres::GenericClient;

use super::input::{CollectionPatch, MemberPatch, NewCollection};
use super::repo::{self, MemberKey, PutOutcome};
use super::{Collection, CollectionMember, input};
use crate::kernel::error::{ApiError, Problem};
use crate::ports::db::begin_as;
use crate::users::account::Account;
use crate::web::auth::OptionalCaller;
use crate::web::http::{ApiJson, ApiPath, ApiQuery};
use crate::web::pagination::{self, Page, PageQuery, TimeKey};
use crate::web::responses::NoAccountYet;
use crate::web::responses::{Authenticated, BodyRefused, ServerFailures, SignedIn};
use crate::web::responses::{Unauthorized, ValidationFailed};
use crate::web::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/collections",
            post(create_collection).get(list_collections),
        )
        .route(
            "/api/v1/collections/{id}",
            get(get_collection)
                .patch(patch_collection)
                .delete(delete_collection),
        )
        .route("/api/v1/collections/{id}/characters", get(list_members))
        .route(
            "/api/v1/users/{username}/collections",
            get(list_person_collections),
        )
        .route("/api/v1/gallery/collections", get(list_collection_gallery))
        .route(
            "/api/v1/collections/{id}/characters/{character_id}",
            put(put_member).delete(remove_member),
        )
}

fn no_such_collection() -> ApiError {
    ApiError::NotFound("no such collection".into())
}

fn no_such_character() -> ApiError {
    ApiError::NotFound("no such character".into())
}

/// First wall for reads: the collection if the viewer owns it or it is
/// public, else a 404 (as if it did not exist).
async fn visible_collection(
    client: &impl GenericClient,
    id: &str,
    viewer: Option<&str>,
) -> Result<Collection, ApiError> {
    if !input::plausible_id(id) {
        return Err(no_such_collection());
    }
    let collection = repo::find_collection(client, id)
        .await?
        .ok_or_else(no_such_collection)?;
    if viewer == Some(collection.user_id.as_str()) || collection.is_public {
        Ok(collection)
    } else {
        Err(no_such_collection())
    }
}

/// First wall for changes: 404 when the caller cannot see the collection, 403
/// when they can (it is public) but it is not theirs.
async fn owned_collection(
    client: &impl GenericClient,
    id: &str,
    owner_id: &str,
) -> Result<Collection, ApiError> {
    let collection = visible_collection(client, id, Some(owner_id)).await?;
    if collection.user_id != owner_id {
        return Err(ApiError::Forbidden(
            "only the collection's owner can change it".into(),
        ));
    }
    Ok(collection)
}

/// Create a collection.
#[utoipa::path(
    post,
    path = "/api/v1/collections",
    tag = "collections",
    security(("bearer" = [])),
    request_body = NewCollection,
    responses(
        (status = 201, description = "The new collection, owned by the caller.", body = Collection,
            headers(("Location" = String, description = "The collection's URL path."))),
        (status = 401, response = Unauthorized),
        (status = 403, description = "The account is banned or erased, or suspended and the collection is public.", body = Problem, content_type = "application/problem+json"),
        (status = 404, response = NoAccountYet),
        (status = 422, response = ValidationFailed),
        BodyRefused,
        ServerFailures,
    )
)]
pub(crate) async fn create_collection(
    mut account: Account,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<impl IntoResponse, ApiError> {
    let fields = input::new_collection(body)?;
    if fields.is_public == Some(true) {
        account.user.require_active("publish collections")?;
    }
    let (tx, user) = account.begin_as_user().await?;
    let collection = repo::insert_collection(&tx, &user.id, &fields).await?;
    tx.commit().await?;
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/collections/{}", collection.id)) {
        headers.insert(header::LOCATION, location);
    }
    Ok((StatusCode::CREATED, headers, Json(collection)))
}

/// The caller's collections.
///
/// Newest first, paginated.
#[utoipa::path(
    get,
    path = "/api/v1/collections",
    tag = "collections",
    security(("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "A page of the caller's collections.", body = Page<Collection>),
        (status = 422, response = ValidationFailed),
        SignedIn,
        ServerFailures,
    )
)]
pub(crate) async fn list_collections(
    mut account: Account,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<Collection>>, ApiError> {
    let limit = pagination::limit(query.limit)?;
    let after = pagination::decode_time_key(query.cursor.as_deref())?;
    let (tx, user) = account.begin_as_user().await?;
    let rows =
        repo::list_collections(&tx, repo::Scope::Own(&user.id), after.as_ref(), limit).await?;
    tx.commit().await?;
    Ok(Json(pagination::page(rows, limit, |c| TimeKey {
        at: c.created_at,
        id: c.id.clone(),
    })))
}

/// A person's public collections.
///
/// The public collections of the user with this username, newest first, paginated. Visible as
/// the person's profile is (`GET /api/v1/users/{username}`): a public profile to anyone, any
/// profile to its owner; anything else (unknown, suspended, a private or `friends` profile) is
/// the same 404.
#[utoipa::path(
    get,
    path = "/api/v1/users/{username}/collections",
    tag = "collections",
    security((), ("bearer" = [])),
    params(("username" = String, Path, description = "The person's username."), PageQuery),
    responses(
        (status = 200, description = "A page of the person's public collections, newest first.", body = Page<Collection>),
        (status = 404, description = "No such user, or their profile is not visible to the caller.", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = ValidationFailed),
        Authenticated,
        ServerFailures,
    )
)]
pub(crate) async fn list_person_collections(
    State(state): State<AppState>,
    OptionalCaller(identity): OptionalCaller,
    ApiPath(username): ApiPath<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<Collection>>, ApiError> {
    public_page(&state, identity.as_ref(), Some(&username), query).await
}

/// The gallery of collections.
///
/// Public collections of active people who showcase their work (`allow_gallery_showcase`, as
/// for the character gallery), newest first, paginated. No token needed.
#[utoipa::path(
    get,
    path = "/api/v1/gallery/collections",
    tag = "collections",
    security((), ("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "A page of public collections, newest first.", body = Page<Collection>),
        (status = 422, response = ValidationFailed),
        Authenticated,
        ServerFailures,
    )
)]
pub(crate) async fn list_collection_gallery(
    State(state): State<AppState>,
    OptionalCaller(identity): OptionalCaller,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<Collection>>, ApiError> {
    public_page(&state, identity.as_ref(), None, query).await
}

/// A page of public collections as the caller may list them: one person's (`username`,
/// visible as their profile is) or the gallery's.
async fn public_page(
    state: &AppState,
    identity: Option<&crate::web::auth::Identity>,
    username: Option<&str>,
    query: PageQuery,
) -> Result<Json<Page<Collection>>, ApiError> {
    let limit = pagination::limit(query.limit)?;
    let after = pagination::decode_time_key(query.cursor.as_deref())?;
    let mut client = state.db.get().await?;
    let viewer = crate::users::repo::optional_user(&**client, identity).await?;
    let viewer_id = viewer.as_ref().map(|v| v.id.as_str());
    let person = match username {
        Some(username) => {
            Some(crate::users::repo::visible_person(&**client, viewer_id, username).await?)
        }
        None => None,
    };
    let scope = match &person {
        Some(person) => repo::Scope::PublicOf(&person.id),
        None => repo::Scope::Gallery,
    };
    let tx = begin_as(&mut client, viewer_id).await?;
    let rows = repo::list_collections(&tx, scope, after.as_ref(), limit).await?;
    tx.commit().await?;
    Ok(Json(pagination::page(rows, limit, |c| TimeKey {
        at: c.created_at,
        id: c.id.clone(),
    })))
}

/// A collection.
///
/// Visible to its owner and, when public, to anyone; anything else is the same 404 as an
/// unknown id.
#[utoipa::path(
    get,
    path = "/api/v1/collections/{id}",
    tag = "collections",
    security((), ("bearer" = [])),
    params(("id" = String, Path, description = "The collection's id.")),
    responses(
        (status = 200, description = "The collection.", body = Collection),
        (status = 404, description = "No such collection, or not visible to the caller.", body = Problem, content_type = "application/problem+json"),
        Authenticated,
        ServerFailures,
    )
)]
pub(crate) async fn get_collection(
    State(state): State<AppState>,
    OptionalCaller(identity): OptionalCaller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Collection>, ApiError> {
    let mut client = state.db.get().await?;
    let viewer = crate::users::repo::optional_user(&**client, identity.as_ref()).await?;
    let viewer_id = viewer.as_ref().map(|u| u.id.as_str());
    let tx = begin_as(&mut client, viewer_id).await?;
    let collection = visible_collection(&tx, &id, viewer_id).await?;
    tx.commit().await?;
    Ok(Json(collection))
}

/// Change one of the caller's collections.
#[utoipa::path(
    patch,
    path = "/api/v1/collections/{id}",
    tag = "collections",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The collection's id.")),
    request_body = CollectionPatch,
    responses(
        (status = 200, description = "The collection as changed.", body = Collection),
        (status = 401, response = Unauthorized),
        (status = 403, description = "Someone else's public collection, a suspended account publishing, or a banned or erased account.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such collection, or not visible to the caller; or no account yet.", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = ValidationFailed),
        BodyRefused,
        ServerFailures,
    )
)]
pub(crate) async fn patch_collection(
    mut account: Account,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<Json<Collection>, ApiError> {
    let fields = input::collection_patch(body)?;
    if fields.is_public == Some(true) {
        account.user.require_active("publish collections")?;
    }
    let (tx, user) = account.begin_as_user().await?;
    let current = owned_collection(&tx, &id, &user.id).await?;
    // `{}` changes nothing, not even updated_at.
    let collection = if fields.is_empty() {
        current
    } else {
        repo::update_collection(&tx, &id, &user.id, &fields)
            .await?
            .ok_or_else(no_such_collection)?
    };
    tx.commit().await?;
    Ok(Json(collection))
}

/// Delete one of the caller's collections.
///
/// Its characters stay; they are only no longer filed in it.
#[utoipa::path(
    delete,
    path = "/api/v1/collections/{id}",
    tag = "collections",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The collection's id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 401, response = Unauthorized),
        (status = 403, description = "Someone else's public collection, or a banned or erased account.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such collection, or not visible to the caller; or no account yet.", body = Problem, content_type = "application/problem+json"),
        ServerFailures,
    )
)]
pub(crate) async fn delete_collection(
    mut account: Account,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let (tx, user) = account.begin_as_user().await?;
    owned_collection(&tx, &id, &user.id).await?;
    if !repo::delete_collection(&tx, &id, &user.id).await? {
        return Err(no_such_collection());
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The members of a collection.
///
/// In the collection's order: by `display_order` (unordered members last), then by when they
/// were added; paginated. Only members whose characters the caller may see (their own or
/// public ones) are listed.
#[utoipa::path(
    get,
    path = "/api/v1/collections/{id}/characters",
    tag = "collections",
    security((), ("bearer" = [])),
    params(("id" = String, Path, description = "The collection's id."), PageQuery),
    responses(
        (status = 200, description = "A page of members.", body = Page<CollectionMember>),
        (status = 404, description = "No such collection, or not visible to the caller.", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = ValidationFailed),
        Authenticated,
        ServerFailures,
    )
)]
pub(crate) async fn list_members(
    State(state): State<AppState>,
    OptionalCaller(identity): OptionalCaller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<CollectionMember>>, ApiError> {
    let limit = pagination::limit(query.limit)?;
    let after = pagination::decode::<MemberKey>(query.cursor.as_deref())?;
    let mut client = state.db.get().await?;
    let viewer = crate::users::repo::optional_user(&**client, identity.as_ref()).await?;
    let viewer_id = viewer.as_ref().map(|u| u.id.as_str());
    let tx = begin_as(&mut client, viewer_id).await?;
    visible_collection(&tx, &id, viewer_id).await?;
    let rows = repo::list_members(&tx, &id, viewer_id, after.as_ref(), limit).await?;
    tx.commit().await?;
    let mut page = pagination::page(rows, limit, MemberKey::of);
    for member in &mut page.items {
        member.character.present(state.storage.as_deref()).await;
    }
    Ok(Json(page))
}

/// File a character in one of the caller's collections, or move it.
///
/// Adds the character (201) or, when it is a member already, changes its `display_order`
/// (200). The body is optional. Only characters the caller may see (their own or public
/// ones) can be filed.
#[utoipa::path(
    put,
    path = "/api/v1/collections/{id}/characters/{character_id}",
    tag = "collections",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The collection's id."), ("character_id" = String, Path, description = "The character's id.")),
    request_body(content = Option<MemberPatch>, description = "Optional: an empty body adds the character unordered, or leaves a member as it is."),
    responses(
        (status = 200, description = "The member, changed.", body = CollectionMember),
        (status = 201, description = "The character was added.", body = CollectionMember),
        (status = 401, response = Unauthorized),
        (status = 403, description = "Someone else's public collection, or a banned or erased account.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such collection or character, or one not visible to the caller; or no account yet.", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = ValidationFailed),
        BodyRefused,
        ServerFailures,
    )
)]
pub(crate) async fn put_member(
    State(state): State<AppState>,
    mut account: Account,
    ApiPath((id, character_id)): ApiPath<(String, String)>,
    OptionalApiJson(body): OptionalApiJson<Map<String, Value>>,
) -> Result<impl IntoResponse, ApiError> {
    let fields = input::member(body)?;
    let (tx, user) = account.begin_as_user().await?;
    owned_collection(&tx, &id, &user.id).await?;
    // Only characters the owner may see can be filed: their own or public ones.
    if !input::plausible_id(&character_id) {
        return Err(no_such_character());
    }
    let character = repo::character_access(&tx, &character_id)
        .await?
        .ok_or_else(no_such_character)?;
    if character.user_id != user.id && !character.is_public {
        return Err(no_such_character());
    }
    let outcome = repo::put_member(&tx, &id, &character_id, &fields).await?;
    let mut member = repo::find_member(&tx, &id, &character_id)
        .await?
        .ok_or_else(no_such_character)?;
    tx.commit().await?;
    // Links, never bucket keys, as the member list answers the card.
    member.character.present(state.storage.as_deref()).await;
    let status = match outcome {
        PutOutcome::Added => StatusCode::CREATED,
        PutOutcome::Updated => StatusCode::OK,
    };
    Ok((status, Json(member)))
}

/// Take a character out of one of the caller's collections.
#[utoipa::path(
    delete,
    path = "/api/v1/collections/{id}/characters/{character_id}",
    tag = "collections",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The collection's id."), ("character_id" = String, Path, description = "The character's id.")),
    responses(
        (status = 204, description = "Removed."),
        (status = 401, response = Unauthorized),
        (status = 403, description = "Someone else's public collection, or a banned or erased account.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such collection (or not visible to the caller), the character is not a member, or no account yet.", body = Problem, content_type = "application/problem+json"),
        ServerFailures,
    )
)]
pub(crate) async fn remove_member(
    mut account: Account,
    ApiPath((id, character_id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (tx, user) = account.begin_as_user().await?;
    owned_collection(&tx, &id, &user.id).await?;
    // Removal does not look at the character: the owner can take out a member
    // whose character has since become private to someone else.
    if !input::plausible_id(&character_id) || !repo::remove_member(&tx, &id, &character_id).await? {
        return Err(ApiError::NotFound(
            "the character is not in this collection".into(),
        ));
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An optional JSON body: an empty one is `None`; anything else is read as
/// [`ApiJson`] reads it (415 without a JSON content type, 400 when malformed,
/// 422 when of the wrong shape, 413 when too large).
pub struct OptionalApiJson<T>(pub Option<T>);

impl<T, S> FromRequest<S> for OptionalApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge
                } else {
                    ApiError::BadRequest(rejection.body_text())
                }
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        let ApiJson(value) =
            ApiJson::<T>::from_request(Request::from_parts(parts, Body::from(bytes)), state)
                .await?;
        Ok(Self(Some(value)))
    }
}
