//! Subscription tiers, and the one table of everything a tier gets.
//!
//! A tier is parsed once, where it enters (a `users` row, an admin's request,
//! a pricing config), and is a [`Tier`] from there on; it is stored as the
//! seed's text values (`FREE`, `PREMIUM`, `PRO`, `ENTERPRISE`). Tiers are
//! ordered: a config's `minimum_tier` admits its tier and every one above.
//!
//! | | `FREE` | `PREMIUM` | `PRO` | `ENTERPRISE` |
//! |---|---|---|---|---|
//! | free generations a day (`users.daily_quota`) | 3 | 10 | 25 | 100 |
//! | allowance credits a day (`user_credits.daily_allowance`) | 0 | 50 | 200 | 1000 |
//! | longest image side, px | 1024 | 1536 | 2048 | 2048 |
//! | images per job (`batch_size`) | 1 | 2 | 4 | 4 |
//! | highest job `priority` (1–10) | 5 | 7 | 9 | 10 |
//! | jobs queued or processing at once | 2 | 4 | 8 | 16 |
//! | default price multiplier (`tier_multipliers`) | 1.0 | 0.8 | 0.6 | 0.4 |
//!
//! A free generation covers a whole generation's price; the allowance is
//! credits that pay for generations after the free ones and before purchased
//! credits (see [`crate::credits::holds`]). Neither is balance: a tier change
//! posts no ledger entry, and what was used today stays used. `FREE` matches
//! the columns' defaults, which every new account gets. The default
//! generation costs 10 credits before the multiplier (V2), so the allowances
//! pay for about 6 (PREMIUM), 33 (PRO) and 250 (ENTERPRISE) more generations a
//! day, the last capped by the route's `daily_limit` (200). An admin's tier
//! change (`PATCH /api/v1/admin/users/{id}`) sets the daily columns from this
//! table in the same transaction; a config's own `tier_multipliers` override
//! the default multipliers.

crate::text_enum! {
    /// A subscription tier, lowest first.
    pub enum Tier {
        Free => "FREE",
        Premium => "PREMIUM",
        Pro => "PRO",
        Enterprise => "ENTERPRISE",
    }
}

impl Default for Tier {
    /// What a new account has.
    fn default() -> Self {
        Tier::Free
    }
}

/// Everything one tier gets (the module's table, one column).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TierTerms {
    /// `users.daily_quota`: free generations per daily window.
    pub free_generations_per_day: i32,
    /// `user_credits.daily_allowance`: credits per daily window for generations.
    pub allowance_credits_per_day: i32,
    /// The longest side of a generated image, in pixels.
    pub max_side_px: i64,
    /// Images one job may make.
    pub max_batch_size: i64,
    /// The highest job priority the tier may ask for.
    pub max_priority: i64,
    /// Jobs queued or processing at once.
    pub max_active_jobs: i64,
    /// The price multiplier a pricing config gets when it does not say.
    pub default_multiplier: f64,
}

const TERMS: [TierTerms; 4] = [
    TierTerms {
        free_generations_per_day: 3,
        allowance_credits_per_day: 0,
        max_side_px: 1024,
        max_batch_size: 1,
        max_priority: 5,
        max_active_jobs: 2,
        default_multiplier: 1.0,
    },
    TierTerms {
        free_generations_per_day: 10,
        allowance_credits_per_day: 50,
        max_side_px: 1536,
        max_batch_size: 2,
        max_priority: 7,
        max_active_jobs: 4,
        default_multiplier: 0.8,
    },
    TierTerms {
        free_generations_per_day: 25,
        allowance_credits_per_day: 200,
        max_side_px: 2048,
        max_batch_size: 4,
        max_priority: 9,
        max_active_jobs: 8,
        default_multiplier: 0.6,
    },
    TierTerms {
        free_generations_per_day: 100,
        allowance_credits_per_day: 1000,
        max_side_px: 2048,
        max_batch_size: 4,
        max_priority: 10,
        max_active_jobs: 16,
        default_multiplier: 0.4,
    },
];

impl Tier {
    /// What the tier gets.
    pub const fn terms(self) -> &'static TierTerms {
        &TERMS[self as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_order_is_the_tiers_order() {
        for (tier, name) in Tier::ALL.into_iter().zip(Tier::NAMES) {
            assert_eq!(tier.as_str(), name);
            assert_eq!(Tier::parse(name), Some(tier));
            assert_eq!(serde_json::to_value(tier).unwrap(), name);
            assert_eq!(serde_json::from_value::<Tier>(name.into()).unwrap(), tier);
        }
        assert_eq!(Tier::parse("GOLD"), None);
        assert_eq!(Tier::parse("free"), None);
        assert!(
            "GOLD"
                .parse::<Tier>()
                .unwrap_err()
                .contains("FREE, PREMIUM, PRO, ENTERPRISE")
        );
        assert!(Tier::Free < Tier::Premium && Tier::Pro < Tier::Enterprise);
        assert_eq!(Tier::default(), Tier::Free);
    }

    #[test]
    fn a_higher_tier_never_gets_less() {
        for pair in Tier::ALL.windows(2) {
            let (lower, higher) = (pair[0].terms(), pair[1].terms());
            assert!(lower.free_generations_per_day < higher.free_generations_per_day);
            assert!(lower.allowance_credits_per_day < higher.allowance_credits_per_day);
            assert!(lower.max_side_px <= higher.max_side_px);
            assert!(lower.max_batch_size <= higher.max_batch_size);
            assert!(lower.max_priority < higher.max_priority);
            assert!(lower.max_active_jobs < higher.max_active_jobs);
            assert!(lower.default_multiplier > higher.default_multiplier);
        }
        // FREE matches the columns' defaults (V1).
        assert_eq!(Tier::Free.terms().free_generations_per_day, 3);
        assert_eq!(Tier::Free.terms().allowance_credits_per_day, 0);
        assert_eq!(Tier::Pro.terms().allowance_credits_per_day, 200);
    }
}
