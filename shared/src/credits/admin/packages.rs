//! `credit_packages` for admins: list (available or not), create, update.
//! Prices are exact decimals: read from the body as text (a JSON string or
//! number), checked, and handed to PostgreSQL as text cast to `numeric`, so no
//! binary floating point ever touches an amount of money.

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::{IntoParams, ToSchema};

use crate::activity::changes;
use crate::activity::{self, Activity};
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

pub const PACKAGE_TYPES: [&str; 3] = ["one_time", "subscription_bonus", "promotional"];

pub const WRITABLE_FIELDS: [&str; 15] = [
    "name",
    "description",
    "credit_amount",
    "bonus_credits",
    "price_usd",
    "price_currency",
    "discount_percentage",
    "is_available",
    "target_tiers",
    "promotion_start_date",
    "promotion_end_date",
    "package_type",
    "display_order",
    "highlight_color",
    "badge_text",
];
pub const READ_ONLY_FIELDS: [&str; 3] = ["id", "created_at", "updated_at"];

pub const MAX_CREDITS: i64 = 10_000_000;
/// `price_usd` is `DECIMAL(10,2)`: at most 8 digits before the point.
pub const MAX_PRICE_INTEGER_DIGITS: usize = 8;
pub const MAX_DISPLAY_ORDER: i64 = 1_000_000;

/// A `credit_packages` row. `price_usd` is the exact decimal as text.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct CreditPackage {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub credit_amount: i32,
    pub bonus_credits: Option<i32>,
    pub price_usd: String,
    pub price_currency: Option<String>,
    pub discount_percentage: Option<i32>,
    pub is_available: Option<bool>,
    pub target_tiers: Option<Vec<String>>,
    pub promotion_start_date: Option<DateTime<Utc>>,
    pub promotion_end_date: Option<DateTime<Utc>>,
    pub package_type: Option<String>,
    pub display_order: Option<i32>,
    pub highlight_color: Option<String>,
    pub badge_text: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, name, description, credit_amount, bonus_credits, price_usd::text AS price_usd, \
    price_currency, discount_percentage, is_available, target_tiers, promotion_start_date, \
    promotion_end_date, package_type, display_order, highlight_color, badge_text, created_at, updated_at";

impl CreditPackage {
    fn from_row(row: &tokio_postgres::Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            description: row.try_get("description")?,
            credit_amount: row.try_get("credit_amount")?,
            bonus_credits: row.try_get("bonus_credits")?,
            price_usd: row.try_get("price_usd")?,
            price_currency: row.try_get("price_currency")?,
            discount_percentage: row.try_get("discount_percentage")?,
            is_available: row.try_get("is_available")?,
            target_tiers: row.try_get("target_tiers")?,
            promotion_start_date: row.try_get("promotion_start_date")?,
            promotion_end_date: row.try_get("promotion_end_date")?,
            package_type: row.try_get("package_type")?,
            display_order: row.try_get("display_order")?,
            highlight_color: row.try_get("highlight_color")?,
            badge_text: row.try_get("badge_text")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }

    fn values(&self) -> PackageValues {
        PackageValues {
            name: self.name.clone(),
            description: self.description.clone(),
            credit_amount: self.credit_amount,
            bonus_credits: self.bonus_credits,
            price_usd: self.price_usd.clone(),
            price_currency: self.price_currency.clone(),
            discount_percentage: self.discount_percentage,
            is_available: self.is_available,
            target_tiers: self.target_tiers.clone(),
            promotion_start_date: self.promotion_start_date,
            promotion_end_date: self.promotion_end_date,
            package_type: self.package_type.clone(),
            display_order: self.display_order,
            highlight_color: self.highlight_color.clone(),
            badge_text: self.badge_text.clone(),
        }
    }
}

/// A package's writable columns. Columns the schema leaves nullable stay
/// `Option` so an update writes back exactly what it did not change; the API
/// itself only accepts `null` for the optional display and promotion fields.
#[derive(Debug, Clone, PartialEq)]
pub struct PackageValues {
    pub name: String,
    pub description: Option<String>,
    pub credit_amount: i32,
    pub bonus_credits: Option<i32>,
    /// Canonical decimal text (`19.99`).
    pub price_usd: String,
    pub price_currency: Option<String>,
    pub discount_percentage: Option<i32>,
    pub is_available: Option<bool>,
    pub target_tiers: Option<Vec<String>>,
    pub promotion_start_date: Option<DateTime<Utc>>,
    pub promotion_end_date: Option<DateTime<Utc>>,
    pub package_type: Option<String>,
    pub display_order: Option<i32>,
    pub highlight_color: Option<String>,
    pub badge_text: Option<String>,
}

impl PackageValues {
    /// A new package: `name`, `credit_amount` and `price_usd` are required;
    /// the rest take the column defaults.
    pub fn for_create(body: Map<String, Value>) -> Result<Self, ApiError> {
        let mut values = Self {
            name: String::new(),
            description: None,
            credit_amount: 0,
            bonus_credits: Some(0),
            price_usd: String::new(),
            price_currency: Some("USD".into()),
            discount_percentage: Some(0),
            is_available: Some(true),
            target_tiers: Some(Tier::NAMES.iter().map(|t| t.to_string()).collect()),
            promotion_start_date: None,
            promotion_end_date: None,
            package_type: Some("one_time".into()),
            display_order: Some(0),
            highlight_color: None,
            badge_text: None,
        };
        decode_with::<NewCreditPackage, _>(body, |body, errors| {
            require(errors, "name", &body.name);
            require(errors, "credit_amount", &body.credit_amount);
            require(errors, "price_usd", &body.price_usd);
            values.apply_offer(body.name, body.credit_amount, body.price_usd, errors);
            values.apply(body.settings, errors);
            values
        })
    }

    pub fn patched(mut self, body: Map<String, Value>) -> Result<Self, ApiError> {
        decode_with::<CreditPackagePatch, _>(body, |body, errors| {
            self.apply_offer(body.name, body.credit_amount, body.price_usd, errors);
            self.apply(body.settings, errors);
            self
        })
    }

    /// What the package is: its name, credits and price.
    fn apply_offer(
        &mut self,
        name: Option<Value>,
        credit_amount: Option<Value>,
        price_usd: Option<Value>,
        e: &mut Vec<FieldError>,
    ) {
        set(
            &mut self.name,
            value(e, "name", name, values::required_text(100, false)),
        );
        set(
            &mut self.credit_amount,
            value(
                e,
                "credit_amount",
                credit_amount,
                values::whole(1, MAX_CREDITS),
            ),
        );
        set(&mut self.price_usd, value(e, "price_usd", price_usd, price));
    }

    fn apply(&mut self, mut body: PackageSettings, e: &mut Vec<FieldError>) {
        self.apply_terms(&mut body, e);
        self.apply_display(&mut body, e);
    }

    /// What a buyer gets and when: bonus, currency, discount, availability, tiers, promotion.
    fn apply_terms(&mut self, body: &mut PackageSettings, e: &mut Vec<FieldError>) {
        set(
            &mut self.bonus_credits,
            value(
                e,
                "bonus_credits",
                body.bonus_credits.take(),
                values::whole(0, MAX_CREDITS),
            )
            .map(Some),
        );
        set(
            &mut self.price_currency,
            value(e, "price_currency", body.price_currency.take(), currency).map(Some),
        );
        set(
            &mut self.discount_percentage,
            value(
                e,
                "discount_percentage",
                body.discount_percentage.take(),
                values::whole(0, 100),
            )
            .map(Some),
        );
        set(
            &mut self.is_available,
            value(e, "is_available", body.is_available.take(), values::boolean).map(Some),
        );
        set(
            &mut self.target_tiers,
            value(e, "target_tiers", body.target_tiers.take(), target_tiers).map(Some),
        );
        set(
            &mut self.promotion_start_date,
            nullable(
                e,
                "promotion_start_date",
                body.promotion_start_date.take(),
                values::timestamp,
            ),
        );
        set(
            &mut self.promotion_end_date,
            nullable(
                e,
                "promotion_end_date",
                body.promotion_end_date.take(),
                values::timestamp,
            ),
        );
        if let (Some(start), Some(end)) = (self.promotion_start_date, self.promotion_end_date)
            && start >= end
        {
            e.push(FieldError::new(
                "promotion_end_date",
                "must be after promotion_start_date",
            ));
        }
    }

    /// How the package is shown: description, type, order, colour, badge.
    fn apply_display(&mut self, body: &mut PackageSettings, e: &mut Vec<FieldError>) {
        set(
            &mut self.description,
            nullable(
                e,
                "description",
                body.description.take(),
                values::text(500, true),
            )
            .map(Option::flatten),
        );
        set(
            &mut self.package_type,
            value(
                e,
                "package_type",
                body.package_type.take(),
                values::one_of(&PACKAGE_TYPES),
            )
            .map(Some),
        );
        set(
            &mut self.display_order,
            value(
                e,
                "display_order",
                body.display_order.take(),
                values::whole(0, MAX_DISPLAY_ORDER),
            )
            .map(Some),
        );
        set(
            &mut self.highlight_color,
            nullable(
                e,
                "highlight_color",
                body.highlight_color.take(),
                hex_colour,
            ),
        );
        set(
            &mut self.badge_text,
            nullable(
                e,
                "badge_text",
                body.badge_text.take(),
                values::text(30, false),
            )
            .map(Option::flatten),
        );
    }
}

/// A non-negative amount with at most two decimals, from a JSON string
/// (`"19.99"`) or number (`19.99`), as canonical decimal text. Numbers are
/// taken by their shortest decimal spelling, which is exactly what the client
/// wrote for any amount that fits `DECIMAL(10,2)`.
pub fn price(field: &str, value: &Value) -> FieldResult<String> {
    let raw = match value {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => {
            return Err(FieldError::new(
                field,
                "must be a decimal amount such as \"19.99\"",
            ));
        }
    };
    let invalid = || {
        FieldError::new(
            field,
            format!(
                "must be a non-negative amount with at most 2 decimals and {MAX_PRICE_INTEGER_DIGITS} digits \
                 before the point, such as \"19.99\""
            ),
        )
    };
    let (whole, fraction) = raw.split_once('.').unwrap_or((raw.as_str(), ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || !digits(whole)
        || !digits(fraction)
        || (raw.contains('.') && fraction.is_empty())
    {
        return Err(invalid());
    }
    let whole = whole.trim_start_matches('0');
    let fraction = fraction.trim_end_matches('0');
    if whole.len() > MAX_PRICE_INTEGER_DIGITS || fraction.len() > 2 {
        return Err(invalid());
    }
    let whole = if whole.is_empty() { "0" } else { whole };
    Ok(format!("{whole}.{fraction:0<2}"))
}

/// Three uppercase letters (ISO 4217).
pub fn currency(field: &str, value: &Value) -> FieldResult<String> {
    let raw = values::string(field, value)?;
    if raw.len() == 3 && raw.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(raw.to_string())
    } else {
        Err(FieldError::new(
            field,
            "must be a three-letter uppercase currency code such as USD",
        ))
    }
}

/// A set of tiers, each once, stored in tier order.
pub fn target_tiers(field: &str, value: &Value) -> FieldResult<Vec<String>> {
    let items = value.as_array().ok_or_else(|| {
        FieldError::new(
            field,
            format!("must be a list of tiers ({})", Tier::NAMES.join(", ")),
        )
    })?;
    let mut tiers: Vec<Tier> = Vec::new();
    for item in items {
        let tier = item.as_str().and_then(Tier::parse).ok_or_else(|| {
            FieldError::new(
                field,
                format!("may only list tiers ({})", Tier::NAMES.join(", ")),
            )
        })?;
        if tiers.contains(&tier) {
            return Err(FieldError::new(field, format!("lists {tier} twice")));
        }
        tiers.push(tier);
    }
    tiers.sort();
    Ok(tiers.iter().map(|t| t.as_str().to_string()).collect())
}

/// `#rgb` or `#rrggbb`.
pub fn hex_colour(field: &str, value: &Value) -> FieldResult<String> {
    let raw = values::string(field, value)?;
    let ok = raw.strip_prefix('#').is_some_and(|hex| {
        matches!(hex.len(), 3 | 6) && hex.bytes().all(|b| b.is_ascii_hexdigit())
    });
    if ok {
        Ok(raw.to_string())
    } else {
        Err(FieldError::new(field, "must be a colour such as #6366F1"))
    }
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

/// A new credit package. Read-only (`id`, timestamps) and unknown fields are refused with a
/// 422 naming them; every invalid field is named at once.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewCreditPackage {
    /// 1 to 100 characters, trimmed.
    #[serde(default, deserialize_with = "raw")]
    #[schema(value_type = String, required = true, min_length = 1, max_length = 100)]
    name: Option<Value>,
    /// 1 to 10000000 credits.
    #[serde(default, deserialize_with = "raw")]
    #[schema(value_type = i32, required = true, minimum = 1, maximum = 10_000_000)]
    credit_amount: Option<Value>,
    #[serde(default, deserialize_with = "raw")]
    #[schema(required = true, schema_with = price_schema)]
    price_usd: Option<Value>,
    #[serde(flatten)]
    settings: PackageSettings,
}

/// Changes to a credit package: only the fields sent change, `null` clears a nullable one.
/// Read-only (`id`, timestamps) and unknown fields are refused with a 422 naming them.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreditPackagePatch {
    /// 1 to 100 characters, trimmed.
    #[serde(default, deserialize_with = "raw")]
    #[schema(value_type = String, min_length = 1, max_length = 100)]
    name: Option<Value>,
    /// 1 to 10000000 credits.
    #[serde(default, deserialize_with = "raw")]
    #[schema(value_type = i32, minimum = 1, maximum = 10_000_000)]
    credit_amount: Option<Value>,
    #[serde(default, deserialize_with = "raw")]
    #[schema(schema_with = price_schema)]
    price_usd: Option<Value>,
    #[serde(flatten)]
    settings: PackageSettings,
}

/// The optional settings of a credit package (on creation, an absent one takes its default).
#[derive(Debug, Deserialize, ToSchema)]
pub struct PackageSettings {
    /// At most 500 characters, multi-line, trimmed; blank or `null` is none.
    #[serde(default, deserialize_with = "raw")]
    #[schema(value_type = Option<String>, max_length = 500)]
    description: Option<Value>,
    /// 0 to 10000000 credits added with the purchase (default 0); not `null`.
    #[serde(default, deserialize_with = "raw")]
    #[schema(value_type = i32, minimum = 0, maximum = 10_000_000)]
    bonus_credits: Option<Value>,
    /// Three uppercase letters (default `USD`); not `null`.
    #[serde(default, deserialize_with = "raw")]
    #[schema(value_type = String, pattern = "^[A-Z]{3}$")]
    price_currency: Option<Value>,
    /// 0 to 100 (default 0); not `null`.
    #[serde(default, deserialize_with = "raw")]
    #[schema(value_type = i32, minimum = 0, maximum = 100)]
    discount_percentage: Option<Value>,
    /// Default `true`; not `null`.
    #[serde(default, deserialize_with = "raw")]
    #[schema(value_type = bool)]
    is_available: Option<Value>,
    #[serde(default, deserialize_with = "raw")]
    #[schema(schema_with = target_tiers_schema)]
    target_tiers: Option<Value>,
    /// An RFC 3339 instant; `null`: no start.
    #[serde(default, deserialize_with = "raw")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    promotion_start_date: Option<Value>,
    /// An RFC 3339 instant after `promotion_start_date`; `null`: no end.
    #[serde(default, deserialize_with = "raw")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    promotion_end_date: Option<Value>,
    #[serde(default, deserialize_with = "raw")]
    #[schema(schema_with = package_type_schema)]
    package_type: Option<Value>,
    /// 0 to 1000000 (default 0), lowest first; not `null`.
    #[serde(default, deserialize_with = "raw")]
    #[schema(value_type = i32, minimum = 0, maximum = 1_000_000)]
    display_order: Option<Value>,
    /// `#rgb` or `#rrggbb`; `null`: none.
    #[serde(default, deserialize_with = "raw")]
    #[schema(value_type = Option<String>, pattern = "^#([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")]
    highlight_color: Option<Value>,
    /// At most 30 characters, trimmed; blank or `null` is none.
    #[serde(default, deserialize_with = "raw")]
    #[schema(value_type = Option<String>, max_length = 30)]
    badge_text: Option<Value>,
}

impl RequestBody for NewCreditPackage {
    /// Applied onto the column defaults: [`PackageValues::for_create`].
    type Valid = Self;

    fn read_only(field: &str) -> bool {
        READ_ONLY_FIELDS.contains(&field)
    }

    fn validate(self, _errors: &mut Vec<FieldError>) -> Self {
        self
    }
}

impl RequestBody for CreditPackagePatch {
    /// Applied onto the stored row: [`PackageValues::patched`].
    type Valid = Self;

    fn read_only(field: &str) -> bool {
        READ_ONLY_FIELDS.contains(&field)
    }

    fn validate(self, _errors: &mut Vec<FieldError>) -> Self {
        self
    }
}

fn price_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{SchemaType, Type};
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Number]))
        .description(Some(
            "The price: a non-negative amount with at most 2 decimals and 8 digits before the \
             point, as a decimal string (`\"19.99\"`) or a JSON number (`19.99`, taken as \
             written); stored exactly.",
        ))
        .build()
}

fn target_tiers_schema() -> utoipa::openapi::Array {
    let mut schema = crate::web::responses::array_of(
        crate::web::responses::enum_item(&Tier::NAMES),
        Tier::NAMES.len(),
        false,
        "The tiers the package is sold to, each once (default all); not `null`.",
    );
    schema.unique_items = true;
    schema
}

fn package_type_schema() -> utoipa::openapi::Object {
    crate::web::responses::string_enum(&PACKAGE_TYPES, false, "Default `one_time`; not `null`.")
}

/// Keyset position: packages are listed in display order, then by id.
#[derive(Debug, Serialize, Deserialize)]
struct PackageKey {
    o: i32,
    id: String,
}

/// Every credit package, on sale or not.
///
/// By `display_order` (unset as 0), then id. The token must carry the `admin` permission.
#[utoipa::path(
    get,
    path = "/api/v1/admin/packages",
    tag = "admin",
    operation_id = "admin_list_packages",
    security(("bearer" = ["admin"])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of credit packages.", body = Page<CreditPackage>),
        (status = 422, response = ValidationFailed),
        AdminSignedIn,
        ServerFailures,
    )
)]
pub async fn list(
    account: AdminAccount,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<CreditPackage>>, ApiError> {
    let limit = pagination::limit(query.limit)?;
    let after: Option<PackageKey> = pagination::decode(query.cursor.as_deref())?;
    if after.as_ref().is_some_and(|k| k.id.contains('\0')) {
        return Err(ApiError::validation(
            "cursor",
            "is not a cursor this endpoint returned",
        ));
    }
    let client = account.client();
    let (order, id) = after.map(|k| (k.o, k.id)).unzip();
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM credit_packages \
                 WHERE $1::int4 IS NULL OR (coalesce(display_order, 0), id) > ($1, $2) \
                 ORDER BY coalesce(display_order, 0), id LIMIT $3"
            ),
            &[&order, &id, &(limit + 1)],
        )
        .await?;
    let packages = rows
        .iter()
        .map(CreditPackage::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(pagination::page(packages, limit, |p| PackageKey {
        o: p.display_order.unwrap_or(0),
        id: p.id.clone(),
    })))
}

/// Create a credit package.
///
/// The token must carry the `admin` permission; the action is logged with the admin's id.
#[utoipa::path(
    post,
    path = "/api/v1/admin/packages",
    tag = "admin",
    operation_id = "admin_create_package",
    security(("bearer" = ["admin"])),
    request_body = NewCreditPackage,
    responses(
        (status = 201, description = "The new package.", body = CreditPackage,
            headers(("Location" = String, description = "The package's URL path."))),
        (status = 422, response = ValidationFailed),
        AdminSignedIn,
        BodyRefused,
        ServerFailures,
    )
)]
pub async fn create(
    mut account: AdminAccount,
    meta: RequestMeta,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<impl IntoResponse, ApiError> {
    let v = PackageValues::for_create(body)?;
    let (tx, admin) = account.begin().await?;
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO credit_packages (name, description, credit_amount, bonus_credits, price_usd, \
                   price_currency, discount_percentage, is_available, target_tiers, promotion_start_date, \
                   promotion_end_date, package_type, display_order, highlight_color, badge_text) \
                 VALUES ($1, $2, $3, $4, $5::text::numeric, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
                 RETURNING {COLUMNS}"
            ),
            &[
                &v.name,
                &v.description,
                &v.credit_amount,
                &v.bonus_credits,
                &v.price_usd,
                &v.price_currency,
                &v.discount_percentage,
                &v.is_available,
                &v.target_tiers,
                &v.promotion_start_date,
                &v.promotion_end_date,
                &v.package_type,
                &v.display_order,
                &v.highlight_color,
                &v.badge_text,
            ],
        )
        .await?;
    let package = CreditPackage::from_row(&row)?;
    activity::record(
        &tx,
        Activity {
            user_id: Some(&admin.id),
            activity_type: crate::activity::ActivityType::AdminPackageCreated,
            entity_type: Some("credit_package"),
            entity_id: Some(&package.id),
            metadata: json!({"package_id": package.id, "package": package}),
        },
        &meta,
    )
    .await?;
    tx.commit().await?;
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/admin/packages/{}", package.id)) {
        headers.insert(header::LOCATION, location);
    }
    Ok((StatusCode::CREATED, headers, Json(package)))
}

/// Change a credit package.
///
/// Only the fields sent change; orders already placed keep what they copied. The token must
/// carry the `admin` permission; the action is logged with the admin's id and what changed.
#[utoipa::path(
    patch,
    path = "/api/v1/admin/packages/{id}",
    tag = "admin",
    operation_id = "admin_update_package",
    security(("bearer" = ["admin"])),
    params(("id" = String, Path, description = "The package's id.")),
    request_body = CreditPackagePatch,
    responses(
        (status = 200, description = "The package, changed.", body = CreditPackage),
        (status = 404, description = "No such credit package, or the admin has no account yet.", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = ValidationFailed),
        BodyRefused,
        AdminAuthenticated,
        ServerFailures,
    )
)]
pub async fn update(
    mut account: AdminAccount,
    meta: RequestMeta,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<Json<CreditPackage>, ApiError> {
    let id = resource_id(&id, "credit package")?;
    let (tx, admin) = account.begin().await?;
    let before = tx
        .query_opt(
            &format!("SELECT {COLUMNS} FROM credit_packages WHERE id = $1 FOR UPDATE"),
            &[&id],
        )
        .await?
        .map(|row| CreditPackage::from_row(&row))
        .transpose()?
        .ok_or_else(|| ApiError::NotFound("no such credit package".into()))?;
    let v = before.values().patched(body)?;
    let row = tx
        .query_one(
            &format!(
                "UPDATE credit_packages SET name = $2, description = $3, credit_amount = $4, \
                   bonus_credits = $5, price_usd = $6::text::numeric, price_currency = $7, \
                   discount_percentage = $8, is_available = $9, target_tiers = $10, \
                   promotion_start_date = $11, promotion_end_date = $12, package_type = $13, \
                   display_order = $14, highlight_color = $15, badge_text = $16 \
                 WHERE id = $1 RETURNING {COLUMNS}"
            ),
            &[
                &id,
                &v.name,
                &v.description,
                &v.credit_amount,
                &v.bonus_credits,
                &v.price_usd,
                &v.price_currency,
                &v.discount_percentage,
                &v.is_available,
                &v.target_tiers,
                &v.promotion_start_date,
                &v.promotion_end_date,
                &v.package_type,
                &v.display_order,
                &v.highlight_color,
                &v.badge_text,
            ],
        )
        .await?;
    let after = CreditPackage::from_row(&row)?;
    let changed = changes(
        &serde_json::to_value(&before).unwrap_or_default(),
        &serde_json::to_value(&after).unwrap_or_default(),
        &WRITABLE_FIELDS,
    );
    activity::record(
        &tx,
        Activity {
            user_id: Some(&admin.id),
            activity_type: crate::activity::ActivityType::AdminPackageUpdated,
            entity_type: Some("credit_package"),
            entity_id: Some(id),
            metadata: json!({"package_id": id, "name": after.name, "changes": changed}),
        },
        &meta,
    )
    .await?;
    tx.commit().await?;
    Ok(Json(after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: Value) -> Result<String, FieldError> {
        price("price_usd", &v)
    }

    #[test]
    fn prices_are_exact_decimals() {
        assert_eq!(p(json!("19.99")).unwrap(), "19.99");
        assert_eq!(p(json!(19.99)).unwrap(), "19.99");
        assert_eq!(p(json!(0.1)).unwrap(), "0.10");
        assert_eq!(p(json!(5)).unwrap(), "5.00");
        assert_eq!(p(json!("0")).unwrap(), "0.00");
        assert_eq!(p(json!("4.990")).unwrap(), "4.99");
        assert_eq!(p(json!("007.5")).unwrap(), "7.50");
        assert_eq!(p(json!("99999999.99")).unwrap(), "99999999.99");
        assert_eq!(p(json!(1e2)).unwrap(), "100.00");
        for bad in [
            json!("19.999"),
            json!(19.999),
            json!("-1"),
            json!(-0.5),
            json!("100000000"),
            json!("1e3"),
            json!(1e300),
            json!("1."),
            json!(".5"),
            json!(""),
            json!("1,00"),
            json!(" "),
            json!(true),
            json!(null),
            json!("NaN"),
        ] {
            assert!(p(bad.clone()).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn tiers_currencies_and_colours() {
        assert_eq!(
            target_tiers("t", &json!(["PRO", "FREE"])).unwrap(),
            vec!["FREE", "PRO"]
        );
        assert!(target_tiers("t", &json!([])).unwrap().is_empty());
        assert!(target_tiers("t", &json!(["PRO", "PRO"])).is_err());
        assert!(target_tiers("t", &json!(["GOLD"])).is_err());
        assert!(target_tiers("t", &json!("PRO")).is_err());
        assert!(currency("c", &json!("EUR")).is_ok());
        assert!(currency("c", &json!("eur")).is_err());
        assert!(currency("c", &json!("EURO")).is_err());
        assert!(hex_colour("h", &json!("#fff")).is_ok());
        assert!(hex_colour("h", &json!("#6366F1")).is_ok());
        assert!(hex_colour("h", &json!("#66F1")).is_err());
        assert!(hex_colour("h", &json!("red")).is_err());
    }

    #[test]
    fn promotion_dates_are_ordered_after_merging() {
        let body = |v: Value| match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let created = PackageValues::for_create(body(json!({
            "name": "Spring", "credit_amount": 100, "price_usd": "4.99",
            "promotion_start_date": "2026-04-01T00:00:00Z", "promotion_end_date": "2026-05-01T00:00:00Z"
        })))
        .unwrap();
        assert!(
            created
                .clone()
                .patched(body(json!({"promotion_end_date": "2026-03-01T00:00:00Z"})))
                .is_err()
        );
        assert!(
            created
                .clone()
                .patched(body(json!({"promotion_end_date": null})))
                .is_ok()
        );
    }
}
