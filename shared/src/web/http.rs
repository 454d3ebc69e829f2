//! HTTP plumbing shared by every router: request ids, request metadata, a JSON
//! extractor whose rejections are problem+json, and the fallbacks.

use std::net::{IpAddr, SocketAddr};

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::header::{HeaderName, HeaderValue, REFERER, USER_AGENT};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use lambda_http::RequestExt;
use lambda_http::request::RequestContext;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::kernel::error::ApiError;
use crate::kernel::telemetry::Invocation;

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request being served: API Gateway's request id in Lambda, a
/// sanitised `x-request-id` from the client, or a fresh UUID.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Middleware: assigns the request id, runs the request inside a span naming
/// it (and, in Lambda, the invocation: `lambda_request_id`, `xray_trace_id`),
/// echoes it in the response's `x-request-id`, and counts 4xx and 5xx answers
/// by route ([`crate::kernel::metrics::http_error`]).
///
/// It wraps every route (`Router::layer`), so the matched route template is
/// known here; the fallbacks have none.
pub async fn request_id(mut request: Request, next: Next) -> Response {
    let id = gateway_context(request.extensions())
        .and_then(|c| c.request_id.clone())
        .or_else(|| {
            request
                .headers()
                .get(&REQUEST_ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .filter(|v| is_safe_request_id(v))
                .map(str::to_string)
        })
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    request.extensions_mut().insert(RequestId(id.clone()));
    let invocation = request
        .extensions()
        .lambda_context_ref()
        .map(Invocation::from_context)
        .unwrap_or_default();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_string());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        lambda_request_id = invocation.request_id(),
        xray_trace_id = invocation.trace_id(),
        method = %method,
        route = route.as_deref(),
        path = %request.uri().path(),
    );
    let mut response = invocation
        .scope(async {
            let response = next.run(request).await;
            let status = response.status().as_u16();
            tracing::info!(status, "served");
            crate::kernel::metrics::http_error(&method, route.as_deref(), status);
            response
        })
        .instrument(span)
        .await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// Client-supplied ids end up in logs: accept only short, plain tokens.
fn is_safe_request_id(value: &str) -> bool {
    (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn gateway_context(extensions: &axum::http::Extensions) -> Option<&aws_context::HttpContext> {
    match extensions.request_context_ref()? {
        RequestContext::ApiGatewayV2(context) => Some(context),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

mod aws_context {
    pub type HttpContext = lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpRequestContext;
}

/// Who sent the request and from where, for the activity log.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub request_id: Option<String>,
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub referrer: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let header = |name| {
            parts
                .headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(|v| v.chars().take(512).collect::<String>())
        };
        // In Lambda the peer is API Gateway's view of the client; locally it is
        // the socket peer. X-Forwarded-For is never trusted: clients forge it.
        let ip = gateway_context(&parts.extensions)
            .and_then(|c| c.http.source_ip.as_deref())
            .and_then(|ip| ip.parse().ok())
            .or_else(|| {
                parts
                    .extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|ConnectInfo(addr)| addr.ip())
            });
        Ok(Self {
            request_id: parts.extensions.get::<RequestId>().map(|r| r.0.clone()),
            ip,
            user_agent: header(USER_AGENT),
            referrer: header(REFERER),
        })
    }
}

/// `Json<T>` whose rejections are problem+json: 415 without a JSON content
/// type, 400 for malformed JSON, 422 for well-formed JSON of the wrong shape,
/// 413 for an oversized body.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
            "send the body as `Content-Type: application/json`".into(),
        ),
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::BadRequest(format!("the body is not valid JSON: {}", e.body_text()))
        }
        JsonRejection::JsonDataError(e) => ApiError::validation("body", e.body_text()),
        JsonRejection::BytesRejection(e)
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
        {
            ApiError::PayloadTooLarge
        }
        other => ApiError::BadRequest(other.body_text()),
    }
}

/// The raw request body (for signature checks over the exact bytes), whose
/// rejections are problem+json: 413 over the body limit, 400 otherwise.
pub struct RawBody(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::body::Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(Self(bytes)),
            Err(rejection) if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::PayloadTooLarge)
            }
            Err(rejection) => Err(ApiError::BadRequest(rejection.body_text())),
        }
    }
}

/// `Query<T>` whose rejections are problem+json 422s naming the parameter.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + utoipa::IntoParams + 'static,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let raw = parts.uri.query().unwrap_or_default();
        crate::web::input::decode_query(raw).map(ApiQuery)
    }
}

/// `Path<T>` whose rejections are problem+json 404s (a malformed id names no resource).
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(_) => Err(ApiError::NotFound("no such resource".into())),
        }
    }
}

/// An id from a path, if it could name a row at all: 1 to 128 bytes without
/// control characters. Anything else names nothing: the same 404 as an
/// unknown id (`what` says what was looked for).
pub fn resource_id<'a>(raw: &'a str, what: &str) -> Result<&'a str, ApiError> {
    if (1..=128).contains(&raw.len()) && !raw.chars().any(char::is_control) {
        Ok(raw)
    } else {
        Err(ApiError::NotFound(format!("no such {what}")))
    }
}

/// Router fallback: unknown paths are a problem+json 404.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

/// Router fallback for a known path with a method it does not serve.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_ids_are_bounded_and_free_of_control_characters() {
        assert_eq!(
            resource_id("cfg_generate", "config").unwrap(),
            "cfg_generate"
        );
        assert!(resource_id(&"x".repeat(128), "config").is_ok());
        for bad in [String::new(), "a\0b".into(), "a\nb".into(), "x".repeat(129)] {
            let err = resource_id(&bad, "config").unwrap_err();
            assert!(matches!(err, ApiError::NotFound(_)), "{bad:?}: {err:?}");
        }
    }

    #[test]
    fn request_ids_from_clients_are_sanitised() {
        assert!(is_safe_request_id("abc-123_x.y"));
        assert!(!is_safe_request_id(""));
        assert!(!is_safe_request_id("a\nforged log line"));
        assert!(!is_safe_request_id(&"x".repeat(65)));
    }
}
