//! The gallery's social layer: likes, ratings (with reviews) and content reports.
//!
//! It may use [`crate::users`] and [`crate::activity`]; only gdpr and the
//! runtime use it.
//!
//! Counters on `characters` (`like_count`, `rating_count`, `rating_sum`,
//! `rating_average`, `open_report_count`, `report_score`) are kept by triggers
//! of migrations V3 and V18 (a report's weight: [`trust`]),
//! never by this module: every write here touches only the rows being liked,
//! rated or reported, and reads the counters back in the same transaction.

pub mod input;
pub mod repo;
pub mod routes;
pub mod trust;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Row;
use utoipa::ToSchema;

/// The caller's like of a character, and how many likes it has now.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LikeState {
    pub character_id: String,
    pub liked: bool,
    pub like_count: i32,
}

/// A `character_ratings` row, as its author sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Rating {
    pub id: String,
    pub character_id: String,
    pub user_id: String,
    /// Stars, 1 to 5.
    pub rating: i32,
    pub review_text: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The column list matching [`Rating::from_row`].
pub const RATING_COLUMNS: &str =
    "id, character_id, user_id, rating, review_text, created_at, updated_at";

impl Rating {
    pub fn from_row(row: &Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            character_id: row.try_get("character_id")?,
            user_id: row.try_get("user_id")?,
            rating: row.try_get("rating")?,
            review_text: row.try_get("review_text")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

/// A character's ratings aggregate, as the triggers keep it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RatingSummary {
    pub rating_count: i32,
    /// Two decimals; `null` while the character has no ratings.
    pub rating_average: Option<f64>,
}

/// The answer to `PUT /characters/{id}/rating`: the caller's rating and the
/// character's aggregate after it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RatingWithSummary {
    #[serde(flatten)]
    pub rating: Rating,
    #[serde(flatten)]
    pub summary: RatingSummary,
}

/// Who wrote a rating, as anyone who can see the character may see it: the
/// public handle only, never the email or any id.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Rater {
    pub username: Option<String>,
    pub display_name: Option<String>,
}

/// One entry of a character's public ratings list.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PublicRating {
    pub id: String,
    pub rating: i32,
    pub review_text: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub rater: Rater,
}

impl PublicRating {
    /// Reads `r.id, r.rating, r.review_text, r.created_at, r.updated_at,
    /// u.username, u.display_name`.
    pub fn from_row(row: &Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            rating: row.try_get("rating")?,
            review_text: row.try_get("review_text")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            rater: Rater {
                username: row.try_get("username")?,
                display_name: row.try_get("display_name")?,
            },
        })
    }
}

/// A page of a character's ratings, with the character's aggregate beside it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RatingsPage {
    pub items: Vec<PublicRating>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
    pub summary: RatingSummary,
}

/// A `content_reports` row, as its reporter sees it (never the moderator's
/// resolution fields).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Report {
    pub id: String,
    pub character_id: String,
    /// `spam`, `sexual_content`, `violence`, `hate`, `harassment`, `copyright`,
    /// `minor_safety` or `other`.
    pub reason: String,
    pub details: Option<String>,
    /// `open` until a moderator handles the report.
    pub status: String,
    pub created_at: DateTime<Utc>,
}

/// The column list matching [`Report::from_row`].
pub const REPORT_COLUMNS: &str = "id, character_id, reason, details, status, created_at";

impl Report {
    pub fn from_row(row: &Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            character_id: row.try_get("character_id")?,
            reason: row.try_get("reason")?,
            details: row.try_get("details")?,
            status: row.try_get("status")?,
            created_at: row.try_get("created_at")?,
        })
    }
}
