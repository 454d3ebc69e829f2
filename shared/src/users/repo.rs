//! SQL for users and profiles. Every statement is parameterised.

use serde_json::{Map, Value, json};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient};

use super::{PROFILE_COLUMNS, Profile, USER_COLUMNS, User};
use crate::activity::{self, Activity};
use crate::kernel::error::{ApiError, db_constraint};
use crate::web::auth::Identity;
use crate::web::http::RequestMeta;

pub struct SignIn {
    pub user: User,
    /// True when this sign-in created the account.
    pub created: bool,
}

/// Signs the identity in: finds or creates its user (with the profile and
/// credits rows every user has), stamps `last_login_at` and logs the login, all
/// in one transaction. Concurrent first sign-ins of one identity are serialised
/// by a transaction-scoped advisory lock on the subject, so exactly one creates.
pub async fn sign_in(
    client: &mut Client,
    identity: &Identity,
    referral_code: Option<&str>,
    meta: &RequestMeta,
) -> Result<SignIn, ApiError> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('sign-in:' || $1, 0))",
        &[&identity.subject],
    )
    .await?;

    let existing = tx
        .query_opt(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE auth0_id = $1 FOR UPDATE"),
            &[&identity.subject],
        )
        .await?;
    let (user_id, created) = match existing {
        Some(row) => {
            let user = User::from_row(&row)?;
            if user.is_locked_out() {
                return Err(locked_out(&user));
            }
            (user.id, false)
        }
        None => {
            // An erased account's old tokens do not sign up again; newer ones do.
            if crate::users::receipts::token_predates_erasure(&tx, identity).await? {
                return Err(erased());
            }
            let user_id = create_user(&tx, identity).await?;
            // Only a new account names its referrer; later sign-ins ignore a code.
            if let Some(code) = referral_code {
                super::referrals::link(&tx, &user_id, code).await?;
            }
            (user_id, true)
        }
    };

    // Every user has exactly one profile and one credits row; creating them here
    // for existing users too repairs accounts made before they existed.
    tx.execute(
        "INSERT INTO user_profiles (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING",
        &[&user_id],
    )
    .await?;
    // The allowance counter belongs to the user's open daily window, if any.
    tx.execute(
        "INSERT INTO user_credits (user_id, daily_reset_date) \
         SELECT id, coalesce(quota_day, user_local_date(timezone)) FROM users WHERE id = $1 \
         ON CONFLICT (user_id) DO NOTHING",
        &[&user_id],
    )
    .await?;
    let row = tx
        .query_one(
            &format!(
                "UPDATE users SET last_login_at = now(), \
                   email_verified_at = CASE WHEN $2 THEN coalesce(email_verified_at, now()) \
                                            ELSE email_verified_at END \
                 WHERE id = $1 RETURNING {USER_COLUMNS}"
            ),
            &[&user_id, &identity.email_verified],
        )
        .await?;
    let user = User::from_row(&row)?;
    activity::record(
        &tx,
        Activity {
            user_id: Some(&user.id),
            activity_type: crate::activity::ActivityType::Login,
            entity_type: Some("user"),
            entity_id: Some(&user.id),
            metadata: json!({"first_sign_in": created}),
        },
        meta,
    )
    .await?;
    tx.commit().await?;
    Ok(SignIn { user, created })
}

async fn create_user(
    tx: &tokio_postgres::Transaction<'_>,
    identity: &Identity,
) -> Result<String, ApiError> {
    let email = identity.email.as_deref().ok_or_else(|| {
        ApiError::validation(
            "token.email",
            "the access token carries no email claim; the first sign-in needs one \
             (add it with an Auth0 Action under the claim named by AUTH_EMAIL_CLAIM)",
        )
    })?;
    let email = super::fields::email("token.email", email)
        .map_err(|e| ApiError::from_field_errors(vec![e]))?;

    // An account created earlier for this email without an identity (an admin
    // import) is linked; one bound to another identity is not taken over.
    let by_email = tx
        .query_opt(
            "SELECT id, auth0_id FROM users WHERE lower(email) = lower($1) FOR UPDATE",
            &[&email],
        )
        .await?;
    if let Some(row) = by_email {
        let id: String = row.try_get("id")?;
        let bound: Option<String> = row.try_get("auth0_id")?;
        if bound.is_some() {
            return Err(ApiError::Conflict(
                "an account with this email already exists under another sign-in method".into(),
            ));
        }
        tx.execute(
            "UPDATE users SET auth0_id = $2 WHERE id = $1",
            &[&id, &identity.subject],
        )
        .await?;
        return Ok(id);
    }
    let inserted = tx
        .query_one(
            "INSERT INTO users (email, auth0_id) VALUES ($1, $2) RETURNING id",
            &[&email, &identity.subject],
        )
        .await;
    match inserted {
        Ok(row) => Ok(row.try_get("id")?),
        // Another identity registered the same email between our check and insert.
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Err(ApiError::Conflict(
            "an account with this email already exists under another sign-in method".into(),
        )),
        Err(e) => Err(e.into()),
    }
}

fn locked_out(user: &User) -> ApiError {
    match user.account_status {
        Some(super::AccountStatus::Deleted) => erased(),
        _ => ApiError::Forbidden("this account has been banned".into()),
    }
}

fn erased() -> ApiError {
    ApiError::Forbidden("this account has been erased".into())
}

/// The caller's user row, or a problem saying why there is none to use.
pub async fn current_user(
    client: &impl GenericClient,
    identity: &Identity,
) -> Result<User, ApiError> {
    let row = client
        .query_opt(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE auth0_id = $1"),
            &[&identity.subject],
        )
        .await?;
    let Some(row) = row else {
        if crate::users::receipts::token_predates_erasure(client, identity).await? {
            return Err(erased());
        }
        return Err(ApiError::NotFound(
            "no account exists for this identity yet; sign in with POST /api/v1/auth/session"
                .into(),
        ));
    };
    let user = User::from_row(&row)?;
    if user.is_locked_out() {
        return Err(locked_out(&user));
    }
    Ok(user)
}

/// The caller's user for a route anonymous callers may use too: a token whose
/// identity has not signed in yet reads as anonymous; a locked-out account is
/// refused as everywhere else.
pub async fn optional_user(
    client: &impl GenericClient,
    identity: Option<&Identity>,
) -> Result<Option<User>, ApiError> {
    let Some(identity) = identity else {
        return Ok(None);
    };
    match current_user(client, identity).await {
        Ok(user) => Ok(Some(user)),
        Err(ApiError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Validated changes to the caller's own account. `None` leaves a column alone;
/// `Some(None)` clears a nullable one.
#[derive(Debug, Default)]
pub struct AccountChanges {
    pub username: Option<String>,
    pub display_name: Option<Option<String>>,
    pub avatar_url: Option<Option<String>>,
    pub preferred_language: Option<String>,
    pub timezone: Option<String>,
    /// Merged into the stored settings.
    pub notification_settings: Option<Map<String, Value>>,
    pub profile_visibility: Option<String>,
    pub allow_gallery_showcase: Option<bool>,
    pub content_filter_level: Option<String>,
}

pub async fn update_account(
    client: &impl GenericClient,
    user_id: &str,
    changes: &AccountChanges,
) -> Result<User, ApiError> {
    let notification_settings = changes.notification_settings.clone().map(Value::Object);
    let result = client
        .query_one(
            &format!(
                "UPDATE users SET \
                   username = COALESCE($2, username), \
                   display_name = CASE WHEN $3 THEN $4 ELSE display_name END, \
                   avatar_url = CASE WHEN $5 THEN $6 ELSE avatar_url END, \
                   preferred_language = COALESCE($7, preferred_language), \
                   timezone = COALESCE($8, timezone), \
                   notification_settings = CASE WHEN $9::jsonb IS NULL THEN notification_settings \
                                            ELSE COALESCE(notification_settings, '{{}}'::jsonb) || $9::jsonb END, \
                   profile_visibility = COALESCE($10, profile_visibility), \
                   allow_gallery_showcase = COALESCE($11, allow_gallery_showcase), \
                   content_filter_level = COALESCE($12, content_filter_level) \
                 WHERE id = $1 RETURNING {USER_COLUMNS}"
            ),
            &[
                &user_id,
                &changes.username,
                &changes.display_name.is_some(),
                &changes.display_name.clone().flatten(),
                &changes.avatar_url.is_some(),
                &changes.avatar_url.clone().flatten(),
                &changes.preferred_language,
                &changes.timezone,
                &notification_settings,
                &changes.profile_visibility,
                &changes.allow_gallery_showcase,
                &changes.content_filter_level,
            ],
        )
        .await;
    match result {
        Ok(row) => Ok(User::from_row(&row)?),
        Err(e) if matches!(db_constraint(&e), Some((code, "users_username_key" | "users_username_lower_key")) if *code == SqlState::UNIQUE_VIOLATION) => {
            Err(ApiError::Conflict("that username is taken".into()))
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn profile(
    client: &impl GenericClient,
    user_id: &str,
) -> Result<Option<Profile>, ApiError> {
    let row = client
        .query_opt(
            &format!("SELECT {PROFILE_COLUMNS} FROM user_profiles WHERE user_id = $1"),
            &[&user_id],
        )
        .await?;
    Ok(row.as_ref().map(Profile::from_row).transpose()?)
}

/// The editable profile fields, validated; a PUT replaces all of them.
#[derive(Debug, Default)]
pub struct ProfileFields {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub bio: Option<String>,
    pub website_url: Option<String>,
    pub social_links: Map<String, Value>,
    pub profession: Option<String>,
    pub company: Option<String>,
    pub industry: Option<String>,
    pub experience_level: Option<String>,
    pub primary_use_case: Option<Vec<String>>,
    pub favorite_art_styles: Option<Vec<String>>,
}

pub async fn replace_profile(
    client: &impl GenericClient,
    user_id: &str,
    fields: &ProfileFields,
) -> Result<Profile, ApiError> {
    let row = client
        .query_one(
            &format!(
                "INSERT INTO user_profiles (user_id, first_name, last_name, bio, website_url, social_links, \
                   profession, company, industry, experience_level, primary_use_case, favorite_art_styles) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (user_id) DO UPDATE SET \
                   first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name, bio = EXCLUDED.bio, \
                   website_url = EXCLUDED.website_url, social_links = EXCLUDED.social_links, \
                   profession = EXCLUDED.profession, company = EXCLUDED.company, industry = EXCLUDED.industry, \
                   experience_level = EXCLUDED.experience_level, primary_use_case = EXCLUDED.primary_use_case, \
                   favorite_art_styles = EXCLUDED.favorite_art_styles \
                 RETURNING {PROFILE_COLUMNS}"
            ),
            &[
                &user_id,
                &fields.first_name,
                &fields.last_name,
                &fields.bio,
                &fields.website_url,
                &Value::Object(fields.social_links.clone()),
                &fields.profession,
                &fields.company,
                &fields.industry,
                &fields.experience_level,
                &fields.primary_use_case,
                &fields.favorite_art_styles,
            ],
        )
        .await?;
    Ok(Profile::from_row(&row)?)
}

/// The person behind a username, as a viewer (`None`: anonymous) may see
/// them: an active account whose profile is public, a `friends` profile of
/// someone the viewer follows and is followed back by (V21), or the viewer's
/// own. Anything else (unknown, suspended, banned, erased, a private profile, a
/// `friends` one of a stranger) is the same 404, so its existence is not revealed.
pub async fn visible_person(
    client: &impl GenericClient,
    viewer_id: Option<&str>,
    username: &str,
) -> Result<User, ApiError> {
    let not_found = || ApiError::NotFound("no such user".into());
    if super::fields::username("username", username).is_err() {
        return Err(not_found());
    }
    let user = active_user_by_username(client, username)
        .await?
        .ok_or_else(not_found)?;
    let is_owner = viewer_id == Some(user.id.as_str());
    let visible = match user.profile_visibility {
        Some(super::ProfileVisibility::Public) => true,
        Some(super::ProfileVisibility::Friends) => {
            is_owner || super::follows::are_friends(client, &user.id, viewer_id).await?
        }
        _ => is_owner,
    };
    if !visible {
        return Err(not_found());
    }
    Ok(user)
}

/// An active user by username, case-insensitively.
pub async fn active_user_by_username(
    client: &impl GenericClient,
    username: &str,
) -> Result<Option<User>, ApiError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {USER_COLUMNS} FROM users \
                 WHERE lower(username) = lower($1) AND account_status = 'active'"
            ),
            &[&username],
        )
        .await?;
    Ok(row.as_ref().map(User::from_row).transpose()?)
}
