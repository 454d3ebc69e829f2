//! The common `main` of the HTTP Lambda functions.

use axum::Router;

use crate::app::AppState;
use crate::config::Config;
use crate::telemetry;

/// Reads the configuration, sets up logging, builds the state once for the
/// life of the execution environment, and serves `router` to the Lambda
/// runtime. Errors here fail the init phase with a message naming the cause.
pub async fn run_http_function(router: fn(AppState) -> Router) -> Result<(), lambda_http::Error> {
    let config = Config::from_env()?;
    telemetry::init(config.log_format);
    let state = AppState::from_config(config)?;
    lambda_http::run(router(state)).await
}

/// The scheduler function's `main`: EventBridge scheduled events whose
/// `detail-type` names a [`crate::scheduler`] task. An unknown task is an
/// error, so a misconfigured schedule shows up in the function's errors.
pub async fn run_scheduler() -> Result<(), lambda_runtime::Error> {
    use aws_lambda_events::event::eventbridge::EventBridgeEvent;
    use lambda_runtime::{LambdaEvent, service_fn};

    let config = Config::from_env()?;
    telemetry::init(config.log_format);
    let state = AppState::from_config(config)?;
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<EventBridgeEvent<serde_json::Value>>| {
            let state = state.clone();
            async move {
                let task = event.payload.detail_type.clone();
                let report =
                    crate::scheduler::run(&task, &state.db, state.queue.as_deref()).await?;
                Ok::<_, lambda_runtime::Error>(report)
            }
        },
    ))
    .await
}
