//! `api_credit_configs` for admins: list, create, update. Every field is
//! validated as the pricing engine will read it, so a config an admin saves
//! can always price a request; writes drop this process's pricing cache.
//!
//! Only routes that are charged may be priced
//! ([`crate::credits::pricing::CHARGEABLE_ENDPOINTS`], today
//! `POST /api/v1/characters/:id/generate`): a config for any other route
//! would be listed but never charged or limited, so it is a 422 naming
//! `endpoint_pattern`, and nothing is stored.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio_postgres::GenericClient;
use utoipa::{IntoParams, ToSchema};

use crate::activity::changes;
use crate::activity::{self, Activity};
use crate::credits::engine::PricingCache;
use crate::credits::pricing::{
    CHARGEABLE_ENDPOINTS, CostFormula, TierMultipliers, chargeable_endpoint,
};
use crate::kernel::error::{ApiError, FieldError, Problem};
use crate::kernel::tier::Tier;
use crate::users::account::AdminAccount;
use crate::web::http::resource_id;
use crate::web::http::{ApiJson, ApiPath, ApiQuery, RequestMeta};
use crate::web::input::checks::FieldResult;
use crate::web::input::values::{self, nullable, raw, require, set, value};
use crate::web::input::{RequestBody, decode_with};
use crate::web::pagination::{self, Page};
use crate::web::responses::ValidationFailed;
use crate::web::responses::{AdminAuthenticated, AdminSignedIn, BodyRefused, ServerFailures};
use crate::web::state::AppState;

pub const HTTP_METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Fields an admin may set.
pub const WRITABLE_FIELDS: [&str; 12] = [
    "endpoint_pattern",
    "http_method",
    "base_cost",
    "cost_formula",
    "tier_multipliers",
    "daily_limit",
    "rate_limit_per_minute",
    "requires_subscription",
    "minimum_tier",
    "is_enabled",
    "description",
    "category",
];
pub const READ_ONLY_FIELDS: [&str; 3] = ["id", "created_at", "updated_at"];

pub const MAX_BASE_COST: i64 = 100_000;
pub const MAX_LIMIT: i64 = 1_000_000;
/// Bounds of a formula threshold's `over` and `every`: far above any real
/// request parameter, and low enough that pricing arithmetic cannot overflow.
pub const MAX_THRESHOLD: i64 = 1_000_000_000;
pub const MAX_PATTERN_LEN: usize = 200;

/// The column default of `tier_multipliers` (V1), used when a new config
/// does not say.
pub fn default_tier_multipliers() -> Value {
    Value::Object(
        Tier::ALL
            .iter()
            .map(|tier| {
                (
                    tier.as_str().to_string(),
                    json!(tier.terms().default_multiplier),
                )
            })
            .collect(),
    )
}

/// An `api_credit_configs` row: the price of one route.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct PricingConfig {
    pub id: String,
    /// The priced route, with `:param` placeholders (`/api/v1/characters/:id/generate`).
    pub endpoint_pattern: String,
    pub http_method: String,
    pub base_cost: i32,
    /// The formula's terms (see `NewPricingConfig.cost_formula`).
    pub cost_formula: Option<Value>,
    /// Tier to multiplier (`{"FREE": 1.0, "PRO": 0.6}`); a tier not listed pays 1.
    pub tier_multipliers: Option<Value>,
    /// Calls per user and local day (`null`: unlimited).
    pub daily_limit: Option<i32>,
    /// Calls per user and UTC minute (`null`: unlimited).
    pub rate_limit_per_minute: Option<i32>,
    pub requires_subscription: bool,
    pub minimum_tier: Option<String>,
    /// Disabled configs price nothing (a generation route without one answers 503).
    pub is_enabled: bool,
    pub description: Option<String>,
    pub category: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, endpoint_pattern, http_method, base_cost, cost_formula, tier_multipliers, \
    daily_limit, rate_limit_per_minute, coalesce(requires_subscription, false) AS requires_subscription, \
    minimum_tier, coalesce(is_enabled, false) AS is_enabled, description, category, created_at, updated_at";

impl PricingConfig {
    fn from_row(row: &tokio_postgres::Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            endpoint_pattern: row.try_get("endpoint_pattern")?,
            http_method: row.try_get("http_method")?,
            base_cost: row.try_get("base_cost")?,
            cost_formula: row.try_get("cost_formula")?,
            tier_multipliers: row.try_get("tier_multipliers")?,
            daily_limit: row.try_get("daily_limit")?,
            rate_limit_per_minute: row.try_get("rate_limit_per_minute")?,
            requires_subscription: row.try_get("requires_subscription")?,
            minimum_tier: row.try_get("minimum_tier")?,
            is_enabled: row.try_get("is_enabled")?,
            description: row.try_get("description")?,
            category: row.try_get("category")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }

    fn values(&self) -> PricingValues {
        PricingValues {
            endpoint_pattern: self.endpoint_pattern.clone(),
            http_method: self.http_method.clone(),
            base_cost: self.base_cost,
            cost_formula: self.cost_formula.clone().filter(|f| !f.is_null()),
            tier_multipliers: self.tier_multipliers.clone(),
            daily_limit: self.daily_limit,
            rate_limit_per_minute: self.rate_limit_per_minute,
            requires_subscription: self.requires_subscription,
            minimum_tier: self.minimum_tier.clone(),
            is_enabled: self.is_enabled,
            description: self.description.clone(),
            category: self.category.clone(),
        }
    }
}

/// What an admin sets: a whole row's writable columns.
#[derive(Debug, Clone, PartialEq)]
pub struct PricingValues {
    pub endpoint_pattern: String,
    pub http_method: String,
    pub base_cost: i32,
    pub cost_formula: Option<Value>,
    pub tier_multipliers: Option<Value>,
    pub daily_limit: Option<i32>,
    pub rate_limit_per_minute: Option<i32>,
    pub requires_subscription: bool,
    pub minimum_tier: Option<String>,
    pub is_enabled: bool,
    pub description: Option<String>,
    pub category: Option<String>,
}

impl PricingValues {
    /// A new config: `endpoint_pattern`, `http_method` and `base_cost` are
    /// required; the rest take the column defaults.
    pub fn for_create(body: Map<String, Value>) -> Result<Self, ApiError> {
        decode_with::<NewPricingConfig, _>(body, |body, errors| {
            let mut values = Self {
                endpoint_pattern: String::new(),
                http_method: String::new(),
                base_cost: 0,
                cost_formula: None,
                tier_multipliers: Some(default_tier_multipliers()),
                daily_limit: None,
                rate_limit_per_minute: None,
                requires_subscription: false,
                minimum_tier: None,
                is_enabled: true,
                description: None,
                category: None,
            };
            require(errors, "endpoint_pattern", &body.endpoint_pattern);
            require(errors, "http_method", &body.http_method);
            require(errors, "base_cost", &body.base_cost);
            values.apply_route(
                body.endpoint_pattern,
                body.http_method,
                body.base_cost,
                errors,
            );
            values.apply(body.settings, errors);
            values.refuse_unchargeable(errors);
            values
        })
    }

    /// `self` with a partial update applied (absent = unchanged, `null`
    /// clears a nullable field).
    pub fn patched(mut self, body: Map<String, Value>) -> Result<Self, ApiError> {
        decode_with::<PricingConfigPatch, _>(body, |body, errors| {
            self.apply_route(
                body.endpoint_pattern,
                body.http_method,
                body.base_cost,
                errors,
            );
            self.apply(body.settings, errors);
            self.refuse_unchargeable(errors);
            self
        })
    }

    /// A config must price a route that is charged
    /// ([`crate::credits::pricing::CHARGEABLE_ENDPOINTS`]): one for any other
    /// route would be listed in `GET /api/v1/pricing` but never charged or
    /// limited. Checked on the whole resulting row, so an update of a config
    /// left over from before that rule is refused until its route is one.
    fn refuse_unchargeable(&self, errors: &mut Vec<FieldError>) {
        let named = |field: &str| errors.iter().any(|e| e.field == field);
        if named("endpoint_pattern") || named("http_method") {
            return;
        }
        if chargeable_endpoint(&self.http_method, &self.endpoint_pattern).is_none() {
            errors.push(FieldError::new(
                "endpoint_pattern",
                format!(
                    "{} {} is not a route that is charged, so a price for it would never be \
                     charged or limited; routes that are: {}",
                    self.http_method,
                    self.endpoint_pattern,
                    chargeable_list()
                ),
            ));
        }
    }
}

/// `POST /api/v1/characters/:id/generate, ...`
fn chargeable_list() -> String {
    CHARGEABLE_ENDPOINTS
        .iter()
        .map(|e| e.label())
        .collect::<Vec<_>>()
        .join(", ")
}

impl PricingValues {
    /// The route a config prices, and its base cost.
    fn apply_route(
        &mut self,
        endpoint: Option<Value>,
        method: Option<Value>,
        base_cost: Option<Value>,
        e: &mut Vec<FieldError>,
    ) {
        set(
            &mut self.endpoint_pattern,
            value(e, "endpoint_pattern", endpoint, endpoint_pattern),
        );
        set(
            &mut self.http_method,
            value(e, "http_method", method, values::one_of(&HTTP_METHODS)),
        );
        set(
            &mut self.base_cost,
            value(e, "base_cost", base_cost, values::whole(0, MAX_BASE_COST)),
        );
    }

    fn apply(&mut self, body: PricingSettings, e: &mut Vec<FieldError>) {
        set(
            &mut self.cost_formula,
            nullable(e, "cost_formula", body.cost_formula, cost_formula),
        );
        set(
            &mut self.tier_multipliers,
            value(
                e,
                "tier_multipliers",
                body.tier_multipliers,
                tier_multipliers,
            )
            .map(Some),
        );
        set(
            &mut self.daily_limit,
            nullable(
                e,
                "daily_limit",
                body.daily_limit,
                values::whole(1, MAX_LIMIT),
            ),
        );
        set(
            &mut self.rate_limit_per_minute,
            nullable(
                e,
                "rate_limit_per_minute",
                body.rate_limit_per_minute,
                values::whole(1, MAX_LIMIT),
            ),
        );
        set(
            &mut self.requires_subscription,
            value(
                e,
                "requires_subscription",
                body.requires_subscription,
                values::boolean,
            ),
        );
        set(
            &mut self.minimum_tier,
            nullable(
                e,
                "minimum_tier",
                body.minimum_tier,
                values::one_of(&Tier::NAMES),
            ),
        );
        set(
            &mut self.is_enabled,
            value(e, "is_enabled", body.is_enabled, values::boolean),
        );
        set(
            &mut self.description,
            nullable(e, "description", body.description, values::text(500, true))
                .map(Option::flatten),
        );
        set(
            &mut self.category,
            nullable(e, "category", body.category, values::text(50, false)).map(Option::flatten),
        );
    }
}

/// `/api/v1/...`: segments of `[a-z0-9_-]` or a `:param` placeholder.
pub fn endpoint_pattern(field: &str, value: &Value) -> FieldResult<String> {
    let raw = values::string(field, value)?;
    let invalid = || {
        FieldError::new(
            field,
            "must be a path starting with /api/v1/ whose segments are [a-z0-9_-] or a :param \
             placeholder, without a trailing slash (e.g. /api/v1/characters/:id/generate)",
        )
    };
    if raw.len() > MAX_PATTERN_LEN {
        return Err(FieldError::new(
            field,
            format!("must be at most {MAX_PATTERN_LEN} characters"),
        ));
    }
    let rest = raw.strip_prefix("/api/v1/").ok_or_else(invalid)?;
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    let param = |s: &str| {
        s.strip_prefix(':').is_some_and(|name| {
            name.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
    };
    if rest.split('/').all(|s| plain(s) || param(s)) {
        Ok(raw.to_string())
    } else {
        Err(invalid())
    }
}

/// Two patterns overlap when some path matches both: same number of
/// segments, each pair equal or one of them a placeholder. The engine prices
/// a request by the first match, so overlapping configs of one method would
/// make the price depend on row order.
pub fn patterns_overlap(a: &str, b: &str) -> bool {
    let a: Vec<&str> = a.split('/').collect();
    let b: Vec<&str> = b.split('/').collect();
    a.len() == b.len()
        && a.iter()
            .zip(&b)
            .all(|(x, y)| x == y || x.starts_with(':') || y.starts_with(':'))
}

/// A formula the engine can evaluate, stored in its normalised form.
pub fn cost_formula(field: &str, value: &Value) -> FieldResult<Value> {
    let formula = CostFormula::parse(value)?;
    for (name, term) in [
        ("steps", &formula.steps),
        ("pixels", &formula.pixels),
        ("batch_size", &formula.batch_size),
    ] {
        if let Some(term) = term
            && (term.over > MAX_THRESHOLD || term.every > MAX_THRESHOLD)
        {
            return Err(FieldError::new(
                format!("{field}.{name}"),
                format!("over and every must be at most {MAX_THRESHOLD}"),
            ));
        }
    }
    serde_json::to_value(&formula)
        .map_err(|e| FieldError::new(field, format!("cannot be stored: {e}")))
}

pub fn tier_multipliers(_field: &str, value: &Value) -> FieldResult<Value> {
    TierMultipliers::parse(value)?;
    Ok(value.clone())
}

/// Unknown parameters are refused with a 422.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1 to 100 (default 24).
    #[param(minimum = 1, maximum = 100, nullable = false)]
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    #[param(nullable = false)]
    cursor: Option<String>,
}

/// A new pricing config. Read-only (`id`, timestamps) and unknown fields are refused with a
/// 422 naming them; every invalid field is named at once.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewPricingConfig {
    /// A path starting with `/api/v1/` whose segments are `[a-z0-9_-]` or a `:param`
    /// placeholder, without a trailing slash, at most 200 characters. With `http_method`, it
    /// must name a route that is charged (today only `POST /api/v1/characters/:id/generate`;
    /// placeholder names are free): a price for any other route would never be charged or
    /// limited, so it is refused with a 422 naming `endpoint_pattern`. No two configs of one
    /// method may match the same path (409).
    #[serde(default, deserialize_with = "raw")]
    #[schema(
        value_type = String,
        required = true,
        max_length = 200,
        pattern = "^/api/v1(/([a-z0-9_-]+|:[a-z_][a-z0-9_]*))+$"
    )]
    endpoint_pattern: Option<Value>,
    #[serde(default, deserialize_with = "raw")]
    #[schema(required = true, schema_with = http_method_schema)]
    http_method: Option<Value>,
    /// 0 to 100000 credits.
    #[serde(default, deserialize_with = "raw")]
    #[schema(value_type = i32, required = true, minimum = 0, maximum = 100_000)]
    base_cost: Option<Value>,
    #[serde(flatten)]
    settings: PricingSettings,
}

/// Changes to a pricing config: only the fields sent change, `null` clears a nullable one.
/// Read-only (`id`, timestamps) and unknown fields are refused with a 422 naming them.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PricingConfigPatch {
    /// As in `NewPricingConfig`.
    #[serde(default, deserialize_with = "raw")]
    #[schema(
        value_type = String,
        max_length = 200,
        pattern = "^/api/v1(/([a-z0-9_-]+|:[a-z_][a-z0-9_]*))+$"
    )]
    endpoint_pattern: Option<Value>,
    #[serde(default, deserialize_with = "raw")]
    #[schema(schema_with = http_method_schema)]
    http_method: Option<Value>,
    /// 0 to 100000 credits.
    #[serde(default, deserialize_with = "raw")]
    #[schema(value_type = i32, minimum = 0, maximum = 100_000)]
    base_cost: Option<Value>,
    #[serde(flatten)]
    settings: PricingSettings,
}

/// The optional settings of a pricing config.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PricingSettings {
    /// Added to `base_cost`, all keys optional, unknown keys refused: `job_type` maps job
    /// types (`character_generation`, `style_transfer`, `upscale`, `variation`,
    /// `background_removal`) to 0 to 100000 credits; `steps`, `pixels` (width × height) and
    /// `batch_size` are `{over, every, cost}` thresholds (`over` ≥ 0, `every` ≥ 1, both at most
    /// 1000000000; `cost` 0 to 100000) adding `cost × ceil(max(0, value − over) / every)`.
    /// `null`: no formula (absent: none on creation, unchanged on an update).
    #[serde(default, deserialize_with = "raw")]
    #[schema(value_type = Option<Object>)]
    cost_formula: Option<Value>,
    /// Tier (`FREE`, `PREMIUM`, `PRO`, `ENTERPRISE`) to a multiplier from 0 to 10 with at
    /// most 3 decimals; the price is rounded up after multiplying. Default
    /// `{"FREE": 1.0, "PREMIUM": 0.8, "PRO": 0.6, "ENTERPRISE": 0.4}`; not `null`.
    #[serde(default, deserialize_with = "raw")]
    #[schema(value_type = Object)]
    tier_multipliers: Option<Value>,
    /// Calls per user and local day, 1 to 1000000 (`null`: unlimited).
    #[serde(default, deserialize_with = "raw")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 1_000_000)]
    daily_limit: Option<Value>,
    /// Calls per user and UTC minute, 1 to 1000000 (`null`: unlimited).
    #[serde(default, deserialize_with = "raw")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 1_000_000)]
    rate_limit_per_minute: Option<Value>,
    /// Default `false`.
    #[serde(default, deserialize_with = "raw")]
    #[schema(value_type = bool)]
    requires_subscription: Option<Value>,
    #[serde(default, deserialize_with = "raw")]
    #[schema(schema_with = minimum_tier_schema)]
    minimum_tier: Option<Value>,
    /// Default `true`.
    #[serde(default, deserialize_with = "raw")]
    #[schema(value_type = bool)]
    is_enabled: Option<Value>,
    /// At most 500 characters, multi-line, trimmed; blank or `null` is none.
    #[serde(default, deserialize_with = "raw")]
    #[schema(value_type = Option<String>, max_length = 500)]
    description: Option<Value>,
    /// At most 50 characters, trimmed; blank or `null` is none.
    #[serde(default, deserialize_with = "raw")]
    #[schema(value_type = Option<String>, max_length = 50)]
    category: Option<Value>,
}

impl RequestBody for NewPricingConfig {
    /// Applied onto the column defaults: [`PricingValues::for_create`].
    type Valid = Self;

    fn read_only(field: &str) -> bool {
        READ_ONLY_FIELDS.contains(&field)
    }

    fn validate(self, _errors: &mut Vec<FieldError>) -> Self {
        self
    }
}

impl RequestBody for PricingConfigPatch {
    /// Applied onto the stored row: [`PricingValues::patched`].
    type Valid = Self;

    fn read_only(field: &str) -> bool {
        READ_ONLY_FIELDS.contains(&field)
    }

    fn validate(self, _errors: &mut Vec<FieldError>) -> Self {
        self
    }
}

fn http_method_schema() -> utoipa::openapi::Object {
    crate::web::responses::string_enum(&HTTP_METHODS, false, "The priced route's method.")
}

fn minimum_tier_schema() -> utoipa::openapi::Object {
    crate::web::responses::string_enum(
        &Tier::NAMES,
        true,
        "The lowest tier that may call the route (403 below it); `null` or absent: any tier.",
    )
}

/// Keyset position: configs are listed by pattern, then method.
#[derive(Debug, Serialize, Deserialize)]
struct PricingKey {
    p: String,
    m: String,
}

/// Every pricing config, enabled or not.
///
/// By `endpoint_pattern`, then `http_method`. The token must carry the `admin` permission.
#[utoipa::path(
    get,
    path = "/api/v1/admin/pricing",
    tag = "admin",
    operation_id = "admin_list_pricing",
    security(("bearer" = ["admin"])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of pricing configs.", body = Page<PricingConfig>),
        (status = 422, response = ValidationFailed),
        AdminSignedIn,
        ServerFailures,
    )
)]
pub async fn list(
    account: AdminAccount,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<PricingConfig>>, ApiError> {
    let limit = pagination::limit(query.limit)?;
    let after: Option<PricingKey> = pagination::decode(query.cursor.as_deref())?;
    if after
        .as_ref()
        .is_some_and(|k| k.p.contains('\0') || k.m.contains('\0'))
    {
        return Err(ApiError::validation(
            "cursor",
            "is not a cursor this endpoint returned",
        ));
    }
    let client = account.client();
    let (p, m) = after.map(|k| (k.p, k.m)).unzip();
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM api_credit_configs \
                 WHERE $1::text IS NULL OR (endpoint_pattern, http_method) > ($1, $2) \
                 ORDER BY endpoint_pattern, http_method LIMIT $3"
            ),
            &[&p, &m, &(limit + 1)],
        )
        .await?;
    let configs = rows
        .iter()
        .map(PricingConfig::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(pagination::page(configs, limit, |c| PricingKey {
        p: c.endpoint_pattern.clone(),
        m: c.http_method.clone(),
    })))
}

/// Price a route.
///
/// Every field is validated as the pricing engine reads it, so a saved config can always
/// price a request. Only a route that is charged can be priced (today
/// `POST /api/v1/characters/:id/generate`): any other `endpoint_pattern` and `http_method` is
/// a 422 naming `endpoint_pattern`, and nothing is stored. Takes effect within 30 s in every
/// process (each caches the configs). The token must carry the `admin` permission; the action
/// is logged with the admin's id.
#[utoipa::path(
    post,
    path = "/api/v1/admin/pricing",
    tag = "admin",
    operation_id = "admin_create_pricing",
    security(("bearer" = ["admin"])),
    request_body = NewPricingConfig,
    responses(
        (status = 201, description = "The new config.", body = PricingConfig,
            headers(("Location" = String, description = "The config's URL path."))),
        (status = 409, description = "Another config of the same method matches some of the same paths (the engine prices a request by one config only).", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input, every invalid field named in `errors`, including an `endpoint_pattern` and `http_method` that are not a route that is charged (`/problems/validation-error`).", body = Problem, content_type = "application/problem+json"),
        AdminSignedIn,
        BodyRefused,
        ServerFailures,
    )
)]
pub async fn create(
    mut account: AdminAccount,
    State(state): State<AppState>,
    meta: RequestMeta,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<impl IntoResponse, ApiError> {
    let values = PricingValues::for_create(body)?;
    let (tx, admin) = account.begin().await?;
    lock_pricing(&tx).await?;
    refuse_overlap(&tx, &values, None).await?;
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO api_credit_configs (endpoint_pattern, http_method, base_cost, cost_formula, \
                   tier_multipliers, daily_limit, rate_limit_per_minute, requires_subscription, minimum_tier, \
                   is_enabled, description, category) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING {COLUMNS}"
            ),
            &[
                &values.endpoint_pattern,
                &values.http_method,
                &values.base_cost,
                &values.cost_formula,
                &values.tier_multipliers,
                &values.daily_limit,
                &values.rate_limit_per_minute,
                &values.requires_subscription,
                &values.minimum_tier,
                &values.is_enabled,
                &values.description,
                &values.category,
            ],
        )
        .await?;
    let config = PricingConfig::from_row(&row)?;
    activity::record(
        &tx,
        Activity {
            user_id: Some(&admin.id),
            activity_type: crate::activity::ActivityType::AdminPricingCreated,
            entity_type: Some("api_credit_config"),
            entity_id: Some(&config.id),
            metadata: json!({"config_id": config.id, "config": config}),
        },
        &meta,
    )
    .await?;
    tx.commit().await?;
    // After the commit, so a concurrent reader cannot refill the cache with
    // the old rows.
    state.cache::<PricingCache>().invalidate().await;
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/admin/pricing/{}", config.id)) {
        headers.insert(header::LOCATION, location);
    }
    Ok((StatusCode::CREATED, headers, Json(config)))
}

/// Change a pricing config.
///
/// Only the fields sent change. The resulting config must price a route that is charged, as
/// on creation (422 naming `endpoint_pattern` otherwise, nothing changed), so a config left
/// over for another route cannot be changed until its route is one. Takes effect within 30 s
/// in every process. The token must carry the `admin` permission; the action is logged with
/// the admin's id and what changed.
#[utoipa::path(
    patch,
    path = "/api/v1/admin/pricing/{id}",
    tag = "admin",
    operation_id = "admin_update_pricing",
    security(("bearer" = ["admin"])),
    params(("id" = String, Path, description = "The config's id.")),
    request_body = PricingConfigPatch,
    responses(
        (status = 200, description = "The config, changed.", body = PricingConfig),
        (status = 404, description = "No such pricing config, or the admin has no account yet.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The new pattern or method would match some of the same paths as another config of that method.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input, every invalid field named in `errors`, including an `endpoint_pattern` and `http_method` that are not a route that is charged (`/problems/validation-error`).", body = Problem, content_type = "application/problem+json"),
        BodyRefused,
        AdminAuthenticated,
        ServerFailures,
    )
)]
pub async fn update(
    mut account: AdminAccount,
    State(state): State<AppState>,
    meta: RequestMeta,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<Json<PricingConfig>, ApiError> {
    let id = resource_id(&id, "pricing config")?;
    let (tx, admin) = account.begin().await?;
    lock_pricing(&tx).await?;
    let before = tx
        .query_opt(
            &format!("SELECT {COLUMNS} FROM api_credit_configs WHERE id = $1 FOR UPDATE"),
            &[&id],
        )
        .await?
        .map(|row| PricingConfig::from_row(&row))
        .transpose()?
        .ok_or_else(|| ApiError::NotFound("no such pricing config".into()))?;
    let values = before.values().patched(body)?;
    if values.endpoint_pattern != before.endpoint_pattern
        || values.http_method != before.http_method
    {
        refuse_overlap(&tx, &values, Some(id)).await?;
    }
    let row = tx
        .query_one(
            &format!(
                "UPDATE api_credit_configs SET endpoint_pattern = $2, http_method = $3, base_cost = $4, \
                   cost_formula = $5, tier_multipliers = $6, daily_limit = $7, rate_limit_per_minute = $8, \
                   requires_subscription = $9, minimum_tier = $10, is_enabled = $11, description = $12, \
                   category = $13 \
                 WHERE id = $1 RETURNING {COLUMNS}"
            ),
            &[
                &id,
                &values.endpoint_pattern,
                &values.http_method,
                &values.base_cost,
                &values.cost_formula,
                &values.tier_multipliers,
                &values.daily_limit,
                &values.rate_limit_per_minute,
                &values.requires_subscription,
                &values.minimum_tier,
                &values.is_enabled,
                &values.description,
                &values.category,
            ],
        )
        .await?;
    let after = PricingConfig::from_row(&row)?;
    let changed = changes(
        &serde_json::to_value(&before).unwrap_or_default(),
        &serde_json::to_value(&after).unwrap_or_default(),
        &WRITABLE_FIELDS,
    );
    activity::record(
        &tx,
        Activity {
            user_id: Some(&admin.id),
            activity_type: crate::activity::ActivityType::AdminPricingUpdated,
            entity_type: Some("api_credit_config"),
            entity_id: Some(id),
            metadata: json!({
                "config_id": id,
                "endpoint_pattern": after.endpoint_pattern,
                "http_method": after.http_method,
                "changes": changed,
            }),
        },
        &meta,
    )
    .await?;
    tx.commit().await?;
    state.cache::<PricingCache>().invalidate().await;
    Ok(Json(after))
}

/// Pricing writes take turns, so two concurrent writes cannot both pass the
/// overlap check.
async fn lock_pricing(client: &impl GenericClient) -> Result<(), ApiError> {
    client
        .execute(
            "SELECT pg_advisory_xact_lock(hashtext('api_credit_configs admin writes'))",
            &[],
        )
        .await?;
    Ok(())
}

/// 409 when another config of the same method could price the same path.
async fn refuse_overlap(
    client: &impl GenericClient,
    values: &PricingValues,
    except_id: Option<&str>,
) -> Result<(), ApiError> {
    let rows = client
        .query(
            "SELECT id, endpoint_pattern FROM api_credit_configs \
             WHERE http_method = $1 AND ($2::text IS NULL OR id <> $2)",
            &[&values.http_method, &except_id],
        )
        .await?;
    for row in rows {
        let (other_id, other): (String, String) = (row.try_get(0)?, row.try_get(1)?);
        if patterns_overlap(&values.endpoint_pattern, &other) {
            let what = if other == values.endpoint_pattern {
                "already exists".to_string()
            } else {
                format!("overlaps {other}")
            };
            return Err(ApiError::Conflict(format!(
                "{} {} {what} (config {other_id}); a request must match one config only",
                values.http_method, values.endpoint_pattern
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p: &str) -> bool {
        endpoint_pattern("endpoint_pattern", &json!(p)).is_ok()
    }

    #[test]
    fn endpoint_patterns_are_api_paths() {
        assert!(ok("/api/v1/characters/:id/generate"));
        assert!(ok("/api/v1/a-b_c/9"));
        assert!(ok("/api/v1/x/:job_id2"));
        assert!(!ok("/api/v1/"));
        assert!(!ok("/api/v1"));
        assert!(!ok("/api/v2/x"));
        assert!(!ok("/api/v1/x/"));
        assert!(!ok("/api/v1//x"));
        assert!(!ok("/api/v1/X"));
        assert!(!ok("/api/v1/x/:"));
        assert!(!ok("/api/v1/x/:1d"));
        assert!(!ok("/api/v1/x/a:b"));
        assert!(!ok("/api/v1/x?y=1"));
        assert!(!ok("/api/v1/x%2f"));
        assert!(!ok(&format!("/api/v1/{}", "a".repeat(200))));
        assert!(endpoint_pattern("endpoint_pattern", &json!(3)).is_err());
    }

    #[test]
    fn overlapping_patterns_are_detected() {
        assert!(patterns_overlap(
            "/api/v1/characters/:id/generate",
            "/api/v1/characters/:cid/generate"
        ));
        assert!(patterns_overlap(
            "/api/v1/characters/:id",
            "/api/v1/characters/featured"
        ));
        assert!(!patterns_overlap(
            "/api/v1/characters/:id/generate",
            "/api/v1/characters/:id/download"
        ));
        assert!(!patterns_overlap(
            "/api/v1/characters/:id",
            "/api/v1/characters/:id/generate"
        ));
    }

    #[test]
    fn formulas_name_the_failing_field() {
        let err = cost_formula("cost_formula", &json!({"gpu": 1})).unwrap_err();
        assert_eq!(err.field, "cost_formula");
        let err = cost_formula(
            "cost_formula",
            &json!({"steps": {"over": 1, "every": 10_000_000_000_i64, "cost": 1}}),
        )
        .unwrap_err();
        assert_eq!(err.field, "cost_formula.steps");
        let err = cost_formula("cost_formula", &json!({"job_type": {"teleport": 1}})).unwrap_err();
        assert_eq!(err.field, "cost_formula.job_type.teleport");
    }

    #[test]
    fn a_partial_update_keeps_what_it_does_not_mention() {
        let body = |v: Value| match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let created = PricingValues::for_create(body(json!({
            "endpoint_pattern": "/api/v1/characters/:cid/generate", "http_method": "POST",
            "base_cost": 5, "description": "d", "daily_limit": 3
        })))
        .unwrap();
        assert_eq!(created.tier_multipliers, Some(default_tier_multipliers()));
        assert!(created.is_enabled);
        let patched = created
            .clone()
            .patched(body(json!({"daily_limit": null, "description": "  "})))
            .unwrap();
        assert_eq!(patched.daily_limit, None);
        assert_eq!(patched.description, None);
        assert_eq!(patched.base_cost, 5);
        assert!(
            created
                .clone()
                .patched(body(json!({"tier_multipliers": null})))
                .is_err()
        );
        assert!(created.clone().patched(body(json!({"id": "x"}))).is_err());
        assert!(PricingValues::for_create(body(json!({"http_method": "POST"}))).is_err());
    }

    #[test]
    fn only_routes_that_are_charged_can_be_priced() {
        let body = |v: Value| match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let fields = |result: Result<PricingValues, ApiError>| match result {
            Err(ApiError::Validation { errors, .. }) => {
                errors.into_iter().map(|e| e.field).collect::<Vec<_>>()
            }
            other => panic!("expected a 422, got {other:?}"),
        };
        for (method, pattern) in [
            ("POST", "/api/v1/characters/:id/upscale"),
            ("GET", "/api/v1/characters/:id/generate"),
            ("POST", "/api/v1/characters/featured/generate"),
        ] {
            let refused = PricingValues::for_create(body(json!({
                "endpoint_pattern": pattern, "http_method": method, "base_cost": 1
            })));
            assert_eq!(fields(refused), ["endpoint_pattern"], "{method} {pattern}");
        }
        // A malformed pattern is named once, for what is wrong with it.
        let malformed = PricingValues::for_create(body(json!({
            "endpoint_pattern": "/api/v2/x", "http_method": "POST", "base_cost": 1
        })));
        assert_eq!(fields(malformed), ["endpoint_pattern"]);
        // An update is checked on the row it would leave.
        let generate = PricingValues::for_create(body(json!({
            "endpoint_pattern": "/api/v1/characters/:id/generate", "http_method": "POST",
            "base_cost": 1
        })))
        .unwrap();
        assert_eq!(
            fields(
                generate
                    .clone()
                    .patched(body(json!({"http_method": "PUT"})))
            ),
            ["endpoint_pattern"]
        );
        let mut leftover = generate;
        leftover.endpoint_pattern = "/api/v1/characters/:id/animate".into();
        assert_eq!(
            fields(leftover.clone().patched(body(json!({"description": "x"})))),
            ["endpoint_pattern"]
        );
        assert!(
            leftover
                .patched(body(
                    json!({"endpoint_pattern": "/api/v1/characters/:id/generate"})
                ))
                .is_ok()
        );
    }
}
