//! SQL for characters. Every function takes a transaction opened with
//! [`crate::ports::db::begin_as`], so row-level security backs each check made here.
//! Column names in the dynamic statements come from fixed lists, never from
//! request text; every value is a bound parameter.

use serde_json::json;
use tokio_postgres::Transaction;
use tokio_postgres::types::ToSql;

use super::fields::CharacterFields;
use super::{CHARACTER_COLUMNS, Character, content_filter};
use crate::activity::{self, Activity};
use crate::kernel::error::ApiError;
use crate::users::User;
use crate::web::http::RequestMeta;
use crate::web::pagination::{self, Page, TimeKey, VersionKey};

type Param = Box<dyn ToSql + Sync + Send>;

/// Column assignments for an INSERT or UPDATE, built from validated fields.
#[derive(Default)]
struct Assignments {
    columns: Vec<&'static str>,
    /// SQL expression for each column, with `$n` placeholders.
    expressions: Vec<String>,
    params: Vec<Param>,
}

impl Assignments {
    fn set(&mut self, column: &'static str, value: Param) {
        self.set_with(column, "{}", value);
    }

    /// `template` wraps the placeholder (`{}`) in a cast or expression.
    fn set_with(&mut self, column: &'static str, template: &str, value: Param) {
        self.params.push(value);
        self.columns.push(column);
        self.expressions
            .push(template.replace("{}", &format!("${}", self.params.len())));
    }

    fn param(&mut self, value: Param) -> String {
        self.params.push(value);
        format!("${}", self.params.len())
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }

    fn from_fields(fields: &CharacterFields) -> Self {
        let mut a = Self::default();
        if let Some(v) = &fields.name {
            a.set("name", Box::new(v.clone()));
        }
        if let Some(v) = &fields.description {
            a.set("description", Box::new(v.clone()));
        }
        if let Some(v) = &fields.prompt {
            a.set("prompt", Box::new(v.clone()));
        }
        if let Some(v) = &fields.negative_prompt {
            a.set("negative_prompt", Box::new(v.clone()));
        }
        if let Some(v) = &fields.style_type {
            a.set("style_type", Box::new(v.clone()));
        }
        if let Some(v) = &fields.art_style {
            a.set("art_style", Box::new(v.clone()));
        }
        if let Some(v) = &fields.mood {
            a.set("mood", Box::new(v.clone()));
        }
        if let Some(v) = &fields.color_palette {
            a.set("color_palette", Box::new(v.clone()));
        }
        if let Some(v) = &fields.model_version {
            a.set("model_version", Box::new(v.clone()));
        }
        if let Some(v) = &fields.generation_seed {
            a.set("generation_seed", Box::new(*v));
        }
        if let Some(v) = fields.cfg_scale_tenths {
            a.set_with("cfg_scale", "({}::int4 / 10.0)::numeric(3,1)", Box::new(v));
        }
        if let Some(v) = fields.steps {
            a.set("steps", Box::new(v));
        }
        if let Some(v) = &fields.sampler {
            a.set("sampler", Box::new(v.clone()));
        }
        if let Some(v) = &fields.collection_id {
            a.set("collection_id", Box::new(v.clone()));
        }
        if let Some(v) = &fields.tags {
            a.set("tags", Box::new(v.clone()));
        }
        if let Some(v) = fields.is_public {
            a.set("is_public", Box::new(v));
        }
        if let Some(v) = fields.allow_commercial_use {
            a.set("allow_commercial_use", Box::new(v));
        }
        if let Some(v) = &fields.license_type {
            a.set("license_type", Box::new(v.clone()));
        }
        a
    }
}

/// Checks the text fields being written against the owner's content filter.
/// Checks the free text of `fields` against the user's content filter level:
/// name, description and every part that reaches the image server (prompt,
/// art style, mood, tags; negative prompts list what to keep out, so they are
/// not filtered). Errors name the field with `prefix` before it.
pub fn filter_content(user: &User, fields: &CharacterFields, prefix: &str) -> Result<(), ApiError> {
    let level = content_filter::level_of(user);
    let tags = fields.tags.as_ref().map(|tags| tags.join(", "));
    let texts = [
        ("name", fields.name.as_deref()),
        (
            "description",
            fields.description.as_ref().and_then(|d| d.as_deref()),
        ),
        ("prompt", fields.prompt.as_deref()),
        (
            "art_style",
            fields.art_style.as_ref().and_then(|a| a.as_deref()),
        ),
        ("mood", fields.mood.as_ref().and_then(|m| m.as_deref())),
        ("tags", tags.as_deref()),
    ];
    for (field, text) in texts {
        if let Some(text) = text {
            content_filter::check(level, &format!("{prefix}{field}"), text)?;
        }
    }
    Ok(())
}

/// Suspended accounts keep their work but cannot publish.
fn check_may_publish(user: &User, fields: &CharacterFields) -> Result<(), ApiError> {
    if fields.is_public == Some(true)
        && user.account_status != Some(crate::users::AccountStatus::Active)
    {
        return Err(ApiError::Forbidden(
            "a suspended account cannot publish characters".into(),
        ));
    }
    Ok(())
}

/// The collection a character is filed under must be one of the caller's.
async fn check_collection(
    tx: &Transaction<'_>,
    user: &User,
    fields: &CharacterFields,
) -> Result<(), ApiError> {
    if let Some(Some(collection_id)) = &fields.collection_id {
        let own = tx
            .query_opt(
                "SELECT 1 FROM collections WHERE id = $1 AND user_id = $2",
                &[collection_id, &user.id],
            )
            .await?;
        if own.is_none() {
            return Err(ApiError::validation(
                "collection_id",
                "is not one of your collections",
            ));
        }
    }
    Ok(())
}

/// Files the character in its collection (membership row) when one is set.
async fn join_collection(
    tx: &Transaction<'_>,
    character_id: &str,
    fields: &CharacterFields,
) -> Result<(), ApiError> {
    if let Some(Some(collection_id)) = &fields.collection_id {
        tx.execute(
            "INSERT INTO collection_characters (collection_id, character_id) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING",
            &[collection_id, &character_id],
        )
        .await?;
    }
    Ok(())
}

pub async fn create(
    tx: &Transaction<'_>,
    user: &User,
    fields: &CharacterFields,
    meta: &RequestMeta,
) -> Result<Character, ApiError> {
    filter_content(user, fields, "")?;
    check_may_publish(user, fields)?;
    check_collection(tx, user, fields).await?;
    let mut assignments = Assignments::from_fields(fields);
    assignments.set("user_id", Box::new(user.id.clone()));
    if let Some(parent) = &fields.parent_character_id {
        // RLS shows only the caller's own and public characters.
        let visible = tx
            .query_opt("SELECT 1 FROM characters WHERE id = $1", &[parent])
            .await?;
        if visible.is_none() {
            return Err(ApiError::validation(
                "parent_character_id",
                "is not a character of yours or a public one",
            ));
        }
        assignments.set("parent_character_id", Box::new(parent.clone()));
        assignments.set("variant_type", Box::new(fields.variant_type.clone()));
    }
    let sql = format!(
        "INSERT INTO characters AS c ({}) VALUES ({}) RETURNING {CHARACTER_COLUMNS}",
        assignments.columns.join(", "),
        assignments.expressions.join(", ")
    );
    let row = tx.query_one(&sql, &assignments.refs()).await?;
    let character = Character::from_row(&row)?;
    join_collection(tx, &character.id, fields).await?;
    activity::record(
        tx,
        Activity {
            user_id: Some(&user.id),
            activity_type: crate::activity::ActivityType::CharacterCreated,
            entity_type: Some("character"),
            entity_id: Some(&character.id),
            metadata: json!({"style_type": character.style_type, "parent_character_id": character.parent_character_id}),
        },
        meta,
    )
    .await?;
    Ok(character)
}

/// A character the caller may see (their own or a public one).
pub async fn visible(tx: &Transaction<'_>, id: &str) -> Result<Option<Character>, ApiError> {
    let row = tx
        .query_opt(
            &format!("SELECT {CHARACTER_COLUMNS} FROM characters c WHERE c.id = $1"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(Character::from_row).transpose()?)
}

/// The caller's own character: someone else's private one is a 404 (its
/// existence is not revealed), someone else's public one a 403.
pub async fn owned(tx: &Transaction<'_>, user: &User, id: &str) -> Result<Character, ApiError> {
    let character = visible(tx, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such character".into()))?;
    if character.user_id != user.id {
        return Err(ApiError::Forbidden(
            "only the owner can change this character".into(),
        ));
    }
    Ok(character)
}

/// Reads a character the caller may see; answers whether the read is a view
/// (someone other than the owner reads a public character), which the caller
/// counts through [`crate::characters::views`].
pub async fn read(
    tx: &Transaction<'_>,
    viewer: Option<&User>,
    id: &str,
) -> Result<(Character, bool), ApiError> {
    let character = visible(tx, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such character".into()))?;
    let is_view =
        character.is_public == Some(true) && viewer.is_none_or(|v| v.id != character.user_id);
    Ok((character, is_view))
}

pub async fn update(
    tx: &Transaction<'_>,
    user: &User,
    id: &str,
    fields: &CharacterFields,
    meta: &RequestMeta,
) -> Result<Character, ApiError> {
    let existing = owned(tx, user, id).await?;
    filter_content(user, fields, "")?;
    check_may_publish(user, fields)?;
    check_collection(tx, user, fields).await?;
    let mut assignments = Assignments::from_fields(fields);
    if assignments.columns.is_empty() {
        return Ok(existing);
    }
    let sets: Vec<String> = assignments
        .columns
        .iter()
        .zip(&assignments.expressions)
        .map(|(column, expression)| format!("{column} = {expression}"))
        .collect();
    let id_param = assignments.param(Box::new(id.to_string()));
    let sql = format!(
        "UPDATE characters AS c SET {} WHERE c.id = {id_param} RETURNING {CHARACTER_COLUMNS}",
        sets.join(", ")
    );
    let row = tx.query_one(&sql, &assignments.refs()).await?;
    let character = Character::from_row(&row)?;
    join_collection(tx, &character.id, fields).await?;
    activity::record(
        tx,
        Activity {
            user_id: Some(&user.id),
            activity_type: crate::activity::ActivityType::CharacterUpdated,
            entity_type: Some("character"),
            entity_id: Some(&character.id),
            metadata: json!({"fields": assignments.columns}),
        },
        meta,
    )
    .await?;
    Ok(character)
}

pub async fn delete(
    tx: &Transaction<'_>,
    user: &User,
    id: &str,
    meta: &RequestMeta,
) -> Result<(), ApiError> {
    owned(tx, user, id).await?;
    tx.execute("DELETE FROM characters WHERE id = $1", &[&id])
        .await?;
    activity::record(
        tx,
        Activity {
            user_id: Some(&user.id),
            activity_type: crate::activity::ActivityType::CharacterDeleted,
            entity_type: Some("character"),
            entity_id: Some(id),
            metadata: json!({}),
        },
        meta,
    )
    .await?;
    Ok(())
}

/// Filters of a person's list.
#[derive(Debug, Default)]
pub struct ListFilter {
    pub style_type: Option<String>,
    pub tag: Option<String>,
    pub generation_status: Option<String>,
    pub collection_id: Option<String>,
    pub text: Option<String>,
    /// Only public characters moderation has not hidden (the person's page,
    /// `GET /api/v1/users/{username}/characters`), not all of their own.
    pub public_only: bool,
}

/// A person's characters (all of them for their owner's list, see
/// [`ListFilter::public_only`]), newest first, keyset-paginated on (created_at, id).
pub async fn list_own(
    tx: &Transaction<'_>,
    user: &User,
    filter: &ListFilter,
    limit: i64,
    after: Option<TimeKey>,
) -> Result<Page<Character>, ApiError> {
    let (after_at, after_id) = after
        .map(|k| (Some(k.at), Some(k.id)))
        .unwrap_or((None, None));
    let rows = tx
        .query(
            &format!(
                "SELECT {CHARACTER_COLUMNS} FROM characters c \
                 WHERE c.user_id = $1 \
                   AND ($2::text IS NULL OR c.style_type = $2) \
                   AND ($3::text IS NULL OR c.tags @> ARRAY[$3::text]) \
                   AND ($4::text IS NULL OR c.generation_status = $4) \
                   AND ($5::text IS NULL OR EXISTS (SELECT 1 FROM collection_characters cc \
                                                    WHERE cc.collection_id = $5 AND cc.character_id = c.id)) \
                   AND ($6::text IS NULL OR c.search_vector @@ websearch_to_tsquery('simple', $6)) \
                   AND ($7::timestamptz IS NULL OR (c.created_at, c.id) < ($7, $8::text)) \
                   AND (NOT $10 OR (c.is_public IS TRUE AND c.moderation_hidden IS NOT TRUE)) \
                 ORDER BY c.created_at DESC, c.id DESC LIMIT $9"
            ),
            &[
                &user.id,
                &filter.style_type,
                &filter.tag,
                &filter.generation_status,
                &filter.collection_id,
                &filter.text,
                &after_at,
                &after_id,
                &(limit + 1),
                &filter.public_only,
            ],
        )
        .await?;
    let characters = rows
        .iter()
        .map(Character::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(pagination::page(characters, limit, |c| TimeKey {
        at: c.created_at,
        id: c.id.clone(),
    }))
}

/// The family of a character the caller can see: its root and every
/// descendant (`character_family`), those the caller may see (RLS: their own
/// and public ones), ordered by version number, then creation, then id,
/// keyset-paginated on that order.
pub async fn family(
    tx: &Transaction<'_>,
    id: &str,
    limit: i64,
    after: Option<VersionKey>,
) -> Result<Page<Character>, ApiError> {
    let (after_version, after_at, after_id) = after
        .map(|k| (Some(k.version), Some(k.at), Some(k.id)))
        .unwrap_or((None, None, None));
    let rows = tx
        .query(
            &format!(
                "SELECT {CHARACTER_COLUMNS} FROM characters c \
                 WHERE c.id IN (SELECT character_family($1)) \
                   AND ($2::int4 IS NULL OR (coalesce(c.version_number, 1), c.created_at, c.id) > ($2, $3::timestamptz, $4::text)) \
                 ORDER BY coalesce(c.version_number, 1), c.created_at, c.id LIMIT $5"
            ),
            &[&id, &after_version, &after_at, &after_id, &(limit + 1)],
        )
        .await?;
    let characters = rows
        .iter()
        .map(Character::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(pagination::page(characters, limit, |c| VersionKey {
        version: c.version_number.unwrap_or(1),
        at: c.created_at,
        id: c.id.clone(),
    }))
}

/// Every stored object of a character: the image and thumbnail of each of
/// its `character_images` rows, plus the outputs of its generation jobs that
/// are not recorded as images of another character (a variation's images
/// belong to the variant it made, stored under the variant's id, and outlive
/// their source), each with the thumbnail the worker stores beside an output
/// no image row describes. Keys only: images hosted elsewhere are not ours.
pub async fn stored_objects(tx: &Transaction<'_>, id: &str) -> Result<Vec<String>, ApiError> {
    let rows = tx
        .query(
            "SELECT i.storage_key, i.thumbnail_key, false FROM character_images i WHERE i.character_id = $1 \
             UNION ALL \
             SELECT o, NULL, true FROM generation_jobs j, jsonb_array_elements_text( \
               CASE WHEN jsonb_typeof(j.output_urls) = 'array' THEN j.output_urls ELSE '[]'::jsonb END) o \
             WHERE j.character_id = $1 \
               AND NOT EXISTS (SELECT 1 FROM character_images i WHERE i.storage_key = o)",
            &[&id],
        )
        .await?;
    let mut keys: Vec<String> = Vec::new();
    for row in &rows {
        let key: String = row.try_get(0)?;
        let thumbnail: Option<String> = row.try_get(1)?;
        let unrecorded: bool = row.try_get(2)?;
        keys.extend(thumbnail);
        // An output recorded by no image row (from before V15): its thumbnail
        // is beside it (`image-N.png` → `thumb-N.png`).
        if unrecorded && key.contains("/image-") {
            keys.push(key.replace("/image-", "/thumb-"));
        }
        keys.push(key);
    }
    keys.retain(|k| crate::ports::storage::validate_key(k).is_ok());
    keys.sort();
    keys.dedup();
    Ok(keys)
}
