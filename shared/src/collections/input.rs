//! Decoding and validation of collection and membership bodies.
//!
//! Each body type is its decoder and its OpenAPI schema ([`crate::web::input`]):
//! every problem (a wrong type, a read-only or unknown field included) is a 422
//! naming its field, and every value that reaches SQL already satisfies the
//! schema: bad input never becomes a constraint error or a 500.

use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::kernel::error::{ApiError, FieldError};
use crate::web::input::checks::{self, check};
use crate::web::input::{RequestBody, decode, present, required_if_present};

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
    decode::<NewCollection>(body)
}

/// The body of `PATCH /collections/{id}`: every field optional.
pub fn collection_patch(body: Map<String, Value>) -> Result<CollectionFields, ApiError> {
    decode::<CollectionPatch>(body)
}

/// The optional body of `PUT /collections/{id}/characters/{character_id}`.
/// `display_order`: `None` keeps it (or leaves a new member unordered),
/// `Some(None)` clears it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemberFields {
    pub display_order: Option<Option<i32>>,
}

pub fn member(body: Option<Map<String, Value>>) -> Result<MemberFields, ApiError> {
    match body {
        None => Ok(MemberFields::default()),
        Some(body) => decode::<MemberPatch>(body),
    }
}

/// Ids are text; ones PostgreSQL cannot hold (U+0000) or absurdly long ones
/// name nothing, so they are a 404 before any query.
pub fn plausible_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && !id.contains('\0')
}

/// A new collection. Text is trimmed and may not contain control characters. Read-only
/// columns (`id`, `user_id`, `character_count`, `total_views`, `total_likes`, timestamps)
/// and unknown fields are refused with a 422 naming them.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewCollection {
    /// 1 to 100 characters.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, required = true, min_length = 1, max_length = 100)]
    name: Option<Option<String>>,
    #[serde(flatten)]
    attributes: CollectionAttributes,
}

/// Changes to a collection: only the fields sent change; `{}` changes nothing (not even
/// `updated_at`). Read-only and unknown fields are refused as on creation.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CollectionPatch {
    /// 1 to 100 characters; not `null`.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, min_length = 1, max_length = 100)]
    name: Option<Option<String>>,
    #[serde(flatten)]
    attributes: CollectionAttributes,
}

/// The optional settable fields of a collection.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CollectionAttributes {
    /// At most 2000 characters, multi-line; `null` or blank clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 2000)]
    description: Option<Option<String>>,
    /// An absolute http(s) URL of at most 2048 characters; `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = "uri", max_length = 2048)]
    cover_image_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = tags_schema)]
    tags: Option<Option<Vec<String>>>,
    /// At most 50 characters; `null` or blank clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 50)]
    category: Option<Option<String>>,
    /// At most 50 characters; `null` or blank clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 50)]
    theme: Option<Option<String>>,
    /// Public collections are visible to anyone (default false).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = bool)]
    is_public: Option<Option<bool>>,
    /// Default false.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = bool)]
    allow_collaboration: Option<Option<bool>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = collaboration_settings_schema)]
    collaboration_settings: Option<Option<Map<String, Value>>>,
}

/// The optional body of `PUT /api/v1/collections/{id}/characters/{character_id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberPatch {
    /// The member's place in the collection's order, 0 to 1000000; `null` makes it
    /// unordered (listed after the ordered ones). Absent: a new member is unordered and an
    /// existing one keeps its place.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i32>, minimum = 0, maximum = 1_000_000)]
    display_order: Option<Option<i64>>,
}

impl RequestBody for NewCollection {
    type Valid = CollectionFields;

    fn read_only(field: &str) -> bool {
        READ_ONLY_COLLECTION_FIELDS.contains(&field)
    }

    fn validate(self, errors: &mut Vec<FieldError>) -> CollectionFields {
        let mut fields = self.attributes.validate(errors);
        fields.name = name(self.name, errors);
        if fields.name.is_none() {
            errors.push(FieldError::new("name", "is required"));
        }
        fields
    }
}

impl RequestBody for CollectionPatch {
    type Valid = CollectionFields;

    fn read_only(field: &str) -> bool {
        READ_ONLY_COLLECTION_FIELDS.contains(&field)
    }

    fn validate(self, errors: &mut Vec<FieldError>) -> CollectionFields {
        let mut fields = self.attributes.validate(errors);
        fields.name = name(self.name, errors);
        fields
    }
}

fn name(value: Option<Option<String>>, errors: &mut Vec<FieldError>) -> Option<String> {
    required_if_present("name", value, errors).and_then(|name| {
        check(
            errors,
            checks::nonblank("name", &name, MAX_NAME_CHARS, false),
        )
    })
}

impl CollectionAttributes {
    fn validate(self, errors: &mut Vec<FieldError>) -> CollectionFields {
        let text =
            |errors: &mut Vec<FieldError>, field, value: Option<Option<String>>, max, multiline| {
                value.map(|v| {
                    check(
                        errors,
                        checks::nullable_text(field, v.as_deref(), max, multiline),
                    )
                    .flatten()
                })
            };
        CollectionFields {
            name: None,
            description: text(
                errors,
                "description",
                self.description,
                MAX_DESCRIPTION_CHARS,
                true,
            ),
            category: text(errors, "category", self.category, MAX_LABEL_CHARS, false),
            theme: text(errors, "theme", self.theme, MAX_LABEL_CHARS, false),
            cover_image_url: self.cover_image_url.map(|url| {
                url.and_then(|url| check(errors, checks::http_url("cover_image_url", &url)))
            }),
            // `null` clears the list or the settings to their empty default.
            tags: self.tags.map(|tags| {
                check(
                    errors,
                    checks::tag_list("tags", &tags.unwrap_or_default(), MAX_TAGS, checks::slug),
                )
                .unwrap_or_default()
            }),
            is_public: required_if_present("is_public", self.is_public, errors),
            allow_collaboration: required_if_present(
                "allow_collaboration",
                self.allow_collaboration,
                errors,
            ),
            collaboration_settings: self.collaboration_settings.map(|settings| {
                check(
                    errors,
                    checks::bounded_object(
                        "collaboration_settings",
                        settings.unwrap_or_default(),
                        MAX_SETTINGS_KEYS,
                        MAX_SETTINGS_BYTES,
                    ),
                )
                .unwrap_or_default()
            }),
        }
    }
}

impl RequestBody for MemberPatch {
    type Valid = MemberFields;

    fn read_only(field: &str) -> bool {
        READ_ONLY_MEMBER_FIELDS.contains(&field)
    }

    fn validate(self, errors: &mut Vec<FieldError>) -> MemberFields {
        let invalid = || {
            FieldError::new(
                "display_order",
                format!("must be an integer from 0 to {MAX_DISPLAY_ORDER}, or null"),
            )
        };
        let display_order = self.display_order.map(|order| {
            order.and_then(|n| {
                let valid = Some(n)
                    .filter(|n| (0..=MAX_DISPLAY_ORDER).contains(n))
                    .and_then(|n| i32::try_from(n).ok())
                    .ok_or_else(invalid);
                check(errors, valid)
            })
        });
        MemberFields { display_order }
    }
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
    fn read_only_fields_are_refused_by_name_with_the_rest() {
        let err = collection_patch(object(json!({"character_count": 5, "name": 7}))).unwrap_err();
        assert_eq!(fields_of(err), ["character_count", "name"]);
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
        let settings = |v: Value| collection_patch(object(json!({ "collaboration_settings": v })));
        let many: Map<String, Value> = (0..21).map(|i| (format!("k{i}"), json!(true))).collect();
        assert!(settings(Value::Object(many)).is_err());
        assert!(settings(json!({"note": "x".repeat(4100)})).is_err());
        assert!(settings(json!({"note": "a\u{0}b"})).is_err());
        assert!(settings(json!({"deep": [{"k": "\u{0}"}]})).is_err());
        assert!(settings(json!({"roles": ["editor"]})).is_ok());
    }

    #[test]
    fn tags_are_capped() {
        let tags = |v: Value| collection_patch(object(json!({ "tags": v })));
        let many: Vec<String> = (0..21).map(|i| format!("t{i}")).collect();
        assert!(tags(json!(many)).is_err());
        assert!(tags(json!(["x".repeat(33)])).is_err());
        assert_eq!(fields_of(tags(json!([1])).unwrap_err()), ["tags[0]"]);
        assert!(tags(json!("fire")).is_err());
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
