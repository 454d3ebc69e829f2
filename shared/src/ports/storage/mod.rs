//! Object storage port: images live in a private store and clients only ever
//! get time-limited URLs to them, never raw bucket paths.
//!
//! Adapters: [`s3::S3ObjectStore`] in Lambda when `STORAGE_BUCKET` is set
//! (a Lambda without it has no store, and routes that need one answer 503),
//! and [`local::LocalObjectStore`] (files under a folder, served by the local
//! stack with HMAC-signed, expiring URLs).

pub mod local;
pub mod s3;

use std::time::Duration;

use futures::future::BoxFuture;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid object key `{0}`")]
    InvalidKey(String),
    #[error("no object at `{0}`")]
    NotFound(String),
    #[error("storage backend: {0}")]
    Backend(String),
}

/// A presigned URL and when it stops working.
#[derive(Debug, Clone)]
pub struct PresignedUrl {
    pub url: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

pub trait ObjectStore: Send + Sync {
    fn put<'a>(
        &'a self,
        key: &'a str,
        bytes: Vec<u8>,
        content_type: &'a str,
    ) -> BoxFuture<'a, Result<(), StorageError>>;
    /// Stores the file at `path` under `key`, streaming it: memory stays
    /// bounded whatever the file's size (large GDPR exports).
    fn put_file<'a>(
        &'a self,
        key: &'a str,
        path: &'a std::path::Path,
        content_type: &'a str,
    ) -> BoxFuture<'a, Result<(), StorageError>>;
    /// The object's bytes (`NotFound` when there is none).
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<u8>, StorageError>>;
    fn presign_get<'a>(
        &'a self,
        key: &'a str,
        expires_in: Duration,
    ) -> BoxFuture<'a, Result<PresignedUrl, StorageError>>;
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StorageError>>;
}

/// Object keys are ours (`users/{user}/characters/{character}/...`): plain
/// path segments of `[A-Za-z0-9._-]`, never `..`, never absolute.
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    let ok = !key.is_empty()
        && key.len() <= 512
        && key.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(StorageError::InvalidKey(key.to_string()))
    }
}

/// The content type for a key, by its extension.
pub fn content_type_of(key: &str) -> &'static str {
    match key
        .rsplit('.')
        .next()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// How long the image links in API responses work.
pub const IMAGE_LINK_TTL: Duration = Duration::from_secs(3600);

/// What a client sees for a stored image: a time-limited link, never the
/// bucket key. An absolute http(s) URL (an image hosted elsewhere) passes
/// through; without a configured store there is nothing to link to.
pub async fn image_link(storage: Option<&dyn ObjectStore>, stored: Option<&str>) -> Option<String> {
    let stored = stored?;
    if stored.starts_with("https://") || stored.starts_with("http://") {
        return Some(stored.to_string());
    }
    match storage?.presign_get(stored, IMAGE_LINK_TTL).await {
        Ok(link) => Some(link.url),
        Err(e) => {
            tracing::warn!(error = %e, "no link for a stored image");
            None
        }
    }
}

/// [`image_link`] for each string of a JSON array of keys.
pub async fn image_links(
    storage: Option<&dyn ObjectStore>,
    stored: &serde_json::Value,
) -> serde_json::Value {
    let Some(keys) = stored.as_array() else {
        return stored.clone();
    };
    let mut links = Vec::with_capacity(keys.len());
    for key in keys {
        if let Some(link) = image_link(storage, key.as_str()).await {
            links.push(serde_json::Value::String(link));
        }
    }
    serde_json::Value::Array(links)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_plain_relative_paths() {
        assert!(validate_key("users/u1/characters/c1/job/image.png").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "a//b",
            "a/./b",
            "a b",
            "a\\b",
            "ü.png",
        ] {
            assert!(validate_key(bad).is_err(), "{bad}");
        }
    }
}
