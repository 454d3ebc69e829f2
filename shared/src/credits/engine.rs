//! Pricing a request for a user: the configs (cached per process with a short
//! TTL), access rules (403), per-minute and daily limits (429 with
//! `Retry-After`), and the quote.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::RwLock;
use tokio_postgres::GenericClient;

use super::ledger;
use super::pricing::{CostFormula, GENERATE, PriceConfig, PriceInputs, Quote, TierMultipliers};
use crate::kernel::error::ApiError;
use crate::kernel::tier::Tier;
use crate::users::User;

/// `api_credit_configs`, cached per Lambda instance.
pub struct PricingCache {
    ttl: Duration,
    cached: RwLock<Option<(Instant, Arc<Vec<PriceConfig>>)>>,
}

/// How long a process trusts its copy of `api_credit_configs`.
pub const PRICING_CACHE_TTL: Duration = Duration::from_secs(30);

impl crate::web::state::ProcessCache for PricingCache {
    fn build(_: &crate::kernel::config::Config) -> Self {
        Self::new(PRICING_CACHE_TTL)
    }
}

impl PricingCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            cached: RwLock::new(None),
        }
    }

    pub async fn configs(
        &self,
        client: &impl GenericClient,
    ) -> Result<Arc<Vec<PriceConfig>>, ApiError> {
        if let Some((at, configs)) = self.cached.read().await.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(configs.clone());
        }
        let configs = Arc::new(load_configs(client).await?);
        *self.cached.write().await = Some((Instant::now(), configs.clone()));
        Ok(configs)
    }

    /// Drops the cache (after an admin change in this process).
    pub async fn invalidate(&self) {
        *self.cached.write().await = None;
    }
}

pub const CONFIG_COLUMNS: &str = "id, endpoint_pattern, http_method, base_cost, cost_formula, tier_multipliers, \
    daily_limit, rate_limit_per_minute, requires_subscription, minimum_tier, is_enabled, description, category";

pub fn config_from_row(row: &tokio_postgres::Row) -> Result<PriceConfig, ApiError> {
    let id: String = row.try_get("id")?;
    let formula: Option<Value> = row.try_get("cost_formula")?;
    let multipliers: Option<Value> = row.try_get("tier_multipliers")?;
    // A row an operator broke by hand must not price requests by accident.
    let broken = |what: String| ApiError::internal(format!("api_credit_configs {id}: {what}"));
    Ok(PriceConfig {
        cost_formula: formula
            .filter(|f| !f.is_null())
            .map(|f| CostFormula::parse(&f))
            .transpose()
            .map_err(|e| broken(e.message))?,
        tier_multipliers: multipliers
            .map(|m| TierMultipliers::parse(&m))
            .transpose()
            .map_err(|e| broken(e.message))?
            .unwrap_or(TierMultipliers(Default::default())),
        endpoint_pattern: row.try_get("endpoint_pattern")?,
        http_method: row.try_get("http_method")?,
        base_cost: row.try_get("base_cost")?,
        daily_limit: row.try_get("daily_limit")?,
        rate_limit_per_minute: row.try_get("rate_limit_per_minute")?,
        requires_subscription: row
            .try_get::<_, Option<bool>>("requires_subscription")?
            .unwrap_or(false),
        minimum_tier: row.try_get("minimum_tier")?,
        is_enabled: row
            .try_get::<_, Option<bool>>("is_enabled")?
            .unwrap_or(false),
        description: row.try_get("description")?,
        category: row.try_get("category")?,
        id,
    })
}

pub async fn load_configs(client: &impl GenericClient) -> Result<Vec<PriceConfig>, ApiError> {
    let rows = client
        .query(
            &format!("SELECT {CONFIG_COLUMNS} FROM api_credit_configs ORDER BY endpoint_pattern, http_method"),
            &[],
        )
        .await?;
    rows.iter().map(config_from_row).collect()
}

/// The user's tier, and whether they have a subscription in force.
pub fn tier_of(user: &User) -> (Tier, bool) {
    let tier = user.subscription_tier.unwrap_or_default();
    let now = chrono::Utc::now();
    let subscribed = tier != Tier::Free
        && user
            .subscription_start_date
            .is_none_or(|start| start <= now)
        && user.subscription_end_date.is_none_or(|end| end > now);
    // A lapsed subscription prices as FREE.
    let effective = if tier != Tier::Free && !subscribed {
        Tier::Free
    } else {
        tier
    };
    (effective, subscribed)
}

/// Prices `method path` for `user`, enforcing access rules and limits inside
/// the caller's transaction (so a refused or failed request is not counted).
/// `None` when no enabled config of a chargeable route
/// ([`super::pricing::CHARGEABLE_ENDPOINTS`]) prices that route; a generation
/// route must treat that as closed (see [`quote_generation`]).
pub async fn quote(
    client: &impl GenericClient,
    cache: &PricingCache,
    user: &User,
    method: &str,
    path: &str,
    inputs: &PriceInputs,
) -> Result<Option<Quote>, ApiError> {
    let configs = cache.configs(client).await?;
    let Some(config) = configs
        .iter()
        .find(|c| c.is_enabled && c.is_chargeable() && c.matches(method, path))
    else {
        return Ok(None);
    };
    let (tier, subscribed) = tier_of(user);
    config.check_access(tier, subscribed)?;
    enforce_limits(client, user, config).await?;
    Ok(Some(config.quote(tier, inputs)))
}

/// A generation (`path` is [`GENERATE`]'s, for one character) is never free
/// by accident: no enabled config is a 503.
pub async fn quote_generation(
    client: &impl GenericClient,
    cache: &PricingCache,
    user: &User,
    path: &str,
    inputs: &PriceInputs,
) -> Result<Quote, ApiError> {
    quote(client, cache, user, GENERATE.http_method, path, inputs)
        .await?
        .ok_or_else(|| ApiError::ServiceUnavailable {
            detail: "generation is not priced right now (no enabled pricing); try again later"
                .into(),
            retry_after: 60,
        })
}

/// Counts the request in its per-minute (UTC minute) and daily (the user's
/// daily window, [`ledger::daily_window`]) windows; over a limit is a 429
/// with the seconds until the window ends.
async fn enforce_limits(
    client: &impl GenericClient,
    user: &User,
    config: &PriceConfig,
) -> Result<(), ApiError> {
    if let Some(limit) = config.rate_limit_per_minute {
        let row = client
            .query_one(
                "INSERT INTO rate_limit_windows (user_id, config_id, window_kind, window_start, window_end, request_count) \
                 VALUES ($1, $2, 'minute', date_trunc('minute', now()), date_trunc('minute', now()) + interval '1 minute', 1) \
                 ON CONFLICT (user_id, config_id, window_kind, window_start) \
                 DO UPDATE SET request_count = rate_limit_windows.request_count + 1 \
                 RETURNING request_count, \
                   ceil(extract(epoch FROM rate_limit_windows.window_end - now()))::int8",
                &[&user.id, &config.id],
            )
            .await?;
        let count: i32 = row.try_get(0)?;
        let retry_after: i64 = row.try_get(1)?;
        if count > limit {
            return Err(ApiError::TooManyRequests {
                detail: format!("at most {limit} of these per minute"),
                retry_after: retry_after.max(1) as u64,
            });
        }
    }
    if let Some(limit) = config.daily_limit {
        // The users row first (the engine's lock order), then the window it holds:
        // keyed by its start, so a time zone change cannot open another one.
        ledger::lock_user(client, &user.id).await?;
        let window = ledger::daily_window(client, &user.id).await?;
        let row = client
            .query_one(
                "INSERT INTO rate_limit_windows (user_id, config_id, window_kind, window_start, window_end, request_count) \
                 VALUES ($1, $2, 'day', $3, $4, 1) \
                 ON CONFLICT (user_id, config_id, window_kind, window_start) \
                 DO UPDATE SET request_count = rate_limit_windows.request_count + 1 \
                 RETURNING request_count, ceil(extract(epoch FROM $4::timestamptz - now()))::int8",
                &[&user.id, &config.id, &window.starts_at, &window.ends_at],
            )
            .await?;
        let count: i32 = row.try_get(0)?;
        let retry_after: i64 = row.try_get(1)?;
        if count > limit {
            return Err(ApiError::TooManyRequests {
                detail: format!(
                    "at most {limit} of these per day; your daily window ends at {}",
                    window.ends_at.to_rfc3339()
                ),
                retry_after: retry_after.max(1) as u64,
            });
        }
    }
    Ok(())
}
