//! Characters: the creative workspace (create, edit, list, variants) and the
//! public gallery.
//!
//! It may use [`crate::jobs`] (starting a generation, cancelling a deleted
//! character's jobs), [`crate::credits`], [`crate::users`] and
//! [`crate::activity`]; only gdpr and the runtime use it.

pub mod content_filter;
pub mod fields;
pub mod gallery;
pub mod generate;
pub mod images;
pub mod repo;
pub mod routes;
pub mod views;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::Row;
use utoipa::ToSchema;

/// A `characters` row. Field names are the column names, plus the derived
/// `rating_count`, `rating_average` and `popularity` (views + likes + downloads).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Character {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub description: Option<String>,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    /// One of the style types (`anime`, `realistic`, `cartoon`, `fantasy`, `cyberpunk`,
    /// `steampunk`, `minimalist`, `comic`, `portrait`, `artistic`).
    pub style_type: String,
    pub art_style: Option<String>,
    pub mood: Option<String>,
    /// Hex colours such as `#1e90ff`.
    pub color_palette: Option<Vec<String>>,
    pub model_version: Option<String>,
    pub generation_seed: Option<i32>,
    /// 1.0 to 30.0, one decimal.
    pub cfg_scale: Option<f64>,
    pub steps: Option<i32>,
    pub sampler: Option<String>,
    pub primary_image_url: Option<String>,
    pub thumbnail_url: Option<String>,
    /// Further image URLs (a JSON array), kept by the generation pipeline.
    pub additional_images: Option<Value>,
    /// Generation metadata (a JSON object), kept by the generation pipeline.
    pub image_metadata: Option<Value>,
    /// `pending`, `processing`, `completed`, `failed` or `cancelled`.
    pub generation_status: Option<String>,
    pub processing_started_at: Option<DateTime<Utc>>,
    pub processing_completed_at: Option<DateTime<Utc>>,
    pub processing_time_seconds: Option<i32>,
    pub error_message: Option<String>,
    pub retry_count: Option<i32>,
    pub collection_id: Option<String>,
    pub tags: Option<Vec<String>>,
    pub is_public: Option<bool>,
    pub is_featured: Option<bool>,
    /// Hidden from the gallery by a moderator: not listed even while public, whatever the
    /// owner does, until a moderator unhides it.
    pub moderation_hidden: bool,
    pub allow_commercial_use: Option<bool>,
    /// `standard`, `commercial` or `creative_commons`.
    pub license_type: Option<String>,
    pub view_count: Option<i32>,
    pub like_count: Option<i32>,
    pub download_count: Option<i32>,
    pub share_count: Option<i32>,
    pub parent_character_id: Option<String>,
    pub version_number: Option<i32>,
    /// `original`, `variation`, `style_transfer`, `pose_change`, `outfit_change` or
    /// `expression_change`.
    pub variant_type: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
    /// How many ratings the character has.
    pub rating_count: i32,
    /// Mean rating, two decimals; `null` without ratings.
    pub rating_average: Option<f64>,
    /// Views + likes + downloads.
    pub popularity: Option<i32>,
}

/// The select list matching [`Character::from_row`], for table alias `c`.
pub const CHARACTER_COLUMNS: &str = "c.id, c.user_id, c.name, c.description, c.prompt, c.negative_prompt, \
    c.style_type, c.art_style, c.mood, c.color_palette, c.model_version, c.generation_seed, \
    c.cfg_scale::float8 AS cfg_scale, c.steps, c.sampler, c.primary_image_url, c.thumbnail_url, \
    c.additional_images, c.image_metadata, c.generation_status, c.processing_started_at, \
    c.processing_completed_at, c.processing_time_seconds, c.error_message, c.retry_count, \
    c.collection_id, c.tags, c.is_public, c.is_featured, c.moderation_hidden, c.allow_commercial_use, c.license_type, \
    c.view_count, c.like_count, c.download_count, c.share_count, c.parent_character_id, \
    c.version_number, c.variant_type, c.created_at, c.updated_at, c.published_at, c.rating_count, \
    c.rating_average::float8 AS rating_average, c.popularity";

impl Character {
    /// Replaces stored image keys with time-limited links (see
    /// [`crate::ports::storage::image_link`]): responses never carry bucket paths.
    pub async fn present(&mut self, storage: Option<&dyn crate::ports::storage::ObjectStore>) {
        use crate::ports::storage::{image_link, image_links};
        self.primary_image_url = image_link(storage, self.primary_image_url.as_deref()).await;
        self.thumbnail_url = image_link(storage, self.thumbnail_url.as_deref()).await;
        if let Some(additional) = &self.additional_images {
            self.additional_images = Some(image_links(storage, additional).await);
        }
    }

    pub fn from_row(row: &Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            user_id: row.try_get("user_id")?,
            name: row.try_get("name")?,
            description: row.try_get("description")?,
            prompt: row.try_get("prompt")?,
            negative_prompt: row.try_get("negative_prompt")?,
            style_type: row.try_get("style_type")?,
            art_style: row.try_get("art_style")?,
            mood: row.try_get("mood")?,
            color_palette: row.try_get("color_palette")?,
            model_version: row.try_get("model_version")?,
            generation_seed: row.try_get("generation_seed")?,
            cfg_scale: row.try_get("cfg_scale")?,
            steps: row.try_get("steps")?,
            sampler: row.try_get("sampler")?,
            primary_image_url: row.try_get("primary_image_url")?,
            thumbnail_url: row.try_get("thumbnail_url")?,
            additional_images: row.try_get("additional_images")?,
            image_metadata: row.try_get("image_metadata")?,
            generation_status: row.try_get("generation_status")?,
            processing_started_at: row.try_get("processing_started_at")?,
            processing_completed_at: row.try_get("processing_completed_at")?,
            processing_time_seconds: row.try_get("processing_time_seconds")?,
            error_message: row.try_get("error_message")?,
            retry_count: row.try_get("retry_count")?,
            collection_id: row.try_get("collection_id")?,
            tags: row.try_get("tags")?,
            is_public: row.try_get("is_public")?,
            is_featured: row.try_get("is_featured")?,
            moderation_hidden: row.try_get("moderation_hidden")?,
            allow_commercial_use: row.try_get("allow_commercial_use")?,
            license_type: row.try_get("license_type")?,
            view_count: row.try_get("view_count")?,
            like_count: row.try_get("like_count")?,
            download_count: row.try_get("download_count")?,
            share_count: row.try_get("share_count")?,
            parent_character_id: row.try_get("parent_character_id")?,
            version_number: row.try_get("version_number")?,
            variant_type: row.try_get("variant_type")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            published_at: row.try_get("published_at")?,
            rating_count: row.try_get("rating_count")?,
            rating_average: row.try_get("rating_average")?,
            popularity: row.try_get("popularity")?,
        })
    }
}

/// A gallery entry: the character's fields and who made it (username and
/// display name only).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GalleryItem {
    #[serde(flatten)]
    pub character: Character,
    pub owner: Owner,
}

/// The maker of a gallery character, as anyone may see them.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Owner {
    pub username: Option<String>,
    pub display_name: Option<String>,
}
