//! The AWS SDK's shared configuration, loaded once per cold start and only by
//! functions that use an AWS adapter (`STORAGE_BUCKET`, `JOB_QUEUE_URL`).
//!
//! Region, credentials and endpoint come from the SDK's standard chain:
//! `AWS_REGION`, the execution role's `AWS_ACCESS_KEY_ID`/`..._SECRET_ACCESS_KEY`/
//! `AWS_SESSION_TOKEN`, and `AWS_ENDPOINT_URL` (tests point it at moto).
//! HTTPS is the SDK's hyper client on rustls with the ring provider, as the
//! rest of the workspace uses: no OpenSSL, no aws-lc C build.

use aws_config::{BehaviorVersion, ConfigLoader, SdkConfig};
use aws_smithy_http_client::tls;

/// The SDK's configuration loader with the latest behaviour version and our
/// HTTPS client; tests add their own endpoint, region and credentials.
pub fn config_loader() -> ConfigLoader {
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    aws_config::defaults(BehaviorVersion::latest()).http_client(http_client)
}

/// Loads the SDK configuration from the standard chain. Credentials resolve
/// lazily on the first request and are cached by the SDK.
pub async fn load_sdk_config() -> SdkConfig {
    config_loader().load().await
}
