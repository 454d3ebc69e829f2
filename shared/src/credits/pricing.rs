//! Pricing from `api_credit_configs`.
//!
//! price = ceil((base_cost + formula terms) × tier multiplier), in integer
//! arithmetic: multipliers are kept in thousandths, so 0.8 × 15 is exactly 12.
//!
//! `cost_formula` (validated on write, unknown keys refused):
//! ```json
//! {"job_type": {"character_generation": 0, "style_transfer": 2, "upscale": 1},
//!  "steps":      {"over": 30,     "every": 10,     "cost": 1},
//!  "pixels":     {"over": 262144, "every": 262144, "cost": 4},
//!  "batch_size": {"over": 1,      "every": 1,      "cost": 10},
//!  "fallback_cost": 0}
//! ```
//! `job_type` adds a fixed amount per job type (absent types add 0). Each
//! threshold term adds `cost × ceil(max(0, value − over) / every)` for the
//! request's `steps`, `width × height` and `batch_size` (for jobs that start
//! from an image, the pixels are the output's: the source's size, times the
//! factor for an upscale).
//!
//! `fallback_cost` is what a job costs when no image server could serve it
//! and the built-in procedural renderer drew a placeholder instead (default
//! 0: nothing is charged). It is multiplied by the tier's multiplier like the
//! rest and never exceeds the job's price.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::kernel::error::{ApiError, FieldError};
use crate::kernel::tier::Tier;

/// A route the pricing engine charges and limits: its requests are quoted
/// through [`crate::credits::engine::quote`], which counts the config's rate
/// limits and prices the hold the route places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChargeableEndpoint {
    pub http_method: &'static str,
    /// With `:param` placeholders, as `api_credit_configs.endpoint_pattern` spells routes.
    pub endpoint_pattern: &'static str,
}

/// `POST /api/v1/characters/:id/generate`: every generation job (all job types).
pub const GENERATE: ChargeableEndpoint = ChargeableEndpoint {
    http_method: "POST",
    endpoint_pattern: "/api/v1/characters/:id/generate",
};

/// Every route that is charged and limited, and nothing else: the one list
/// the job dispatcher prices through ([`GENERATE`]), the admin routes
/// validate pricing configs against, and the engine and the price list
/// filter configs by. A config for any other route would be listed but never
/// charged, so it is refused (admin routes) or ignored (rows written by hand).
/// Making another route chargeable means quoting it through the engine in its
/// handler and adding it here.
pub const CHARGEABLE_ENDPOINTS: [ChargeableEndpoint; 1] = [GENERATE];

impl ChargeableEndpoint {
    /// `POST /api/v1/characters/:id/generate`, as ledger entries record it.
    pub fn label(&self) -> String {
        format!("{} {}", self.http_method, self.endpoint_pattern)
    }

    /// The concrete path for these parameter values, in order
    /// (`["abc"]` → `/api/v1/characters/abc/generate`). Missing values leave
    /// the placeholder, which no real path equals.
    pub fn path(&self, params: &[&str]) -> String {
        let mut values = params.iter();
        self.endpoint_pattern
            .split('/')
            .map(|segment| match segment.strip_prefix(':') {
                Some(_) => values.next().copied().unwrap_or(segment),
                None => segment,
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Whether a config of `method` and `pattern` prices exactly this route:
    /// the same method, the same literal segments and placeholders in the
    /// same places (their names may differ).
    pub fn is_priced_by(&self, method: &str, pattern: &str) -> bool {
        let ours: Vec<&str> = self.endpoint_pattern.split('/').collect();
        let theirs: Vec<&str> = pattern.split('/').collect();
        self.http_method.eq_ignore_ascii_case(method)
            && ours.len() == theirs.len()
            && ours.iter().zip(&theirs).all(|(a, b)| {
                (a.starts_with(':') && b.len() > 1 && b.starts_with(':'))
                    || (!a.starts_with(':') && a == b)
            })
    }
}

/// The chargeable route a config of `method` and `pattern` prices, if any.
pub fn chargeable_endpoint(method: &str, pattern: &str) -> Option<&'static ChargeableEndpoint> {
    CHARGEABLE_ENDPOINTS
        .iter()
        .find(|endpoint| endpoint.is_priced_by(method, pattern))
}

/// A threshold term of the formula.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    pub over: i64,
    pub every: i64,
    pub cost: i32,
}

impl Threshold {
    fn charge(&self, value: i64) -> i64 {
        // Saturating: absurd inputs price high, never wrap or panic.
        let excess = value.saturating_sub(self.over).max(0);
        let blocks = excess.saturating_add(self.every - 1) / self.every;
        i64::from(self.cost).saturating_mul(blocks)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostFormula {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub job_type: BTreeMap<String, i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Threshold>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pixels: Option<Threshold>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<Threshold>,
    /// The price of a placeholder from the procedural fallback, before the
    /// tier multiplier (absent: 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_cost: Option<i32>,
}

/// Job types a formula may price: every one.
pub const JOB_TYPES: [&str; 5] = crate::kernel::vocabulary::JobType::NAMES;

impl CostFormula {
    /// Parses and validates a formula as an admin writes it.
    pub fn parse(value: &Value) -> Result<Self, FieldError> {
        let formula: Self = serde_json::from_value(value.clone())
            .map_err(|e| FieldError::new("cost_formula", format!("is not a valid formula: {e}")))?;
        for (job_type, cost) in &formula.job_type {
            if !JOB_TYPES.contains(&job_type.as_str()) {
                return Err(FieldError::new(
                    format!("cost_formula.job_type.{job_type}"),
                    format!("is not a job type ({})", JOB_TYPES.join(", ")),
                ));
            }
            if !(0..=100_000).contains(cost) {
                return Err(FieldError::new(
                    format!("cost_formula.job_type.{job_type}"),
                    "must be 0 to 100000",
                ));
            }
        }
        if let Some(cost) = formula.fallback_cost
            && !(0..=100_000).contains(&cost)
        {
            return Err(FieldError::new(
                "cost_formula.fallback_cost",
                "must be 0 to 100000",
            ));
        }
        for (name, term) in [
            ("steps", &formula.steps),
            ("pixels", &formula.pixels),
            ("batch_size", &formula.batch_size),
        ] {
            if let Some(term) = term
                && (term.over < 0 || term.every < 1 || !(0..=100_000).contains(&term.cost))
            {
                return Err(FieldError::new(
                    format!("cost_formula.{name}"),
                    "needs over >= 0, every >= 1 and cost 0 to 100000",
                ));
            }
        }
        Ok(formula)
    }
}

/// Tier multipliers in thousandths (`{"FREE": 1.0, "PRO": 0.6}` → 1000, 600).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierMultipliers(pub BTreeMap<String, i64>);

impl TierMultipliers {
    /// Parses `tier_multipliers`; each value 0 to 10 with at most 3 decimals.
    pub fn parse(value: &Value) -> Result<Self, FieldError> {
        let object = value.as_object().ok_or_else(|| {
            FieldError::new(
                "tier_multipliers",
                "must be an object of tier to multiplier",
            )
        })?;
        let mut out = BTreeMap::new();
        for (tier, multiplier) in object {
            if Tier::parse(tier).is_none() {
                return Err(FieldError::new(
                    format!("tier_multipliers.{tier}"),
                    format!("is not a tier ({})", Tier::NAMES.join(", ")),
                ));
            }
            let m = multiplier
                .as_f64()
                .filter(|m| (0.0..=10.0).contains(m))
                .ok_or_else(|| {
                    FieldError::new(
                        format!("tier_multipliers.{tier}"),
                        "must be a number from 0 to 10",
                    )
                })?;
            let thousandths = (m * 1000.0).round();
            if (m * 1000.0 - thousandths).abs() > 1e-6 {
                return Err(FieldError::new(
                    format!("tier_multipliers.{tier}"),
                    "may have at most 3 decimals",
                ));
            }
            out.insert(tier.clone(), thousandths as i64);
        }
        Ok(Self(out))
    }

    /// A tier without an entry pays full price.
    pub fn for_tier(&self, tier: Tier) -> i64 {
        self.0.get(tier.as_str()).copied().unwrap_or(1000)
    }
}

/// One enabled or disabled row of `api_credit_configs`.
#[derive(Debug, Clone)]
pub struct PriceConfig {
    pub id: String,
    pub endpoint_pattern: String,
    pub http_method: String,
    pub base_cost: i32,
    pub cost_formula: Option<CostFormula>,
    pub tier_multipliers: TierMultipliers,
    pub daily_limit: Option<i32>,
    pub rate_limit_per_minute: Option<i32>,
    pub requires_subscription: bool,
    pub minimum_tier: Option<Tier>,
    pub is_enabled: bool,
    pub description: Option<String>,
    pub category: Option<String>,
}

/// The request parameters a formula prices.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct PriceInputs {
    pub job_type: Option<String>,
    pub steps: Option<i64>,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub batch_size: Option<i64>,
}

/// A price and how it came out.
#[derive(Debug, Clone, Serialize)]
pub struct Quote {
    pub config_id: String,
    pub price: i32,
    /// What the job costs if only the procedural placeholder can serve it
    /// (at most `price`).
    pub fallback_price: i32,
    /// `cost_calculation`: base, each term, subtotal, tier, multiplier, price.
    pub calculation: Value,
}

impl PriceConfig {
    /// Whether this config prices a route that is charged (see
    /// [`CHARGEABLE_ENDPOINTS`]); others price nothing.
    pub fn is_chargeable(&self) -> bool {
        chargeable_endpoint(&self.http_method, &self.endpoint_pattern).is_some()
    }

    pub fn matches(&self, method: &str, path: &str) -> bool {
        self.http_method.eq_ignore_ascii_case(method)
            && pattern_matches(&self.endpoint_pattern, path)
    }

    pub fn quote(&self, tier: Tier, inputs: &PriceInputs) -> Quote {
        let mut terms = serde_json::Map::new();
        let mut subtotal = i64::from(self.base_cost);
        if let Some(formula) = &self.cost_formula {
            if let Some(job_type) = &inputs.job_type {
                let add = i64::from(formula.job_type.get(job_type).copied().unwrap_or(0));
                terms.insert("job_type".into(), json!({"value": job_type, "cost": add}));
                subtotal = subtotal.saturating_add(add);
            }
            let pixels = match (inputs.width, inputs.height) {
                (Some(w), Some(h)) => Some(w.saturating_mul(h)),
                _ => None,
            };
            for (name, term, value) in [
                ("steps", &formula.steps, inputs.steps),
                ("pixels", &formula.pixels, pixels),
                ("batch_size", &formula.batch_size, inputs.batch_size),
            ] {
                if let (Some(term), Some(value)) = (term, value) {
                    let add = term.charge(value);
                    terms.insert(name.into(), json!({"value": value, "over": term.over, "every": term.every, "cost": add}));
                    subtotal = subtotal.saturating_add(add);
                }
            }
        }
        let multiplier = self.tier_multipliers.for_tier(tier);
        // ceil(amount × multiplier / 1000) in integers.
        let apply = |amount: i64| {
            let price = amount.max(0).saturating_mul(multiplier).saturating_add(999) / 1000;
            i32::try_from(price).unwrap_or(i32::MAX)
        };
        let price = apply(subtotal);
        let fallback_cost = self
            .cost_formula
            .as_ref()
            .and_then(|f| f.fallback_cost)
            .unwrap_or(0);
        let fallback_price = apply(i64::from(fallback_cost)).min(price);
        Quote {
            config_id: self.id.clone(),
            price,
            fallback_price,
            calculation: json!({
                "config_id": self.id,
                "base_cost": self.base_cost,
                "terms": terms,
                "subtotal": subtotal,
                "tier": tier,
                "tier_multiplier": multiplier as f64 / 1000.0,
                "price": price,
                "fallback_price": fallback_price,
            }),
        }
    }

    /// Whether a user of `tier` (with an active subscription or not) may call
    /// this endpoint at all.
    pub fn check_access(&self, tier: Tier, subscribed: bool) -> Result<(), ApiError> {
        if self.requires_subscription && !subscribed {
            return Err(ApiError::Forbidden(
                "this needs an active subscription".into(),
            ));
        }
        if let Some(minimum) = self.minimum_tier
            && tier < minimum
        {
            return Err(ApiError::Forbidden(format!(
                "this needs the {minimum} tier or higher; yours is {tier}"
            )));
        }
        Ok(())
    }
}

/// `/api/v1/characters/:id/generate` matches `/api/v1/characters/abc/generate`.
pub fn pattern_matches(pattern: &str, path: &str) -> bool {
    let pattern: Vec<&str> = pattern.trim_end_matches('/').split('/').collect();
    let path: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    pattern.len() == path.len()
        && pattern
            .iter()
            .zip(&path)
            .all(|(p, s)| (p.starts_with(':') && !s.is_empty()) || p == s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(formula: Value) -> PriceConfig {
        PriceConfig {
            id: "cfg".into(),
            endpoint_pattern: "/api/v1/characters/:id/generate".into(),
            http_method: "POST".into(),
            base_cost: 10,
            cost_formula: Some(CostFormula::parse(&formula).unwrap()),
            tier_multipliers: TierMultipliers::parse(
                &json!({"FREE": 1.0, "PREMIUM": 0.8, "PRO": 0.6, "ENTERPRISE": 0.4}),
            )
            .unwrap(),
            daily_limit: None,
            rate_limit_per_minute: None,
            requires_subscription: false,
            minimum_tier: None,
            is_enabled: true,
            description: None,
            category: None,
        }
    }

    fn seed_formula() -> Value {
        json!({"job_type": {"character_generation": 0, "style_transfer": 2, "upscale": 1, "variation": 0,
                            "background_removal": 1},
               "steps": {"over": 30, "every": 10, "cost": 1},
               "pixels": {"over": 262144, "every": 262144, "cost": 4},
               "batch_size": {"over": 1, "every": 1, "cost": 10}})
    }

    fn inputs(job: &str, steps: i64, w: i64, h: i64, batch: i64) -> PriceInputs {
        PriceInputs {
            job_type: Some(job.into()),
            steps: Some(steps),
            width: Some(w),
            height: Some(h),
            batch_size: Some(batch),
        }
    }

    #[test]
    fn thresholds_charge_from_the_first_unit_over() {
        let c = config(seed_formula());
        assert_eq!(
            c.quote(Tier::Free, &inputs("character_generation", 30, 512, 512, 1))
                .price,
            10
        );
        assert_eq!(
            c.quote(Tier::Free, &inputs("character_generation", 31, 512, 512, 1))
                .price,
            11
        );
        assert_eq!(
            c.quote(Tier::Free, &inputs("character_generation", 40, 512, 512, 1))
                .price,
            11
        );
        assert_eq!(
            c.quote(Tier::Free, &inputs("character_generation", 41, 512, 512, 1))
                .price,
            12
        );
        assert_eq!(
            c.quote(Tier::Free, &inputs("character_generation", 20, 512, 513, 1))
                .price,
            14
        );
        assert_eq!(
            c.quote(Tier::Free, &inputs("style_transfer", 20, 512, 512, 3))
                .price,
            32
        );
    }

    #[test]
    fn tier_multipliers_round_up_exactly() {
        let c = config(seed_formula());
        let base = inputs("character_generation", 20, 512, 512, 1);
        assert_eq!(c.quote(Tier::Premium, &base).price, 8);
        assert_eq!(c.quote(Tier::Pro, &base).price, 6);
        assert_eq!(c.quote(Tier::Enterprise, &base).price, 4);
        // 15 × 0.8 is 12 exactly, not 12.000000000000002 rounded up to 13.
        let fifteen = inputs("character_generation", 20, 512, 512, 1);
        let mut c15 = config(seed_formula());
        c15.base_cost = 15;
        assert_eq!(c15.quote(Tier::Premium, &fifteen).price, 12);
        c15.base_cost = 11;
        // 11 × 0.6 = 6.6 → 7
        assert_eq!(c15.quote(Tier::Pro, &fifteen).price, 7);
        let quote = c15.quote(Tier::Pro, &fifteen);
        assert_eq!(quote.calculation["tier_multiplier"], 0.6);
        assert_eq!(quote.calculation["subtotal"], 11);
    }

    #[test]
    fn a_placeholder_costs_the_fallback_price_never_more_than_the_price() {
        let c = config(seed_formula());
        let base = inputs("character_generation", 20, 512, 512, 1);
        assert_eq!(c.quote(Tier::Free, &base).fallback_price, 0);
        let mut formula = seed_formula();
        formula["fallback_cost"] = json!(3);
        let c = config(formula.clone());
        assert_eq!(c.quote(Tier::Free, &base).fallback_price, 3);
        // ceil(3 × 0.6) = 2
        assert_eq!(c.quote(Tier::Pro, &base).fallback_price, 2);
        assert_eq!(c.quote(Tier::Pro, &base).calculation["fallback_price"], 2);
        formula["fallback_cost"] = json!(500);
        let c = config(formula);
        assert_eq!(c.quote(Tier::Free, &base).fallback_price, 10);
        assert!(CostFormula::parse(&json!({"fallback_cost": -1})).is_err());
        assert!(CostFormula::parse(&json!({"fallback_cost": 100001})).is_err());
    }

    #[test]
    fn formulas_are_validated_strictly() {
        assert!(CostFormula::parse(&seed_formula()).is_ok());
        assert!(
            CostFormula::parse(&json!({"gpu_seconds": {"over": 1, "every": 1, "cost": 1}}))
                .is_err()
        );
        assert!(CostFormula::parse(&json!({"steps": {"over": 1, "every": 0, "cost": 1}})).is_err());
        assert!(
            CostFormula::parse(&json!({"steps": {"over": 1, "every": 1, "cost": 1, "cap": 5}}))
                .is_err()
        );
        assert!(CostFormula::parse(&json!({"job_type": {"teleport": 1}})).is_err());
        assert!(TierMultipliers::parse(&json!({"GOLD": 1.0})).is_err());
        assert!(TierMultipliers::parse(&json!({"PRO": 0.1234})).is_err());
        assert!(TierMultipliers::parse(&json!({"PRO": -1})).is_err());
    }

    #[test]
    fn access_rules() {
        let mut c = config(seed_formula());
        c.minimum_tier = Some(Tier::Pro);
        assert!(c.check_access(Tier::Premium, true).is_err());
        assert!(c.check_access(Tier::Pro, true).is_ok());
        assert!(c.check_access(Tier::Enterprise, true).is_ok());
        c.minimum_tier = None;
        c.requires_subscription = true;
        assert!(c.check_access(Tier::Pro, false).is_err());
        assert!(c.check_access(Tier::Free, true).is_ok());
    }

    #[test]
    fn chargeable_routes_come_from_one_list() {
        assert_eq!(GENERATE.path(&["abc"]), "/api/v1/characters/abc/generate");
        assert_eq!(GENERATE.label(), "POST /api/v1/characters/:id/generate");
        assert!(pattern_matches(
            GENERATE.endpoint_pattern,
            &GENERATE.path(&["x"])
        ));
        assert_eq!(
            chargeable_endpoint("POST", "/api/v1/characters/:id/generate"),
            Some(&GENERATE)
        );
        // The placeholder's name does not matter; its place does.
        assert!(chargeable_endpoint("POST", "/api/v1/characters/:character_id/generate").is_some());
        assert!(chargeable_endpoint("post", "/api/v1/characters/:id/generate").is_some());
        for (method, pattern) in [
            ("GET", "/api/v1/characters/:id/generate"),
            ("POST", "/api/v1/characters/abc/generate"),
            ("POST", "/api/v1/characters/:id/upscale"),
            ("POST", "/api/v1/characters/:id/:action"),
            ("POST", "/api/v1/characters/:/generate"),
            ("POST", "/api/v1/characters/:id/generate/x"),
            ("POST", "/api/v1/things/:id/render"),
        ] {
            assert!(
                chargeable_endpoint(method, pattern).is_none(),
                "{method} {pattern}"
            );
        }
        let mut c = config(seed_formula());
        assert!(c.is_chargeable());
        c.endpoint_pattern = "/api/v1/characters/:id/animate".into();
        assert!(!c.is_chargeable());
    }

    #[test]
    fn patterns_match_segments() {
        assert!(pattern_matches(
            "/api/v1/characters/:id/generate",
            "/api/v1/characters/abc/generate"
        ));
        assert!(!pattern_matches(
            "/api/v1/characters/:id/generate",
            "/api/v1/characters//generate"
        ));
        assert!(!pattern_matches(
            "/api/v1/characters/:id/generate",
            "/api/v1/characters/abc/x/generate"
        ));
        assert!(!pattern_matches(
            "/api/v1/characters/:id/generate",
            "/api/v1/characters/abc"
        ));
    }
}
