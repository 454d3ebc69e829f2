//! Moderation and user administration (permission `admin` in the token):
//!
//! It may use [`crate::jobs`] (a suspension cancels the user's jobs),
//! [`crate::credits`], [`crate::users`] and [`crate::activity`]; only the
//! runtime uses it.

pub mod characters;
pub mod reports;
pub mod users;

use axum::Router;

use crate::web::state::AppState;

/// The characters function's moderation routes: the report queue and character actions.
pub fn characters_routes() -> Router<AppState> {
    reports::router().merge(characters::router())
}

/// The auth function's user admin routes.
pub fn users_routes() -> Router<AppState> {
    users::router()
}
