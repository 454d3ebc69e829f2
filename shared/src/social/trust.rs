//! How much a report counts towards hiding a character.
//!
//! Each report is weighed once, when it is filed, from its reporter as they
//! are then:
//!
//! ```text
//! weight   = age × verified × accuracy                       (0 to 2)
//! age      = min(1, account age in days / GALLERY_REPORTER_FULL_WEIGHT_DAYS)
//!            (1 when that is 0)
//! verified = 1 with a verified email (users.email_verified_at),
//!            else GALLERY_UNVERIFIED_REPORT_PERCENT / 100
//! accuracy = 2 × (actioned + 1) / (actioned + dismissed + 2)
//! ```
//!
//! `actioned` and `dismissed` count the reporter's past reports moderators
//! resolved each way (open ones count neither). Accuracy starts at 1 for a
//! reporter with no record (one imagined report each way), rises towards 2 as
//! moderators action their reports and falls towards 0 as they dismiss them.
//!
//! A character leaves the gallery once the weights of its open reports filed
//! since its last moderator review add up to `GALLERY_REPORT_THRESHOLD`
//! (`characters.report_score`, V18). With the defaults (30 days, 25 %,
//! threshold 3): any number of accounts made today weigh 0; three verified
//! month-old accounts with no record hide a character, as three reporters did
//! before; two reporters whose last three reports were all actioned
//! (accuracy 1.6 each) do too; an unverified month-old account weighs 0.25.
//!
//! Weighing at filing time means accounts made for an attack stay weightless
//! for the reports they filed young, however old they grow, and a reporter's
//! later record does not reopen old decisions. The weight is written as the
//! system role: `app_api` cannot write the column, so no request sets its own.

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

use crate::kernel::config::GalleryConfig;
use crate::kernel::error::ApiError;

/// What a reporter's weight depends on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReporterRecord {
    pub age_days: f64,
    pub verified: bool,
    pub actioned: i64,
    pub dismissed: i64,
}

/// The weight of a report by `reporter` (see the module documentation),
/// rounded to thousandths as stored.
pub fn weight(reporter: &ReporterRecord, config: &GalleryConfig) -> f64 {
    let age = if config.reporter_full_weight_days <= 0 {
        1.0
    } else {
        (reporter.age_days / f64::from(config.reporter_full_weight_days)).clamp(0.0, 1.0)
    };
    let verified = if reporter.verified {
        1.0
    } else {
        f64::from(config.unverified_report_percent.clamp(0, 100)) / 100.0
    };
    let actioned = reporter.actioned.max(0) as f64;
    let dismissed = reporter.dismissed.max(0) as f64;
    let accuracy = 2.0 * (actioned + 1.0) / (actioned + dismissed + 2.0);
    ((age * verified * accuracy) * 1000.0).round() / 1000.0
}

/// The reporter's record now, read as the system role (`app_api` cannot read
/// `email_verified_at`, nor others' reports).
pub async fn reporter_record(
    client: &impl GenericClient,
    user_id: &str,
) -> Result<ReporterRecord, ApiError> {
    let row = client
        .query_one(
            "SELECT u.created_at, u.email_verified_at IS NOT NULL AS verified, \
               (SELECT count(*) FROM content_reports r WHERE r.reporter_id = u.id AND r.status = 'actioned') AS actioned, \
               (SELECT count(*) FROM content_reports r WHERE r.reporter_id = u.id AND r.status = 'dismissed') AS dismissed, \
               now() AS now \
             FROM users u WHERE u.id = $1",
            &[&user_id],
        )
        .await?;
    let created_at: DateTime<Utc> = row.try_get("created_at")?;
    let now: DateTime<Utc> = row.try_get("now")?;
    Ok(ReporterRecord {
        age_days: (now - created_at).num_seconds().max(0) as f64 / 86_400.0,
        verified: row.try_get("verified")?,
        actioned: row.try_get("actioned")?,
        dismissed: row.try_get("dismissed")?,
    })
}

/// Sets a newly filed report's weight (as the system role, in the filing
/// transaction); V18's trigger adds it to the character's `report_score`.
pub async fn set_weight(
    client: &impl GenericClient,
    report_id: &str,
    weight: f64,
) -> Result<(), ApiError> {
    client
        .execute(
            "UPDATE content_reports SET weight = $2::float8::numeric(6,3) WHERE id = $1",
            &[&report_id, &weight],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(age_days: f64, verified: bool, actioned: i64, dismissed: i64) -> ReporterRecord {
        ReporterRecord {
            age_days,
            verified,
            actioned,
            dismissed,
        }
    }

    #[test]
    fn the_documented_examples_hold() {
        let config = GalleryConfig::default();
        let w = |r| weight(&r, &config);
        assert_eq!(w(record(0.0, false, 0, 0)), 0.0, "made today");
        assert_eq!(w(record(0.0, true, 0, 0)), 0.0);
        assert_eq!(w(record(30.0, true, 0, 0)), 1.0, "established, no record");
        assert_eq!(w(record(400.0, true, 0, 0)), 1.0, "age is capped");
        assert_eq!(w(record(15.0, true, 0, 0)), 0.5);
        assert_eq!(w(record(30.0, false, 0, 0)), 0.25, "unverified");
        assert_eq!(w(record(30.0, true, 3, 0)), 1.6, "accurate");
        assert_eq!(w(record(30.0, true, 0, 3)), 0.4, "often dismissed");
        assert!(w(record(30.0, true, 1_000, 0)) < 2.0);
        assert!(2.0 * w(record(30.0, true, 3, 0)) >= config.report_threshold as f64);
        let no_age = GalleryConfig {
            reporter_full_weight_days: 0,
            ..config
        };
        assert_eq!(weight(&record(0.0, true, 0, 0), &no_age), 1.0);
    }
}
