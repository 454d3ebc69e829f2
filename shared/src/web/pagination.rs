//! Cursor pagination: `?limit=&cursor=` in, `{items, next_cursor}` out.
//!
//! A cursor is the keyset position after the last item of a page (its sort
//! key and id), encoded as opaque base64url JSON. Keyset pagination is stable
//! under inserts: rows inserted while a client walks the pages never shift the
//! rows after the cursor, so nothing is returned twice or skipped.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::kernel::error::{ApiError, FieldError};

pub const DEFAULT_LIMIT: i64 = 24;
pub const MAX_LIMIT: i64 = 100;

/// A page of results.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The query of a plain cursor-paginated list: `limit` and `cursor` only;
/// unknown parameters are refused with a 422.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1 to 100 (default 24).
    #[param(minimum = 1, maximum = 100, nullable = false)]
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    #[param(nullable = false)]
    pub cursor: Option<String>,
}

/// `limit` (1..=100, default 24), validated.
pub fn limit(raw: Option<i64>) -> Result<i64, ApiError> {
    limit_field(raw).map_err(|e| ApiError::from_field_errors(vec![e]))
}

fn limit_field(raw: Option<i64>) -> Result<i64, FieldError> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(FieldError::new(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        )),
    }
}

/// `limit` and a [`TimeKey`] `cursor` for a list that validates other
/// parameters too: their problems are added to `errors`, so one 422 names
/// every invalid parameter (the defaults stand in meanwhile).
pub fn time_page(
    errors: &mut Vec<FieldError>,
    limit: Option<i64>,
    cursor: Option<&str>,
) -> (i64, Option<TimeKey>) {
    let limit = limit_field(limit)
        .map_err(|e| errors.push(e))
        .unwrap_or(DEFAULT_LIMIT);
    let after = time_key_field(cursor)
        .map_err(|e| errors.push(e))
        .ok()
        .flatten();
    (limit, after)
}

pub fn encode<K: Serialize>(key: &K) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(key).unwrap_or_default())
}

/// Decodes a cursor; anything not produced by [`encode`] for `K` is a 422.
pub fn decode<K: DeserializeOwned>(raw: Option<&str>) -> Result<Option<K>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    let invalid = || ApiError::validation("cursor", "is not a cursor this endpoint returned");
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| invalid())?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|_| invalid())
}

/// Builds a page from up to `limit + 1` fetched rows: the extra row only says
/// that another page exists.
pub fn page<T, K: Serialize>(mut rows: Vec<T>, limit: i64, key_of: impl Fn(&T) -> K) -> Page<T> {
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = if has_more {
        rows.last().map(|last| encode(&key_of(last)))
    } else {
        None
    };
    Page {
        items: rows,
        next_cursor,
    }
}

/// The usual (timestamp, id) keyset position.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TimeKey {
    pub at: chrono::DateTime<chrono::Utc>,
    pub id: String,
}

/// Decodes a [`TimeKey`] cursor. Cursors come back from clients, so a
/// well-formed but crafted one (an id no row could have, a NUL byte, a time
/// outside PostgreSQL's range) is refused like garbage, with a 422, rather
/// than failing in the database.
pub fn decode_time_key(raw: Option<&str>) -> Result<Option<TimeKey>, ApiError> {
    time_key_field(raw).map_err(|e| ApiError::from_field_errors(vec![e]))
}

fn time_key_field(raw: Option<&str>) -> Result<Option<TimeKey>, FieldError> {
    let invalid = || FieldError::new("cursor", "is not a cursor this endpoint returned");
    match decode::<TimeKey>(raw).map_err(|_| invalid())? {
        Some(k) if !plausible_position(&k.at, &k.id) => Err(invalid()),
        key => Ok(key),
    }
}

/// A time and id some row could have: an id of 1 to 200 characters without
/// control characters, a time within PostgreSQL's range.
fn plausible_position(at: &chrono::DateTime<chrono::Utc>, id: &str) -> bool {
    use chrono::Datelike;
    (1..=200).contains(&id.len())
        && !id.chars().any(char::is_control)
        && (1..=9999).contains(&at.year())
}

/// The keyset position of a list ordered by version number, then time and id
/// (a character's family, see `GET /api/v1/characters/{id}/variants`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VersionKey {
    pub version: i32,
    pub at: chrono::DateTime<chrono::Utc>,
    pub id: String,
}

/// Decodes a [`VersionKey`] cursor, refusing crafted ones as
/// [`decode_time_key`] does.
pub fn decode_version_key(raw: Option<&str>) -> Result<Option<VersionKey>, ApiError> {
    match decode::<VersionKey>(raw)? {
        Some(k) if !plausible_position(&k.at, &k.id) => Err(ApiError::validation(
            "cursor",
            "is not a cursor this endpoint returned",
        )),
        key => Ok(key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let key = TimeKey {
            at: chrono::Utc::now(),
            id: "abc".into(),
        };
        let decoded: Option<TimeKey> = decode(Some(&encode(&key))).unwrap();
        assert_eq!(decoded, Some(key));
        assert!(decode::<TimeKey>(Some("not-a-cursor")).is_err());
        assert!(decode::<TimeKey>(Some(&encode(&42))).is_err());
        assert_eq!(decode::<TimeKey>(None).unwrap(), None);
    }

    #[test]
    fn crafted_time_keys_are_refused() {
        let at = chrono::Utc::now();
        let good = encode(&TimeKey {
            at,
            id: "abc".into(),
        });
        assert!(decode_time_key(Some(&good)).unwrap().is_some());
        assert!(decode_time_key(None).unwrap().is_none());
        assert!(decode_time_key(Some("garbage!")).is_err());
        for id in ["", "a\0b", &"x".repeat(201)] {
            let crafted = encode(&TimeKey { at, id: id.into() });
            assert!(decode_time_key(Some(&crafted)).is_err(), "{id:?}");
        }
        let far = encode(&serde_json::json!({"at": "+10000-01-01T00:00:00Z", "id": "a"}));
        assert!(decode_time_key(Some(&far)).is_err());
    }

    #[test]
    fn a_time_page_reports_every_invalid_parameter() {
        let mut errors = Vec::new();
        let (limit, after) = time_page(&mut errors, Some(0), Some("garbage!"));
        assert_eq!((limit, after), (DEFAULT_LIMIT, None));
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["limit", "cursor"]);

        let mut errors = Vec::new();
        let key = TimeKey {
            at: chrono::Utc::now(),
            id: "abc".into(),
        };
        let cursor = encode(&key);
        assert_eq!(
            time_page(&mut errors, Some(5), Some(&cursor)),
            (5, Some(key))
        );
        assert!(errors.is_empty());
    }

    #[test]
    fn version_keys_round_trip_and_crafted_ones_are_refused() {
        let key = VersionKey {
            version: 3,
            at: chrono::Utc::now(),
            id: "abc".into(),
        };
        assert_eq!(
            decode_version_key(Some(&encode(&key))).unwrap(),
            Some(key.clone())
        );
        assert!(decode_version_key(None).unwrap().is_none());
        assert!(decode_version_key(Some("garbage!")).is_err());
        let time_key = TimeKey {
            at: key.at,
            id: "abc".into(),
        };
        assert!(decode_version_key(Some(&encode(&time_key))).is_err());
        for id in ["", "a\0b"] {
            let crafted = encode(&VersionKey {
                id: id.into(),
                ..key.clone()
            });
            assert!(decode_version_key(Some(&crafted)).is_err(), "{id:?}");
        }
        let far =
            encode(&serde_json::json!({"version": 1, "at": "+10000-01-01T00:00:00Z", "id": "a"}));
        assert!(decode_version_key(Some(&far)).is_err());
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(limit(None).unwrap(), DEFAULT_LIMIT);
        assert!(limit(Some(0)).is_err());
        assert!(limit(Some(101)).is_err());
    }

    #[test]
    fn the_extra_row_makes_a_cursor() {
        let p = page(vec![1, 2, 3], 2, |n| *n);
        assert_eq!(p.items, vec![1, 2]);
        assert_eq!(decode::<i32>(p.next_cursor.as_deref()).unwrap(), Some(2));
        assert!(page(vec![1, 2], 2, |n| *n).next_cursor.is_none());
    }
}
