//! The scheduler's tasks, run by EventBridge schedules (the event's
//! `detail-type` names the task) and by the local stack on timers.
//!
//! | task (`detail-type`) | what |
//! |---|---|
//! | `daily-reset` | opens the next daily window (free generations, allowance and the other daily counters start over) of every user whose window has ended |
//! | `job-timeouts` | jobs processing past `timeout_at` become `timeout`, their holds released exactly once |
//! | `outbox-sweep` | sends queued jobs whose message was never sent, sends again those whose message was lost (dead-lettered or dropped), and fails those lost too often |
//! | `partition-upkeep` | creates the next months' partitions of the ledger and the activity log, drops activity-log months past retention |
//! | `idempotency-purge` | forgets idempotency keys older than 24 hours, expired erasure receipts and view keys of days before yesterday |
//! | `subscription-expiry` | subscriptions past `subscription_end_date` fall back to `FREE` and its daily entitlements |
//!
//! One more task runs on demand, never on a schedule: `migrate` applies the
//! embedded migrations not yet applied (the README's deploy steps invoke it
//! with `aws lambda invoke`, from inside the VPC where the database is).

use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::kernel::tier::Tier;

use tokio_postgres::GenericClient;

use crate::credits::ledger;
use crate::kernel::config::{Config, RetentionConfig};
use crate::kernel::error::ApiError;
use crate::ports::db::DbPool;
use crate::ports::queue::JobQueue;

pub const TASKS: [&str; 6] = [
    "daily-reset",
    "job-timeouts",
    "outbox-sweep",
    "partition-upkeep",
    "idempotency-purge",
    "subscription-expiry",
];

/// Tasks run only when invoked by hand (no schedule names them).
pub const ON_DEMAND_TASKS: [&str; 1] = ["migrate"];

/// How long a queued job may wait without `enqueued_at` before the sweep resends it.
pub const OUTBOX_GRACE: Duration = Duration::from_secs(60);
/// Months of partitions kept ahead of now.
pub const PARTITIONS_AHEAD: i32 = 3;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskReport {
    pub task: String,
    pub outcome: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("unknown scheduler task `{0}`")]
    Unknown(String),
    #[error("task failed: {0}")]
    Failed(String),
    /// The database was unreachable: nothing is wrong with the task, and the
    /// schedule's retry (or its next run) will do it.
    #[error("task not run, retryable: the database is unavailable ({0})")]
    Retryable(String),
}

impl TaskError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable(_))
    }
}

impl From<ApiError> for TaskError {
    fn from(err: ApiError) -> Self {
        match err {
            ApiError::ServiceUnavailable { detail, .. } => Self::Retryable(detail),
            other => Self::Failed(other.to_string()),
        }
    }
}

impl From<tokio_postgres::Error> for TaskError {
    fn from(err: tokio_postgres::Error) -> Self {
        if crate::kernel::error::database_unavailable(&err) {
            crate::kernel::metrics::database_connection_error("connection");
            Self::Retryable(err.to_string())
        } else {
            Self::Failed(err.to_string())
        }
    }
}

impl From<ledger::LedgerError> for TaskError {
    fn from(err: ledger::LedgerError) -> Self {
        match err {
            ledger::LedgerError::Database(e) => e.into(),
            other => Self::Failed(other.to_string()),
        }
    }
}

impl From<crate::ports::db::DbSetupError> for TaskError {
    fn from(err: crate::ports::db::DbSetupError) -> Self {
        Self::Failed(err.to_string())
    }
}

impl From<deadpool_postgres::PoolError> for TaskError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        ApiError::from(err).into()
    }
}

/// Runs one task by name.
pub async fn run(
    task: &str,
    db: &DbPool,
    queue: Option<&dyn JobQueue>,
    config: &Config,
) -> Result<TaskReport, TaskError> {
    if task == "migrate" {
        // With a migration login (on AWS: DATABASE_MIGRATION_SECRET_ARN), the
        // schema owner migrates and provisions the runtime login; without one
        // (the single-login local set-up) the runtime login migrates.
        let outcome = if config.database.migration_url.is_some() {
            let report = crate::ports::db::migrate_and_provision(&config.database)
                .await
                .map_err(|e| TaskError::Failed(e.to_string()))?;
            json!({
                "applied": report.applied,
                "known": crate::ports::db::embedded_migrations().len(),
                "runtime_login": report.runtime_login,
            })
        } else {
            let report = crate::ports::db::migrate(db).await?;
            json!({
                "applied": report.applied,
                "known": crate::ports::db::embedded_migrations().len(),
            })
        };
        tracing::info!(task, %outcome, "scheduler task done");
        return Ok(TaskReport {
            task: task.to_string(),
            outcome,
        });
    }
    let mut conn = db.get().await?;
    let client: &mut tokio_postgres::Client = &mut conn;
    let outcome = match task {
        "daily-reset" => json!({"users_reset": ledger::reset_daily_all(&*client).await?}),
        "job-timeouts" => json!({"timed_out": time_out_jobs(client).await?}),
        "outbox-sweep" => {
            let referrals =
                crate::credits::referrals::settle_waiting(client, &config.credits, 500).await?;
            let mut outcome = outbox_sweep(client, queue, config).await?;
            outcome["referrals_settled"] = json!(referrals);
            outcome
        }
        "partition-upkeep" => partition_upkeep(&*client, &config.retention).await?,
        "subscription-expiry" => json!({"expired": expire_subscriptions(&*client).await?}),
        "idempotency-purge" => json!({
            "purged": crate::web::idempotency::purge_expired(&*client).await?,
            "erasure_receipts_purged": crate::users::receipts::purge_expired_receipts(&*client).await?,
            "view_keys_purged": crate::characters::views::purge_old_keys(&*client).await?,
        }),
        other => return Err(TaskError::Unknown(other.to_string())),
    };
    tracing::info!(task, %outcome, "scheduler task done");
    Ok(TaskReport {
        task: task.to_string(),
        outcome,
    })
}

/// Jobs whose message was never sent or was lost: sent again, or failed when lost too often.
async fn outbox_sweep(
    client: &mut tokio_postgres::Client,
    queue: Option<&dyn JobQueue>,
    config: &Config,
) -> Result<serde_json::Value, TaskError> {
    Ok(match queue {
        Some(queue) => {
            let recovered = crate::jobs::outbox::recover_lost_messages(
                client,
                config.queue.redelivery_after,
                config.queue.max_redeliveries,
            )
            .await?;
            let sent = crate::jobs::outbox::resend_unsent(&*client, queue, OUTBOX_GRACE).await?;
            json!({"resent": sent, "redelivered": recovered.redelivered, "failed": recovered.failed})
        }
        None => json!({"resent": 0, "skipped": "no queue configured"}),
    })
}

/// Jobs left processing past their deadline (a worker that died mid-job)
/// become `timeout`; each hold is released exactly once, in the same
/// transaction as its job's status change.
pub async fn time_out_jobs(client: &mut tokio_postgres::Client) -> Result<usize, TaskError> {
    let due: Vec<String> = client
        .query(
            "SELECT id FROM generation_jobs WHERE status = 'processing' AND timeout_at < now() \
             ORDER BY timeout_at LIMIT 500",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    let mut timed_out = 0;
    for job_id in due {
        let tx = client.transaction().await?;
        if crate::jobs::lifecycle::time_out(&tx, &job_id).await? {
            timed_out += 1;
        }
        tx.commit().await?;
    }
    Ok(timed_out)
}

/// Partitions for this month and the next [`PARTITIONS_AHEAD`], and retention
/// of the activity log: a monthly partition is dropped whole (never
/// row-deleted) once all of its month is older than
/// `retention.activity_log_days`. The ledger is never dropped: its sums are
/// the balances.
pub async fn partition_upkeep(
    client: &tokio_postgres::Client,
    retention: &RetentionConfig,
) -> Result<Value, TaskError> {
    let mut created = serde_json::Map::new();
    for table in ["credit_transactions", "user_activity_logs"] {
        let n: i32 = client
            .query_one(
                "SELECT ensure_monthly_partitions($1, (now() AT TIME ZONE 'UTC')::date, $2)",
                &[&table, &(PARTITIONS_AHEAD + 1)],
            )
            .await?
            .try_get(0)?;
        created.insert(table.to_string(), json!(n));
    }
    let dropped: i32 = client
        .query_one(
            "SELECT drop_monthly_partitions_before('user_activity_logs', \
               ((now() AT TIME ZONE 'UTC') - make_interval(days => $1))::date)",
            &[&retention.activity_log_days],
        )
        .await?
        .try_get(0)?;
    Ok(json!({"created": created, "activity_partitions_dropped": dropped}))
}

/// Subscriptions whose `subscription_end_date` has passed fall back to `FREE`:
/// the tier, `users.daily_quota` and `user_credits.daily_allowance` take the
/// `FREE` tier's terms ([`crate::kernel::tier`]), and each
/// user gets a `subscription_expired` activity row, in one statement. Pricing
/// already treats a lapsed subscription as `FREE`
/// ([`crate::credits::engine::tier_of`]); this ends the paid tier's free
/// generations and allowance too. The dates stay, as the subscription's
/// history. Rows locked by a request are left to the next run.
pub async fn expire_subscriptions(client: &impl GenericClient) -> Result<i64, TaskError> {
    let free = Tier::Free.terms();
    let expired = client
        .query_one(
            "WITH lapsed AS ( \
               SELECT id, subscription_tier FROM users \
               WHERE subscription_tier IS DISTINCT FROM 'FREE' \
                 AND subscription_end_date <= now() \
                 AND account_status IS DISTINCT FROM 'deleted' \
               FOR UPDATE SKIP LOCKED \
             ), downgraded AS ( \
               UPDATE users u SET subscription_tier = 'FREE', daily_quota = $1 \
               FROM lapsed l WHERE u.id = l.id \
               RETURNING u.id, l.subscription_tier AS from_tier, u.subscription_end_date \
             ), allowance AS ( \
               UPDATE user_credits c SET daily_allowance = $2 \
               FROM downgraded d WHERE c.user_id = d.id \
             ), logged AS ( \
               INSERT INTO user_activity_logs (user_id, activity_type, entity_type, entity_id, metadata) \
               SELECT id, 'subscription_expired', 'user', id, \
                      jsonb_build_object('from_tier', from_tier, 'subscription_end_date', subscription_end_date) \
               FROM downgraded \
             ) \
             SELECT count(*) FROM downgraded",
            &[&free.free_generations_per_day, &free.allowance_credits_per_day],
        )
        .await?
        .try_get(0)?;
    Ok(expired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unavailable_database_is_a_retryable_task_error() {
        let unavailable = TaskError::from(ApiError::ServiceUnavailable {
            detail: "the database is unavailable for a moment; retry shortly".into(),
            retry_after: 2,
        });
        assert!(unavailable.is_retryable());
        assert!(
            unavailable.to_string().contains("retryable"),
            "{unavailable}"
        );
        assert!(!TaskError::from(ApiError::internal("a bug")).is_retryable());
        assert!(!TaskError::Unknown("x".into()).is_retryable());
    }
}
