//! SQL for likes, ratings and reports. Every function takes the request's
//! transaction, opened with [`crate::ports::db::begin_as`], so row-level security
//! applies to every statement; every statement is parameterised, and writes
//! name only the columns `app_api` may write.

use tokio_postgres::GenericClient;
use tokio_postgres::error::SqlState;

use super::input::{RatingInput, ReportInput};
use super::{PublicRating, RATING_COLUMNS, REPORT_COLUMNS, Rating, RatingSummary, Report};
use crate::kernel::error::ApiError;
use crate::web::pagination::TimeKey;

/// What the social routes need to know about a character the caller can see.
#[derive(Debug, Clone)]
pub struct VisibleCharacter {
    pub id: String,
    pub user_id: String,
    pub summary: RatingSummary,
}

pub fn no_such_character() -> ApiError {
    ApiError::NotFound("no such character".into())
}

/// The character, if the viewer may see it: their own, or a public one.
/// Anything else is the same 404 as an unknown id, so that private characters
/// cannot be probed for. The handler's own check (this `WHERE`) is the first
/// wall; the `characters_read` policy filters the same rows again.
pub async fn visible_character(
    client: &impl GenericClient,
    id: &str,
    viewer: Option<&str>,
) -> Result<VisibleCharacter, ApiError> {
    let row = client
        .query_opt(
            "SELECT id, user_id, rating_count, rating_average::float8 AS rating_average \
             FROM characters \
             WHERE id = $1 AND (coalesce(is_public, false) OR user_id = $2)",
            &[&id, &viewer],
        )
        .await?
        .ok_or_else(no_such_character)?;
    Ok(VisibleCharacter {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        summary: RatingSummary {
            rating_count: row.try_get("rating_count")?,
            rating_average: row.try_get("rating_average")?,
        },
    })
}

/// A write that the policies refused or whose character vanished between the
/// visibility check and the write (made private or deleted concurrently): to
/// the caller the character is simply gone.
fn gone_if_hidden(err: tokio_postgres::Error) -> ApiError {
    match err.code() {
        Some(code)
            if *code == SqlState::INSUFFICIENT_PRIVILEGE
                || *code == SqlState::FOREIGN_KEY_VIOLATION =>
        {
            tracing::warn!(error = %err, "social write refused; answering 404");
            no_such_character()
        }
        _ => err.into(),
    }
}

async fn like_count(client: &impl GenericClient, character_id: &str) -> Result<i32, ApiError> {
    let row = client
        .query_opt(
            "SELECT coalesce(like_count, 0) AS like_count FROM characters WHERE id = $1",
            &[&character_id],
        )
        .await?
        .ok_or_else(no_such_character)?;
    Ok(row.try_get("like_count")?)
}

/// Records the like (once, however often it is sent) and answers the count
/// the trigger keeps.
pub async fn like(
    client: &impl GenericClient,
    character_id: &str,
    user_id: &str,
) -> Result<i32, ApiError> {
    client
        .execute(
            "INSERT INTO character_likes (character_id, user_id) VALUES ($1, $2) \
             ON CONFLICT (character_id, user_id) DO NOTHING",
            &[&character_id, &user_id],
        )
        .await
        .map_err(gone_if_hidden)?;
    like_count(client, character_id).await
}

/// Removes the like if there is one and answers the count.
pub async fn unlike(
    client: &impl GenericClient,
    character_id: &str,
    user_id: &str,
) -> Result<i32, ApiError> {
    client
        .execute(
            "DELETE FROM character_likes WHERE character_id = $1 AND user_id = $2",
            &[&character_id, &user_id],
        )
        .await?;
    like_count(client, character_id).await
}

pub struct UpsertedRating {
    pub rating: Rating,
    /// True when this call created the rating, false when it replaced one.
    pub created: bool,
}

/// Creates or replaces the user's one rating of the character. Concurrent
/// calls by one user meet on the `(character_id, user_id)` unique constraint,
/// so there is never a second row.
pub async fn upsert_rating(
    client: &impl GenericClient,
    character_id: &str,
    user_id: &str,
    input: &RatingInput,
) -> Result<UpsertedRating, ApiError> {
    let row = client
        .query_one(
            &format!(
                "INSERT INTO character_ratings (character_id, user_id, rating, review_text) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (character_id, user_id) \
                 DO UPDATE SET rating = EXCLUDED.rating, review_text = EXCLUDED.review_text \
                 RETURNING {RATING_COLUMNS}, (xmax = 0) AS created"
            ),
            &[&character_id, &user_id, &input.rating, &input.review_text],
        )
        .await
        .map_err(gone_if_hidden)?;
    Ok(UpsertedRating {
        rating: Rating::from_row(&row)?,
        created: row.try_get("created")?,
    })
}

/// Removes the user's rating; false when there was none.
pub async fn delete_rating(
    client: &impl GenericClient,
    character_id: &str,
    user_id: &str,
) -> Result<bool, ApiError> {
    let deleted = client
        .execute(
            "DELETE FROM character_ratings WHERE character_id = $1 AND user_id = $2",
            &[&character_id, &user_id],
        )
        .await?;
    Ok(deleted > 0)
}

/// The character's aggregate as it stands in this transaction.
pub async fn rating_summary(
    client: &impl GenericClient,
    character_id: &str,
) -> Result<RatingSummary, ApiError> {
    let row = client
        .query_opt(
            "SELECT rating_count, rating_average::float8 AS rating_average \
             FROM characters WHERE id = $1",
            &[&character_id],
        )
        .await?
        .ok_or_else(no_such_character)?;
    Ok(RatingSummary {
        rating_count: row.try_get("rating_count")?,
        rating_average: row.try_get("rating_average")?,
    })
}

/// Up to `fetch` ratings of the character, newest first, after the keyset
/// position `after`.
pub async fn list_ratings(
    client: &impl GenericClient,
    character_id: &str,
    after: Option<&TimeKey>,
    fetch: i64,
) -> Result<Vec<PublicRating>, ApiError> {
    let after_at = after.map(|k| k.at);
    let after_id = after.map(|k| k.id.as_str());
    let rows = client
        .query(
            "SELECT r.id, r.rating, r.review_text, r.created_at, r.updated_at, \
                    u.username, u.display_name \
             FROM character_ratings r \
             JOIN users u ON u.id = r.user_id \
             WHERE r.character_id = $1 \
               AND ($2::timestamptz IS NULL OR (r.created_at, r.id) < ($2::timestamptz, $3::text)) \
             ORDER BY r.created_at DESC, r.id DESC \
             LIMIT $4",
            &[&character_id, &after_at, &after_id, &fetch],
        )
        .await?;
    rows.iter()
        .map(|row| PublicRating::from_row(row).map_err(ApiError::from))
        .collect()
}

pub struct FiledReport {
    pub report: Report,
    /// False when the reporter already had an open report on the character,
    /// which is answered instead and nothing new is stored.
    pub created: bool,
}

/// Files a report, unless the reporter has an open one on the character
/// already (the `content_reports_one_open_per_reporter` unique index decides,
/// also between concurrent requests).
pub async fn file_report(
    client: &impl GenericClient,
    character_id: &str,
    reporter_id: &str,
    input: &ReportInput,
) -> Result<FiledReport, ApiError> {
    // The open report found by the conflict may be resolved before it is read
    // back; then a new one can be filed. A few rounds settle any such race.
    for _ in 0..3 {
        let inserted = client
            .query_opt(
                &format!(
                    "INSERT INTO content_reports (character_id, reporter_id, reason, details) \
                     VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (character_id, reporter_id) WHERE status = 'open' DO NOTHING \
                     RETURNING {REPORT_COLUMNS}"
                ),
                &[&character_id, &reporter_id, &input.reason, &input.details],
            )
            .await
            .map_err(gone_if_hidden)?;
        if let Some(row) = inserted {
            return Ok(FiledReport {
                report: Report::from_row(&row)?,
                created: true,
            });
        }
        let existing = client
            .query_opt(
                &format!(
                    "SELECT {REPORT_COLUMNS} FROM content_reports \
                     WHERE character_id = $1 AND reporter_id = $2 AND status = 'open'"
                ),
                &[&character_id, &reporter_id],
            )
            .await?;
        if let Some(row) = existing {
            return Ok(FiledReport {
                report: Report::from_row(&row)?,
                created: false,
            });
        }
    }
    Err(ApiError::ServiceUnavailable {
        detail: "the report collided with a concurrent review; retry it".into(),
        retry_after: 1,
    })
}
