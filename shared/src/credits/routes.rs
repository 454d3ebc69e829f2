//! Routes of the `credits` function, one module per area.

use axum::Router;

use super::{account, admin, purchases};
use crate::web::state::AppState;

pub fn router() -> Router<AppState> {
    account::router()
        .route(
            "/api/v1/credits/referrals",
            axum::routing::get(super::referrals::summary),
        )
        .merge(purchases::router())
        .merge(admin::router())
}
