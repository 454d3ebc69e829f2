//! Routes of the `jobs` function.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::IntoParams;

use super::dispatch::{self, GenerateBody};
use super::{JOB_COLUMNS, Job};
use crate::activity::{self, Activity};
use crate::credits::{engine, holds};
use crate::kernel::error::{ApiError, Problem};
use crate::ports::db;
use crate::users;
use crate::users::fields::one_of;
use crate::web::auth::Caller;
use crate::web::http::{ApiJson, ApiPath, ApiQuery, RequestMeta, resource_id};
use crate::web::idempotency::{self, Claim, IdempotencyKey};
use crate::web::input::finish;
use crate::web::pagination::{self, Page, TimeKey};
use crate::web::responses::{
    BadRequest, InternalError, PayloadTooLarge, ServiceUnavailable, Unauthorized,
    UnsupportedMediaType, ValidationFailed,
};
use crate::web::state::AppState;

pub const JOB_STATUSES: [&str; 6] = super::JobStatus::NAMES;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/characters/{id}/generate", post(generate))
        .route("/api/v1/jobs", get(list_jobs))
        .route("/api/v1/jobs/{id}", get(get_job))
        .route("/api/v1/jobs/{id}/cancel", post(cancel_job))
}

/// Start a generation job for one of the caller's characters, or preview its cost.
///
/// Prices the request from `api_credit_configs`, holds the credits (a free
/// daily generation, then the daily allowance, then purchased credits),
/// records the job and queues it: 202 with the job. Accepts `Idempotency-Key`.
/// `variation` and `style_transfer` create a variant character when they
/// complete (`result_character_id`); `upscale` and `background_removal` add an
/// image to the same character. With `"dry_run": true` the same request is
/// priced and its buckets chosen exactly as a real one, then undone: 200 with
/// the preview, nothing held, recorded or counted against limits.
#[utoipa::path(
    post,
    path = "/api/v1/characters/{id}/generate",
    tag = "jobs",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The character's id."),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the stored response for a repeated request (24 h)."),
    ),
    request_body = GenerateBody,
    responses(
        (status = 200, description = "`dry_run`: what the job would cost and which buckets would pay.", body = CostPreview),
        (status = 202, description = "The queued job.", body = Job),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 402, description = "Not enough credits: `needed` and `available` in the problem.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the caller's character, an account that may not generate, or a tier or subscription the pricing requires.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such character (or no account yet).", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job type starts from the character's image and it has none, or a request with this Idempotency-Key is in progress.", body = Problem, content_type = "application/problem+json"),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
        (status = 429, description = "A rate, daily or concurrent-job limit; see Retry-After.", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = ServiceUnavailable),
        (status = 500, response = InternalError),
    )
)]
pub(crate) async fn generate(
    State(state): State<AppState>,
    Caller(identity): Caller,
    meta: RequestMeta,
    IdempotencyKey(key): IdempotencyKey,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let id = resource_id(&id, "character")?;
    let Some(queue) = state.queue.clone() else {
        return Err(ApiError::ServiceUnavailable {
            detail: "generation is not available: no job queue is configured".into(),
            retry_after: 60,
        });
    };
    let request_body = Value::Object(body.clone());
    let parsed = GenerateBody::parse(body)?;
    let mut conn = state.db.get().await?;
    let user = users::repo::current_user(&**conn, &identity).await?;
    if user.account_status != Some(crate::users::AccountStatus::Active) {
        return Err(ApiError::Forbidden(
            "a suspended account cannot generate images".into(),
        ));
    }
    let (tier, _) = engine::tier_of(&user);
    let client: &mut tokio_postgres::Client = &mut conn;
    let tx = client.transaction().await?;
    let default_steps: Option<i32> = tx
        .query_opt("SELECT steps FROM characters WHERE id = $1", &[&id])
        .await?
        .map(|row| row.try_get(0))
        .transpose()?
        .flatten();
    let params = parsed.validate(tier, i64::from(default_steps.unwrap_or(20)))?;
    if params.dry_run {
        // Exactly what the request would do, then undone: the preview and the
        // charge cannot disagree, and nothing is held, recorded or counted.
        let (job, hold) = dispatch::record(
            &tx,
            &state.cache::<crate::credits::engine::PricingCache>(),
            &user,
            id,
            &params,
        )
        .await?;
        tx.rollback().await?;
        return Ok(Json(preview(job, hold)).into_response());
    }
    let route = "/api/v1/characters/{id}/generate";
    if let Some(key) = &key {
        let body_with_target = json!({"character_id": id, "body": request_body});
        if let Claim::Replay { status, body } =
            idempotency::claim(&tx, &user.id, key, "POST", route, &body_with_target).await?
        {
            return Ok(Claim::replay(status, body));
        }
    }
    let (mut job, _) = dispatch::record(
        &tx,
        &state.cache::<crate::credits::engine::PricingCache>(),
        &user,
        id,
        &params,
    )
    .await?;
    activity::record(
        &tx,
        Activity {
            user_id: Some(&user.id),
            activity_type: crate::activity::ActivityType::GenerationRequested,
            entity_type: Some("generation_job"),
            entity_id: Some(&job.id),
            metadata: json!({"character_id": id, "job_type": job.job_type, "cost_credits": job.cost_credits}),
        },
        &meta,
    )
    .await?;
    job.hide_keys();
    let response = serde_json::to_value(&job).map_err(ApiError::internal)?;
    if let Some(key) = &key {
        idempotency::complete(&tx, &user.id, key, StatusCode::ACCEPTED, &response).await?;
    }
    tx.commit().await?;
    dispatch::enqueue(&**conn, queue.as_ref(), &job).await;
    Ok((StatusCode::ACCEPTED, Json(response)).into_response())
}

/// What `dry_run: true` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CostPreview {
    /// Always `true`.
    pub dry_run: bool,
    pub job_type: crate::kernel::vocabulary::JobType,
    /// What the job would hold and, delivered by an image server, charge.
    pub price: i32,
    /// What it would charge if only the procedural placeholder could serve it.
    pub fallback_price: i32,
    /// Which buckets would pay: `{free_generation, daily_allowance, purchased_credits}`.
    #[schema(value_type = Object)]
    pub paid_with: Value,
    /// How the price came out (base, terms, tier multiplier), as the job would record it.
    #[schema(value_type = Object)]
    pub cost_calculation: Value,
    /// The parameters the job would render with (its size is what it is priced on).
    #[schema(value_type = Object)]
    pub input_parameters: Value,
}

fn preview(job: Job, hold: holds::Hold) -> CostPreview {
    let metadata = job.processing_metadata.unwrap_or_default();
    CostPreview {
        dry_run: true,
        job_type: job.job_type,
        price: hold.price,
        fallback_price: hold.fallback_price,
        paid_with: json!({
            "free_generation": hold.free_generation,
            "daily_allowance": hold.allowance_credits,
            "purchased_credits": hold.reserved_credits,
        }),
        cost_calculation: metadata
            .get("cost_calculation")
            .cloned()
            .unwrap_or_default(),
        input_parameters: super::input::public_view(&job.input_parameters),
    }
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
        (status = 401, response = Unauthorized),
        (status = 403, description = "The account is banned or erased.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No account yet: sign in first.", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = ValidationFailed),
        (status = 503, response = ServiceUnavailable),
        (status = 500, response = InternalError),
    )
)]
pub(crate) async fn list_jobs(
    State(state): State<AppState>,
    Caller(identity): Caller,
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
    let mut conn = state.db.get().await?;
    let user = users::repo::current_user(&**conn, &identity).await?;
    let tx = db::begin_as(&mut conn, Some(&user.id)).await?;
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
        (status = 401, response = Unauthorized),
        (status = 403, description = "The account is banned or erased.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job of the caller's.", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = ServiceUnavailable),
        (status = 500, response = InternalError),
    )
)]
pub(crate) async fn get_job(
    State(state): State<AppState>,
    Caller(identity): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Job>, ApiError> {
    let id = resource_id(&id, "job")?;
    let mut conn = state.db.get().await?;
    let user = users::repo::current_user(&**conn, &identity).await?;
    let tx = db::begin_as(&mut conn, Some(&user.id)).await?;
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
        (status = 401, response = Unauthorized),
        (status = 403, description = "The account is banned or erased.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job of the caller's.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job is no longer queued.", body = Problem, content_type = "application/problem+json"),
        (status = 503, response = ServiceUnavailable),
        (status = 500, response = InternalError),
    )
)]
pub(crate) async fn cancel_job(
    State(state): State<AppState>,
    Caller(identity): Caller,
    meta: RequestMeta,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Job>, ApiError> {
    let id = resource_id(&id, "job")?;
    let mut conn = state.db.get().await?;
    let user = users::repo::current_user(&**conn, &identity).await?;
    let client: &mut tokio_postgres::Client = &mut conn;
    let tx = client.transaction().await?;
    let cancelled = tx
        .query_opt(
            &format!(
                "UPDATE generation_jobs SET status = 'cancelled', completed_at = now(), cost_credits = 0 \
                 WHERE id = $1 AND user_id = $2 AND status = 'queued' RETURNING {JOB_COLUMNS}"
            ),
            &[&id, &user.id],
        )
        .await?;
    let Some(row) = cancelled else {
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
    let mut job = Job::from_row(&row)?;
    holds::release(&tx, &job.id).await?;
    if let Some(character_id) = &job.character_id {
        tx.execute(
            "UPDATE characters SET generation_status = 'cancelled' WHERE id = $1 AND generation_status = 'pending' \
             AND NOT EXISTS (SELECT 1 FROM generation_jobs j WHERE j.character_id = $1 AND j.status IN ('queued', 'processing'))",
            &[character_id],
        )
        .await?;
    }
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
