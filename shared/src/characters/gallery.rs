//! The public gallery: public characters of active users who allow showcase
//! (`characters.in_gallery`, kept by triggers), minus those whose open reports
//! weigh `GALLERY_REPORT_THRESHOLD` or more (`characters.report_score`, kept by
//! V18's trigger from the weights of [`crate::social::trust`]).
//!
//! Sorts, each served by a partial index over gallery rows:
//! - `recent`: newest publication first (`published_at`, then id);
//! - `popular`: `popularity` = views + likes + downloads, highest first;
//! - `top_rated`: highest `rating_average` among characters with at least
//!   `GALLERY_TOP_RATED_MIN_RATINGS` ratings, ties broken by rating count.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::Transaction;
use tokio_postgres::types::ToSql;

use super::{CHARACTER_COLUMNS, Character, GalleryItem, Owner};
use crate::kernel::config::GalleryConfig;
use crate::kernel::error::ApiError;
use crate::web::pagination::{self, Page};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Sort {
    #[default]
    Recent,
    Popular,
    TopRated,
}

#[derive(Debug, Default)]
pub struct GalleryFilter {
    pub style_type: Option<String>,
    pub tag: Option<String>,
    pub text: Option<String>,
    pub featured_only: bool,
}

/// Keyset position; which fields are set depends on the sort.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GalleryKey {
    sort: Sort,
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    published_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    popularity: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rating_average: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rating_count: Option<i32>,
}

fn key_of(sort: Sort, c: &Character) -> GalleryKey {
    GalleryKey {
        sort,
        id: c.id.clone(),
        published_at: (sort == Sort::Recent).then_some(c.published_at).flatten(),
        popularity: (sort == Sort::Popular).then_some(c.popularity).flatten(),
        rating_average: (sort == Sort::TopRated)
            .then_some(c.rating_average)
            .flatten(),
        rating_count: (sort == Sort::TopRated).then_some(c.rating_count),
    }
}

pub async fn list(
    tx: &Transaction<'_>,
    config: &GalleryConfig,
    filter: &GalleryFilter,
    sort: Sort,
    limit: i64,
    after: Option<GalleryKey>,
) -> Result<Page<GalleryItem>, ApiError> {
    if after.as_ref().is_some_and(|k| k.sort != sort) {
        return Err(bad_cursor());
    }
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![
        Box::new(config.report_threshold),
        Box::new(filter.style_type.clone()),
        Box::new(filter.tag.clone()),
        Box::new(filter.text.clone()),
        Box::new(filter.featured_only),
    ];
    let mut conditions = vec![
        "c.in_gallery".to_string(),
        "c.report_score < $1::int4".to_string(),
        "($2::text IS NULL OR c.style_type = $2)".to_string(),
        "($3::text IS NULL OR c.tags @> ARRAY[$3::text])".to_string(),
        "($4::text IS NULL OR c.search_vector @@ websearch_to_tsquery('simple', $4))".to_string(),
        "(NOT $5::bool OR c.is_featured)".to_string(),
    ];
    let order = match sort {
        Sort::Recent => "c.published_at DESC, c.id DESC",
        Sort::Popular => "c.popularity DESC, c.id DESC",
        Sort::TopRated => "c.rating_average DESC, c.rating_count DESC, c.id DESC",
    };
    if sort == Sort::TopRated {
        params.push(Box::new(config.top_rated_min_ratings));
        conditions.push(format!("c.rating_count >= ${}", params.len()));
    }
    if let Some(key) = after {
        after_key(sort, key, &mut params, &mut conditions)?;
    }
    params.push(Box::new(limit + 1));
    let sql = format!(
        "SELECT {CHARACTER_COLUMNS}, u.username AS owner_username, u.display_name AS owner_display_name \
         FROM characters c JOIN users u ON u.id = c.user_id \
         WHERE {} ORDER BY {order} LIMIT ${}",
        conditions.join(" AND "),
        params.len()
    );
    let items = query_items(tx, &sql, &params).await?;
    Ok(pagination::page(items, limit, |item| {
        key_of(sort, &item.character)
    }))
}

/// 422: the cursor was made for another sort (or lacks its fields).
fn bad_cursor() -> ApiError {
    ApiError::validation("cursor", "does not belong to this sort")
}

/// Adds the keyset condition "after `key`" for the sort, with its parameters.
fn after_key(
    sort: Sort,
    key: GalleryKey,
    params: &mut Vec<Box<dyn ToSql + Sync + Send>>,
    conditions: &mut Vec<String>,
) -> Result<(), ApiError> {
    let n = params.len();
    match sort {
        Sort::Recent => {
            params.push(Box::new(key.published_at.ok_or_else(bad_cursor)?));
            params.push(Box::new(key.id));
            conditions.push(format!("(c.published_at, c.id) < (${}, ${})", n + 1, n + 2));
        }
        Sort::Popular => {
            params.push(Box::new(key.popularity.ok_or_else(bad_cursor)?));
            params.push(Box::new(key.id));
            conditions.push(format!("(c.popularity, c.id) < (${}, ${})", n + 1, n + 2));
        }
        Sort::TopRated => {
            params.push(Box::new(key.rating_average.ok_or_else(bad_cursor)?));
            params.push(Box::new(key.rating_count.ok_or_else(bad_cursor)?));
            params.push(Box::new(key.id));
            conditions.push(format!(
                "(c.rating_average, c.rating_count, c.id) < (${}::float8::numeric(3,2), ${}, ${})",
                n + 1,
                n + 2,
                n + 3
            ));
        }
    }
    Ok(())
}

/// Runs the gallery query: each row a character with its owner's names.
async fn query_items(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[Box<dyn ToSql + Sync + Send>],
) -> Result<Vec<GalleryItem>, ApiError> {
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = tx.query(sql, &refs).await?;
    let items = rows
        .iter()
        .map(|row| {
            Ok(GalleryItem {
                character: Character::from_row(row)?,
                owner: Owner {
                    username: row.try_get("owner_username")?,
                    display_name: row.try_get("owner_display_name")?,
                },
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    Ok(items)
}
