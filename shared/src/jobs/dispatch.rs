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
use tokio_postgres::{GenericClient, Row};

use super::input::{GenerationInput, SourceImage, VariantPlan};
use super::{JOB_COLUMNS, JOB_TYPES, Job, JobMessage};
use crate::characters::content_filter;
use crate::characters::fields::{
    self as character_fields, CharacterFields, DEFAULT_CFG_SCALE, DEFAULT_SAMPLER, Purpose,
};
use crate::credits::engine;
use crate::credits::holds;
use crate::credits::pricing::{GENERATE, PriceInputs};
use crate::kernel::error::{ApiError, FieldError};
use crate::kernel::tier::Tier;
use crate::kernel::vocabulary::JobType;
use crate::ports::generator::MAX_OUTPUT_SIDE;
use crate::ports::queue::{JobQueue, OutgoingMessage};
use crate::users::User;
use crate::users::fields::{STYLE_TYPES, one_of};
use crate::web::input::{check, decode_strict, finish};

/// The body of `POST /api/v1/characters/{id}/generate`; every field is optional.
/// Caps by tier (FREE / PREMIUM / PRO / ENTERPRISE): longest side 1024 / 1536 /
/// 2048 / 2048 px, batch 1 / 2 / 4 / 4, priority 5 / 7 / 9 / 10, and 2 / 4 / 8 /
/// 16 jobs queued or processing at once.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateBody {
    /// `character_generation` (default), `style_transfer`, `upscale`, `variation` or
    /// `background_removal` (all but the first start from one of the character's images).
    pub job_type: Option<String>,
    /// Pixels, a multiple of 8 from 64 (default 512). `character_generation` only: the
    /// other job types take their size from the source image.
    pub width: Option<i64>,
    /// Pixels, a multiple of 8 from 64 (default 512). `character_generation` only.
    pub height: Option<i64>,
    /// 1 to 150 (default: the character's).
    pub steps: Option<i64>,
    /// Images to make (default 1); `upscale` and `background_removal` make one.
    pub batch_size: Option<i64>,
    /// 1 to 10 (default 5); higher runs sooner.
    pub priority: Option<i64>,
    /// 0 to 2147483647 (default: the character's seed, else random).
    pub seed: Option<i64>,
    /// A style type to render in (default: the character's); a style transfer's new style.
    pub style_type: Option<String>,
    /// img2img strength for style transfer and variation, 0.0 to 1.0 (default 0.6).
    pub denoising_strength: Option<f64>,
    /// Upscale factor, 2 to 4 (default 2); the output may not exceed 8192 px a side.
    pub upscale_factor: Option<i64>,
    /// The image to start from (one of the character's, see
    /// `GET /api/v1/characters/{id}/images`); default: its primary image.
    pub source_image_id: Option<String>,
    /// What a variant changes: for `variation` one of `variation` (default),
    /// `pose_change`, `outfit_change`, `expression_change`; for `style_transfer`
    /// only `style_transfer` (its default).
    pub variant_type: Option<String>,
    /// For `variation` and `style_transfer`: fields of the new variant character that
    /// differ from the source's: `name`, `description`, `prompt`, `negative_prompt`,
    /// `art_style`, `mood`, `color_palette`, `tags`, `model_version` (same rules as on
    /// characters). Its prompt renders the variant.
    #[schema(value_type = Option<Object>)]
    pub changes: Option<Map<String, Value>>,
    /// `true`: answer what this request would cost and which buckets would pay, with
    /// no hold, no job and nothing counted against limits (200 instead of 202).
    pub dry_run: Option<bool>,
}

/// The character fields a variant may change (`changes`).
pub const VARIANT_CHANGES: [&str; 9] = [
    "name",
    "description",
    "prompt",
    "negative_prompt",
    "art_style",
    "mood",
    "color_palette",
    "tags",
    "model_version",
];

/// Variant types a `variation` job may ask for.
pub const VARIATION_TYPES: [&str; 4] = [
    "variation",
    "pose_change",
    "outfit_change",
    "expression_change",
];

/// Validated, resolved generation parameters.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub job_type: JobType,
    /// `None` for jobs that take their size from the source image.
    pub size: Option<(i64, i64)>,
    pub steps: i64,
    pub batch_size: i64,
    pub priority: i64,
    pub seed: Option<i64>,
    pub style_type: Option<String>,
    pub denoising_strength: f64,
    pub upscale_factor: i64,
    pub source_image_id: Option<String>,
    /// `variation` and `style_transfer` make a variant character.
    pub variant: Option<VariantRequest>,
    pub dry_run: bool,
}

/// What a variant job asked to change.
#[derive(Debug, Clone)]
pub struct VariantRequest {
    pub variant_type: String,
    pub changes: CharacterFields,
}

impl GenerateBody {
    pub fn parse(body: Map<String, Value>) -> Result<Self, ApiError> {
        decode_strict(
            body,
            &["id", "user_id", "character_id", "status", "cost_credits"],
        )
    }

    /// Validates and caps the parameters for a user of `tier`.
    pub fn validate(self, tier: Tier, default_steps: i64) -> Result<GenerateParams, ApiError> {
        let terms = tier.terms();
        let (max_side, max_batch, max_priority) =
            (terms.max_side_px, terms.max_batch_size, terms.max_priority);
        let mut errors: Vec<FieldError> = Vec::new();
        // `None` once refused: the request fails, and no other check assumes a type.
        let job_type = match self.job_type {
            None => Some(JobType::CharacterGeneration),
            Some(t) => check(&mut errors, one_of("job_type", &t, &JOB_TYPES))
                .and_then(|t| JobType::parse(&t)),
        };
        let from_image = job_type.is_some_and(JobType::needs_image);
        let named = job_type.map(JobType::as_str).unwrap_or_default();
        let size = if from_image {
            for (field, given) in [("width", self.width), ("height", self.height)] {
                if given.is_some() {
                    errors.push(FieldError::new(
                        field,
                        format!("is the source image's for {named}; leave it out"),
                    ));
                }
            }
            None
        } else {
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
            Some((side("width", self.width), side("height", self.height)))
        };
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
        let single = job_type.is_some_and(JobType::is_single_pass);
        let batch_size = if single {
            ranged(
                "batch_size",
                self.batch_size.unwrap_or(1),
                1,
                1,
                &format!(" for {named}"),
            )
        } else {
            ranged(
                "batch_size",
                self.batch_size.unwrap_or(1),
                1,
                max_batch,
                " for your tier",
            )
        };
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
        if self.source_image_id.is_some() && !from_image {
            errors.push(FieldError::new(
                "source_image_id",
                "only jobs that start from an image take one",
            ));
        }
        let variant = variant_request(job_type, self.variant_type, self.changes, &mut errors);
        finish(
            GenerateParams {
                job_type: job_type.unwrap_or(JobType::CharacterGeneration),
                size,
                steps,
                batch_size,
                priority,
                seed,
                style_type,
                denoising_strength,
                upscale_factor,
                source_image_id: self.source_image_id,
                variant,
                dry_run: self.dry_run.unwrap_or(false),
            },
            errors,
        )
    }
}

/// The variant a `variation` or `style_transfer` makes; other job types take
/// neither `variant_type` nor `changes`.
fn variant_request(
    job_type: Option<JobType>,
    variant_type: Option<String>,
    changes: Option<Map<String, Value>>,
    errors: &mut Vec<FieldError>,
) -> Option<VariantRequest> {
    let allowed: &[&str] = match job_type {
        Some(JobType::Variation) => &VARIATION_TYPES,
        Some(JobType::StyleTransfer) => &["style_transfer"],
        _ => {
            for (field, given) in [
                ("variant_type", variant_type.is_some()),
                ("changes", changes.is_some()),
            ] {
                if given {
                    errors.push(FieldError::new(
                        field,
                        "only variation and style_transfer make a variant",
                    ));
                }
            }
            return None;
        }
    };
    let variant_type = match variant_type {
        None => allowed[0].to_string(),
        Some(t) => check(errors, one_of("variant_type", &t, allowed))?,
    };
    let changes = match changes {
        None => CharacterFields::default(),
        Some(changes) => {
            let refused: Vec<FieldError> = changes
                .keys()
                .filter(|k| !VARIANT_CHANGES.contains(&k.as_str()))
                .map(|k| {
                    FieldError::new(
                        format!("changes.{k}"),
                        format!("a variant may change {}", VARIANT_CHANGES.join(", ")),
                    )
                })
                .collect();
            if !refused.is_empty() {
                errors.extend(refused);
                return None;
            }
            match character_fields::parse(changes, Purpose::Update) {
                Ok(fields) => fields,
                Err(ApiError::Validation { errors: found, .. }) => {
                    errors.extend(found.into_iter().map(|mut e| {
                        e.field = match e.field.as_str() {
                            // The decoder's own complaint (a wrong JSON type).
                            "body" => "changes".to_string(),
                            field => format!("changes.{field}"),
                        };
                        e
                    }));
                    return None;
                }
                Err(_) => {
                    errors.push(FieldError::new(
                        "changes",
                        "must be an object of character fields",
                    ));
                    return None;
                }
            }
        }
    };
    Some(VariantRequest {
        variant_type,
        changes,
    })
}

/// The columns of the character a job reads, by name.
const CHARACTER_FOR_JOB: &str = "user_id, is_public, name, description, prompt, negative_prompt, style_type, \
    art_style, mood, color_palette, model_version, sampler, cfg_scale::float8 AS cfg_scale, generation_seed, tags, \
    allow_commercial_use, license_type, primary_image_id";

/// Records a queued job with its hold, in the caller's (system-role)
/// transaction. The caller commits, then calls [`enqueue`] — or, for a dry
/// run, rolls back and shows the hold.
pub async fn record(
    client: &impl GenericClient,
    pricing: &engine::PricingCache,
    user: &User,
    character_id: &str,
    params: &GenerateParams,
) -> Result<(Job, holds::Hold), ApiError> {
    // One dispatch at a time per user, so the concurrency cap is exact.
    crate::credits::ledger::lock_user(client, &user.id).await?;
    let character = client
        .query_opt(
            &format!("SELECT {CHARACTER_FOR_JOB} FROM characters WHERE id = $1"),
            &[&character_id],
        )
        .await?;
    let Some(character) = character else {
        return Err(ApiError::NotFound("no such character".into()));
    };
    let owner: String = character.try_get("user_id")?;
    if owner != user.id {
        let public: Option<bool> = character.try_get("is_public")?;
        return Err(if public == Some(true) {
            ApiError::Forbidden("you can only generate images for your own characters".into())
        } else {
            ApiError::NotFound("no such character".into())
        });
    }
    let mut input = input_of(&character, params)?;
    // What reaches the image server was checked against the owner's filter level when it
    // was written; the owner may have made the level stricter since, so it is checked
    // again against today's: the character's prompt, art style, mood and tags, and a
    // variant's `changes`. The request carries no other free text, and negative prompts
    // are not filtered, at creation or here: they list what to keep out of the image
    // ("nsfw, gore" there makes the image safer).
    if let Some(variant) = &params.variant {
        crate::characters::repo::filter_content(user, &variant.changes, "changes.")?;
    }
    let level = content_filter::level_of(user);
    let tags = input.tags.join(", ");
    for (field, text) in [
        ("character.prompt", Some(input.prompt.as_str())),
        ("character.art_style", input.art_style.as_deref()),
        ("character.mood", input.mood.as_deref()),
        ("character.tags", Some(tags.as_str())),
    ] {
        if let Some(text) = text {
            content_filter::check(level, field, text)?;
        }
    }
    if params.job_type.needs_image() {
        let primary: Option<String> = character.try_get("primary_image_id")?;
        input.source = Some(source_image(client, character_id, params, primary).await?);
    }
    let (width, height) = output_size(params.job_type, &input, params)?;
    input.width = width;
    input.height = height;
    let (tier, _) = engine::tier_of(user);
    let max_active = tier.terms().max_active_jobs;
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
    let path = GENERATE.path(&[character_id]);
    let quote =
        engine::quote_generation(client, pricing, user, &path, &price_inputs(params, &input))
            .await?;
    if let Some(variant) = &params.variant {
        input.variant = Some(variant_plan(&character, variant)?);
    }
    let priority = i32::try_from(params.priority).unwrap_or(5);
    let row = client
        .query_one(
            &format!(
                "INSERT INTO generation_jobs (user_id, character_id, job_type, input_parameters, priority, \
                   cost_credits, status) VALUES ($1, $2, $3, $4, $5, $6, 'queued') RETURNING {JOB_COLUMNS}"
            ),
            &[&user.id, &character_id, &params.job_type.as_str(), &input.to_value(), &priority, &quote.price],
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
    Ok((Job::from_row(&row)?, hold))
}

/// The job's input: the character's look (with a variant's changes), the
/// request's parameters, the character's defaults where the request is silent.
fn input_of(character: &Row, params: &GenerateParams) -> Result<GenerationInput, ApiError> {
    let mut input = GenerationInput {
        prompt: character.try_get("prompt")?,
        negative_prompt: character.try_get("negative_prompt")?,
        style_type: match &params.style_type {
            Some(style) => style.clone(),
            None => character.try_get("style_type")?,
        },
        art_style: character.try_get("art_style")?,
        mood: character.try_get("mood")?,
        color_palette: character
            .try_get::<_, Option<Vec<String>>>("color_palette")?
            .unwrap_or_default(),
        tags: character
            .try_get::<_, Option<Vec<String>>>("tags")?
            .unwrap_or_default(),
        model_version: character.try_get("model_version")?,
        sampler: character
            .try_get::<_, Option<String>>("sampler")?
            .unwrap_or_else(|| DEFAULT_SAMPLER.to_string()),
        cfg_scale: character
            .try_get::<_, Option<f64>>("cfg_scale")?
            .unwrap_or(DEFAULT_CFG_SCALE),
        seed: match params.seed {
            Some(seed) => seed,
            None => match character.try_get::<_, Option<i32>>("generation_seed")? {
                Some(seed) => i64::from(seed),
                None => i64::from(rand::random::<u32>() >> 1),
            },
        },
        width: 0,
        height: 0,
        steps: params.steps,
        batch_size: params.batch_size,
        denoising_strength: params.denoising_strength,
        upscale_factor: params.upscale_factor,
        source: None,
        variant: None,
    };
    if let Some(variant) = &params.variant {
        let c = &variant.changes;
        if let Some(prompt) = &c.prompt {
            input.prompt = prompt.clone();
        }
        if let Some(negative) = &c.negative_prompt {
            input.negative_prompt = negative.clone();
        }
        if let Some(art_style) = &c.art_style {
            input.art_style = art_style.clone();
        }
        if let Some(mood) = &c.mood {
            input.mood = mood.clone();
        }
        if let Some(palette) = &c.color_palette {
            input.color_palette = palette.clone().unwrap_or_default();
        }
        if let Some(tags) = &c.tags {
            input.tags = tags.clone();
        }
        if let Some(model) = &c.model_version {
            input.model_version = Some(model.clone());
        }
    }
    Ok(input)
}

/// The image a job starts from: the one asked for, else the character's
/// primary image.
async fn source_image(
    client: &impl GenericClient,
    character_id: &str,
    params: &GenerateParams,
    primary: Option<String>,
) -> Result<SourceImage, ApiError> {
    let wanted = params.source_image_id.clone().or(primary);
    let row = match &wanted {
        Some(id) => {
            client
                .query_opt(
                    "SELECT id, storage_key, width, height FROM character_images \
                     WHERE id = $1 AND character_id = $2",
                    &[id, &character_id],
                )
                .await?
        }
        None => None,
    };
    match row {
        Some(row) => Ok(SourceImage {
            image_id: row.try_get("id")?,
            key: row.try_get("storage_key")?,
            width: row.try_get::<_, Option<i32>>("width")?.map(i64::from),
            height: row.try_get::<_, Option<i32>>("height")?.map(i64::from),
        }),
        None if params.source_image_id.is_some() => Err(ApiError::validation(
            "source_image_id",
            "is not an image of this character",
        )),
        None => Err(ApiError::Conflict(format!(
            "{} starts from the character's image, and it has none yet",
            params.job_type
        ))),
    }
}

/// The size of what the job makes, which is what it is priced on: the
/// request's for a generation; the source image's for jobs that start from
/// one (× the factor for an upscale). A source whose size was never recorded
/// (an image from before V15 that the backfill could not size) counts as
/// 512 × 512.
fn output_size(
    job_type: JobType,
    input: &GenerationInput,
    params: &GenerateParams,
) -> Result<(i64, i64), ApiError> {
    if let Some(size) = params.size {
        return Ok(size);
    }
    let source = input.source.as_ref();
    let (w, h) = (
        source.and_then(|s| s.width).unwrap_or(512),
        source.and_then(|s| s.height).unwrap_or(512),
    );
    if job_type != JobType::Upscale {
        return Ok((w, h));
    }
    let (w, h) = (w * params.upscale_factor, h * params.upscale_factor);
    let max = i64::from(MAX_OUTPUT_SIDE);
    if w > max || h > max {
        return Err(ApiError::validation(
            "upscale_factor",
            format!(
                "would make a {w}x{h} image; at most {max} px a side (the source is {}x{})",
                w / params.upscale_factor,
                h / params.upscale_factor
            ),
        ));
    }
    Ok((w, h))
}

/// What the pricing formula sees: the output's size; steps only where a
/// sampler runs (not for upscales and background removal).
fn price_inputs(params: &GenerateParams, input: &GenerationInput) -> PriceInputs {
    let samples = !params.job_type.is_single_pass();
    PriceInputs {
        job_type: Some(params.job_type.as_str().to_string()),
        steps: samples.then_some(params.steps),
        width: Some(input.width),
        height: Some(input.height),
        batch_size: Some(params.batch_size),
    }
}

/// The variant character to create on completion: its id now, its name
/// (asked for, else the source's with the kind of change), the source's
/// description and licence unless changed.
fn variant_plan(character: &Row, variant: &VariantRequest) -> Result<VariantPlan, ApiError> {
    let source_name: String = character.try_get("name")?;
    let name = match &variant.changes.name {
        Some(name) => name.clone(),
        None => {
            let label = variant.variant_type.replace('_', " ");
            let suffix = format!(" ({label})");
            let keep = 100usize.saturating_sub(suffix.chars().count());
            format!(
                "{}{suffix}",
                source_name.chars().take(keep).collect::<String>()
            )
        }
    };
    Ok(VariantPlan {
        character_id: uuid::Uuid::new_v4().to_string(),
        variant_type: variant.variant_type.clone(),
        name,
        description: match &variant.changes.description {
            Some(description) => description.clone(),
            None => character.try_get("description")?,
        },
        allow_commercial_use: character.try_get("allow_commercial_use")?,
        license_type: character.try_get("license_type")?,
    })
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
        let row = tx
            .query_opt(
                "UPDATE generation_jobs SET status = 'failed', completed_at = now(), cost_credits = 0, \
                   error_details = coalesce(error_details, '{}'::jsonb) || $3 \
                 WHERE id = $1 AND status = 'queued' AND enqueued_at < now() - make_interval(secs => $2) \
                 RETURNING character_id, user_id",
                &[
                    &job_id,
                    &after,
                    &json!({"error": "the job's queue message was lost too many times", "stage": "queue"}),
                ],
            )
            .await?;
        if let Some(row) = row {
            holds::release(&tx, &job_id).await?;
            let character_id: Option<String> = row.try_get(0)?;
            if let Some(character_id) = character_id {
                tx.execute(
                    "UPDATE characters SET generation_status = 'failed', \
                       error_message = 'the generation could not be run; its credits were released' \
                     WHERE id = $1 AND generation_status = 'pending'",
                    &[&character_id],
                )
                .await?;
            }
            let user_id: String = row.try_get(1)?;
            tx.execute(
                "INSERT INTO user_activity_logs (user_id, activity_type, entity_type, entity_id, metadata) \
                 VALUES ($1, 'job_failed', 'generation_job', $2, $3)",
                &[&user_id, &job_id, &json!({"error": "queue message lost", "stage": "queue"})],
            )
            .await?;
            failed += 1;
        }
        tx.commit().await?;
    }
    Ok(Recovered {
        redelivered,
        failed,
    })
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
        let params = body(json!({})).validate(Tier::Free, 20).unwrap();
        assert_eq!(
            (
                params.size,
                params.steps,
                params.batch_size,
                params.priority
            ),
            (Some((512, 512)), 20, 1, 5)
        );
        assert!(!params.dry_run);
        assert!(params.variant.is_none());
        assert!(
            body(json!({"width": 2048}))
                .validate(Tier::Free, 20)
                .is_err()
        );
        assert!(body(json!({"width": 2048})).validate(Tier::Pro, 20).is_ok());
        assert!(
            body(json!({"batch_size": 2}))
                .validate(Tier::Free, 20)
                .is_err()
        );
        assert!(
            body(json!({"batch_size": 2}))
                .validate(Tier::Premium, 20)
                .is_ok()
        );
        assert!(
            body(json!({"priority": 10}))
                .validate(Tier::Pro, 20)
                .is_err()
        );
        assert!(
            body(json!({"priority": 10}))
                .validate(Tier::Enterprise, 20)
                .is_ok()
        );
        assert!(body(json!({"width": 513})).validate(Tier::Pro, 20).is_err());
        assert!(body(json!({"steps": 151})).validate(Tier::Pro, 20).is_err());
        assert!(
            body(json!({"job_type": "teleport"}))
                .validate(Tier::Pro, 20)
                .is_err()
        );
        assert!(
            body(json!({"denoising_strength": 1.5}))
                .validate(Tier::Pro, 20)
                .is_err()
        );
        assert!(
            GenerateBody::parse(json!({"cost_credits": 0}).as_object().cloned().unwrap()).is_err()
        );
        assert!(GenerateBody::parse(json!({"colour": 1}).as_object().cloned().unwrap()).is_err());
    }

    fn field_of(err: ApiError) -> Vec<String> {
        match err {
            ApiError::Validation { errors, .. } => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("not a validation error: {other:?}"),
        }
    }

    #[test]
    fn jobs_from_an_image_take_its_size_and_make_one_image() {
        let params = body(json!({"job_type": "upscale", "upscale_factor": 4}))
            .validate(Tier::Free, 20)
            .unwrap();
        assert_eq!((params.size, params.upscale_factor), (None, 4));
        for job_type in [
            "style_transfer",
            "variation",
            "upscale",
            "background_removal",
        ] {
            let err = body(json!({"job_type": job_type, "width": 512}))
                .validate(Tier::Pro, 20)
                .unwrap_err();
            assert_eq!(field_of(err), ["width"], "{job_type}");
        }
        for job_type in ["upscale", "background_removal"] {
            let err = body(json!({"job_type": job_type, "batch_size": 2}))
                .validate(Tier::Pro, 20)
                .unwrap_err();
            assert_eq!(field_of(err), ["batch_size"], "{job_type}");
        }
        let err = body(json!({"source_image_id": "x"}))
            .validate(Tier::Pro, 20)
            .unwrap_err();
        assert_eq!(field_of(err), ["source_image_id"]);
    }

    #[test]
    fn variants_say_what_they_change() {
        let params = body(json!({"job_type": "variation"}))
            .validate(Tier::Free, 20)
            .unwrap();
        assert_eq!(params.variant.unwrap().variant_type, "variation");
        let params = body(json!({"job_type": "style_transfer", "style_type": "anime"}))
            .validate(Tier::Free, 20)
            .unwrap();
        assert_eq!(params.variant.unwrap().variant_type, "style_transfer");
        let params = body(json!({
            "job_type": "variation",
            "variant_type": "outfit_change",
            "changes": {"prompt": "  an elf in plate armour ", "name": "Aria, armoured", "tags": ["Armour"]}
        }))
        .validate(Tier::Free, 20)
        .unwrap();
        let variant = params.variant.unwrap();
        assert_eq!(variant.variant_type, "outfit_change");
        assert_eq!(
            variant.changes.prompt.as_deref(),
            Some("an elf in plate armour")
        );
        assert_eq!(variant.changes.tags, Some(vec!["armour".to_string()]));

        for (request, field) in [
            (
                json!({"job_type": "variation", "variant_type": "style_transfer"}),
                "variant_type",
            ),
            (
                json!({"job_type": "style_transfer", "variant_type": "pose_change"}),
                "variant_type",
            ),
            (json!({"variant_type": "pose_change"}), "variant_type"),
            (json!({"job_type": "upscale", "changes": {}}), "changes"),
            (
                json!({"job_type": "variation", "changes": {"is_public": true}}),
                "changes.is_public",
            ),
            (
                json!({"job_type": "variation", "changes": {"prompt": ""}}),
                "changes.prompt",
            ),
            (
                json!({"job_type": "variation", "changes": {"color_palette": ["red"]}}),
                "changes.color_palette[0]",
            ),
            (
                json!({"job_type": "variation", "changes": {"name": 5}}),
                "changes",
            ),
        ] {
            let err = GenerateBody::parse(request.as_object().cloned().unwrap())
                .and_then(|b| b.validate(Tier::Free, 20))
                .unwrap_err();
            assert_eq!(field_of(err), [field], "{request}");
        }
    }
}
