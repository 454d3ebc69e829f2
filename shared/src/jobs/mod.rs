//! Generation jobs: every transition of a job ([`lifecycle`]), sending their
//! messages after commit ([`outbox`]), rendering them ([`worker`]), and the
//! routes that list, read and cancel them. [`input::GenerationInput`] is what
//! a job renders, written by `characters::generate` and read by the worker.
//!
//! It may use [`crate::credits`] (holds), [`crate::users`] and
//! [`crate::activity`], never [`crate::characters`]: characters use it (a
//! generation starts in `characters::generate`, a deleted character cancels
//! its jobs through [`lifecycle`]), and so do moderation, gdpr and the
//! runtime (the worker's Lambda adapter, the scheduler).

pub mod input;
pub mod lifecycle;
pub mod outbox;
pub mod routes;
pub mod worker;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_postgres::Row;
use utoipa::ToSchema;

crate::text_enum! {
    /// `generation_jobs.status`: `queued` until a worker claims it, then
    /// `processing`, and one of the final four.
    pub enum JobStatus {
        Queued => "queued",
        Processing => "processing",
        Completed => "completed",
        Failed => "failed",
        Cancelled => "cancelled",
        Timeout => "timeout",
    }
}

impl JobStatus {
    /// Whether the job may still change (and holds credits).
    pub fn is_active(self) -> bool {
        matches!(self, JobStatus::Queued | JobStatus::Processing)
    }
}

/// A `generation_jobs` row. Field names are the column names.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Job {
    pub id: String,
    pub user_id: String,
    pub character_id: Option<String>,
    pub job_type: crate::kernel::vocabulary::JobType,
    pub input_parameters: Value,
    pub generation_provider: Option<crate::kernel::vocabulary::GenerationProvider>,
    pub status: Option<JobStatus>,
    pub priority: Option<i32>,
    pub queued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub timeout_at: Option<DateTime<Utc>>,
    pub output_urls: Option<Value>,
    pub processing_metadata: Option<Value>,
    pub error_details: Option<Value>,
    pub gpu_time_seconds: Option<i32>,
    pub memory_used_mb: Option<i32>,
    /// What the job costs: the price held at dispatch, then what completion
    /// charged (the fallback price, 0 by default, for a procedural placeholder).
    pub cost_credits: Option<i32>,
    /// The variant character a `variation` or `style_transfer` job created.
    pub result_character_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub const JOB_COLUMNS: &str = "id, user_id, character_id, job_type, input_parameters, generation_provider, status, \
    priority, queued_at, started_at, completed_at, timeout_at, output_urls, processing_metadata, error_details, \
    gpu_time_seconds, memory_used_mb, cost_credits, result_character_id, created_at, updated_at";

impl Job {
    /// Stored output keys become time-limited links (see
    /// [`crate::ports::storage::image_link`]); the source image's key leaves the input.
    pub async fn present(&mut self, storage: Option<&dyn crate::ports::storage::ObjectStore>) {
        if let Some(outputs) = &self.output_urls {
            self.output_urls = Some(crate::ports::storage::image_links(storage, outputs).await);
        }
        self.hide_keys();
    }

    /// Removes storage keys a client must not see from `input_parameters`.
    pub fn hide_keys(&mut self) {
        self.input_parameters = input::public_view(&self.input_parameters);
    }

    pub fn from_row(row: &Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            user_id: row.try_get("user_id")?,
            character_id: row.try_get("character_id")?,
            job_type: row.try_get("job_type")?,
            input_parameters: row.try_get("input_parameters")?,
            generation_provider: row.try_get("generation_provider")?,
            status: row.try_get("status")?,
            priority: row.try_get("priority")?,
            queued_at: row.try_get("queued_at")?,
            started_at: row.try_get("started_at")?,
            completed_at: row.try_get("completed_at")?,
            timeout_at: row.try_get("timeout_at")?,
            output_urls: row.try_get("output_urls")?,
            processing_metadata: row.try_get("processing_metadata")?,
            error_details: row.try_get("error_details")?,
            gpu_time_seconds: row.try_get("gpu_time_seconds")?,
            memory_used_mb: row.try_get("memory_used_mb")?,
            cost_credits: row.try_get("cost_credits")?,
            result_character_id: row.try_get("result_character_id")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

/// What travels on the queue: only the job id (the row is the truth).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobMessage {
    pub job_id: String,
}

pub const JOB_TYPES: [&str; 5] = crate::kernel::vocabulary::JobType::NAMES;
