//! The audit trail: `user_activity_logs`, written in the same transaction as
//! the action it records.
//!
//! The lowest domain: it may use the kernel, ports and web layers only, and
//! every other domain may use it.

use serde_json::Value;
use tokio_postgres::GenericClient;

use crate::web::http::RequestMeta;

crate::text_enum! {
    /// What an activity row records (`user_activity_logs.activity_type`): every
    /// kind the platform writes, so that a filter for anything else is refused.
    pub enum ActivityType {
        AdminCharacterFeatured => "admin_character_featured",
        AdminCharacterHidden => "admin_character_hidden",
        AdminCharacterUnfeatured => "admin_character_unfeatured",
        AdminCharacterUnhidden => "admin_character_unhidden",
        AdminCharacterUnpublished => "admin_character_unpublished",
        AdminCreditAdjustment => "admin_credit_adjustment",
        AdminJobRefunded => "admin_job_refunded",
        AdminPackageCreated => "admin_package_created",
        AdminPackageUpdated => "admin_package_updated",
        AdminPricingCreated => "admin_pricing_created",
        AdminPricingUpdated => "admin_pricing_updated",
        AdminReportResolved => "admin_report_resolved",
        AdminReportsListed => "admin_reports_listed",
        AdminUserLookup => "admin_user_lookup",
        AdminUserUpdated => "admin_user_updated",
        CharacterCreated => "character_created",
        CharacterDeleted => "character_deleted",
        CharacterDownloaded => "character_downloaded",
        CharacterImageDeleted => "character_image_deleted",
        CharacterPrimaryImageSet => "character_primary_image_set",
        CharacterRated => "character_rated",
        CharacterUpdated => "character_updated",
        DailyBonus => "daily_bonus",
        Erasure => "erasure",
        Export => "export",
        GenerationCancelled => "generation_cancelled",
        GenerationRequested => "generation_requested",
        GiftReceived => "gift_received",
        GiftSent => "gift_sent",
        ImageGenerated => "image_generated",
        JobFailed => "job_failed",
        Login => "login",
        PurchaseCompleted => "purchase_completed",
        PurchaseDisputeDeferred => "purchase_dispute_deferred",
        PurchaseDisputeLost => "purchase_dispute_lost",
        PurchaseDisputeWon => "purchase_dispute_won",
        PurchaseDisputed => "purchase_disputed",
        PurchaseFailed => "purchase_failed",
        PurchaseRefunded => "purchase_refunded",
        RatingWithdrawn => "rating_withdrawn",
        ReportFiled => "report_filed",
        SubscriptionExpired => "subscription_expired",
    }
}

/// One action worth recording.
pub struct Activity<'a> {
    pub user_id: Option<&'a str>,
    pub activity_type: ActivityType,
    pub entity_type: Option<&'a str>,
    pub entity_id: Option<&'a str>,
    pub metadata: Value,
}

pub async fn record(
    client: &impl GenericClient,
    activity: Activity<'_>,
    meta: &RequestMeta,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO user_activity_logs \
               (user_id, activity_type, entity_type, entity_id, session_id, ip_address, user_agent, referrer, metadata) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &activity.user_id,
                &activity.activity_type,
                &activity.entity_type,
                &activity.entity_id,
                &meta.request_id,
                &meta.ip,
                &meta.user_agent,
                &meta.referrer,
                &activity.metadata,
            ],
        )
        .await?;
    Ok(())
}

/// `{field: {from, to}}` for every listed field whose value differs between
/// two serialised rows: what an update changed, for the audit row.
pub fn changes(before: &Value, after: &Value, fields: &[&str]) -> Value {
    let mut out = serde_json::Map::new();
    for field in fields {
        let (from, to) = (&before[*field], &after[*field]);
        if from != to {
            out.insert(
                (*field).to_string(),
                serde_json::json!({"from": from, "to": to}),
            );
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_list_only_what_differs() {
        let before = json!({"a": 1, "b": "x", "c": null});
        let after = json!({"a": 2, "b": "x", "c": [1]});
        assert_eq!(
            changes(&before, &after, &["a", "b", "c"]),
            json!({"a": {"from": 1, "to": 2}, "c": {"from": null, "to": [1]}})
        );
    }
}
