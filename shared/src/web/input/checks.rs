//! Field checks the domains share: each takes a field's name and its decoded
//! value and returns the value to store, or an error naming the field. They
//! mirror (and tighten) the schema's CHECK constraints, so bad input is a 422,
//! never a constraint error or a 500 from the database.

use serde_json::{Map, Value};

use crate::kernel::error::{ApiError, FieldError};

pub type FieldResult<T> = Result<T, FieldError>;

/// The longest URL a field takes.
pub const MAX_URL_LEN: usize = 2048;

/// Runs a field check, collecting its error instead of stopping at the first.
pub fn check<T>(errors: &mut Vec<FieldError>, result: FieldResult<T>) -> Option<T> {
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

/// One of a fixed vocabulary, exactly (no case folding).
pub fn one_of(field: &str, raw: &str, allowed: &[&str]) -> FieldResult<String> {
    if allowed.contains(&raw) {
        Ok(raw.to_string())
    } else {
        Err(FieldError::new(
            field,
            format!("must be one of {}", allowed.join(", ")),
        ))
    }
}

/// An absolute http(s) URL of at most [`MAX_URL_LEN`] characters, normalised.
pub fn http_url(field: &str, raw: &str) -> FieldResult<String> {
    let invalid = || FieldError::new(field, "must be an absolute http(s) URL");
    if raw.len() > MAX_URL_LEN {
        return Err(FieldError::new(
            field,
            format!("must be at most {MAX_URL_LEN} characters"),
        ));
    }
    let url = url::Url::parse(raw).map_err(|_| invalid())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(invalid());
    }
    Ok(url.to_string())
}

/// Free text, trimmed, of at most `max` characters and without control
/// characters (line breaks and tabs allowed when `multiline`); blank is `None`.
pub fn text(field: &str, raw: &str, max: usize, multiline: bool) -> FieldResult<Option<String>> {
    let trimmed = raw.trim();
    if trimmed.chars().count() > max {
        return Err(FieldError::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    let bad_control = trimmed
        .chars()
        .any(|c| c.is_control() && !(multiline && matches!(c, '\n' | '\r' | '\t')));
    if bad_control {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok((!trimmed.is_empty()).then(|| trimmed.to_string()))
}

/// Text as [`text`] that must not be blank.
pub fn nonblank(field: &str, raw: &str, max: usize, multiline: bool) -> FieldResult<String> {
    text(field, raw, max, multiline)?.ok_or_else(|| FieldError::new(field, "must not be empty"))
}

/// Nullable text: `null` and blank are both `None`.
pub fn nullable_text(
    field: &str,
    raw: Option<&str>,
    max: usize,
    multiline: bool,
) -> FieldResult<Option<String>> {
    raw.map_or(Ok(None), |raw| text(field, raw, max, multiline))
}

/// At most `max_items` values, each passed through `item` (named `field[i]`),
/// duplicates dropped, order kept.
pub fn tag_list(
    field: &str,
    values: &[String],
    max_items: usize,
    item: impl Fn(&str, &str) -> FieldResult<String>,
) -> FieldResult<Vec<String>> {
    if values.len() > max_items {
        return Err(FieldError::new(
            field,
            format!("must have at most {max_items} entries"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        let value = item(&format!("{field}[{i}]"), value)?;
        if !out.contains(&value) {
            out.push(value);
        }
    }
    Ok(out)
}

/// `[a-z0-9_-]{1,32}`.
pub fn slug(field: &str, raw: &str) -> FieldResult<String> {
    let ok = (1..=32).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(raw.to_string())
    } else {
        Err(FieldError::new(
            field,
            "must be 1 to 32 lowercase letters, digits, - or _",
        ))
    }
}

/// A whole number in `min..=max` that fits an `integer` column.
pub fn whole(field: &str, value: i64, min: i64, max: i64) -> FieldResult<i32> {
    Some(value)
        .filter(|n| (min..=max).contains(n))
        .and_then(|n| i32::try_from(n).ok())
        .ok_or_else(|| {
            FieldError::new(field, format!("must be a whole number from {min} to {max}"))
        })
}

/// A JSON object of at most `max_keys` keys and `max_bytes` bytes (compact).
/// PostgreSQL's jsonb cannot store U+0000, so it is refused here rather than
/// failing the insert.
pub fn bounded_object(
    field: &str,
    object: Map<String, Value>,
    max_keys: usize,
    max_bytes: usize,
) -> FieldResult<Map<String, Value>> {
    if object.len() > max_keys {
        return Err(FieldError::new(
            field,
            format!("must have at most {max_keys} keys"),
        ));
    }
    let size = serde_json::to_vec(&object)
        .map(|bytes| bytes.len())
        .map_err(|_| FieldError::new(field, "cannot be serialized"))?;
    if size > max_bytes {
        return Err(FieldError::new(
            field,
            format!("must be at most {max_bytes} bytes as JSON"),
        ));
    }
    let nul = object
        .iter()
        .any(|(key, value)| key.contains('\0') || contains_nul(value));
    if nul {
        return Err(FieldError::new(
            field,
            "must not contain the character U+0000",
        ));
    }
    Ok(object)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_is_trimmed_bounded_and_free_of_control_characters() {
        assert_eq!(
            text("f", "  hi  ", 5, false).unwrap().as_deref(),
            Some("hi")
        );
        assert_eq!(text("f", "   ", 5, false).unwrap(), None);
        assert!(text("f", "toolong", 5, false).is_err());
        assert!(text("f", "a\nb", 5, false).is_err());
        assert!(text("f", "a\nb", 5, true).is_ok());
        assert!(nonblank("f", " ", 5, false).is_err());
    }

    #[test]
    fn whole_numbers_fit_in_an_integer_column() {
        assert_eq!(whole("n", -10, -10, 10).unwrap(), -10);
        assert!(whole("n", 11, -10, 10).is_err());
        assert!(whole("n", 3_000_000_000, 0, i64::MAX).is_err());
    }

    #[test]
    fn objects_are_bounded() {
        let object = |v: Value| v.as_object().cloned().unwrap();
        let many: Map<String, Value> = (0..21).map(|i| (format!("k{i}"), json!(true))).collect();
        assert!(bounded_object("s", many, 20, 4096).is_err());
        assert!(bounded_object("s", object(json!({"n": "x".repeat(4100)})), 20, 4096).is_err());
        assert!(bounded_object("s", object(json!({"n": "a\u{0}b"})), 20, 4096).is_err());
        assert!(bounded_object("s", object(json!({"d": [{"k": "\u{0}"}]})), 20, 4096).is_err());
        assert!(bounded_object("s", object(json!({"roles": ["editor"]})), 20, 4096).is_ok());
    }

    #[test]
    fn lists_drop_duplicates_and_name_the_bad_item() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            tag_list("t", &list(&["a", "b", "a"]), 3, slug).unwrap(),
            ["a", "b"]
        );
        assert_eq!(
            tag_list("t", &list(&["a", "B"]), 3, slug)
                .unwrap_err()
                .field,
            "t[1]"
        );
        assert!(tag_list("t", &list(&["a", "b", "c", "d"]), 3, slug).is_err());
    }
}
