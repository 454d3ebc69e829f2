//! User admin: look a user up by email or username, change their tier,
//! subscription dates and account status.
//!
//! A tier change sets `users.daily_quota` and `user_credits.daily_allowance`
//! from the tier's terms ([`crate::kernel::tier`]) in the same transaction; it posts no
//! ledger entry (the allowance is not balance). Account status:
//! - `suspended`: the user can still sign in and read, but not generate,
//!   publish (characters or collections), like, rate or report (403); their
//!   characters leave the gallery (the V3 trigger on `users.account_status`);
//! - `banned`: every authenticated route refuses their token (403, through
//!   [`crate::users::repo::current_user`]), sign-in included;
//! - suspending or banning cancels the user's queued and processing jobs and
//!   releases their credit holds, exactly once each, in the same transaction
//!   as the status change (logged as `jobs_cancelled`);
//! - `active`: lifts either;
//! - `deleted` is erasure's (`DELETE /api/v1/me`), never set here, and an erased
//!   account cannot be changed at all (409).
//!
//! An admin cannot change their own account (403): another admin must. Lookups
//! are logged as the writes are (`admin_user_lookup`: who looked up whom, by
//! what), since they read personal data.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::{get, patch};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio_postgres::GenericClient;
use utoipa::{IntoParams, ToSchema};

use crate::activity::changes as diff;
use crate::activity::{self, Activity};
use crate::credits::Balance;
use crate::kernel::error::{ApiError, FieldError, Problem};
use crate::kernel::tier::Tier;
use crate::users::AccountStatus;
use crate::users::account::AdminAccount;
use crate::users::{USER_COLUMNS, User};
use crate::web::http::resource_id;
use crate::web::http::{ApiJson, ApiPath, ApiQuery, RequestMeta};
use crate::web::input::checks::FieldResult;
use crate::web::input::values::{self, nullable, raw, value};
use crate::web::input::{RequestBody, decode};
use crate::web::responses::{AdminAuthenticated, BodyRefused, ServerFailures};
use crate::web::responses::{Unauthorized, ValidationFailed};
use crate::web::state::AppState;

/// The statuses an admin may set.
pub const ADMIN_ACCOUNT_STATUSES: [&str; 3] = ["active", "suspended", "banned"];

/// Fields `PATCH /api/v1/admin/users/{id}` sets.
pub const WRITABLE_FIELDS: [&str; 4] = [
    "subscription_tier",
    "subscription_start_date",
    "subscription_end_date",
    "account_status",
];

/// The other fields of the answer, refused by name.
pub const READ_ONLY_FIELDS: [&str; 22] = [
    "id",
    "email",
    "auth0_id",
    "username",
    "display_name",
    "avatar_url",
    "daily_quota",
    "daily_used",
    "last_reset_date",
    "preferred_language",
    "timezone",
    "notification_settings",
    "profile_visibility",
    "allow_gallery_showcase",
    "content_filter_level",
    "total_characters_created",
    "total_images_generated",
    "created_at",
    "updated_at",
    "last_login_at",
    "email_verified_at",
    "credits",
];

/// Longest email or username a lookup takes.
const MAX_LOOKUP_LEN: usize = 320;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/admin/users", get(lookup))
        .route("/api/v1/admin/users/{id}", patch(update))
}

/// A user as admins see them: the whole `users` row and their credits.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AdminUser {
    #[serde(flatten)]
    pub user: User,
    /// The credit account (after today's lazy reset); `null` for an account without one.
    pub credits: Option<Balance>,
}

/// The user's credits, `None` without a credit account.
async fn credits_of(
    client: &impl GenericClient,
    user_id: &str,
    gift_hold_days: i32,
) -> Result<Option<Balance>, ApiError> {
    match crate::credits::balance(client, user_id, gift_hold_days).await {
        Ok(balance) => Ok(Some(balance)),
        Err(ApiError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Unknown parameters are refused with a 422; at least one is required.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct LookupQuery {
    /// The user's email, matched exactly but regardless of case.
    #[param(nullable = false, max_length = 320)]
    email: Option<String>,
    /// The user's username, matched exactly but regardless of case.
    #[param(nullable = false, max_length = 320)]
    username: Option<String>,
}

fn lookup_value(
    field: &str,
    value: Option<String>,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    let value = value?;
    if value.is_empty()
        || value.chars().count() > MAX_LOOKUP_LEN
        || value.chars().any(char::is_control)
    {
        errors.push(FieldError::new(
            field,
            format!("must be 1 to {MAX_LOOKUP_LEN} characters without control characters"),
        ));
        return None;
    }
    Some(value)
}

/// Look a user up.
///
/// By `email`, `username` or both (then both must match), each exactly but regardless of
/// case: the whole `users` row plus the credit account. Every lookup, found or not, is logged
/// (`admin_user_lookup`) with the admin's id, the terms searched for and the user found. The
/// token must carry the `admin` permission.
#[utoipa::path(
    get,
    path = "/api/v1/admin/users",
    tag = "admin",
    operation_id = "admin_lookup_user",
    security(("bearer" = ["admin"])),
    params(LookupQuery),
    responses(
        (status = 200, description = "The user.", body = AdminUser),
        (status = 404, description = "No user matches, or the admin has no account yet.", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = ValidationFailed),
        AdminAuthenticated,
        ServerFailures,
    )
)]
pub(crate) async fn lookup(
    mut account: AdminAccount,
    State(state): State<AppState>,
    meta: RequestMeta,
    ApiQuery(query): ApiQuery<LookupQuery>,
) -> Result<Json<AdminUser>, ApiError> {
    let mut errors = Vec::new();
    let given = (query.email.is_some(), query.username.is_some());
    let email = lookup_value("email", query.email, &mut errors);
    let username = lookup_value("username", query.username, &mut errors);
    if given == (false, false) {
        errors.push(FieldError::new(
            "query",
            "give email, username or both to look a user up",
        ));
    }
    crate::web::input::finish((), errors)?;
    let (tx, admin) = account.begin().await?;
    // One statement per combination, so each walks its unique lower() index.
    let row = match (&email, &username) {
        (Some(email), Some(username)) => {
            tx.query_opt(
                &format!(
                    "SELECT {USER_COLUMNS} FROM users \
                     WHERE lower(email) = lower($1) AND lower(username) = lower($2)"
                ),
                &[email, username],
            )
            .await?
        }
        (Some(email), None) => {
            tx.query_opt(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE lower(email) = lower($1)"),
                &[email],
            )
            .await?
        }
        (None, Some(username)) => {
            tx.query_opt(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE lower(username) = lower($1)"),
                &[username],
            )
            .await?
        }
        (None, None) => None,
    };
    let user = row.as_ref().map(User::from_row).transpose()?;
    // Reads of personal data are audited too: who looked up whom, by what. The terms are
    // the identifiers searched for (in `email` and `username` fields, which an erasure of
    // the user found scrubs); nothing of the answer is copied.
    let target = user.as_ref().map(|u| u.id.as_str());
    activity::record(
        &tx,
        Activity {
            user_id: Some(&admin.id),
            activity_type: crate::activity::ActivityType::AdminUserLookup,
            entity_type: Some("user"),
            entity_id: target,
            metadata: json!({
                "query": {"email": email, "username": username},
                "found": target.is_some(),
                "target_user_id": target,
            }),
        },
        &meta,
    )
    .await?;
    let Some(user) = user else {
        tx.commit().await?;
        return Err(ApiError::NotFound("no user matches".into()));
    };
    let credits = credits_of(&tx, &user.id, state.config.credits.gift_hold_days).await?;
    tx.commit().await?;
    Ok(Json(AdminUser { user, credits }))
}

/// Validated changes. `None` leaves a column alone; `Some(None)` clears a date.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserChanges {
    pub subscription_tier: Option<String>,
    pub subscription_start_date: Option<Option<DateTime<Utc>>>,
    pub subscription_end_date: Option<Option<DateTime<Utc>>>,
    pub account_status: Option<AccountStatus>,
}

fn account_status(field: &str, value: &Value) -> FieldResult<AccountStatus> {
    if value.as_str() == Some("deleted") {
        return Err(FieldError::new(
            field,
            "cannot be set to deleted here: accounts are deleted by erasure (DELETE /api/v1/me)",
        ));
    }
    let named = values::one_of(&ADMIN_ACCOUNT_STATUSES)(field, value)?;
    AccountStatus::parse(&named)
        .ok_or_else(|| FieldError::new(field, format!("`{named}` is not an account status")))
}

impl UserChanges {
    pub fn parse(body: Map<String, Value>) -> Result<Self, ApiError> {
        decode::<UserPatch>(body)
    }
}

/// Changes to a user's subscription and status; at least one field. Every other field of the
/// user is refused with a 422 naming it, as are unknown fields.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    /// Also sets `daily_quota` and the credit account's `daily_allowance` from the tier table
    /// (FREE 3/0, PREMIUM 10/50, PRO 25/200, ENTERPRISE 100/1000), even when unchanged.
    #[serde(default, deserialize_with = "raw")]
    #[schema(schema_with = tier_schema)]
    subscription_tier: Option<Value>,
    /// RFC 3339; `null` clears it. Must be before the end date when both are set.
    #[serde(default, deserialize_with = "raw")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    subscription_start_date: Option<Value>,
    /// RFC 3339; `null` clears it (no end). A tier whose subscription has ended prices as
    /// FREE.
    #[serde(default, deserialize_with = "raw")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    subscription_end_date: Option<Value>,
    #[serde(default, deserialize_with = "raw")]
    #[schema(schema_with = status_schema)]
    account_status: Option<Value>,
}

impl RequestBody for UserPatch {
    type Valid = UserChanges;

    fn read_only(field: &str) -> bool {
        READ_ONLY_FIELDS.contains(&field)
    }

    fn validate(self, e: &mut Vec<FieldError>) -> UserChanges {
        let given = [
            &self.subscription_tier,
            &self.subscription_start_date,
            &self.subscription_end_date,
            &self.account_status,
        ];
        // A field refused while decoding was sent, so something was asked.
        if e.is_empty() && given.iter().all(|field| field.is_none()) {
            e.push(FieldError::new(
                "body",
                format!(
                    "nothing to change: send at least one of {}",
                    WRITABLE_FIELDS.join(", ")
                ),
            ));
        }
        let tier = value(
            e,
            "subscription_tier",
            self.subscription_tier,
            values::one_of(&Tier::NAMES),
        );
        UserChanges {
            subscription_tier: tier,
            subscription_start_date: nullable(
                e,
                "subscription_start_date",
                self.subscription_start_date,
                values::timestamp,
            ),
            subscription_end_date: nullable(
                e,
                "subscription_end_date",
                self.subscription_end_date,
                values::timestamp,
            ),
            account_status: value(e, "account_status", self.account_status, account_status),
        }
    }
}

fn tier_schema() -> utoipa::openapi::Object {
    crate::web::responses::string_enum(&Tier::NAMES, false, "The subscription tier.")
}

fn status_schema() -> utoipa::openapi::Object {
    crate::web::responses::string_enum(
        &ADMIN_ACCOUNT_STATUSES,
        false,
        "`suspended`: may sign in and read, not generate, publish, like, rate or report, out \
         of the gallery; `banned`: every authenticated route refuses the token; either cancels \
         the user's queued and processing jobs and releases their credits. `active` lifts \
         either. `deleted` is refused (erasure's job).",
    )
}

/// Applies `changes` to user `target_id` and logs it, in the caller's (system-role)
/// transaction; answers the user as it is after.
pub async fn apply(
    client: &impl GenericClient,
    admin_id: &str,
    target_id: &str,
    changes: &UserChanges,
    gift_hold_days: i32,
    meta: &RequestMeta,
) -> Result<AdminUser, ApiError> {
    if target_id == admin_id {
        return Err(ApiError::Forbidden(
            "an admin cannot change their own account; ask another admin".into(),
        ));
    }
    // Suspending or banning stops the user's generation.
    let stops_generation = changes
        .account_status
        .is_some_and(|status| status != AccountStatus::Active);
    let before = lock_target(client, target_id, stops_generation).await?;
    let window = subscription_window(changes, &before)?;
    let entitlements = changes
        .subscription_tier
        .as_deref()
        .and_then(Tier::parse)
        .map(Tier::terms);
    let allowance_before: Option<i32> = client
        .query_opt(
            "SELECT daily_allowance FROM user_credits WHERE user_id = $1 FOR UPDATE",
            &[&target_id],
        )
        .await?
        .map(|row| row.try_get(0))
        .transpose()?;
    let after = write_user(client, target_id, changes, window, entitlements).await?;
    let mut allowance_after = allowance_before;
    if let Some(entitlements) = entitlements {
        // Not a ledger entry: the allowance is what generations may use per day, not balance.
        client
            .execute(
                "UPDATE user_credits SET daily_allowance = $2 WHERE user_id = $1",
                &[&target_id, &entitlements.allowance_credits_per_day],
            )
            .await?;
        if allowance_before.is_some() {
            allowance_after = Some(entitlements.allowance_credits_per_day);
        }
    }
    let jobs_cancelled = if stops_generation {
        let status = after.account_status.map(AccountStatus::as_str);
        cancel_jobs(client, target_id, status).await?
    } else {
        Vec::new()
    };
    let update = Update {
        admin_id,
        before: (&before, allowance_before),
        after: (&after, allowance_after),
        jobs_cancelled: &jobs_cancelled,
    };
    log_update(client, target_id, update, meta).await?;
    let credits = credits_of(client, target_id, gift_hold_days).await?;
    Ok(AdminUser {
        user: after,
        credits,
    })
}

/// Locks what the change touches, in the platform's lock order (a job, then its user,
/// then the credit rows; as an erasure does): the user's active jobs when generation
/// stops (they are cancelled once the status has changed), then the user row, which
/// must not be erased.
async fn lock_target(
    client: &impl GenericClient,
    target_id: &str,
    stops_generation: bool,
) -> Result<User, ApiError> {
    if stops_generation {
        client
            .query(
                "SELECT id FROM generation_jobs WHERE user_id = $1 AND status IN ('queued', 'processing') \
                 ORDER BY id FOR UPDATE",
                &[&target_id],
            )
            .await?;
    }
    // The user row first, then the credit account: the order a dispatch locks them in.
    let before = client
        .query_opt(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1 FOR NO KEY UPDATE"),
            &[&target_id],
        )
        .await?
        .as_ref()
        .map(User::from_row)
        .transpose()?
        .ok_or_else(|| ApiError::NotFound("no such user".into()))?;
    if before.account_status == Some(AccountStatus::Deleted) {
        return Err(ApiError::Conflict(
            "the account has been erased; it cannot be changed".into(),
        ));
    }
    Ok(before)
}

/// A subscription's start and end after the change: a 422 unless the start is before the end.
type Window = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

fn subscription_window(changes: &UserChanges, before: &User) -> Result<Window, ApiError> {
    let start = changes
        .subscription_start_date
        .unwrap_or(before.subscription_start_date);
    let end = changes
        .subscription_end_date
        .unwrap_or(before.subscription_end_date);
    if let (Some(start), Some(end)) = (start, end)
        && start >= end
    {
        return Err(ApiError::validation(
            "subscription_end_date",
            "must be after subscription_start_date",
        ));
    }
    Ok((start, end))
}

/// Writes the user row's new subscription, status and (with a tier) daily quota.
async fn write_user(
    client: &impl GenericClient,
    target_id: &str,
    changes: &UserChanges,
    (start, end): Window,
    entitlements: Option<&crate::kernel::tier::TierTerms>,
) -> Result<User, ApiError> {
    let row = client
        .query_one(
            &format!(
                "UPDATE users SET \
                   subscription_tier = coalesce($2, subscription_tier), \
                   subscription_start_date = CASE WHEN $3 THEN $4 ELSE subscription_start_date END, \
                   subscription_end_date = CASE WHEN $5 THEN $6 ELSE subscription_end_date END, \
                   account_status = coalesce($7, account_status), \
                   daily_quota = coalesce($8, daily_quota) \
                 WHERE id = $1 RETURNING {USER_COLUMNS}"
            ),
            &[
                &target_id,
                &changes.subscription_tier,
                &changes.subscription_start_date.is_some(),
                &start,
                &changes.subscription_end_date.is_some(),
                &end,
                &changes.account_status,
                &entitlements.map(|e| e.free_generations_per_day),
            ],
        )
        .await?;
    Ok(User::from_row(&row)?)
}

/// An update as the audit row records it: the user and daily allowance before and after.
struct Update<'a> {
    admin_id: &'a str,
    before: (&'a User, Option<i32>),
    after: (&'a User, Option<i32>),
    jobs_cancelled: &'a [String],
}

/// The `admin_user_updated` activity row, with what changed.
async fn log_update(
    client: &impl GenericClient,
    target_id: &str,
    update: Update<'_>,
    meta: &RequestMeta,
) -> Result<(), ApiError> {
    let snapshot = |(user, allowance): (&User, Option<i32>)| {
        let mut value = serde_json::to_value(user).unwrap_or_default();
        value["daily_allowance"] = json!(allowance);
        value
    };
    let mut changed_fields = WRITABLE_FIELDS.to_vec();
    changed_fields.extend(["daily_quota", "daily_allowance"]);
    activity::record(
        client,
        Activity {
            user_id: Some(update.admin_id),
            activity_type: crate::activity::ActivityType::AdminUserUpdated,
            entity_type: Some("user"),
            entity_id: Some(target_id),
            metadata: json!({
                "target_user_id": target_id,
                "jobs_cancelled": update.jobs_cancelled,
                "changes": diff(
                    &snapshot(update.before),
                    &snapshot(update.after),
                    &changed_fields,
                ),
            }),
        },
        meta,
    )
    .await?;
    Ok(())
}

/// Cancels the user's queued and processing jobs and releases each one's hold,
/// exactly once, in the caller's transaction (as `POST /api/v1/jobs/{id}/cancel`
/// and an erasure do); answers their ids. A worker rendering one of them finds
/// it no longer processing when it completes, and settles nothing.
async fn cancel_jobs(
    client: &impl GenericClient,
    user_id: &str,
    status: Option<&str>,
) -> Result<Vec<String>, ApiError> {
    let reason = format!("the account was {}", status.unwrap_or("suspended"));
    Ok(crate::jobs::lifecycle::cancel_for_user(client, user_id, &reason).await?)
}

/// Change a user's tier, subscription dates or account status.
///
/// Only the fields sent change. A tier sets `daily_quota` and the credit account's
/// `daily_allowance` from the tier table, in the same transaction (no ledger entry). Logged
/// with the admin's id and what changed. An admin cannot change their own account. The token
/// must carry the `admin` permission.
#[utoipa::path(
    patch,
    path = "/api/v1/admin/users/{id}",
    tag = "admin",
    operation_id = "admin_update_user",
    security(("bearer" = ["admin"])),
    params(("id" = String, Path, description = "The user's id.")),
    request_body = UserPatch,
    responses(
        (status = 200, description = "The user, changed.", body = AdminUser),
        (status = 401, response = Unauthorized),
        (status = 403, description = "The token lacks the `admin` permission, the admin's account is banned or erased, or the user is the admin themselves.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user, or the admin has no account yet.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The account has been erased (`deleted`); it cannot be changed.", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = ValidationFailed),
        BodyRefused,
        ServerFailures,
    )
)]
pub(crate) async fn update(
    mut account: AdminAccount,
    State(state): State<AppState>,
    meta: RequestMeta,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<Json<AdminUser>, ApiError> {
    let id = resource_id(&id, "user")?;
    let changes = UserChanges::parse(body)?;
    let (tx, admin) = account.begin().await?;
    let user = apply(
        &tx,
        &admin.id,
        id,
        &changes,
        state.config.credits.gift_hold_days,
        &meta,
    )
    .await?;
    tx.commit().await?;
    Ok(Json(user))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<UserChanges, ApiError> {
        match v {
            Value::Object(m) => UserChanges::parse(m),
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
    fn changes_are_validated_field_by_field() {
        let ok = parse(json!({
            "subscription_tier": "PRO",
            "subscription_start_date": "2026-01-01T00:00:00Z",
            "subscription_end_date": null,
            "account_status": "suspended",
        }))
        .unwrap();
        assert_eq!(ok.subscription_tier.as_deref(), Some("PRO"));
        assert!(matches!(ok.subscription_start_date, Some(Some(_))));
        assert_eq!(ok.subscription_end_date, Some(None));
        assert_eq!(ok.account_status, Some(AccountStatus::Suspended));
        let only_status = parse(json!({"account_status": "banned"})).unwrap();
        assert_eq!(only_status.subscription_tier, None);
        assert_eq!(only_status.subscription_start_date, None);
        for (body, field) in [
            (json!({}), "body"),
            (json!({"account_status": "deleted"}), "account_status"),
            (json!({"account_status": "gone"}), "account_status"),
            (json!({"account_status": null}), "account_status"),
            (json!({"subscription_tier": "GOLD"}), "subscription_tier"),
            (json!({"subscription_tier": null}), "subscription_tier"),
            (
                json!({"subscription_end_date": "tomorrow"}),
                "subscription_end_date",
            ),
            (
                json!({"account_status": "active", "daily_quota": 100}),
                "daily_quota",
            ),
            (
                json!({"account_status": "active", "email": "x@y.z"}),
                "email",
            ),
            (json!({"account_status": "active", "colour": 1}), "colour"),
        ] {
            assert_eq!(
                fields_of(parse(body.clone()).unwrap_err()),
                vec![field],
                "{body}"
            );
        }
    }
}
