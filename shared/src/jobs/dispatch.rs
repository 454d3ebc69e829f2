//! Dispatching a generation: validate and cap the parameters, price the
//! request, hold the credits, record the job, then enqueue it.
//!
//! The job row and its hold commit together before the message is sent ("send
//! after commit"), so a rolled-back job is never sent; a send that fails (or a
//! process that dies before sending) leaves the job queued without
//! `enqueued_at`, and [`resend_unsent`] (the scheduler's outbox sweep) sends it
//! again. A paid job is therefore never lost, and duplicates are harmless
//! because the worker claims jobs with a conditional update.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio_postgres::GenericClient;

use super::{JOB_COLUMNS, JOB_TYPES, Job, JobMessage};
use crate::characters::content_filter;
use crate::credits::engine;
use crate::credits::holds;
use crate::credits::pricing::PriceInputs;
use crate::error::{ApiError, FieldError};
use crate::input::{check, decode_strict, finish};
use crate::queue::{JobQueue, OutgoingMessage};
use crate::users::User;
use crate::users::fields::{STYLE_TYPES, one_of};

/// Limits by tier: (max side in px, max batch, max priority, max queued + processing jobs).
pub fn tier_limits(tier: &str) -> (i64, i64, i64, i64) {
    match tier {
        "ENTERPRISE" => (2048, 4, 10, 16),
        "PRO" => (2048, 4, 9, 8),
        "PREMIUM" => (1536, 2, 7, 4),
        _ => (1024, 1, 5, 2),
    }
}

/// The body of `POST /api/v1/characters/{id}/generate`; every field is optional.
/// Caps by tier (FREE / PREMIUM / PRO / ENTERPRISE): longest side 1024 / 1536 /
/// 2048 / 2048 px, batch 1 / 2 / 4 / 4, priority 5 / 7 / 9 / 10, and 2 / 4 / 8 /
/// 16 jobs queued or processing at once.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateBody {
    /// `character_generation` (default), `style_transfer`, `upscale`, `variation` or
    /// `background_removal` (all but the first need the character's image).
    pub job_type: Option<String>,
    /// Pixels, a multiple of 8 from 64 (default 512).
    pub width: Option<i64>,
    /// Pixels, a multiple of 8 from 64 (default 512).
    pub height: Option<i64>,
    /// 1 to 150 (default: the character's).
    pub steps: Option<i64>,
    pub batch_size: Option<i64>,
    /// 1 to 10 (default 5); higher runs sooner.
    pub priority: Option<i64>,
    /// 0 to 2147483647 (default: the character's seed, else random).
    pub seed: Option<i64>,
    /// A style type to render in (default: the character's).
    pub style_type: Option<String>,
    /// img2img strength for style transfer and variation, 0.0 to 1.0 (default 0.6).
    pub denoising_strength: Option<f64>,
    /// Upscale factor, 2 to 4 (default 2).
    pub upscale_factor: Option<i64>,
}

/// Validated, resolved generation parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    pub job_type: String,
    pub width: i64,
    pub height: i64,
    pub steps: i64,
    pub batch_size: i64,
    pub priority: i64,
    pub seed: Option<i64>,
    pub style_type: Option<String>,
    pub denoising_strength: f64,
    pub upscale_factor: i64,
}

impl GenerateBody {
    pub fn parse(body: Map<String, Value>) -> Result<Self, ApiError> {
        decode_strict(
            body,
            &["id", "user_id", "character_id", "status", "cost_credits"],
        )
    }

    /// Validates and caps the parameters for a user of `tier`.
    pub fn validate(self, tier: &str, default_steps: i64) -> Result<GenerateParams, ApiError> {
        let (max_side, max_batch, max_priority, _) = tier_limits(tier);
        let mut errors: Vec<FieldError> = Vec::new();
        let job_type = match self.job_type {
            None => "character_generation".to_string(),
            Some(t) => check(&mut errors, one_of("job_type", &t, &JOB_TYPES)).unwrap_or_default(),
        };
        let mut side = |field: &str, value: Option<i64>| {
            let value = value.unwrap_or(512);
            if !(64..=max_side).contains(&value) || value % 8 != 0 {
                errors.push(FieldError::new(
                    field,
                    format!("must be a multiple of 8 from 64 to {max_side} for your tier"),
                ));
            }
            value
        };
        let width = side("width", self.width);
        let height = side("height", self.height);
        let mut ranged = |field: &str, value: i64, min: i64, max: i64, why: &str| {
            if !(min..=max).contains(&value) {
                errors.push(FieldError::new(
                    field,
                    format!("must be from {min} to {max}{why}"),
                ));
            }
            value
        };
        let steps = ranged("steps", self.steps.unwrap_or(default_steps), 1, 150, "");
        let batch_size = ranged(
            "batch_size",
            self.batch_size.unwrap_or(1),
            1,
            max_batch,
            " for your tier",
        );
        let priority = ranged(
            "priority",
            self.priority.unwrap_or(5.min(max_priority)),
            1,
            max_priority,
            " for your tier",
        );
        let seed = self
            .seed
            .map(|s| ranged("seed", s, 0, i64::from(i32::MAX), ""));
        let upscale_factor = ranged("upscale_factor", self.upscale_factor.unwrap_or(2), 2, 4, "");
        let style_type = self
            .style_type
            .and_then(|s| check(&mut errors, one_of("style_type", &s, &STYLE_TYPES)));
        let denoising_strength = self.denoising_strength.unwrap_or(0.6);
        if !(0.0..=1.0).contains(&denoising_strength) {
            errors.push(FieldError::new(
                "denoising_strength",
                "must be from 0.0 to 1.0",
            ));
        }
        finish(
            GenerateParams {
                job_type,
                width,
                height,
                steps,
                batch_size,
                priority,
                seed,
                style_type,
                denoising_strength,
                upscale_factor,
            },
            errors,
        )
    }
}

/// Job types that start from the character's existing image.
pub fn needs_image(job_type: &str) -> bool {
    matches!(
        job_type,
        "style_transfer" | "upscale" | "variation" | "background_removal"
    )
}

/// Records a queued job with its hold, in the caller's (system-role)
/// transaction. The caller commits, then calls [`enqueue`].
pub async fn record(
    client: &impl GenericClient,
    pricing: &engine::PricingCache,
    user: &User,
    character_id: &str,
    params: &GenerateParams,
) -> Result<Job, ApiError> {
    // One dispatch at a time per user, so the concurrency cap is exact.
    crate::credits::ledger::lock_user(client, &user.id).await?;
    let character = client
        .query_opt(
            "SELECT user_id, is_public, prompt, negative_prompt, style_type, sampler, cfg_scale::float8, \
                    generation_seed, primary_image_url FROM characters WHERE id = $1",
            &[&character_id],
        )
        .await?;
    let Some(character) = character else {
        return Err(ApiError::NotFound("no such character".into()));
    };
    let owner: String = character.try_get(0)?;
    if owner != user.id {
        let public: Option<bool> = character.try_get(1)?;
        return Err(if public == Some(true) {
            ApiError::Forbidden("you can only generate images for your own characters".into())
        } else {
            ApiError::NotFound("no such character".into())
        });
    }
    // The prompt was checked against the owner's filter level when it was written; the owner
    // may have made the level stricter since, so it is checked again against today's. The
    // request itself carries no free text (every parameter is a number or one of a fixed
    // set), and the negative prompt is not filtered, at creation or here: it lists what to
    // keep out of the image ("nsfw, gore" there makes the image safer).
    let prompt: String = character.try_get(2)?;
    content_filter::check(content_filter::level_of(user), "character.prompt", &prompt)?;
    let init_image: Option<String> = character.try_get(8)?;
    if needs_image(&params.job_type) && init_image.is_none() {
        return Err(ApiError::Conflict(format!(
            "{} starts from the character's image, and it has none yet",
            params.job_type
        )));
    }
    let (tier, _) = engine::tier_of(user);
    let (_, _, _, max_active) = tier_limits(&tier);
    let active: i64 = client
        .query_one(
            "SELECT count(*) FROM generation_jobs WHERE user_id = $1 AND status IN ('queued', 'processing')",
            &[&user.id],
        )
        .await?
        .try_get(0)?;
    if active >= max_active {
        return Err(ApiError::TooManyRequests {
            detail: format!(
                "your tier runs at most {max_active} jobs at once; wait for one to finish"
            ),
            retry_after: 10,
        });
    }
    let path = format!("/api/v1/characters/{character_id}/generate");
    let quote = engine::quote_generation(
        client,
        pricing,
        user,
        &path,
        &PriceInputs {
            job_type: Some(params.job_type.clone()),
            steps: Some(params.steps),
            width: Some(params.width),
            height: Some(params.height),
            batch_size: Some(params.batch_size),
        },
    )
    .await?;
    let seed = match params.seed {
        Some(seed) => seed,
        None => match character.try_get::<_, Option<i32>>(7)? {
            Some(seed) => i64::from(seed),
            None => i64::from(rand::random::<u32>() >> 1),
        },
    };
    let style: String = match &params.style_type {
        Some(style) => style.clone(),
        None => character.try_get(4)?,
    };
    let input = json!({
        "prompt": character.try_get::<_, String>(2)?,
        "negative_prompt": character.try_get::<_, Option<String>>(3)?,
        "style_type": style,
        "sampler": character.try_get::<_, Option<String>>(5)?,
        "cfg_scale": character.try_get::<_, Option<f64>>(6)?,
        "seed": seed,
        "width": params.width,
        "height": params.height,
        "steps": params.steps,
        "batch_size": params.batch_size,
        "denoising_strength": params.denoising_strength,
        "upscale_factor": params.upscale_factor,
        "init_image_key": init_image,
    });
    let priority = i32::try_from(params.priority).unwrap_or(5);
    let row = client
        .query_one(
            &format!(
                "INSERT INTO generation_jobs (user_id, character_id, job_type, input_parameters, priority, \
                   cost_credits, status) VALUES ($1, $2, $3, $4, $5, $6, 'queued') RETURNING {JOB_COLUMNS}"
            ),
            &[&user.id, &character_id, &params.job_type, &input, &priority, &quote.price],
        )
        .await?;
    let job = Job::from_row(&row)?;
    let hold = holds::hold(client, &user.id, &job.id, &quote).await?;
    let row = client
        .query_one(
            &format!(
                "UPDATE generation_jobs SET processing_metadata = processing_metadata || $2 \
                 WHERE id = $1 RETURNING {JOB_COLUMNS}"
            ),
            &[
                &job.id,
                &json!({"credits": hold, "cost_calculation": quote.calculation}),
            ],
        )
        .await?;
    client
        .execute(
            "UPDATE characters SET generation_status = 'pending' WHERE id = $1 \
             AND generation_status IS DISTINCT FROM 'processing'",
            &[&character_id],
        )
        .await?;
    Ok(Job::from_row(&row)?)
}

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
            ("job_type".to_string(), job.job_type.clone()),
            (
                "priority".to_string(),
                job.priority.unwrap_or(5).to_string(),
            ),
        ]),
        // Each queue adapter honours the `priority` attribute its own way (see
        // `shared::queue`).
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(value: Value) -> GenerateBody {
        GenerateBody::parse(value.as_object().cloned().unwrap()).unwrap()
    }

    #[test]
    fn defaults_fill_in_and_tiers_cap() {
        let params = body(json!({})).validate("FREE", 20).unwrap();
        assert_eq!(
            (
                params.width,
                params.height,
                params.steps,
                params.batch_size,
                params.priority
            ),
            (512, 512, 20, 1, 5)
        );
        assert!(body(json!({"width": 2048})).validate("FREE", 20).is_err());
        assert!(body(json!({"width": 2048})).validate("PRO", 20).is_ok());
        assert!(body(json!({"batch_size": 2})).validate("FREE", 20).is_err());
        assert!(
            body(json!({"batch_size": 2}))
                .validate("PREMIUM", 20)
                .is_ok()
        );
        assert!(body(json!({"priority": 10})).validate("PRO", 20).is_err());
        assert!(
            body(json!({"priority": 10}))
                .validate("ENTERPRISE", 20)
                .is_ok()
        );
        assert!(body(json!({"width": 513})).validate("PRO", 20).is_err());
        assert!(body(json!({"steps": 151})).validate("PRO", 20).is_err());
        assert!(
            body(json!({"job_type": "teleport"}))
                .validate("PRO", 20)
                .is_err()
        );
        assert!(
            body(json!({"denoising_strength": 1.5}))
                .validate("PRO", 20)
                .is_err()
        );
        assert!(
            GenerateBody::parse(json!({"cost_credits": 0}).as_object().cloned().unwrap()).is_err()
        );
        assert!(GenerateBody::parse(json!({"colour": 1}).as_object().cloned().unwrap()).is_err());
    }
}
