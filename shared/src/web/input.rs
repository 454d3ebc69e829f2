//! Decoding request bodies strictly: read-only fields are refused by name,
//! unknown fields and wrong JSON types are 422s, and field checks collect all
//! their errors instead of stopping at the first.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::kernel::error::{ApiError, FieldError};

/// Refuses `read_only` fields by name, then decodes the rest strictly (the
/// target type should `deny_unknown_fields`).
pub fn decode_strict<T: DeserializeOwned>(
    body: Map<String, Value>,
    read_only: &[&str],
) -> Result<T, ApiError> {
    let refused: Vec<FieldError> = body
        .keys()
        .filter(|k| read_only.contains(&k.as_str()))
        .map(|k| FieldError::new(k, "is read-only and cannot be set through this route"))
        .collect();
    if !refused.is_empty() {
        return Err(ApiError::from_field_errors(refused));
    }
    serde_json::from_value(Value::Object(body))
        .map_err(|e| ApiError::validation("body", e.to_string()))
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

/// Runs a field check, collecting its error instead of stopping at the first.
pub fn check<T>(errors: &mut Vec<FieldError>, result: Result<T, FieldError>) -> Option<T> {
    result.map_err(|e| errors.push(e)).ok()
}

/// `Ok(value)` when no check failed, else a 422 listing every failure.
pub fn finish<T>(value: T, errors: Vec<FieldError>) -> Result<T, ApiError> {
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(ApiError::from_field_errors(errors))
    }
}
