//! One error type for every HTTP handler, rendered as RFC 9457 problem+json.
//!
//! The `type` of each problem is a stable relative URI (`/problems/<slug>`) that
//! clients can switch on; `title` is fixed per type, `detail` is human prose for
//! this occurrence. Internal errors are logged with their cause and answered with
//! a generic 500 that reveals nothing.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// The `type` of the 502 problem a payment provider failure renders
/// (`crate::credits::purchases`), listed in the `Problem` schema.
pub const PAYMENT_PROVIDER_PROBLEM: &str = "/problems/payment-provider-error";

/// One invalid input field, reported inside a 422 problem.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, ToSchema)]
pub struct FieldError {
    /// JSON pointer-ish path of the offending field (`username`, `social_links.twitter`,
    /// `tags[0]`); `body` or `query` when the problem is the shape of the whole body or
    /// query string.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request could not be read at all (malformed JSON, bad header).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The body was readable but one or more fields are invalid.
    #[error("validation failed: {detail}")]
    Validation {
        detail: String,
        errors: Vec<FieldError>,
    },
    /// Missing or invalid credentials.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Authenticated, but not allowed.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Gifts and purchases are refused while a payment dispute of the account is open.
    #[error("account frozen: {0}")]
    AccountFrozen(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// Not enough credits: the problem carries what was needed and what is available.
    #[error("payment required: {detail}")]
    PaymentRequired {
        detail: String,
        needed: i64,
        available: i64,
    },
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request conflicts with the current state (a taken username).
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("too many requests: {detail}")]
    TooManyRequests { detail: String, retry_after: u64 },
    /// A dependency is briefly unavailable (pool exhausted, serialization failure).
    #[error("service unavailable: {detail}")]
    ServiceUnavailable { detail: String, retry_after: u64 },
    /// Anything else: logged in full, answered as a bare 500.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        let error = FieldError::new(field, message);
        Self::Validation {
            detail: format!("{}: {}", error.field, error.message),
            errors: vec![error],
        }
    }

    pub fn from_field_errors(errors: Vec<FieldError>) -> Self {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        Self::Validation { detail, errors }
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self::Internal(cause.to_string())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::AccountFrozen(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::PaymentRequired { .. } => StatusCode::PAYMENT_REQUIRED,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::ServiceUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable problem type slug and title.
    pub fn kind(&self) -> (&'static str, &'static str) {
        match self {
            Self::BadRequest(_) => ("bad-request", "Bad request"),
            Self::Validation { .. } => ("validation-error", "Invalid input"),
            Self::Unauthorized(_) => ("unauthorized", "Authentication required"),
            Self::Forbidden(_) => ("forbidden", "Forbidden"),
            Self::AccountFrozen(_) => ("account-frozen", "Account frozen"),
            Self::NotFound(_) => ("not-found", "Not found"),
            Self::PaymentRequired { .. } => ("insufficient-credits", "Not enough credits"),
            Self::MethodNotAllowed => ("method-not-allowed", "Method not allowed"),
            Self::Conflict(_) => ("conflict", "Conflict"),
            Self::UnsupportedMediaType(_) => ("unsupported-media-type", "Unsupported media type"),
            Self::PayloadTooLarge => ("payload-too-large", "Payload too large"),
            Self::TooManyRequests { .. } => ("rate-limited", "Too many requests"),
            Self::ServiceUnavailable { .. } => ("service-unavailable", "Service unavailable"),
            Self::Internal(_) => ("internal-error", "Internal server error"),
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::BadRequest(d)
            | Self::Unauthorized(d)
            | Self::Forbidden(d)
            | Self::AccountFrozen(d)
            | Self::NotFound(d)
            | Self::Conflict(d)
            | Self::UnsupportedMediaType(d) => d.clone(),
            Self::Validation { detail, .. }
            | Self::PaymentRequired { detail, .. }
            | Self::TooManyRequests { detail, .. }
            | Self::ServiceUnavailable { detail, .. } => detail.clone(),
            Self::MethodNotAllowed => "this route does not accept that method".into(),
            Self::PayloadTooLarge => "the request body is larger than this route accepts".into(),
            Self::Internal(_) => "an unexpected error occurred; it has been logged".into(),
        }
    }
}

pub const PROBLEM_JSON: &str = "application/problem+json";

// Documents what `ApiError::into_response` writes; nothing builds one.
/// An RFC 9457 problem: the body of every error response, sent as
/// `application/problem+json`.
#[derive(ToSchema)]
#[schema(examples(json!({
    "type": "/problems/validation-error",
    "title": "Invalid input",
    "status": 422,
    "detail": "username: must be 3 to 30 characters of letters, digits and underscores",
    "errors": [{"field": "username", "message": "must be 3 to 30 characters of letters, digits and underscores"}]
})))]
#[allow(dead_code)]
pub struct Problem {
    /// A stable relative URI naming the kind of problem, for clients to switch on.
    #[schema(rename = "type", schema_with = problem_types)]
    kind: String,
    /// A short summary, fixed for each `type`.
    title: String,
    /// The HTTP status code of the response.
    #[schema(minimum = 400, maximum = 599)]
    status: u16,
    /// What went wrong this time, in prose.
    detail: String,
    /// Only in a 422 (`/problems/validation-error`): every invalid field.
    #[schema(required = false)]
    errors: Vec<FieldError>,
    /// Only in a 402 (`/problems/insufficient-credits`): the credits the request needs.
    #[schema(required = false)]
    needed: i64,
    /// Only in a 402: the credits available to pay with (allowance left plus unheld balance).
    #[schema(required = false)]
    available: i64,
}

/// The `type` of every problem [`ApiError`] can render, and of the 502 that
/// `POST /api/v1/credits/purchases` renders itself.
fn problem_types() -> utoipa::openapi::Object {
    // One of each variant; `kind` ignores the payloads.
    let kinds = [
        ApiError::BadRequest(String::new()),
        ApiError::validation("", ""),
        ApiError::Unauthorized(String::new()),
        ApiError::Forbidden(String::new()),
        ApiError::AccountFrozen(String::new()),
        ApiError::NotFound(String::new()),
        ApiError::PaymentRequired {
            detail: String::new(),
            needed: 0,
            available: 0,
        },
        ApiError::MethodNotAllowed,
        ApiError::Conflict(String::new()),
        ApiError::UnsupportedMediaType(String::new()),
        ApiError::PayloadTooLarge,
        ApiError::TooManyRequests {
            detail: String::new(),
            retry_after: 0,
        },
        ApiError::ServiceUnavailable {
            detail: String::new(),
            retry_after: 0,
        },
        ApiError::Internal(String::new()),
    ]
    .map(|e| format!("/problems/{}", e.kind().0))
    .into_iter()
    .chain([PAYMENT_PROVIDER_PROBLEM.to_string()]);
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .description(Some(
            "A stable relative URI naming the kind of problem, for clients to switch on.",
        ))
        .enum_values(Some(kinds))
        .build()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let Self::Internal(cause) = &self {
            tracing::error!(error = %cause, "internal error");
        }
        let (slug, title) = self.kind();
        let mut body = Map::new();
        body.insert("type".into(), Value::String(format!("/problems/{slug}")));
        body.insert("title".into(), Value::String(title.into()));
        body.insert("status".into(), Value::from(status.as_u16()));
        body.insert("detail".into(), Value::String(self.detail()));
        if let Self::Validation { errors, .. } = &self {
            body.insert(
                "errors".into(),
                serde_json::to_value(errors).unwrap_or(Value::Null),
            );
        }
        if let Self::PaymentRequired {
            needed, available, ..
        } = &self
        {
            body.insert("needed".into(), Value::from(*needed));
            body.insert("available".into(), Value::from(*available));
        }
        let mut response = (status, Json(Value::Object(body))).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        match &self {
            Self::Unauthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            Self::TooManyRequests { retry_after, .. }
            | Self::ServiceUnavailable { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            _ => {}
        }
        response
    }
}

/// Whether a database error means the database is unreachable or going away
/// (a broken or refused connection, a server shutting down, starting up or
/// crashed): the request may succeed once it is back, so it is a 503 with
/// `Retry-After`, and a worker retries the message rather than failing a job.
pub fn database_unavailable(err: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    if err.is_closed() {
        return true;
    }
    if let Some(code) = err.code() {
        return [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::CONNECTION_EXCEPTION,
            SqlState::CONNECTION_DOES_NOT_EXIST,
            SqlState::CONNECTION_FAILURE,
            SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
            SqlState::SQLSERVER_REJECTED_ESTABLISHMENT_OF_SQLCONNECTION,
            SqlState::TOO_MANY_CONNECTIONS,
        ]
        .contains(code);
    }
    // No SQLSTATE: a transport failure (refused, reset, timed out, TLS) is one;
    // a client-side fault (a parameter that cannot be serialized) is not.
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    // tokio-postgres's own words for the transport kinds without an io cause.
    let text = err.to_string();
    [
        "error connecting to server",
        "timeout waiting for server",
        "connection closed",
        "error communicating with the server",
        "error performing TLS handshake",
    ]
    .iter()
    .any(|kind| text.starts_with(kind))
}

/// Whether a pool error means the database could not be reached, and how:
/// connecting (or checking a recycled connection) failed or timed out, or the
/// pool is closed. `None` for a pool merely busy (every connection in use).
pub fn pool_unavailable(err: &deadpool_postgres::PoolError) -> Option<&'static str> {
    use deadpool_postgres::{PoolError, TimeoutType};
    match err {
        PoolError::Timeout(TimeoutType::Create | TimeoutType::Recycle) => Some("pool_timeout"),
        PoolError::Closed => Some("pool_closed"),
        PoolError::Backend(e) if database_unavailable(e) => Some("connection"),
        _ => None,
    }
}

/// The 503 a database outage answers.
fn database_outage() -> ApiError {
    ApiError::ServiceUnavailable {
        detail: "the database is unavailable for a moment; retry shortly".into(),
        retry_after: 2,
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(err: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        if database_unavailable(&err) {
            tracing::warn!(error = %err, "database unavailable");
            crate::kernel::metrics::database_connection_error("connection");
            return database_outage();
        }
        match err.code() {
            Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE => {
                Self::ServiceUnavailable {
                    detail: "the request collided with a concurrent change; retry it".into(),
                    retry_after: 1,
                }
            }
            Some(code) if *code == SqlState::T_R_DEADLOCK_DETECTED => Self::ServiceUnavailable {
                detail: "the request collided with a concurrent change; retry it".into(),
                retry_after: 1,
            },
            Some(code) if *code == SqlState::UNIQUE_VIOLATION => {
                Self::Conflict("the value conflicts with an existing record".into())
            }
            // Input the validators let through but the database cannot take:
            // still the client's input, so a 422, never a 500.
            Some(code) if *code == SqlState::FOREIGN_KEY_VIOLATION => {
                Self::validation("body", "refers to something that does not exist")
            }
            Some(code)
                if *code == SqlState::UNTRANSLATABLE_CHARACTER
                    || *code == SqlState::CHARACTER_NOT_IN_REPERTOIRE
                    || *code == SqlState::INVALID_TEXT_REPRESENTATION =>
            {
                Self::validation(
                    "body",
                    "contains a character or value the platform cannot store",
                )
            }
            Some(code)
                if *code == SqlState::STRING_DATA_RIGHT_TRUNCATION
                    || *code == SqlState::NUMERIC_VALUE_OUT_OF_RANGE
                    || *code == SqlState::DATETIME_FIELD_OVERFLOW
                    || *code == SqlState::DATETIME_VALUE_OUT_OF_RANGE =>
            {
                Self::validation("body", "a value is too long or out of range")
            }
            Some(code) if *code == SqlState::CHECK_VIOLATION => {
                let constraint = err
                    .as_db_error()
                    .and_then(|db| db.constraint())
                    .unwrap_or("a constraint")
                    .to_string();
                Self::validation("body", format!("the value violates {constraint}"))
            }
            _ => Self::Internal(format!("database: {err}")),
        }
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        // A backend error counts itself when it becomes an ApiError below.
        if let Some(kind) = pool_unavailable(&err).filter(|kind| *kind != "connection") {
            tracing::warn!(error = %err, "database unavailable");
            crate::kernel::metrics::database_connection_error(kind);
        }
        match err {
            deadpool_postgres::PoolError::Timeout(_) => Self::ServiceUnavailable {
                detail: "the database is busy; retry shortly".into(),
                retry_after: 1,
            },
            // Connecting (or checking a recycled connection) failed.
            deadpool_postgres::PoolError::Backend(err) => Self::from(err),
            deadpool_postgres::PoolError::Closed => database_outage(),
            other => Self::Internal(format!("database pool: {other}")),
        }
    }
}

/// The SQLSTATE and constraint name of a database error, for handlers that map
/// specific constraints to specific problems.
pub fn db_constraint(
    err: &tokio_postgres::Error,
) -> Option<(&tokio_postgres::error::SqlState, &str)> {
    let db = err.as_db_error()?;
    Some((db.code(), db.constraint()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;

    async fn render(err: ApiError) -> (StatusCode, axum::http::HeaderMap, Value) {
        let response = err.into_response();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, headers, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn validation_problem_lists_fields() {
        let (status, headers, body) = render(ApiError::validation("username", "too short")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(headers[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(body["type"], "/problems/validation-error");
        assert_eq!(body["status"], 422);
        assert_eq!(body["errors"][0]["field"], "username");
    }

    #[tokio::test]
    async fn internal_errors_reveal_nothing() {
        let (status, _, body) = render(ApiError::internal(
            "password=hunter2 in a connection string",
        ))
        .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!body.to_string().contains("hunter2"));
    }

    #[tokio::test]
    async fn unauthorized_carries_www_authenticate() {
        let (status, headers, _) = render(ApiError::Unauthorized("expired".into())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(headers.contains_key(header::WWW_AUTHENTICATE));
    }

    #[tokio::test]
    async fn rate_limit_carries_retry_after() {
        let (_, headers, _) = render(ApiError::TooManyRequests {
            detail: "slow down".into(),
            retry_after: 17,
        })
        .await;
        assert_eq!(headers[header::RETRY_AFTER], "17");
    }
}
