//! Follows (V21): a person follows another; two who follow each other are
//! friends, which is who sees a `friends` profile and the work listed under it.
//!
//! | route | what |
//! |---|---|
//! | `PUT /api/v1/users/{username}/follow` | follow (idempotent) |
//! | `DELETE /api/v1/users/{username}/follow` | unfollow (idempotent) |
//! | `GET /api/v1/me/following`, `GET /api/v1/me/followers` | the caller's, newest first |
//!
//! Follows are written and read as `app_api` under the table's row-level
//! security: a caller only ever adds or removes their own follows and sees the
//! follows they are part of.

use axum::Json;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;
use utoipa::ToSchema;

use super::account::Account;
use super::repo;
use crate::kernel::error::{ApiError, Problem};
use crate::web::http::{ApiPath, ApiQuery};
use crate::web::pagination::{self, Page, PageQuery, TimeKey};
use crate::web::responses::{ServerFailures, SignedIn, ValidationFailed};

/// Whether `a` and `b` follow each other (`false` when either is unknown).
pub async fn are_friends(
    client: &impl GenericClient,
    a: &str,
    b: Option<&str>,
) -> Result<bool, ApiError> {
    let Some(b) = b else {
        return Ok(false);
    };
    let row = client
        .query_one("SELECT are_friends($1, $2)", &[&a, &b])
        .await?;
    Ok(row.try_get::<_, Option<bool>>(0)?.unwrap_or(false))
}

/// One follow, as either side lists it: the other person and when.
#[derive(Debug, Serialize, ToSchema)]
pub struct Follow {
    /// The other person's username (`null` if they have none yet).
    pub username: Option<String>,
    pub display_name: Option<String>,
    /// Whether the two follow each other.
    pub friends: bool,
    pub since: DateTime<Utc>,
    #[serde(skip)]
    pub id: String,
}

/// Follow someone.
///
/// The caller follows the person with this username: anyone active, whatever their profile's
/// visibility (following shows nothing by itself: a `friends` profile opens to friends, people
/// who follow each other; a `private` one to no one). Following again changes nothing. A
/// suspended account may not follow (403); oneself is a 422.
#[utoipa::path(
    put,
    path = "/api/v1/users/{username}/follow",
    tag = "auth",
    security(("bearer" = [])),
    params(("username" = String, Path, description = "The person to follow.")),
    responses(
        (status = 204, description = "The caller follows them (now or already)."),
        (status = 403, description = "A suspended account cannot follow; or a banned or erased one.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such person; or no account yet.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The caller cannot follow themselves.", body = Problem, content_type = "application/problem+json"),
        SignedIn,
        ServerFailures,
    )
)]
pub(crate) async fn follow(
    mut account: Account,
    ApiPath(username): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    account.user.require_active("follow people")?;
    let person = followable(account.client(), &username).await?;
    if person.id == account.user.id {
        return Err(ApiError::validation(
            "username",
            "is the caller: no one follows themselves",
        ));
    }
    let (tx, user) = account.begin_as_user().await?;
    tx.execute(
        "INSERT INTO follows (follower_id, followed_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&user.id, &person.id],
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Unfollow someone.
///
/// Not following them (any more) is the same 204.
#[utoipa::path(
    delete,
    path = "/api/v1/users/{username}/follow",
    tag = "auth",
    security(("bearer" = [])),
    params(("username" = String, Path, description = "The person to unfollow.")),
    responses(
        (status = 204, description = "The caller does not follow them."),
        (status = 404, description = "No such person; or no account yet.", body = Problem, content_type = "application/problem+json"),
        SignedIn,
        ServerFailures,
    )
)]
pub(crate) async fn unfollow(
    mut account: Account,
    ApiPath(username): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let person = followable(account.client(), &username).await?;
    let (tx, user) = account.begin_as_user().await?;
    tx.execute(
        "DELETE FROM follows WHERE follower_id = $1 AND followed_id = $2",
        &[&user.id, &person.id],
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An active person, by username.
async fn followable(client: &impl GenericClient, username: &str) -> Result<super::User, ApiError> {
    let not_found = || ApiError::NotFound("no such user".into());
    if super::fields::username("username", username).is_err() {
        return Err(not_found());
    }
    repo::active_user_by_username(client, username)
        .await?
        .ok_or_else(not_found)
}

/// Which side of the caller's follows to list.
#[derive(Clone, Copy)]
enum Side {
    Following,
    Followers,
}

/// The people the caller follows.
#[utoipa::path(
    get,
    path = "/api/v1/me/following",
    tag = "auth",
    security(("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "The people the caller follows, newest follow first.", body = Page<Follow>),
        (status = 422, response = ValidationFailed),
        SignedIn,
        ServerFailures,
    )
)]
pub(crate) async fn following(
    account: Account,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<Follow>>, ApiError> {
    list(account, query, Side::Following).await
}

/// The people who follow the caller.
#[utoipa::path(
    get,
    path = "/api/v1/me/followers",
    tag = "auth",
    security(("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "The people who follow the caller, newest follow first.", body = Page<Follow>),
        (status = 422, response = ValidationFailed),
        SignedIn,
        ServerFailures,
    )
)]
pub(crate) async fn followers(
    account: Account,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<Follow>>, ApiError> {
    list(account, query, Side::Followers).await
}

async fn list(
    mut account: Account,
    query: PageQuery,
    side: Side,
) -> Result<Json<Page<Follow>>, ApiError> {
    let limit = pagination::limit(query.limit)?;
    let after = pagination::decode_time_key(query.cursor.as_deref())?;
    let (mine, theirs) = match side {
        Side::Following => ("follower_id", "followed_id"),
        Side::Followers => ("followed_id", "follower_id"),
    };
    let (tx, user) = account.begin_as_user().await?;
    let (after_at, after_id) = after
        .map(|k| (Some(k.at), Some(k.id)))
        .unwrap_or((None, None));
    // Erased and banned people drop out of the lists; suspended ones stay.
    let rows = tx
        .query(
            &format!(
                "SELECT u.id, u.username, u.display_name, f.created_at, \
                        are_friends(f.follower_id, f.followed_id) AS friends \
                 FROM follows f JOIN users u ON u.id = f.{theirs} \
                 WHERE f.{mine} = $1 AND u.account_status IN ('active', 'suspended') \
                   AND ($2::timestamptz IS NULL OR (f.created_at, u.id) < ($2, $3::text)) \
                 ORDER BY f.created_at DESC, u.id DESC LIMIT $4"
            ),
            &[&user.id, &after_at, &after_id, &(limit + 1)],
        )
        .await?;
    tx.commit().await?;
    let items = rows
        .iter()
        .map(|row| {
            Ok(Follow {
                id: row.try_get("id")?,
                username: row.try_get("username")?,
                display_name: row.try_get("display_name")?,
                friends: row.try_get::<_, Option<bool>>("friends")?.unwrap_or(false),
                since: row.try_get("created_at")?,
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    Ok(Json(pagination::page(items, limit, |f| TimeKey {
        at: f.since,
        id: f.id.clone(),
    })))
}
