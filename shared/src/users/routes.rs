//! Routes of the `auth` function.
//!
//! | route | what |
//! |---|---|
//! | `POST /api/v1/auth/session` | sign in: create the account on first use (201), else 200 |
//! | `GET/PATCH /api/v1/me` | the caller's account |
//! | `GET/PUT /api/v1/me/profile` | the caller's extended profile |
//! | `GET /api/v1/users/{username}` | a public profile, as its visibility allows |

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa::openapi::{Object, ObjectBuilder};

use super::fields;
use super::repo::{self, AccountChanges, ProfileFields};
use super::{Profile, PublicUser, User};
use crate::kernel::error::{ApiError, FieldError, Problem};
use crate::ports::db::begin_as;
use crate::users::account::Account;
use crate::web::auth::{Caller, OptionalCaller};
use crate::web::http::{ApiJson, ApiPath, RawBody, RequestMeta};
use crate::web::input::checks::{self, check};
use crate::web::input::{RequestBody, decode, present, required_if_present};
use crate::web::responses::{self, ValidationFailed};
use crate::web::responses::{Authenticated, BodyRefused, ServerFailures, SignedIn};
use crate::web::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/auth/session", post(create_session))
        .route("/api/v1/me", get(get_me).patch(patch_me))
        .route("/api/v1/me/profile", get(get_profile).put(put_profile))
        .route("/api/v1/users/{username}", get(get_public_user))
        .route(
            "/api/v1/users/{username}/follow",
            axum::routing::put(super::follows::follow).delete(super::follows::unfollow),
        )
        .route("/api/v1/me/following", get(super::follows::following))
        .route("/api/v1/me/followers", get(super::follows::followers))
}

/// Sign in.
///
/// The first sign-in of an identity creates its account, with its profile and credits
/// (201); later ones stamp `last_login_at` (200). Every sign-in is logged. Concurrent first
/// sign-ins of one identity create one account. The body is optional: `{"referral_code":
/// "..."}` on the first sign-in links the new account to the code's owner (once; later
/// sign-ins ignore a code), and an unknown code is a 422 that creates nothing.
#[utoipa::path(
    post,
    path = "/api/v1/auth/session",
    tag = "auth",
    security(("bearer" = [])),
    request_body(content = SessionRequest, description = "Optional."),
    responses(
        (status = 200, description = "Signed in to an existing account.", body = User),
        (status = 201, description = "First sign-in: the account was created.", body = User),
        (status = 409, description = "The token's email belongs to an account bound to another identity.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "First sign-in with a token that carries no valid email claim (`errors[].field` is `token.email`), or with a `referral_code` no active account has.", body = Problem, content_type = "application/problem+json"),
        BodyRefused,
        Authenticated,
        ServerFailures,
    )
)]
pub(crate) async fn create_session(
    State(state): State<AppState>,
    Caller(identity): Caller,
    meta: RequestMeta,
    headers: axum::http::HeaderMap,
    RawBody(body): RawBody,
) -> Result<impl IntoResponse, ApiError> {
    let request = match crate::web::input::optional_body(&headers, &body)? {
        Some(map) => decode::<SessionRequest>(map)?,
        None => SessionRequest::default(),
    };
    let mut client = state.db.get().await?;
    let code = request.referral_code.as_deref();
    let signed_in = repo::sign_in(&mut client, &identity, code, &meta).await?;
    let status = if signed_in.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(signed_in.user)))
}

/// The optional body of a sign-in.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SessionRequest {
    /// Someone's referral code (`GET /api/v1/credits/referrals`; any case), read on the first
    /// sign-in only. One that is not a code at all is a 422 on any sign-in.
    #[schema(pattern = "^[A-HJKMNP-Za-hjkmnp-z2-9]{8}$")]
    #[serde(default)]
    referral_code: Option<String>,
}

impl RequestBody for SessionRequest {
    type Valid = Self;

    fn validate(self, errors: &mut Vec<FieldError>) -> Self {
        if let Some(code) = &self.referral_code
            && !super::referrals::plausible(&code.to_ascii_uppercase())
        {
            errors.push(FieldError::new(
                "referral_code",
                "is not a referral code: eight letters and digits (no 0, 1, I, L or O)",
            ));
        }
        self
    }
}

/// The caller's account.
#[utoipa::path(
    get,
    path = "/api/v1/me",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's `users` row.", body = User),
        (status = 404, description = "No account yet: sign in with `POST /api/v1/auth/session` first.", body = Problem, content_type = "application/problem+json"),
        Authenticated,
        ServerFailures,
    )
)]
pub(crate) async fn get_me(account: Account) -> Result<Json<User>, ApiError> {
    Ok(Json(account.user))
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

/// Changes to the caller's account: only the fields sent change. Read-only columns
/// (`id`, `email`, `auth0_id`, `subscription_*`, `daily_*`, `last_reset_date`, `total_*`,
/// `account_status`, timestamps) and unknown fields are refused with a 422 naming them, and
/// then nothing changes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MePatch {
    /// Unique regardless of case (409 when taken).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, min_length = 3, max_length = 30, pattern = "^[a-zA-Z0-9_]{3,30}$")]
    username: Option<Option<String>>,
    /// At most 50 characters, no control characters; `null` or blank clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 50)]
    display_name: Option<Option<String>>,
    /// An absolute http(s) URL of at most 2048 characters; `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = "uri", max_length = 2048)]
    avatar_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = preferred_language_schema)]
    preferred_language: Option<Option<String>>,
    /// An IANA time zone name such as `Europe/Paris`. Daily counters (free generations,
    /// allowance, daily bonus, gift cap, daily limits) follow it from the next daily window:
    /// the open one still ends at `daily_resets_at` of `GET /api/v1/credits`.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, example = "Asia/Tokyo")]
    timezone: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = notification_settings_schema)]
    notification_settings: Option<Option<Value>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = profile_visibility_schema)]
    profile_visibility: Option<Option<String>>,
    /// Whether the caller's public characters may appear in the gallery.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = bool)]
    allow_gallery_showcase: Option<Option<bool>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = content_filter_level_schema)]
    content_filter_level: Option<Option<String>>,
}

fn preferred_language_schema() -> Object {
    responses::string_enum(&fields::LANGUAGES, false, "The interface language.")
}

fn profile_visibility_schema() -> Object {
    responses::string_enum(
        &fields::PROFILE_VISIBILITIES,
        false,
        "Who may see the public profile and the work listed under it: anyone (`public`), the \
         owner's friends, people they follow who follow them back (`friends`), or the owner \
         alone (`private`).",
    )
}

fn content_filter_level_schema() -> Object {
    responses::string_enum(
        &fields::CONTENT_FILTER_LEVELS,
        false,
        "How strictly the text of the caller's characters is filtered.",
    )
}

fn notification_settings_schema() -> Object {
    let mut builder = ObjectBuilder::new()
        .description(Some(
            "Booleans per notification channel, merged into the stored settings.",
        ))
        .additional_properties(Some(
            utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
        ));
    for channel in fields::NOTIFICATION_CHANNELS {
        builder = builder.property(
            channel,
            ObjectBuilder::new().schema_type(utoipa::openapi::Type::Boolean),
        );
    }
    builder.build()
}

impl RequestBody for MePatch {
    type Valid = AccountChanges;

    fn read_only(field: &str) -> bool {
        READ_ONLY_ACCOUNT_FIELDS.contains(&field)
    }

    fn validate(self, errors: &mut Vec<FieldError>) -> AccountChanges {
        let mut changes = AccountChanges::default();
        if let Some(raw) = required_if_present("username", self.username, errors) {
            changes.username = check(errors, fields::username("username", &raw));
        }
        if let Some(raw) = self.display_name {
            changes.display_name = match raw {
                None => Some(None),
                Some(raw) => check(errors, checks::text("display_name", &raw, 50, false)),
            };
        }
        if let Some(raw) = self.avatar_url {
            changes.avatar_url = match raw {
                None => Some(None),
                Some(raw) => check(errors, checks::http_url("avatar_url", &raw)).map(Some),
            };
        }
        if let Some(raw) =
            required_if_present("preferred_language", self.preferred_language, errors)
        {
            changes.preferred_language = check(
                errors,
                checks::one_of("preferred_language", &raw, &fields::LANGUAGES),
            );
        }
        if let Some(raw) = required_if_present("timezone", self.timezone, errors) {
            changes.timezone = check(errors, fields::timezone("timezone", &raw));
        }
        if let Some(raw) =
            required_if_present("notification_settings", self.notification_settings, errors)
        {
            changes.notification_settings = check(
                errors,
                fields::notification_settings("notification_settings", &raw),
            );
        }
        if let Some(raw) =
            required_if_present("profile_visibility", self.profile_visibility, errors)
        {
            changes.profile_visibility = check(
                errors,
                checks::one_of("profile_visibility", &raw, &fields::PROFILE_VISIBILITIES),
            );
        }
        changes.allow_gallery_showcase = required_if_present(
            "allow_gallery_showcase",
            self.allow_gallery_showcase,
            errors,
        );
        if let Some(raw) =
            required_if_present("content_filter_level", self.content_filter_level, errors)
        {
            changes.content_filter_level = check(
                errors,
                checks::one_of("content_filter_level", &raw, &fields::CONTENT_FILTER_LEVELS),
            );
        }
        changes
    }
}

/// Change the caller's account.
#[utoipa::path(
    patch,
    path = "/api/v1/me",
    tag = "auth",
    security(("bearer" = [])),
    request_body = MePatch,
    responses(
        (status = 200, description = "The changed account.", body = User),
        (status = 409, description = "The username is taken (regardless of case).", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = ValidationFailed),
        SignedIn,
        BodyRefused,
        ServerFailures,
    )
)]
pub(crate) async fn patch_me(
    account: Account,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<Json<User>, ApiError> {
    let changes = decode::<MePatch>(body)?;
    Ok(Json(
        repo::update_account(account.client(), &account.user.id, &changes).await?,
    ))
}

/// The caller's extended profile.
#[utoipa::path(
    get,
    path = "/api/v1/me/profile",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's `user_profiles` row.", body = Profile),
        SignedIn,
        ServerFailures,
    )
)]
pub(crate) async fn get_profile(mut account: Account) -> Result<Json<Profile>, ApiError> {
    // As app_api: user_profiles' row-level security (V18) is the second wall.
    let (tx, user) = account.begin_as_user().await?;
    let profile = match repo::profile(&tx, &user.id).await? {
        Some(profile) => profile,
        // Sign-in creates the row; a missing one is created empty on first read.
        None => repo::replace_profile(&tx, &user.id, &ProfileFields::default()).await?,
    };
    tx.commit().await?;
    Ok(Json(profile))
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

/// The whole editable profile; an absent (or `null`) field is cleared. Text is trimmed and
/// may not contain control characters. Read-only columns (`id`, `user_id`, `badges`,
/// `total_likes_received`, `total_downloads`, `featured_character_count`, timestamps) and
/// unknown fields are refused with a 422 naming them.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
struct ProfilePut {
    #[schema(max_length = 100)]
    first_name: Option<String>,
    #[schema(max_length = 100)]
    last_name: Option<String>,
    /// Multi-line.
    #[schema(max_length = 2000)]
    bio: Option<String>,
    /// An absolute http(s) URL of at most 2048 characters.
    #[schema(format = "uri", max_length = 2048)]
    website_url: Option<String>,
    #[schema(schema_with = social_links_schema)]
    social_links: Option<Value>,
    #[schema(max_length = 100)]
    profession: Option<String>,
    #[schema(max_length = 100)]
    company: Option<String>,
    #[schema(max_length = 100)]
    industry: Option<String>,
    #[schema(schema_with = experience_level_schema)]
    experience_level: Option<String>,
    #[schema(schema_with = primary_use_case_schema)]
    primary_use_case: Option<Vec<String>>,
    #[schema(schema_with = favorite_art_styles_schema)]
    favorite_art_styles: Option<Vec<String>>,
}

fn social_links_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            utoipa::openapi::Type::Object,
            utoipa::openapi::Type::Null,
        ]))
        .description(Some(
            "At most 10 networks, each named by 1 to 32 lowercase letters, digits or \
             underscores, mapped to a handle or URL of 1 to 200 characters.",
        ))
        .max_properties(Some(10))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(utoipa::openapi::Type::String)
                .pattern(Some("^[a-z0-9_]{1,32}$")),
        ))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(utoipa::openapi::Type::String)
                .min_length(Some(1))
                .max_length(Some(200)),
        ))
        .examples([serde_json::json!({"twitter": "ann_lee"})])
        .build()
}

fn experience_level_schema() -> Object {
    responses::string_enum(
        &fields::EXPERIENCE_LEVELS,
        true,
        "Experience with image generation.",
    )
}

fn primary_use_case_schema() -> utoipa::openapi::Array {
    responses::array_of(
        responses::short_string(Some("^[a-z0-9_-]{1,32}$"), 32),
        10,
        true,
        "Free-form use cases (`gaming`), at most 10; duplicates are dropped.",
    )
}

fn favorite_art_styles_schema() -> utoipa::openapi::Array {
    responses::array_of(
        responses::enum_item(&fields::STYLE_TYPES),
        10,
        true,
        "Style types, at most 10; duplicates are dropped.",
    )
}

impl RequestBody for ProfilePut {
    type Valid = ProfileFields;

    fn read_only(field: &str) -> bool {
        READ_ONLY_PROFILE_FIELDS.contains(&field)
    }

    fn validate(self, errors: &mut Vec<FieldError>) -> ProfileFields {
        let mut text = |field: &str, value: Option<String>, max: usize, multiline: bool| {
            value.and_then(|v| check(errors, checks::text(field, &v, max, multiline)).flatten())
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
            .and_then(|v| check(errors, checks::http_url("website_url", &v)));
        out.social_links = self
            .social_links
            .and_then(|v| check(errors, fields::social_links("social_links", &v)))
            .unwrap_or_default();
        out.experience_level = self.experience_level.and_then(|v| {
            check(
                errors,
                checks::one_of("experience_level", &v, &fields::EXPERIENCE_LEVELS),
            )
        });
        out.primary_use_case = self.primary_use_case.and_then(|v| {
            check(
                errors,
                checks::tag_list("primary_use_case", &v, 10, checks::slug),
            )
        });
        out.favorite_art_styles = self.favorite_art_styles.and_then(|v| {
            check(
                errors,
                checks::tag_list("favorite_art_styles", &v, 10, |f, s| {
                    checks::one_of(f, s, &fields::STYLE_TYPES)
                }),
            )
        });
        out
    }
}

/// Replace the caller's extended profile.
#[utoipa::path(
    put,
    path = "/api/v1/me/profile",
    tag = "auth",
    security(("bearer" = [])),
    request_body = ProfilePut,
    responses(
        (status = 200, description = "The replaced profile.", body = Profile),
        (status = 422, response = ValidationFailed),
        SignedIn,
        BodyRefused,
        ServerFailures,
    )
)]
pub(crate) async fn put_profile(
    mut account: Account,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<Json<Profile>, ApiError> {
    let fields = decode::<ProfilePut>(body)?;
    let (tx, user) = account.begin_as_user().await?;
    let profile = repo::replace_profile(&tx, &user.id, &fields).await?;
    tx.commit().await?;
    Ok(Json(profile))
}

/// A public profile.
///
/// `public` profiles are visible to anyone; `friends` ones to their owner and to the people
/// who follow them and whom they follow back; `private` ones only to their owner. Anything not
/// visible, suspended or unknown is the same 404, indistinguishable from no user.
#[utoipa::path(
    get,
    path = "/api/v1/users/{username}",
    tag = "auth",
    security((), ("bearer" = [])),
    params(("username" = String, Path, description = "The user's username.")),
    responses(
        (status = 200, description = "The public profile.", body = PublicUser),
        (status = 404, description = "No such user, or their profile is not visible to the caller.", body = Problem, content_type = "application/problem+json"),
        Authenticated,
        ServerFailures,
    )
)]
pub(crate) async fn get_public_user(
    State(state): State<AppState>,
    OptionalCaller(identity): OptionalCaller,
    ApiPath(username): ApiPath<String>,
) -> Result<Json<PublicUser>, ApiError> {
    let mut client = state.db.get().await?;
    // A banned or erased caller's token is refused here too, as on every route taking one.
    let viewer = repo::optional_user(&**client, identity.as_ref()).await?;
    let viewer_id = viewer.map(|v| v.id);
    let user = repo::visible_person(&**client, viewer_id.as_deref(), &username).await?;
    // The profile row as app_api for the viewer: its policy (V18) shows it only to its
    // owner or, when public and active, to anyone — the same rule, enforced again.
    let tx = begin_as(&mut client, viewer_id.as_deref()).await?;
    let profile = repo::profile(&tx, &user.id).await?;
    tx.commit().await?;
    Ok(Json(PublicUser::new(user, profile)))
}
