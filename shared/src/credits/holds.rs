//! Holds: what a generation job reserves when dispatched, settled on
//! completion or released on failure, cancel or timeout — exactly once each,
//! because both are conditional updates of the hold's status.
//!
//! Spending order: one free daily generation (`users.daily_quota − daily_used`)
//! covers the whole price; otherwise the subscription's daily allowance
//! (`user_credits.daily_allowance − daily_used`), then purchased credits, moved
//! into `reserved_balance` until the job settles.

use serde::Serialize;
use serde_json::{Value, json};
use tokio_postgres::GenericClient;

use super::ledger::{self, Entry, LedgerError};
use super::pricing::Quote;

/// How a hold was paid.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Hold {
    pub job_id: String,
    pub price: i32,
    pub free_generation: bool,
    pub allowance_credits: i32,
    pub reserved_credits: i32,
}

/// Places the hold for `job_id` (a `generation_jobs` row of `user_id` made in
/// the same transaction). `Insufficient` when no bucket mix covers the price;
/// then nothing changed.
pub async fn hold(
    client: &impl GenericClient,
    user_id: &str,
    job_id: &str,
    quote: &Quote,
) -> Result<Hold, LedgerError> {
    // Lock order everywhere: users, then user_credits (see ledger::lock_user).
    ledger::lock_user(client, user_id).await?;
    ledger::reset_daily(client, user_id).await?;
    // A free daily generation, if one is left today.
    let free = client
        .query_opt(
            "UPDATE users SET daily_used = daily_used + 1 WHERE id = $1 AND daily_used < daily_quota RETURNING 1",
            &[&user_id],
        )
        .await?
        .is_some();
    let row = client
        .query_opt(
            "SELECT daily_allowance - daily_used, current_balance - reserved_balance, daily_reset_date \
             FROM user_credits WHERE user_id = $1 FOR UPDATE",
            &[&user_id],
        )
        .await?
        .ok_or(LedgerError::NoAccount)?;
    let allowance_left: i32 = row.try_get::<_, i32>(0)?.max(0);
    let purchased_left: i32 = row.try_get::<_, i32>(1)?.max(0);
    let quota_day: chrono::NaiveDate = row.try_get(2)?;
    let (allowance, reserved) = if free {
        (0, 0)
    } else {
        let allowance = allowance_left.min(quote.price);
        let reserved = quote.price - allowance;
        if reserved > purchased_left {
            return Err(LedgerError::Insufficient {
                needed: i64::from(quote.price),
                available: i64::from(allowance_left) + i64::from(purchased_left),
            });
        }
        (allowance, reserved)
    };
    if allowance > 0 || reserved > 0 {
        client
            .execute(
                "UPDATE user_credits SET daily_used = daily_used + $2, reserved_balance = reserved_balance + $3, \
                   updated_at = now() WHERE user_id = $1",
                &[&user_id, &allowance, &reserved],
            )
            .await?;
    }
    let calculation = with_buckets(&quote.calculation, free, allowance, reserved);
    client
        .execute(
            "INSERT INTO credit_holds (job_id, user_id, config_id, price, free_generation, allowance_credits, \
               reserved_credits, quota_day, cost_calculation) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &job_id,
                &user_id,
                &quote.config_id,
                &quote.price,
                &free,
                &allowance,
                &reserved,
                &quota_day,
                &calculation,
            ],
        )
        .await?;
    Ok(Hold {
        job_id: job_id.to_string(),
        price: quote.price,
        free_generation: free,
        allowance_credits: allowance,
        reserved_credits: reserved,
    })
}

fn with_buckets(calculation: &Value, free: bool, allowance: i32, reserved: i32) -> Value {
    let mut calculation = calculation.clone();
    if let Some(object) = calculation.as_object_mut() {
        object.insert(
            "paid_with".into(),
            json!({"free_generation": free, "daily_allowance": allowance, "purchased_credits": reserved}),
        );
    }
    calculation
}

/// Locks the user behind a job's hold before the hold itself, keeping the
/// lock order of [`ledger::lock_user`].
async fn lock_holder(client: &impl GenericClient, job_id: &str) -> Result<(), LedgerError> {
    let holder: Option<String> = client
        .query_opt(
            "SELECT user_id FROM credit_holds WHERE job_id = $1",
            &[&job_id],
        )
        .await?
        .map(|row| row.try_get(0))
        .transpose()?;
    if let Some(user_id) = holder {
        ledger::lock_user(client, &user_id).await?;
    }
    Ok(())
}

/// What settling posted.
#[derive(Debug, Clone, Serialize)]
pub struct Settlement {
    pub hold: Hold,
    pub transaction_id: String,
    pub balance_after: i32,
}

/// Settles a job's hold: one `usage` transaction for the purchased part (zero
/// when a free generation or the allowance paid), the hold released from
/// `reserved_balance`, in the caller's transaction. `None` when the hold was
/// already settled or released: a redelivered completion has no effect.
pub async fn settle(
    client: &impl GenericClient,
    job_id: &str,
) -> Result<Option<Settlement>, LedgerError> {
    let Some(row) = client
        .query_opt(
            "UPDATE credit_holds SET status = 'settled', resolved_at = now() \
             WHERE job_id = $1 AND status = 'held' \
             RETURNING user_id, price, free_generation, allowance_credits, reserved_credits, cost_calculation",
            &[&job_id],
        )
        .await?
    else {
        return Ok(None);
    };
    let user_id: String = row.try_get(0)?;
    let hold = Hold {
        job_id: job_id.to_string(),
        price: row.try_get(1)?,
        free_generation: row.try_get(2)?,
        allowance_credits: row.try_get(3)?,
        reserved_credits: row.try_get(4)?,
    };
    let calculation: Value = row.try_get(5)?;
    client
        .execute(
            "UPDATE user_credits SET reserved_balance = reserved_balance - $2 WHERE user_id = $1",
            &[&user_id, &hold.reserved_credits],
        )
        .await?;
    let mut entry = Entry::new(
        "usage",
        -hold.reserved_credits,
        format!("Generation job {job_id}"),
    )
    .related("generation_job", job_id);
    entry.api_endpoint = Some("POST /api/v1/characters/:id/generate".into());
    entry.cost_calculation = Some(calculation);
    let posted = ledger::post(client, &user_id, entry).await?;
    Ok(Some(Settlement {
        hold,
        transaction_id: posted.transaction_id,
        balance_after: posted.balance_after,
    }))
}

/// Releases a job's hold: purchased credits back to available, and the free
/// generation and allowance back to today's counters (unless the user's day
/// has turned since, when the counters already started over). Posts nothing.
/// `false` when the hold was already settled or released.
pub async fn release(client: &impl GenericClient, job_id: &str) -> Result<bool, LedgerError> {
    lock_holder(client, job_id).await?;
    let Some(row) = client
        .query_opt(
            "UPDATE credit_holds SET status = 'released', resolved_at = now() \
             WHERE job_id = $1 AND status = 'held' \
             RETURNING user_id, free_generation, allowance_credits, reserved_credits, quota_day",
            &[&job_id],
        )
        .await?
    else {
        return Ok(false);
    };
    let user_id: String = row.try_get(0)?;
    let free: bool = row.try_get(1)?;
    let allowance: i32 = row.try_get(2)?;
    let reserved: i32 = row.try_get(3)?;
    let quota_day: chrono::NaiveDate = row.try_get(4)?;
    ledger::reset_daily(client, &user_id).await?;
    if free {
        client
            .execute(
                "UPDATE users SET daily_used = greatest(daily_used - 1, 0) \
                 WHERE id = $1 AND local_date_of(last_reset_date, timezone) <= $2 \
                   AND user_local_date(timezone) = $2",
                &[&user_id, &quota_day],
            )
            .await?;
    }
    client
        .execute(
            "UPDATE user_credits SET reserved_balance = reserved_balance - $2, \
               daily_used = CASE WHEN daily_reset_date = $4 THEN greatest(daily_used - $3, 0) ELSE daily_used END, \
               updated_at = now() \
             WHERE user_id = $1",
            &[&user_id, &reserved, &allowance, &quota_day],
        )
        .await?;
    Ok(true)
}
