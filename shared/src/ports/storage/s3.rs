//! The S3 adapter: a private bucket (objects get no ACL; the bucket policy
//! blocks public access), content types set on upload, presigned GET URLs
//! for downloads.

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use futures::FutureExt;
use futures::future::BoxFuture;

use super::{ObjectStore, PresignedUrl, StorageError, validate_key};

pub struct S3ObjectStore {
    client: Client,
    bucket: String,
}

impl S3ObjectStore {
    /// A store on `bucket` with a client built from the shared SDK
    /// configuration. With a custom endpoint (`AWS_ENDPOINT_URL`: moto,
    /// LocalStack, MinIO) requests use path-style addressing, which those
    /// servers need and `localhost` cannot resolve otherwise.
    pub fn new(sdk_config: &aws_config::SdkConfig, bucket: impl Into<String>) -> Self {
        let s3_config = aws_sdk_s3::config::Builder::from(sdk_config)
            .force_path_style(sdk_config.endpoint_url().is_some())
            .build();
        Self::with_client(Client::from_conf(s3_config), bucket)
    }

    pub fn with_client(client: Client, bucket: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }
}

fn backend(error: impl std::error::Error) -> StorageError {
    StorageError::Backend(DisplayErrorContext(error).to_string())
}

impl ObjectStore for S3ObjectStore {
    fn put<'a>(
        &'a self,
        key: &'a str,
        bytes: Vec<u8>,
        content_type: &'a str,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        async move {
            validate_key(key)?;
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_type(content_type)
                .body(ByteStream::from(bytes))
                .send()
                .await
                .map_err(backend)?;
            Ok(())
        }
        .boxed()
    }

    fn put_file<'a>(
        &'a self,
        key: &'a str,
        path: &'a std::path::Path,
        content_type: &'a str,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        async move {
            validate_key(key)?;
            // Read from the file as the request is sent, never whole in memory.
            let body = ByteStream::from_path(path)
                .await
                .map_err(|e| StorageError::Backend(e.to_string()))?;
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_type(content_type)
                .body(body)
                .send()
                .await
                .map_err(backend)?;
            Ok(())
        }
        .boxed()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<u8>, StorageError>> {
        async move {
            validate_key(key)?;
            let output = match self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
            {
                Ok(output) => output,
                Err(error) => {
                    return Err(match error.into_service_error() {
                        GetObjectError::NoSuchKey(_) => StorageError::NotFound(key.to_string()),
                        other => backend(other),
                    });
                }
            };
            let body = output.body.collect().await.map_err(backend)?;
            Ok(body.into_bytes().to_vec())
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
            let presigning = PresigningConfig::expires_in(expires_in).map_err(backend)?;
            // The expiry is counted from the signing time, taken just before.
            let signed_at = chrono::Utc::now();
            let request = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .presigned(presigning)
                .await
                .map_err(backend)?;
            let expires_at = signed_at
                + chrono::Duration::from_std(expires_in)
                    .map_err(|e| StorageError::Backend(e.to_string()))?;
            Ok(PresignedUrl {
                url: request.uri().to_string(),
                expires_at,
            })
        }
        .boxed()
    }

    /// Deleting an object that is not there succeeds (S3's own semantics).
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        async move {
            validate_key(key)?;
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map_err(backend)?;
            Ok(())
        }
        .boxed()
    }
}
