//! The OpenAPI pieces routes share: the problem responses many operations
//! answer (`components.responses` of the document) and schema builders for
//! request fields whose constraints live in constants. The document itself is
//! assembled at the top, in [`crate::runtime::openapi`].

use std::collections::BTreeMap;

use utoipa::ToResponse;
use utoipa::openapi::schema::{ArrayItems, Schema, SchemaType, Type};
use utoipa::openapi::{Object, ObjectBuilder, RefOr};

use crate::kernel::error::Problem;

// ------------------------------------------------------------------------------------------
// Response sets: groups of the problems below that operations answer together, listed once
// (`responses((status = 200, ...), SignedIn, ServerFailures)`).
// ------------------------------------------------------------------------------------------

/// A set of the shared problem responses, by status.
macro_rules! response_set {
    ($(#[$doc:meta])* $name:ident { $($status:literal => $component:ident),+ $(,)? }) => {
        $(#[$doc])*
        pub struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::response::Response>> {
                BTreeMap::from([$((
                    $status.to_string(),
                    RefOr::Ref(utoipa::openapi::Ref::from_response_name(stringify!($component))),
                )),+])
            }
        }
    };
}

response_set!(
    /// What a route for a signed-in user answers about the caller: no valid token (401), a
    /// locked-out or erased account (403), no account yet (404).
    SignedIn { "401" => Unauthorized, "403" => AccountRefused, "404" => NoAccountYet }
);
response_set!(
    /// [`SignedIn`] for routes with their own 404 (a resource the caller cannot see).
    Authenticated { "401" => Unauthorized, "403" => AccountRefused }
);
response_set!(
    /// What an admin route answers about the caller: no valid token (401), no `admin`
    /// permission or a locked-out account (403), no account yet (404).
    AdminSignedIn { "401" => Unauthorized, "403" => AdminRefused, "404" => AdminNoAccountYet }
);
response_set!(
    /// [`AdminSignedIn`] for routes with their own 404.
    AdminAuthenticated { "401" => Unauthorized, "403" => AdminRefused }
);
response_set!(
    /// What a route with a JSON body answers about the body's form: not JSON (400), too large
    /// (413), not sent as JSON (415).
    BodyRefused { "400" => BadRequest, "413" => PayloadTooLarge, "415" => UnsupportedMediaType }
);
response_set!(
    /// What any route may answer: a dependency briefly unavailable (503), a fault (500).
    ServerFailures { "503" => ServiceUnavailable, "500" => InternalError }
);

// ------------------------------------------------------------------------------------------
// Problems shared by many operations (`components.responses`). Route-specific 403, 404 and
// 409 problems are described at their operations.
// ------------------------------------------------------------------------------------------

/// The request could not be read: the body is not valid JSON (`/problems/bad-request`).
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
#[allow(dead_code)]
pub struct BadRequest(Problem);

/// No bearer token, or one that is malformed, expired, not yet valid, signed by an unknown
/// key or with another algorithm than RS256, or issued by another issuer or for another
/// audience (`/problems/unauthorized`).
#[derive(ToResponse)]
#[response(
    content_type = "application/problem+json",
    headers(("WWW-Authenticate" = String, description = "`Bearer error=\"invalid_token\"`"))
)]
#[allow(dead_code)]
pub struct Unauthorized(Problem);

/// The body is larger than 256 KiB (`/problems/payload-too-large`).
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
#[allow(dead_code)]
pub struct PayloadTooLarge(Problem);

/// The body was not sent as `Content-Type: application/json`
/// (`/problems/unsupported-media-type`).
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
#[allow(dead_code)]
pub struct UnsupportedMediaType(Problem);

/// Invalid input: a field (or query parameter) that is unknown, read-only, of the wrong type
/// or out of range, or a missing required one. `errors` names every one
/// (`/problems/validation-error`).
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
#[allow(dead_code)]
pub struct ValidationFailed(Problem);

/// A dependency is briefly unavailable: the database is busy, the request collided with a
/// concurrent change, or the token issuer's keys cannot be fetched. Retry after
/// `Retry-After` seconds (`/problems/service-unavailable`).
#[derive(ToResponse)]
#[response(
    content_type = "application/problem+json",
    headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))
)]
#[allow(dead_code)]
pub struct ServiceUnavailable(Problem);

/// An unexpected failure; it was logged, and the problem reveals nothing about it
/// (`/problems/internal-error`).
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
#[allow(dead_code)]
pub struct InternalError(Problem);

/// The caller's account is suspended where the route needs an active one, banned, or erased
/// (`/problems/forbidden`).
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
#[allow(dead_code)]
pub struct AccountRefused(Problem);

/// The token is valid but its identity has no account yet: sign in first with
/// `POST /api/v1/auth/session` (`/problems/not-found`).
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
#[allow(dead_code)]
pub struct NoAccountYet(Problem);

/// The token lacks the `admin` permission, or the admin's own account is banned or erased
/// (`/problems/forbidden`).
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
#[allow(dead_code)]
pub struct AdminRefused(Problem);

/// The admin's token is valid but its identity has no account yet: sign in first
/// (`/problems/not-found`).
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
#[allow(dead_code)]
pub struct AdminNoAccountYet(Problem);

// ------------------------------------------------------------------------------------------
// Schemas of request fields whose constraints live in constants (`schema_with = ...`).
// ------------------------------------------------------------------------------------------

/// `t`, or `[t, "null"]`.
fn json_type(t: Type, nullable: bool) -> SchemaType {
    if nullable {
        SchemaType::from_iter([t, Type::Null])
    } else {
        SchemaType::Type(t)
    }
}

/// A string that must be one of `values` (or `null`, when `nullable`).
pub(crate) fn string_enum(values: &[&str], nullable: bool, description: &str) -> Object {
    let mut enum_values: Vec<serde_json::Value> = values.iter().map(|v| (*v).into()).collect();
    if nullable {
        enum_values.push(serde_json::Value::Null);
    }
    ObjectBuilder::new()
        .schema_type(json_type(Type::String, nullable))
        .description(Some(description))
        .enum_values(Some(enum_values))
        .build()
}

/// An array of `items` (or `null`, when `nullable`) with at most `max_items` entries.
pub(crate) fn array_of(
    items: impl Into<RefOr<Schema>>,
    max_items: usize,
    nullable: bool,
    description: &str,
) -> utoipa::openapi::Array {
    utoipa::openapi::ArrayBuilder::new()
        .schema_type(json_type(Type::Array, nullable))
        .items(ArrayItems::RefOrSchema(Box::new(items.into())))
        .max_items(Some(max_items))
        .description(Some(description))
        .build()
}

/// A string of 1 to `max_length` characters, matching `pattern` when given.
pub(crate) fn short_string(pattern: Option<&str>, max_length: usize) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(max_length))
        .pattern(pattern)
        .build()
}

/// A string that must be one of `values`, without a description (an array's items).
pub(crate) fn enum_item(values: &[&str]) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().copied()))
        .build()
}
