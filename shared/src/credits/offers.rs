//! What is on sale, and at what price: the one definition the package list
//! (`GET /api/v1/credits/packages`) and a purchase (`POST /api/v1/credits/purchases`)
//! share, so that a package the list shows can be bought at the price it
//! shows, and one it does not show cannot.
//!
//! A package is on sale to a tier now when all of these hold:
//! - it is available: `is_available` is true (NULL sells nothing);
//! - it is inside its promotion window, when it has one: `start <= now < end`
//!   (the end is the first instant it is no longer sold);
//! - its `target_tiers` names the tier (NULL names none: a package says whom it
//!   is sold to; the column's default names every tier);
//! - it can be charged: a positive number of credits, no negative bonus, a price
//!   the currency can express, and more than nothing to pay after its discount.
//!
//! The charged price is the list price (`price_usd`) less `discount_percentage`,
//! in the currency's smallest unit, rounded down ([`money::discounted`]). The
//! list shows it before checkout, the order records it, and the checkout charges
//! it. Packages are listed by `display_order` (NULL counts as the column's
//! default, 0), then price, then id: the order the admin list uses.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Row;
use utoipa::ToSchema;

use super::money;

/// The columns [`Offer::from_row`] reads.
pub const COLUMNS: &str = "id, name, description, credit_amount, \
     coalesce(bonus_credits, 0) AS bonus_credits, price_usd::text AS price_usd, \
     upper(coalesce(price_currency, 'USD')) AS price_currency, \
     coalesce(discount_percentage, 0) AS discount_percentage, \
     coalesce(package_type, 'one_time') AS package_type, \
     coalesce(display_order, 0) AS display_order, highlight_color, badge_text, \
     promotion_start_date, promotion_end_date";

/// `is_available` is true.
pub const AVAILABLE: &str = "is_available IS TRUE";

/// Inside the promotion window, when there is one: start <= now < end.
pub const IN_WINDOW: &str = "(promotion_start_date IS NULL OR promotion_start_date <= now()) \
     AND (promotion_end_date IS NULL OR now() < promotion_end_date)";

/// `target_tiers` names the tier given as the query parameter `$n`.
pub fn for_tier(n: usize) -> String {
    format!("coalesce(${n} = ANY(target_tiers), false)")
}

/// The order packages are listed in.
pub const ORDER: &str = "coalesce(display_order, 0), price_usd, id";

/// A package on sale, with its charged price.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Package)]
pub struct Offer {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub credit_amount: i32,
    pub bonus_credits: i32,
    /// `credit_amount + bonus_credits`.
    pub total_credits: i64,
    /// The list price, the exact `DECIMAL(10,2)` as a decimal string (`"19.99"`), never a
    /// float.
    pub price_usd: String,
    /// The ISO 4217 code, upper case.
    pub price_currency: String,
    /// 0 to 100: how much of the list price is taken off.
    pub discount_percentage: i32,
    /// What a purchase charges: the list price less the discount, rounded down to the
    /// currency's smallest unit, as a decimal string (`"16.99"` for 15% off `"19.99"`).
    pub charged_price: String,
    /// The same, in the currency's smallest unit (`1699` cents), as the checkout charges it.
    pub charged_amount: i64,
    /// `one_time`, `subscription_bonus` or `promotional`.
    pub package_type: String,
    /// Lowest first (an unset order counts as 0).
    pub display_order: i32,
    pub highlight_color: Option<String>,
    pub badge_text: Option<String>,
    pub promotion_start_date: Option<DateTime<Utc>>,
    pub promotion_end_date: Option<DateTime<Utc>>,
}

impl Offer {
    /// The offer a row of [`COLUMNS`] makes, or why it cannot be sold (a
    /// misconfigured package: logged by the caller, never shown or charged).
    pub fn from_row(row: &Row) -> Result<Result<Self, String>, tokio_postgres::Error> {
        let credit_amount: i32 = row.try_get("credit_amount")?;
        let bonus_credits: i32 = row.try_get("bonus_credits")?;
        let price_usd: String = row.try_get("price_usd")?;
        let price_currency: String = row.try_get("price_currency")?;
        let discount_percentage: i32 = row.try_get("discount_percentage")?;
        let charged = charged_amount(
            credit_amount,
            bonus_credits,
            &price_usd,
            &price_currency,
            discount_percentage,
        );
        let charged_amount = match charged {
            Ok(units) => units,
            Err(why) => return Ok(Err(why)),
        };
        Ok(Ok(Self {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            description: row.try_get("description")?,
            total_credits: i64::from(credit_amount) + i64::from(bonus_credits),
            credit_amount,
            bonus_credits,
            charged_price: money::decimal(charged_amount, &price_currency),
            charged_amount,
            price_usd,
            price_currency,
            discount_percentage,
            package_type: row.try_get("package_type")?,
            display_order: row.try_get("display_order")?,
            highlight_color: row.try_get("highlight_color")?,
            badge_text: row.try_get("badge_text")?,
            promotion_start_date: row.try_get("promotion_start_date")?,
            promotion_end_date: row.try_get("promotion_end_date")?,
        }))
    }
}

/// What a package charges in the smallest unit, if it can be sold at all.
fn charged_amount(
    credit_amount: i32,
    bonus_credits: i32,
    price: &str,
    currency: &str,
    discount_percentage: i32,
) -> Result<i64, String> {
    if credit_amount <= 0 || bonus_credits < 0 {
        return Err(format!("credits {credit_amount}, bonus {bonus_credits}"));
    }
    let list = money::minor_units(price, currency)?;
    let charged = money::discounted(list, discount_percentage, currency)?;
    if charged <= 0 {
        return Err(format!(
            "nothing to charge: {price} {currency} less {discount_percentage}%"
        ));
    }
    Ok(charged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_package_sells_only_when_it_can_charge_something() {
        assert_eq!(charged_amount(100, 0, "4.99", "USD", 0), Ok(499));
        assert_eq!(charged_amount(500, 50, "19.99", "USD", 15), Ok(1699));
        assert!(charged_amount(500, 50, "19.99", "USD", 100).is_err());
        assert!(charged_amount(500, 50, "0.00", "USD", 0).is_err());
        assert!(charged_amount(500, 50, "0.01", "USD", 50).is_err());
        assert!(charged_amount(0, 50, "19.99", "USD", 0).is_err());
        assert!(charged_amount(500, -1, "19.99", "USD", 0).is_err());
        assert!(charged_amount(500, 0, "19.99", "US", 0).is_err());
        assert!(charged_amount(500, 0, "19.50", "JPY", 0).is_err());
    }
}
