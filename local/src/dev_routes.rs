//! The local identity provider: `/.well-known/jwks.json` and `POST /dev/token`.
//! These exist only in the local stack; no Lambda function mounts them.

use std::sync::Arc;
use std::time::Duration;

use axum::http::header;

use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use shared::kernel::error::ApiError;
use shared::ports::storage::content_type_of;
use shared::ports::storage::local::LocalObjectStore;
use shared::users::fields;
use shared::web::auth::dev_issuer::DevIssuer;
use shared::web::http::{ApiJson, ApiPath, ApiQuery};
use shared::web::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    email: String,
    #[serde(default)]
    permissions: Vec<String>,
    /// Lifetime in seconds (default one hour, at most a day).
    #[serde(default)]
    expires_in: Option<u64>,
}

pub fn routes(issuer: DevIssuer) -> Router<AppState> {
    let jwks = issuer.jwks();
    Router::new()
        .route("/.well-known/jwks.json", get(move || async move { Json(jwks) }))
        .route(
            "/dev/token",
            post(move |ApiJson(request): ApiJson<TokenRequest>| async move { mint(&issuer, request) }),
        )
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct SignedQuery {
    expires: i64,
    signature: String,
}

/// Serves stored objects to holders of a valid, unexpired signed URL (what S3
/// presigned URLs do in production). Anything else is a plain 404.
pub fn files(store: Arc<LocalObjectStore>) -> Router<AppState> {
    Router::new().route(
        "/files/{*key}",
        get(move |ApiPath(key): ApiPath<String>, ApiQuery(query): ApiQuery<SignedQuery>| async move {
            match store.read_signed(&key, query.expires, &query.signature).await {
                Ok(bytes) => Ok(([(header::CONTENT_TYPE, content_type_of(&key))], bytes)),
                Err(_) => Err(ApiError::NotFound("no such file, or the link has expired".into())),
            }
        }),
    )
}

fn mint(issuer: &DevIssuer, request: TokenRequest) -> Result<Json<Value>, ApiError> {
    let email =
        fields::email("email", &request.email).map_err(|e| ApiError::from_field_errors(vec![e]))?;
    let expires_in = request.expires_in.unwrap_or(3600);
    if !(1..=86_400).contains(&expires_in) {
        return Err(ApiError::validation(
            "expires_in",
            "must be between 1 and 86400 seconds",
        ));
    }
    if let Some(bad) = request
        .permissions
        .iter()
        .find(|p| p.is_empty() || p.len() > 64)
    {
        return Err(ApiError::validation(
            "permissions",
            format!("`{bad}` is not a permission name"),
        ));
    }
    let token = issuer
        .mint(
            &email,
            &request.permissions,
            Duration::from_secs(expires_in),
        )
        .map_err(ApiError::internal)?;
    Ok(Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": expires_in,
        "sub": DevIssuer::subject_for(&email),
    })))
}
