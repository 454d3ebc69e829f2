//! `GET /api/v1/credits/packages`: the packages on sale now for the caller's
//! tier (anonymous callers see what a FREE account sees).

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::NoQuery;
use crate::web::auth::OptionalCaller;
use crate::web::responses::{Authenticated, ServerFailures};
use crate::web::state::AppState;

use crate::credits::engine::tier_of;
use crate::kernel::error::ApiError;
use crate::kernel::tier::Tier;
use crate::web::http::ApiQuery;
use crate::web::responses::ValidationFailed;

/// The public face of a `credit_packages` row.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Package {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub credit_amount: i32,
    pub bonus_credits: i32,
    /// `credit_amount + bonus_credits`.
    pub total_credits: i64,
    /// The exact `DECIMAL(10,2)` price as a decimal string (`"19.99"`), never a float.
    pub price_usd: String,
    pub price_currency: String,
    pub discount_percentage: i32,
    /// `one_time`, `subscription_bonus` or `promotional`.
    pub package_type: String,
    pub display_order: Option<i32>,
    pub highlight_color: Option<String>,
    pub badge_text: Option<String>,
    pub promotion_start_date: Option<DateTime<Utc>>,
    pub promotion_end_date: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PackageList {
    /// The tier the list was chosen for (a lapsed subscription counts as FREE).
    tier: Tier,
    /// By `display_order` (unset last), then price.
    items: Vec<Package>,
}

/// The credit packages on sale now.
///
/// Available packages inside their promotion window (when they have one) that are offered to
/// the caller's tier; anonymous callers, and accounts whose subscription lapsed, see what the
/// FREE tier sees. Takes no query parameters.
#[utoipa::path(
    get,
    path = "/api/v1/credits/packages",
    tag = "credits",
    operation_id = "list_credit_packages",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The packages the caller can buy now.", body = PackageList),
        (status = 422, response = ValidationFailed),
        Authenticated,
        ServerFailures,
    )
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    OptionalCaller(identity): OptionalCaller,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
) -> Result<Json<PackageList>, ApiError> {
    let client = state.db.get().await?;
    let viewer = crate::users::repo::optional_user(&**client, identity.as_ref()).await?;
    let tier = viewer
        .as_ref()
        .map(|user| tier_of(user).0)
        .unwrap_or_default();
    // Unset flags fail closed: NULL is_available or target_tiers sells nothing.
    let rows = client
        .query(
            "SELECT id, name, description, credit_amount, coalesce(bonus_credits, 0) AS bonus_credits, \
                    price_usd::text AS price_usd, coalesce(price_currency, 'USD') AS price_currency, \
                    coalesce(discount_percentage, 0) AS discount_percentage, \
                    coalesce(package_type, 'one_time') AS package_type, display_order, highlight_color, \
                    badge_text, promotion_start_date, promotion_end_date \
             FROM credit_packages \
             WHERE is_available IS TRUE \
               AND (promotion_start_date IS NULL OR promotion_start_date <= now()) \
               AND (promotion_end_date IS NULL OR now() <= promotion_end_date) \
               AND $1 = ANY(target_tiers) \
             ORDER BY display_order NULLS LAST, price_usd, id",
            &[&tier],
        )
        .await?;
    let items = rows
        .iter()
        .map(|row| {
            let credit_amount: i32 = row.try_get("credit_amount")?;
            let bonus_credits: i32 = row.try_get("bonus_credits")?;
            Ok(Package {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                description: row.try_get("description")?,
                total_credits: i64::from(credit_amount) + i64::from(bonus_credits),
                credit_amount,
                bonus_credits,
                price_usd: row.try_get("price_usd")?,
                price_currency: row.try_get("price_currency")?,
                discount_percentage: row.try_get("discount_percentage")?,
                package_type: row.try_get("package_type")?,
                display_order: row.try_get("display_order")?,
                highlight_color: row.try_get("highlight_color")?,
                badge_text: row.try_get("badge_text")?,
                promotion_start_date: row.try_get("promotion_start_date")?,
                promotion_end_date: row.try_get("promotion_end_date")?,
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    Ok(Json(PackageList { tier, items }))
}
