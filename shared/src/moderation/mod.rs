//! Moderation and user administration (permission `admin` in the token):
//!
//! It may use [`crate::credits`], [`crate::users`] and [`crate::activity`];
//! only the runtime uses it.
//!
//! | route | function | what |
//! |---|---|---|
//! | `GET /api/v1/admin/reports` | characters | the report queue, oldest first |
//! | `POST /api/v1/admin/reports/{id}/resolve` | characters | actioned or dismissed, with a note and an action |
//! | `PUT/DELETE /api/v1/admin/characters/{id}/feature` | characters | in or out of `GET /api/v1/gallery/featured` |
//! | `PUT/DELETE /api/v1/admin/characters/{id}/hidden` | characters | out of (back into) every gallery listing |
//! | `POST /api/v1/admin/characters/{id}/unpublish` | characters | makes a character private |
//! | `GET /api/v1/admin/users?email=&username=` | auth | a user with their credits |
//! | `PATCH /api/v1/admin/users/{id}` | auth | tier, subscription dates, account status |
//!
//! Every route takes the [`Admin`](crate::credits::admin::Admin) extractor first, so the
//! permission is checked (401/403) before anything else is read, and every write runs as the
//! system role in one transaction with the `user_activity_logs` row naming the admin. The
//! reads of personal data are logged too: each user lookup (`admin_user_lookup`: the terms
//! searched for, whether a user was found and which) and each page of the report queue
//! (`admin_reports_listed`: the filter and the ids of the reports answered).
//!
//! Semantics:
//! - **Hidden** (`characters.moderation_hidden`, V12) is a moderator's decision apart from the
//!   owner's `is_public`: a hidden character is out of every gallery listing (all sorts and the
//!   featured list) and stays out when its owner publishes it again; it is still reachable by
//!   its id while public. Hiding also ends featuring.
//! - **Unpublish** sets `is_public = false` (and ends featuring): the character is private to
//!   its owner, who may publish it again (a suspended owner may not).
//! - **Feature** needs a character that is in the gallery (409 otherwise).
//! - Each of these is idempotent (repeating it changes nothing and answers the same state) and
//!   each call is logged, with `changed: false` when it changed nothing.
//! - **Resolving** a report `actioned` resolves every open report of the same character with
//!   it (same note, admin and time): the character was dealt with, whatever each reporter
//!   said. `dismissed` resolves only that report: the others may report something else. Only
//!   an open report can be resolved (409).
//! - **Review**: resolving a report (either way) or unhiding a character sets its
//!   `moderation_reviewed_at`. Reports filed until then no longer count towards its
//!   `report_score` (V18; see [`crate::social::trust`]), so a character a moderator looked at
//!   and kept is not taken out of the gallery again by the same reports, while reports filed
//!   afterwards count.

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
