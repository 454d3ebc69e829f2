//! What each subscription tier gets per local day. An admin's tier change
//! (`PATCH /api/v1/admin/users/{id}`) sets both columns from this table, in
//! the same transaction as the tier:
//!
//! | tier | free generations (`users.daily_quota`) | allowance credits (`user_credits.daily_allowance`) |
//! |---|---|---|
//! | `FREE` | 3 | 0 |
//! | `PREMIUM` | 10 | 50 |
//! | `PRO` | 25 | 200 |
//! | `ENTERPRISE` | 100 | 1000 |
//!
//! A free generation covers a whole generation's price; the allowance is credits that pay
//! for generations after the free ones and before purchased credits (see
//! [`crate::credits::holds`]). Neither is balance: a tier change posts no ledger entry, and
//! what was used today stays used (lowering the allowance below today's use leaves nothing
//! more for today). `FREE` matches the columns' defaults, which every new account gets.
//! The default generation costs 10 credits before the tier multiplier (V2), so the
//! allowances pay for about 6 (PREMIUM), 33 (PRO) and 250 (ENTERPRISE) more generations a
//! day, the last capped by the route's `daily_limit` (200).

/// One tier's daily entitlements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierAllowance {
    pub tier: &'static str,
    /// `users.daily_quota`: free generations per local day.
    pub daily_quota: i32,
    /// `user_credits.daily_allowance`: credits per local day for generations.
    pub daily_allowance: i32,
}

/// The table (see the module documentation).
pub const TIER_ALLOWANCES: [TierAllowance; 4] = [
    TierAllowance {
        tier: "FREE",
        daily_quota: 3,
        daily_allowance: 0,
    },
    TierAllowance {
        tier: "PREMIUM",
        daily_quota: 10,
        daily_allowance: 50,
    },
    TierAllowance {
        tier: "PRO",
        daily_quota: 25,
        daily_allowance: 200,
    },
    TierAllowance {
        tier: "ENTERPRISE",
        daily_quota: 100,
        daily_allowance: 1000,
    },
];

/// The entitlements of `tier`, if it is one.
pub fn allowance_of(tier: &str) -> Option<TierAllowance> {
    TIER_ALLOWANCES.iter().copied().find(|a| a.tier == tier)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credits::pricing::TIERS;

    #[test]
    fn every_tier_has_one_row_and_more_costs_more() {
        let named: Vec<&str> = TIER_ALLOWANCES.iter().map(|a| a.tier).collect();
        assert_eq!(named, TIERS);
        for pair in TIER_ALLOWANCES.windows(2) {
            assert!(pair[0].daily_quota < pair[1].daily_quota);
            assert!(pair[0].daily_allowance < pair[1].daily_allowance);
        }
        assert_eq!(allowance_of("PRO").map(|a| a.daily_allowance), Some(200));
        assert_eq!(allowance_of("GOLD"), None);
    }

    #[test]
    fn free_is_what_a_new_account_gets() {
        // The column defaults of V1: users.daily_quota 3, user_credits.daily_allowance 0.
        let free = allowance_of("FREE").unwrap();
        assert_eq!((free.daily_quota, free.daily_allowance), (3, 0));
    }
}
