//! Validation of the user-settable character fields, mirroring and tightening
//! the schema's CHECK constraints so bad input is a 422 naming the field.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::kernel::error::{ApiError, FieldError};
use crate::users::fields::STYLE_TYPES;
use crate::web::input::checks::{self, check};
use crate::web::input::{RequestBody, decode, present, required_if_present};

/// Sampler names the generator accepts (AUTOMATIC1111's `sampler_name`s).
pub const SAMPLERS: [&str; 22] = [
    "Euler a",
    "Euler",
    "LMS",
    "Heun",
    "DPM2",
    "DPM2 a",
    "DPM++ 2S a",
    "DPM++ 2M",
    "DPM++ SDE",
    "DPM++ 2M SDE",
    "DPM fast",
    "DPM adaptive",
    "LMS Karras",
    "DPM2 Karras",
    "DPM2 a Karras",
    "DPM++ 2S a Karras",
    "DPM++ 2M Karras",
    "DPM++ SDE Karras",
    "DPM++ 2M SDE Karras",
    "DDIM",
    "PLMS",
    "UniPC",
];
pub const LICENSE_TYPES: [&str; 3] = ["standard", "commercial", "creative_commons"];
/// Variants a new character may declare towards its parent (the seed's, plus
/// `variation`, the job type that had no variant type to record it by).
pub const VARIANT_TYPES: [&str; 5] = [
    "variation",
    "style_transfer",
    "pose_change",
    "outfit_change",
    "expression_change",
];

pub const MAX_TAGS: usize = 20;
pub const MAX_TAG_LEN: usize = 32;
pub const MAX_COLORS: usize = 10;

/// Columns nobody sets through the API: ids, ownership, images and processing
/// (the generation pipeline's), moderation, counters and derived values.
pub const READ_ONLY: [&str; 34] = [
    "id",
    "user_id",
    "primary_image_url",
    "thumbnail_url",
    "additional_images",
    "image_metadata",
    "generation_status",
    "processing_started_at",
    "processing_completed_at",
    "processing_time_seconds",
    "error_message",
    "retry_count",
    "is_featured",
    "moderation_hidden",
    "moderation_hidden_at",
    "view_count",
    "like_count",
    "download_count",
    "share_count",
    "version_number",
    "created_at",
    "updated_at",
    "published_at",
    "rating_count",
    "rating_sum",
    "rating_average",
    "popularity",
    "open_report_count",
    "report_score",
    "moderation_reviewed_at",
    "in_gallery",
    "search_vector",
    "owner",
    "rating",
];

/// The settable fields, as validated values. `None` = not given.
#[derive(Debug, Default, Clone)]
pub struct CharacterFields {
    pub name: Option<String>,
    pub description: Option<Option<String>>,
    pub prompt: Option<String>,
    pub negative_prompt: Option<Option<String>>,
    pub style_type: Option<String>,
    pub art_style: Option<Option<String>>,
    pub mood: Option<Option<String>>,
    pub color_palette: Option<Option<Vec<String>>>,
    pub model_version: Option<String>,
    pub generation_seed: Option<Option<i32>>,
    /// In tenths (75 = 7.5), exact.
    pub cfg_scale_tenths: Option<i32>,
    pub steps: Option<i32>,
    pub sampler: Option<String>,
    pub collection_id: Option<Option<String>>,
    pub tags: Option<Vec<String>>,
    pub is_public: Option<bool>,
    pub allow_commercial_use: Option<bool>,
    pub license_type: Option<String>,
    pub parent_character_id: Option<String>,
    pub variant_type: Option<String>,
}

/// Whether the body creates a character or edits one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Create,
    Update,
}

/// Decodes and validates a create or patch body.
pub fn parse(body: Map<String, Value>, purpose: Purpose) -> Result<CharacterFields, ApiError> {
    match purpose {
        Purpose::Create => decode::<NewCharacter>(body),
        Purpose::Update => decode::<CharacterPatch>(body),
    }
}

/// A new character. Text is trimmed and may not contain control characters (multi-line
/// fields allow newlines and tabs); `name`, `description` and `prompt` are checked against
/// the caller's content filter. Read-only columns (ids, images and processing, counters,
/// ratings, timestamps, `owner`) and unknown fields are refused with a 422 naming them.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewCharacter {
    /// 1 to 100 characters.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, required = true, min_length = 1, max_length = 100)]
    name: Option<Option<String>>,
    /// The generation prompt: 1 to 2000 characters, multi-line.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, required = true, min_length = 1, max_length = 2000)]
    prompt: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(required = true, schema_with = style_type_schema)]
    style_type: Option<Option<String>>,
    /// Makes the new character a variant of this one, which must be the caller's own or
    /// a public one (else 422). Fixed at creation.
    #[serde(default)]
    parent_character_id: Option<String>,
    #[serde(default)]
    #[schema(schema_with = variant_type_schema)]
    variant_type: Option<String>,
    #[serde(flatten)]
    attributes: CharacterAttributes,
}

/// Changes to a character: only the fields sent change. Besides the read-only columns,
/// `parent_character_id` and `variant_type` are refused (a character's lineage is fixed at
/// creation).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CharacterPatch {
    /// 1 to 100 characters.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, min_length = 1, max_length = 100)]
    name: Option<Option<String>>,
    /// The generation prompt: 1 to 2000 characters, multi-line.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, min_length = 1, max_length = 2000)]
    prompt: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = style_type_schema)]
    style_type: Option<Option<String>>,
    #[serde(flatten)]
    attributes: CharacterAttributes,
}

/// The optional settable fields of a character. `null` clears the nullable ones; the
/// others may be absent but not `null`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CharacterAttributes {
    /// At most 2000 characters, multi-line.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 2000)]
    description: Option<Option<String>>,
    /// At most 2000 characters, multi-line.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 2000)]
    negative_prompt: Option<Option<String>>,
    /// At most 50 characters.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 50)]
    art_style: Option<Option<String>>,
    /// At most 50 characters.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 50)]
    mood: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = color_palette_schema)]
    color_palette: Option<Option<Vec<String>>>,
    /// 1 to 32 letters, digits, `.`, `-` or `_`.
    #[serde(default, deserialize_with = "present")]
    #[schema(
        value_type = String,
        min_length = 1,
        max_length = 32,
        pattern = "^[A-Za-z0-9._-]{1,32}$"
    )]
    model_version: Option<Option<String>>,
    /// 0 to 2147483647.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i32>, minimum = 0)]
    generation_seed: Option<Option<i64>>,
    /// 1.0 to 30.0 with at most one decimal.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = f64, minimum = 1.0, maximum = 30.0, multiple_of = 0.1)]
    cfg_scale: Option<Option<f64>>,
    /// Sampling steps, 1 to 150.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = i32, minimum = 1, maximum = 150)]
    steps: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = sampler_schema)]
    sampler: Option<Option<String>>,
    /// One of the caller's collections (else 422); the character is also filed in it.
    /// `null` takes the character out of its collection field (not out of the
    /// collection's members).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    collection_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = tags_schema)]
    tags: Option<Option<Vec<String>>>,
    /// Public characters are visible to anyone and may appear in the gallery; a suspended
    /// account cannot publish (403).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = bool)]
    is_public: Option<Option<bool>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = bool)]
    allow_commercial_use: Option<Option<bool>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = license_type_schema)]
    license_type: Option<Option<String>>,
}

impl RequestBody for NewCharacter {
    type Valid = CharacterFields;

    fn read_only(field: &str) -> bool {
        READ_ONLY.contains(&field)
    }

    fn validate(self, errors: &mut Vec<FieldError>) -> CharacterFields {
        let mut out = self.attributes.validate(errors);
        core_fields(&mut out, self.name, self.prompt, self.style_type, errors);
        for (field, missing) in [
            ("name", out.name.is_none()),
            ("prompt", out.prompt.is_none()),
            ("style_type", out.style_type.is_none()),
        ] {
            if missing {
                errors.push(FieldError::new(field, "is required"));
            }
        }
        out.parent_character_id = self.parent_character_id;
        out.variant_type = lineage(&out.parent_character_id, self.variant_type, errors);
        out
    }
}

impl RequestBody for CharacterPatch {
    type Valid = CharacterFields;

    fn read_only(field: &str) -> bool {
        // Lineage is fixed at creation.
        READ_ONLY.contains(&field) || matches!(field, "parent_character_id" | "variant_type")
    }

    fn validate(self, errors: &mut Vec<FieldError>) -> CharacterFields {
        let mut out = self.attributes.validate(errors);
        core_fields(&mut out, self.name, self.prompt, self.style_type, errors);
        out
    }
}

/// `name`, `prompt` and `style_type`: absent or a value, never `null`.
fn core_fields(
    out: &mut CharacterFields,
    name: Option<Option<String>>,
    prompt: Option<Option<String>>,
    style_type: Option<Option<String>>,
    errors: &mut Vec<FieldError>,
) {
    if let Some(name) = required_if_present("name", name, errors) {
        out.name = check(errors, checks::nonblank("name", &name, 100, false));
    }
    if let Some(prompt) = required_if_present("prompt", prompt, errors) {
        out.prompt = check(errors, checks::nonblank("prompt", &prompt, 2000, true));
    }
    if let Some(style) = required_if_present("style_type", style_type, errors) {
        out.style_type = check(errors, checks::one_of("style_type", &style, &STYLE_TYPES));
    }
}

/// A new character's variant type: none for an original, one of [`VARIANT_TYPES`] for a
/// variant.
fn lineage(
    parent: &Option<String>,
    variant_type: Option<String>,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    match (parent, variant_type.as_deref()) {
        (None, None | Some("original")) => None,
        (None, Some(_)) => {
            errors.push(FieldError::new(
                "variant_type",
                "only a variant (with parent_character_id) can have a variant type other than original",
            ));
            None
        }
        (Some(_), None) => {
            errors.push(FieldError::new(
                "variant_type",
                format!(
                    "is required for a variant: one of {}",
                    VARIANT_TYPES.join(", ")
                ),
            ));
            None
        }
        (Some(_), Some(variant)) => check(
            errors,
            checks::one_of("variant_type", variant, &VARIANT_TYPES),
        ),
    }
}

impl CharacterAttributes {
    fn validate(self, errors: &mut Vec<FieldError>) -> CharacterFields {
        let e = errors;
        let nullable_text = |e: &mut Vec<FieldError>,
                             field: &str,
                             value: Option<Option<String>>,
                             max,
                             multiline| {
            value.map(|v| {
                v.and_then(|text| check(e, checks::text(field, &text, max, multiline)).flatten())
            })
        };
        let mut out = CharacterFields {
            description: nullable_text(e, "description", self.description, 2000, true),
            negative_prompt: nullable_text(e, "negative_prompt", self.negative_prompt, 2000, true),
            art_style: nullable_text(e, "art_style", self.art_style, 50, false),
            mood: nullable_text(e, "mood", self.mood, 50, false),
            color_palette: self
                .color_palette
                .map(|v| v.and_then(|colors| check(e, color_palette(&colors)))),
            collection_id: self.collection_id,
            ..CharacterFields::default()
        };
        if let Some(version) = required_if_present("model_version", self.model_version, e) {
            out.model_version = check(e, model_version(&version));
        }
        out.generation_seed = self.generation_seed.map(|v| {
            v.and_then(|seed| {
                check(
                    e,
                    checks::whole("generation_seed", seed, 0, i32::MAX.into()),
                )
            })
        });
        if let Some(cfg) = required_if_present("cfg_scale", self.cfg_scale, e) {
            out.cfg_scale_tenths = check(e, cfg_scale_tenths(cfg));
        }
        if let Some(steps) = required_if_present("steps", self.steps, e) {
            out.steps = check(e, checks::whole("steps", steps, 1, 150));
        }
        if let Some(sampler) = required_if_present("sampler", self.sampler, e) {
            out.sampler = check(e, checks::one_of("sampler", &sampler, &SAMPLERS));
        }
        if let Some(tags) = required_if_present("tags", self.tags, e) {
            out.tags = check(e, checks::tag_list("tags", &tags, MAX_TAGS, tag));
        }
        out.is_public = required_if_present("is_public", self.is_public, e);
        out.allow_commercial_use =
            required_if_present("allow_commercial_use", self.allow_commercial_use, e);
        if let Some(license) = required_if_present("license_type", self.license_type, e) {
            out.license_type = check(e, checks::one_of("license_type", &license, &LICENSE_TYPES));
        }
        out
    }
}

/// `1.0..=30.0` with at most one decimal, as exact tenths.
pub fn cfg_scale_tenths(value: f64) -> Result<i32, FieldError> {
    let invalid = || {
        FieldError::new(
            "cfg_scale",
            "must be a number from 1.0 to 30.0 with at most one decimal",
        )
    };
    if !value.is_finite() {
        return Err(invalid());
    }
    let tenths = (value * 10.0).round();
    if (value * 10.0 - tenths).abs() > 1e-6 || !(10.0..=300.0).contains(&tenths) {
        return Err(invalid());
    }
    Ok(tenths as i32)
}

/// Colours as `#rrggbb` (or `#rgb`), lowercased; at most ten, no duplicates.
pub fn color_palette(colors: &[String]) -> Result<Vec<String>, FieldError> {
    checks::tag_list("color_palette", colors, MAX_COLORS, |field, raw| {
        let hex = raw.strip_prefix('#').unwrap_or("");
        if matches!(hex.len(), 3 | 6) && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            Ok(raw.to_ascii_lowercase())
        } else {
            Err(FieldError::new(
                field,
                "must be a hex colour such as #1e90ff",
            ))
        }
    })
}

/// A tag: trimmed, lowercased, 1 to 32 letters, digits, spaces, `-` or `_`.
pub fn tag(field: &str, raw: &str) -> Result<String, FieldError> {
    let tag = raw.trim().to_lowercase();
    let ok = (1..=MAX_TAG_LEN).contains(&tag.chars().count())
        && tag
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'));
    if ok {
        Ok(tag)
    } else {
        Err(FieldError::new(
            field,
            format!("tags are 1 to {MAX_TAG_LEN} letters, digits, spaces, - or _"),
        ))
    }
}

fn model_version(raw: &str) -> Result<String, FieldError> {
    let ok = (1..=32).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(raw.to_string())
    } else {
        Err(FieldError::new(
            "model_version",
            "must be 1 to 32 letters, digits, '.', '-' or '_'",
        ))
    }
}

fn style_type_schema() -> utoipa::openapi::Object {
    crate::web::responses::string_enum(&STYLE_TYPES, false, "The character's style type.")
}

fn variant_type_schema() -> utoipa::openapi::Object {
    let mut values = vec!["original"];
    values.extend(VARIANT_TYPES);
    crate::web::responses::string_enum(
        &values,
        true,
        "How a variant differs from its parent: required with `parent_character_id` (one \
         of the variant types), else absent, `null` or `original`.",
    )
}

fn sampler_schema() -> utoipa::openapi::Object {
    crate::web::responses::string_enum(&SAMPLERS, false, "The sampler, by its AUTOMATIC1111 name.")
}

fn license_type_schema() -> utoipa::openapi::Object {
    crate::web::responses::string_enum(
        &LICENSE_TYPES,
        false,
        "The license the character is shared under.",
    )
}

fn color_palette_schema() -> utoipa::openapi::Array {
    crate::web::responses::array_of(
        crate::web::responses::short_string(Some("^#([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$"), 7),
        MAX_COLORS,
        true,
        "Hex colours (`#1e90ff` or `#19f`), stored lowercased; at most 10, duplicates dropped.",
    )
}

fn tags_schema() -> utoipa::openapi::Array {
    crate::web::responses::array_of(
        crate::web::responses::short_string(None, MAX_TAG_LEN),
        MAX_TAGS,
        false,
        "Tags of 1 to 32 letters, digits, spaces, `-` or `_`, stored trimmed and lowercased; \
         at most 20, duplicates dropped.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn create(body: Value) -> Result<CharacterFields, ApiError> {
        parse(body.as_object().cloned().unwrap(), Purpose::Create)
    }

    fn field_of(err: ApiError) -> String {
        match err {
            ApiError::Validation { errors, .. } => errors[0].field.clone(),
            other => panic!("not a validation error: {other:?}"),
        }
    }

    #[test]
    fn a_minimal_character_is_valid() {
        let fields =
            create(json!({"name": "Aria", "prompt": "an elf archer", "style_type": "fantasy"}))
                .unwrap();
        assert_eq!(fields.name.as_deref(), Some("Aria"));
        assert_eq!(fields.variant_type, None);
    }

    #[test]
    fn cfg_scale_takes_one_decimal_in_range() {
        assert_eq!(cfg_scale_tenths(7.5).unwrap(), 75);
        assert_eq!(cfg_scale_tenths(1.0).unwrap(), 10);
        assert_eq!(cfg_scale_tenths(30.0).unwrap(), 300);
        assert!(cfg_scale_tenths(7.55).is_err());
        assert!(cfg_scale_tenths(0.9).is_err());
        assert!(cfg_scale_tenths(30.1).is_err());
        assert!(cfg_scale_tenths(f64::NAN).is_err());
    }

    #[test]
    fn every_field_is_checked() {
        let base = json!({"name": "A", "prompt": "p", "style_type": "anime"});
        for (patch, field) in [
            (json!({"style_type": "watercolour"}), "style_type"),
            (json!({"steps": 0}), "steps"),
            (json!({"steps": 151}), "steps"),
            (json!({"sampler": "Euler b"}), "sampler"),
            (json!({"generation_seed": -1}), "generation_seed"),
            (json!({"generation_seed": 4294967296u64}), "generation_seed"),
            (json!({"color_palette": ["blue"]}), "color_palette[0]"),
            (json!({"tags": ["x".repeat(33)]}), "tags[0]"),
            (json!({"license_type": "gpl"}), "license_type"),
            (json!({"name": ""}), "name"),
            (json!({"name": "x".repeat(101)}), "name"),
            (json!({"model_version": "v 1"}), "model_version"),
            (json!({"variant_type": "pose_change"}), "variant_type"),
            (json!({"like_count": 5}), "like_count"),
        ] {
            let mut body = base.clone();
            for (k, v) in patch.as_object().unwrap() {
                body[k] = v.clone();
            }
            assert_eq!(field_of(create(body).unwrap_err()), field, "{patch}");
        }
        let too_many: Vec<String> = (0..21).map(|i| format!("t{i}")).collect();
        let mut body = base.clone();
        body["tags"] = json!(too_many);
        assert_eq!(field_of(create(body).unwrap_err()), "tags");
    }

    #[test]
    fn required_fields_are_named() {
        assert_eq!(
            field_of(create(json!({"prompt": "p", "style_type": "anime"})).unwrap_err()),
            "name"
        );
    }

    #[test]
    fn lineage_is_fixed_after_creation() {
        let err = parse(
            json!({"parent_character_id": "x"})
                .as_object()
                .cloned()
                .unwrap(),
            Purpose::Update,
        )
        .unwrap_err();
        assert_eq!(field_of(err), "parent_character_id");
    }
}
