//! The ledger: the only code that changes balances.
//!
//! Invariants, for every user at every moment (checked by the property test):
//! - `current_balance` = Σ `amount` of completed `credit_transactions`;
//! - `balance_after` of each transaction is the running sum, in posting order
//!   (`created_at` is the clock time at posting, taken under the row lock);
//! - `0 ≤ reserved_balance ≤ current_balance` (also a CHECK);
//! - `reserved_balance` = Σ `reserved_credits` of the user's `held` holds.
//!
//! Every function here runs inside the caller's database transaction, as the
//! system role, and serialises per user on the `user_credits` row lock, so the
//! invariants hold under any concurrency. Balance changes are single
//! conditional `UPDATE`s: there is no read-modify-write in Rust.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_postgres::GenericClient;

use crate::kernel::error::ApiError;

/// `credit_transactions.transaction_type` values.
pub const TRANSACTION_TYPES: [&str; 10] = [
    "purchase",
    "usage",
    "refund",
    "gift_sent",
    "gift_received",
    "daily_allowance",
    "bonus",
    "referral",
    "achievement",
    "admin_adjustment",
];

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("not enough credits: {needed} needed, {available} available")]
    Insufficient { needed: i64, available: i64 },
    #[error("the user has no credit account")]
    NoAccount,
    #[error(transparent)]
    Database(#[from] tokio_postgres::Error),
}

impl From<LedgerError> for ApiError {
    fn from(err: LedgerError) -> Self {
        match err {
            LedgerError::Insufficient { needed, available } => ApiError::PaymentRequired {
                detail: format!("this needs {needed} credits and {available} are available"),
                needed,
                available,
            },
            LedgerError::NoAccount => ApiError::NotFound("no credit account; sign in first".into()),
            LedgerError::Database(e) => e.into(),
        }
    }
}

/// One ledger entry to post.
#[derive(Debug, Clone)]
pub struct Entry {
    pub transaction_type: &'static str,
    /// Positive credits in, negative credits out.
    pub amount: i32,
    pub description: String,
    pub related_entity_type: Option<&'static str>,
    pub related_entity_id: Option<String>,
    pub metadata: Value,
    pub api_endpoint: Option<String>,
    pub cost_calculation: Option<Value>,
}

impl Entry {
    pub fn new(
        transaction_type: &'static str,
        amount: i32,
        description: impl Into<String>,
    ) -> Self {
        Self {
            transaction_type,
            amount,
            description: description.into(),
            related_entity_type: None,
            related_entity_id: None,
            metadata: json!({}),
            api_endpoint: None,
            cost_calculation: None,
        }
    }

    pub fn related(mut self, entity_type: &'static str, id: impl Into<String>) -> Self {
        self.related_entity_type = Some(entity_type);
        self.related_entity_id = Some(id.into());
        self
    }

    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = metadata;
        self
    }
}

/// A posted entry.
#[derive(Debug, Clone, Serialize)]
pub struct Posted {
    pub transaction_id: String,
    pub balance_after: i32,
}

/// Posts one entry. A debit may not take the balance below what jobs hold
/// (`Insufficient` otherwise, nothing changed). Any credit (purchase, bonus,
/// gift, refund...) is followed by the repayment of debt left by a clawback
/// the balance could not cover (a second, negative `refund` entry), so the
/// balance never goes negative and the sum stays exact.
pub async fn post(
    client: &impl GenericClient,
    user_id: &str,
    entry: Entry,
) -> Result<Posted, LedgerError> {
    let posted = post_one(client, user_id, &entry).await?;
    // Repayments are negative entries, so they never trigger another repayment.
    if entry.amount > 0 {
        repay_debt(client, user_id).await?;
    }
    Ok(posted)
}

async fn post_one(
    client: &impl GenericClient,
    user_id: &str,
    entry: &Entry,
) -> Result<Posted, LedgerError> {
    let amount = entry.amount;
    let positive = amount.max(0);
    let negative = (-amount).max(0);
    let kind = entry.transaction_type;
    // Lifetime totals, by kind of entry.
    let purchased = if kind == "purchase" { positive } else { 0 };
    let gift_in = if kind == "gift_received" { positive } else { 0 };
    let gift_out = if kind == "gift_sent" { negative } else { 0 };
    let spent = if kind == "usage" { negative } else { 0 };
    let earned = if matches!(kind, "purchase" | "gift_received") {
        0
    } else {
        positive
    };
    let referral = if kind == "referral" { positive } else { 0 };
    let achievement = if kind == "achievement" { positive } else { 0 };
    // One statement: the conditional balance update and its ledger entry, so
    // the user_credits row lock is held for a single round trip.
    let row = client
        .query_opt(
            "WITH balance AS ( \
               UPDATE user_credits SET current_balance = current_balance + $2, \
                 total_purchased = total_purchased + $3, total_gifted_received = total_gifted_received + $4, \
                 total_gifted_sent = total_gifted_sent + $5, total_spent = total_spent + $6, \
                 total_earned = total_earned + $7, referral_bonus = referral_bonus + $8, \
                 achievement_bonus = achievement_bonus + $9, updated_at = now() \
               WHERE user_id = $1 AND current_balance + $2 >= reserved_balance \
               RETURNING current_balance \
             ) \
             INSERT INTO credit_transactions (user_id, transaction_type, amount, balance_after, \
               related_entity_type, related_entity_id, description, metadata, api_endpoint, \
               cost_calculation, status, processed_at, created_at) \
             SELECT $1, $10, $2, balance.current_balance, $11, $12, $13, $14, $15, $16, 'completed', \
                    clock_timestamp(), clock_timestamp() \
             FROM balance \
             RETURNING id, balance_after",
            &[
                &user_id,
                &amount,
                &purchased,
                &gift_in,
                &gift_out,
                &spent,
                &earned,
                &referral,
                &achievement,
                &kind,
                &entry.related_entity_type,
                &entry.related_entity_id,
                &entry.description,
                &entry.metadata,
                &entry.api_endpoint,
                &entry.cost_calculation,
            ],
        )
        .await?;
    let Some(row) = row else {
        let available = available(client, user_id)
            .await?
            .ok_or(LedgerError::NoAccount)?;
        return Err(LedgerError::Insufficient {
            needed: i64::from(negative),
            available: i64::from(available),
        });
    };
    let id: String = row.try_get(0)?;
    let balance_after: i32 = row.try_get(1)?;
    // Counted when posted: a transaction that fails after this (and is retried)
    // counts its postings again. The ledger itself stays the record.
    crate::kernel::metrics::credits_posted(kind, amount);
    Ok(Posted {
        transaction_id: id,
        balance_after,
    })
}

/// Takes the user's row lock, the first lock of every balance change. One lock
/// order everywhere (users, then user_credits, then the ledger, whose foreign
/// key share-locks users) keeps concurrent holds, settles and postings for a
/// user from deadlocking. Re-taking a lock the transaction holds is free.
pub async fn lock_user(client: &impl GenericClient, user_id: &str) -> Result<(), LedgerError> {
    client
        .query_opt(
            "SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE",
            &[&user_id],
        )
        .await?
        .ok_or(LedgerError::NoAccount)?;
    Ok(())
}

/// Available (unheld) purchased credits, or `None` without a credit account.
async fn available(client: &impl GenericClient, user_id: &str) -> Result<Option<i32>, LedgerError> {
    Ok(client
        .query_opt(
            "SELECT current_balance - reserved_balance FROM user_credits WHERE user_id = $1",
            &[&user_id],
        )
        .await?
        .map(|row| row.try_get(0))
        .transpose()?)
}

async fn repay_debt(client: &impl GenericClient, user_id: &str) -> Result<(), LedgerError> {
    // The row is already locked by this transaction's balance update.
    let repay: Option<i32> = client
        .query_opt(
            "SELECT least(debt_balance, current_balance - reserved_balance) FROM user_credits \
             WHERE user_id = $1 AND debt_balance > 0 AND current_balance > reserved_balance",
            &[&user_id],
        )
        .await?
        .map(|row| row.try_get(0))
        .transpose()?;
    if let Some(repay) = repay.filter(|r| *r > 0) {
        post_one(
            client,
            user_id,
            &Entry::new("refund", -repay, "Repayment of credits owed after a refund"),
        )
        .await?;
        client
            .execute(
                "UPDATE user_credits SET debt_balance = debt_balance - $2 WHERE user_id = $1",
                &[&user_id, &repay],
            )
            .await?;
    }
    Ok(())
}

/// Opens the user's next daily window if the stored one has ended (or none
/// is open yet), resetting the free-generation and allowance counters; `true`
/// when counters were reset. Called lazily by every transaction that reads
/// the counters. A window ends at the instant stored when it started
/// (`users.quota_resets_at`): changing the time zone never moves it, the new
/// zone takes effect from the next window (see `migrations/V16__daily_windows.sql`).
pub async fn reset_daily(client: &impl GenericClient, user_id: &str) -> Result<bool, LedgerError> {
    Ok(client
        .query_one("SELECT credits_reset_daily($1)", &[&user_id])
        .await?
        .try_get(0)?)
}

/// The scheduler's bulk reset (the same function for every user whose window
/// has ended); returns how many users were reset.
pub async fn reset_daily_all(client: &impl GenericClient) -> Result<i32, LedgerError> {
    Ok(client
        .query_one("SELECT credits_reset_daily_all()", &[])
        .await?
        .try_get(0)?)
}

/// A user's daily window: every daily counter (free generations, allowance,
/// daily bonus, gift cap, endpoints' `daily_limit`) counts within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DailyWindow {
    /// The window's label (`users.quota_day`): a local date, growing by at
    /// least one per window, so it names one window of the user.
    pub day: NaiveDate,
    /// When it started (`users.last_reset_date`).
    pub starts_at: DateTime<Utc>,
    /// When it ends (`users.quota_resets_at`), fixed when it started.
    pub ends_at: DateTime<Utc>,
}

/// The user's open daily window, after the lazy reset (which opens one if
/// the stored one has ended). `NoAccount` for an unknown user.
pub async fn daily_window(
    client: &impl GenericClient,
    user_id: &str,
) -> Result<DailyWindow, LedgerError> {
    reset_daily(client, user_id).await?;
    let row = client
        .query_opt(
            "SELECT quota_day, last_reset_date, quota_resets_at FROM users WHERE id = $1",
            &[&user_id],
        )
        .await?
        .ok_or(LedgerError::NoAccount)?;
    let day: Option<NaiveDate> = row.try_get(0)?;
    let starts_at: DateTime<Utc> = row.try_get(1)?;
    let ends_at: Option<DateTime<Utc>> = row.try_get(2)?;
    // The reset above always leaves a window open; without one there is no account to speak of.
    match (day, ends_at) {
        (Some(day), Some(ends_at)) => Ok(DailyWindow {
            day,
            starts_at,
            ends_at,
        }),
        _ => Err(LedgerError::NoAccount),
    }
}
