//! `GET /api/v1/jobs/{id}/events`: one of the caller's jobs as Server-Sent
//! Events, on the local stack only. On AWS the HTTP API cannot stream a
//! response, so no Lambda function mounts this route and the OpenAPI document
//! does not list it: clients there poll `GET /api/v1/jobs/{id}`.
//!
//! Authentication, ownership and the errors before the stream starts are
//! those of `GET /api/v1/jobs/{id}` (problem+json). Then the job's row is read
//! every [`POLL_INTERVAL`], each time on a pooled connection taken for that
//! read only, and the stream carries:
//! - `event: status`, the job as `GET /api/v1/jobs/{id}` presents it: first,
//!   and whenever its `status` changes;
//! - `event: progress`, `{"job_id", "fraction", "eta_seconds"}`: whenever
//!   what the worker keeps in `processing_metadata.progress` changes (a
//!   `progress` without a numeric `fraction` is ignored; `eta_seconds` is a
//!   number or null).
//!
//! Every event has an `id:`, counting up from 1 on each connection. A
//! reconnecting client's `Last-Event-ID` is ignored: the new stream starts
//! afresh with the job's current status. The stream ends after the status
//! event of a terminal status, when the job is deleted, when a read fails, and
//! when the stack stops; a comment every [`KEEP_ALIVE_INTERVAL`] keeps idle
//! connections open. A browser's `EventSource` reconnects whenever a stream
//! ends, so clients close it on a terminal status.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::Stream;
use serde_json::{Value, json};
use shared::jobs::{JOB_COLUMNS, Job, JobStatus};
use shared::kernel::error::ApiError;
use shared::ports::db;
use shared::users;
use shared::web::auth::Caller;
use shared::web::http::{ApiPath, resource_id};
use shared::web::state::AppState;
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// How often a stream reads its job.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How often an idle stream sends a keep-alive comment.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// The route. Streams end when `stopping` turns true, so that a graceful
/// shutdown does not wait for jobs to finish.
pub fn routes(stopping: watch::Receiver<bool>) -> Router<AppState> {
    Router::new().route(
        "/api/v1/jobs/{id}/events",
        get(
            move |State(state): State<AppState>,
                  Caller(identity): Caller,
                  ApiPath(id): ApiPath<String>| {
                let stopping = stopping.clone();
                async move { job_events(state, identity, id, stopping).await }
            },
        ),
    )
}

async fn job_events(
    state: AppState,
    identity: shared::web::auth::Identity,
    id: String,
    stopping: watch::Receiver<bool>,
) -> Result<Response, ApiError> {
    let id = resource_id(&id, "job")?.to_string();
    let user = {
        let conn = state.db.get().await?;
        users::repo::current_user(&**conn, &identity).await?
    };
    let job = read_job(&state, &id, &user.id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such job".into()))?;
    let watch = JobWatch::new(state, user.id, job, stopping);
    Ok(Sse::new(watch.into_stream())
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE_INTERVAL))
        .into_response())
}

/// The caller's job, read as `GET /api/v1/jobs/{id}` reads it, on a pooled
/// connection that goes back to the pool when this returns.
async fn read_job(state: &AppState, job_id: &str, user_id: &str) -> Result<Option<Job>, ApiError> {
    let mut conn = state.db.get().await?;
    let tx = db::begin_as(&mut conn, Some(user_id)).await?;
    let row = tx
        .query_opt(
            &format!("SELECT {JOB_COLUMNS} FROM generation_jobs WHERE id = $1 AND user_id = $2"),
            &[&job_id, &user_id],
        )
        .await?;
    tx.commit().await?;
    Ok(row.as_ref().map(Job::from_row).transpose()?)
}

/// `{"job_id", "fraction", "eta_seconds"}` from `processing_metadata.progress`,
/// if it has a numeric `fraction`.
fn progress_of(job: &Job) -> Option<Value> {
    let progress = job.processing_metadata.as_ref()?.get("progress")?;
    let fraction = progress.get("fraction")?.as_f64()?;
    let eta_seconds = progress.get("eta_seconds").and_then(Value::as_f64);
    Some(json!({"job_id": job.id, "fraction": fraction, "eta_seconds": eta_seconds}))
}

/// A status the job never leaves; the stream ends after sending one.
fn is_terminal(status: Option<JobStatus>) -> bool {
    status.is_some_and(|s| !s.is_active())
}

/// One stream's state: what it has sent, and what it still has to.
struct JobWatch {
    state: AppState,
    user_id: String,
    job_id: String,
    stopping: watch::Receiver<bool>,
    ticker: Interval,
    /// The row the handler read, turned into the first events.
    first: Option<Job>,
    /// `None` before the first status event.
    sent_status: Option<Option<JobStatus>>,
    sent_progress: Option<Value>,
    last_event_id: u64,
    pending: VecDeque<Event>,
    finished: bool,
}

impl JobWatch {
    fn new(state: AppState, user_id: String, job: Job, stopping: watch::Receiver<bool>) -> Self {
        let mut ticker = tokio::time::interval_at(Instant::now() + POLL_INTERVAL, POLL_INTERVAL);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            state,
            user_id,
            job_id: job.id.clone(),
            stopping,
            ticker,
            first: Some(job),
            sent_status: None,
            sent_progress: None,
            last_event_id: 0,
            pending: VecDeque::new(),
            finished: false,
        }
    }

    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
        futures::stream::unfold(self, |mut watch| async move {
            let event = watch.next_event().await?;
            Some((Ok(event), watch))
        })
    }

    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.finished {
                return None;
            }
            let job = match self.first.take() {
                Some(job) => job,
                None => {
                    tokio::select! {
                        _ = self.ticker.tick() => {}
                        () = stop_requested(&mut self.stopping) => return None,
                    }
                    match read_job(&self.state, &self.job_id, &self.user_id).await {
                        Ok(Some(job)) => job,
                        // Deleted (or no longer the caller's): nothing more to say.
                        Ok(None) => return None,
                        Err(error) => {
                            tracing::warn!(job_id = %self.job_id, %error, "job event stream ends: reading the job failed");
                            return None;
                        }
                    }
                }
            };
            self.observe(job).await;
        }
    }

    /// Queues the events the row calls for: a status event when the status
    /// changed, a progress event when the progress did. A terminal status
    /// comes last and finishes the stream.
    async fn observe(&mut self, mut job: Job) {
        let status_changed = self.sent_status.as_ref() != Some(&job.status);
        let terminal = is_terminal(job.status);
        let progress = progress_of(&job).filter(|p| self.sent_progress.as_ref() != Some(p));
        if status_changed && !terminal {
            self.status_event(&mut job).await;
        }
        if let Some(progress) = progress {
            self.push("progress", &progress);
            self.sent_progress = Some(progress);
        }
        if status_changed && terminal {
            self.status_event(&mut job).await;
        }
        if terminal {
            self.finished = true;
        }
    }

    async fn status_event(&mut self, job: &mut Job) {
        self.sent_status = Some(job.status);
        job.present(self.state.storage.as_deref()).await;
        self.push("status", &*job);
    }

    fn push(&mut self, name: &str, data: &impl serde::Serialize) {
        if self.finished {
            return;
        }
        self.last_event_id += 1;
        match Event::default()
            .id(self.last_event_id.to_string())
            .event(name)
            .json_data(data)
        {
            Ok(event) => self.pending.push_back(event),
            Err(error) => {
                tracing::warn!(job_id = %self.job_id, %error, "job event stream ends: an event did not serialize");
                self.finished = true;
            }
        }
    }
}

/// Resolves once the stack is stopping; never, if its handle is gone without
/// stopping it (the server then runs until its runtime ends).
async fn stop_requested(stopping: &mut watch::Receiver<bool>) {
    if stopping.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}
