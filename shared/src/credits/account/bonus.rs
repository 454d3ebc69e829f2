//! `POST /api/v1/credits/daily-bonus`: once per daily window of the user
//! ([`ledger::daily_window`]: it ends at the local midnight computed when it
//! started, so changing `timezone` cannot open another claim). Claiming in
//! the window right after the last claim's window grows the streak; any later
//! window starts it again at 1. The amount is
//! `daily_bonus_base + daily_bonus_step × (min(streak, daily_bonus_max_streak) − 1)`.
//!
//! One transaction: lock the user, open the next window if the stored one
//! ended, move the streak, `last_daily_bonus_date` (the window's label) and
//! `last_daily_bonus_window_end` with a conditional update (only when the last claim's label is below this
//! window's), post one `bonus` entry, log `daily_bonus`. Concurrent claims
//! serialise on the row lock and the losers' conditional update finds
//! nothing: credited once.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::{DetailedProblem, Refusal};
use crate::activity::{self, Activity};
use crate::credits::ledger::{self, DailyWindow, Entry};
use crate::kernel::config::CreditsConfig;
use crate::kernel::error::{ApiError, FieldError, Problem};
use crate::users::account::Account;
use crate::web::http::{RawBody, RequestMeta};
use crate::web::idempotency::{self, Claim, IdempotencyKey};
use crate::web::responses::PayloadTooLarge;
use crate::web::responses::{ServerFailures, SignedIn};
use crate::web::state::AppState;

const ROUTE: &str = "/api/v1/credits/daily-bonus";

/// The streak a claim in the window labelled `today` would reach, or `None`
/// when that window's bonus is taken. Window labels grow by at least one per
/// window, so a last claim labelled `today` or later is this window's (or, for
/// accounts migrated from per-date counting, a later date's): taken. The
/// streak grows when the last claim was in the window right before this one:
/// its label is `today − 1`, or (`follows_last_claim`) it ended when this one
/// started — labels skip a date when a zone change at the turn of a window
/// puts the next local date already behind (crossing the date line eastward).
pub(super) fn next_streak(
    last: Option<NaiveDate>,
    streak: i32,
    today: NaiveDate,
    follows_last_claim: bool,
) -> Option<i32> {
    match last {
        Some(last) if last >= today => None,
        Some(last) if last.succ_opt() == Some(today) || follows_last_claim => {
            Some(streak.max(0).saturating_add(1))
        }
        _ => Some(1),
    }
}

/// The bonus for the `streak`-th day in a row; `None` if it overflows credits.
pub(super) fn amount(config: &CreditsConfig, streak: i32) -> Option<i32> {
    let day = i64::from(streak.clamp(1, config.daily_bonus_max_streak.max(1)));
    let amount =
        i64::from(config.daily_bonus_base) + i64::from(config.daily_bonus_step) * (day - 1);
    i32::try_from(amount).ok()
}

/// The route takes no fields: an empty body or `{}`.
fn no_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) if map.is_empty() => Ok(json!({})),
        // Each field named, as every route names an unknown field.
        Ok(Value::Object(map)) => Err(ApiError::from_field_errors(
            map.keys()
                .map(|key| FieldError::new(key, crate::web::input::UNKNOWN))
                .collect(),
        )),
        Ok(_) => Err(ApiError::validation(
            "body",
            "this route takes no fields; send no body or {}",
        )),
        Err(e) => Err(ApiError::BadRequest(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

/// A claimed daily bonus.
#[derive(serde::Serialize, ToSchema)]
pub(crate) struct DailyBonus {
    /// The `bonus` ledger entry.
    transaction_id: String,
    /// Credits added.
    amount: i32,
    /// Consecutive daily windows claimed, this one included.
    daily_login_streak: i32,
    /// The label of the daily window the bonus was claimed in (its local date).
    bonus_date: NaiveDate,
    /// `current_balance` after the bonus.
    balance_after: i32,
    /// When the daily window ends and the next bonus opens (`daily_resets_at` of
    /// `GET /api/v1/credits`).
    next_available_at: DateTime<Utc>,
    /// What tomorrow's bonus will be if the streak continues.
    next_amount: Option<i32>,
}

/// Claim this daily window's bonus.
///
/// Once per daily window of the caller: the window ends at the local midnight (in their
/// `timezone` of that moment) computed when it started, and a time zone change applies from the
/// next window, so it cannot open another claim. Claiming in the window right after the last
/// claim's window grows the streak, any later one starts it again at 1; the amount is
/// `DAILY_BONUS_BASE + DAILY_BONUS_STEP × (min(streak, DAILY_BONUS_MAX_STREAK) − 1)`. The
/// route takes no fields: send no body or `{}` (any `Content-Type`). Accepts
/// `Idempotency-Key`.
#[utoipa::path(
    post,
    path = "/api/v1/credits/daily-bonus",
    tag = "credits",
    operation_id = "claim_daily_bonus",
    security(("bearer" = [])),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 printable ASCII characters. Replays the stored response (with `Idempotent-Replayed: true`) for a repeated request (24 h)."),
    ),
    responses(
        (status = 201, description = "The bonus, credited.", body = DailyBonus),
        (status = 400, description = "The body is not valid JSON, or the Idempotency-Key is malformed (`/problems/bad-request`).", body = Problem, content_type = "application/problem+json"),
        (status = 413, response = PayloadTooLarge),
        (status = 409, description = "This window's bonus is already claimed: the problem carries `next_available_at` (when the daily window ends, also as `Retry-After`), `last_daily_bonus_date` and `daily_login_streak`. Or a request with this Idempotency-Key is still in progress.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds until the next bonus opens (when already claimed)."))),
        (status = 422, description = "The body is JSON other than `{}` (this route takes no fields), or the Idempotency-Key was already used with a different request (`/problems/validation-error`).", body = Problem, content_type = "application/problem+json"),
        SignedIn,
        ServerFailures,
    )
)]
pub(crate) async fn claim(
    State(state): State<AppState>,
    mut account: Account,
    IdempotencyKey(key): IdempotencyKey,
    meta: RequestMeta,
    RawBody(body): RawBody,
) -> Result<Response, Refusal> {
    let request = no_body(&body)?;
    let (tx, user) = account.begin_system().await?;
    if let Some(key) = &key
        && let Claim::Replay { status, body } =
            idempotency::claim(&tx, &user.id, key, "POST", ROUTE, &request).await?
    {
        tx.commit().await?;
        return Ok(Claim::replay(status, body));
    }

    let (zone, window, streak) = claim_window(&tx, &user.id).await?;
    let today = window.day;
    let next_at = window.ends_at;
    let amount = amount(&state.config.credits, streak)
        .ok_or_else(|| ApiError::internal("the configured daily bonus overflows"))?;
    let posted = post_bonus(&tx, &user.id, amount, streak, today, zone.as_deref(), &meta).await?;
    let response = serde_json::to_value(DailyBonus {
        transaction_id: posted.transaction_id,
        amount,
        daily_login_streak: streak,
        bonus_date: today,
        balance_after: posted.balance_after,
        next_available_at: next_at,
        next_amount: amount_after(&state.config.credits, streak),
    })
    .map_err(ApiError::internal)?;
    if let Some(key) = &key {
        idempotency::complete(&tx, &user.id, key, StatusCode::CREATED, &response).await?;
    }
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(response)).into_response())
}

/// Locks the users row, reads the daily window and claims its bonus on the
/// wallet: the user's time zone, the window and the new streak; 409 (or 404)
/// when there is nothing to claim.
async fn claim_window(
    tx: &tokio_postgres::Transaction<'_>,
    user_id: &str,
) -> Result<(Option<String>, DailyWindow, i32), Refusal> {
    // Lock order everywhere: users, then user_credits. The daily window is
    // read under the lock; it ends where it ended before any time zone change.
    let zone: Option<String> = tx
        .query_opt(
            "SELECT timezone FROM users WHERE id = $1 FOR NO KEY UPDATE",
            &[&user_id],
        )
        .await?
        .ok_or_else(|| ApiError::NotFound("no account; sign in first".into()))?
        .try_get(0)?;
    let window = ledger::daily_window(tx, user_id).await?;
    let today = window.day;

    // `< today` rather than `IS DISTINCT FROM today`: a last claim labelled
    // after this window (a per-date claim migrated from before V16) must not
    // open a second claim.
    // The streak grows when the last claim was in the window right before this
    // one (see `next_streak`).
    let claimed = tx
        .query_opt(
            "UPDATE user_credits SET \
               daily_login_streak = CASE WHEN last_daily_bonus_date = $2::date - 1 \
                                           OR last_daily_bonus_window_end = $3 \
                                         THEN greatest(daily_login_streak, 0) + 1 ELSE 1 END, \
               last_daily_bonus_date = $2, last_daily_bonus_window_end = $4, updated_at = now() \
             WHERE user_id = $1 AND (last_daily_bonus_date IS NULL OR last_daily_bonus_date < $2) \
             RETURNING daily_login_streak",
            &[&user_id, &today, &window.starts_at, &window.ends_at],
        )
        .await?;
    let Some(claimed) = claimed else {
        return Err(already_claimed(tx, user_id, &window, zone.as_deref()).await?);
    };
    let streak: i32 = claimed.try_get(0)?;
    Ok((zone, window, streak))
}

/// Posts the bonus entry and its activity row.
async fn post_bonus(
    tx: &tokio_postgres::Transaction<'_>,
    user_id: &str,
    amount: i32,
    streak: i32,
    today: NaiveDate,
    zone: Option<&str>,
    meta: &RequestMeta,
) -> Result<ledger::Posted, Refusal> {
    let posted = ledger::post(
        tx,
        user_id,
        Entry::new(
            "bonus",
            amount,
            format!("Daily bonus, day {streak} of the streak"),
        )
        .metadata(json!({
            "kind": "daily_bonus",
            "streak": streak,
            "bonus_date": today,
            "timezone": zone,
        })),
    )
    .await?;
    activity::record(
        tx,
        Activity {
            user_id: Some(user_id),
            activity_type: crate::activity::ActivityType::DailyBonus,
            entity_type: Some("credit_transaction"),
            entity_id: Some(&posted.transaction_id),
            metadata: json!({"amount": amount, "streak": streak, "bonus_date": today}),
        },
        meta,
    )
    .await?;
    Ok(posted)
}

/// Tomorrow's bonus if the streak continues.
fn amount_after(config: &CreditsConfig, streak: i32) -> Option<i32> {
    amount(config, streak.saturating_add(1))
}

/// 409 saying when the next claim opens (also as `Retry-After`), or 404
/// without a credit account: when the daily window ends, or, for a last claim
/// labelled after this window, when that label's date ends in the caller's
/// zone (the first window after it is the first that can be claimed).
async fn already_claimed(
    tx: &tokio_postgres::Transaction<'_>,
    user_id: &str,
    window: &DailyWindow,
    zone: Option<&str>,
) -> Result<Refusal, ApiError> {
    let row = tx
        .query_opt(
            "SELECT last_daily_bonus_date, daily_login_streak, \
                    CASE WHEN last_daily_bonus_date > $4 \
                         THEN greatest($2::timestamptz, local_midnight(last_daily_bonus_date + 1, $3)) \
                         ELSE $2::timestamptz END AS next_at \
             FROM user_credits WHERE user_id = $1",
            &[&user_id, &window.ends_at, &zone, &window.day],
        )
        .await?
        .ok_or_else(|| ApiError::NotFound("no credit account; sign in first".into()))?;
    let last: Option<NaiveDate> = row.try_get(0)?;
    let streak: i32 = row.try_get(1)?;
    let next_at: DateTime<Utc> = row.try_get(2)?;
    let wait = (next_at - Utc::now()).num_seconds().max(1) as u64;
    let detail = format!(
        "this daily window's bonus is already claimed; the next one opens at {} (when your daily window ends)",
        next_at.to_rfc3339()
    );
    Ok(DetailedProblem::new(
        ApiError::Conflict(detail.clone()),
        detail,
        json!({
            "last_daily_bonus_date": last,
            "daily_login_streak": streak,
            "next_available_at": next_at,
        }),
    )
    .retry_after(wait)
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn streaks_grow_on_consecutive_windows_only() {
        let today = date("2025-03-10");
        assert_eq!(next_streak(None, 0, today, false), Some(1));
        assert_eq!(
            next_streak(Some(date("2025-03-09")), 4, today, false),
            Some(5)
        );
        assert_eq!(
            next_streak(Some(date("2025-03-08")), 4, today, false),
            Some(1)
        );
        // The label skipped a date, but the window follows the claim's.
        assert_eq!(
            next_streak(Some(date("2025-03-08")), 4, today, true),
            Some(5)
        );
        assert_eq!(next_streak(Some(today), 4, today, false), None);
        assert_eq!(next_streak(Some(today), 4, today, true), None);
        // A claim labelled after this window (migrated per-date data): taken.
        assert_eq!(next_streak(Some(date("2025-03-11")), 4, today, false), None);
        // Month and year boundaries.
        assert_eq!(
            next_streak(Some(date("2024-12-31")), 1, date("2025-01-01"), false),
            Some(2)
        );
        assert_eq!(
            next_streak(Some(date("2024-02-28")), 1, date("2024-03-01"), false),
            Some(1)
        );
    }

    #[test]
    fn amounts_follow_the_streak_up_to_the_cap() {
        let config = CreditsConfig {
            daily_bonus_base: 5,
            daily_bonus_step: 2,
            daily_bonus_max_streak: 4,
            ..CreditsConfig::default()
        };
        let amounts: Vec<_> = (1..=6).map(|s| amount(&config, s)).collect();
        assert_eq!(amounts, [5, 7, 9, 11, 11, 11].map(Some));
        assert_eq!(amount(&config, 0), Some(5));
        let huge = CreditsConfig {
            daily_bonus_base: i32::MAX,
            daily_bonus_step: 1,
            daily_bonus_max_streak: 3,
            ..CreditsConfig::default()
        };
        assert_eq!(amount(&huge, 3), None);
    }

    #[test]
    fn the_route_takes_no_fields() {
        assert!(no_body(&Bytes::from_static(b"")).is_ok());
        assert!(no_body(&Bytes::from_static(b" {} ")).is_ok());
        assert!(matches!(
            no_body(&Bytes::from_static(b"{\"amount\": 100}")),
            Err(ApiError::Validation { .. })
        ));
        assert!(matches!(
            no_body(&Bytes::from_static(b"{")),
            Err(ApiError::BadRequest(_))
        ));
    }
}
