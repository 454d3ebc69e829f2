//! Fields kept as raw JSON by their body type (`Option<Value>` with
//! [`raw`]), checked one by one against a parser: the admin routes' bodies,
//! whose fields are applied onto a stored row (absent = unchanged, `null`
//! clears a nullable column). Every parser names its field.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::checks::{self, FieldResult};
use crate::kernel::error::FieldError;

/// For `Option<Value>` fields: `Some(Value::Null)` for an explicit `null`,
/// `None` for an absent field (with `#[serde(default, deserialize_with = "raw")]`).
pub fn raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// A non-nullable field: `Some(value)` when present and valid, `None` when
/// absent or invalid (the error is recorded).
pub fn value<T>(
    errors: &mut Vec<FieldError>,
    name: &str,
    raw: Option<Value>,
    parse: impl FnOnce(&str, &Value) -> FieldResult<T>,
) -> Option<T> {
    match raw {
        None => None,
        Some(Value::Null) => {
            errors.push(FieldError::new(name, "cannot be null"));
            None
        }
        Some(value) => checks::check(errors, parse(name, &value)),
    }
}

/// A nullable field: `Some(None)` for an explicit `null`, `Some(Some(v))`
/// when valid, `None` when absent or invalid (the error is recorded).
pub fn nullable<T>(
    errors: &mut Vec<FieldError>,
    name: &str,
    raw: Option<Value>,
    parse: impl FnOnce(&str, &Value) -> FieldResult<T>,
) -> Option<Option<T>> {
    match raw {
        None => None,
        Some(Value::Null) => Some(None),
        Some(value) => checks::check(errors, parse(name, &value)).map(Some),
    }
}

/// Sets `slot` when the field was given (and valid).
pub fn set<T>(slot: &mut T, given: Option<T>) {
    if let Some(value) = given {
        *slot = value;
    }
}

/// Records that a field the operation needs is absent.
pub fn require(errors: &mut Vec<FieldError>, name: &str, raw: &Option<Value>) {
    if raw.is_none() {
        errors.push(FieldError::new(name, "is required"));
    }
}

/// A whole number in `min..=max` (`5.0` is not one).
pub fn whole(min: i64, max: i64) -> impl FnOnce(&str, &Value) -> FieldResult<i32> {
    move |field, value| {
        let invalid =
            || FieldError::new(field, format!("must be a whole number from {min} to {max}"));
        checks::whole(field, value.as_i64().ok_or_else(invalid)?, min, max)
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
    move |field, value| checks::one_of(field, string(field, value)?, allowed)
}

/// Free text as [`checks::text`]; blank reads as `None`.
pub fn text(
    max: usize,
    multiline: bool,
) -> impl FnOnce(&str, &Value) -> FieldResult<Option<String>> {
    move |field, value| checks::text(field, string(field, value)?, max, multiline)
}

/// Text that must not be blank.
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

    #[test]
    fn absent_null_and_bad_values_are_told_apart() {
        let mut errors = Vec::new();
        assert_eq!(
            value(&mut errors, "a", Some(json!(5.0)), whole(0, 10)),
            None
        );
        assert_eq!(
            value(&mut errors, "b", Some(Value::Null), whole(0, 10)),
            None
        );
        assert_eq!(
            nullable(&mut errors, "c", Some(Value::Null), whole(0, 10)),
            Some(None)
        );
        assert_eq!(
            value(&mut errors, "d", Some(json!(7)), whole(0, 10)),
            Some(7)
        );
        assert_eq!(value(&mut errors, "e", Some(json!("x")), boolean), None);
        assert_eq!(value(&mut errors, "zz", None, boolean), None);
        let names: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(names, vec!["a", "b", "e"]);
    }

    #[test]
    fn whole_numbers_fit_in_an_integer_column() {
        assert!(whole(-10, 10)("n", &json!(-10)).is_ok());
        assert!(whole(-10, 10)("n", &json!(11)).is_err());
        assert!(whole(0, i64::MAX)("n", &json!(3_000_000_000_i64)).is_err());
        assert!(whole(0, 10)("n", &json!("3")).is_err());
    }
}
