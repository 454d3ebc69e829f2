//! The job outbox: a committed job's message is sent after its commit
//! ([`enqueue`]); a send that fails, or a process that dies before sending,
//! leaves the job queued without `enqueued_at`, and [`resend_unsent`] (the
//! scheduler's outbox sweep) sends it again. A message lost after sending
//! (dead-lettered, vanished) is found by [`recover_lost_messages`]. A paid
//! job is therefore never lost, and duplicates are harmless because the
//! worker claims jobs with a conditional update.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_postgres::GenericClient;

use super::{JOB_COLUMNS, Job, JobMessage};
use crate::kernel::error::ApiError;
use crate::ports::queue::{JobQueue, OutgoingMessage};

/// Sends a committed job's message and stamps `enqueued_at`. A failure is
/// logged and left to the outbox sweep; it never fails the request, which has
/// already been paid for and recorded.
pub async fn enqueue(client: &impl GenericClient, queue: &dyn JobQueue, job: &Job) -> bool {
    let message = OutgoingMessage {
        body: serde_json::to_string(&JobMessage {
            job_id: job.id.clone(),
        })
        .unwrap_or_default(),
        attributes: BTreeMap::from([
            ("job_id".to_string(), job.id.clone()),
            ("job_type".to_string(), job.job_type.to_string()),
            (
                "priority".to_string(),
                job.priority.unwrap_or(5).to_string(),
            ),
        ]),
        // Each queue adapter honours the `priority` attribute its own way (see
        // `shared::ports::queue`).
        delay: None,
    };
    match queue.send(&message).await {
        Ok(_) => {
            if let Err(e) = client
                .execute(
                    "UPDATE generation_jobs SET enqueued_at = now() WHERE id = $1 AND enqueued_at IS NULL",
                    &[&job.id],
                )
                .await
            {
                tracing::warn!(job_id = %job.id, error = %e, "job sent but enqueued_at not stamped; the sweep may resend it");
            }
            true
        }
        Err(e) => {
            tracing::warn!(job_id = %job.id, error = %e, "job not sent; the outbox sweep will resend it");
            false
        }
    }
}

/// The outbox sweep: sends queued jobs whose message was never sent (older
/// than `grace`). Returns how many were sent.
pub async fn resend_unsent(
    client: &impl GenericClient,
    queue: &dyn JobQueue,
    grace: Duration,
) -> Result<usize, ApiError> {
    let rows = client
        .query(
            &format!(
                "SELECT {JOB_COLUMNS} FROM generation_jobs \
                 WHERE status = 'queued' AND enqueued_at IS NULL \
                   AND queued_at < now() - make_interval(secs => $1) \
                 ORDER BY queued_at LIMIT 100"
            ),
            &[&(grace.as_secs_f64())],
        )
        .await?;
    let mut sent = 0;
    for row in rows {
        let job = Job::from_row(&row)?;
        if enqueue(client, queue, &job).await {
            sent += 1;
        }
    }
    Ok(sent)
}

/// What [`recover_lost_messages`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Recovered {
    /// Jobs marked unsent, for [`resend_unsent`] to send again.
    pub redelivered: u64,
    /// Jobs failed (their credits released) after too many lost messages.
    pub failed: usize,
}

/// Jobs still queued `after` their message was last sent have lost it: the
/// message went to the dead-letter queue (the worker could not even claim the
/// job, e.g. while the database was down) or vanished. Each is marked unsent
/// again (for [`resend_unsent`], run right after by the outbox sweep) while
/// it has been redelivered fewer than `max_redeliveries` times; otherwise it
/// fails and its hold is released. Both are conditional updates, so each job
/// is redelivered or failed once per lost message, whatever runs at the same
/// time.
pub async fn recover_lost_messages(
    client: &mut tokio_postgres::Client,
    after: Duration,
    max_redeliveries: i32,
) -> Result<Recovered, ApiError> {
    let after = after.as_secs_f64();
    let redelivered = client
        .execute(
            "UPDATE generation_jobs SET enqueued_at = NULL, redeliveries = redeliveries + 1 \
             WHERE status = 'queued' AND enqueued_at < now() - make_interval(secs => $1) \
               AND redeliveries < $2",
            &[&after, &max_redeliveries],
        )
        .await?;
    let given_up: Vec<String> = client
        .query(
            "SELECT id FROM generation_jobs WHERE status = 'queued' \
               AND enqueued_at < now() - make_interval(secs => $1) AND redeliveries >= $2 \
             ORDER BY enqueued_at LIMIT 500",
            &[&after, &max_redeliveries],
        )
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    let mut failed = 0;
    for job_id in given_up {
        let tx = client.transaction().await?;
        if super::lifecycle::fail_lost_message(&tx, &job_id, after).await? {
            failed += 1;
        }
        tx.commit().await?;
    }
    Ok(Recovered {
        redelivered,
        failed,
    })
}
