//! Collections: named, optionally public groups of characters, and the
//! membership of characters in them.
//!
//! It may use [`crate::users`]; only gdpr and the runtime use it.
//!
//! Visibility follows the `collections_read` policy: a collection is visible to
//! its owner and, when public, to anyone. Only the owner changes a collection or
//! its members. Handlers check this themselves and run their statements as
//! `app_api` (see [`crate::ports::db::begin_as`]), so row-level security is the second
//! wall. `character_count` is kept by a trigger on `collection_characters`.

pub mod input;
pub mod repo;
pub mod routes;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::Row;
use utoipa::ToSchema;

/// A `collections` row. Field names are the column names; nullable counters
/// and flags are reported with their column defaults (0, false, `[]`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Collection {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub description: Option<String>,
    pub cover_image_url: Option<String>,
    pub tags: Vec<String>,
    pub category: Option<String>,
    pub theme: Option<String>,
    pub is_public: bool,
    pub allow_collaboration: bool,
    /// A JSON object (`{}` by default).
    #[schema(value_type = Object)]
    pub collaboration_settings: Value,
    /// How many characters the collection files.
    pub character_count: i32,
    pub total_views: i32,
    pub total_likes: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The column list matching [`Collection::from_row`].
pub const COLLECTION_COLUMNS: &str = "id, user_id, name, description, cover_image_url, tags, \
    category, theme, is_public, allow_collaboration, collaboration_settings, character_count, \
    total_views, total_likes, created_at, updated_at";

impl Collection {
    pub fn from_row(row: &Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            user_id: row.try_get("user_id")?,
            name: row.try_get("name")?,
            description: row.try_get("description")?,
            cover_image_url: row.try_get("cover_image_url")?,
            tags: row
                .try_get::<_, Option<Vec<String>>>("tags")?
                .unwrap_or_default(),
            category: row.try_get("category")?,
            theme: row.try_get("theme")?,
            is_public: row
                .try_get::<_, Option<bool>>("is_public")?
                .unwrap_or(false),
            allow_collaboration: row
                .try_get::<_, Option<bool>>("allow_collaboration")?
                .unwrap_or(false),
            collaboration_settings: row
                .try_get::<_, Option<Value>>("collaboration_settings")?
                .unwrap_or_else(|| Value::Object(Default::default())),
            character_count: row
                .try_get::<_, Option<i32>>("character_count")?
                .unwrap_or(0),
            total_views: row.try_get::<_, Option<i32>>("total_views")?.unwrap_or(0),
            total_likes: row.try_get::<_, Option<i32>>("total_likes")?.unwrap_or(0),
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

/// What a collection listing shows of each character: enough for a card.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CharacterCard {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub description: Option<String>,
    pub style_type: String,
    pub tags: Vec<String>,
    pub is_public: bool,
    pub thumbnail_url: Option<String>,
    pub primary_image_url: Option<String>,
    pub like_count: i32,
    pub created_at: DateTime<Utc>,
}

impl CharacterCard {
    /// Stored image keys become time-limited links (see [`crate::ports::storage::image_link`]).
    pub async fn present(&mut self, storage: Option<&dyn crate::ports::storage::ObjectStore>) {
        self.thumbnail_url =
            crate::ports::storage::image_link(storage, self.thumbnail_url.as_deref()).await;
        self.primary_image_url =
            crate::ports::storage::image_link(storage, self.primary_image_url.as_deref()).await;
    }
}

/// The `characters` columns matching [`CharacterCard::from_row`], aliased
/// `character_*` so they can share a row with the membership's columns.
pub const CHARACTER_CARD_COLUMNS: &str = "ch.id AS character_card_id, \
    ch.user_id AS character_user_id, ch.name AS character_name, \
    ch.description AS character_description, ch.style_type AS character_style_type, \
    ch.tags AS character_tags, ch.is_public AS character_is_public, \
    ch.thumbnail_url AS character_thumbnail_url, \
    ch.primary_image_url AS character_primary_image_url, \
    ch.like_count AS character_like_count, ch.created_at AS character_created_at";

impl CharacterCard {
    pub fn from_row(row: &Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            id: row.try_get("character_card_id")?,
            user_id: row.try_get("character_user_id")?,
            name: row.try_get("character_name")?,
            description: row.try_get("character_description")?,
            style_type: row.try_get("character_style_type")?,
            tags: row
                .try_get::<_, Option<Vec<String>>>("character_tags")?
                .unwrap_or_default(),
            is_public: row
                .try_get::<_, Option<bool>>("character_is_public")?
                .unwrap_or(false),
            thumbnail_url: row.try_get("character_thumbnail_url")?,
            primary_image_url: row.try_get("character_primary_image_url")?,
            like_count: row
                .try_get::<_, Option<i32>>("character_like_count")?
                .unwrap_or(0),
            created_at: row.try_get("character_created_at")?,
        })
    }
}

/// A `collection_characters` row with the character it files.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CollectionMember {
    pub collection_id: String,
    pub character_id: String,
    pub added_at: DateTime<Utc>,
    /// Members are listed by `display_order` (unordered ones last), then by `added_at`.
    pub display_order: Option<i32>,
    pub character: CharacterCard,
}

/// The membership columns matching [`CollectionMember::from_row`] (with
/// [`CHARACTER_CARD_COLUMNS`] beside them).
pub const MEMBER_COLUMNS: &str = "cc.collection_id, cc.character_id, cc.added_at, cc.display_order";

impl CollectionMember {
    pub fn from_row(row: &Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            collection_id: row.try_get("collection_id")?,
            character_id: row.try_get("character_id")?,
            added_at: row.try_get("added_at")?,
            display_order: row.try_get("display_order")?,
            character: CharacterCard::from_row(row)?,
        })
    }
}
