//! Decoding and validation of collection and membership bodies.
//!
//! Bodies arrive as a JSON object and are decoded field by field, so every
//! problem (a wrong type included) is a 422 naming its field, and every value
//! that reaches SQL already satisfies the schema: bad input never becomes a
//! constraint error or a 500. Read-only columns are refused by name, before
//! anything else is looked at, as `PATCH /api/v1/me` does.

use serde_json::{Map, Value};

use crate::kernel::error::{ApiError, FieldError};
use crate::users::fields;

/// Columns of `collections` a user can see but never set.
pub const READ_ONLY_COLLECTION_FIELDS: [&str; 7] = [
    "id",
    "user_id",
    "character_count",
    "total_views",
    "total_likes",
    "created_at",
    "updated_at",
];

/// Columns of `collection_characters` that come from the route or the clock.
pub const READ_ONLY_MEMBER_FIELDS: [&str; 3] = ["collection_id", "character_id", "added_at"];

pub const MAX_NAME_CHARS: usize = 100;
pub const MAX_DESCRIPTION_CHARS: usize = 2000;
pub const MAX_LABEL_CHARS: usize = 50;
pub const MAX_TAGS: usize = 20;
pub const MAX_SETTINGS_KEYS: usize = 20;
pub const MAX_SETTINGS_BYTES: usize = 4096;
pub const MAX_DISPLAY_ORDER: i64 = 1_000_000;

/// Validated values for the user-settable columns of `collections`.
///
/// `None` leaves a column as it is (PATCH) or takes its default (POST);
/// `Some(None)` clears a nullable column. A `null` tag list or settings object
/// clears it to its empty default, so they are never stored as NULL.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CollectionFields {
    pub name: Option<String>,
    pub description: Option<Option<String>>,
    pub cover_image_url: Option<Option<String>>,
    pub tags: Option<Vec<String>>,
    pub category: Option<Option<String>>,
    pub theme: Option<Option<String>>,
    pub is_public: Option<bool>,
    pub allow_collaboration: Option<bool>,
    pub collaboration_settings: Option<Map<String, Value>>,
}

impl CollectionFields {
    /// True when the body changes nothing (`{}`).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The body of `POST /collections`: `name` is required.
pub fn new_collection(body: Map<String, Value>) -> Result<CollectionFields, ApiError> {
    let requires_name = !body.contains_key("name");
    let (fields, mut errors) = collection_fields(body)?;
    if requires_name {
        errors.push(FieldError::new("name", "is required"));
    }
    finish(fields, errors)
}

/// The body of `PATCH /collections/{id}`: every field optional.
pub fn collection_patch(body: Map<String, Value>) -> Result<CollectionFields, ApiError> {
    let (fields, errors) = collection_fields(body)?;
    finish(fields, errors)
}

fn finish<T>(value: T, errors: Vec<FieldError>) -> Result<T, ApiError> {
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(ApiError::from_field_errors(errors))
    }
}

/// Refuses read-only fields by name: nothing else is considered when one is sent.
fn refuse_read_only(body: &Map<String, Value>, read_only: &[&str]) -> Result<(), ApiError> {
    let refused: Vec<FieldError> = body
        .keys()
        .filter(|k| read_only.contains(&k.as_str()))
        .map(|k| FieldError::new(k, "is read-only and cannot be set through this route"))
        .collect();
    finish((), refused)
}

fn collection_fields(
    body: Map<String, Value>,
) -> Result<(CollectionFields, Vec<FieldError>), ApiError> {
    refuse_read_only(&body, &READ_ONLY_COLLECTION_FIELDS)?;
    let mut out = CollectionFields::default();
    let mut errors = Vec::new();
    for (key, value) in body {
        let field = key.as_str();
        let result = match field {
            "name" => required_text(field, &value, MAX_NAME_CHARS).map(|v| out.name = Some(v)),
            "description" => nullable_text(field, &value, MAX_DESCRIPTION_CHARS, true)
                .map(|v| out.description = Some(v)),
            "category" => {
                nullable_text(field, &value, MAX_LABEL_CHARS, false).map(|v| out.category = Some(v))
            }
            "theme" => {
                nullable_text(field, &value, MAX_LABEL_CHARS, false).map(|v| out.theme = Some(v))
            }
            "cover_image_url" => nullable_url(field, &value).map(|v| out.cover_image_url = Some(v)),
            "tags" => tags(field, &value).map(|v| out.tags = Some(v)),
            "is_public" => boolean(field, &value).map(|v| out.is_public = Some(v)),
            "allow_collaboration" => {
                boolean(field, &value).map(|v| out.allow_collaboration = Some(v))
            }
            "collaboration_settings" => {
                collaboration_settings(field, &value).map(|v| out.collaboration_settings = Some(v))
            }
            _ => Err(FieldError::new(field, "is not a field of a collection")),
        };
        if let Err(error) = result {
            errors.push(error);
        }
    }
    Ok((out, errors))
}

fn required_text(field: &str, value: &Value, max: usize) -> Result<String, FieldError> {
    match value {
        Value::String(raw) => fields::text(field, raw, max, false)?
            .ok_or_else(|| FieldError::new(field, "must not be empty")),
        Value::Null => Err(FieldError::new(field, "cannot be null")),
        _ => Err(FieldError::new(field, "must be a string")),
    }
}

fn nullable_text(
    field: &str,
    value: &Value,
    max: usize,
    multiline: bool,
) -> Result<Option<String>, FieldError> {
    match value {
        Value::String(raw) => fields::text(field, raw, max, multiline),
        Value::Null => Ok(None),
        _ => Err(FieldError::new(field, "must be a string or null")),
    }
}

fn nullable_url(field: &str, value: &Value) -> Result<Option<String>, FieldError> {
    match value {
        Value::String(raw) => fields::http_url(field, raw).map(Some),
        Value::Null => Ok(None),
        _ => Err(FieldError::new(
            field,
            "must be an absolute http(s) URL or null",
        )),
    }
}

fn boolean(field: &str, value: &Value) -> Result<bool, FieldError> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::Null => Err(FieldError::new(field, "cannot be null")),
        _ => Err(FieldError::new(field, "must be true or false")),
    }
}

/// At most 20 distinct lowercase slugs (`[a-z0-9_-]{1,32}`), duplicates dropped.
fn tags(field: &str, value: &Value) -> Result<Vec<String>, FieldError> {
    let items = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        _ => return Err(FieldError::new(field, "must be an array of strings")),
    };
    let mut strings = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item {
            Value::String(s) => strings.push(s.clone()),
            _ => return Err(FieldError::new(format!("{field}[{i}]"), "must be a string")),
        }
    }
    fields::tag_list(field, &strings, MAX_TAGS, fields::slug)
}

/// A JSON object of at most 20 keys whose compact serialization is at most
/// 4 KiB. PostgreSQL's jsonb cannot store U+0000, so it is refused here rather
/// than failing the insert.
fn collaboration_settings(field: &str, value: &Value) -> Result<Map<String, Value>, FieldError> {
    let object = match value {
        Value::Null => return Ok(Map::new()),
        Value::Object(object) => object,
        _ => return Err(FieldError::new(field, "must be a JSON object")),
    };
    if object.len() > MAX_SETTINGS_KEYS {
        return Err(FieldError::new(
            field,
            format!("must have at most {MAX_SETTINGS_KEYS} keys"),
        ));
    }
    let size = serde_json::to_vec(value)
        .map(|bytes| bytes.len())
        .map_err(|_| FieldError::new(field, "cannot be serialized"))?;
    if size > MAX_SETTINGS_BYTES {
        return Err(FieldError::new(
            field,
            format!("must be at most {MAX_SETTINGS_BYTES} bytes as JSON"),
        ));
    }
    if contains_nul(value) {
        return Err(FieldError::new(
            field,
            "must not contain the character U+0000",
        ));
    }
    Ok(object.clone())
}

fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(object) => object
            .iter()
            .any(|(k, v)| k.contains('\0') || contains_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// The optional body of `PUT /collections/{id}/characters/{character_id}`.
/// `display_order`: `None` keeps it (or leaves a new member unordered),
/// `Some(None)` clears it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemberFields {
    pub display_order: Option<Option<i32>>,
}

pub fn member(body: Option<Map<String, Value>>) -> Result<MemberFields, ApiError> {
    let Some(body) = body else {
        return Ok(MemberFields::default());
    };
    refuse_read_only(&body, &READ_ONLY_MEMBER_FIELDS)?;
    let mut out = MemberFields::default();
    let mut errors = Vec::new();
    for (key, value) in body {
        let field = key.as_str();
        let result = match field {
            "display_order" => display_order(field, &value).map(|v| out.display_order = Some(v)),
            _ => Err(FieldError::new(
                field,
                "is not a field of a collection membership",
            )),
        };
        if let Err(error) = result {
            errors.push(error);
        }
    }
    finish(out, errors)
}

fn display_order(field: &str, value: &Value) -> Result<Option<i32>, FieldError> {
    let invalid = || {
        FieldError::new(
            field,
            format!("must be an integer from 0 to {MAX_DISPLAY_ORDER}, or null"),
        )
    };
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .filter(|n| (0..=MAX_DISPLAY_ORDER).contains(n))
            .and_then(|n| i32::try_from(n).ok())
            .map(Some)
            .ok_or_else(invalid),
        _ => Err(invalid()),
    }
}

/// Ids are text; ones PostgreSQL cannot hold (U+0000) or absurdly long ones
/// name nothing, so they are a 404 before any query.
pub fn plausible_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && !id.contains('\0')
}

// ------------------------------------------------------------------------------------------
// Request bodies, as documented in the OpenAPI document. The functions above decode the
// bodies; these types only describe what they accept.
// ------------------------------------------------------------------------------------------

/// A new collection. Text is trimmed and may not contain control characters. Read-only
/// columns (`id`, `user_id`, `character_count`, `total_views`, `total_likes`, timestamps)
/// are refused with a 422 naming them (and then nothing else is checked); unknown fields are
/// refused with a 422 too.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct NewCollection {
    /// 1 to 100 characters.
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    #[serde(flatten)]
    attributes: CollectionAttributes,
}

/// Changes to a collection: only the fields sent change; `{}` changes nothing (not even
/// `updated_at`). Read-only and unknown fields are refused as on creation.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct CollectionPatch {
    /// 1 to 100 characters; not `null`.
    #[schema(required = false, min_length = 1, max_length = 100)]
    name: String,
    #[serde(flatten)]
    attributes: CollectionAttributes,
}

/// The optional settable fields of a collection.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct CollectionAttributes {
    /// At most 2000 characters, multi-line; `null` or blank clears it.
    #[schema(max_length = 2000)]
    description: Option<String>,
    /// An absolute http(s) URL of at most 2048 characters; `null` clears it.
    #[schema(format = "uri", max_length = 2048)]
    cover_image_url: Option<String>,
    #[schema(schema_with = tags_schema)]
    tags: Option<Vec<String>>,
    /// At most 50 characters; `null` or blank clears it.
    #[schema(max_length = 50)]
    category: Option<String>,
    /// At most 50 characters; `null` or blank clears it.
    #[schema(max_length = 50)]
    theme: Option<String>,
    /// Public collections are visible to anyone (default false).
    #[schema(required = false)]
    is_public: bool,
    /// Default false.
    #[schema(required = false)]
    allow_collaboration: bool,
    #[schema(schema_with = collaboration_settings_schema)]
    collaboration_settings: Option<Map<String, Value>>,
}

/// The optional body of `PUT /api/v1/collections/{id}/characters/{character_id}`.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct MemberPatch {
    /// The member's place in the collection's order, 0 to 1000000; `null` makes it
    /// unordered (listed after the ordered ones). Absent: a new member is unordered and an
    /// existing one keeps its place.
    #[schema(minimum = 0, maximum = 1_000_000)]
    display_order: Option<i32>,
}

fn tags_schema() -> utoipa::openapi::Array {
    crate::web::responses::array_of(
        crate::web::responses::short_string(Some("^[a-z0-9_-]{1,32}$"), 32),
        MAX_TAGS,
        true,
        "At most 20 slugs of 1 to 32 lowercase letters, digits, `-` or `_`, duplicates \
         dropped; `null` clears the list.",
    )
}

fn collaboration_settings_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            utoipa::openapi::Type::Object,
            utoipa::openapi::Type::Null,
        ]))
        .description(Some(
            "Any JSON object of at most 20 keys and 4096 bytes (compact), without U+0000; \
             `null` clears it to `{}`.",
        ))
        .max_properties(Some(MAX_SETTINGS_KEYS))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("not an object"),
        }
    }

    fn fields_of(err: ApiError) -> Vec<String> {
        match err {
            ApiError::Validation { errors, .. } => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("not a validation error: {other}"),
        }
    }

    #[test]
    fn a_new_collection_needs_a_name_and_gets_clean_values() {
        let fields = new_collection(object(json!({
            "name": "  Dragons ",
            "description": "Blue ones.\nRed ones.",
            "tags": ["fire", "ice", "fire"],
            "cover_image_url": "https://cdn.example.com/c.png",
            "is_public": true,
            "collaboration_settings": {"invite_only": true}
        })))
        .unwrap();
        assert_eq!(fields.name.as_deref(), Some("Dragons"));
        assert_eq!(fields.tags, Some(vec!["fire".into(), "ice".into()]));
        assert_eq!(fields.is_public, Some(true));
        assert_eq!(
            fields_of(new_collection(object(json!({"theme": "x"}))).unwrap_err()),
            ["name"]
        );
        assert_eq!(
            fields_of(new_collection(object(json!({"name": "   "}))).unwrap_err()),
            ["name"]
        );
    }

    #[test]
    fn read_only_fields_are_refused_alone() {
        let err = collection_patch(object(json!({"character_count": 5, "name": 7}))).unwrap_err();
        assert_eq!(fields_of(err), ["character_count"]);
    }

    #[test]
    fn every_bad_field_is_named() {
        let err = collection_patch(object(json!({
            "name": null,
            "description": 5,
            "cover_image_url": "ftp://x.example.com",
            "tags": ["Not A Slug"],
            "category": "x".repeat(51),
            "is_public": "yes",
            "collaboration_settings": [1],
            "colour": "blue"
        })))
        .unwrap_err();
        let mut named = fields_of(err);
        named.sort();
        assert_eq!(
            named,
            [
                "category",
                "collaboration_settings",
                "colour",
                "cover_image_url",
                "description",
                "is_public",
                "name",
                "tags[0]"
            ]
        );
    }

    #[test]
    fn nulls_clear_nullable_fields() {
        let fields = collection_patch(object(json!({
            "description": null,
            "cover_image_url": null,
            "tags": null,
            "collaboration_settings": null
        })))
        .unwrap();
        assert_eq!(fields.description, Some(None));
        assert_eq!(fields.cover_image_url, Some(None));
        assert_eq!(fields.tags, Some(vec![]));
        assert_eq!(fields.collaboration_settings, Some(Map::new()));
        assert!(collection_patch(Map::new()).unwrap().is_empty());
    }

    #[test]
    fn collaboration_settings_are_bounded() {
        let many: Map<String, Value> = (0..21).map(|i| (format!("k{i}"), json!(true))).collect();
        assert!(collaboration_settings("s", &Value::Object(many)).is_err());
        assert!(collaboration_settings("s", &json!({"note": "x".repeat(4100)})).is_err());
        assert!(collaboration_settings("s", &json!({"note": "a\u{0}b"})).is_err());
        assert!(collaboration_settings("s", &json!({"deep": [{"k": "\u{0}"}]})).is_err());
        assert!(collaboration_settings("s", &json!({"roles": ["editor"]})).is_ok());
    }

    #[test]
    fn tags_are_capped() {
        let many: Vec<String> = (0..21).map(|i| format!("t{i}")).collect();
        assert!(tags("tags", &json!(many)).is_err());
        assert!(tags("tags", &json!(["x".repeat(33)])).is_err());
        assert!(tags("tags", &json!([1])).is_err());
        assert!(tags("tags", &json!("fire")).is_err());
    }

    #[test]
    fn display_orders_are_bounded_integers() {
        let order = |v: Value| member(Some(object(json!({ "display_order": v }))));
        assert_eq!(order(json!(0)).unwrap().display_order, Some(Some(0)));
        assert_eq!(
            order(json!(1_000_000)).unwrap().display_order,
            Some(Some(1_000_000))
        );
        assert_eq!(order(Value::Null).unwrap().display_order, Some(None));
        for bad in [
            json!(-1),
            json!(1_000_001),
            json!(1.5),
            json!("3"),
            json!(1e300),
        ] {
            assert!(order(bad).is_err());
        }
        assert_eq!(member(None).unwrap(), MemberFields::default());
        assert!(member(Some(object(json!({"added_at": "2020-01-01"})))).is_err());
        assert!(member(Some(object(json!({"position": 1})))).is_err());
    }

    #[test]
    fn ids_postgres_cannot_hold_are_implausible() {
        assert!(plausible_id("3f1c0e9e-8a8f-4d0c-9a53-2c8d4d1f6b7e"));
        assert!(!plausible_id(""));
        assert!(!plausible_id("a\0b"));
        assert!(!plausible_id(&"x".repeat(129)));
    }
}
