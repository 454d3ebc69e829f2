//! The generation worker: for each SQS message, claim the job (queued →
//! processing, a conditional update), run the provider chain, store the
//! images and thumbnails, then in one transaction mark the job and the
//! character completed and settle the credits. Failures retry while
//! transient and attempts remain (the message comes back after the
//! visibility timeout), then fail the job and release its hold.
//!
//! Exactly once, whatever SQS redelivers: a message for a job that is not
//! queued (already claimed, finished, cancelled or timed out) is acknowledged
//! without side effects, and completion and failure are conditional on the
//! job still being `processing`, so a job the sweeper timed out meanwhile
//! neither settles nor keeps its images.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::credits::holds;
use crate::db::DbPool;
use crate::generator::{GenerationRequest, GeneratorChain, JobType, ProgressReporter, thumbnail};
use crate::jobs::{JOB_COLUMNS, Job, JobMessage};
use crate::storage::ObjectStore;

/// Longest side of a thumbnail.
pub const THUMBNAIL_SIDE: u32 = 256;

#[derive(Clone)]
pub struct Worker {
    pub db: DbPool,
    pub storage: Arc<dyn ObjectStore>,
    pub generator: Arc<GeneratorChain>,
    /// A claimed job not finished by then is timed out by the scheduler.
    pub job_timeout: Duration,
    /// Attempts before a transient failure becomes final.
    pub max_attempts: i32,
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed {
    /// Done with this message (completed, failed for good, or nothing to do).
    Acknowledge(&'static str),
    /// Put it back: SQS redelivers it after the visibility timeout.
    Retry(String),
}

#[derive(Debug, thiserror::Error)]
enum WorkerError {
    #[error("database: {0}")]
    Database(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("ledger: {0}")]
    Ledger(#[from] crate::credits::ledger::LedgerError),
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
}

impl Worker {
    /// Handles an SQS batch; the messages to retry are reported as
    /// `batchItemFailures` (the function's event source has
    /// `ReportBatchItemFailures`), the rest are deleted by Lambda.
    pub async fn handle_batch(&self, event: SqsEvent) -> SqsBatchResponse {
        let mut failures = Vec::new();
        for record in &event.records {
            match self.handle_message(record).await {
                Processed::Acknowledge(_) => {}
                Processed::Retry(reason) => {
                    tracing::warn!(message_id = ?record.message_id, %reason, "job will be retried");
                    let mut failure = BatchItemFailure::default();
                    failure.item_identifier = record.message_id.clone().unwrap_or_default();
                    failures.push(failure);
                }
            }
        }
        let mut response = SqsBatchResponse::default();
        response.batch_item_failures = failures;
        response
    }

    pub async fn handle_message(&self, record: &SqsMessage) -> Processed {
        let Some(message) = record
            .body
            .as_deref()
            .and_then(|body| serde_json::from_str::<JobMessage>(body).ok())
        else {
            // It can never succeed: drop it rather than feed it to the DLQ in a loop.
            tracing::error!(message_id = ?record.message_id, "unreadable job message dropped");
            return Processed::Acknowledge("unreadable message");
        };
        match self.process(&message.job_id).await {
            Ok(processed) => processed,
            Err(e) => Processed::Retry(e.to_string()),
        }
    }

    async fn process(&self, job_id: &str) -> Result<Processed, WorkerError> {
        let mut conn = self.db.get().await?;
        let client: &mut Client = &mut conn;
        let Some(job) = claim(client, job_id, self.job_timeout).await? else {
            return Ok(Processed::Acknowledge("job not queued"));
        };
        let started = Instant::now();
        let request = match self.request_for(&job).await {
            Ok(request) => request,
            Err(reason) => {
                self.fail(client, &job, json!({"error": reason, "stage": "prepare"}))
                    .await?;
                return Ok(Processed::Acknowledge("failed"));
            }
        };
        let generated = tokio::time::timeout(
            self.job_timeout,
            self.generator.generate(&request, &ProgressReporter::none()),
        )
        .await;
        let outcome = match generated {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(error)) => {
                let details = error.details();
                if error.is_transient() && job.attempts < self.max_attempts {
                    requeue(client, &job.job.id, &details).await?;
                    return Ok(Processed::Retry(error.to_string()));
                }
                self.fail(
                    client,
                    &job,
                    json!({"error": error.to_string(), "details": details}),
                )
                .await?;
                return Ok(Processed::Acknowledge("failed"));
            }
            Err(_) => {
                let details = json!({"error": "generation took longer than the job timeout"});
                if job.attempts < self.max_attempts {
                    requeue(client, &job.job.id, &details).await?;
                    return Ok(Processed::Retry("generation timed out".into()));
                }
                self.fail(client, &job, details).await?;
                return Ok(Processed::Acknowledge("failed"));
            }
        };
        let keys = self.store(&job.job, &outcome.images.images).await?;
        let completed = complete(client, &job.job, &keys, &outcome, started.elapsed()).await?;
        if !completed {
            // Cancelled or timed out while rendering: keep nothing.
            for key in keys.images.iter().chain(&keys.thumbnails) {
                let _ = self.storage.delete(key).await;
            }
            return Ok(Processed::Acknowledge("job no longer processing"));
        }
        Ok(Processed::Acknowledge("completed"))
    }

    async fn request_for(&self, claimed: &Claimed) -> Result<GenerationRequest, String> {
        let job = &claimed.job;
        let input = &job.input_parameters;
        let text = |name: &str| input.get(name).and_then(Value::as_str).map(str::to_string);
        let number = |name: &str| input.get(name).and_then(Value::as_i64);
        let job_type = JobType::parse(&job.job_type)
            .ok_or_else(|| format!("unknown job type {}", job.job_type))?;
        let init_image = match text("init_image_key") {
            Some(key) if crate::jobs::dispatch::needs_image(&job.job_type) => Some(
                self.storage
                    .get(&key)
                    .await
                    .map_err(|e| format!("the character's image cannot be read: {e}"))?,
            ),
            _ => None,
        };
        let to_u32 = |value: Option<i64>, default: u32| {
            value.and_then(|v| u32::try_from(v).ok()).unwrap_or(default)
        };
        let request = GenerationRequest {
            job_type,
            prompt: text("prompt").unwrap_or_default(),
            negative_prompt: text("negative_prompt").unwrap_or_default(),
            style_type: text("style_type").unwrap_or_else(|| "artistic".into()),
            art_style: None,
            mood: None,
            color_palette: Vec::new(),
            tags: Vec::new(),
            model_version: None,
            steps: to_u32(number("steps"), 20),
            cfg_scale: input
                .get("cfg_scale")
                .and_then(Value::as_f64)
                .unwrap_or(7.5),
            sampler: text("sampler").unwrap_or_else(|| "DPM++ 2M Karras".into()),
            seed: number("seed").unwrap_or(0),
            width: to_u32(number("width"), 512),
            height: to_u32(number("height"), 512),
            batch_size: to_u32(number("batch_size"), 1),
            init_image,
            denoising_strength: input
                .get("denoising_strength")
                .and_then(Value::as_f64)
                .unwrap_or(0.6),
            upscale_factor: input
                .get("upscale_factor")
                .and_then(Value::as_f64)
                .unwrap_or(2.0),
        };
        request.validate().map_err(|e| e.to_string())?;
        Ok(request)
    }

    /// Stores each image and its thumbnail under the job's prefix.
    async fn store(&self, job: &Job, images: &[Vec<u8>]) -> Result<StoredKeys, WorkerError> {
        let prefix = format!(
            "users/{}/characters/{}/{}",
            job.user_id,
            job.character_id.as_deref().unwrap_or("none"),
            job.id
        );
        let mut keys = StoredKeys::default();
        for (i, image) in images.iter().enumerate() {
            let key = format!("{prefix}/image-{i}.png");
            self.storage.put(&key, image.clone(), "image/png").await?;
            keys.images.push(key);
            // PNG encoding is CPU work: off the async threads.
            let source = image.clone();
            let made =
                tokio::task::spawn_blocking(move || thumbnail::thumbnail(&source, THUMBNAIL_SIDE))
                    .await
                    .map_err(|e| thumbnail::ThumbnailError::Encode(e.to_string()));
            match made.and_then(|result| result) {
                Ok(thumb) => {
                    let key = format!("{prefix}/thumb-{i}.png");
                    self.storage.put(&key, thumb, "image/png").await?;
                    keys.thumbnails.push(key);
                }
                Err(e) => tracing::warn!(job_id = %job.id, error = %e, "no thumbnail"),
            }
        }
        Ok(keys)
    }

    async fn fail(
        &self,
        client: &mut Client,
        claimed: &Claimed,
        details: Value,
    ) -> Result<(), WorkerError> {
        let job = &claimed.job;
        let tx = client.transaction().await?;
        let failed = tx
            .execute(
                "UPDATE generation_jobs SET status = 'failed', completed_at = now(), error_details = $2 \
                 WHERE id = $1 AND status = 'processing'",
                &[&job.id, &details],
            )
            .await?;
        if failed == 1 {
            holds::release(&tx, &job.id).await?;
            if let Some(character_id) = &job.character_id {
                let message = details
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("generation failed")
                    .chars()
                    .take(500)
                    .collect::<String>();
                tx.execute(
                    "UPDATE characters SET generation_status = 'failed', error_message = $2, retry_count = $3, \
                       processing_completed_at = now() WHERE id = $1",
                    &[character_id, &message, &claimed.attempts],
                )
                .await?;
            }
            log_activity(&tx, job, "job_failed", details).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[derive(Debug, Default)]
struct StoredKeys {
    images: Vec<String>,
    thumbnails: Vec<String>,
}

struct Claimed {
    job: Job,
    attempts: i32,
}

/// queued → processing, once: `None` for a job that is not queued.
async fn claim(
    client: &Client,
    job_id: &str,
    timeout: Duration,
) -> Result<Option<Claimed>, WorkerError> {
    let row = client
        .query_opt(
            &format!(
                "UPDATE generation_jobs SET status = 'processing', started_at = now(), attempts = attempts + 1, \
                   timeout_at = now() + make_interval(secs => $2) \
                 WHERE id = $1 AND status = 'queued' RETURNING {JOB_COLUMNS}, attempts"
            ),
            &[&job_id, &timeout.as_secs_f64()],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let job = Job::from_row(&row)?;
    let attempts: i32 = row.try_get("attempts")?;
    if let Some(character_id) = &job.character_id {
        client
            .execute(
                "UPDATE characters SET generation_status = 'processing', processing_started_at = now() WHERE id = $1",
                &[character_id],
            )
            .await?;
    }
    Ok(Some(Claimed { job, attempts }))
}

/// Puts a claimed job back in the queue for another attempt.
async fn requeue(client: &Client, job_id: &str, details: &Value) -> Result<(), WorkerError> {
    client
        .execute(
            "UPDATE generation_jobs SET status = 'queued', started_at = NULL, timeout_at = NULL, \
               error_details = $2 WHERE id = $1 AND status = 'processing'",
            &[&job_id, details],
        )
        .await?;
    Ok(())
}

/// Marks the job and its character completed and settles the credits, in one
/// transaction. `false` when the job is no longer processing.
async fn complete(
    client: &mut Client,
    job: &Job,
    keys: &StoredKeys,
    outcome: &crate::generator::ChainOutcome,
    elapsed: Duration,
) -> Result<bool, WorkerError> {
    let tx = client.transaction().await?;
    let provider = match outcome.provider() {
        p @ ("primary" | "secondary" | "fallback") => Some(p.to_string()),
        _ => None,
    };
    let metadata = json!({
        "generation": outcome.metadata(),
        "elapsed_ms": elapsed.as_millis() as u64,
        "images": keys.images.len(),
    });
    let gpu_seconds = outcome
        .images
        .gpu_time_ms
        .map(|ms| i32::try_from(ms.div_ceil(1000)).unwrap_or(i32::MAX));
    let memory_mb = peak_memory_mb();
    let changed = tx
        .execute(
            "UPDATE generation_jobs SET status = 'completed', completed_at = now(), output_urls = $2, \
               processing_metadata = coalesce(processing_metadata, '{}'::jsonb) || $3, generation_provider = $4, \
               gpu_time_seconds = $5, memory_used_mb = $6, error_details = NULL \
             WHERE id = $1 AND status = 'processing'",
            &[&job.id, &json!(keys.images), &metadata, &provider, &gpu_seconds, &memory_mb],
        )
        .await?;
    if changed == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    // The user's row before the character's: the order dispatch, cancel and
    // erasure take them in (job, user, character), so a completion cannot
    // deadlock with a cancel of another job of the same character.
    let generated = i32::try_from(keys.images.len()).unwrap_or(i32::MAX);
    tx.execute(
        "UPDATE users SET total_images_generated = total_images_generated + $2 WHERE id = $1",
        &[&job.user_id, &generated],
    )
    .await?;
    if let Some(character_id) = &job.character_id {
        let primary = keys.images.first();
        let thumb = keys.thumbnails.first();
        let additional: Vec<&String> = keys.images.iter().skip(1).collect();
        tx.execute(
            "UPDATE characters SET primary_image_url = $2, thumbnail_url = $3, additional_images = $4, \
               image_metadata = $5, generation_status = 'completed', processing_completed_at = now(), \
               processing_time_seconds = $6, error_message = NULL WHERE id = $1",
            &[
                character_id,
                &primary,
                &thumb,
                &json!(additional),
                &json!({"job_id": job.id, "provider": outcome.provider(), "images": keys.images.len()}),
                &(i32::try_from(elapsed.as_secs()).unwrap_or(i32::MAX)),
            ],
        )
        .await?;
    }
    holds::settle(&tx, &job.id).await?;
    log_activity(
        &tx,
        job,
        "image_generated",
        json!({"images": generated, "provider": outcome.provider()}),
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

async fn log_activity(
    tx: &tokio_postgres::Transaction<'_>,
    job: &Job,
    activity_type: &str,
    metadata: Value,
) -> Result<(), WorkerError> {
    tx.execute(
        "INSERT INTO user_activity_logs (user_id, activity_type, entity_type, entity_id, metadata) \
         VALUES ($1, $2, 'generation_job', $3, $4)",
        &[&job.user_id, &activity_type, &job.id, &metadata],
    )
    .await?;
    Ok(())
}

/// The process's peak resident memory in MiB (Linux), for `memory_used_mb`.
fn peak_memory_mb() -> Option<i32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: i64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    i32::try_from(kib / 1024).ok()
}
