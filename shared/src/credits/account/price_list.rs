//! `GET /api/v1/pricing`: what each enabled priced endpoint (of the routes
//! that are charged, `pricing::CHARGEABLE_ENDPOINTS`) costs the caller
//! now, whether they may call it, its limits and (signed in) how much of them
//! is used, and which buckets would pay for a default request.
//!
//! Reading is free: the rate-limit windows are read, never counted, so
//! looking at the price list does not use up a limit.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::GenericClient;
use utoipa::ToSchema;

use super::NoQuery;
use crate::web::auth::OptionalCaller;
use crate::web::responses::{Authenticated, ServerFailures};
use crate::web::state::AppState;

use crate::credits::engine::tier_of;
use crate::credits::ledger;
use crate::credits::pricing::{CostFormula, PriceConfig, PriceInputs};
use crate::kernel::error::{ApiError, Problem};
use crate::kernel::tier::Tier;
use crate::users::User;
use crate::web::http::ApiQuery;
use crate::web::responses::ValidationFailed;

/// The request every price in the list is quoted for.
pub fn default_request() -> PriceInputs {
    PriceInputs {
        job_type: Some("character_generation".into()),
        steps: Some(20),
        width: Some(512),
        height: Some(512),
        batch_size: Some(1),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PriceList {
    /// Whether the list was computed for a signed-in account (else as for anonymous callers).
    signed_in: bool,
    /// The tier prices are computed for (anonymous and lapsed subscriptions: FREE).
    tier: Tier,
    /// Whether the caller has an active subscription.
    subscribed: bool,
    /// The request every `price` is quoted for.
    default_request: PriceInputs,
    /// What the caller could pay with now (signed in only).
    buckets: Option<Buckets>,
    /// Every enabled pricing config of a route that is charged (today
    /// `POST /api/v1/characters/:id/generate`).
    items: Vec<PricedEndpoint>,
}

/// What the caller could pay with now.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, ToSchema)]
pub(crate) struct Buckets {
    free_generations_left: i32,
    daily_allowance_left: i32,
    /// Purchased credits not held by running jobs.
    available: i32,
}

/// An endpoint's access rules and limits.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = PricingLimits)]
struct Limits {
    /// Calls per daily window of the user (`null`: unlimited).
    daily_limit: Option<i32>,
    /// Calls per UTC minute (`null`: unlimited).
    rate_limit_per_minute: Option<i32>,
    requires_subscription: bool,
    /// `FREE`, `PREMIUM`, `PRO` or `ENTERPRISE` (`null`: any tier).
    minimum_tier: Option<Tier>,
}

/// One rate-limit window: read, never counted, by this route.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = UsageWindow)]
struct Window {
    /// Calls counted in this window so far.
    used: i32,
    /// `null`: unlimited.
    limit: Option<i32>,
    /// `null`: unlimited.
    remaining: Option<i32>,
    /// When the window ends.
    resets_at: DateTime<Utc>,
}

/// The caller's use of an endpoint's limits.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = PricingUsage)]
struct Usage {
    /// This UTC minute.
    minute: Window,
    /// The caller's daily window (it ends at the local midnight computed when it started).
    day: Window,
}

/// How a hold would pay `price` now, in the engine's order: one free daily
/// generation covers all of it; else the daily allowance, then purchased credits.
#[derive(Debug, Serialize, PartialEq, Eq, ToSchema)]
pub(crate) struct WouldPay {
    free_generation: bool,
    allowance_credits: i32,
    purchased_credits: i32,
    affordable: bool,
}

pub(super) fn would_pay(price: i32, buckets: Buckets) -> WouldPay {
    if buckets.free_generations_left > 0 {
        return WouldPay {
            free_generation: true,
            allowance_credits: 0,
            purchased_credits: 0,
            affordable: true,
        };
    }
    let allowance = buckets.daily_allowance_left.max(0).min(price);
    let purchased = price - allowance;
    WouldPay {
        free_generation: false,
        allowance_credits: allowance,
        purchased_credits: purchased,
        affordable: purchased <= buckets.available.max(0),
    }
}

/// What one priced endpoint costs the caller.
#[derive(Debug, Serialize, ToSchema)]
struct PricedEndpoint {
    /// The pricing config's id.
    id: String,
    http_method: String,
    /// The route, with `:param` placeholders (`/api/v1/characters/:id/generate`).
    endpoint_pattern: String,
    description: Option<String>,
    category: Option<String>,
    base_cost: i32,
    /// The formula's terms, present keys only: `job_type` (a fixed amount per job type) and
    /// the thresholds `steps`, `pixels` and `batch_size` (`{over, every, cost}`: `cost` for
    /// every started `every` above `over`).
    #[schema(value_type = Option<Object>)]
    cost_formula: Option<CostFormula>,
    tier: Tier,
    /// The caller's tier's multiplier (1 for a tier the config does not list).
    tier_multiplier: f64,
    /// The price of the default request for the caller's tier.
    price: i32,
    /// How `price` came out: `config_id`, `base_cost`, `terms`, `subtotal`, `tier`,
    /// `tier_multiplier`, `price`.
    cost_calculation: Value,
    /// Whether the caller's tier and subscription allow calling it (limits are reported
    /// apart).
    allowed: bool,
    /// Why not, when not `allowed`.
    denied_reason: Option<String>,
    limits: Limits,
    /// Signed in only: this minute's and this daily window's counts.
    usage: Option<Usage>,
    /// Signed in only: allowed and under both limits right now.
    can_call_now: Option<bool>,
    /// Signed in only: how the caller's buckets would pay `price` now.
    would_pay: Option<WouldPay>,
}

/// The caller's current rate-limit windows, as the engine keys them: the UTC
/// minute and the user's daily window (by its start).
struct Windows {
    minute_start: DateTime<Utc>,
    day_end: DateTime<Utc>,
    /// (config id, kind) → count
    counts: Vec<(String, String, i32)>,
}

impl Windows {
    fn count(&self, config_id: &str, kind: &str) -> i32 {
        self.counts
            .iter()
            .find(|(c, k, _)| c == config_id && k == kind)
            .map_or(0, |(_, _, n)| *n)
    }
}

async fn windows(client: &impl GenericClient, user: &User) -> Result<Windows, ApiError> {
    // After the lazy reset of `balance`: the open window.
    let day = ledger::daily_window(client, &user.id).await?;
    let minute_start: DateTime<Utc> = client
        .query_one("SELECT date_trunc('minute', now())", &[])
        .await?
        .try_get(0)?;
    let rows = client
        .query(
            "SELECT config_id, window_kind, request_count FROM rate_limit_windows \
             WHERE user_id = $1 AND ((window_kind = 'minute' AND window_start = $2) \
                                  OR (window_kind = 'day' AND window_start = $3))",
            &[&user.id, &minute_start, &day.starts_at],
        )
        .await?;
    let counts = rows
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    Ok(Windows {
        minute_start,
        day_end: day.ends_at,
        counts,
    })
}

fn window(used: i32, limit: Option<i32>, resets_at: DateTime<Utc>) -> Window {
    Window {
        used,
        limit,
        remaining: limit.map(|l| (l - used).max(0)),
        resets_at,
    }
}

/// What each priced endpoint costs the caller now.
///
/// For every enabled pricing config of a route that is charged (only
/// `POST /api/v1/characters/:id/generate` is; configs for other routes price nothing and are
/// not listed): the price of a default request (`character_generation`, 20 steps, 512×512,
/// batch 1) for the caller's tier, whether the tier and subscription allow the call, and its
/// limits. Signed in, also this minute's and this daily window's usage (read, never counted:
/// looking does not use up a limit), whether a call would go through now, the caller's
/// buckets and how they would pay. Takes no query parameters.
#[utoipa::path(
    get,
    path = "/api/v1/pricing",
    tag = "credits",
    operation_id = "get_pricing",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The price list for the caller.", body = PriceList),
        (status = 404, description = "The caller's account has no credit account.", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = ValidationFailed),
        Authenticated,
        ServerFailures,
    )
)]
pub(crate) async fn show(
    State(state): State<AppState>,
    OptionalCaller(identity): OptionalCaller,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
) -> Result<Json<PriceList>, ApiError> {
    let mut client = state.db.get().await?;
    let user = crate::users::repo::optional_user(&**client, identity.as_ref()).await?;
    let (tier, subscribed) = user.as_ref().map(tier_of).unwrap_or((Tier::Free, false));
    let client: &mut tokio_postgres::Client = &mut client;
    // The balance read resets the daily counters lazily: a transaction, as the system role.
    let tx = client.transaction().await?;
    let configs = state
        .cache::<crate::credits::engine::PricingCache>()
        .configs(&tx)
        .await?;
    let (buckets, windows) = match &user {
        Some(user) => {
            let balance =
                crate::credits::balance(&tx, &user.id, state.config.credits.gift_hold_days).await?;
            let buckets = Buckets {
                free_generations_left: balance.free_generations_left,
                daily_allowance_left: balance.daily_allowance_left,
                available: balance.available,
            };
            (Some(buckets), Some(windows(&tx, user).await?))
        }
        None => (None, None),
    };
    tx.commit().await?;

    let request = default_request();
    let items = configs
        .iter()
        // Only what is charged is listed: a row for any other route prices nothing.
        .filter(|c| c.is_enabled && c.is_chargeable())
        .map(|config| {
            priced(
                config,
                tier,
                subscribed,
                &request,
                buckets,
                windows.as_ref(),
            )
        })
        .collect();
    Ok(Json(PriceList {
        signed_in: user.is_some(),
        tier,
        subscribed,
        default_request: request,
        buckets,
        items,
    }))
}

fn priced(
    config: &PriceConfig,
    tier: Tier,
    subscribed: bool,
    request: &PriceInputs,
    buckets: Option<Buckets>,
    windows: Option<&Windows>,
) -> PricedEndpoint {
    let quote = config.quote(tier, request);
    let denied_reason = match config.check_access(tier, subscribed) {
        Ok(()) => None,
        Err(ApiError::Forbidden(reason)) => Some(reason),
        Err(other) => Some(other.to_string()),
    };
    let usage = windows.map(|w| Usage {
        minute: window(
            w.count(&config.id, "minute"),
            config.rate_limit_per_minute,
            w.minute_start + chrono::Duration::minutes(1),
        ),
        day: window(w.count(&config.id, "day"), config.daily_limit, w.day_end),
    });
    let can_call_now = usage.as_ref().map(|u| {
        denied_reason.is_none()
            && u.minute.remaining.is_none_or(|r| r > 0)
            && u.day.remaining.is_none_or(|r| r > 0)
    });
    PricedEndpoint {
        id: config.id.clone(),
        http_method: config.http_method.clone(),
        endpoint_pattern: config.endpoint_pattern.clone(),
        description: config.description.clone(),
        category: config.category.clone(),
        base_cost: config.base_cost,
        cost_formula: config.cost_formula.clone(),
        tier,
        tier_multiplier: config.tier_multipliers.for_tier(tier) as f64 / 1000.0,
        price: quote.price,
        cost_calculation: quote.calculation,
        allowed: denied_reason.is_none(),
        denied_reason,
        limits: Limits {
            daily_limit: config.daily_limit,
            rate_limit_per_minute: config.rate_limit_per_minute,
            requires_subscription: config.requires_subscription,
            minimum_tier: config.minimum_tier,
        },
        usage,
        can_call_now,
        would_pay: buckets.map(|b| would_pay(quote.price, b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buckets(free: i32, allowance: i32, available: i32) -> Buckets {
        Buckets {
            free_generations_left: free,
            daily_allowance_left: allowance,
            available,
        }
    }

    #[test]
    fn a_free_generation_pays_everything_first() {
        let pay = would_pay(10, buckets(1, 50, 0));
        assert!(pay.free_generation && pay.affordable);
        assert_eq!((pay.allowance_credits, pay.purchased_credits), (0, 0));
    }

    #[test]
    fn allowance_then_purchased_credits() {
        assert_eq!(
            would_pay(10, buckets(0, 4, 6)),
            WouldPay {
                free_generation: false,
                allowance_credits: 4,
                purchased_credits: 6,
                affordable: true
            }
        );
        assert!(!would_pay(10, buckets(0, 4, 5)).affordable);
        assert_eq!(would_pay(10, buckets(0, 40, 0)).allowance_credits, 10);
        assert!(would_pay(0, buckets(0, 0, 0)).affordable);
    }
}
