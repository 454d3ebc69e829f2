//! Request bodies of the social routes, decoded strictly: read-only columns are
//! refused by name, unknown fields are refused, and every field is checked
//! against the schema's constraints so that bad input is a 422 naming the
//! field, never a constraint error from the database. All problems of a body
//! are reported together.

use serde_json::{Map, Value};

use crate::kernel::error::{ApiError, FieldError};
use crate::users::fields;

/// `content_reports.reason` values (its CHECK constraint).
pub const REPORT_REASONS: [&str; 8] = [
    "spam",
    "sexual_content",
    "violence",
    "hate",
    "harassment",
    "copyright",
    "minor_safety",
    "other",
];

pub const MAX_REVIEW_CHARS: usize = 2000;
/// As `content_reports.details`' CHECK constraint.
pub const MAX_REPORT_DETAILS_CHARS: usize = 2000;

/// Columns of `character_ratings` (and the aggregate answered beside a rating)
/// that a client sees but never sets.
const RATING_READ_ONLY: [&str; 7] = [
    "id",
    "character_id",
    "user_id",
    "created_at",
    "updated_at",
    "rating_count",
    "rating_average",
];
const RATING_FIELDS: [&str; 2] = ["rating", "review_text"];

/// Columns of `content_reports` that only the platform or a moderator sets.
const REPORT_READ_ONLY: [&str; 9] = [
    "id",
    "character_id",
    "reporter_id",
    "status",
    "resolution_note",
    "resolved_by",
    "resolved_at",
    "created_at",
    "updated_at",
];
const REPORT_FIELDS: [&str; 2] = ["reason", "details"];

/// A validated `PUT /characters/{id}/rating` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RatingInput {
    pub rating: i32,
    /// Trimmed; an empty review is no review.
    pub review_text: Option<String>,
}

/// A validated `POST /characters/{id}/reports` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportInput {
    pub reason: String,
    pub details: Option<String>,
}

impl RatingInput {
    pub fn from_body(body: &Map<String, Value>) -> Result<Self, ApiError> {
        let mut errors = foreign_fields(body, &RATING_READ_ONLY, &RATING_FIELDS);
        let rating = collect(&mut errors, rating("rating", body.get("rating")));
        let review_text = collect(
            &mut errors,
            optional_text("review_text", body.get("review_text"), MAX_REVIEW_CHARS),
        );
        match (rating, review_text) {
            (Some(rating), Some(review_text)) if errors.is_empty() => Ok(Self {
                rating,
                review_text,
            }),
            _ => Err(ApiError::from_field_errors(errors)),
        }
    }
}

impl ReportInput {
    pub fn from_body(body: &Map<String, Value>) -> Result<Self, ApiError> {
        let mut errors = foreign_fields(body, &REPORT_READ_ONLY, &REPORT_FIELDS);
        let reason = collect(&mut errors, reason("reason", body.get("reason")));
        let details = collect(
            &mut errors,
            optional_text("details", body.get("details"), MAX_REPORT_DETAILS_CHARS),
        );
        match (reason, details) {
            (Some(reason), Some(details)) if errors.is_empty() => Ok(Self { reason, details }),
            _ => Err(ApiError::from_field_errors(errors)),
        }
    }
}

fn collect<T>(errors: &mut Vec<FieldError>, result: Result<T, FieldError>) -> Option<T> {
    result.map_err(|e| errors.push(e)).ok()
}

/// Read-only fields, named as such, and fields the route does not know.
fn foreign_fields(
    body: &Map<String, Value>,
    read_only: &[&str],
    allowed: &[&str],
) -> Vec<FieldError> {
    body.keys()
        .filter_map(|key| {
            if read_only.contains(&key.as_str()) {
                Some(FieldError::new(
                    key,
                    "is read-only and cannot be set through this route",
                ))
            } else if allowed.contains(&key.as_str()) {
                None
            } else {
                Some(FieldError::new(
                    key,
                    format!("is not a field of this request ({})", allowed.join(", ")),
                ))
            }
        })
        .collect()
}

/// A whole number of stars, 1 to 5: `2.5`, `5.0` and `"5"` are refused rather
/// than rounded or coerced.
fn rating(field: &str, value: Option<&Value>) -> Result<i32, FieldError> {
    let invalid = || FieldError::new(field, "must be a whole number from 1 to 5");
    match value {
        None | Some(Value::Null) => Err(FieldError::new(
            field,
            "is required: a whole number from 1 to 5",
        )),
        Some(Value::Number(n)) => n
            .as_i64()
            .filter(|n| (1..=5).contains(n))
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(invalid),
        Some(_) => Err(invalid()),
    }
}

fn reason(field: &str, value: Option<&Value>) -> Result<String, FieldError> {
    match value {
        None | Some(Value::Null) => Err(FieldError::new(
            field,
            format!("is required: one of {}", REPORT_REASONS.join(", ")),
        )),
        Some(Value::String(raw)) => fields::one_of(field, raw, &REPORT_REASONS),
        Some(_) => Err(FieldError::new(
            field,
            format!("must be one of {}", REPORT_REASONS.join(", ")),
        )),
    }
}

/// Optional multi-line text; absent, `null` and blank all mean none.
fn optional_text(
    field: &str,
    value: Option<&Value>,
    max: usize,
) -> Result<Option<String>, FieldError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(raw)) => fields::text(field, raw, max, true),
        Some(_) => Err(FieldError::new(field, "must be a string or null")),
    }
}

// ------------------------------------------------------------------------------------------
// Request bodies, as documented in the OpenAPI document. `from_body` decodes the bodies;
// these types only describe what it accepts.
// ------------------------------------------------------------------------------------------

/// The caller's rating of a character. Read-only fields (`id`, `character_id`, `user_id`,
/// timestamps, `rating_count`, `rating_average`) and unknown fields are refused with a 422
/// naming them.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct RatingBody {
    /// Whole stars, 1 to 5: `2.5`, `5.0` and `"5"` are refused.
    #[schema(minimum = 1, maximum = 5)]
    rating: i32,
    /// A review of at most 2000 characters, multi-line, trimmed; `null` or blank is none.
    #[schema(max_length = 2000)]
    review_text: Option<String>,
}

/// A report of a character. Read-only fields (`id`, `character_id`, `reporter_id`,
/// `status`, the resolution fields, timestamps) and unknown fields are refused with a 422
/// naming them.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ReportBody {
    #[schema(schema_with = reason_schema)]
    reason: String,
    /// At most 2000 characters, multi-line, trimmed; `null` or blank is none.
    #[schema(max_length = 2000)]
    details: Option<String>,
}

fn reason_schema() -> utoipa::openapi::Object {
    crate::web::responses::string_enum(&REPORT_REASONS, false, "Why the character is reported.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    fn fields_of(err: ApiError) -> Vec<String> {
        match err {
            ApiError::Validation { errors, .. } => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("not a validation error: {other}"),
        }
    }

    #[test]
    fn ratings_are_whole_stars_from_one_to_five() {
        for stars in 1..=5 {
            let input = RatingInput::from_body(&body(json!({"rating": stars}))).unwrap();
            assert_eq!(input.rating, stars);
            assert_eq!(input.review_text, None);
        }
        for bad in [
            json!({"rating": 0}),
            json!({"rating": 6}),
            json!({"rating": -1}),
            json!({"rating": 2.5}),
            json!({"rating": 5.0}),
            json!({"rating": "5"}),
            json!({"rating": true}),
            json!({"rating": null}),
            json!({"rating": 4294967297_i64}),
            json!({}),
        ] {
            let err = RatingInput::from_body(&body(bad.clone())).unwrap_err();
            assert_eq!(fields_of(err), ["rating"], "{bad}");
        }
    }

    #[test]
    fn reviews_are_bounded_multi_line_text() {
        let input = RatingInput::from_body(&body(
            json!({"rating": 4, "review_text": "  Lovely.\nWould rate again.  "}),
        ))
        .unwrap();
        assert_eq!(
            input.review_text.as_deref(),
            Some("Lovely.\nWould rate again.")
        );
        let blank = RatingInput::from_body(&body(json!({"rating": 4, "review_text": "   "})));
        assert_eq!(blank.unwrap().review_text, None);
        let long = "x".repeat(MAX_REVIEW_CHARS + 1);
        let err = RatingInput::from_body(&body(json!({"rating": 4, "review_text": long})));
        assert_eq!(fields_of(err.unwrap_err()), ["review_text"]);
        let err = RatingInput::from_body(&body(json!({"rating": 4, "review_text": 12})));
        assert_eq!(fields_of(err.unwrap_err()), ["review_text"]);
    }

    #[test]
    fn read_only_and_unknown_fields_are_refused_by_name() {
        let err = RatingInput::from_body(&body(
            json!({"rating": 4, "user_id": "someone", "character_id": "x", "stars": 5}),
        ))
        .unwrap_err();
        let mut refused = fields_of(err);
        refused.sort();
        assert_eq!(refused, ["character_id", "stars", "user_id"]);
        let err = ReportInput::from_body(&body(json!({"reason": "spam", "status": "dismissed"})))
            .unwrap_err();
        assert_eq!(fields_of(err), ["status"]);
    }

    #[test]
    fn every_problem_of_a_body_is_reported_at_once() {
        let err = RatingInput::from_body(&body(
            json!({"rating": 9, "review_text": "y".repeat(2001), "id": "r1"}),
        ))
        .unwrap_err();
        assert_eq!(fields_of(err), ["id", "rating", "review_text"]);
    }

    #[test]
    fn reports_name_a_known_reason() {
        for reason in REPORT_REASONS {
            let input = ReportInput::from_body(&body(json!({"reason": reason}))).unwrap();
            assert_eq!(input.reason, reason);
        }
        for bad in [
            json!({}),
            json!({"reason": null}),
            json!({"reason": "boring"}),
            json!({"reason": "SPAM"}),
            json!({"reason": 3}),
        ] {
            let err = ReportInput::from_body(&body(bad.clone())).unwrap_err();
            assert_eq!(fields_of(err), ["reason"], "{bad}");
        }
        let long = "d".repeat(MAX_REPORT_DETAILS_CHARS + 1);
        let err = ReportInput::from_body(&body(json!({"reason": "spam", "details": long})));
        assert_eq!(fields_of(err.unwrap_err()), ["details"]);
    }
}
