//! Field-by-field decoding of admin request bodies: every error names its
//! field (a wrong JSON type included), read-only and unknown fields are
//! refused by name, and all failures are reported at once.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::kernel::error::{ApiError, FieldError};

pub type FieldResult<T> = Result<T, FieldError>;

/// A JSON object body being checked.
pub struct Fields {
    map: Map<String, Value>,
    errors: Vec<FieldError>,
}

impl Fields {
    /// Refuses read-only and unknown fields, naming each.
    pub fn new(
        map: Map<String, Value>,
        known: &[&str],
        read_only: &[&str],
        what: &str,
    ) -> Result<Self, ApiError> {
        let refused: Vec<FieldError> = map
            .keys()
            .filter_map(|key| {
                if read_only.contains(&key.as_str()) {
                    Some(FieldError::new(
                        key,
                        "is read-only and cannot be set through this route",
                    ))
                } else if !known.contains(&key.as_str()) {
                    Some(FieldError::new(key, format!("is not a field of {what}")))
                } else {
                    None
                }
            })
            .collect();
        if !refused.is_empty() {
            return Err(ApiError::from_field_errors(refused));
        }
        Ok(Self {
            map,
            errors: Vec::new(),
        })
    }

    /// Whether the body mentions `name` at all.
    pub fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Records that a field the operation needs is absent.
    pub fn require(&mut self, name: &str) {
        if !self.has(name) {
            self.errors.push(FieldError::new(name, "is required"));
        }
    }

    /// Records an error found by a check across fields.
    pub fn error(&mut self, error: FieldError) {
        self.errors.push(error);
    }

    /// Whether an error naming `name` was recorded already.
    pub fn has_error(&self, name: &str) -> bool {
        self.errors.iter().any(|e| e.field == name)
    }

    /// A non-nullable field: `Some(value)` when present and valid, `None`
    /// when absent or invalid (the error is recorded).
    pub fn value<T>(
        &mut self,
        name: &str,
        parse: impl FnOnce(&str, &Value) -> FieldResult<T>,
    ) -> Option<T> {
        match self.map.get(name) {
            None => None,
            Some(Value::Null) => {
                self.errors.push(FieldError::new(name, "cannot be null"));
                None
            }
            Some(value) => parse(name, value).map_err(|e| self.errors.push(e)).ok(),
        }
    }

    /// A nullable field: `Some(None)` for an explicit `null`, `Some(Some(v))`
    /// when valid, `None` when absent or invalid (the error is recorded).
    pub fn nullable<T>(
        &mut self,
        name: &str,
        parse: impl FnOnce(&str, &Value) -> FieldResult<T>,
    ) -> Option<Option<T>> {
        match self.map.get(name) {
            None => None,
            Some(Value::Null) => Some(None),
            Some(value) => parse(name, value)
                .map(Some)
                .map_err(|e| self.errors.push(e))
                .ok(),
        }
    }

    /// `Ok(value)` when every check passed, else a 422 listing every failure.
    pub fn finish<T>(self, value: T) -> Result<T, ApiError> {
        crate::web::input::finish(value, self.errors)
    }
}

/// Sets `slot` when the field was given (and valid).
pub fn set<T>(slot: &mut T, given: Option<T>) {
    if let Some(value) = given {
        *slot = value;
    }
}

/// A whole number in `min..=max` (`5.0` is not one).
pub fn whole(min: i64, max: i64) -> impl FnOnce(&str, &Value) -> FieldResult<i32> {
    move |field, value| {
        value
            .as_i64()
            .filter(|n| (min..=max).contains(n))
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| {
                FieldError::new(field, format!("must be a whole number from {min} to {max}"))
            })
    }
}

pub fn boolean(field: &str, value: &Value) -> FieldResult<bool> {
    value
        .as_bool()
        .ok_or_else(|| FieldError::new(field, "must be true or false"))
}

pub fn string<'v>(field: &str, value: &'v Value) -> FieldResult<&'v str> {
    value
        .as_str()
        .ok_or_else(|| FieldError::new(field, "must be a string"))
}

pub fn one_of<'a>(allowed: &'a [&'a str]) -> impl FnOnce(&str, &Value) -> FieldResult<String> + 'a {
    move |field, value| {
        let raw = string(field, value)?;
        crate::users::fields::one_of(field, raw, allowed)
    }
}

/// Free text of at most `max` characters, trimmed, no control characters
/// (line breaks allowed when `multiline`); empty reads as `None`.
pub fn text(
    max: usize,
    multiline: bool,
) -> impl FnOnce(&str, &Value) -> FieldResult<Option<String>> {
    move |field, value| {
        let raw = string(field, value)?;
        crate::users::fields::text(field, raw, max, multiline)
    }
}

/// Text that must not be empty.
pub fn required_text(
    max: usize,
    multiline: bool,
) -> impl FnOnce(&str, &Value) -> FieldResult<String> {
    move |field, value| {
        text(max, multiline)(field, value)?
            .ok_or_else(|| FieldError::new(field, format!("must be 1 to {max} characters")))
    }
}

/// An RFC 3339 instant (`2026-05-01T00:00:00Z`).
pub fn timestamp(field: &str, value: &Value) -> FieldResult<DateTime<Utc>> {
    let raw = string(field, value)?;
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            FieldError::new(
                field,
                "must be an RFC 3339 date-time such as 2026-05-01T00:00:00Z",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    #[test]
    fn read_only_and_unknown_fields_are_named() {
        let err = Fields::new(
            body(json!({"id": "x", "colour": 1, "name": "n"})),
            &["name"],
            &["id"],
            "a thing",
        )
        .err()
        .unwrap();
        match err {
            ApiError::Validation { errors, .. } => {
                let names: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
                assert_eq!(names, vec!["colour", "id"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn types_and_ranges_are_checked_per_field() {
        let mut f = Fields::new(
            body(json!({"a": 5.0, "b": null, "c": null, "d": 7, "e": "x"})),
            &["a", "b", "c", "d", "e"],
            &[],
            "a thing",
        )
        .unwrap();
        assert_eq!(f.value("a", whole(0, 10)), None);
        assert_eq!(f.value("b", whole(0, 10)), None);
        assert_eq!(f.nullable("c", whole(0, 10)), Some(None));
        assert_eq!(f.value("d", whole(0, 10)), Some(7));
        assert_eq!(f.value("e", boolean), None);
        assert_eq!(f.value("zz", boolean), None);
        match f.finish(()).err().unwrap() {
            ApiError::Validation { errors, .. } => {
                let names: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
                assert_eq!(names, vec!["a", "b", "e"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn whole_numbers_fit_in_an_integer_column() {
        assert!(whole(-10, 10)("n", &json!(-10)).is_ok());
        assert!(whole(-10, 10)("n", &json!(11)).is_err());
        assert!(whole(0, i64::MAX)("n", &json!(3_000_000_000_i64)).is_err());
        assert!(whole(0, 10)("n", &json!("3")).is_err());
    }
}
