//! The OpenAPI 3.1 document of the API, generated from the handlers'
//! `#[utoipa::path]` annotations and the `ToSchema` derives of the types they
//! read and write. Served at `GET /api/v1/openapi.json` by every router (see
//! [`crate::runtime::app::finish`]) and committed as `openapi.json` at the repository
//! root; `shared/tests/openapi.rs` fails when the two differ or when a served
//! route is missing from the document.
//!
//! Regenerate the committed file with `cargo run -p local -- openapi > openapi.json`.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::schema::{ArrayItems, Schema};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Components, RefOr};
use utoipa::{Modify, OpenApi};

const DESCRIPTION: &str = "\
The character platform's HTTP API: accounts and profiles (the `auth` function), \
characters, the gallery, collections, likes, ratings and reports (the `characters` function), \
generation jobs (the `jobs` function), credits: balance, ledger, packages, pricing, purchases, \
gifts and the daily bonus, with Stripe's webhook and the operators' routes (the `credits` \
function).

- Authenticated operations take `Authorization: Bearer <access token>` (an Auth0 RS256 \
access token; the local stack mints its own with `POST /dev/token`). Operations whose \
security lists an empty requirement accept anonymous callers too, but a token that is sent \
must be valid (401 otherwise).
- A token is a sign-in, not an account: call `POST /api/v1/auth/session` once first; until \
then the routes that need an account answer 404 pointing there. Banned and erased accounts \
get 403 wherever the caller's account is looked up.
- Every error is an RFC 9457 problem (`application/problem+json`, schema `Problem`). A path \
the API does not serve answers 404 (`/problems/not-found`, detail `no such route`); a method a \
path does not serve answers 405 (`/problems/method-not-allowed`). Unexpected failures are a \
bare 500 that reveals nothing.
- Operations that move credits or start a job take an `Idempotency-Key` header (1 to 255 \
printable ASCII characters, else 400; some require it). The same key with the same request \
answers the stored response with `Idempotent-Replayed: true` for 24 hours; the same key with a \
different request is a 422; a concurrent duplicate waits for the first and replays its response \
(or runs as new if the first failed), except that a purchase whose checkout is still being \
created answers 409.
- JSON bodies are decoded strictly: unknown and read-only fields are refused with a 422, and \
every invalid field is listed in its `errors`. Bodies over 256 KiB are 413.
- Every response carries `x-request-id` (a sanitised client `x-request-id`, API Gateway's \
request id, or a fresh UUID).
- Lists are keyset-paginated: `limit` (1 to 100, default 24) and the opaque `cursor` of the \
previous page's `next_cursor`; `next_cursor` is `null` on the last page.

The local stack also serves `/.well-known/jwks.json`, `POST /dev/token` and signed `/files/...` \
links; they exist only there and are not part of this document.";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Character platform API",
        version = env!("CARGO_PKG_VERSION"),
        description = DESCRIPTION,
    ),
    paths(
        crate::users::routes::create_session,
        crate::users::routes::get_me,
        crate::users::routes::patch_me,
        crate::users::routes::get_profile,
        crate::users::routes::put_profile,
        crate::users::routes::get_public_user,
        crate::users::follows::follow,
        crate::users::follows::unfollow,
        crate::users::follows::following,
        crate::users::follows::followers,
        crate::users::activity_log::list,
        crate::gdpr::routes::export_me,
        crate::gdpr::routes::erase,
        crate::characters::routes::create_character,
        crate::characters::routes::list_characters,
        crate::characters::routes::get_character,
        crate::characters::routes::update_character,
        crate::characters::routes::delete_character,
        crate::characters::routes::download_character,
        crate::characters::routes::list_images,
        crate::characters::routes::set_primary_image,
        crate::characters::routes::delete_image,
        crate::characters::routes::list_variants,
        crate::characters::routes::list_gallery,
        crate::characters::routes::list_featured,
        crate::characters::routes::list_person_characters,
        crate::collections::routes::create_collection,
        crate::collections::routes::list_collections,
        crate::collections::routes::list_person_collections,
        crate::collections::routes::list_collection_gallery,
        crate::collections::routes::get_collection,
        crate::collections::routes::patch_collection,
        crate::collections::routes::delete_collection,
        crate::collections::routes::list_members,
        crate::collections::routes::put_member,
        crate::collections::routes::remove_member,
        crate::social::routes::like,
        crate::social::routes::unlike,
        crate::social::routes::put_rating,
        crate::social::routes::delete_rating,
        crate::social::routes::list_ratings,
        crate::social::routes::file_report,
        crate::characters::generate::generate,
        crate::jobs::routes::list_jobs,
        crate::jobs::routes::get_job,
        crate::jobs::routes::cancel_job,
        crate::credits::account::get_balance,
        crate::credits::account::history::list,
        crate::credits::account::packages::list,
        crate::credits::referrals::summary,
        crate::credits::account::price_list::show,
        crate::credits::account::bonus::claim,
        crate::credits::account::gifts::send,
        crate::credits::purchases::create_purchase,
        crate::credits::purchases::list_purchases,
        crate::credits::purchases::webhook::stripe_webhook,
        crate::credits::admin::pricing::list,
        crate::credits::admin::pricing::create,
        crate::credits::admin::pricing::update,
        crate::credits::admin::packages::list,
        crate::credits::admin::packages::create,
        crate::credits::admin::packages::update,
        crate::credits::admin::adjustments::create,
        crate::credits::admin::refunds::create,
        crate::moderation::reports::list,
        crate::moderation::reports::resolve,
        crate::moderation::characters::feature,
        crate::moderation::characters::unfeature,
        crate::moderation::characters::hide,
        crate::moderation::characters::unhide,
        crate::moderation::characters::unpublish,
        crate::moderation::users::lookup,
        crate::moderation::users::update,
        serve,
    ),
    components(
        // The webhook reads its body as raw bytes, so it documents no request body; its
        // description refers to this schema.
        schemas(crate::credits::purchases::webhook::StripeEvent),
        responses(
            crate::web::responses::BadRequest,
            crate::web::responses::Unauthorized,
            crate::web::responses::PayloadTooLarge,
            crate::web::responses::UnsupportedMediaType,
            crate::web::responses::ValidationFailed,
            crate::web::responses::ServiceUnavailable,
            crate::web::responses::InternalError,
            crate::web::responses::AccountRefused,
            crate::web::responses::NoAccountYet,
            crate::web::responses::AdminRefused,
            crate::web::responses::AdminNoAccountYet,
        )
    ),
    modifiers(
        &BearerScheme,
        &OptionalBodiesAreNotNull,
        &GenericArgumentsAreReferences,
        &ResponseFieldsAreRequired,
    ),
    tags(
        (name = "auth", description = "Sign-in, the caller's account and profile, public profiles (the `auth` function)."),
        (name = "characters", description = "Characters, their images and variants, downloads and the public gallery (the `characters` function)."),
        (name = "collections", description = "Collections of characters and their members (the `characters` function)."),
        (name = "social", description = "Likes, ratings and content reports (the `characters` function)."),
        (name = "jobs", description = "Generation jobs: start, follow, cancel (the `jobs` function)."),
        (name = "credits", description = "Balance, ledger, packages, pricing, purchases, gifts, the daily bonus (the `credits` function)."),
        (name = "admin", description = "Operator routes; the token must carry the `admin` permission."),
        (name = "meta", description = "This document."),
    )
)]
struct ApiDoc;

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    // The derive fills these from Cargo metadata the crate does not set.
    document.info.license = None;
    document.info.contact = None;
    document
}

/// The document as pretty JSON with a final newline: what `openapi.json` holds
/// and `GET /api/v1/openapi.json` serves. Key order is fixed by the code (maps
/// are sorted, schema properties follow their fields), so the output is stable.
pub fn json() -> String {
    let mut json =
        serde_json::to_string_pretty(&document()).expect("the OpenAPI document serializes to JSON");
    json.push('\n');
    json
}

/// The route serving the document.
pub const PATH: &str = "/api/v1/openapi.json";

/// This document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    operation_id = "get_openapi",
    security(()),
    responses(
        (status = 200, description = "This OpenAPI document.", content_type = "application/json", body = Object),
    )
)]
pub(crate) async fn serve() -> Response {
    static JSON: LazyLock<String> = LazyLock::new(json);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        JSON.as_str(),
    )
        .into_response()
}

/// The `bearer` security scheme: an RS256 JWT access token.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Components::new);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An RS256 access token of the configured issuer (Auth0 in production, \
                         `POST /dev/token` on the local stack), for the configured audience.",
                    ))
                    .build(),
            ),
        );
    }
}

/// utoipa makes a request body optional only when its type is an `Option`, and then also
/// says the body may be JSON `null`. An optional body here may be empty, never `null`.
struct OptionalBodiesAreNotNull;

impl Modify for OptionalBodiesAreNotNull {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let null = serde_json::json!({"type": "null"});
        for item in openapi.paths.paths.values_mut() {
            for operation in operations(item) {
                let Some(RefOr::T(body)) = operation.request_body.as_mut() else {
                    continue;
                };
                if body.required == Some(utoipa::openapi::Required::True) {
                    continue;
                }
                for content in body.content.values_mut() {
                    let RefOr::T(content) = content else { continue };
                    if let Some(RefOr::T(Schema::OneOf(one_of))) = &content.schema {
                        let not_null: Vec<_> = one_of
                            .items
                            .iter()
                            .filter(|s| serde_json::to_value(s).ok().as_ref() != Some(&null))
                            .cloned()
                            .collect();
                        if let [schema] = not_null.as_slice() {
                            content.schema = Some(schema.clone());
                        }
                    }
                }
            }
        }
    }
}

/// utoipa inlines the schema of a generic argument (the `T` of `Page<T>`) where the
/// generic type uses it; this puts the reference to the argument's component back.
struct GenericArgumentsAreReferences;

impl Modify for GenericArgumentsAreReferences {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        // Only object-like components: a plain `{"type": "string"}` would match anything.
        let named: Vec<(String, Schema)> = components
            .schemas
            .iter()
            .filter_map(|(name, schema)| match schema {
                RefOr::T(schema @ Schema::Object(object)) if !object.properties.is_empty() => {
                    Some((name.clone(), schema.clone()))
                }
                RefOr::T(schema @ Schema::AllOf(_)) => Some((name.clone(), schema.clone())),
                _ => None,
            })
            .collect();
        for schema in components.schemas.values_mut() {
            for_each_child(schema, &mut |child| replace_copies(child, &named));
        }
    }
}

/// Replaces `schema`, or the schemas inside it, by a reference where it is a copy of a
/// named component.
fn replace_copies(schema: &mut RefOr<Schema>, named: &[(String, Schema)]) {
    if let RefOr::T(inline) = schema
        && let Some((name, _)) = named.iter().find(|(_, component)| component == inline)
    {
        *schema = RefOr::Ref(utoipa::openapi::Ref::from_schema_name(name.clone()));
        return;
    }
    for_each_child(schema, &mut |child| replace_copies(child, named));
}

/// Calls `f` on each schema directly inside `schema` (properties, items, variants).
fn for_each_child(schema: &mut RefOr<Schema>, f: &mut dyn FnMut(&mut RefOr<Schema>)) {
    match schema {
        RefOr::T(Schema::Object(object)) => object.properties.values_mut().for_each(f),
        RefOr::T(Schema::Array(array)) => {
            if let ArrayItems::RefOrSchema(items) = &mut array.items {
                f(items);
            }
        }
        RefOr::T(Schema::OneOf(one_of)) => one_of.items.iter_mut().for_each(f),
        RefOr::T(Schema::AllOf(all_of)) => all_of.items.iter_mut().for_each(f),
        RefOr::T(Schema::AnyOf(any_of)) => any_of.items.iter_mut().for_each(f),
        RefOr::Ref(_) | RefOr::T(_) => {}
    }
}

/// Response bodies always carry every field of their type, `null` when unset
/// (no field is ever skipped), so every property of a schema reachable from a
/// 2xx response is required; `Option` only makes it nullable.
struct ResponseFieldsAreRequired;

impl Modify for ResponseFieldsAreRequired {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let mut names = BTreeSet::new();
        for item in openapi.paths.paths.values_mut() {
            for operation in operations(item) {
                for schema in success_schemas(operation) {
                    collect_refs(schema, &mut names);
                    // Inline schemas (pages of a generic `Page<T>`) are changed in place.
                    require_all(schema);
                }
            }
        }
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        // Follow references between component schemas to a fixed point.
        let mut pending: Vec<String> = names.iter().cloned().collect();
        while let Some(name) = pending.pop() {
            if let Some(schema) = components.schemas.get(&name) {
                let mut more = BTreeSet::new();
                collect_refs(schema, &mut more);
                for name in more {
                    if names.insert(name.clone()) {
                        pending.push(name);
                    }
                }
            }
        }
        for name in names {
            if let Some(schema) = components.schemas.get_mut(&name) {
                require_all(schema);
            }
        }
    }
}

fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// The body schemas of an operation's 2xx responses.
fn success_schemas(
    operation: &mut utoipa::openapi::path::Operation,
) -> impl Iterator<Item = &mut RefOr<Schema>> {
    operation
        .responses
        .responses
        .iter_mut()
        .filter(|(status, _)| status.starts_with('2'))
        .filter_map(|(_, response)| match response {
            RefOr::T(response) => Some(response),
            RefOr::Ref(_) => None,
        })
        .flat_map(|response| response.content.values_mut())
        .filter_map(|content| match content {
            RefOr::T(content) => content.schema.as_mut(),
            RefOr::Ref(_) => None,
        })
}

const SCHEMA_REF_PREFIX: &str = "#/components/schemas/";

/// Names of the component schemas `schema` refers to, at any depth.
fn collect_refs(schema: &RefOr<Schema>, names: &mut BTreeSet<String>) {
    match schema {
        RefOr::Ref(reference) => {
            if let Some(name) = reference.ref_location.strip_prefix(SCHEMA_REF_PREFIX) {
                names.insert(name.to_string());
            }
        }
        RefOr::T(Schema::Object(object)) => {
            for property in object.properties.values() {
                collect_refs(property, names);
            }
        }
        RefOr::T(Schema::Array(array)) => {
            if let ArrayItems::RefOrSchema(items) = &array.items {
                collect_refs(items, names);
            }
        }
        RefOr::T(Schema::OneOf(one_of)) => one_of.items.iter().for_each(|s| collect_refs(s, names)),
        RefOr::T(Schema::AllOf(all_of)) => all_of.items.iter().for_each(|s| collect_refs(s, names)),
        RefOr::T(Schema::AnyOf(any_of)) => any_of.items.iter().for_each(|s| collect_refs(s, names)),
        RefOr::T(_) => {}
    }
}

/// Marks every property of `schema` (and of the inline objects it is made of) required.
fn require_all(schema: &mut RefOr<Schema>) {
    match schema {
        RefOr::Ref(_) => {}
        RefOr::T(Schema::Object(object)) => {
            object.required = object.properties.keys().cloned().collect();
            for property in object.properties.values_mut() {
                require_all(property);
            }
        }
        RefOr::T(Schema::Array(array)) => {
            if let ArrayItems::RefOrSchema(items) = &mut array.items {
                require_all(items);
            }
        }
        RefOr::T(Schema::OneOf(one_of)) => one_of.items.iter_mut().for_each(require_all),
        RefOr::T(Schema::AllOf(all_of)) => all_of.items.iter_mut().for_each(require_all),
        RefOr::T(Schema::AnyOf(any_of)) => any_of.items.iter_mut().for_each(require_all),
        RefOr::T(_) => {}
    }
}
