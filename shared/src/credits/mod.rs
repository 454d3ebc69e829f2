//! The credit engine: pricing, buckets and holds, the ledger, daily resets and
//! bonuses. The ledger API here is what the job dispatcher and the worker call.
//!
//! It may use [`crate::users`] and [`crate::activity`]; characters, jobs,
//! moderation and gdpr use it, never the other way round.

pub mod account;
pub mod admin;
pub mod engine;
pub mod gifting;
pub mod holds;
pub mod ledger;
pub mod money;
pub mod offers;
pub mod pricing;
pub mod purchases;
pub mod referrals;
pub mod routes;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;

use crate::kernel::error::ApiError;

/// `GET /api/v1/credits`: the caller's balances and today's allowances.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Balance {
    /// Credits owned: the sum of the caller's completed ledger entries.
    pub current_balance: i32,
    /// The part of `current_balance` held by queued and running jobs.
    pub reserved_balance: i32,
    /// `current_balance − reserved_balance`: what can be spent or gifted now.
    pub available: i32,
    /// Credits owed after a refund or dispute the balance could not cover; later credits repay
    /// it first.
    pub debt_balance: i32,
    /// What `POST /api/v1/credits/gifts` may move now: `available − debt_balance −
    /// not_giftable_yet`, never below 0. Bonuses, gifts received and purchases paid at least
    /// `GIFT_HOLD_DAYS` ago are giftable; credits spent come out of this part first.
    pub giftable: i32,
    /// Credits of purchases (bonus included) paid less than `GIFT_HOLD_DAYS` ago that a refund
    /// or a dispute could still take back: kept from gifts until then.
    pub not_giftable_yet: i32,
    /// When the next of those purchases becomes giftable (`null`: none is waiting).
    pub next_giftable_at: Option<DateTime<Utc>>,
    /// A payment of the account is disputed with the bank: gifts and purchases are refused
    /// (403 `/problems/account-frozen`) until the dispute is closed.
    pub frozen: bool,
    /// Credits per daily window that pay for generations before purchased ones.
    pub daily_allowance: i32,
    pub daily_allowance_used: i32,
    pub daily_allowance_left: i32,
    /// Free generations per daily window (each covers a generation's whole price).
    pub free_generations_quota: i32,
    pub free_generations_used: i32,
    pub free_generations_left: i32,
    /// The label of the daily window the counters belong to: the local date, in the time
    /// zone in force when the window started, that it stands for.
    pub daily_reset_date: NaiveDate,
    /// When the daily window started.
    pub daily_window_started_at: DateTime<Utc>,
    /// When the daily counters (free generations, allowance, daily bonus, gift cap,
    /// endpoints' daily limits) start over: the local midnight computed when the window
    /// started. A time zone change does not move it; the new zone applies from the next window.
    pub daily_resets_at: DateTime<Utc>,
    pub total_earned: i32,
    pub total_spent: i32,
    pub total_purchased: i32,
    pub total_gifted_received: i32,
    pub total_gifted_sent: i32,
    pub referral_bonus: i32,
    pub achievement_bonus: i32,
    pub daily_login_streak: i32,
    pub last_daily_bonus_date: Option<NaiveDate>,
}

/// The balance, after the lazy daily reset (in the caller's transaction);
/// purchases are kept from gifts for `gift_hold_days` (`GIFT_HOLD_DAYS`).
pub async fn balance(
    client: &impl GenericClient,
    user_id: &str,
    gift_hold_days: i32,
) -> Result<Balance, ApiError> {
    let window = ledger::daily_window(client, user_id).await?;
    let row = client
        .query_opt(
            "SELECT c.current_balance, c.reserved_balance, c.debt_balance, c.daily_allowance, c.daily_used, \
                    c.total_earned, c.total_spent, c.total_purchased, c.total_gifted_received, \
                    c.total_gifted_sent, c.referral_bonus, c.achievement_bonus, c.daily_login_streak, \
                    c.last_daily_bonus_date, u.daily_quota, u.daily_used AS free_used \
             FROM user_credits c JOIN users u ON u.id = c.user_id WHERE c.user_id = $1",
            &[&user_id],
        )
        .await?
        .ok_or_else(|| ApiError::NotFound("no credit account; sign in first".into()))?;
    let current: i32 = row.try_get("current_balance")?;
    let reserved: i32 = row.try_get("reserved_balance")?;
    let allowance: i32 = row.try_get("daily_allowance")?;
    let allowance_used: i32 = row.try_get("daily_used")?;
    let quota: i32 = row.try_get("daily_quota")?;
    let free_used: i32 = row.try_get("free_used")?;
    let gifts = gifting::giftable(client, user_id, gift_hold_days)
        .await?
        .ok_or_else(|| ApiError::NotFound("no credit account; sign in first".into()))?;
    let frozen = gifting::is_frozen(client, user_id).await?;
    Ok(Balance {
        current_balance: current,
        reserved_balance: reserved,
        available: current - reserved,
        debt_balance: row.try_get("debt_balance")?,
        giftable: gifts.giftable,
        not_giftable_yet: gifts.not_giftable_yet,
        next_giftable_at: gifts.next_giftable_at,
        frozen,
        daily_allowance: allowance,
        daily_allowance_used: allowance_used,
        daily_allowance_left: (allowance - allowance_used).max(0),
        free_generations_quota: quota,
        free_generations_used: free_used,
        free_generations_left: (quota - free_used).max(0),
        daily_reset_date: window.day,
        daily_window_started_at: window.starts_at,
        daily_resets_at: window.ends_at,
        total_earned: row.try_get("total_earned")?,
        total_spent: row.try_get("total_spent")?,
        total_purchased: row.try_get("total_purchased")?,
        total_gifted_received: row.try_get("total_gifted_received")?,
        total_gifted_sent: row.try_get("total_gifted_sent")?,
        referral_bonus: row.try_get("referral_bonus")?,
        achievement_bonus: row.try_get("achievement_bonus")?,
        daily_login_streak: row.try_get("daily_login_streak")?,
        last_daily_bonus_date: row.try_get("last_daily_bonus_date")?,
    })
}
