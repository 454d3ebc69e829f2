//! The `scheduler` Lambda: EventBridge schedules whose `detail-type` names the
//! task (daily-reset, job-timeouts, outbox-sweep, partition-upkeep,
//! idempotency-purge, subscription-expiry; migrate on demand).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::runtime::lambda::run_scheduler().await
}
