//! Moderation and user administration (permission `admin` in the token):
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
//! system role in one transaction with the `user_activity_logs` row naming the admin.
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

pub mod characters;
pub mod reports;
pub mod tiers;
pub mod users;

use axum::Router;
use chrono::Datelike;

use crate::app::AppState;
use crate::error::ApiError;
use crate::pagination::{self, TimeKey};

/// The characters function's moderation routes: the report queue and character actions.
pub fn characters_routes() -> Router<AppState> {
    reports::router().merge(characters::router())
}

/// The auth function's user admin routes.
pub fn users_routes() -> Router<AppState> {
    users::router()
}

/// A `(created_at, id)` cursor. Cursors come back from clients, so a well-formed but crafted
/// one (an id no row could have, a NUL byte, a year PostgreSQL cannot store) is a 422 like
/// garbage, never a database error.
fn time_cursor(raw: Option<&str>) -> Result<Option<TimeKey>, ApiError> {
    let key: Option<TimeKey> = pagination::decode(raw)?;
    if key.as_ref().is_some_and(|k| {
        !(1..=200).contains(&k.id.len())
            || k.id.chars().any(char::is_control)
            || !(1..=9999).contains(&k.at.year())
    }) {
        return Err(ApiError::validation(
            "cursor",
            "is not a cursor this endpoint returned",
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crafted_cursors_are_refused() {
        let at = chrono::Utc::now();
        let good = pagination::encode(&TimeKey {
            at,
            id: "abc".into(),
        });
        assert!(time_cursor(Some(&good)).unwrap().is_some());
        assert!(time_cursor(None).unwrap().is_none());
        for id in ["", "a\0b", &"x".repeat(201)] {
            let crafted = pagination::encode(&TimeKey { at, id: id.into() });
            assert!(time_cursor(Some(&crafted)).is_err(), "{id:?}");
        }
        assert!(time_cursor(Some("garbage")).is_err());
    }
}
