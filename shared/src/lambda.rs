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
