//! The audit trail: `user_activity_logs`, written in the same transaction as
//! the action it records.

use serde_json::Value;
use tokio_postgres::GenericClient;

use crate::http::RequestMeta;

/// One action worth recording.
pub struct Activity<'a> {
    pub user_id: Option<&'a str>,
    /// `login`, `character_created`, `image_generated`...
    pub activity_type: &'a str,
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
