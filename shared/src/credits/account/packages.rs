//! `GET /api/v1/credits/packages`: the packages on sale now for the caller's
//! tier (anonymous callers see what a FREE account sees).

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::NoQuery;
use crate::web::auth::OptionalCaller;
use crate::web::responses::{Authenticated, ServerFailures};
use crate::web::state::AppState;

use crate::credits::engine::tier_of;
use crate::credits::offers::{self, Offer};
use crate::kernel::error::ApiError;
use crate::kernel::tier::Tier;
use crate::web::http::ApiQuery;
use crate::web::responses::ValidationFailed;

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PackageList {
    /// The tier the list was chosen for (a lapsed subscription counts as FREE).
    tier: Tier,
    /// By `display_order` (unset counts as 0), then list price, then id.
    items: Vec<Offer>,
}

/// The credit packages on sale now.
///
/// Available packages inside their promotion window (when they have one: from its start until,
/// not including, its end) that are offered to the caller's tier, each with the price a
/// purchase charges (`charged_price`, `charged_amount`: the list price less
/// `discount_percentage`, rounded down to the currency's smallest unit). A purchase of a listed
/// package charges exactly that; a package not listed cannot be bought. Anonymous callers, and
/// accounts whose subscription lapsed, see what the FREE tier sees. Takes no query parameters.
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
    // One definition of "on sale" and of the charged price, shared with purchases.
    let rows = client
        .query(
            &format!(
                "SELECT {} FROM credit_packages WHERE {} AND {} AND {} ORDER BY {}",
                offers::COLUMNS,
                offers::AVAILABLE,
                offers::IN_WINDOW,
                offers::for_tier(1),
                offers::ORDER
            ),
            &[&tier],
        )
        .await?;
    let mut items = Vec::with_capacity(rows.len());
    for row in &rows {
        match Offer::from_row(row)? {
            Ok(offer) => items.push(offer),
            // What cannot be bought is not shown (a purchase would be a 409).
            Err(why) => tracing::error!(reason = %why, "a credit package on sale cannot be sold"),
        }
    }
    Ok(Json(PackageList { tier, items }))
}
