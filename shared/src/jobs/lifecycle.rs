//! Every transition of a generation job, in one place.
//!
//! ```text
//!            create                claim                 complete
//!   (none) ─────────▶ queued ─────────────▶ processing ─────────────▶ completed
//!                      │  ▲                 │   │  │
//!                      │  └──── requeue ────┘   │  └── fail ──────────▶ failed
//!                      │                        └──── time out ───────▶ timeout
//!                      ├── fail (message lost) ───────────────────────▶ failed
//!                      └── cancel (one, a character's, a user's) ─────▶ cancelled
//!                                               (a user's: processing too)
//! ```
//!
//! Each transition is one conditional `UPDATE` on the job's status, so it
//! happens at most once whatever runs concurrently (a cancel racing the
//! worker, a redelivered message, the timeout sweep), and does its own
//! bookkeeping in the caller's transaction: the hold is settled
//! ([`crate::credits::holds::settle_for`], on completion) or released
//! ([`crate::credits::holds::release`], on every other ending), and the
//! character's `generation_status` follows. Callers take locks in the
//! platform's order (job, user, credits, character) and commit.
//!
//! Creation ([`create`]) is called by dispatch once the request is priced;
//! claim, requeue, fail and complete by the worker ([`super::worker`]);
//! the cancels by the cancel route, character deletion, account suspension
//! and erasure; the time-out and lost-message endings by the scheduler.

use serde_json::{Value, json};
use tokio_postgres::GenericClient;

use super::input::GenerationInput;
use super::{JOB_COLUMNS, Job};
use crate::activity::{self, Activity, ActivityType};
use crate::credits::holds::{self, Delivery, Hold};
use crate::credits::ledger::LedgerError;
use crate::credits::pricing::Quote;
use crate::kernel::vocabulary::{GenerationProvider, JobType};
use crate::web::http::RequestMeta;

/// What a new job is.
pub struct NewJob<'a> {
    pub user_id: &'a str,
    pub character_id: &'a str,
    pub job_type: JobType,
    pub input: &'a GenerationInput,
    pub priority: i32,
}

/// (none) → queued: records the job with its hold (the buckets `quote` is
/// paid from) and marks its character pending. The caller holds the user's
/// lock ([`crate::credits::ledger::lock_user`]) and commits, then enqueues.
pub async fn create(
    client: &impl GenericClient,
    job: NewJob<'_>,
    quote: &Quote,
) -> Result<(Job, Hold), LedgerError> {
    let row = client
        .query_one(
            &format!(
                "INSERT INTO generation_jobs (user_id, character_id, job_type, input_parameters, priority, \
                   cost_credits, status) VALUES ($1, $2, $3, $4, $5, $6, 'queued') RETURNING {JOB_COLUMNS}"
            ),
            &[
                &job.user_id,
                &job.character_id,
                &job.job_type.as_str(),
                &job.input.to_value(),
                &job.priority,
                &quote.price,
            ],
        )
        .await?;
    let created = Job::from_row(&row)?;
    let hold = holds::hold(client, job.user_id, &created.id, quote).await?;
    let row = client
        .query_one(
            &format!(
                "UPDATE generation_jobs SET processing_metadata = processing_metadata || $2 \
                 WHERE id = $1 RETURNING {JOB_COLUMNS}"
            ),
            &[
                &created.id,
                &json!({"credits": hold, "cost_calculation": quote.calculation}),
            ],
        )
        .await?;
    client
        .execute(
            "UPDATE characters SET generation_status = 'pending' WHERE id = $1 \
             AND generation_status IS DISTINCT FROM 'processing'",
            &[&job.character_id],
        )
        .await?;
    Ok((Job::from_row(&row)?, hold))
}

/// What [`claim`] answers: the job, now processing.
pub struct Claim {
    pub job: Job,
    /// This attempt's number (1 for the first).
    pub attempts: i32,
    /// How long the job waited in the queue since its last send, in ms.
    pub queue_wait_ms: Option<f64>,
}

/// queued → processing, once: the attempt counted, a deadline set
/// `timeout_secs` ahead (for [`time_out`]), the character processing.
/// `None` for a job that is not queued (claimed already, cancelled...).
pub async fn claim(
    client: &impl GenericClient,
    job_id: &str,
    timeout_secs: f64,
) -> Result<Option<Claim>, LedgerError> {
    let row = client
        .query_opt(
            &format!(
                "UPDATE generation_jobs SET status = 'processing', started_at = now(), attempts = attempts + 1, \
                   timeout_at = now() + make_interval(secs => $2) \
                 WHERE id = $1 AND status = 'queued' RETURNING {JOB_COLUMNS}, attempts, \
                   (extract(epoch FROM now() - coalesce(enqueued_at, queued_at)) * 1000)::float8 AS queue_wait_ms"
            ),
            &[&job_id, &timeout_secs],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let job = Job::from_row(&row)?;
    let attempts: i32 = row.try_get("attempts")?;
    let queue_wait_ms: Option<f64> = row.try_get("queue_wait_ms")?;
    if let Some(character_id) = &job.character_id {
        client
            .execute(
                "UPDATE characters SET generation_status = 'processing', processing_started_at = now() WHERE id = $1",
                &[character_id],
            )
            .await?;
    }
    Ok(Some(Claim {
        job,
        attempts,
        queue_wait_ms,
    }))
}

/// processing → queued, for another attempt after a transient failure
/// (`details` says why). Its message comes back after the backoff, so its
/// send time is now as far as the lost-message check goes. The hold stays.
pub async fn requeue(
    client: &impl GenericClient,
    job_id: &str,
    details: &Value,
) -> Result<(), LedgerError> {
    client
        .execute(
            "UPDATE generation_jobs SET status = 'queued', started_at = NULL, timeout_at = NULL, \
               error_details = $2, enqueued_at = now(), processing_metadata = processing_metadata - 'progress' \
             WHERE id = $1 AND status = 'processing'",
            &[&job_id, details],
        )
        .await?;
    Ok(())
}

/// processing → failed after its last attempt: the hold released, the
/// character failed with the error's message, the user's activity log
/// told. `false` when the job was no longer processing (cancelled, timed
/// out meanwhile): then nothing changes.
pub async fn fail(
    client: &impl GenericClient,
    job: &Job,
    details: &Value,
    attempts: i32,
) -> Result<bool, LedgerError> {
    let failed = client
        .execute(
            "UPDATE generation_jobs SET status = 'failed', completed_at = now(), error_details = $2, \
               cost_credits = 0, processing_metadata = processing_metadata - 'progress' \
             WHERE id = $1 AND status = 'processing'",
            &[&job.id, details],
        )
        .await?;
    if failed != 1 {
        return Ok(false);
    }
    holds::release(client, &job.id).await?;
    if let Some(character_id) = &job.character_id {
        client
            .execute(
                "UPDATE characters SET generation_status = 'failed', error_message = $2, retry_count = $3, \
                   processing_completed_at = now() WHERE id = $1",
                &[character_id, &failure_message(details), &attempts],
            )
            .await?;
    }
    log_activity(client, job, ActivityType::JobFailed, details.clone()).await?;
    Ok(true)
}

/// The first step of processing → completed: locks the job (still
/// processing) and then its user, in the platform's lock order. `None` when
/// the job is no longer processing; `Some(None)` when its character was
/// deleted meanwhile (then [`abandon_for_deleted_character`]); otherwise
/// the character the images belong to. The caller records the images, then
/// [`complete`]s in the same transaction.
pub async fn lock_for_completion(
    client: &impl GenericClient,
    job_id: &str,
    user_id: &str,
) -> Result<Option<Option<String>>, LedgerError> {
    let row = client
        .query_opt(
            "SELECT character_id FROM generation_jobs WHERE id = $1 AND status = 'processing' FOR UPDATE",
            &[&job_id],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let character_id: Option<String> = row.try_get(0)?;
    crate::credits::ledger::lock_user(client, user_id).await?;
    Ok(Some(character_id))
}

/// What a completed job delivered, for [`complete`].
pub struct Delivered<'a> {
    /// The stored images' keys.
    pub output_keys: Vec<&'a String>,
    /// What the generator and the worker say about the run, merged into
    /// `processing_metadata`.
    pub metadata: Value,
    /// Which link of the generator chain made the images.
    pub provider: Option<GenerationProvider>,
    pub gpu_seconds: Option<i32>,
    pub memory_used_mb: Option<i32>,
    /// A placeholder from the procedural fallback rather than an image server's.
    pub placeholder: bool,
    /// The variant character the images went to, if the job made one.
    pub result_character_id: Option<String>,
}

/// The last step of processing → completed, after [`lock_for_completion`]
/// and the images: the hold settled for what was delivered (the fallback
/// price for a placeholder), the job completed with what it cost. Answers
/// the settlement (`None` for a job that held nothing).
pub async fn complete(
    client: &impl GenericClient,
    job_id: &str,
    delivered: Delivered<'_>,
) -> Result<Option<holds::Settlement>, LedgerError> {
    let delivery = if delivered.placeholder {
        Delivery::Placeholder
    } else {
        Delivery::Generated
    };
    let settlement = holds::settle_for(client, job_id, delivery).await?;
    let charged = settlement.as_ref().map(|s| s.charged);
    let mut metadata = delivered.metadata;
    if let Some(object) = metadata.as_object_mut() {
        object.insert(
            "charge".into(),
            json!(settlement.as_ref().map(|s| json!({
                "held": s.hold.price,
                "charged": s.charged,
                "delivery": if delivered.placeholder { "placeholder" } else { "generated" },
                "transaction_id": s.transaction_id,
            }))),
        );
    }
    client
        .execute(
            "UPDATE generation_jobs SET status = 'completed', completed_at = now(), output_urls = $2, \
               processing_metadata = coalesce(processing_metadata, '{}'::jsonb) || $3, generation_provider = $4, \
               gpu_time_seconds = $5, memory_used_mb = $6, error_details = NULL, \
               cost_credits = coalesce($7, cost_credits), result_character_id = $8 \
             WHERE id = $1",
            &[
                &job_id,
                &json!(delivered.output_keys),
                &metadata,
                &delivered.provider,
                &delivered.gpu_seconds,
                &delivered.memory_used_mb,
                &charged,
                &delivered.result_character_id,
            ],
        )
        .await?;
    Ok(settlement)
}

/// One activity row about a job, for its user (no request: the worker or
/// the scheduler acts).
pub(crate) async fn log_activity(
    client: &impl GenericClient,
    job: &Job,
    activity_type: ActivityType,
    metadata: Value,
) -> Result<(), LedgerError> {
    log_job_activity(client, &job.user_id, &job.id, activity_type, metadata).await
}

async fn log_job_activity(
    client: &impl GenericClient,
    user_id: &str,
    job_id: &str,
    activity_type: ActivityType,
    metadata: Value,
) -> Result<(), LedgerError> {
    let activity = Activity {
        user_id: Some(user_id),
        activity_type,
        entity_type: Some("generation_job"),
        entity_id: Some(job_id),
        metadata,
    };
    activity::record(client, activity, &RequestMeta::default()).await?;
    Ok(())
}

/// queued → cancelled, for the owner's own job: the hold released, the
/// character no longer pending when nothing else is running for it. `None`
/// when the user has no such job or it is no longer queued.
pub async fn cancel_queued(
    client: &impl GenericClient,
    job_id: &str,
    user_id: &str,
) -> Result<Option<Job>, LedgerError> {
    let cancelled = client
        .query_opt(
            &format!(
                "UPDATE generation_jobs SET status = 'cancelled', completed_at = now(), cost_credits = 0 \
                 WHERE id = $1 AND user_id = $2 AND status = 'queued' RETURNING {JOB_COLUMNS}"
            ),
            &[&job_id, &user_id],
        )
        .await?;
    let Some(row) = cancelled else {
        return Ok(None);
    };
    let job = Job::from_row(&row)?;
    holds::release(client, &job.id).await?;
    if let Some(character_id) = &job.character_id {
        client
            .execute(
                "UPDATE characters SET generation_status = 'cancelled' WHERE id = $1 AND generation_status = 'pending' \
                 AND NOT EXISTS (SELECT 1 FROM generation_jobs j WHERE j.character_id = $1 AND j.status IN ('queued', 'processing'))",
                &[character_id],
            )
            .await?;
    }
    Ok(Some(job))
}

/// queued → cancelled for every job of a character its owner is deleting,
/// each hold released, so nobody pays for an image of a character that no
/// longer exists. A job already processing finds its character gone when it
/// completes ([`abandon_for_deleted_character`]). Answers how many.
pub async fn cancel_for_character(
    client: &impl GenericClient,
    character_id: &str,
    user_id: &str,
) -> Result<usize, LedgerError> {
    let queued = client
        .query(
            "UPDATE generation_jobs SET status = 'cancelled', completed_at = now(), cost_credits = 0, \
               error_details = '{\"error\": \"the character was deleted\"}'::jsonb \
             WHERE character_id = $1 AND user_id = $2 AND status = 'queued' RETURNING id",
            &[&character_id, &user_id],
        )
        .await?;
    Ok(release_each(client, &queued).await?.len())
}

/// queued or processing → cancelled for every job of a user whose account
/// is suspended, banned or erased (`reason` says which, in each job's
/// `error_details`), each hold released, and the user's characters no longer
/// waiting for an image. A worker rendering one of them finds it no longer
/// processing when it completes, and settles nothing. Answers the job ids,
/// sorted.
pub async fn cancel_for_user(
    client: &impl GenericClient,
    user_id: &str,
    reason: &str,
) -> Result<Vec<String>, LedgerError> {
    let rows = client
        .query(
            "UPDATE generation_jobs SET status = 'cancelled', completed_at = now(), cost_credits = 0, \
               error_details = $2 \
             WHERE user_id = $1 AND status IN ('queued', 'processing') RETURNING id",
            &[&user_id, &json!({ "error": reason })],
        )
        .await?;
    let mut cancelled = release_each(client, &rows).await?;
    client
        .execute(
            "UPDATE characters c SET generation_status = 'cancelled' \
             WHERE c.user_id = $1 AND c.generation_status IN ('pending', 'processing') \
               AND NOT EXISTS (SELECT 1 FROM generation_jobs j \
                               WHERE j.character_id = c.id AND j.status IN ('queued', 'processing'))",
            &[&user_id],
        )
        .await?;
    cancelled.sort();
    Ok(cancelled)
}

/// Releases the hold of each job whose id is the first column of `rows` (the
/// `RETURNING id` of a cancel); answers the ids.
async fn release_each(
    client: &impl GenericClient,
    rows: &[tokio_postgres::Row],
) -> Result<Vec<String>, LedgerError> {
    let mut ids = Vec::with_capacity(rows.len());
    for row in rows {
        let job_id: String = row.try_get(0)?;
        holds::release(client, &job_id).await?;
        ids.push(job_id);
    }
    Ok(ids)
}

/// processing → cancelled for a job whose character was deleted while it
/// rendered: nobody wants the images; the hold is released.
pub async fn abandon_for_deleted_character(
    client: &impl GenericClient,
    job_id: &str,
) -> Result<(), LedgerError> {
    client
        .execute(
            "UPDATE generation_jobs SET status = 'cancelled', completed_at = now(), cost_credits = 0, \
               error_details = '{\"error\": \"the character was deleted while the job ran\"}'::jsonb \
             WHERE id = $1",
            &[&job_id],
        )
        .await?;
    holds::release(client, job_id).await?;
    Ok(())
}

/// processing → timeout for a job still processing past its deadline (its
/// worker died): the hold released, the character failed. `false` when the
/// job is no longer processing or not yet due.
pub async fn time_out(client: &impl GenericClient, job_id: &str) -> Result<bool, LedgerError> {
    let changed = client
        .query_opt(
            "UPDATE generation_jobs SET status = 'timeout', completed_at = now(), cost_credits = 0, \
               error_details = coalesce(error_details, '{}'::jsonb) || '{\"error\": \"timed out\"}'::jsonb \
             WHERE id = $1 AND status = 'processing' AND timeout_at < now() RETURNING character_id",
            &[&job_id],
        )
        .await?;
    let Some(row) = changed else {
        return Ok(false);
    };
    let character_id: Option<String> = row.try_get(0)?;
    holds::release(client, job_id).await?;
    if let Some(character_id) = character_id {
        client
            .execute(
                "UPDATE characters SET generation_status = 'failed', error_message = 'generation timed out' \
                 WHERE id = $1 AND generation_status = 'processing'",
                &[&character_id],
            )
            .await?;
    }
    Ok(true)
}

/// queued → failed for a job whose queue message was lost too many times
/// (still queued `after_secs` after its last send): the hold released, the
/// character failed, the user's activity log told. `false` when the job was
/// claimed or sent again meanwhile.
pub async fn fail_lost_message(
    client: &impl GenericClient,
    job_id: &str,
    after_secs: f64,
) -> Result<bool, LedgerError> {
    let row = client
        .query_opt(
            "UPDATE generation_jobs SET status = 'failed', completed_at = now(), cost_credits = 0, \
               error_details = coalesce(error_details, '{}'::jsonb) || $3 \
             WHERE id = $1 AND status = 'queued' AND enqueued_at < now() - make_interval(secs => $2) \
             RETURNING character_id, user_id",
            &[
                &job_id,
                &after_secs,
                &json!({"error": "the job's queue message was lost too many times", "stage": "queue"}),
            ],
        )
        .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    holds::release(client, job_id).await?;
    let character_id: Option<String> = row.try_get(0)?;
    if let Some(character_id) = character_id {
        client
            .execute(
                "UPDATE characters SET generation_status = 'failed', \
                   error_message = 'the generation could not be run; its credits were released' \
                 WHERE id = $1 AND generation_status = 'pending'",
                &[&character_id],
            )
            .await?;
    }
    let user_id: String = row.try_get(1)?;
    log_job_activity(
        client,
        &user_id,
        job_id,
        ActivityType::JobFailed,
        json!({"error": "queue message lost", "stage": "queue"}),
    )
    .await?;
    Ok(true)
}

/// The first line of a failure's `error`, as a character shows it.
pub(crate) fn failure_message(details: &Value) -> String {
    details
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("generation failed")
        .chars()
        .take(500)
        .collect()
}
