//! The local stack's stand-ins for SQS's event source mapping and
//! EventBridge: the worker consumes the in-process queue, and the
//! scheduler's tasks run on timers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use shared::jobs::worker::Worker;
use shared::ports::queue::memory::MemoryQueue;
use shared::web::state::AppState;
use tokio::sync::watch;

/// How often the consumer polls.
const POLL: Duration = Duration::from_millis(250);

/// Receives batches like Lambda's SQS event source: messages the worker
/// reports in `batchItemFailures` stay on the queue (the worker has set when
/// they come back), the rest are deleted.
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
            if !failed.contains(&id) {
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
            if let Err(e) = shared::runtime::scheduler::run(
                task,
                &state.db,
                state.queue.as_deref(),
                &state.config,
            )
            .await
            {
                tracing::warn!(task, error = %e, "scheduled task failed");
            }
        }
    }
}
