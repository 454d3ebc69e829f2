//! Routes of the `auth` function.
//!
//! | route | what |
//! |---|---|
//! | `POST /api/v1/auth/session` | sign in: create the account on first use (201), else 200 |
//! | `GET/PATCH /api/v1/me` | the caller's account |
//! | `GET/PUT /api/v1/me/profile` | the caller's extended profile |
//! | `GET /api/v1/users/{username}` | a public profile, as its visibility allows |

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::fields;
use super::repo::{self, AccountChanges, ProfileFields};
use super::{Profile, PublicUser, User};
use crate::app::AppState;
use crate::auth::{Caller, OptionalCaller};
use crate::error::ApiError;
use crate::http::{ApiJson, RequestMeta};
use crate::input::{check, decode_strict, finish, present, required_if_present};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/auth/session", post(create_session))
        .route("/api/v1/me", get(get_me).patch(patch_me))
        .route("/api/v1/me/profile", get(get_profile).put(put_profile))
        .route("/api/v1/users/{username}", get(get_public_user))
}

async fn create_session(
    State(state): State<AppState>,
    Caller(identity): Caller,
    meta: RequestMeta,
) -> Result<impl IntoResponse, ApiError> {
    let mut client = state.db.get().await?;
    let signed_in = repo::sign_in(&mut client, &identity, &meta).await?;
    let status = if signed_in.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(signed_in.user)))
}

async fn get_me(
    State(state): State<AppState>,
    Caller(identity): Caller,
) -> Result<Json<User>, ApiError> {
    let client = state.db.get().await?;
    Ok(Json(repo::current_user(&**client, &identity).await?))
}

/// Columns a user can see but never set through this API. Sending one is a 422
/// naming it, rather than a silent no-op the client might mistake for success.
const READ_ONLY_ACCOUNT_FIELDS: [&str; 16] = [
    "id",
    "email",
    "auth0_id",
    "subscription_tier",
    "subscription_start_date",
    "subscription_end_date",
    "daily_quota",
    "daily_used",
    "last_reset_date",
    "total_characters_created",
    "total_images_generated",
    "account_status",
    "created_at",
    "updated_at",
    "last_login_at",
    "email_verified_at",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MePatch {
    #[serde(default, deserialize_with = "present")]
    username: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    display_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    avatar_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    preferred_language: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    timezone: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    notification_settings: Option<Option<Value>>,
    #[serde(default, deserialize_with = "present")]
    profile_visibility: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    allow_gallery_showcase: Option<Option<bool>>,
    #[serde(default, deserialize_with = "present")]
    content_filter_level: Option<Option<String>>,
}

impl MePatch {
    fn validate(self) -> Result<AccountChanges, ApiError> {
        let mut errors = Vec::new();
        let mut changes = AccountChanges::default();
        if let Some(raw) = required_if_present("username", self.username, &mut errors) {
            changes.username = check(&mut errors, fields::username("username", &raw));
        }
        if let Some(raw) = self.display_name {
            changes.display_name = match raw {
                None => Some(None),
                Some(raw) => check(&mut errors, fields::text("display_name", &raw, 50, false)),
            };
        }
        if let Some(raw) = self.avatar_url {
            changes.avatar_url = match raw {
                None => Some(None),
                Some(raw) => check(&mut errors, fields::http_url("avatar_url", &raw)).map(Some),
            };
        }
        if let Some(raw) =
            required_if_present("preferred_language", self.preferred_language, &mut errors)
        {
            changes.preferred_language = check(
                &mut errors,
                fields::one_of("preferred_language", &raw, &fields::LANGUAGES),
            );
        }
        if let Some(raw) = required_if_present("timezone", self.timezone, &mut errors) {
            changes.timezone = check(&mut errors, fields::timezone("timezone", &raw));
        }
        if let Some(raw) = required_if_present(
            "notification_settings",
            self.notification_settings,
            &mut errors,
        ) {
            changes.notification_settings = check(
                &mut errors,
                fields::notification_settings("notification_settings", &raw),
            );
        }
        if let Some(raw) =
            required_if_present("profile_visibility", self.profile_visibility, &mut errors)
        {
            changes.profile_visibility = check(
                &mut errors,
                fields::one_of("profile_visibility", &raw, &fields::PROFILE_VISIBILITIES),
            );
        }
        changes.allow_gallery_showcase = required_if_present(
            "allow_gallery_showcase",
            self.allow_gallery_showcase,
            &mut errors,
        );
        if let Some(raw) = required_if_present(
            "content_filter_level",
            self.content_filter_level,
            &mut errors,
        ) {
            changes.content_filter_level = check(
                &mut errors,
                fields::one_of("content_filter_level", &raw, &fields::CONTENT_FILTER_LEVELS),
            );
        }
        finish(changes, errors)
    }
}

async fn patch_me(
    State(state): State<AppState>,
    Caller(identity): Caller,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<Json<User>, ApiError> {
    let changes = decode_strict::<MePatch>(body, &READ_ONLY_ACCOUNT_FIELDS)?.validate()?;
    let client = state.db.get().await?;
    let user = repo::current_user(&**client, &identity).await?;
    Ok(Json(
        repo::update_account(&**client, &user.id, &changes).await?,
    ))
}

async fn get_profile(
    State(state): State<AppState>,
    Caller(identity): Caller,
) -> Result<Json<Profile>, ApiError> {
    let client = state.db.get().await?;
    let user = repo::current_user(&**client, &identity).await?;
    let profile = repo::profile(&**client, &user.id).await?;
    match profile {
        Some(profile) => Ok(Json(profile)),
        // Sign-in creates the row; a missing one is created empty on first read.
        None => Ok(Json(
            repo::replace_profile(&**client, &user.id, &ProfileFields::default()).await?,
        )),
    }
}

const READ_ONLY_PROFILE_FIELDS: [&str; 8] = [
    "id",
    "user_id",
    "badges",
    "total_likes_received",
    "total_downloads",
    "featured_character_count",
    "created_at",
    "updated_at",
];

/// The whole editable profile; an absent field is cleared.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ProfilePut {
    first_name: Option<String>,
    last_name: Option<String>,
    bio: Option<String>,
    website_url: Option<String>,
    social_links: Option<Value>,
    profession: Option<String>,
    company: Option<String>,
    industry: Option<String>,
    experience_level: Option<String>,
    primary_use_case: Option<Vec<String>>,
    favorite_art_styles: Option<Vec<String>>,
}

impl ProfilePut {
    fn validate(self) -> Result<ProfileFields, ApiError> {
        let mut errors = Vec::new();
        let mut text = |field: &str, value: Option<String>, max: usize, multiline: bool| {
            value
                .and_then(|v| check(&mut errors, fields::text(field, &v, max, multiline)).flatten())
        };
        let mut out = ProfileFields {
            first_name: text("first_name", self.first_name, 100, false),
            last_name: text("last_name", self.last_name, 100, false),
            bio: text("bio", self.bio, 2000, true),
            profession: text("profession", self.profession, 100, false),
            company: text("company", self.company, 100, false),
            industry: text("industry", self.industry, 100, false),
            ..ProfileFields::default()
        };
        out.website_url = self
            .website_url
            .and_then(|v| check(&mut errors, fields::http_url("website_url", &v)));
        out.social_links = self
            .social_links
            .and_then(|v| check(&mut errors, fields::social_links("social_links", &v)))
            .unwrap_or_default();
        out.experience_level = self.experience_level.and_then(|v| {
            check(
                &mut errors,
                fields::one_of("experience_level", &v, &fields::EXPERIENCE_LEVELS),
            )
        });
        out.primary_use_case = self.primary_use_case.and_then(|v| {
            check(
                &mut errors,
                fields::tag_list("primary_use_case", &v, 10, fields::slug),
            )
        });
        out.favorite_art_styles = self.favorite_art_styles.and_then(|v| {
            check(
                &mut errors,
                fields::tag_list("favorite_art_styles", &v, 10, |f, s| {
                    fields::one_of(f, s, &fields::STYLE_TYPES)
                }),
            )
        });
        finish(out, errors)
    }
}

async fn put_profile(
    State(state): State<AppState>,
    Caller(identity): Caller,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<Json<Profile>, ApiError> {
    let fields = decode_strict::<ProfilePut>(body, &READ_ONLY_PROFILE_FIELDS)?.validate()?;
    let client = state.db.get().await?;
    let user = repo::current_user(&**client, &identity).await?;
    Ok(Json(
        repo::replace_profile(&**client, &user.id, &fields).await?,
    ))
}

/// Public profiles: `public` ones to anyone; `private` and `friends` ones only
/// to their owner (the platform has no friendships yet, so `friends` is as
/// private). Anything not visible is a 404, indistinguishable from no user.
async fn get_public_user(
    State(state): State<AppState>,
    OptionalCaller(identity): OptionalCaller,
    Path(username): Path<String>,
) -> Result<Json<PublicUser>, ApiError> {
    let not_found = || ApiError::NotFound("no such user".into());
    if fields::username("username", &username).is_err() {
        return Err(not_found());
    }
    let client = state.db.get().await?;
    let user = repo::active_user_by_username(&**client, &username)
        .await?
        .ok_or_else(not_found)?;
    let is_owner = identity
        .as_ref()
        .is_some_and(|i| user.auth0_id.as_deref() == Some(i.subject.as_str()));
    if user.profile_visibility.as_deref() != Some("public") && !is_owner {
        return Err(not_found());
    }
    let profile = repo::profile(&**client, &user.id).await?;
    Ok(Json(PublicUser::new(user, profile)))
}
