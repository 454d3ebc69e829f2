//! `DELETE /api/v1/me`: erases the caller's personal data, in one database
//! transaction, then their stored images and exports.
//!
//! In order:
//! 1. the caller's queued and processing jobs are cancelled and their holds
//!    released, exactly once each ([`holds::release`], as a cancel does);
//! 2. characters (their ratings, likes, reports and collection memberships
//!    go with them), collections, the caller's ratings and likes, the profile,
//!    idempotency keys and rate-limit windows are deleted;
//! 3. what is kept for the audit trail no longer leads to the person: the
//!    ledger, purchase orders, holds, job refunds and the jobs themselves stay,
//!    keyed by the tombstone id, with the person's identifiers replaced by
//!    `[erased]` (in free texts where they stand as whole words; in JSON
//!    documents only in the fields that hold identifiers, such as
//!    `from_username`, and only where the whole value is one of them: keys
//!    and other values are never touched), gift messages, job prompts and
//!    outputs and checkout links dropped; the activity log loses addresses,
//!    user agents, referrers and request ids; reports the caller filed lose
//!    their reporter; other users' rows that name the caller (the other side of
//!    a gift, admin actions on the account, stored responses) are scrubbed too;
//! 4. the users row becomes a tombstone (`account_status = 'deleted'`, a
//!    random `deleted-…@erased.invalid` email, no identity, names or avatar,
//!    settings back to defaults) and an erasure receipt is written (see
//!    [`crate::gdpr`]), with an `erasure` activity row carrying no address.
//!
//! The images and thumbnails recorded in `character_images` (variants'
//! included), job outputs and stored exports are deleted after the commit,
//! as a character deletion does; a failure leaves a logged orphan,
//! never a row pointing at nothing.
//!
//! Concurrency: locks are taken in the order the rest of the platform uses
//! (a job's row, then its user's row, then the credit rows). The caller's
//! active jobs are locked first, so a worker completing one either finished
//! before (the job is no longer active and is kept as completed) or waits and
//! then finds it cancelled, settling nothing and deleting its images; then the
//! users row `FOR UPDATE` (the strength the tombstone's change of unique
//! columns needs anyway), which serialises the erasure with every ledger
//! posting, hold, dispatch and gift of the user and makes concurrent inserts
//! that reference the user wait for the outcome.

use serde_json::{Value, json};
use tokio_postgres::{Client, Transaction};

use crate::activity::{self, Activity};
use crate::kernel::error::ApiError;
use crate::users::{USER_COLUMNS, User};
use crate::web::auth::Identity;
use crate::web::http::RequestMeta;

/// What an erasure did.
#[derive(Debug)]
pub enum Outcome {
    /// The account was erased; these stored objects are to be deleted now.
    Erased { objects: Vec<String> },
    /// This identity's account was erased before: nothing to do.
    AlreadyErased,
}

/// The texts that identify the person, searched for in the rows that are kept.
struct Identifiers {
    needles: Vec<String>,
}

impl Identifiers {
    fn of(user: &User, first_name: Option<String>, last_name: Option<String>) -> Self {
        let needles = [
            Some(user.email.clone()),
            user.auth0_id.clone(),
            user.username.clone(),
            user.display_name.clone(),
            first_name,
            last_name,
        ]
        .into_iter()
        .flatten()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
        Self { needles }
    }
}

/// Erases the account of `identity` once `confirm` matches its email.
pub async fn erase(
    client: &mut Client,
    identity: &Identity,
    confirm: &str,
) -> Result<Outcome, ApiError> {
    let tx = client.transaction().await?;
    let Some(user) = check_request(&tx, identity, confirm).await? else {
        return Ok(Outcome::AlreadyErased);
    };
    let Some(user) = lock_account(&tx, &user, identity).await? else {
        return Ok(Outcome::AlreadyErased);
    };

    let cancelled = cancel_jobs(&tx, &user.id).await?;
    let objects = stored_objects(&tx, &user.id).await?;
    let identifiers = read_identifiers(&tx, &user).await?;
    let deleted = delete_personal_rows(&tx, &user.id).await?;
    scrub_kept_rows(&tx, &user.id, &identifiers.needles).await?;
    tombstone(&tx, &user.id, identity).await?;
    activity::record(
        &tx,
        Activity {
            user_id: Some(&user.id),
            activity_type: crate::activity::ActivityType::Erasure,
            entity_type: Some("user"),
            entity_id: Some(&user.id),
            metadata: json!({
                "jobs_cancelled": cancelled,
                "stored_objects": objects.len(),
                "deleted": deleted,
            }),
        },
        // No address, user agent, referrer or request id.
        &RequestMeta::default(),
    )
    .await?;
    tx.commit().await?;
    Ok(Outcome::Erased { objects })
}

/// The identity's account, if it may be erased: 404 if there is none, 403 if
/// banned, 422 unless `confirm` is its email; `None` if it was erased before.
async fn check_request(
    tx: &Transaction<'_>,
    identity: &Identity,
    confirm: &str,
) -> Result<Option<User>, ApiError> {
    let found = tx
        .query_opt(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE auth0_id = $1"),
            &[&identity.subject],
        )
        .await?;
    let Some(row) = found else {
        return if crate::users::receipts::erased_at(tx, identity)
            .await?
            .is_some()
        {
            Ok(None)
        } else {
            Err(ApiError::NotFound(
                "no account exists for this identity".into(),
            ))
        };
    };
    let user = User::from_row(&row)?;
    if user.account_status == Some(crate::users::AccountStatus::Banned) {
        return Err(ApiError::Forbidden(
            "this account has been banned; it is kept for the moderation record, ask support to erase it"
                .into(),
        ));
    }
    if !confirm.trim().eq_ignore_ascii_case(user.email.trim()) {
        return Err(ApiError::validation(
            "confirm",
            "must be the email address of the account, to confirm its erasure",
        ));
    }
    Ok(Some(user))
}

/// Locks the user's active jobs, then the users row, and re-reads it; `None`
/// if a concurrent erasure of the account committed meanwhile.
async fn lock_account(
    tx: &Transaction<'_>,
    user: &User,
    identity: &Identity,
) -> Result<Option<User>, ApiError> {
    // Lock order: the jobs, then the user (see the module documentation).
    tx.query(
        "SELECT id FROM generation_jobs WHERE user_id = $1 AND status IN ('queued', 'processing') \
         ORDER BY id FOR UPDATE",
        &[&user.id],
    )
    .await?;
    let locked = tx
        .query_opt(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1 FOR UPDATE"),
            &[&user.id],
        )
        .await?;
    // A concurrent erasure of the same account committed while we waited.
    Ok(locked
        .map(|row| User::from_row(&row))
        .transpose()?
        .filter(|u| u.auth0_id.as_deref() == Some(identity.subject.as_str())))
}

/// The texts that identify the person: the user's own and the profile's
/// first and last names.
async fn read_identifiers(tx: &Transaction<'_>, user: &User) -> Result<Identifiers, ApiError> {
    let names = tx
        .query_opt(
            "SELECT first_name, last_name FROM user_profiles WHERE user_id = $1",
            &[&user.id],
        )
        .await?;
    let (first_name, last_name) = match names {
        Some(row) => (row.try_get(0)?, row.try_get(1)?),
        None => (None, None),
    };
    Ok(Identifiers::of(user, first_name, last_name))
}

/// Cancels the user's queued and processing jobs and releases their holds.
async fn cancel_jobs(tx: &Transaction<'_>, user_id: &str) -> Result<usize, ApiError> {
    let cancelled =
        crate::jobs::lifecycle::cancel_for_user(tx, user_id, "the account was erased").await?;
    Ok(cancelled.len())
}

/// Every stored object of the user: every image and thumbnail recorded in
/// `character_images` (variants' included), each character's (as a character
/// deletion finds them), every job output left from earlier deletions, stored
/// exports.
async fn stored_objects(tx: &Transaction<'_>, user_id: &str) -> Result<Vec<String>, ApiError> {
    let mut keys = Vec::new();
    let images = tx
        .query(
            "SELECT storage_key, thumbnail_key FROM character_images WHERE user_id = $1",
            &[&user_id],
        )
        .await?;
    for row in &images {
        keys.push(row.try_get::<_, String>(0)?);
        keys.extend(row.try_get::<_, Option<String>>(1)?);
    }
    let characters = tx
        .query("SELECT id FROM characters WHERE user_id = $1", &[&user_id])
        .await?;
    for row in &characters {
        let id: String = row.try_get(0)?;
        keys.extend(crate::characters::repo::stored_objects(tx, &id).await?);
    }
    let outputs = tx
        .query(
            "SELECT o FROM generation_jobs j, jsonb_array_elements_text( \
               CASE WHEN jsonb_typeof(j.output_urls) = 'array' THEN j.output_urls ELSE '[]'::jsonb END) o \
             WHERE j.user_id = $1",
            &[&user_id],
        )
        .await?;
    for row in &outputs {
        let key: String = row.try_get(0)?;
        // Each stored image has its thumbnail beside it (`image-N.png` → `thumb-N.png`).
        if key.contains("/image-") {
            keys.push(key.replace("/image-", "/thumb-"));
        }
        keys.push(key);
    }
    let exports = tx
        .query(
            "SELECT metadata->>'object_key' FROM user_activity_logs \
             WHERE user_id = $1 AND activity_type = 'export' AND metadata ? 'object_key'",
            &[&user_id],
        )
        .await?;
    for row in &exports {
        if let Some(key) = row.try_get::<_, Option<String>>(0)? {
            keys.push(key);
        }
    }
    // Only our own keys (images hosted elsewhere are not ours to delete).
    keys.retain(|k| crate::ports::storage::validate_key(k).is_ok());
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// Deletes what is personal and not needed for the audit trail; returns how
/// many rows of each kind went.
async fn delete_personal_rows(tx: &Transaction<'_>, user_id: &str) -> Result<Value, ApiError> {
    // Ratings and likes first, then collections, then characters: the
    // counters other users' characters and collections keep follow by trigger.
    let statements = [
        (
            "ratings",
            "DELETE FROM character_ratings WHERE user_id = $1",
        ),
        ("likes", "DELETE FROM character_likes WHERE user_id = $1"),
        ("collections", "DELETE FROM collections WHERE user_id = $1"),
        ("characters", "DELETE FROM characters WHERE user_id = $1"),
        ("profile", "DELETE FROM user_profiles WHERE user_id = $1"),
        (
            "idempotency_keys",
            "DELETE FROM idempotency_keys WHERE user_id = $1",
        ),
        (
            "rate_limit_windows",
            "DELETE FROM rate_limit_windows WHERE user_id = $1",
        ),
        (
            "follows",
            "DELETE FROM follows WHERE follower_id = $1 OR followed_id = $1",
        ),
    ];
    let mut counts = serde_json::Map::new();
    for (name, sql) in statements {
        let n = tx.execute(sql, &[&user_id]).await?;
        counts.insert(name.into(), json!(n));
    }
    Ok(Value::Object(counts))
}

/// Rewrites the rows kept for the audit trail so they no longer lead to the
/// person, and other users' rows that name them.
async fn scrub_kept_rows(
    tx: &Transaction<'_>,
    user_id: &str,
    needles: &[String],
) -> Result<(), ApiError> {
    let gift_ids: Vec<String> = tx
        .query(
            "SELECT DISTINCT related_entity_id FROM credit_transactions \
             WHERE user_id = $1 AND related_entity_type = 'gift_transfer' AND related_entity_id IS NOT NULL",
            &[&user_id],
        )
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    let mut about_user = gift_ids.clone();
    about_user.push(user_id.to_string());

    scrub_accounts(tx, user_id, needles, &gift_ids).await?;
    scrub_traces(tx, user_id, needles, &gift_ids, &about_user).await?;
    Ok(())
}

/// Scrubs the accounting rows kept: the caller's ledger and the other side of
/// their gifts, orders, holds, jobs and job refunds.
async fn scrub_accounts(
    tx: &Transaction<'_>,
    user_id: &str,
    needles: &[String],
    gift_ids: &[String],
) -> Result<(), ApiError> {
    let statements: [(&str, &[&(dyn tokio_postgres::types::ToSql + Sync)]); 6] = [
        // The caller's ledger: amounts and balances untouched, so it still adds up. Gift
        // messages are personal text, not accounting.
        (
            "UPDATE credit_transactions SET description = gdpr_scrub_words(description, $2), \
               metadata = gdpr_scrub_identifiers(metadata - 'message', $2), \
               operation_details = gdpr_scrub_identifiers(operation_details, $2), \
               cost_calculation = gdpr_scrub_identifiers(cost_calculation, $2) \
             WHERE user_id = $1",
            &[&user_id, &needles],
        ),
        // The other side of the caller's gifts ("Gift from <username>": the description's
        // known form is rewritten, not searched), and the message the caller wrote with a
        // gift they sent.
        (
            "UPDATE credit_transactions SET description = CASE transaction_type \
                 WHEN 'gift_received' THEN 'Gift from [erased]' \
                 WHEN 'gift_sent' THEN 'Gift to [erased]' \
                 ELSE gdpr_scrub_words(description, $2) END, \
               metadata = gdpr_scrub_identifiers(CASE WHEN transaction_type = 'gift_received' \
                                           THEN metadata - 'message' ELSE metadata END, $2) \
             WHERE related_entity_type = 'gift_transfer' AND related_entity_id = ANY($3) \
               AND user_id <> $1",
            &[&user_id, &needles, &gift_ids],
        ),
        // Orders stay for the accounts (Stripe's ids too: refunds are matched by them);
        // the checkout page link goes.
        (
            "UPDATE purchase_orders SET checkout_url = NULL, metadata = gdpr_scrub_identifiers(metadata, $2) \
             WHERE user_id = $1",
            &[&user_id, &needles],
        ),
        (
            "UPDATE credit_holds SET cost_calculation = gdpr_scrub_identifiers(cost_calculation, $2) \
             WHERE user_id = $1",
            &[&user_id, &needles],
        ),
        // Jobs stay as what the ledger's usage entries and the holds point at: type, status,
        // times, price. Prompts, outputs and the provider's details go.
        (
            "UPDATE generation_jobs SET input_parameters = '{}'::jsonb, output_urls = '[]'::jsonb, \
               processing_metadata = gdpr_scrub_identifiers(jsonb_strip_nulls(jsonb_build_object( \
                 'credits', processing_metadata->'credits', \
                 'cost_calculation', processing_metadata->'cost_calculation')), $2), \
               error_details = NULL \
             WHERE user_id = $1",
            &[&user_id, &needles],
        ),
        (
            "UPDATE job_refunds SET reason = gdpr_scrub_words(reason, $2) WHERE user_id = $1",
            &[&user_id, &needles],
        ),
    ];
    for (sql, params) in statements {
        tx.execute(sql, params).await?;
    }
    Ok(())
}

/// Scrubs the other traces of the caller: as an operator, as a reporter, in
/// the activity log (theirs and others' about them) and in others' stored
/// responses.
async fn scrub_traces(
    tx: &Transaction<'_>,
    user_id: &str,
    needles: &[String],
    gift_ids: &[String],
    about_user: &[String],
) -> Result<(), ApiError> {
    let statements: [(&str, &[&(dyn tokio_postgres::types::ToSql + Sync)]); 6] = [
        // As an operator: refunds and report resolutions lose who did them (both
        // foreign keys are ON DELETE SET NULL: the link is not part of the record).
        (
            "UPDATE job_refunds SET refunded_by = NULL, reason = gdpr_scrub_words(reason, $2) \
             WHERE refunded_by = $1",
            &[&user_id, &needles],
        ),
        (
            "UPDATE content_reports SET resolved_by = NULL, \
               resolution_note = gdpr_scrub_words(resolution_note, $2) \
             WHERE resolved_by = $1",
            &[&user_id, &needles],
        ),
        // Reports the caller filed stay for moderation, without their reporter.
        (
            "UPDATE content_reports SET reporter_id = NULL, \
               details = left(gdpr_scrub_words(details, $2), 2000) \
             WHERE reporter_id = $1",
            &[&user_id, &needles],
        ),
        (
            "UPDATE user_activity_logs SET ip_address = NULL, user_agent = NULL, referrer = NULL, \
               session_id = NULL, metadata = gdpr_scrub_identifiers(metadata, $2) \
             WHERE user_id = $1",
            &[&user_id, &needles],
        ),
        // Other users' activity about the caller: the other side of gifts, admin actions.
        (
            "UPDATE user_activity_logs SET metadata = gdpr_scrub_identifiers(metadata, $2) \
             WHERE entity_type IN ('user', 'gift_transfer') AND entity_id = ANY($3) \
               AND user_id IS DISTINCT FROM $1",
            &[&user_id, &needles, &about_user],
        ),
        // Other users' stored responses that name the caller (a gift to them, an admin
        // adjustment of their balance), replayed for 24 hours.
        (
            "UPDATE idempotency_keys SET response_body = gdpr_scrub_identifiers(response_body, $2) \
             WHERE user_id <> $1 AND response_body IS NOT NULL \
               AND (response_body->>'gift_id' = ANY($3) OR response_body->>'user_id' = $1)",
            &[&user_id, &needles, &gift_ids],
        ),
    ];
    for (sql, params) in statements {
        tx.execute(sql, params).await?;
    }
    Ok(())
}

/// The users row becomes a tombstone, and the identity's erasure receipt is
/// written (expired receipts of others are purged on the way).
async fn tombstone(
    tx: &Transaction<'_>,
    user_id: &str,
    identity: &Identity,
) -> Result<(), ApiError> {
    // Unique, matches users_email_format, and says nothing about the person.
    let email = format!("deleted-{}@erased.invalid", uuid::Uuid::new_v4().simple());
    tx.execute(
        "UPDATE users SET account_status = 'deleted', email = $2, auth0_id = NULL, username = NULL, \
           display_name = NULL, avatar_url = NULL, \
           notification_settings = '{\"email\": false, \"push\": false}'::jsonb, \
           profile_visibility = 'private', allow_gallery_showcase = false, \
           content_filter_level = 'moderate', preferred_language = 'en', timezone = 'UTC', \
           last_login_at = NULL, email_verified_at = NULL, referral_code = NULL \
         WHERE id = $1",
        &[&user_id, &email],
    )
    .await?;
    crate::users::receipts::purge_expired_receipts(tx).await?;
    tx.execute(
        "INSERT INTO account_erasures (subject_digest, erased_at, expires_at) \
         VALUES ($1, now(), now() + make_interval(days => $2)) \
         ON CONFLICT (subject_digest) DO UPDATE \
           SET erased_at = EXCLUDED.erased_at, expires_at = EXCLUDED.expires_at",
        &[
            &crate::users::receipts::subject_digest(&identity.subject),
            &crate::users::receipts::RECEIPT_TTL_DAYS,
        ],
    )
    .await?;
    Ok(())
}
