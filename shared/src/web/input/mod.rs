//! The one way request bodies are read.
//!
//! A request body's type is both its decoder (`serde::Deserialize`) and its
//! OpenAPI schema (`utoipa::ToSchema`), and implements [`RequestBody`]. The
//! schema says which fields exist and which JSON types each takes; [`decode`]
//! holds every body to it, then runs the type's own checks, and reports every
//! problem of the body at once, each naming its field:
//!
//! - a read-only field (one the client sees in answers but never sets):
//!   "is read-only and cannot be set through this route";
//! - a field the schema does not have: "is not a field of this request";
//! - a value of the wrong JSON type: "must be a string", "must be a whole
//!   number or null", ... (`5.0` is not a whole number, `"5"` not a number);
//! - whatever [`RequestBody::validate`] finds (ranges, formats, vocabularies).
//!
//! [`checks`] holds the field checks the domains share. Nothing here knows a
//! domain: domains import this module, never the other way round.

pub mod checks;
pub mod spec;
pub mod values;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::kernel::error::{ApiError, FieldError};
use spec::BodySpec;

pub use checks::{check, finish};

/// The message of a read-only field, the same on every route.
pub const READ_ONLY: &str = "is read-only and cannot be set through this route";
/// The message of a field the body's schema does not have.
pub const UNKNOWN: &str = "is not a field of this request";

/// A request body: decoded by serde, described by utoipa, checked by `validate`.
pub trait RequestBody: DeserializeOwned + utoipa::ToSchema + 'static {
    /// What the body is once every check passed.
    type Valid;

    /// Whether `field` is one a client sees in answers but may never set here.
    fn read_only(field: &str) -> bool {
        let _ = field;
        false
    }

    /// The type's own checks, pushing one error per bad field. What it returns
    /// is used only when no error was pushed (by it or by the decoding before).
    fn validate(self, errors: &mut Vec<FieldError>) -> Self::Valid;
}

/// Decodes and checks a body, reporting all of its problems at once.
pub fn decode<T: RequestBody>(body: Map<String, Value>) -> Result<T::Valid, ApiError> {
    decode_with::<T, _>(body, |valid, _| valid)
}

/// As [`decode`], then `then` checks what needs more than the body (the caller's
/// tier, a setting, the stored row being changed), adding to the same errors,
/// so that every problem is still reported at once.
pub fn decode_with<T: RequestBody, V>(
    body: Map<String, Value>,
    then: impl FnOnce(T::Valid, &mut Vec<FieldError>) -> V,
) -> Result<V, ApiError> {
    let mut errors = Vec::new();
    let screened = screen::<T>(body, &mut errors);
    let raw: T = match serde_path_to_error::deserialize(Value::Object(screened)) {
        Ok(raw) => raw,
        Err(error) => {
            let field = error.path().to_string();
            let field = if field == "." || field.is_empty() {
                "body".to_string()
            } else {
                field
            };
            errors.push(FieldError::new(field, error.into_inner().to_string()));
            return Err(ApiError::from_field_errors(errors));
        }
    };
    let valid = raw.validate(&mut errors);
    let out = then(valid, &mut errors);
    finish(out, first_per_field(errors))
}

/// The body without the fields that are refused (read-only, unknown, of the
/// wrong JSON type), each recorded as an error, so that the rest can still be
/// decoded and checked.
fn screen<T: RequestBody>(
    body: Map<String, Value>,
    errors: &mut Vec<FieldError>,
) -> Map<String, Value> {
    let spec = BodySpec::of::<T>();
    let mut kept = Map::new();
    for (key, value) in body {
        if T::read_only(&key) {
            errors.push(FieldError::new(&key, READ_ONLY));
            continue;
        }
        let Some(field) = spec.fields.get(&key) else {
            errors.push(FieldError::new(&key, UNKNOWN));
            continue;
        };
        if let Err((suffix, message)) = field.check(&value) {
            errors.push(FieldError::new(format!("{key}{suffix}"), message));
            continue;
        }
        kept.insert(key, value);
    }
    kept
}

/// One error per field: a field refused while screening is absent afterwards,
/// and a check may then call it missing too; the first word stands.
fn first_per_field(errors: Vec<FieldError>) -> Vec<FieldError> {
    let mut out: Vec<FieldError> = Vec::with_capacity(errors.len());
    for error in errors {
        let base = base_field(&error.field);
        if !out.iter().any(|e| base_field(&e.field) == base) {
            out.push(error);
        }
    }
    out
}

fn base_field(field: &str) -> &str {
    field.split(['[', '.']).next().unwrap_or(field)
}

/// An optional JSON body: `None` when there is none (empty or blank), else the
/// object it holds. A body that is not sent as JSON is a 415, one that is not a
/// JSON object a 400.
pub fn optional_body(
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<Option<Map<String, Value>>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            let v = v.trim();
            v.eq_ignore_ascii_case("application/json")
                || (v.len() > 5 && v[..v.len() - 5].contains('/') && v.ends_with("+json"))
        });
    if !json {
        return Err(ApiError::UnsupportedMediaType(
            "send the body as `Content-Type: application/json`".into(),
        ));
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| ApiError::BadRequest(format!("the body is not a JSON object: {e}")))
}

/// Decodes a query string as bodies are decoded: a parameter `T` does not
/// document is named ([`UNKNOWN`]), and a value that cannot be read names its
/// parameter; every unknown parameter is reported at once.
pub fn decode_query<T: DeserializeOwned + utoipa::IntoParams + 'static>(
    raw: &str,
) -> Result<T, ApiError> {
    let known = spec::memo::<T, Vec<String>>(|| {
        T::into_params(|| Some(utoipa::openapi::path::ParameterIn::Query))
            .into_iter()
            .map(|parameter| parameter.name)
            .collect()
    });
    let mut errors: Vec<FieldError> = Vec::new();
    for (key, _) in form_urlencoded::parse(raw.as_bytes()) {
        if !known.iter().any(|name| *name == key) && !errors.iter().any(|e| e.field == key) {
            errors.push(FieldError::new(key.as_ref(), UNKNOWN));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::from_field_errors(errors));
    }
    let parameters = serde_urlencoded::Deserializer::new(form_urlencoded::parse(raw.as_bytes()));
    serde_path_to_error::deserialize(parameters).map_err(|error| {
        let field = error.path().to_string();
        let field = if field == "." || field.is_empty() {
            "query".to_string()
        } else {
            field
        };
        ApiError::validation(&field, error.into_inner().to_string())
    })
}

/// For `Option<Option<T>>` fields: `Some(None)` for an explicit `null`, `None`
/// for an absent field (with `#[serde(default, deserialize_with = "present")]`).
pub fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A field that may be absent but not `null` (its column keeps a value).
pub fn required_if_present<T>(
    field: &str,
    value: Option<Option<T>>,
    errors: &mut Vec<FieldError>,
) -> Option<T> {
    match value {
        Some(None) => {
            errors.push(FieldError::new(field, "cannot be null"));
            None
        }
        Some(Some(v)) => Some(v),
        None => None,
    }
}

/// A field the body must have: its value, or an "is required" error.
pub fn required<T>(field: &str, value: Option<T>, errors: &mut Vec<FieldError>) -> Option<T> {
    if value.is_none() {
        errors.push(FieldError::new(field, "is required"));
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A test body: `count` 1 to 10, `note` optional text, `id` read-only.
    #[derive(serde::Deserialize, utoipa::ToSchema)]
    struct Sample {
        count: Option<i32>,
        note: Option<String>,
        #[serde(default)]
        tags: Vec<String>,
    }

    impl RequestBody for Sample {
        type Valid = (i32, Option<String>, Vec<String>);

        fn read_only(field: &str) -> bool {
            field == "id"
        }

        fn validate(self, errors: &mut Vec<FieldError>) -> Self::Valid {
            let count = required("count", self.count, errors).unwrap_or_default();
            if !(1..=10).contains(&count) {
                errors.push(FieldError::new("count", "must be from 1 to 10"));
            }
            (count, self.note, self.tags)
        }
    }

    fn body(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    fn problems(value: Value) -> Vec<(String, String)> {
        match decode::<Sample>(body(value)) {
            Err(ApiError::Validation { errors, .. }) => {
                errors.into_iter().map(|e| (e.field, e.message)).collect()
            }
            other => panic!("not a validation error: {other:?}"),
        }
    }

    #[test]
    fn a_good_body_decodes_and_validates() {
        let got = decode::<Sample>(body(json!({"count": 3, "tags": ["a"]}))).unwrap();
        assert_eq!(got, (3, None, vec!["a".to_string()]));
    }

    #[test]
    fn every_problem_is_named_at_once() {
        let got = problems(json!({
            "id": "x", "colour": "blue", "note": 5, "tags": ["a", 1], "count": 11
        }));
        let named: Vec<(&str, &str)> = got.iter().map(|(f, m)| (f.as_str(), m.as_str())).collect();
        assert_eq!(
            named,
            [
                ("colour", UNKNOWN),
                ("id", READ_ONLY),
                ("note", "must be a string or null"),
                ("tags[1]", "must be a string"),
                ("count", "must be from 1 to 10"),
            ]
        );
    }

    #[test]
    fn a_mistyped_field_is_not_also_called_missing() {
        let got = problems(json!({"count": "3"}));
        assert_eq!(
            got,
            [(
                "count".to_string(),
                "must be a whole number or null".to_string()
            )]
        );
        let got = problems(json!({"count": 2.0}));
        assert_eq!(got.len(), 1);
        let got = problems(json!({}));
        assert_eq!(got, [("count".to_string(), "is required".to_string())]);
    }

    /// Query parameters of a test route.
    #[derive(Debug, serde::Deserialize, utoipa::IntoParams, PartialEq)]
    #[serde(deny_unknown_fields)]
    #[into_params(parameter_in = Query)]
    struct Params {
        limit: Option<i64>,
        cursor: Option<String>,
    }

    #[test]
    fn query_parameters_are_named_like_body_fields() {
        let got: Params = decode_query("limit=5&cursor=abc").unwrap();
        assert_eq!(got.limit, Some(5));
        let named = |raw: &str| match decode_query::<Params>(raw) {
            Err(ApiError::Validation { errors, .. }) => errors
                .into_iter()
                .map(|e| (e.field, e.message))
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            named("colour=red&limit=5&size=2&colour=blue"),
            [
                ("colour".to_string(), UNKNOWN.to_string()),
                ("size".to_string(), UNKNOWN.to_string())
            ]
        );
        assert_eq!(named("limit=lots")[0].0, "limit");
    }

    #[test]
    fn a_value_serde_cannot_hold_names_its_field() {
        let got = problems(json!({"count": 4_294_967_297_i64}));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "count");
    }
}
