//! Request bodies of the social routes, decoded strictly: read-only columns are
//! refused by name, unknown fields are refused, and every field is checked
//! against the schema's constraints so that bad input is a 422 naming the
//! field, never a constraint error from the database. All problems of a body
//! are reported together.

use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::kernel::error::{ApiError, FieldError};
use crate::web::input::checks::{self, check};
use crate::web::input::{RequestBody, decode};

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
        decode::<RatingBody>(body.clone())
    }
}

impl ReportInput {
    pub fn from_body(body: &Map<String, Value>) -> Result<Self, ApiError> {
        decode::<ReportBody>(body.clone())
    }
}

/// The caller's rating of a character. Read-only fields (`id`, `character_id`, `user_id`,
/// timestamps, `rating_count`, `rating_average`) and unknown fields are refused with a 422
/// naming them.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RatingBody {
    /// Whole stars, 1 to 5: `2.5`, `5.0` and `"5"` are refused.
    #[serde(default)]
    #[schema(value_type = i32, required = true, minimum = 1, maximum = 5)]
    rating: Option<i64>,
    /// A review of at most 2000 characters, multi-line, trimmed; `null` or blank is none.
    #[serde(default)]
    #[schema(max_length = 2000)]
    review_text: Option<String>,
}

impl RequestBody for RatingBody {
    type Valid = RatingInput;

    fn read_only(field: &str) -> bool {
        RATING_READ_ONLY.contains(&field)
    }

    fn validate(self, errors: &mut Vec<FieldError>) -> RatingInput {
        let rating = match self.rating {
            None => {
                errors.push(FieldError::new(
                    "rating",
                    "is required: a whole number from 1 to 5",
                ));
                None
            }
            Some(stars) => check(errors, checks::whole("rating", stars, 1, 5)),
        };
        let review_text = self.review_text.and_then(|text| {
            check(
                errors,
                checks::text("review_text", &text, MAX_REVIEW_CHARS, true),
            )
            .flatten()
        });
        RatingInput {
            rating: rating.unwrap_or_default(),
            review_text,
        }
    }
}

/// A report of a character. Read-only fields (`id`, `character_id`, `reporter_id`,
/// `status`, the resolution fields, timestamps) and unknown fields are refused with a 422
/// naming them.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportBody {
    #[serde(default)]
    #[schema(required = true, schema_with = reason_schema)]
    reason: Option<String>,
    /// At most 2000 characters, multi-line, trimmed; `null` or blank is none.
    #[serde(default)]
    #[schema(max_length = 2000)]
    details: Option<String>,
}

impl RequestBody for ReportBody {
    type Valid = ReportInput;

    fn read_only(field: &str) -> bool {
        REPORT_READ_ONLY.contains(&field)
    }

    fn validate(self, errors: &mut Vec<FieldError>) -> ReportInput {
        let reason = match self.reason {
            None => {
                errors.push(FieldError::new(
                    "reason",
                    format!("is required: one of {}", REPORT_REASONS.join(", ")),
                ));
                None
            }
            Some(reason) => check(errors, checks::one_of("reason", &reason, &REPORT_REASONS)),
        };
        let details = self.details.and_then(|text| {
            check(
                errors,
                checks::text("details", &text, MAX_REPORT_DETAILS_CHARS, true),
            )
            .flatten()
        });
        ReportInput {
            reason: reason.unwrap_or_default(),
            details,
        }
    }
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
        let err = RatingInput::from_body(&body(json!({"rating": "9", "stars": 1}))).unwrap_err();
        assert_eq!(fields_of(err), ["rating", "stars"]);
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
