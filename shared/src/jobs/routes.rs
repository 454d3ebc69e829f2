//! Routes of the `jobs` function.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;

use super::{JOB_COLUMNS, Job, lifecycle};
use crate::activity::{self, Activity};
use crate::kernel::error::{ApiError, Problem};
use crate::users::account::Account;
use crate::web::http::{ApiPath, ApiQuery, RequestMeta, resource_id};
use crate::web::input::checks::one_of;
use crate::web::input::finish;
use crate::web::pagination::{self, Page, TimeKey};
use crate::web::responses::ValidationFailed;
use crate::web::responses::{Authenticated, ServerFailures, SignedIn};
use crate::web::state::AppState;

pub const JOB_STATUSES: [&str; 6] = super::JobStatus::NAMES;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/jobs", get(list_jobs))
        .route("/api/v1/jobs/{id}", get(get_job))
        .route("/api/v1/jobs/{id}/cancel", post(cancel_job))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct JobsQuery {
    /// Page size, 1 to 100 (default 24).
    #[param(minimum = 1, maximum = 100, nullable = false)]
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    #[param(nullable = false)]
    cursor: Option<String>,
    /// Only jobs in this status (`queued`, `processing`, `completed`, `failed`, `cancelled`, `timeout`).
    #[param(nullable = false)]
    status: Option<String>,
    /// Only jobs of this character.
    #[param(nullable = false)]
    character_id: Option<String>,
}

/// The caller's jobs, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    tag = "jobs",
    security(("bearer" = [])),
    params(JobsQuery),
    responses(
        (status = 200, description = "A page of the caller's jobs.", body = Page<Job>),
        (status = 422, response = ValidationFailed),
        SignedIn,
        ServerFailures,
    )
)]
pub(crate) async fn list_jobs(
    State(state): State<AppState>,
    mut account: Account,
    ApiQuery(query): ApiQuery<JobsQuery>,
) -> Result<Json<Page<Job>>, ApiError> {
    let limit = pagination::limit(query.limit)?;
    let after = pagination::decode_time_key(query.cursor.as_deref())?;
    let mut errors = Vec::new();
    let status = query.status.and_then(|s| {
        one_of("status", &s, &JOB_STATUSES)
            .map_err(|e| errors.push(e))
            .ok()
    });
    finish((), errors)?;
    let (tx, user) = account.begin_as_user().await?;
    let (after_at, after_id) = after
        .map(|k| (Some(k.at), Some(k.id)))
        .unwrap_or((None, None));
    let rows = tx
        .query(
            &format!(
                "SELECT {JOB_COLUMNS} FROM generation_jobs \
                 WHERE user_id = $1 AND ($2::text IS NULL OR status = $2) \
                   AND ($3::text IS NULL OR character_id = $3) \
                   AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5::text)) \
                 ORDER BY created_at DESC, id DESC LIMIT $6"
            ),
            &[
                &user.id,
                &status,
                &query.character_id,
                &after_at,
                &after_id,
                &(limit + 1),
            ],
        )
        .await?;
    tx.commit().await?;
    let mut jobs = rows
        .iter()
        .map(Job::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    for job in &mut jobs {
        job.present(state.storage.as_deref()).await;
    }
    Ok(Json(pagination::page(jobs, limit, |j| TimeKey {
        at: j.created_at,
        id: j.id.clone(),
    })))
}

/// One of the caller's jobs.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}",
    tag = "jobs",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The job's id.")),
    responses(
        (status = 200, description = "The job.", body = Job),
        (status = 404, description = "No such job of the caller's.", body = Problem, content_type = "application/problem+json"),
        Authenticated,
        ServerFailures,
    )
)]
pub(crate) async fn get_job(
    State(state): State<AppState>,
    mut account: Account,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Job>, ApiError> {
    let id = resource_id(&id, "job")?;
    let (tx, user) = account.begin_as_user().await?;
    let row = tx
        .query_opt(
            &format!("SELECT {JOB_COLUMNS} FROM generation_jobs WHERE id = $1 AND user_id = $2"),
            &[&id, &user.id],
        )
        .await?
        .ok_or_else(|| ApiError::NotFound("no such job".into()))?;
    tx.commit().await?;
    let mut job = Job::from_row(&row)?;
    job.present(state.storage.as_deref()).await;
    Ok(Json(job))
}

/// Cancel one of the caller's queued jobs.
///
/// Only a queued job can be cancelled; its credit hold is released in the same
/// transaction. A job the worker already claimed answers 409.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/cancel",
    tag = "jobs",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The job's id.")),
    responses(
        (status = 200, description = "The cancelled job.", body = Job),
        (status = 404, description = "No such job of the caller's.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job is no longer queued.", body = Problem, content_type = "application/problem+json"),
        Authenticated,
        ServerFailures,
    )
)]
pub(crate) async fn cancel_job(
    State(state): State<AppState>,
    mut account: Account,
    meta: RequestMeta,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Job>, ApiError> {
    let id = resource_id(&id, "job")?;
    let (tx, user) = account.begin_system().await?;
    let Some(mut job) = lifecycle::cancel_queued(&tx, id, &user.id).await? else {
        let status: Option<Option<String>> = tx
            .query_opt(
                "SELECT status FROM generation_jobs WHERE id = $1 AND user_id = $2",
                &[&id, &user.id],
            )
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        return Err(match status {
            None => ApiError::NotFound("no such job".into()),
            Some(status) => ApiError::Conflict(format!(
                "the job is {} and can no longer be cancelled",
                status.unwrap_or_default()
            )),
        });
    };
    activity::record(
        &tx,
        Activity {
            user_id: Some(&user.id),
            activity_type: crate::activity::ActivityType::GenerationCancelled,
            entity_type: Some("generation_job"),
            entity_id: Some(&job.id),
            metadata: json!({}),
        },
        &meta,
    )
    .await?;
    tx.commit().await?;
    job.present(state.storage.as_deref()).await;
    Ok(Json(job))
}
