//! `POST /api/v1/admin/jobs/{id}/refund`: gives back what a completed
//! generation job was charged — one `refund` transaction of the job's settled
//! `usage` — exactly once per job, however many times (or however
//! concurrently) it is asked for. A `job_refunds` row keyed by the job is
//! claimed before the entry is posted, in the same transaction (V10 explains
//! why a row and not an index or a marker).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use tokio_postgres::GenericClient;
use utoipa::ToSchema;

use super::CreditTransaction;
use crate::activity::{self, Activity};
use crate::credits::ledger::{self, Entry};
use crate::kernel::error::FieldError;
use crate::kernel::error::{ApiError, Problem};
use crate::users::account::AdminAccount;
use crate::web::http::resource_id;
use crate::web::http::{ApiPath, RequestMeta};
use crate::web::idempotency::{self, Claim, IdempotencyKey};
use crate::web::input::checks::{self, check};
use crate::web::input::{RequestBody, decode};
use crate::web::responses::Unauthorized;
use crate::web::responses::{BodyRefused, ServerFailures};

/// The route, as idempotency keys record it.
pub const ROUTE: &str = "/api/v1/admin/jobs/:id/refund";

/// A job's refund.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct JobRefund {
    pub job_id: String,
    /// The user who paid for the job and got the credits back.
    pub user_id: String,
    /// Credits given back: what the job's `usage` entries charged.
    pub amount: i32,
    /// The `usage` entries refunded.
    pub usage_transaction_ids: Vec<String>,
    /// The admin who refunded the job.
    pub refunded_by: Option<String>,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The `refund` ledger entry.
    pub transaction: CreditTransaction,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RefundOutcome {
    /// This request refunded the job.
    Refunded(JobRefund),
    /// An earlier request did; nothing changed now.
    AlreadyRefunded(JobRefund),
}

/// Refunds `job_id` in the caller's transaction (with its audit row).
pub async fn refund_job(
    client: &impl GenericClient,
    admin_id: &str,
    job_id: &str,
    reason: Option<&str>,
    meta: &RequestMeta,
) -> Result<RefundOutcome, ApiError> {
    let job = client
        .query_opt(
            "SELECT user_id, status FROM generation_jobs WHERE id = $1",
            &[&job_id],
        )
        .await?
        .ok_or_else(|| ApiError::NotFound("no such generation job".into()))?;
    let owner: String = job.try_get(0)?;
    let status: Option<String> = job.try_get(1)?;
    if let Some(done) = existing(client, job_id).await? {
        return Ok(RefundOutcome::AlreadyRefunded(done));
    }
    if status.as_deref() != Some("completed") {
        return Err(ApiError::Conflict(format!(
            "only completed jobs can be refunded; this one is {}",
            status.as_deref().unwrap_or("without a status")
        )));
    }
    if owner == admin_id {
        return Err(ApiError::Forbidden(
            "an admin cannot refund their own job; ask another admin".into(),
        ));
    }
    let Usage {
        payer,
        charged,
        ids: usage_ids,
    } = settled_usage(client, job_id).await?;
    let amount = i32::try_from(charged).map_err(ApiError::internal)?;
    // The claim: a concurrent duplicate waits here until this transaction ends.
    let claimed = client
        .query_opt(
            "INSERT INTO job_refunds (job_id, user_id, amount, usage_transaction_ids, refunded_by, reason) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (job_id) DO NOTHING RETURNING job_id",
            &[&job_id, &payer, &amount, &usage_ids, &admin_id, &reason],
        )
        .await?;
    if claimed.is_none() {
        return match existing(client, job_id).await? {
            Some(done) => Ok(RefundOutcome::AlreadyRefunded(done)),
            None => Err(ApiError::Conflict(
                "this job is being refunded by another request; retry shortly".into(),
            )),
        };
    }
    let refund = Refund {
        admin_id,
        job_id,
        payer: &payer,
        amount,
        usage_ids: &usage_ids,
        reason,
    };
    post_refund(client, &refund, meta).await?;
    let done = existing(client, job_id)
        .await?
        .ok_or_else(|| ApiError::internal(format!("the refund of job {job_id} vanished")))?;
    Ok(RefundOutcome::Refunded(done))
}

/// What a job's settled usage charged, and whom.
struct Usage {
    payer: String,
    /// Credits, positive.
    charged: i64,
    ids: Vec<String>,
}

/// The job's completed `usage` entries: a 409 when there are none or they charged nothing.
async fn settled_usage(client: &impl GenericClient, job_id: &str) -> Result<Usage, ApiError> {
    let usage = client
        .query(
            "SELECT id, user_id, amount FROM credit_transactions \
             WHERE related_entity_type = 'generation_job' AND related_entity_id = $1 \
               AND transaction_type = 'usage' AND status = 'completed' \
             ORDER BY created_at, id",
            &[&job_id],
        )
        .await?;
    let Some(first) = usage.first() else {
        return Err(ApiError::Conflict(
            "this job has no settled usage to refund".into(),
        ));
    };
    let payer: String = first.try_get(1)?;
    let mut charged: i64 = 0;
    let mut ids = Vec::with_capacity(usage.len());
    for row in &usage {
        let user: String = row.try_get(1)?;
        if user != payer {
            return Err(ApiError::internal(format!(
                "generation job {job_id} has usage transactions of several users"
            )));
        }
        ids.push(row.try_get::<_, String>(0)?);
        charged -= i64::from(row.try_get::<_, i32>(2)?);
    }
    if charged <= 0 {
        return Err(ApiError::Conflict(
            "nothing to refund: the job was charged 0 credits (a free generation or the daily \
             allowance paid for it)"
                .into(),
        ));
    }
    Ok(Usage {
        payer,
        charged,
        ids,
    })
}

/// A claimed refund, about to be posted.
struct Refund<'a> {
    admin_id: &'a str,
    job_id: &'a str,
    payer: &'a str,
    amount: i32,
    usage_ids: &'a [String],
    reason: Option<&'a str>,
}

/// Posts the `refund` ledger entry, links it to the claim and writes the audit row.
async fn post_refund(
    client: &impl GenericClient,
    refund: &Refund<'_>,
    meta: &RequestMeta,
) -> Result<(), ApiError> {
    let Refund {
        admin_id,
        job_id,
        payer,
        amount,
        usage_ids,
        reason,
    } = *refund;
    let entry = Entry::new(
        "refund",
        amount,
        format!("Refund of generation job {job_id}"),
    )
    .related("generation_job", job_id)
    .metadata(json!({
        "admin_user_id": admin_id,
        "usage_transaction_ids": usage_ids,
        "reason": reason,
    }));
    let posted = ledger::post(client, payer, entry).await?;
    client
        .execute(
            "UPDATE job_refunds SET refund_transaction_id = $2 WHERE job_id = $1",
            &[&job_id, &posted.transaction_id],
        )
        .await?;
    activity::record(
        client,
        Activity {
            user_id: Some(admin_id),
            activity_type: crate::activity::ActivityType::AdminJobRefunded,
            entity_type: Some("generation_job"),
            entity_id: Some(job_id),
            metadata: json!({
                "job_id": job_id,
                "target_user_id": payer,
                "amount": amount,
                "usage_transaction_ids": usage_ids,
                "transaction_id": posted.transaction_id,
                "balance_after": posted.balance_after,
                "reason": reason,
            }),
        },
        meta,
    )
    .await?;
    Ok(())
}

/// The job's refund, if it has one.
async fn existing(
    client: &impl GenericClient,
    job_id: &str,
) -> Result<Option<JobRefund>, ApiError> {
    let Some(row) = client
        .query_opt(
            "SELECT job_id, user_id, amount, usage_transaction_ids, refund_transaction_id, refunded_by, \
                    reason, created_at \
             FROM job_refunds WHERE job_id = $1",
            &[&job_id],
        )
        .await?
    else {
        return Ok(None);
    };
    let user_id: String = row.try_get(1)?;
    let transaction_id: Option<String> = row.try_get(4)?;
    let transaction_id = transaction_id.ok_or_else(|| {
        ApiError::internal(format!("the refund of job {job_id} has no transaction"))
    })?;
    Ok(Some(JobRefund {
        job_id: row.try_get(0)?,
        amount: row.try_get(2)?,
        usage_transaction_ids: row.try_get(3)?,
        refunded_by: row.try_get(5)?,
        reason: row.try_get(6)?,
        created_at: row.try_get(7)?,
        transaction: CreditTransaction::load(client, &user_id, &transaction_id).await?,
        user_id,
    }))
}

/// The optional body of a refund. Unknown fields are refused with a 422 naming them.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    /// Why: at most 500 characters, multi-line, trimmed; `null` or blank is none.
    #[serde(default)]
    #[schema(max_length = 500)]
    reason: Option<String>,
}

impl RequestBody for RefundBody {
    type Valid = Option<String>;

    fn validate(self, errors: &mut Vec<FieldError>) -> Option<String> {
        let reason = self.reason?;
        check(errors, checks::text("reason", &reason, 500, true)).flatten()
    }
}

/// The optional body: `{"reason": "..."}` (≤ 500 characters), or nothing.
fn reason(headers: &HeaderMap, body: &[u8]) -> Result<Option<String>, ApiError> {
    match crate::web::input::optional_body(headers, body)? {
        None => Ok(None),
        Some(map) => decode::<RefundBody>(map),
    }
}

/// Refund a completed generation job.
///
/// Gives back what the job's settled `usage` entries charged (purchased credits; a free
/// generation or the daily allowance is not refunded) as one `refund` entry, exactly once per
/// job however often or concurrently it is asked: a job refunded before answers 200 with that
/// refund and changes nothing. The token must carry the `admin` permission; the action is
/// logged with the admin's id. Accepts `Idempotency-Key`.
#[utoipa::path(
    post,
    path = "/api/v1/admin/jobs/{id}/refund",
    tag = "admin",
    operation_id = "admin_refund_job",
    security(("bearer" = ["admin"])),
    params(
        ("id" = String, Path, description = "The generation job's id."),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 printable ASCII characters. Replays the stored response (with `Idempotent-Replayed: true`) for a repeated request (24 h)."),
    ),
    request_body(content = Option<RefundBody>, description = "Optional: an empty body refunds without a reason."),
    responses(
        (status = 200, description = "The job was refunded before; nothing changed.", body = JobRefund),
        (status = 201, description = "The job is refunded now.", body = JobRefund),
        (status = 400, description = "The body is not a JSON object, or the Idempotency-Key is malformed (`/problems/bad-request`).", body = Problem, content_type = "application/problem+json"),
        (status = 401, response = Unauthorized),
        (status = 403, description = "The token lacks the `admin` permission, the admin's account is banned or erased, or the job is the admin's own.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such generation job, or the admin has no account yet.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job is not completed, has no settled usage, was charged 0 credits, or is being refunded by another request; or a request with this Idempotency-Key is still in progress.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An unknown field or an invalid `reason`, or an Idempotency-Key already used with a different request (`/problems/validation-error`).", body = Problem, content_type = "application/problem+json"),
        BodyRefused,
        ServerFailures,
    )
)]
pub async fn create(
    mut account: AdminAccount,
    IdempotencyKey(key): IdempotencyKey,
    meta: RequestMeta,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let job_id = resource_id(&id, "generation job")?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest(rejection.body_text())
        }
    })?;
    let reason = reason(&headers, &body)?;
    let (tx, admin) = account.begin().await?;
    let request = json!({"job_id": job_id, "reason": reason});
    if let Some(key) = &key
        && let Claim::Replay { status, body } =
            idempotency::claim(&tx, &admin.id, key, "POST", ROUTE, &request).await?
    {
        tx.commit().await?;
        return Ok(Claim::replay(status, body));
    }
    let (status, refund) =
        match refund_job(&tx, &admin.id, job_id, reason.as_deref(), &meta).await? {
            RefundOutcome::Refunded(refund) => (StatusCode::CREATED, refund),
            RefundOutcome::AlreadyRefunded(refund) => (StatusCode::OK, refund),
        };
    let body = serde_json::to_value(&refund).map_err(ApiError::internal)?;
    if let Some(key) = &key {
        idempotency::complete(&tx, &admin.id, key, status, &body).await?;
    }
    tx.commit().await?;
    Ok((status, Json(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderValue, header};

    fn json_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers
    }

    #[test]
    fn the_reason_is_optional_and_bounded() {
        assert_eq!(reason(&HeaderMap::new(), b"").unwrap(), None);
        assert_eq!(reason(&json_headers(), b" {} ").unwrap(), None);
        assert_eq!(
            reason(&json_headers(), br#"{"reason": " broken output "}"#).unwrap(),
            Some("broken output".into())
        );
        assert_eq!(
            reason(&json_headers(), br#"{"reason": null}"#).unwrap(),
            None
        );
        assert_eq!(
            reason(&HeaderMap::new(), br#"{"reason": "x"}"#)
                .unwrap_err()
                .status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(
            reason(&json_headers(), b"{").unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            reason(&json_headers(), br#"{"amount": 5}"#)
                .unwrap_err()
                .status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        let long = format!(r#"{{"reason": "{}"}}"#, "x".repeat(501));
        assert_eq!(
            reason(&json_headers(), long.as_bytes())
                .unwrap_err()
                .status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}
