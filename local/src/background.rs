//! The local stack's stand-ins for SQS's event source mapping and
//! EventBridge: the worker consumes the in-process queue, and the
//! scheduler's tasks run on timers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use shared::app::AppState;
use shared::queue::JobQueue;
use shared::queue::memory::MemoryQueue;
use shared::worker::Worker;
use tokio::sync::watch;

/// How often the consumer polls, and how long a message to retry stays away.
const POLL: Duration = Duration::from_millis(250);
const RETRY_BACKOFF: Duration = Duration::from_secs(5);

/// Receives batches like Lambda's SQS event source: messages the worker
/// reports in `batchItemFailures` come back later, the rest are deleted.
pub async fn consume_jobs(
    queue: Arc<MemoryQueue>,
    worker: Worker,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        let batch = queue.receive(5);
        if batch.records.is_empty() {
            continue;
        }
        let response = worker.handle_batch(batch.clone()).await;
        let failed: HashSet<String> = response
            .batch_item_failures
            .into_iter()
            .map(|f| f.item_identifier)
            .collect();
        for record in batch.records {
            let (Some(id), Some(receipt)) = (record.message_id, record.receipt_handle) else {
                continue;
            };
            if failed.contains(&id) {
                if let Err(e) = queue.change_visibility(&receipt, RETRY_BACKOFF).await {
                    // It comes back when its visibility timeout runs out instead.
                    tracing::warn!(message_id = %id, error = %e, "could not schedule the retry");
                }
            } else {
                queue.delete(&receipt);
            }
        }
    }
}

/// The EventBridge schedules of template.yaml, on local timers.
pub async fn run_schedules(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut minute = tokio::time::interval(Duration::from_secs(60));
    let mut hour = tokio::time::interval(Duration::from_secs(3600));
    loop {
        let tasks: &[&str] = tokio::select! {
            _ = stop.changed() => return,
            _ = minute.tick() => &["job-timeouts", "outbox-sweep", "daily-reset", "subscription-expiry"],
            _ = hour.tick() => &["partition-upkeep", "idempotency-purge"],
        };
        for task in tasks {
            if let Err(e) = shared::scheduler::run(
                task,
                &state.db,
                state.queue.as_deref(),
                &state.config.retention,
            )
            .await
            {
                tracing::warn!(task, error = %e, "scheduled task failed");
            }
        }
    }
}
