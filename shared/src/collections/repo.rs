//! SQL for collections and their members. Every statement is parameterised and
//! meant to run inside a [`crate::ports::db::begin_as`] transaction, so row-level
//! security applies; writes name only the columns `app_api` may write.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_postgres::GenericClient;
use tokio_postgres::error::SqlState;

use super::input::{CollectionFields, MemberFields};
use super::{
    CHARACTER_CARD_COLUMNS, COLLECTION_COLUMNS, Collection, CollectionMember, MEMBER_COLUMNS,
};
use crate::kernel::error::ApiError;
use crate::web::pagination::TimeKey;

pub async fn insert_collection(
    client: &impl GenericClient,
    user_id: &str,
    fields: &CollectionFields,
) -> Result<Collection, ApiError> {
    let settings = Value::Object(fields.collaboration_settings.clone().unwrap_or_default());
    let row = client
        .query_one(
            &format!(
                "INSERT INTO collections (user_id, name, description, cover_image_url, tags, \
                   category, theme, is_public, allow_collaboration, collaboration_settings) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 RETURNING {COLLECTION_COLUMNS}"
            ),
            &[
                &user_id,
                &fields.name,
                &fields.description.clone().flatten(),
                &fields.cover_image_url.clone().flatten(),
                &fields.tags.clone().unwrap_or_default(),
                &fields.category.clone().flatten(),
                &fields.theme.clone().flatten(),
                &fields.is_public.unwrap_or(false),
                &fields.allow_collaboration.unwrap_or(false),
                &settings,
            ],
        )
        .await?;
    Ok(Collection::from_row(&row)?)
}

/// The collection if the caller's transaction can see it (RLS applies).
pub async fn find_collection(
    client: &impl GenericClient,
    id: &str,
) -> Result<Option<Collection>, ApiError> {
    let row = client
        .query_opt(
            &format!("SELECT {COLLECTION_COLUMNS} FROM collections WHERE id = $1"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(Collection::from_row).transpose()?)
}

/// Which collections a list shows.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// All of this user's (their own list).
    Own(&'a str),
    /// This person's public ones (their page).
    PublicOf(&'a str),
    /// Public collections of everyone active who showcases their work (the gallery of
    /// collections; `allow_gallery_showcase` governs collections as it governs characters).
    Gallery,
}

/// Collections in `scope`, newest first, keyset-paginated on (created_at, id).
pub async fn list_collections(
    client: &impl GenericClient,
    scope: Scope<'_>,
    after: Option<&TimeKey>,
    limit: i64,
) -> Result<Vec<Collection>, ApiError> {
    let (owner, public_only) = match scope {
        Scope::Own(owner) => (Some(owner), false),
        Scope::PublicOf(owner) => (Some(owner), true),
        Scope::Gallery => (None, true),
    };
    let rows = client
        .query(
            &format!(
                "SELECT {COLLECTION_COLUMNS} FROM collections k \
                 WHERE CASE WHEN $1::text IS NULL \
                       THEN EXISTS (SELECT 1 FROM users u WHERE u.id = k.user_id \
                                    AND u.account_status = 'active' \
                                    AND u.allow_gallery_showcase IS TRUE) \
                       ELSE k.user_id = $1 END \
                   AND (NOT $5 OR k.is_public IS TRUE) \
                   AND ($2::timestamptz IS NULL OR (k.created_at, k.id) < ($2, $3::text)) \
                 ORDER BY k.created_at DESC, k.id DESC \
                 LIMIT $4"
            ),
            &[
                &owner,
                &after.map(|k| k.at),
                &after.map(|k| k.id.as_str()),
                &(limit + 1),
                &public_only,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(Collection::from_row)
        .collect::<Result<_, _>>()?)
}

/// Applies the present fields to the owner's collection; `None` if it is gone.
pub async fn update_collection(
    client: &impl GenericClient,
    id: &str,
    owner_id: &str,
    fields: &CollectionFields,
) -> Result<Option<Collection>, ApiError> {
    let settings = fields.collaboration_settings.clone().map(Value::Object);
    let row = client
        .query_opt(
            &format!(
                "UPDATE collections SET \
                   name = COALESCE($3, name), \
                   description = CASE WHEN $4 THEN $5 ELSE description END, \
                   cover_image_url = CASE WHEN $6 THEN $7 ELSE cover_image_url END, \
                   tags = COALESCE($8, tags), \
                   category = CASE WHEN $9 THEN $10 ELSE category END, \
                   theme = CASE WHEN $11 THEN $12 ELSE theme END, \
                   is_public = COALESCE($13, is_public), \
                   allow_collaboration = COALESCE($14, allow_collaboration), \
                   collaboration_settings = COALESCE($15::jsonb, collaboration_settings) \
                 WHERE id = $1 AND user_id = $2 \
                 RETURNING {COLLECTION_COLUMNS}"
            ),
            &[
                &id,
                &owner_id,
                &fields.name,
                &fields.description.is_some(),
                &fields.description.clone().flatten(),
                &fields.cover_image_url.is_some(),
                &fields.cover_image_url.clone().flatten(),
                &fields.tags,
                &fields.category.is_some(),
                &fields.category.clone().flatten(),
                &fields.theme.is_some(),
                &fields.theme.clone().flatten(),
                &fields.is_public,
                &fields.allow_collaboration,
                &settings,
            ],
        )
        .await?;
    Ok(row.as_ref().map(Collection::from_row).transpose()?)
}

/// Deletes the owner's collection (its memberships cascade; characters stay).
pub async fn delete_collection(
    client: &impl GenericClient,
    id: &str,
    owner_id: &str,
) -> Result<bool, ApiError> {
    let deleted = client
        .execute(
            "DELETE FROM collections WHERE id = $1 AND user_id = $2",
            &[&id, &owner_id],
        )
        .await?;
    Ok(deleted > 0)
}

/// Who owns a character and whether it is public, if the transaction can see it.
pub struct CharacterAccess {
    pub user_id: String,
    pub is_public: bool,
}

pub async fn character_access(
    client: &impl GenericClient,
    character_id: &str,
) -> Result<Option<CharacterAccess>, ApiError> {
    let row = client
        .query_opt(
            "SELECT user_id, is_public FROM characters WHERE id = $1",
            &[&character_id],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(CharacterAccess {
        user_id: row.try_get("user_id")?,
        is_public: row
            .try_get::<_, Option<bool>>("is_public")?
            .unwrap_or(false),
    }))
}

/// Keyset position in a collection's order: `display_order` (NULLS LAST),
/// then `added_at`, then `character_id`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberKey {
    pub order: Option<i32>,
    pub at: DateTime<Utc>,
    pub id: String,
}

impl MemberKey {
    pub fn of(member: &CollectionMember) -> Self {
        Self {
            order: member.display_order,
            at: member.added_at,
            id: member.character_id.clone(),
        }
    }
}

/// A page of a collection's members whose characters the viewer may see
/// (their own or public ones; `viewer` is `None` for anonymous callers), in
/// order, after `after`; fetches `limit + 1` rows.
pub async fn list_members(
    client: &impl GenericClient,
    collection_id: &str,
    viewer: Option<&str>,
    after: Option<&MemberKey>,
    limit: i64,
) -> Result<Vec<CollectionMember>, ApiError> {
    // After a cursor with an order d: larger orders, then the unordered rows,
    // then ties on d broken by (added_at, character_id). After an unordered
    // cursor: only later unordered rows. Written out (rather than comparing a
    // COALESCEd sort key) so idx_collection_characters_order serves the sort.
    let rows = client
        .query(
            &format!(
                "SELECT {MEMBER_COLUMNS}, {CHARACTER_CARD_COLUMNS} \
                 FROM collection_characters cc \
                 JOIN characters ch ON ch.id = cc.character_id \
                 WHERE cc.collection_id = $1 \
                   AND (ch.user_id = $2 OR coalesce(ch.is_public, false)) \
                   AND ($4::timestamptz IS NULL \
                        OR ($3::integer IS NOT NULL AND (cc.display_order > $3 OR cc.display_order IS NULL)) \
                        OR (cc.display_order IS NOT DISTINCT FROM $3 \
                            AND (cc.added_at, cc.character_id) > ($4, $5::text))) \
                 ORDER BY cc.display_order ASC NULLS LAST, cc.added_at ASC, cc.character_id ASC \
                 LIMIT $6"
            ),
            &[
                &collection_id,
                &viewer,
                &after.and_then(|k| k.order),
                &after.map(|k| k.at),
                &after.map(|k| k.id.as_str()),
                &(limit + 1),
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(CollectionMember::from_row)
        .collect::<Result<_, _>>()?)
}

/// One member with its character, if the transaction can see both.
pub async fn find_member(
    client: &impl GenericClient,
    collection_id: &str,
    character_id: &str,
) -> Result<Option<CollectionMember>, ApiError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {MEMBER_COLUMNS}, {CHARACTER_CARD_COLUMNS} \
                 FROM collection_characters cc \
                 JOIN characters ch ON ch.id = cc.character_id \
                 WHERE cc.collection_id = $1 AND cc.character_id = $2"
            ),
            &[&collection_id, &character_id],
        )
        .await?;
    Ok(row.as_ref().map(CollectionMember::from_row).transpose()?)
}

/// Whether [`put_member`] added the character or updated its membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Added,
    Updated,
}

/// Adds the character to the collection, or updates its `display_order` when it
/// is a member already. A concurrent PUT of the same pair waits on the
/// primary key and then updates, so the pair is never stored twice.
pub async fn put_member(
    client: &impl GenericClient,
    collection_id: &str,
    character_id: &str,
    fields: &MemberFields,
) -> Result<PutOutcome, ApiError> {
    // A concurrent DELETE can remove the row between the two statements; then
    // the insert is simply tried again.
    for _ in 0..3 {
        let inserted = client
            .execute(
                "INSERT INTO collection_characters (collection_id, character_id, display_order) \
                 VALUES ($1, $2, $3) \
                 ON CONFLICT (collection_id, character_id) DO NOTHING",
                &[
                    &collection_id,
                    &character_id,
                    &fields.display_order.flatten(),
                ],
            )
            .await
            .map_err(insert_member_error)?;
        if inserted > 0 {
            return Ok(PutOutcome::Added);
        }
        let updated = client
            .execute(
                "UPDATE collection_characters \
                 SET display_order = CASE WHEN $3 THEN $4 ELSE display_order END \
                 WHERE collection_id = $1 AND character_id = $2",
                &[
                    &collection_id,
                    &character_id,
                    &fields.display_order.is_some(),
                    &fields.display_order.flatten(),
                ],
            )
            .await?;
        if updated > 0 {
            return Ok(PutOutcome::Updated);
        }
    }
    Err(ApiError::ServiceUnavailable {
        detail: "the membership changed concurrently; retry the request".into(),
        retry_after: 1,
    })
}

/// The handler checked the collection and the character just before the
/// insert; they can still be deleted (foreign key) or the character made
/// private (the insert policy) by a concurrent transaction. Either way the
/// character cannot be filed: a 404, not a 500.
fn insert_member_error(err: tokio_postgres::Error) -> ApiError {
    match err.code() {
        Some(code)
            if *code == SqlState::FOREIGN_KEY_VIOLATION
                || *code == SqlState::INSUFFICIENT_PRIVILEGE =>
        {
            ApiError::NotFound("no such collection or character".into())
        }
        _ => err.into(),
    }
}

pub async fn remove_member(
    client: &impl GenericClient,
    collection_id: &str,
    character_id: &str,
) -> Result<bool, ApiError> {
    let deleted = client
        .execute(
            "DELETE FROM collection_characters WHERE collection_id = $1 AND character_id = $2",
            &[&collection_id, &character_id],
        )
        .await?;
    Ok(deleted > 0)
}
