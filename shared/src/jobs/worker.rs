//! The generation worker: for each SQS message, claim the job (queued →
//! processing, one short transaction), render with the provider chain and
//! store the images holding no database connection, then complete in a
//! second short transaction: record the images, create the variant a
//! variation or style transfer asked for, settle the credits for what was
//! delivered. Failures retry while transient and attempts remain, the message
//! coming back after a backoff (ChangeMessageVisibility), then fail the job
//! and release its hold.
//!
//! Exactly once, whatever SQS redelivers: a message for a job that is not
//! queued (already claimed, finished, cancelled or timed out) is acknowledged
//! without side effects, and completion and failure are conditional on the
//! job still being `processing`, so a job the sweeper timed out meanwhile
//! neither settles nor keeps its images.
//!
//! Holding nothing while waiting: a render takes tens of seconds on a GPU
//! server. Keeping a pooled connection through it would starve the pool (the
//! local stack's API would answer 503s) and spend RDS Proxy connections on
//! GPU time, so the worker takes a connection only for the claim, for each
//! progress write (at most one a second) and for the completion.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use serde_json::{Value, json};
use tracing::Instrument;

use crate::activity::ActivityType;
use crate::jobs::input::GenerationInput;
use crate::jobs::{Job, JobMessage};
use crate::kernel::config::WorkerConfig;
use crate::kernel::telemetry::Invocation;
use crate::kernel::vocabulary::GenerationProvider;
use crate::ports::db::DbPool;
use crate::ports::generator::{ChainOutcome, GeneratorChain, thumbnail};
use crate::ports::queue::JobQueue;
use crate::ports::storage::{ObjectStore, StorageError};

/// Longest side of a thumbnail.
pub const THUMBNAIL_SIDE: u32 = 256;

/// At most one progress write per job per this interval.
pub const PROGRESS_WRITE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Worker {
    pub db: DbPool,
    pub storage: Arc<dyn ObjectStore>,
    pub generator: Arc<GeneratorChain>,
    /// Where retried messages get their backoff (ChangeMessageVisibility);
    /// without one, a retried message comes back after the queue's
    /// visibility timeout.
    pub queue: Option<Arc<dyn JobQueue>>,
    /// Timeout, attempts and retry backoff.
    pub settings: WorkerConfig,
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed {
    /// Done with this message (completed, failed for good, or nothing to do).
    Acknowledge(&'static str),
    /// Put it back: it comes back after `after` (or the visibility timeout).
    Retry { reason: String, after: Duration },
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
    Storage(#[from] StorageError),
}

impl WorkerError {
    /// How the database could not be reached, if that is what this is.
    fn database_unavailable(&self) -> Option<&'static str> {
        match self {
            Self::Database(e) | Self::Ledger(crate::credits::ledger::LedgerError::Database(e)) => {
                crate::kernel::error::database_unavailable(e).then_some("connection")
            }
            Self::Pool(e) => crate::kernel::error::pool_unavailable(e),
            _ => None,
        }
    }
}

/// A claimed job and what it renders.
struct Claimed {
    job: Job,
    attempts: i32,
    input: Result<GenerationInput, String>,
}

/// One stored image: its keys, size and place in the batch.
#[derive(Debug, Clone)]
struct StoredImage {
    key: String,
    thumbnail_key: Option<String>,
    width: Option<i32>,
    height: Option<i32>,
    bytes: i64,
}

impl Worker {
    /// Handles an SQS batch; the messages to retry are reported as
    /// `batchItemFailures` (the function's event source has
    /// `ReportBatchItemFailures`) after their visibility is set to the
    /// backoff, the rest are deleted by Lambda.
    pub async fn handle_batch(&self, event: SqsEvent) -> SqsBatchResponse {
        // In Lambda the function runs this inside its invocation's scope: the
        // batch and message spans carry its ids, so every line logged names it.
        let invocation = Invocation::current();
        let span = tracing::info_span!(
            "batch",
            lambda_request_id = invocation.request_id(),
            xray_trace_id = invocation.trace_id(),
            messages = event.records.len(),
        );
        self.handle_records(&event, &invocation)
            .instrument(span)
            .await
    }

    async fn handle_records(&self, event: &SqsEvent, invocation: &Invocation) -> SqsBatchResponse {
        let mut failures = Vec::new();
        for record in &event.records {
            let span = tracing::info_span!(
                "message",
                lambda_request_id = invocation.request_id(),
                xray_trace_id = invocation.trace_id(),
                message_id = record.message_id.as_deref(),
                job_id = tracing::field::Empty,
            );
            let processed = self.handle_message(record).instrument(span.clone()).await;
            match processed {
                Processed::Acknowledge(_) => {}
                Processed::Retry { reason, after } => {
                    span.in_scope(|| {
                        tracing::warn!(%reason, retry_in_s = after.as_secs(), "job will be retried");
                    });
                    self.back_off(record, after).instrument(span).await;
                    let mut failure = BatchItemFailure::default();
                    failure.item_identifier = record.message_id.clone().unwrap_or_default();
                    failures.push(failure);
                }
            }
        }
        tracing::info!(
            messages = event.records.len(),
            retried = failures.len(),
            "batch handled"
        );
        let mut response = SqsBatchResponse::default();
        response.batch_item_failures = failures;
        response
    }

    /// Makes a message to retry visible again after `after`. A failure only
    /// means the retry waits for the visibility timeout instead.
    async fn back_off(&self, record: &SqsMessage, after: Duration) {
        let (Some(queue), Some(receipt)) = (&self.queue, record.receipt_handle.as_deref()) else {
            return;
        };
        if let Err(e) = queue.change_visibility(receipt, after).await {
            tracing::warn!(message_id = ?record.message_id, error = %e, "retry backoff not set; the message returns after the visibility timeout");
        }
    }

    pub async fn handle_message(&self, record: &SqsMessage) -> Processed {
        let Some(message) = record
            .body
            .as_deref()
            .and_then(|body| serde_json::from_str::<JobMessage>(body).ok())
        else {
            // It can never succeed: drop it rather than feed it to the DLQ in a loop.
            tracing::error!("unreadable job message dropped");
            return Processed::Acknowledge("unreadable message");
        };
        tracing::Span::current().record("job_id", message.job_id.as_str());
        let receives = record
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|count| count.parse::<u32>().ok())
            .unwrap_or(1);
        match self.process(&message.job_id).await {
            Ok(processed) => processed,
            // The database or storage failed us: the message comes back later.
            Err(e) => {
                if let Some(kind) = e.database_unavailable() {
                    crate::kernel::metrics::database_connection_error(kind);
                }
                Processed::Retry {
                    reason: e.to_string(),
                    after: self.settings.retry_delay(receives),
                }
            }
        }
    }

    async fn process(&self, job_id: &str) -> Result<Processed, WorkerError> {
        let Some(claimed) = self.claim(job_id).await? else {
            return Ok(Processed::Acknowledge("job not queued"));
        };
        let started = Instant::now();
        let (input, request) = match self.prepare(&claimed).await? {
            Ok(prepared) => prepared,
            Err(processed) => return Ok(processed),
        };
        let (outcome, render_time) = match self.render(&claimed, &request).await? {
            Ok(rendered) => rendered,
            Err(processed) => return Ok(processed),
        };
        self.store_and_complete(&claimed, &input, &outcome, started, render_time)
            .await
    }

    /// The claimed job's input, source image and generation request; `Err`
    /// with what became of the job (failed, or retried) when one cannot be had.
    async fn prepare(
        &self,
        claimed: &Claimed,
    ) -> Result<
        Result<(GenerationInput, crate::ports::generator::GenerationRequest), Processed>,
        WorkerError,
    > {
        let input = match &claimed.input {
            Ok(input) => input.clone(),
            Err(reason) => {
                let details = json!({"error": reason, "stage": "prepare"});
                self.fail(claimed, details).await?;
                return Ok(Err(Processed::Acknowledge("failed")));
            }
        };
        let init_image = match self.source_bytes(&claimed.job, &input).await {
            Ok(bytes) => bytes,
            Err(StorageError::Backend(e)) => {
                let details = json!({"error": format!("the source image cannot be read now: {e}"), "stage": "prepare"});
                return self
                    .retry_or_fail(claimed, details, "storage")
                    .await
                    .map(Err);
            }
            Err(e) => {
                let details = json!({"error": format!("the source image cannot be read: {e}"), "stage": "prepare"});
                self.fail(claimed, details).await?;
                return Ok(Err(Processed::Acknowledge("failed")));
            }
        };
        let request = match input.to_request(claimed.job.job_type, init_image) {
            Ok(request) => request,
            Err(reason) => {
                self.fail(claimed, json!({"error": reason, "stage": "prepare"}))
                    .await?;
                return Ok(Err(Processed::Acknowledge("failed")));
            }
        };
        Ok(Ok((input, request)))
    }

    /// Runs the generator chain under the job timeout, its progress written
    /// as it comes; the outcome and the render time, or `Err` with what
    /// became of the job (failed, or retried).
    async fn render(
        &self,
        claimed: &Claimed,
        request: &crate::ports::generator::GenerationRequest,
    ) -> Result<Result<(ChainOutcome, Duration), Processed>, WorkerError> {
        let (progress, updates) = crate::ports::generator::ProgressReporter::channel();
        let tracker = tokio::spawn(
            track_progress(self.db.clone(), claimed.job.id.clone(), updates).in_current_span(),
        );
        let render_started = Instant::now();
        let generated = tokio::time::timeout(
            self.settings.job_timeout,
            self.generator.generate(request, &progress),
        )
        .await;
        let render_time = render_started.elapsed();
        drop(progress);
        tracker.abort();
        let outcome = match generated {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(error)) => {
                let details = json!({"error": error.to_string(), "details": error.details()});
                if error.is_transient() {
                    return self
                        .retry_or_fail(claimed, details, "provider")
                        .await
                        .map(Err);
                }
                self.fail(claimed, details).await?;
                return Ok(Err(Processed::Acknowledge("failed")));
            }
            Err(_) => {
                let details = json!({"error": "generation took longer than the job timeout"});
                return self
                    .retry_or_fail(claimed, details, "timeout")
                    .await
                    .map(Err);
            }
        };
        Ok(Ok((outcome, render_time)))
    }

    /// Stores the images and completes the job; on an abandoned or failed
    /// completion the stored objects are deleted (and the job retried or
    /// failed).
    async fn store_and_complete(
        &self,
        claimed: &Claimed,
        input: &GenerationInput,
        outcome: &ChainOutcome,
        started: Instant,
        render_time: Duration,
    ) -> Result<Processed, WorkerError> {
        let target = input
            .target_character(claimed.job.character_id.as_deref())
            .map(str::to_string);
        let stored = self
            .store(&claimed.job, target.as_deref(), &outcome.images.images)
            .await;
        let stored = match stored {
            Ok(stored) => stored,
            Err((stored, e)) => {
                self.delete_objects(&stored).await;
                let details =
                    json!({"error": format!("the images cannot be stored: {e}"), "stage": "store"});
                return self.retry_or_fail(claimed, details, "storage").await;
            }
        };
        let completed = self
            .complete(claimed, input, &stored, outcome, started.elapsed())
            .await;
        match completed {
            Ok(Completion::Completed) => {
                crate::kernel::metrics::job_completed(
                    claimed.job.job_type.as_str(),
                    outcome.provider(),
                    render_time,
                );
                Ok(Processed::Acknowledge("completed"))
            }
            Ok(Completion::Abandoned(why)) => {
                // Cancelled, timed out or its character deleted while rendering: keep nothing.
                self.delete_objects(&stored).await;
                Ok(Processed::Acknowledge(why))
            }
            Err(e) => {
                // Nothing of the completion was committed: the images go, and the
                // job goes back to the queue while attempts remain.
                self.delete_objects(&stored).await;
                let details =
                    json!({"error": format!("the completion failed: {e}"), "stage": "complete"});
                self.retry_or_fail(claimed, details, "complete").await
            }
        }
    }

    /// queued → processing, once, in one short transaction: `None` for a job
    /// that is not queued.
    async fn claim(&self, job_id: &str) -> Result<Option<Claimed>, WorkerError> {
        let mut conn = self.db.get().await?;
        let client: &mut tokio_postgres::Client = &mut conn;
        let tx = client.transaction().await?;
        let Some(claim) =
            super::lifecycle::claim(&tx, job_id, self.settings.job_timeout.as_secs_f64()).await?
        else {
            return Ok(None);
        };
        let super::lifecycle::Claim {
            job,
            attempts,
            queue_wait_ms,
        } = claim;
        tx.commit().await?;
        if let Some(ms) = queue_wait_ms {
            crate::kernel::metrics::queue_wait(
                job.job_type.as_str(),
                Duration::from_secs_f64(ms.max(0.0) / 1000.0),
            );
        }
        let input = GenerationInput::from_value(&job.input_parameters);
        Ok(Some(Claimed {
            job,
            attempts,
            input,
        }))
    }

    /// The bytes of the image the job starts from, if it has one.
    async fn source_bytes(
        &self,
        job: &Job,
        input: &GenerationInput,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let needs = job.job_type.needs_image();
        match (&input.source, needs) {
            (Some(source), true) => self.storage.get(&source.key).await.map(Some),
            _ => Ok(None),
        }
    }

    /// Stores each image and its thumbnail under
    /// `users/{user}/characters/{target}/{job}/`. On failure, the objects
    /// already stored come back with the error, for the caller to delete.
    async fn store(
        &self,
        job: &Job,
        target: Option<&str>,
        images: &[Vec<u8>],
    ) -> Result<Vec<StoredImage>, (Vec<StoredImage>, StorageError)> {
        let prefix = format!(
            "users/{}/characters/{}/{}",
            job.user_id,
            target.unwrap_or("none"),
            job.id
        );
        let mut stored = Vec::with_capacity(images.len());
        for (i, image) in images.iter().enumerate() {
            let key = format!("{prefix}/image-{i}.png");
            let size = crate::ports::generator::png_dimensions(image).ok();
            if let Err(e) = self.storage.put(&key, image.clone(), "image/png").await {
                return Err((stored, e));
            }
            let mut record = StoredImage {
                key,
                thumbnail_key: None,
                width: size.and_then(|(w, _)| i32::try_from(w).ok()),
                height: size.and_then(|(_, h)| i32::try_from(h).ok()),
                bytes: i64::try_from(image.len()).unwrap_or(i64::MAX),
            };
            // PNG encoding is CPU work: off the async threads.
            let source = image.clone();
            let made =
                tokio::task::spawn_blocking(move || thumbnail::thumbnail(&source, THUMBNAIL_SIDE))
                    .await
                    .map_err(|e| thumbnail::ThumbnailError::Encode(e.to_string()));
            match made.and_then(|result| result) {
                Ok(thumb) => {
                    let key = format!("{prefix}/thumb-{i}.png");
                    if let Err(e) = self.storage.put(&key, thumb, "image/png").await {
                        stored.push(record);
                        return Err((stored, e));
                    }
                    record.thumbnail_key = Some(key);
                }
                Err(e) => tracing::warn!(job_id = %job.id, error = %e, "no thumbnail"),
            }
            stored.push(record);
        }
        Ok(stored)
    }

    async fn delete_objects(&self, stored: &[StoredImage]) {
        for image in stored {
            for key in std::iter::once(&image.key).chain(&image.thumbnail_key) {
                if let Err(e) = self.storage.delete(key).await {
                    tracing::warn!(%key, error = %e, "orphaned object of an abandoned job");
                }
            }
        }
    }

    /// Another attempt while attempts remain (the job back to `queued`, the
    /// message back after the backoff), else the job fails.
    async fn retry_or_fail(
        &self,
        claimed: &Claimed,
        details: Value,
        why: &'static str,
    ) -> Result<Processed, WorkerError> {
        if claimed.attempts < self.settings.max_attempts {
            self.requeue(&claimed.job.id, &details).await?;
            crate::kernel::metrics::job_retried(claimed.job.job_type.as_str(), why);
            let after = self
                .settings
                .retry_delay(u32::try_from(claimed.attempts).unwrap_or(1));
            return Ok(Processed::Retry {
                reason: format!("{why}: {}", details["error"].as_str().unwrap_or("failed")),
                after,
            });
        }
        self.fail(claimed, details).await?;
        Ok(Processed::Acknowledge("failed"))
    }

    /// Puts a claimed job back in the queue for another attempt. Its message,
    /// reported as a batch failure, comes back after the backoff, so its send
    /// time is now as far as the scheduler's lost-message check goes.
    async fn requeue(&self, job_id: &str, details: &Value) -> Result<(), WorkerError> {
        let conn = self.db.get().await?;
        super::lifecycle::requeue(&**conn, job_id, details).await?;
        Ok(())
    }

    /// processing → failed, the hold released, in one transaction.
    async fn fail(&self, claimed: &Claimed, details: Value) -> Result<(), WorkerError> {
        let job = &claimed.job;
        let mut conn = self.db.get().await?;
        let client: &mut tokio_postgres::Client = &mut conn;
        let tx = client.transaction().await?;
        let failed = super::lifecycle::fail(&tx, job, &details, claimed.attempts).await?;
        tx.commit().await?;
        if failed {
            crate::kernel::metrics::job_failed(
                job.job_type.as_str(),
                last_failed_provider(&details),
                details
                    .get("stage")
                    .and_then(Value::as_str)
                    .unwrap_or("render"),
            );
        }
        Ok(())
    }

    /// In one transaction: the job completed, its images recorded on the
    /// character they belong to (a variant is created first), the user's
    /// image count, the character's status, and the hold settled for what
    /// was delivered. Abandoned when the job is no longer processing or its
    /// character was deleted meanwhile (then the hold is released).
    async fn complete(
        &self,
        claimed: &Claimed,
        input: &GenerationInput,
        stored: &[StoredImage],
        outcome: &ChainOutcome,
        elapsed: Duration,
    ) -> Result<Completion, WorkerError> {
        let job = &claimed.job;
        let mut conn = self.db.get().await?;
        let client: &mut tokio_postgres::Client = &mut conn;
        let tx = client.transaction().await?;
        let Some(character_id) =
            super::lifecycle::lock_for_completion(&tx, &job.id, &job.user_id).await?
        else {
            tx.rollback().await?;
            return Ok(Completion::Abandoned("job no longer processing"));
        };
        let Some(character_id) = character_id else {
            super::lifecycle::abandon_for_deleted_character(&tx, &job.id).await?;
            tx.commit().await?;
            return Ok(Completion::Abandoned("character deleted"));
        };
        let placeholder = outcome.provider_kind() == Some(GenerationProvider::Fallback);
        let target = match &input.variant {
            Some(plan) => {
                create_variant(&tx, job, &character_id, input, plan).await?;
                plan.character_id.clone()
            }
            None => character_id.clone(),
        };
        let image_ids = record_images(&tx, job, &target, input, stored, outcome).await?;
        let generated = i32::try_from(stored.len()).unwrap_or(i32::MAX);
        tx.execute(
            "UPDATE users SET total_images_generated = total_images_generated + $2 WHERE id = $1",
            &[&job.user_id, &generated],
        )
        .await?;
        Self::mark_characters_completed(&tx, &character_id, input, elapsed).await?;
        let delivered = Self::delivered(input, stored, outcome, elapsed, &image_ids, placeholder);
        let settlement = super::lifecycle::complete(&tx, &job.id, delivered).await?;
        let charged = settlement.as_ref().map(|s| s.charged);
        super::lifecycle::log_activity(
            &tx,
            job,
            ActivityType::ImageGenerated,
            json!({
                "images": generated,
                "provider": outcome.provider(),
                "placeholder": placeholder,
                "character_id": target,
                "charged": charged,
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(Completion::Completed)
    }

    /// Marks the job's character (and its variant, if the job made one)
    /// completed, with the processing time.
    async fn mark_characters_completed(
        tx: &tokio_postgres::Transaction<'_>,
        character_id: &str,
        input: &GenerationInput,
        elapsed: Duration,
    ) -> Result<(), WorkerError> {
        let seconds = i32::try_from(elapsed.as_secs()).unwrap_or(i32::MAX);
        for id in std::iter::once(character_id)
            .chain(input.variant.iter().map(|p| p.character_id.as_str()))
        {
            tx.execute(
                "UPDATE characters SET generation_status = 'completed', processing_completed_at = now(), \
                   processing_time_seconds = $2, error_message = NULL WHERE id = $1",
                &[&id, &seconds],
            )
            .await?;
        }
        Ok(())
    }

    /// What the job delivered, for [`super::lifecycle::complete`]: the keys,
    /// the run's metadata, the provider and the resources it used.
    fn delivered<'a>(
        input: &GenerationInput,
        stored: &'a [StoredImage],
        outcome: &ChainOutcome,
        elapsed: Duration,
        image_ids: &[String],
        placeholder: bool,
    ) -> super::lifecycle::Delivered<'a> {
        let gpu_seconds = outcome
            .images
            .gpu_time_ms
            .map(|ms| i32::try_from(ms.div_ceil(1000)).unwrap_or(i32::MAX));
        super::lifecycle::Delivered {
            output_keys: stored.iter().map(|s| &s.key).collect(),
            metadata: json!({
                "generation": outcome.metadata(),
                "elapsed_ms": elapsed.as_millis() as u64,
                "images": stored.len(),
                "image_ids": image_ids,
                "placeholder": placeholder,
                "progress": {"fraction": 1.0, "eta_seconds": 0.0, "updated_at": chrono::Utc::now()},
            }),
            provider: outcome.provider_kind(),
            gpu_seconds,
            memory_used_mb: peak_memory_mb(),
            placeholder,
            result_character_id: input.variant.as_ref().map(|p| p.character_id.clone()),
        }
    }
}

/// The provider that failed last, from a failure's `details` (the chain's
/// `failed_providers`), if a provider was tried at all.
fn last_failed_provider(details: &Value) -> Option<&str> {
    details
        .pointer("/details/failed_providers")
        .and_then(Value::as_array)
        .and_then(|failures| failures.last())
        .and_then(|failure| failure.get("provider"))
        .and_then(Value::as_str)
}

enum Completion {
    Completed,
    Abandoned(&'static str),
}

/// Creates the variant character a job's plan describes: the source
/// character's look with the requested changes (the job's input), its name
/// and licence, private, a child of `parent_id` (its version is the next in
/// the family, see V15's `characters_derive`).
async fn create_variant(
    tx: &tokio_postgres::Transaction<'_>,
    job: &Job,
    parent_id: &str,
    input: &GenerationInput,
    plan: &crate::jobs::input::VariantPlan,
) -> Result<(), WorkerError> {
    let seed = i32::try_from(input.seed).ok();
    let steps = i32::try_from(input.steps).ok();
    tx.execute(
        "INSERT INTO characters (id, user_id, name, description, prompt, negative_prompt, style_type, art_style, \
           mood, color_palette, model_version, generation_seed, cfg_scale, steps, sampler, tags, \
           allow_commercial_use, license_type, parent_character_id, variant_type, is_public, generation_status, \
           processing_started_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, coalesce($11, 'v1.0'), $12, $13::float8::numeric(3,1), $14, \
           $15, $16, coalesce($17, false), coalesce($18, 'standard'), $19, $20, false, 'processing', $21)",
        &[
            &plan.character_id,
            &job.user_id,
            &plan.name,
            &plan.description,
            &input.prompt,
            &input.negative_prompt,
            &input.style_type,
            &input.art_style,
            &input.mood,
            &(!input.color_palette.is_empty()).then_some(&input.color_palette),
            &input.model_version,
            &seed,
            &input.cfg_scale,
            &steps,
            &input.sampler,
            &input.tags,
            &plan.allow_commercial_use,
            &plan.license_type,
            &parent_id,
            &plan.variant_type,
            &job.started_at,
        ],
    )
    .await?;
    Ok(())
}

/// One `character_images` row per stored image, on the target character
/// (whose primary, thumbnail and additional images V15's triggers derive).
async fn record_images(
    tx: &tokio_postgres::Transaction<'_>,
    job: &Job,
    target: &str,
    input: &GenerationInput,
    stored: &[StoredImage],
    outcome: &ChainOutcome,
) -> Result<Vec<String>, WorkerError> {
    let provider = outcome.provider_kind();
    let parameters = json!({
        "input": crate::jobs::input::public_view(&input.to_value()),
        "provider_info": outcome.images.info,
    });
    let source_image = input
        .source
        .as_ref()
        .map(|s| s.image_id.as_str())
        .filter(|id| !id.is_empty());
    let mut ids = Vec::with_capacity(stored.len());
    for (i, image) in stored.iter().enumerate() {
        let index = i32::try_from(i).unwrap_or(i32::MAX);
        // A batch renders seeds seed, seed + 1, ... (as A1111 numbers them).
        let seed = input.seed.saturating_add(i64::from(index));
        let row = tx
            .query_one(
                "INSERT INTO character_images (character_id, user_id, job_id, job_type, batch_index, storage_key, \
                   thumbnail_key, width, height, byte_size, seed, generation_provider, parameters, source_image_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
                   (SELECT id FROM character_images WHERE id = $14)) \
                 RETURNING id",
                &[
                    &target,
                    &job.user_id,
                    &job.id,
                    &job.job_type,
                    &index,
                    &image.key,
                    &image.thumbnail_key,
                    &image.width,
                    &image.height,
                    &image.bytes,
                    &seed,
                    &provider,
                    &parameters,
                    &source_image,
                ],
            )
            .await?;
        ids.push(row.try_get::<_, String>(0)?);
    }
    Ok(ids)
}

/// Writes the render's progress to the job's `processing_metadata.progress`
/// (`{fraction, eta_seconds, updated_at}`), at most once per
/// [`PROGRESS_WRITE_INTERVAL`], each write on a connection taken and given
/// back at once. Ends when the reporter is dropped.
async fn track_progress(
    db: DbPool,
    job_id: String,
    mut updates: tokio::sync::watch::Receiver<Option<crate::ports::generator::Progress>>,
) {
    let mut last_write: Option<Instant> = None;
    while updates.changed().await.is_ok() {
        if let Some(at) = last_write {
            let wait = PROGRESS_WRITE_INTERVAL.saturating_sub(at.elapsed());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        let Some(progress) = *updates.borrow_and_update() else {
            continue;
        };
        let value = json!({
            "fraction": progress.fraction,
            "eta_seconds": progress.eta_seconds,
            "updated_at": chrono::Utc::now(),
        });
        let written = async {
            let conn = db.get().await.map_err(|e| e.to_string())?;
            conn.execute(
                "UPDATE generation_jobs SET processing_metadata = \
                   jsonb_set(coalesce(processing_metadata, '{}'::jsonb), '{progress}', $2) \
                 WHERE id = $1 AND status = 'processing'",
                &[&job_id, &value],
            )
            .await
            .map_err(|e| e.to_string())
        }
        .await;
        if let Err(e) = written {
            tracing::debug!(%job_id, error = %e, "progress not written");
        }
        last_write = Some(Instant::now());
    }
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
