//! Files under a local folder, with URLs signed by HMAC-SHA256 over the key
//! and expiry, served by the local stack at `/files/{key}`.

use std::path::PathBuf;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{ObjectStore, PresignedUrl, StorageError, validate_key};

type HmacSha256 = Hmac<Sha256>;

pub struct LocalObjectStore {
    root: PathBuf,
    /// Where the local stack serves `/files/` (`http://127.0.0.1:3000`).
    base_url: String,
    secret: Vec<u8>,
}

impl LocalObjectStore {
    pub fn new(root: PathBuf, base_url: String, secret: Vec<u8>) -> Self {
        Self {
            root,
            base_url,
            secret,
        }
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StorageError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    fn signature(&self, key: &str, expires: i64) -> Result<HmacSha256, StorageError> {
        let mut mac = HmacSha256::new_from_slice(&self.secret)
            .map_err(|e| StorageError::Backend(e.to_string()))?;
        mac.update(format!("{key}\n{expires}").as_bytes());
        Ok(mac)
    }

    /// Checks a presigned URL's expiry and signature (constant time), then
    /// reads the object.
    pub async fn read_signed(
        &self,
        key: &str,
        expires: i64,
        signature_hex: &str,
    ) -> Result<Vec<u8>, StorageError> {
        let path = self.path_of(key)?;
        let signature =
            hex::decode(signature_hex).map_err(|_| StorageError::NotFound(key.to_string()))?;
        self.signature(key, expires)?
            .verify_slice(&signature)
            .map_err(|_| StorageError::NotFound(key.to_string()))?;
        if chrono::Utc::now().timestamp() > expires {
            return Err(StorageError::NotFound(key.to_string()));
        }
        tokio::fs::read(&path)
            .await
            .map_err(|_| StorageError::NotFound(key.to_string()))
    }
}

impl ObjectStore for LocalObjectStore {
    fn put<'a>(
        &'a self,
        key: &'a str,
        bytes: Vec<u8>,
        _content_type: &'a str,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        async move {
            let path = self.path_of(key)?;
            if let Some(dir) = path.parent() {
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|e| StorageError::Backend(e.to_string()))?;
            }
            tokio::fs::write(&path, bytes)
                .await
                .map_err(|e| StorageError::Backend(e.to_string()))
        }
        .boxed()
    }

    fn put_file<'a>(
        &'a self,
        key: &'a str,
        source: &'a std::path::Path,
        _content_type: &'a str,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        async move {
            let path = self.path_of(key)?;
            if let Some(dir) = path.parent() {
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|e| StorageError::Backend(e.to_string()))?;
            }
            tokio::fs::copy(source, &path)
                .await
                .map(|_| ())
                .map_err(|e| StorageError::Backend(e.to_string()))
        }
        .boxed()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<u8>, StorageError>> {
        async move {
            let path = self.path_of(key)?;
            match tokio::fs::read(&path).await {
                Ok(bytes) => Ok(bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(StorageError::NotFound(key.to_string()))
                }
                Err(e) => Err(StorageError::Backend(e.to_string())),
            }
        }
        .boxed()
    }

    fn presign_get<'a>(
        &'a self,
        key: &'a str,
        expires_in: Duration,
    ) -> BoxFuture<'a, Result<PresignedUrl, StorageError>> {
        async move {
            validate_key(key)?;
            let expires_at =
                chrono::Utc::now() + chrono::Duration::seconds(expires_in.as_secs() as i64);
            let expires = expires_at.timestamp();
            let signature = hex::encode(self.signature(key, expires)?.finalize().into_bytes());
            Ok(PresignedUrl {
                url: format!(
                    "{}/files/{key}?expires={expires}&signature={signature}",
                    self.base_url
                ),
                expires_at,
            })
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        async move {
            let path = self.path_of(key)?;
            match tokio::fs::remove_file(&path).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(StorageError::Backend(e.to_string())),
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (LocalObjectStore, PathBuf) {
        let root = std::env::temp_dir().join(format!("charplat-store-{}", uuid::Uuid::new_v4()));
        (
            LocalObjectStore::new(
                root.clone(),
                "http://127.0.0.1:1".into(),
                b"secret".to_vec(),
            ),
            root,
        )
    }

    fn query(url: &str) -> (i64, String) {
        let parsed = url::Url::parse(url).unwrap();
        let get = |name: &str| {
            parsed
                .query_pairs()
                .find(|(k, _)| k == name)
                .unwrap()
                .1
                .to_string()
        };
        (get("expires").parse().unwrap(), get("signature"))
    }

    #[tokio::test]
    async fn signed_urls_work_until_they_expire_and_cannot_be_forged() {
        let (store, root) = store();
        store
            .put("users/u/a.png", b"png".to_vec(), "image/png")
            .await
            .unwrap();
        let signed = store
            .presign_get("users/u/a.png", Duration::from_secs(60))
            .await
            .unwrap();
        let (expires, signature) = query(&signed.url);
        assert_eq!(
            store
                .read_signed("users/u/a.png", expires, &signature)
                .await
                .unwrap(),
            b"png"
        );
        assert!(
            store
                .read_signed("users/u/a.png", expires + 1, &signature)
                .await
                .is_err(),
            "extended expiry"
        );
        assert!(
            store
                .read_signed("users/u/b.png", expires, &signature)
                .await
                .is_err(),
            "other key"
        );
        assert!(
            store
                .read_signed("users/u/a.png", expires, "00")
                .await
                .is_err(),
            "forged"
        );
        let stale = store
            .presign_get("users/u/a.png", Duration::from_secs(0))
            .await
            .unwrap();
        let (expires, signature) = query(&stale.url);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(
            store
                .read_signed("users/u/a.png", expires, &signature)
                .await
                .is_err(),
            "expired"
        );
        store.delete("users/u/a.png").await.unwrap();
        store.delete("users/u/a.png").await.unwrap();
        let _ = std::fs::remove_dir_all(root);
    }
}
