//! A character's images: every image a generation job made for it, one
//! `character_images` row each (V15), and the one the owner chose as primary
//! (`characters.primary_image_id`). The character's `primary_image_url`,
//! `thumbnail_url`, `additional_images` and `image_metadata` are derived from
//! these rows by V15's triggers: this module only ever writes
//! `primary_image_id` or deletes rows, and the triggers do the rest (deleting
//! the primary makes the oldest remaining image primary).
//!
//! [`ImageRecord`] is the row as read, storage keys included; clients only
//! ever see [`CharacterImage`], its presentation, where the keys became
//! time-limited links.
//!
//! Every function takes a transaction opened with [`crate::ports::db::begin_as`] (or
//! switched with [`crate::ports::db::act_as`]) unless it says otherwise, so
//! row-level security backs each check: `app_api` reads the images of the
//! characters it can see, deletes only its own and sets `primary_image_id`
//! only on its own characters.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Row, Transaction};
use utoipa::ToSchema;

use super::{CHARACTER_COLUMNS, Character};
use crate::activity::{self, Activity};
use crate::kernel::error::ApiError;
use crate::kernel::vocabulary::GenerationProvider;
use crate::ports::storage::ObjectStore;
use crate::users::User;
use crate::web::http::RequestMeta;
use crate::web::pagination::{self, Page, TimeKey};

/// The select list matching [`ImageRecord::from_row`], for `character_images i`
/// joined to its `characters c`.
pub const IMAGE_COLUMNS: &str = "i.id, i.character_id, i.user_id, i.job_id, i.job_type, i.batch_index, \
    i.storage_key, i.thumbnail_key, i.width, i.height, i.byte_size, i.content_type, i.seed, \
    i.generation_provider, i.parameters, i.source_image_id, i.created_at, \
    coalesce(c.primary_image_id = i.id, false) AS is_primary";

/// Names of the members of `parameters` that could hold a storage key.
const KEY_MEMBERS: [&str; 4] = ["key", "init_image_key", "storage_key", "thumbnail_key"];

/// A `character_images` row as read, storage keys included: never sent to a
/// client as it is (see [`ImageRecord::present`]).
#[derive(Debug, Clone)]
pub struct ImageRecord {
    pub id: String,
    pub character_id: String,
    pub user_id: String,
    pub job_id: Option<String>,
    pub job_type: Option<String>,
    pub batch_index: i32,
    pub storage_key: String,
    pub thumbnail_key: Option<String>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub byte_size: Option<i64>,
    pub content_type: String,
    pub seed: Option<i64>,
    pub generation_provider: Option<GenerationProvider>,
    pub parameters: Value,
    pub source_image_id: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Whether the character's `primary_image_id` is this image.
    pub is_primary: bool,
}

/// One image of a character, as clients see it: its record without storage
/// keys, with time-limited links to the image and its thumbnail.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CharacterImage {
    pub id: String,
    pub character_id: String,
    /// The job that made it (`null` once the job row is gone, or for images recorded
    /// before jobs were linked).
    pub job_id: Option<String>,
    /// `character_generation`, `style_transfer`, `upscale`, `variation` or
    /// `background_removal`.
    pub job_type: Option<String>,
    /// Its place in its job's batch, from 0.
    pub batch_index: i32,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub byte_size: Option<i64>,
    pub content_type: String,
    /// The seed it was rendered with (a batch renders seed, seed + 1, ...).
    pub seed: Option<i64>,
    /// Which link of the generator chain made it.
    pub generation_provider: Option<GenerationProvider>,
    /// `true` for a procedural placeholder (provider `fallback`), not AI output.
    pub placeholder: bool,
    /// Whether this is the character's primary image (its `primary_image_url`).
    pub is_primary: bool,
    /// What the provider was asked for (`input`: prompt, sizes, seed, ...) and what it
    /// reported (`provider_info`); never a storage key.
    #[schema(value_type = Object)]
    pub parameters: Value,
    /// The image an upscale, img2img or background removal started from.
    pub source_image_id: Option<String>,
    pub created_at: DateTime<Utc>,
    /// A link to the image, valid for an hour (`null` when no storage is configured).
    pub url: Option<String>,
    /// A link to its thumbnail (256 px on the longest side), valid for an hour; `null`
    /// without one.
    pub thumbnail_url: Option<String>,
}

impl ImageRecord {
    pub fn from_row(row: &Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            character_id: row.try_get("character_id")?,
            user_id: row.try_get("user_id")?,
            job_id: row.try_get("job_id")?,
            job_type: row.try_get("job_type")?,
            batch_index: row.try_get("batch_index")?,
            storage_key: row.try_get("storage_key")?,
            thumbnail_key: row.try_get("thumbnail_key")?,
            width: row.try_get("width")?,
            height: row.try_get("height")?,
            byte_size: row.try_get("byte_size")?,
            content_type: row.try_get("content_type")?,
            seed: row.try_get("seed")?,
            generation_provider: row.try_get("generation_provider")?,
            parameters: row.try_get("parameters")?,
            source_image_id: row.try_get("source_image_id")?,
            created_at: row.try_get("created_at")?,
            is_primary: row.try_get("is_primary")?,
        })
    }

    /// The stored objects of this image: the image and its thumbnail.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.storage_key).chain(&self.thumbnail_key)
    }

    /// What a client sees: links (see [`crate::ports::storage::image_link`]) instead
    /// of keys, and `parameters` without any storage key.
    pub async fn present(self, storage: Option<&dyn ObjectStore>) -> CharacterImage {
        use crate::ports::storage::image_link;
        let url = image_link(storage, Some(&self.storage_key)).await;
        let thumbnail_url = image_link(storage, self.thumbnail_key.as_deref()).await;
        CharacterImage {
            placeholder: self.generation_provider == Some(GenerationProvider::Fallback),
            parameters: without_keys(self.parameters),
            id: self.id,
            character_id: self.character_id,
            job_id: self.job_id,
            job_type: self.job_type,
            batch_index: self.batch_index,
            width: self.width,
            height: self.height,
            byte_size: self.byte_size,
            content_type: self.content_type,
            seed: self.seed,
            generation_provider: self.generation_provider,
            is_primary: self.is_primary,
            source_image_id: self.source_image_id,
            created_at: self.created_at,
            url,
            thumbnail_url,
        }
    }
}

/// `value` without the members that could hold a storage key, at any depth.
fn without_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(k, _)| !KEY_MEMBERS.contains(&k.as_str()))
                .map(|(k, v)| (k, without_keys(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(without_keys).collect()),
        other => other,
    }
}

/// The images of a character the caller can see, newest first,
/// keyset-paginated on (created_at, id).
pub async fn list(
    tx: &Transaction<'_>,
    character_id: &str,
    limit: i64,
    after: Option<TimeKey>,
) -> Result<Page<ImageRecord>, ApiError> {
    let (after_at, after_id) = after
        .map(|k| (Some(k.at), Some(k.id)))
        .unwrap_or((None, None));
    let rows = tx
        .query(
            &format!(
                "SELECT {IMAGE_COLUMNS} FROM character_images i JOIN characters c ON c.id = i.character_id \
                 WHERE i.character_id = $1 \
                   AND ($2::timestamptz IS NULL OR (i.created_at, i.id) < ($2, $3::text)) \
                 ORDER BY i.created_at DESC, i.id DESC LIMIT $4"
            ),
            &[&character_id, &after_at, &after_id, &(limit + 1)],
        )
        .await?;
    let images = rows
        .iter()
        .map(ImageRecord::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(pagination::page(images, limit, |i| TimeKey {
        at: i.created_at,
        id: i.id.clone(),
    }))
}

/// Every image of the user `$1`, oldest first (the GDPR export reads it
/// through a cursor).
pub fn of_user_sql() -> String {
    format!(
        "SELECT {IMAGE_COLUMNS} FROM character_images i LEFT JOIN characters c ON c.id = i.character_id \
         WHERE i.user_id = $1 ORDER BY i.created_at, i.id"
    )
}

fn not_this_characters() -> ApiError {
    ApiError::validation("image_id", "is not an image of this character")
}

/// Makes `image_id` the primary image of the caller's character `character_id`
/// (the caller checked ownership with [`super::repo::owned`]); the triggers
/// derive the character's image columns from it. An image of another
/// character is a 422 naming `image_id`.
pub async fn set_primary(
    tx: &Transaction<'_>,
    user: &User,
    character_id: &str,
    image_id: &str,
    meta: &RequestMeta,
) -> Result<Character, ApiError> {
    let known = tx
        .query_opt(
            "SELECT 1 FROM character_images WHERE id = $1 AND character_id = $2",
            &[&image_id, &character_id],
        )
        .await?;
    if known.is_none() {
        return Err(not_this_characters());
    }
    // The trigger refuses an image of another character (23503) whatever was checked
    // above; RLS lets the API role change only its own characters.
    let row = tx
        .query_opt(
            &format!(
                "UPDATE characters AS c SET primary_image_id = $2 WHERE c.id = $1 \
                 RETURNING {CHARACTER_COLUMNS}"
            ),
            &[&character_id, &image_id],
        )
        .await
        .map_err(|e| {
            if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) {
                not_this_characters()
            } else {
                ApiError::from(e)
            }
        })?;
    let character = row
        .as_ref()
        .map(Character::from_row)
        .transpose()?
        .ok_or_else(|| ApiError::NotFound("no such character".into()))?;
    activity::record(
        tx,
        Activity {
            user_id: Some(&user.id),
            activity_type: crate::activity::ActivityType::CharacterPrimaryImageSet,
            entity_type: Some("character"),
            entity_id: Some(character_id),
            metadata: json!({"image_id": image_id}),
        },
        meta,
    )
    .await?;
    Ok(character)
}

/// Removes the image from its job's `output_urls`, in a transaction still
/// running as the system role (the API role cannot write jobs), scoped to the
/// caller's own image of `character_id`. Call it before switching the
/// transaction to the caller for [`delete`]: if the deletion is refused, the
/// transaction rolls back and the job is unchanged.
pub async fn forget_job_output(
    tx: &Transaction<'_>,
    user: &User,
    character_id: &str,
    image_id: &str,
) -> Result<(), ApiError> {
    tx.execute(
        "UPDATE generation_jobs j SET output_urls = j.output_urls - i.storage_key \
         FROM character_images i \
         WHERE i.id = $1 AND i.character_id = $2 AND i.user_id = $3 AND j.id = i.job_id \
           AND j.user_id = $3 AND jsonb_typeof(j.output_urls) = 'array' \
           AND j.output_urls ? i.storage_key",
        &[&image_id, &character_id, &user.id],
    )
    .await?;
    Ok(())
}

/// Deletes the caller's image `image_id` of their character `character_id`
/// (ownership checked by the caller with [`super::repo::owned`]; RLS deletes
/// only the caller's own images). Returns the stored objects to delete once
/// the transaction commits. The triggers pick the next primary image (the
/// oldest remaining) when it was the primary.
pub async fn delete(
    tx: &Transaction<'_>,
    user: &User,
    character_id: &str,
    image_id: &str,
    meta: &RequestMeta,
) -> Result<Vec<String>, ApiError> {
    let row = tx
        .query_opt(
            "DELETE FROM character_images WHERE id = $1 AND character_id = $2 \
             RETURNING storage_key, thumbnail_key, job_id",
            &[&image_id, &character_id],
        )
        .await?
        .ok_or_else(|| ApiError::NotFound("no such image of this character".into()))?;
    let storage_key: String = row.try_get(0)?;
    let thumbnail_key: Option<String> = row.try_get(1)?;
    let job_id: Option<String> = row.try_get(2)?;
    activity::record(
        tx,
        Activity {
            user_id: Some(&user.id),
            activity_type: crate::activity::ActivityType::CharacterImageDeleted,
            entity_type: Some("character"),
            entity_id: Some(character_id),
            metadata: json!({"image_id": image_id, "job_id": job_id}),
        },
        meta,
    )
    .await?;
    let mut keys: Vec<String> = std::iter::once(storage_key).chain(thumbnail_key).collect();
    // Only our own keys (an image hosted elsewhere is not ours to delete).
    keys.retain(|k| crate::ports::storage::validate_key(k).is_ok());
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_lose_every_storage_key_at_any_depth() {
        let parameters = json!({
            "input": {"prompt": "an elf", "source": {"image_id": "img", "key": "users/u/c/j/image-0.png"},
                      "init_image_key": "users/u/x.png"},
            "provider_info": {"seed": 7, "outputs": [{"storage_key": "users/a", "thumbnail_key": "users/b"}]},
        });
        assert_eq!(
            without_keys(parameters),
            json!({
                "input": {"prompt": "an elf", "source": {"image_id": "img"}},
                "provider_info": {"seed": 7, "outputs": [{}]},
            })
        );
    }
}
