//! Validation of the user-editable account and profile fields, mirroring the
//! schema's CHECK constraints so that bad input is a 422 naming the field, never
//! a constraint error (or a 500) from the database.

use std::str::FromStr;

use serde_json::{Map, Value};

use crate::kernel::error::FieldError;
use crate::web::input::checks::{FieldResult, text};

pub const LANGUAGES: [&str; 4] = ["en", "zh", "ja", "ko"];
pub const PROFILE_VISIBILITIES: [&str; 3] = ["public", "friends", "private"];
pub const CONTENT_FILTER_LEVELS: [&str; 3] = super::ContentFilterLevel::NAMES;
pub const EXPERIENCE_LEVELS: [&str; 4] = ["beginner", "intermediate", "advanced", "professional"];
pub use crate::kernel::vocabulary::STYLE_TYPES;
/// Keys of `users.notification_settings`, each a boolean.
pub const NOTIFICATION_CHANNELS: [&str; 2] = ["email", "push"];

/// `^[a-zA-Z0-9_]{3,30}$`, as `users_username_format`.
pub fn username(field: &str, raw: &str) -> FieldResult<String> {
    let ok = (3..=30).contains(&raw.len())
        && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(raw.to_string())
    } else {
        Err(FieldError::new(
            field,
            "must be 3 to 30 characters of letters, digits and underscores",
        ))
    }
}

/// `^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$`, as `users_email_format`.
pub fn email(field: &str, raw: &str) -> FieldResult<String> {
    let invalid = || FieldError::new(field, "is not an email address the platform accepts");
    let raw = raw.trim();
    if raw.len() > 254 {
        return Err(invalid());
    }
    let (local, domain) = raw.split_once('@').ok_or_else(invalid)?;
    let local_ok = !local.is_empty()
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-'));
    let (host, tld) = domain.rsplit_once('.').ok_or_else(invalid)?;
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
    let tld_ok = tld.len() >= 2 && tld.bytes().all(|b| b.is_ascii_alphabetic());
    if local_ok && host_ok && tld_ok {
        Ok(raw.to_string())
    } else {
        Err(invalid())
    }
}

/// An IANA time zone name (`Europe/Paris`), returned in its canonical spelling.
pub fn timezone(field: &str, raw: &str) -> FieldResult<String> {
    chrono_tz::Tz::from_str(raw)
        .map(|tz| tz.name().to_string())
        .map_err(|_| FieldError::new(field, "must be an IANA time zone name such as Europe/Paris"))
}

/// `{"email": true, "push": false}`: a subset of the known channels, booleans.
pub fn notification_settings(field: &str, value: &Value) -> FieldResult<Map<String, Value>> {
    let object = value
        .as_object()
        .ok_or_else(|| FieldError::new(field, "must be an object of booleans"))?;
    for (key, value) in object {
        if !NOTIFICATION_CHANNELS.contains(&key.as_str()) {
            return Err(FieldError::new(
                format!("{field}.{key}"),
                format!(
                    "is not a notification channel ({})",
                    NOTIFICATION_CHANNELS.join(", ")
                ),
            ));
        }
        if !value.is_boolean() {
            return Err(FieldError::new(
                format!("{field}.{key}"),
                "must be true or false",
            ));
        }
    }
    Ok(object.clone())
}

/// `{"twitter": "handle", ...}`: at most 10 networks named `[a-z0-9_]{1,32}`,
/// each a non-empty string of at most 200 characters.
pub fn social_links(field: &str, value: &Value) -> FieldResult<Map<String, Value>> {
    let object = value.as_object().ok_or_else(|| {
        FieldError::new(field, "must be an object of network name to handle or URL")
    })?;
    if object.len() > 10 {
        return Err(FieldError::new(field, "must name at most 10 networks"));
    }
    let mut clean = Map::new();
    for (key, value) in object {
        let key_ok = (1..=32).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !key_ok {
            return Err(FieldError::new(
                format!("{field}.{key}"),
                "network names are 1 to 32 lowercase letters, digits or underscores",
            ));
        }
        let path = format!("{field}.{key}");
        let handle = value
            .as_str()
            .ok_or_else(|| FieldError::new(&path, "must be a string"))?;
        let handle = text(&path, handle, 200, false)?
            .ok_or_else(|| FieldError::new(&path, "must not be empty"))?;
        clean.insert(key.clone(), Value::String(handle));
    }
    Ok(clean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::input::checks::{http_url, one_of, slug, tag_list};
    use serde_json::json;

    #[test]
    fn usernames_follow_the_schema_pattern() {
        assert!(username("u", "ann_42").is_ok());
        assert!(username("u", "ab").is_err());
        assert!(username("u", &"a".repeat(31)).is_err());
        assert!(username("u", "ann-42").is_err());
        assert!(username("u", "ännä").is_err());
    }

    #[test]
    fn emails_follow_the_schema_pattern() {
        assert!(email("e", "ann.lee+tag@mail.example.com").is_ok());
        assert!(email("e", "ann@localhost").is_err());
        assert!(email("e", "ann@example.c0m").is_err());
        assert!(email("e", "a@b@example.com").is_err());
        assert!(email("e", "@example.com").is_err());
        assert!(email("e", "änn@example.com").is_err());
    }

    #[test]
    fn time_zones_are_iana_names() {
        assert_eq!(timezone("tz", "Asia/Tokyo").unwrap(), "Asia/Tokyo");
        assert!(timezone("tz", "Mars/Olympus").is_err());
        assert!(timezone("tz", "").is_err());
    }

    #[test]
    fn urls_must_be_http_with_a_host() {
        assert!(http_url("u", "https://example.com/me").is_ok());
        assert!(http_url("u", "javascript:alert(1)").is_err());
        assert!(http_url("u", "ftp://example.com").is_err());
        assert!(http_url("u", "not a url").is_err());
    }

    #[test]
    fn text_is_trimmed_bounded_and_printable() {
        assert_eq!(
            text("t", "  hi  ", 10, false).unwrap().as_deref(),
            Some("hi")
        );
        assert_eq!(text("t", "   ", 10, false).unwrap(), None);
        assert!(text("t", "12345678901", 10, false).is_err());
        assert!(text("t", "a\u{0}b", 10, true).is_err());
        assert!(text("t", "a\nb", 10, false).is_err());
        assert!(text("t", "a\nb", 10, true).is_ok());
    }

    #[test]
    fn notification_settings_accept_known_boolean_channels() {
        assert!(notification_settings("n", &json!({"email": false})).is_ok());
        assert!(notification_settings("n", &json!({"sms": true})).is_err());
        assert!(notification_settings("n", &json!({"push": "yes"})).is_err());
        assert!(notification_settings("n", &json!([true])).is_err());
    }

    #[test]
    fn social_links_are_bounded() {
        assert!(social_links("s", &json!({"twitter": "ann"})).is_ok());
        assert!(social_links("s", &json!({"Twitter": "ann"})).is_err());
        assert!(social_links("s", &json!({"twitter": 5})).is_err());
        assert!(social_links("s", &json!({"twitter": ""})).is_err());
    }

    #[test]
    fn tag_lists_dedupe_and_cap() {
        let styles = vec![
            "anime".to_string(),
            "anime".to_string(),
            "comic".to_string(),
        ];
        let clean = tag_list("f", &styles, 10, |f, v| one_of(f, v, &STYLE_TYPES)).unwrap();
        assert_eq!(clean, vec!["anime", "comic"]);
        assert!(
            tag_list("f", &["watercolour".to_string()], 10, |f, v| one_of(
                f,
                v,
                &STYLE_TYPES
            ))
            .is_err()
        );
        let many: Vec<String> = (0..11).map(|i| format!("t{i}")).collect();
        assert!(tag_list("f", &many, 10, slug).is_err());
    }
}
