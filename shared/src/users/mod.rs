//! Users and their profiles: sign-in, the caller's own account, public profiles.
//!
//! It may use [`crate::activity`] (and the layers below the domains); every
//! other domain may use it for the caller's account. The caller's own activity
//! log route ([`activity_log`]) and the erasure receipts that sign-in checks
//! ([`receipts`]) live here for that reason.

pub mod account;
pub mod activity_log;
pub mod fields;
pub mod follows;
pub mod receipts;
pub mod referrals;
pub mod repo;
pub mod routes;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::Row;
use utoipa::ToSchema;

crate::text_enum! {
    /// `users.account_status`: `active` accounts may do everything, `suspended`
    /// ones sign in and read, `banned` and `deleted` (erased) ones nothing.
    pub enum AccountStatus {
        /// Everything.
        Active => "active",
        /// Sign in and read; not act on what others see.
        Suspended => "suspended",
        /// Nothing: every authenticated route refuses the token.
        Banned => "banned",
        /// Erased (GDPR): nothing, and the row keeps no personal data.
        Deleted => "deleted",
    }
}

crate::text_enum! {
    /// `users.content_filter_level`: which prompt rules a user's own texts are
    /// checked against (see `characters::content_filter`); `moderate` when unset.
    pub enum ContentFilterLevel {
        Strict => "strict",
        Moderate => "moderate",
        Relaxed => "relaxed",
    }
}

crate::text_enum! {
    /// `users.profile_visibility`: who sees the public profile: anyone, the owner's
    /// friends (mutual follows, [`crate::users::follows`]), or the owner alone.
    pub enum ProfileVisibility {
        Public => "public",
        Friends => "friends",
        Private => "private",
    }
}

/// A `users` row as its owner sees it. Field names are the column names.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct User {
    pub id: String,
    pub email: String,
    pub auth0_id: Option<String>,
    pub username: Option<String>,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
    /// `FREE`, `PREMIUM`, `PRO` or `ENTERPRISE`.
    pub subscription_tier: Option<crate::kernel::tier::Tier>,
    pub subscription_start_date: Option<DateTime<Utc>>,
    pub subscription_end_date: Option<DateTime<Utc>>,
    pub daily_quota: i32,
    pub daily_used: i32,
    pub last_reset_date: DateTime<Utc>,
    /// `en`, `zh`, `ja` or `ko`.
    pub preferred_language: Option<String>,
    /// An IANA time zone name.
    pub timezone: Option<String>,
    /// An object of booleans per channel: `{"email": true, "push": false}`.
    pub notification_settings: Option<Value>,
    /// `public`, `friends` or `private`.
    pub profile_visibility: Option<ProfileVisibility>,
    pub allow_gallery_showcase: Option<bool>,
    /// `strict`, `moderate` or `relaxed`.
    pub content_filter_level: Option<ContentFilterLevel>,
    pub total_characters_created: i32,
    pub total_images_generated: i32,
    /// `active`, `suspended`, `banned` or `deleted`.
    pub account_status: Option<AccountStatus>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
    pub email_verified_at: Option<DateTime<Utc>>,
}

/// The column list matching [`User::from_row`].
pub const USER_COLUMNS: &str = "id, email, auth0_id, username, display_name, avatar_url, \
    subscription_tier, subscription_start_date, subscription_end_date, daily_quota, daily_used, \
    last_reset_date, preferred_language, timezone, notification_settings, profile_visibility, \
    allow_gallery_showcase, content_filter_level, total_characters_created, total_images_generated, \
    account_status, created_at, updated_at, last_login_at, email_verified_at";

impl User {
    pub fn from_row(row: &Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            email: row.try_get("email")?,
            auth0_id: row.try_get("auth0_id")?,
            username: row.try_get("username")?,
            display_name: row.try_get("display_name")?,
            avatar_url: row.try_get("avatar_url")?,
            subscription_tier: row.try_get("subscription_tier")?,
            subscription_start_date: row.try_get("subscription_start_date")?,
            subscription_end_date: row.try_get("subscription_end_date")?,
            daily_quota: row.try_get("daily_quota")?,
            daily_used: row.try_get("daily_used")?,
            last_reset_date: row.try_get("last_reset_date")?,
            preferred_language: row.try_get("preferred_language")?,
            timezone: row.try_get("timezone")?,
            notification_settings: row.try_get("notification_settings")?,
            profile_visibility: row.try_get("profile_visibility")?,
            allow_gallery_showcase: row.try_get("allow_gallery_showcase")?,
            content_filter_level: row.try_get("content_filter_level")?,
            total_characters_created: row.try_get("total_characters_created")?,
            total_images_generated: row.try_get("total_images_generated")?,
            account_status: row.try_get("account_status")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            last_login_at: row.try_get("last_login_at")?,
            email_verified_at: row.try_get("email_verified_at")?,
        })
    }

    /// Banned and erased accounts may not act at all.
    pub fn is_locked_out(&self) -> bool {
        matches!(
            self.account_status,
            Some(AccountStatus::Banned | AccountStatus::Deleted)
        )
    }

    /// A suspended account may sign in and read, not act on what others see
    /// (publish, like, rate, report, generate): 403 naming `what` it tried.
    pub fn require_active(&self, what: &str) -> Result<(), crate::kernel::error::ApiError> {
        if self.account_status == Some(AccountStatus::Active) {
            return Ok(());
        }
        Err(crate::kernel::error::ApiError::Forbidden(format!(
            "a suspended account cannot {what}"
        )))
    }
}

/// A `user_profiles` row as its owner sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Profile {
    pub id: String,
    pub user_id: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub bio: Option<String>,
    pub website_url: Option<String>,
    /// Network name to handle or URL: `{"twitter": "ann_lee"}`.
    pub social_links: Option<Value>,
    pub profession: Option<String>,
    pub company: Option<String>,
    pub industry: Option<String>,
    /// `beginner`, `intermediate`, `advanced` or `professional`.
    pub experience_level: Option<String>,
    pub primary_use_case: Option<Vec<String>>,
    pub favorite_art_styles: Option<Vec<String>>,
    /// Awarded by the platform: `[{"type": "early_adopter", "earned_at": "2024-01-01"}]`.
    pub badges: Option<Value>,
    pub total_likes_received: Option<i32>,
    pub total_downloads: Option<i32>,
    pub featured_character_count: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub const PROFILE_COLUMNS: &str = "id, user_id, first_name, last_name, bio, website_url, social_links, \
    profession, company, industry, experience_level, primary_use_case, favorite_art_styles, badges, \
    total_likes_received, total_downloads, featured_character_count, created_at, updated_at";

impl Profile {
    pub fn from_row(row: &Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            user_id: row.try_get("user_id")?,
            first_name: row.try_get("first_name")?,
            last_name: row.try_get("last_name")?,
            bio: row.try_get("bio")?,
            website_url: row.try_get("website_url")?,
            social_links: row.try_get("social_links")?,
            profession: row.try_get("profession")?,
            company: row.try_get("company")?,
            industry: row.try_get("industry")?,
            experience_level: row.try_get("experience_level")?,
            primary_use_case: row.try_get("primary_use_case")?,
            favorite_art_styles: row.try_get("favorite_art_styles")?,
            badges: row.try_get("badges")?,
            total_likes_received: row.try_get("total_likes_received")?,
            total_downloads: row.try_get("total_downloads")?,
            featured_character_count: row.try_get("featured_character_count")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

/// What anyone may see of a user whose profile is visible to them. Never the
/// email, the identity-provider id, legal names or account internals.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PublicUser {
    pub id: String,
    pub username: String,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
    pub total_characters_created: i32,
    pub created_at: DateTime<Utc>,
    pub profile: PublicProfile,
}

#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct PublicProfile {
    pub bio: Option<String>,
    pub website_url: Option<String>,
    /// Network name to handle or URL: `{"twitter": "ann_lee"}`.
    pub social_links: Option<Value>,
    pub profession: Option<String>,
    pub company: Option<String>,
    pub industry: Option<String>,
    /// `beginner`, `intermediate`, `advanced` or `professional`.
    pub experience_level: Option<String>,
    pub primary_use_case: Option<Vec<String>>,
    pub favorite_art_styles: Option<Vec<String>>,
    /// Awarded by the platform: `[{"type": "early_adopter", "earned_at": "2024-01-01"}]`.
    pub badges: Option<Value>,
    pub total_likes_received: Option<i32>,
    pub total_downloads: Option<i32>,
    pub featured_character_count: Option<i32>,
}

impl PublicUser {
    pub fn new(user: User, profile: Option<Profile>) -> Self {
        let profile = profile
            .map(|p| PublicProfile {
                bio: p.bio,
                website_url: p.website_url,
                social_links: p.social_links,
                profession: p.profession,
                company: p.company,
                industry: p.industry,
                experience_level: p.experience_level,
                primary_use_case: p.primary_use_case,
                favorite_art_styles: p.favorite_art_styles,
                badges: p.badges,
                total_likes_received: p.total_likes_received,
                total_downloads: p.total_downloads,
                featured_character_count: p.featured_character_count,
            })
            .unwrap_or_default();
        Self {
            id: user.id,
            username: user.username.unwrap_or_default(),
            display_name: user.display_name,
            avatar_url: user.avatar_url,
            total_characters_created: user.total_characters_created,
            created_at: user.created_at,
            profile,
        }
    }
}
