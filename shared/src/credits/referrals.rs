//! Referral rewards: when an account that signed up with someone's referral
//! code ([`crate::users::referrals`]) first pays for a purchase, the referrer
//! and the new account each get `REFERRAL_CREDITS` as a `referral` ledger
//! entry (so `user_credits.referral_bonus` follows the ledger), once.
//!
//! The purchase qualifies once it is past the refund window the platform uses
//! for gifts (`GIFT_HOLD_DAYS`, default 7) and has been neither refunded nor
//! disputed: buying, collecting the referral credits and refunding the
//! purchase gains nothing. A referral is settled exactly once: its row is
//! locked and its `outcome` written in the same transaction as the two
//! entries. Settling runs right after a payment is credited (which settles at
//! once only with `GIFT_HOLD_DAYS=0`) and from the scheduler's `outbox-sweep`,
//! which settles the rest as their purchases come of age. At most
//! `REFERRAL_MONTHLY_CAP` referrals of one referrer are rewarded per calendar
//! month (UTC): counted after the referrer's row is locked, so concurrent
//! settlements cannot both take the last place. A referrer who is no longer
//! active by then gets nothing, and neither does the new account.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use tokio_postgres::{Client, GenericClient};
use utoipa::ToSchema;

use super::ledger::{self, Entry};
use crate::kernel::config::CreditsConfig;
use crate::kernel::error::ApiError;
use crate::users::account::Account;
use crate::web::responses::{ServerFailures, SignedIn};
use crate::web::state::AppState;

/// A purchase that qualifies a referral (order `o`, hold days as parameter `$2`): paid at
/// least `GIFT_HOLD_DAYS` ago and neither refunded nor disputed, in any part. Until then a
/// refund or a dispute could still take the payment back, and a referral paid on it would be
/// free credits for two accounts.
const QUALIFYING: &str = "o.paid_at IS NOT NULL \
     AND o.paid_at <= now() - make_interval(days => $2::int) \
     AND coalesce(o.refunded_credits, 0) = 0 AND coalesce(o.disputed_credits, 0) = 0";

/// How a referral was settled (the `referrals.outcome` values).
pub const REWARDED: &str = "rewarded";
pub const CAPPED: &str = "capped";
pub const REFERRER_INACTIVE: &str = "referrer_inactive";

/// Settles the referral of `referred_id` if it waits and the account has a
/// paid purchase; answers the outcome, `None` when there was nothing to settle.
pub async fn settle(
    client: &mut Client,
    referred_id: &str,
    config: &CreditsConfig,
) -> Result<Option<&'static str>, ApiError> {
    let tx = client.transaction().await?;
    let waiting = tx
        .query_opt(
            "SELECT referrer_id FROM referrals WHERE referred_user_id = $1 AND outcome IS NULL \
             FOR UPDATE",
            &[&referred_id],
        )
        .await?;
    let Some(waiting) = waiting else {
        return Ok(None);
    };
    let referrer_id: String = waiting.try_get(0)?;
    let paid: Option<String> = tx
        .query_opt(
            &format!(
                "SELECT id FROM purchase_orders o WHERE o.user_id = $1 AND {QUALIFYING} \
                 ORDER BY paid_at, id LIMIT 1"
            ),
            &[&referred_id, &config.gift_hold_days],
        )
        .await?
        .map(|row| row.try_get(0))
        .transpose()?;
    let Some(order_id) = paid else {
        return Ok(None);
    };
    // Both balances change: their users are locked in id order, as a gift locks them.
    let (first, second) = if referrer_id.as_str() < referred_id {
        (referrer_id.as_str(), referred_id)
    } else {
        (referred_id, referrer_id.as_str())
    };
    ledger::lock_user(&tx, first).await?;
    ledger::lock_user(&tx, second).await?;
    let outcome = outcome_for(&tx, &referrer_id, config).await?;
    let credits = if outcome == REWARDED {
        config.referral_credits
    } else {
        0
    };
    if credits > 0 {
        let to_referrer = Entry::new(
            "referral",
            credits,
            "Referral reward: someone you referred made their first purchase",
        )
        .related("referral", referred_id);
        ledger::post(&tx, &referrer_id, to_referrer).await?;
        let to_referred = Entry::new(
            "referral",
            credits,
            "Welcome reward: your first purchase after joining through a referral",
        )
        .related("referral", referred_id);
        ledger::post(&tx, referred_id, to_referred).await?;
    }
    tx.execute(
        "UPDATE referrals SET outcome = $2, settled_at = now(), qualifying_order_id = $3, \
           credits_each = $4 \
         WHERE referred_user_id = $1 AND outcome IS NULL",
        &[&referred_id, &outcome, &order_id, &credits],
    )
    .await?;
    tx.commit().await?;
    tracing::info!(
        referred_id,
        referrer_id,
        outcome,
        credits,
        "referral settled"
    );
    Ok(Some(outcome))
}

/// Rewarded, capped, or nothing for an inactive referrer; read under the referrer's lock.
async fn outcome_for(
    client: &impl GenericClient,
    referrer_id: &str,
    config: &CreditsConfig,
) -> Result<&'static str, ApiError> {
    let row = client
        .query_one(
            "SELECT u.account_status = 'active', \
                    (SELECT count(*) FROM referrals r WHERE r.referrer_id = u.id \
                       AND r.outcome = 'rewarded' \
                       AND r.settled_at >= date_trunc('month', now() AT TIME ZONE 'UTC') \
                                           AT TIME ZONE 'UTC') \
             FROM users u WHERE u.id = $1",
            &[&referrer_id],
        )
        .await?;
    let active: Option<bool> = row.try_get(0)?;
    let rewarded_this_month: i64 = row.try_get(1)?;
    Ok(if active != Some(true) {
        REFERRER_INACTIVE
    } else if rewarded_this_month >= i64::from(config.referral_monthly_cap) {
        CAPPED
    } else {
        REWARDED
    })
}

/// Settles every waiting referral whose account has paid (at most `limit`):
/// the scheduler's safety net for a settlement a crash interrupted.
pub async fn settle_waiting(
    client: &mut Client,
    config: &CreditsConfig,
    limit: i64,
) -> Result<usize, ApiError> {
    let due: Vec<String> = client
        .query(
            &format!(
                "SELECT r.referred_user_id FROM referrals r \
             WHERE r.outcome IS NULL AND EXISTS (SELECT 1 FROM purchase_orders o \
               WHERE o.user_id = r.referred_user_id AND {QUALIFYING}) \
             ORDER BY r.created_at LIMIT $1"
            ),
            &[&limit, &config.gift_hold_days],
        )
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    let mut settled = 0;
    for referred_id in due {
        if settle(client, &referred_id, config).await?.is_some() {
            settled += 1;
        }
    }
    Ok(settled)
}

/// The caller's referral code and how their referrals went.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReferralSummary {
    /// The code to share: a new account that names it at its first sign-in
    /// (`POST /api/v1/auth/session` with `{"referral_code": ...}`) is referred by the caller.
    pub code: String,
    /// Accounts that signed up with the code.
    pub referred: i64,
    /// Of those, the ones not settled yet (no paid purchase so far).
    pub waiting: i64,
    /// Rewarded referrals, ever and this calendar month (UTC).
    pub rewarded: i64,
    pub rewarded_this_month: i64,
    /// How many referrals a month are rewarded (`REFERRAL_MONTHLY_CAP`).
    pub monthly_cap: i32,
    /// What the caller and the new account each get per rewarded referral (`REFERRAL_CREDITS`).
    pub credits_each: i32,
    /// Every `referral` credit the caller got, as the ledger totals it
    /// (`user_credits.referral_bonus`, a welcome reward included).
    pub referral_bonus: i32,
    /// Whether the caller was referred, and how that was settled
    /// (`waiting`, `rewarded`, `capped`, `referrer_inactive`); `null` if not referred.
    pub own_referral: Option<String>,
}

/// The caller's referral code and referrals.
///
/// The code is given out on first use. A new account that names it at its first sign-in is
/// linked to the caller once and for good; when that account first pays for a purchase, both
/// get `credits_each` `referral` credits, for at most `monthly_cap` referrals a month.
#[utoipa::path(
    get,
    path = "/api/v1/credits/referrals",
    tag = "credits",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's referral code and referrals.", body = ReferralSummary),
        SignedIn,
        ServerFailures,
    )
)]
pub(crate) async fn summary(
    State(state): State<AppState>,
    account: Account,
) -> Result<Json<ReferralSummary>, ApiError> {
    let config = &state.config.credits;
    let user_id = &account.user.id;
    let client = account.client();
    let code = crate::users::referrals::code_of(client, user_id).await?;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM referrals WHERE referrer_id = $1), \
                    (SELECT count(*) FROM referrals WHERE referrer_id = $1 AND outcome IS NULL), \
                    (SELECT count(*) FROM referrals WHERE referrer_id = $1 AND outcome = 'rewarded'), \
                    (SELECT count(*) FROM referrals WHERE referrer_id = $1 AND outcome = 'rewarded' \
                       AND settled_at >= date_trunc('month', now() AT TIME ZONE 'UTC') \
                                         AT TIME ZONE 'UTC'), \
                    (SELECT coalesce(referral_bonus, 0) FROM user_credits WHERE user_id = $1), \
                    (SELECT coalesce(outcome, 'waiting') FROM referrals \
                       WHERE referred_user_id = $1)",
            &[user_id],
        )
        .await?;
    Ok(Json(ReferralSummary {
        code,
        referred: row.try_get(0)?,
        waiting: row.try_get(1)?,
        rewarded: row.try_get(2)?,
        rewarded_this_month: row.try_get(3)?,
        monthly_cap: config.referral_monthly_cap,
        credits_each: config.referral_credits,
        referral_bonus: row.try_get::<_, Option<i32>>(4)?.unwrap_or(0),
        own_referral: row.try_get(5)?,
    }))
}
