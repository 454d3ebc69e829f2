//! Router assembly, shared by the Lambda binaries, the local stack and the
//! tests, so that all three serve exactly the same code; and the one place
//! that chooses the adapters behind the state's ports
//! ([`AppState::from_config`]).

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use tower_http::catch_panic::CatchPanicLayer;

use crate::kernel::config::Config;
use crate::kernel::error::ApiError;
use crate::ports::db::{self, DbSetupError};
use crate::ports::queue::JobQueue;
use crate::ports::queue::sqs::SqsJobQueue;
use crate::ports::storage::ObjectStore;
use crate::ports::storage::s3::S3ObjectStore;
use crate::web::auth::Authenticator;
use crate::web::http;
use crate::web::state::{AppState, MAX_BODY_BYTES};

impl AppState {
    /// Builds the state; opens no connection (the pool connects lazily).
    ///
    /// The AWS adapters are built here, once per cold start, and only when
    /// configured: `STORAGE_BUCKET` gives the S3 store, `JOB_QUEUE_URL` the
    /// SQS queue, both sharing one SDK configuration. A function with
    /// neither never loads the SDK's configuration at all.
    pub async fn from_config(config: Config) -> Result<Self, DbSetupError> {
        Self::from_config_with_sdk(config, None).await
    }

    /// [`AppState::from_config`] reusing an SDK configuration already loaded
    /// (for the secrets), so a cold start builds one HTTPS client, not two.
    pub async fn from_config_with_sdk(
        config: Config,
        sdk_config: Option<aws_config::SdkConfig>,
    ) -> Result<Self, DbSetupError> {
        let mut storage: Option<Arc<dyn ObjectStore>> = None;
        let mut queue: Option<Arc<dyn JobQueue>> = None;
        if config.storage.bucket.is_some() || config.queue.job_queue_url.is_some() {
            let sdk_config = match sdk_config {
                Some(loaded) => loaded,
                None => crate::ports::aws::load_sdk_config().await,
            };
            if let Some(bucket) = &config.storage.bucket {
                storage = Some(Arc::new(S3ObjectStore::new(&sdk_config, bucket)));
            }
            if let Some(url) = &config.queue.job_queue_url {
                queue = Some(Arc::new(SqsJobQueue::new(&sdk_config, url)));
            }
        }
        Ok(Self::new(
            db::create_pool(&config.database)?,
            Arc::new(Authenticator::new(&config.auth)),
            Arc::new(config),
            storage,
            queue,
        ))
    }
}

/// Adds what every function's router needs around its routes: the OpenAPI
/// document (`GET /api/v1/openapi.json`), problem+json fallbacks, a body limit,
/// request ids with a span per request, and a panic guard that turns a bug into
/// a logged 500 instead of a dropped connection.
///
/// Call it once per served router, on all of its routes merged: the document's
/// route is added here, and axum panics when two merged routers define it.
pub fn finish(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .route(
            crate::runtime::openapi::PATH,
            get(crate::runtime::openapi::serve),
        )
        .fallback(http::not_found)
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(CatchPanicLayer::custom(
            |_panic: Box<dyn std::any::Any + Send>| {
                axum::response::IntoResponse::into_response(ApiError::internal("handler panicked"))
            },
        ))
        .layer(axum::middleware::from_fn(http::request_id))
        .with_state(state)
}

/// The auth function's routes: sign-in, the caller's account, profile and
/// activity log, public profiles, GDPR export and erasure; user admin.
pub fn auth_routes() -> Router<AppState> {
    crate::users::routes::router()
        .merge(crate::users::activity_log::router())
        .merge(crate::gdpr::routes::router())
        .merge(crate::moderation::users_routes())
}

/// The auth function's finished router.
pub fn auth_router(state: AppState) -> Router {
    finish(auth_routes(), state)
}

/// The characters function's routes: characters, their images and variants,
/// the gallery, collections, likes, ratings, downloads and reports; the
/// report queue and moderation.
pub fn characters_routes() -> Router<AppState> {
    crate::characters::routes::router()
        .merge(crate::collections::routes::router())
        .merge(crate::social::routes::router())
        .merge(crate::moderation::characters_routes())
}

/// The characters function's finished router.
pub fn characters_router(state: AppState) -> Router {
    finish(characters_routes(), state)
}

/// The credits function's routes: balance, history, packages, pricing,
/// purchases and the Stripe webhook, gifts, the daily bonus.
pub fn credits_routes() -> Router<AppState> {
    crate::credits::routes::router()
}

/// The credits function's finished router.
pub fn credits_router(state: AppState) -> Router {
    finish(credits_routes(), state)
}

/// The jobs function's routes: start, list, read and cancel generation jobs.
pub fn jobs_routes() -> Router<AppState> {
    crate::jobs::routes::router().merge(crate::characters::generate::router())
}

/// The jobs function's finished router.
pub fn jobs_router(state: AppState) -> Router {
    finish(jobs_routes(), state)
}
