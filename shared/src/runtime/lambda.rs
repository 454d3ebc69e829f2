//! The common `main` of the Lambda functions.

use axum::Router;

use crate::web::state::AppState;
use tracing::Instrument;

use crate::kernel::config::Config;
use crate::kernel::telemetry::{self, Invocation};

/// The configuration of a Lambda function: the environment, plus the secrets
/// it names by ARN fetched from Secrets Manager (see [`crate::ports::secrets`]),
/// with the SDK configuration loaded for them, if any, for reuse.
pub async fn load_config() -> Result<(Config, Option<aws_config::SdkConfig>), lambda_runtime::Error>
{
    let env = |name: &str| std::env::var(name).ok();
    if !crate::ports::secrets::any_named(&env) {
        return Ok((Config::from_env()?, None));
    }
    let sdk_config = crate::ports::aws::load_sdk_config().await;
    let source = crate::ports::secrets::SecretsManager::new(&sdk_config);
    let settings = crate::ports::secrets::resolve(env, &source).await?;
    let config = Config::from_lookup(settings.overlay(env))?;
    Ok((config, Some(sdk_config)))
}

/// [`load_config`], logging set up, and the state built once for the life of
/// the execution environment.
async fn init() -> Result<AppState, lambda_runtime::Error> {
    let (config, sdk_config) = load_config().await?;
    telemetry::init(config.log_format);
    crate::kernel::metrics::init(&config.metrics);
    Ok(AppState::from_config_with_sdk(config, sdk_config).await?)
}

/// Reads the configuration, sets up logging, builds the state once for the
/// life of the execution environment, and serves `router` to the Lambda
/// runtime. Errors here fail the init phase with a message naming the cause.
pub async fn run_http_function(router: fn(AppState) -> Router) -> Result<(), lambda_http::Error> {
    let state = init().await?;
    lambda_http::run(router(state)).await
}

/// The scheduler function's `main`: EventBridge scheduled events whose
/// `detail-type` names a [`crate::runtime::scheduler`] task. An unknown task is an
/// error, so a misconfigured schedule shows up in the function's errors.
pub async fn run_scheduler() -> Result<(), lambda_runtime::Error> {
    use aws_lambda_events::event::eventbridge::EventBridgeEvent;
    use lambda_runtime::{LambdaEvent, service_fn};

    let state = init().await?;
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<EventBridgeEvent<serde_json::Value>>| {
            let state = state.clone();
            async move {
                let task = event.payload.detail_type.clone();
                let invocation = Invocation::from_context(&event.context);
                let span = tracing::info_span!(
                    "task",
                    lambda_request_id = invocation.request_id(),
                    xray_trace_id = invocation.trace_id(),
                    task = %task,
                );
                let report = invocation
                    .scope(crate::runtime::scheduler::run(
                        &task,
                        &state.db,
                        state.queue.as_deref(),
                        &state.config,
                    ))
                    .instrument(span)
                    .await?;
                Ok::<_, lambda_runtime::Error>(report)
            }
        },
    ))
    .await
}

/// Why the worker function cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerInitError {
    #[error(
        "environment variable STORAGE_BUCKET is required by the worker: it stores the generated images in S3"
    )]
    NoStorage,
    #[error("cannot build the image generator chain: {0}")]
    Generator(#[from] crate::ports::generator::GeneratorError),
}

/// Builds the worker from the state: the store (`STORAGE_BUCKET`) and the
/// generator chain are required, the timeouts come from `WORKER_*`.
pub fn build_worker(state: &AppState) -> Result<crate::jobs::worker::Worker, WorkerInitError> {
    let storage = state.storage.clone().ok_or(WorkerInitError::NoStorage)?;
    let generator = crate::ports::generator::build_chain(&state.config.generator)?;
    Ok(crate::jobs::worker::Worker {
        db: state.db.clone(),
        storage,
        generator: std::sync::Arc::new(generator),
        queue: state.queue.clone(),
        settings: state.config.worker,
    })
}

/// The worker function's `main`: SQS batches of generation jobs (the event
/// source mapping has `ReportBatchItemFailures`), answered with the messages
/// to retry. A missing `STORAGE_BUCKET` fails the init phase.
pub async fn run_worker() -> Result<(), lambda_runtime::Error> {
    use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
    use lambda_runtime::{LambdaEvent, service_fn};

    let state = init().await?;
    // As a message, not the enum: `main` prints the error's Debug form.
    let worker = build_worker(&state).map_err(|e| {
        tracing::error!(error = %e, "the worker cannot start");
        lambda_runtime::Error::from(e.to_string())
    })?;
    lambda_runtime::run(service_fn(|event: LambdaEvent<SqsEvent>| {
        let worker = worker.clone();
        async move {
            // The batch and message spans name the invocation (see `handle_batch`).
            let invocation = Invocation::from_context(&event.context);
            let response = invocation.scope(worker.handle_batch(event.payload)).await;
            Ok::<SqsBatchResponse, lambda_runtime::Error>(response)
        }
    }))
    .await
}
