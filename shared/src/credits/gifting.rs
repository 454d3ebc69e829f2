//! What an account may gift, and whether a payment dispute has frozen it.
//!
//! **Giftable credits.** A gift may only move credits that no refund or
//! dispute of a recent payment could still want back:
//!
//! ```text
//! giftable = max(0, available − debt_balance − not_giftable_yet)
//! not_giftable_yet = Σ over the user's orders paid in the last GIFT_HOLD_DAYS of
//!     credit_amount + bonus_credits − least(credit_amount + bonus_credits,
//!                                           refunded_credits + disputed_credits)
//! ```
//!
//! so bonuses, gifts received, admin credits and purchases paid at least
//! `GIFT_HOLD_DAYS` ago are giftable, young purchases (their bonus included)
//! are not, and neither is anything while credits are owed. Spending is not
//! attributed to a source: credits spent come out of the giftable part first,
//! so a young purchase is kept back in full until it matures. It is computed
//! from `purchase_orders` when asked, so nothing has to expire; a gift asks
//! under the sender's `users` and `user_credits` row locks, which every
//! balance change and every webhook effect on the sender's orders (crediting,
//! refunds, disputes) also takes, so the check and the gift cannot be raced.
//! A `purchase` entry without an order (none is posted that way outside
//! tests) is not kept back.
//!
//! **Frozen accounts.** While one of the user's payment disputes is applied
//! and open, the account may neither gift nor buy (403
//! `/problems/account-frozen`); it is lifted when the dispute closes, won or
//! lost.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;

use crate::kernel::error::ApiError;

/// What the user could gift now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Giftable {
    /// `current_balance − reserved_balance`.
    pub available: i32,
    pub debt_balance: i32,
    /// Credits of purchases paid less than `GIFT_HOLD_DAYS` ago that a refund
    /// or a dispute could still take back.
    pub not_giftable_yet: i32,
    /// `max(0, available − debt_balance − not_giftable_yet)`.
    pub giftable: i32,
    /// When the next of those purchases matures (`None`: none is waiting).
    pub next_giftable_at: Option<DateTime<Utc>>,
}

impl Giftable {
    fn new(
        available: i32,
        debt_balance: i32,
        not_giftable_yet: i64,
        next_giftable_at: Option<DateTime<Utc>>,
    ) -> Self {
        let giftable = (i64::from(available) - i64::from(debt_balance) - not_giftable_yet).max(0);
        Self {
            available,
            debt_balance,
            not_giftable_yet: i32::try_from(not_giftable_yet.max(0)).unwrap_or(i32::MAX),
            giftable: i32::try_from(giftable).unwrap_or(i32::MAX),
            next_giftable_at,
        }
    }
}

/// What `user_id` could gift now, with purchases kept back for `hold_days`
/// after they were paid; `None` without a credit account. Exact only under
/// the user's row locks (a gift takes them first; a balance read does not
/// need to).
pub async fn giftable(
    client: &impl GenericClient,
    user_id: &str,
    hold_days: i32,
) -> Result<Option<Giftable>, ApiError> {
    let row = client
        .query_opt(
            "WITH young AS ( \
               SELECT o.credit_amount + o.bonus_credits \
                        - least(o.credit_amount + o.bonus_credits, o.refunded_credits + o.disputed_credits) \
                        AS at_risk, \
                      o.paid_at + make_interval(days => $2) AS matures_at \
               FROM purchase_orders o \
               WHERE o.user_id = $1 AND o.status IN ('paid', 'refunded') \
                 AND o.paid_at > now() - make_interval(days => $2) \
             ) \
             SELECT c.current_balance - c.reserved_balance, c.debt_balance, \
                    (SELECT coalesce(sum(at_risk), 0)::int8 FROM young), \
                    (SELECT min(matures_at) FROM young WHERE at_risk > 0) \
             FROM user_credits c WHERE c.user_id = $1",
            &[&user_id, &hold_days.max(0)],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(Giftable::new(
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
    )))
}

/// Whether a payment dispute of the user is open (applied and not closed).
pub async fn is_frozen(client: &impl GenericClient, user_id: &str) -> Result<bool, ApiError> {
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM payment_disputes \
                            WHERE user_id = $1 AND status = 'open' AND applied_at IS NOT NULL)",
            &[&user_id],
        )
        .await?
        .try_get(0)?)
}

/// 403 `/problems/account-frozen` for `what` ("gifts", "purchases") when a
/// dispute of the user is open.
pub async fn refuse_if_frozen(
    client: &impl GenericClient,
    user_id: &str,
    what: &str,
) -> Result<(), ApiError> {
    if is_frozen(client, user_id).await? {
        return Err(ApiError::AccountFrozen(format!(
            "{what} are frozen on this account while a payment of yours is disputed with your \
             bank; they open again when the dispute is closed"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn giftable_is_what_is_left_after_debt_and_young_purchases() {
        assert_eq!(Giftable::new(100, 0, 0, None).giftable, 100);
        assert_eq!(Giftable::new(100, 0, 60, None).giftable, 40);
        assert_eq!(Giftable::new(100, 30, 60, None).giftable, 10);
        // Spending comes out of the giftable part first: never below zero.
        assert_eq!(Giftable::new(50, 0, 550, None).giftable, 0);
        assert_eq!(Giftable::new(0, 520, 0, None).giftable, 0);
        let huge = Giftable::new(i32::MAX, 0, -5, None);
        assert_eq!((huge.giftable, huge.not_giftable_yet), (i32::MAX, 0));
    }
}
