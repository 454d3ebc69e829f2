//! Holds: what a generation job reserves when dispatched, settled on
//! completion or released on failure, cancel or timeout — exactly once each,
//! because both are conditional updates of the hold's status.
//!
//! Spending order: one free daily generation (`users.daily_quota − daily_used`)
//! covers the whole price; otherwise the subscription's daily allowance
//! (`user_credits.daily_allowance − daily_used`), then purchased credits, moved
//! into `reserved_balance` until the job settles. Both daily counters belong to
//! the user's daily window ([`ledger::daily_window`]); a hold records the
//! window's label in `quota_day`.
//!
//! What settling charges depends on what was delivered: the full price for
//! images from an image server, the hold's `fallback_price` (0 unless the
//! pricing says otherwise) for the procedural placeholder. A charge of 0 is a
//! release: everything goes back and nothing is posted.

use serde::Serialize;
use serde_json::{Value, json};
use tokio_postgres::GenericClient;

use super::ledger::{self, Entry, LedgerError};
use super::pricing::{GENERATE, Quote};

/// How a hold was paid.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Hold {
    pub job_id: String,
    pub price: i32,
    pub free_generation: bool,
    pub allowance_credits: i32,
    pub reserved_credits: i32,
    /// What a placeholder from the procedural fallback would be charged.
    pub fallback_price: i32,
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
    // The free generation and the allowance come from the user's open daily
    // window; the hold is keyed to it by its label.
    let quota_day = ledger::daily_window(client, user_id).await?.day;
    // A free daily generation, if one is left in this window.
    let free = client
        .query_opt(
            "UPDATE users SET daily_used = daily_used + 1 WHERE id = $1 AND daily_used < daily_quota RETURNING 1",
            &[&user_id],
        )
        .await?
        .is_some();
    let row = client
        .query_opt(
            "SELECT daily_allowance - daily_used, current_balance - reserved_balance \
             FROM user_credits WHERE user_id = $1 FOR UPDATE",
            &[&user_id],
        )
        .await?
        .ok_or(LedgerError::NoAccount)?;
    let allowance_left: i32 = row.try_get::<_, i32>(0)?.max(0);
    let purchased_left: i32 = row.try_get::<_, i32>(1)?.max(0);
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
               reserved_credits, quota_day, cost_calculation, fallback_price) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
                &quote.fallback_price,
            ],
        )
        .await?;
    Ok(Hold {
        job_id: job_id.to_string(),
        price: quote.price,
        free_generation: free,
        allowance_credits: allowance,
        reserved_credits: reserved,
        fallback_price: quote.fallback_price,
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

/// What a job delivered, which decides what its hold is charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Images from an image server: the full price.
    Generated,
    /// A placeholder from the procedural fallback: the hold's `fallback_price`.
    Placeholder,
}

/// What settling did.
#[derive(Debug, Clone, Serialize)]
pub struct Settlement {
    pub hold: Hold,
    /// Credits charged from the buckets (0 when the hold was released instead).
    pub charged: i32,
    /// The `usage` entry; `None` when nothing was charged (the hold was released).
    pub transaction_id: Option<String>,
    pub balance_after: i32,
}

/// Settles a job's hold with the price of the full delivery (see
/// [`settle_for`]).
pub async fn settle(
    client: &impl GenericClient,
    job_id: &str,
) -> Result<Option<Settlement>, LedgerError> {
    settle_for(client, job_id, Delivery::Generated).await
}

/// Settles a job's hold for what it delivered, in the caller's transaction:
/// the charge (the price, or the fallback price for a placeholder) is taken
/// from the buckets in the order they were held — the free generation covers
/// any non-zero charge, else the allowance first, then purchased credits —
/// and one `usage` transaction posts the purchased part; what the charge did
/// not use goes back as a release would give it. A charge of 0 releases the
/// hold (nothing posted). `None` when the hold was already settled or
/// released: a redelivered completion has no effect.
pub async fn settle_for(
    client: &impl GenericClient,
    job_id: &str,
    delivery: Delivery,
) -> Result<Option<Settlement>, LedgerError> {
    let Some((row, user_id, hold)) = lock_held(client, job_id).await? else {
        return Ok(None);
    };
    let charge = match delivery {
        Delivery::Generated => hold.price,
        Delivery::Placeholder => hold.fallback_price.min(hold.price),
    };
    if delivery == Delivery::Placeholder && charge == 0 {
        return release_unpaid(client, job_id, &user_id, hold)
            .await
            .map(Some);
    }
    let split = Charge::split(&hold, charge);
    let mut calculation: Value = row.try_get(6)?;
    if let Some(object) = calculation.as_object_mut() {
        object.insert(
            "charged".into(),
            json!({"delivery": match delivery { Delivery::Generated => "generated", Delivery::Placeholder => "placeholder" },
                   "credits": charge, "daily_allowance": split.allowance, "purchased_credits": split.purchased}),
        );
    }
    client
        .execute(
            "UPDATE credit_holds SET status = 'settled', resolved_at = now(), charged = $2 WHERE job_id = $1",
            &[&job_id, &charge],
        )
        .await?;
    // The hold's purchased credits leave the reserve; the allowance the charge
    // did not use goes back to the window it was taken from, if still open.
    ledger::reset_daily(client, &user_id).await?;
    give_back(
        client,
        &user_id,
        hold.reserved_credits,
        hold.allowance_credits - split.allowance,
        job_id,
    )
    .await?;
    let mut entry = Entry::new(
        "usage",
        -split.purchased,
        format!("Generation job {job_id}"),
    )
    .related("generation_job", job_id);
    entry.api_endpoint = Some(GENERATE.label());
    entry.cost_calculation = Some(calculation);
    let posted = ledger::post(client, &user_id, entry).await?;
    Ok(Some(Settlement {
        hold,
        charged: charge,
        transaction_id: Some(posted.transaction_id),
        balance_after: posted.balance_after,
    }))
}

/// Locks the job's holder, then its hold if still `held`: the hold's row
/// (its `cost_calculation` is read later), its user and the hold.
async fn lock_held(
    client: &impl GenericClient,
    job_id: &str,
) -> Result<Option<(tokio_postgres::Row, String, Hold)>, LedgerError> {
    lock_holder(client, job_id).await?;
    let Some(row) = client
        .query_opt(
            "SELECT user_id, price, free_generation, allowance_credits, reserved_credits, fallback_price, \
               cost_calculation FROM credit_holds WHERE job_id = $1 AND status = 'held' FOR UPDATE",
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
        fallback_price: row.try_get(5)?,
    };
    Ok(Some((row, user_id, hold)))
}

/// A placeholder worth nothing: the hold is released instead (with its own
/// bookkeeping), and the settlement says nothing was charged.
async fn release_unpaid(
    client: &impl GenericClient,
    job_id: &str,
    user_id: &str,
    hold: Hold,
) -> Result<Settlement, LedgerError> {
    // Nothing delivered is worth charging: a release, with its own bookkeeping.
    release(client, job_id).await?;
    let balance_after: i32 = client
        .query_one(
            "SELECT current_balance FROM user_credits WHERE user_id = $1",
            &[&user_id],
        )
        .await?
        .try_get(0)?;
    Ok(Settlement {
        hold,
        charged: 0,
        transaction_id: None,
        balance_after,
    })
}

/// How a charge of at most the hold's price is taken from what the hold
/// took: the free generation covers it whole; else the allowance first,
/// then purchased credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Charge {
    allowance: i32,
    purchased: i32,
}

impl Charge {
    fn split(hold: &Hold, charge: i32) -> Self {
        if hold.free_generation {
            return Self {
                allowance: 0,
                purchased: 0,
            };
        }
        let charge = charge.clamp(0, hold.allowance_credits + hold.reserved_credits);
        let allowance = charge.min(hold.allowance_credits);
        Self {
            allowance,
            purchased: charge - allowance,
        }
    }
}

/// Returns `reserved` purchased credits from the reserve and `allowance`
/// credits to the allowance of the daily window the hold was taken from
/// (nothing if that window has ended since: the caller has run the lazy
/// daily reset, so the user's open window has another label).
async fn give_back(
    client: &impl GenericClient,
    user_id: &str,
    reserved: i32,
    allowance: i32,
    job_id: &str,
) -> Result<(), LedgerError> {
    client
        .execute(
            "UPDATE user_credits uc SET reserved_balance = reserved_balance - $2, \
               daily_used = CASE WHEN u.quota_day = h.quota_day THEN greatest(uc.daily_used - $3, 0) \
                                 ELSE uc.daily_used END, \
               updated_at = now() \
             FROM credit_holds h, users u WHERE uc.user_id = $1 AND h.job_id = $4 AND u.id = uc.user_id",
            &[&user_id, &reserved, &allowance, &job_id],
        )
        .await?;
    Ok(())
}

/// Releases a job's hold: purchased credits back to available, and the free
/// generation and allowance back to the counters of the daily window they
/// were taken from, if it is still open (once it has ended, the counters
/// already started over: yesterday's free generation is not today's). Posts
/// nothing. `false` when the hold was already settled or released.
pub async fn release(client: &impl GenericClient, job_id: &str) -> Result<bool, LedgerError> {
    lock_holder(client, job_id).await?;
    let Some(row) = client
        .query_opt(
            "UPDATE credit_holds SET status = 'released', resolved_at = now(), charged = 0 \
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
                 WHERE id = $1 AND quota_day = $2",
                &[&user_id, &quota_day],
            )
            .await?;
    }
    give_back(client, &user_id, reserved, allowance, job_id).await?;
    Ok(true)
}
