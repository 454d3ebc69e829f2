//! `charge.dispute.*`: a buyer's bank disputes a payment.
//!
//! Every dispute event carries the Dispute object (`id`, `charge`,
//! `payment_intent`, `amount`, `currency`, `status`, `reason`), so each is
//! handled the same way, by what the dispute's status says now:
//!
//! - **open** (`warning_needs_response`, `warning_under_review`,
//!   `needs_response`, `under_review`, or a status this code does not know,
//!   except on `closed`): the dispute's share of the order's credits (the
//!   disputed amount's share of the price, rounded down) is taken back like a
//!   refund — up to the available balance, the rest as `debt_balance` — and
//!   the buyer's gifts and purchases are frozen (403
//!   `/problems/account-frozen`);
//! - **won** (`won`, or `warning_closed`: an inquiry that never became a
//!   chargeback): the credits come back (repaying debt first, as any credit
//!   does) and the freeze lifts unless another dispute of the buyer is open;
//! - **lost** (`lost`, `prevented`, `charge_refunded`, or anything else a
//!   `closed` event says): the credits stay taken back, the freeze lifts
//!   likewise.
//!
//! A dispute is a `payment_disputes` row keyed by Stripe's id. Once closed it
//! never reopens, so a late `created` or `updated` after `closed` changes
//! nothing, and a `closed` that arrives first decides alone (won: nothing is
//! taken; lost: the share is taken, no freeze). A redelivered event is a
//! `duplicate` before any of this (`stripe_events`).
//!
//! The dispute is tied to the order whose `payment_intent_id` is the
//! dispute's `payment_intent` (Checkout records it when the session
//! completes). A dispute of an order that is not credited yet, or not known
//! yet, waits unapplied and is applied in the transaction that credits the
//! order ([`apply_waiting`]); one of a failed order is recorded and ignored.
//!
//! Each decision about a buyer is logged in `user_activity_logs`
//! (`purchase_disputed`, `purchase_dispute_won`, `purchase_dispute_lost`,
//! `purchase_dispute_deferred`).

use serde_json::{Value, json};
use tokio_postgres::Transaction;

use super::{
    Event, Moved, Outcome, PurchaseOrder, id_of, is_plain_id, lock_order, lock_payment, lock_user,
    order_total, read_order, reconcile, refunded_share,
};
use crate::activity::{self, Activity, ActivityType};
use crate::credits::gifting;
use crate::kernel::error::ApiError;
use crate::web::http::RequestMeta;

/// What a dispute's status means for the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Open,
    Won,
    Lost,
}

impl Decision {
    fn of(event_type: &str, stripe_status: &str) -> Self {
        match stripe_status {
            "won" | "warning_closed" => Self::Won,
            "lost" | "prevented" | "charge_refunded" => Self::Lost,
            // A dispute that closes in a way this code does not know keeps its
            // clawback: the money may be gone.
            _ if event_type == "charge.dispute.closed" => Self::Lost,
            _ => Self::Open,
        }
    }

    fn status(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Won => "won",
            Self::Lost => "lost",
        }
    }

    fn from_status(status: &str) -> Self {
        match status {
            "won" => Self::Won,
            "lost" => Self::Lost,
            _ => Self::Open,
        }
    }
}

/// The Dispute object, as far as it is read.
#[derive(Debug)]
struct Dispute<'a> {
    id: &'a str,
    stripe_status: &'a str,
    charge: Option<&'a str>,
    payment_intent: Option<&'a str>,
    /// Our order id, when an expanded charge (or the dispute) carries it.
    order_hint: Option<&'a str>,
    amount: Option<i64>,
    currency: Option<&'a str>,
    reason: Option<&'a str>,
}

impl<'a> Dispute<'a> {
    fn read(object: &'a Value) -> Option<Self> {
        let charge = &object["charge"];
        Some(Self {
            id: id_of(&object["id"])?,
            stripe_status: object["status"]
                .as_str()
                .filter(|s| is_plain_id(s))
                .unwrap_or("unknown"),
            charge: id_of(charge),
            payment_intent: id_of(&object["payment_intent"])
                .or_else(|| id_of(&charge["payment_intent"])),
            order_hint: id_of(&charge["metadata"]["purchase_order_id"])
                .or_else(|| id_of(&object["metadata"]["purchase_order_id"])),
            amount: object["amount"].as_i64().filter(|a| *a >= 0),
            currency: object["currency"].as_str().filter(|c| is_plain_id(c)),
            reason: object["reason"].as_str().filter(|r| is_plain_id(r)),
        })
    }
}

/// A `payment_disputes` row, locked.
#[derive(Debug)]
struct DisputeRow {
    decision: Decision,
    applied: bool,
    credits: i32,
    amount: Option<i64>,
    currency: Option<String>,
}

/// The credits a dispute of `amount` (smallest currency units) stands for:
/// its share of the order's price, rounded down in the buyer's favour; all
/// of them when the amounts cannot be compared.
fn dispute_share(order: &PurchaseOrder, amount: Option<i64>, currency: Option<&str>) -> i32 {
    let total = order_total(order);
    let same_currency = currency.is_none_or(|c| c.eq_ignore_ascii_case(&order.price_currency));
    match (amount, order.minor_units()) {
        (Some(amount), Ok(price)) if same_currency && price > 0 => {
            i32::try_from(refunded_share(i64::from(total), price, amount)).unwrap_or(total)
        }
        _ => total,
    }
}

/// Any `charge.dispute.*` event.
pub(super) async fn dispute_event(
    tx: &Transaction<'_>,
    event: &Event,
    meta: &RequestMeta,
) -> Result<(Outcome, Option<String>), ApiError> {
    let Some(dispute) = Dispute::read(&event.object) else {
        tracing::warn!(event_id = %event.id, event_type = %event.kind, "dispute event without a dispute id; ignored");
        return Ok(("ignored", None));
    };
    let decision = Decision::of(&event.kind, dispute.stripe_status);

    // What an earlier event of this dispute recorded (its payment and order
    // never change once known), read before any lock to find the lock order.
    let known = tx
        .query_opt(
            "SELECT payment_intent_id, purchase_order_id FROM payment_disputes WHERE id = $1",
            &[&dispute.id],
        )
        .await?;
    let (known_intent, known_order): (Option<String>, Option<String>) = match &known {
        Some(row) => (row.try_get(0)?, row.try_get(1)?),
        None => (None, None),
    };
    let intent = dispute.payment_intent.or(known_intent.as_deref());
    let order_hint = known_order.as_deref().or(dispute.order_hint);

    // Locks: the payment, the order, its buyer, then the dispute.
    lock_payment(tx, intent.or(order_hint).unwrap_or(dispute.id)).await?;
    let mut order = match order_hint {
        Some(id) => lock_order(tx, "id", id).await?,
        None => None,
    };
    if order.is_none()
        && let Some(intent) = intent
    {
        order = lock_order(tx, "payment_intent_id", intent).await?;
    }
    if let Some(user_id) = order.as_ref().and_then(|o| o.user_id.as_deref()) {
        lock_user(tx, user_id).await?;
    }
    let order_id = order.as_ref().map(|o| o.id.clone());
    let row = record(tx, event, &dispute, order_id.as_deref(), intent).await?;

    if row.decision != Decision::Open {
        // Closed before this event: nothing reopens it.
        tracing::info!(event_id = %event.id, dispute_id = dispute.id, "event for a closed dispute; no change");
        return Ok(("no_change", order_id));
    }
    let Some(order) = order else {
        set_status(tx, dispute.id, decision, dispute.stripe_status).await?;
        tracing::warn!(event_id = %event.id, dispute_id = dispute.id, "dispute of an unknown payment; kept until its order is credited");
        return Ok(("dispute_deferred", None));
    };
    if !row.applied {
        set_status(tx, dispute.id, decision, dispute.stripe_status).await?;
        let outcome = match order.status.as_str() {
            "paid" | "refunded" => {
                apply(tx, &order, dispute.id, decision, &row, event, meta).await?
            }
            "pending" => {
                defer(tx, &order, dispute.id, event, meta).await?;
                "dispute_deferred"
            }
            _ => {
                tracing::warn!(event_id = %event.id, order_id = %order.id, "dispute of an order that was never paid; recorded and ignored");
                "ignored"
            }
        };
        return Ok((outcome, order_id));
    }
    // Applied and open until now.
    set_status(tx, dispute.id, decision, dispute.stripe_status).await?;
    let outcome = match decision {
        Decision::Open => "no_change",
        Decision::Won | Decision::Lost => {
            close(tx, &order, dispute.id, decision, row.credits, event, meta).await?
        }
    };
    Ok((outcome, order_id))
}

/// Inserts the dispute (or adds this event to it) and locks its row.
async fn record(
    tx: &Transaction<'_>,
    event: &Event,
    dispute: &Dispute<'_>,
    order_id: Option<&str>,
    intent: Option<&str>,
) -> Result<DisputeRow, ApiError> {
    // A new dispute starts open; `set_status` then moves it to what the event says, so a
    // first event that closes it goes through the same path as a later one.
    tx.execute(
        "INSERT INTO payment_disputes (id, purchase_order_id, charge_id, payment_intent_id, amount, \
           currency, reason, stripe_status, status) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'open') ON CONFLICT (id) DO NOTHING",
        &[
            &dispute.id,
            &order_id,
            &dispute.charge,
            &intent,
            &dispute.amount,
            &dispute.currency,
            &dispute.reason,
            &dispute.stripe_status,
        ],
    )
    .await?;
    let row = tx
        .query_one(
            "UPDATE payment_disputes SET event_ids = array_append(event_ids, $2), \
               purchase_order_id = coalesce(purchase_order_id, $3), \
               payment_intent_id = coalesce(payment_intent_id, $4), \
               charge_id = coalesce(charge_id, $5), \
               amount = CASE WHEN applied_at IS NULL THEN coalesce($6, amount) ELSE amount END, \
               currency = coalesce(currency, $7), reason = coalesce($8, reason) \
             WHERE id = $1 \
             RETURNING status, applied_at IS NOT NULL, credits, amount, currency",
            &[
                &dispute.id,
                &event.id,
                &order_id,
                &intent,
                &dispute.charge,
                &dispute.amount,
                &dispute.currency,
                &dispute.reason,
            ],
        )
        .await?;
    let status: String = row.try_get(0)?;
    Ok(DisputeRow {
        decision: Decision::from_status(&status),
        applied: row.try_get(1)?,
        credits: row.try_get(2)?,
        amount: row.try_get(3)?,
        currency: row.try_get(4)?,
    })
}

async fn set_status(
    tx: &Transaction<'_>,
    dispute_id: &str,
    decision: Decision,
    stripe_status: &str,
) -> Result<(), ApiError> {
    tx.execute(
        "UPDATE payment_disputes SET status = $2, stripe_status = $3, \
           closed_at = CASE WHEN $2 = 'open' THEN NULL ELSE coalesce(closed_at, now()) END \
         WHERE id = $1",
        &[&dispute_id, &decision.status(), &stripe_status],
    )
    .await?;
    Ok(())
}

/// Applies a dispute (locked, not applied yet, its status already set to
/// `decision`) to a credited order (locked) and its buyer (locked).
async fn apply(
    tx: &Transaction<'_>,
    order: &PurchaseOrder,
    dispute_id: &str,
    decision: Decision,
    row: &DisputeRow,
    event: &Event,
    meta: &RequestMeta,
) -> Result<Outcome, ApiError> {
    let credits = dispute_share(order, row.amount, row.currency.as_deref());
    tx.execute(
        "UPDATE payment_disputes SET applied_at = now(), purchase_order_id = $2, user_id = $3, \
           credits = $4 \
         WHERE id = $1",
        &[&dispute_id, &order.id, &order.user_id, &credits],
    )
    .await?;
    let moved = match decision {
        Decision::Won => Moved::default(),
        Decision::Open | Decision::Lost => {
            reconcile(
                tx,
                order,
                order.refunded_credits,
                order.disputed_credits.saturating_add(credits),
                event,
                &format!(
                    "Credits taken back: the payment of purchase order {} is disputed",
                    order.id
                ),
            )
            .await?
        }
    };
    let (activity_type, outcome) = match decision {
        Decision::Open => (ActivityType::PurchaseDisputed, "dispute_opened"),
        Decision::Won => (ActivityType::PurchaseDisputeWon, "dispute_won"),
        Decision::Lost => (ActivityType::PurchaseDisputeLost, "dispute_lost"),
    };
    log(
        tx,
        order,
        activity_type,
        json!({
            "dispute_id": dispute_id,
            "event_id": event.id,
            "amount": row.amount,
            "currency": row.currency,
            "credits": credits,
            "credits_clawed_back": moved.taken,
            "credits_owed": moved.owed,
        }),
        meta,
    )
    .await?;
    tracing::info!(order_id = %order.id, dispute_id, outcome, credits, clawed_back = moved.taken, debt = moved.owed, "dispute applied");
    Ok(outcome)
}

/// Closes an applied open dispute: won gives its credits back (what refunds
/// do not cover), lost keeps them; the freeze lifts with the last open one.
async fn close(
    tx: &Transaction<'_>,
    order: &PurchaseOrder,
    dispute_id: &str,
    decision: Decision,
    credits: i32,
    event: &Event,
    meta: &RequestMeta,
) -> Result<Outcome, ApiError> {
    let moved = match decision {
        Decision::Won => {
            reconcile(
                tx,
                order,
                order.refunded_credits,
                (order.disputed_credits - credits).max(0),
                event,
                &format!(
                    "Credits taken back: the dispute of purchase order {} was decided",
                    order.id
                ),
            )
            .await?
        }
        Decision::Open | Decision::Lost => Moved::default(),
    };
    let (activity_type, outcome) = match decision {
        Decision::Won => (ActivityType::PurchaseDisputeWon, "dispute_won"),
        Decision::Open | Decision::Lost => (ActivityType::PurchaseDisputeLost, "dispute_lost"),
    };
    log(
        tx,
        order,
        activity_type,
        json!({
            "dispute_id": dispute_id,
            "event_id": event.id,
            "credits": credits,
            "credits_restored": moved.restored,
            "debt_repaid": moved.repaid,
        }),
        meta,
    )
    .await?;
    tracing::info!(order_id = %order.id, dispute_id, outcome, restored = moved.restored, "dispute closed");
    Ok(outcome)
}

/// A dispute of a pending order: kept until the order is credited.
async fn defer(
    tx: &Transaction<'_>,
    order: &PurchaseOrder,
    dispute_id: &str,
    event: &Event,
    meta: &RequestMeta,
) -> Result<(), ApiError> {
    tracing::warn!(event_id = %event.id, order_id = %order.id, "dispute before the payment event; kept until the order is paid");
    log(
        tx,
        order,
        ActivityType::PurchaseDisputeDeferred,
        json!({"dispute_id": dispute_id, "event_id": event.id}),
        meta,
    )
    .await
}

/// One activity row for the order's buyer, saying whether their gifts and
/// purchases are frozen after this decision.
async fn log(
    tx: &Transaction<'_>,
    order: &PurchaseOrder,
    activity_type: ActivityType,
    mut metadata: Value,
    meta: &RequestMeta,
) -> Result<(), ApiError> {
    let Some(user_id) = order.user_id.as_deref() else {
        return Ok(());
    };
    let frozen = gifting::is_frozen(tx, user_id).await?;
    if let Some(object) = metadata.as_object_mut() {
        object.insert("frozen".into(), Value::Bool(frozen));
    }
    activity::record(
        tx,
        Activity {
            user_id: Some(user_id),
            activity_type,
            entity_type: Some("purchase_order"),
            entity_id: Some(&order.id),
            metadata,
        },
        meta,
    )
    .await?;
    Ok(())
}

/// Applies the disputes that waited for `order_id` (locked, just credited,
/// its buyer locked): by order id, or by the payment intent it now records.
/// Returns how many were applied.
pub(super) async fn apply_waiting(
    tx: &Transaction<'_>,
    order_id: &str,
    event: &Event,
    meta: &RequestMeta,
) -> Result<usize, ApiError> {
    let order = read_order(tx, order_id).await?;
    let waiting = tx
        .query(
            "SELECT id, status FROM payment_disputes \
             WHERE applied_at IS NULL \
               AND (purchase_order_id = $1 OR ($2::text IS NOT NULL AND payment_intent_id = $2)) \
             ORDER BY created_at, id FOR UPDATE",
            &[&order.id, &order.payment_intent_id],
        )
        .await?;
    let mut applied = 0;
    for waiting in waiting {
        let dispute_id: String = waiting.try_get(0)?;
        let status: String = waiting.try_get(1)?;
        // Re-read: each application changes the order's shares.
        let order = read_order(tx, order_id).await?;
        let row = tx
            .query_one(
                "SELECT amount, currency FROM payment_disputes WHERE id = $1",
                &[&dispute_id],
            )
            .await?;
        let row = DisputeRow {
            decision: Decision::from_status(&status),
            applied: false,
            credits: 0,
            amount: row.try_get(0)?,
            currency: row.try_get(1)?,
        };
        let outcome = apply(tx, &order, &dispute_id, row.decision, &row, event, meta).await?;
        tracing::info!(order_id, dispute_id = %dispute_id, outcome, "waiting dispute applied");
        applied += 1;
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_decide_open_won_or_lost() {
        for status in [
            "warning_needs_response",
            "warning_under_review",
            "needs_response",
            "under_review",
            "something_new",
        ] {
            assert_eq!(
                Decision::of("charge.dispute.created", status),
                Decision::Open
            );
            assert_eq!(
                Decision::of("charge.dispute.funds_withdrawn", status),
                Decision::Open
            );
        }
        for kind in ["charge.dispute.closed", "charge.dispute.funds_reinstated"] {
            assert_eq!(Decision::of(kind, "won"), Decision::Won);
            assert_eq!(Decision::of(kind, "warning_closed"), Decision::Won);
            assert_eq!(Decision::of(kind, "lost"), Decision::Lost);
            assert_eq!(Decision::of(kind, "prevented"), Decision::Lost);
        }
        // A closing this code does not know keeps the clawback.
        assert_eq!(
            Decision::of("charge.dispute.closed", "something_new"),
            Decision::Lost
        );
        for decision in [Decision::Open, Decision::Won, Decision::Lost] {
            assert_eq!(Decision::from_status(decision.status()), decision);
        }
    }

    fn order(credits: i32, bonus: i32, price: &str, currency: &str) -> PurchaseOrder {
        let now = chrono::Utc::now();
        PurchaseOrder {
            id: "o".into(),
            user_id: None,
            package_id: None,
            credit_amount: credits,
            bonus_credits: bonus,
            price_usd: price.into(),
            price_currency: currency.into(),
            status: "paid".into(),
            provider: "stripe".into(),
            checkout_session_id: None,
            checkout_url: None,
            payment_intent_id: None,
            paid_at: None,
            failed_at: None,
            refunded_at: None,
            refunded_credits: 0,
            disputed_credits: 0,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn a_dispute_stands_for_its_share_of_the_credits() {
        let o = order(500, 50, "19.99", "USD");
        assert_eq!(dispute_share(&o, Some(1999), Some("usd")), 550);
        assert_eq!(dispute_share(&o, Some(1000), Some("usd")), 275);
        assert_eq!(dispute_share(&o, Some(5000), None), 550);
        assert_eq!(dispute_share(&o, Some(0), Some("usd")), 0);
        // Amounts that cannot be compared stand for everything.
        assert_eq!(dispute_share(&o, None, Some("usd")), 550);
        assert_eq!(dispute_share(&o, Some(1000), Some("eur")), 550);
        let broken = order(500, 50, "not a price", "USD");
        assert_eq!(dispute_share(&broken, Some(1), Some("usd")), 550);
    }
}
