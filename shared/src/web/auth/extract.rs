//! Axum extractors for the caller's identity.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts, OptionalFromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use lambda_http::RequestExt;
use lambda_http::request::RequestContext;

use super::{AuthError, Authenticator, Identity};
use crate::kernel::error::ApiError;

/// The authenticated caller; a handler taking it answers 401 without one.
#[derive(Debug, Clone)]
pub struct Caller(pub Identity);

/// The caller if credentials were presented. Invalid credentials are still a
/// 401: a client that sent a token expects it to be honoured, not ignored.
#[derive(Debug, Clone)]
pub struct OptionalCaller(pub Option<Identity>);

/// The permission every admin route requires.
pub const ADMIN_PERMISSION: &str = "admin";

/// An authenticated caller whose token carries the `admin` permission. As the
/// first extractor of a handler it answers 401/403 before the body is read.
#[derive(Debug, Clone)]
pub struct Admin(pub Identity);

impl<S> FromRequestParts<S> for Admin
where
    S: Send + Sync,
    Arc<Authenticator>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Caller(identity) =
            <Caller as FromRequestParts<S>>::from_request_parts(parts, state).await?;
        if !identity.has_permission(ADMIN_PERMISSION) {
            return Err(ApiError::Forbidden(
                "this route needs the admin permission".into(),
            ));
        }
        Ok(Admin(identity))
    }
}

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    Arc<Authenticator>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match resolve(parts, state).await? {
            Some(identity) => Ok(Caller(identity)),
            None => Err(AuthError::Missing.into()),
        }
    }
}

impl<S> FromRequestParts<S> for OptionalCaller
where
    S: Send + Sync,
    Arc<Authenticator>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(OptionalCaller(resolve(parts, state).await?))
    }
}

impl<S> OptionalFromRequestParts<S> for Caller
where
    S: Send + Sync,
    Arc<Authenticator>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(resolve(parts, state).await?.map(Caller))
    }
}

async fn resolve<S>(parts: &Parts, state: &S) -> Result<Option<Identity>, ApiError>
where
    Arc<Authenticator>: FromRef<S>,
{
    let authenticator = Arc::<Authenticator>::from_ref(state);
    if let Some(RequestContext::ApiGatewayV2(context)) = parts.request_context_ref()
        && let Some(jwt) = context.authorizer.as_ref().and_then(|a| a.jwt.as_ref())
        && let Some(identity) = authenticator.identity_from_gateway(&jwt.claims)
    {
        return Ok(Some(identity));
    }
    let Some(header) = parts.headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let header = header
        .to_str()
        .map_err(|_| AuthError::Malformed("the Authorization header is not ASCII".into()))?;
    let token = match header.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            token.trim()
        }
        _ => {
            return Err(
                AuthError::Malformed("expected `Authorization: Bearer <token>`".into()).into(),
            );
        }
    };
    Ok(Some(authenticator.verifier().verify(token).await?))
}
