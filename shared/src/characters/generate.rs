//! Starting a generation (`POST /api/v1/characters/{id}/generate`, served by
//! the jobs function): validate and cap the parameters against the
//! character, price the request, then create the job with its hold
//! ([`crate::jobs::lifecycle::create`]) and send it after the commit
//! ([`crate::jobs::outbox::enqueue`]). It lives with the characters because
//! everything it checks is the character's; the job itself is the jobs
//! domain's.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio_postgres::{GenericClient, Row};

use super::content_filter;
use super::fields::{self as character_fields, CharacterFields, Purpose};
use crate::activity::{self, Activity};
use crate::credits::engine;
use crate::credits::holds;
use crate::credits::pricing::{GENERATE, PriceInputs};
use crate::jobs::input::{
    DEFAULT_CFG_SCALE, DEFAULT_SAMPLER, GenerationInput, SourceImage, VariantPlan,
};
use crate::jobs::lifecycle::{self, NewJob};
use crate::jobs::{JOB_TYPES, Job};
use crate::kernel::error::{ApiError, FieldError, Problem};
use crate::kernel::tier::Tier;
use crate::kernel::vocabulary::JobType;
use crate::ports::generator::MAX_OUTPUT_SIDE;
use crate::users::User;
use crate::users::account::Account;
use crate::users::fields::STYLE_TYPES;
use crate::web::http::{ApiJson, ApiPath, RequestMeta, resource_id};
use crate::web::idempotency::{self, Claim, IdempotencyKey};
use crate::web::input::checks::one_of;
use crate::web::input::{RequestBody, check, decode, finish};
use crate::web::responses::{BodyRefused, ServerFailures};
use crate::web::responses::{Unauthorized, ValidationFailed};
use crate::web::state::AppState;

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

impl RequestBody for GenerateBody {
    /// Checked against the caller's tier afterwards: [`GenerateBody::validate`].
    type Valid = Self;

    fn read_only(field: &str) -> bool {
        matches!(
            field,
            "id" | "user_id" | "character_id" | "status" | "cost_credits"
        )
    }

    fn validate(self, _errors: &mut Vec<FieldError>) -> Self {
        self
    }
}

impl GenerateBody {
    pub fn parse(body: Map<String, Value>) -> Result<Self, ApiError> {
        decode::<Self>(body)
    }

    /// Validates and caps the parameters for a user of `tier`.
    pub fn validate(self, tier: Tier, default_steps: i64) -> Result<GenerateParams, ApiError> {
        let terms = tier.terms();
        let (max_side, max_batch, max_priority) =
            (terms.max_side_px, terms.max_batch_size, terms.max_priority);
        let mut errors: Vec<FieldError> = Vec::new();
        let job_type = job_type_of(self.job_type, &mut errors);
        let from_image = job_type.is_some_and(JobType::needs_image);
        let named = job_type.map(JobType::as_str).unwrap_or_default();
        let size = requested_size(
            from_image,
            named,
            (self.width, self.height),
            max_side,
            &mut errors,
        );
        let mut ranged = |field: &str, value: i64, min: i64, max: i64, why: &str| {
            in_range(&mut errors, field, value, (min, max), why)
        };
        let steps = ranged("steps", self.steps.unwrap_or(default_steps), 1, 150, "");
        // One image for single-pass jobs, else up to the tier's batch.
        let (max_batch, why) = if job_type.is_some_and(JobType::is_single_pass) {
            (1, format!(" for {named}"))
        } else {
            (max_batch, " for your tier".to_string())
        };
        let batch_size = ranged(
            "batch_size",
            self.batch_size.unwrap_or(1),
            1,
            max_batch,
            &why,
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
        let denoising_strength = denoising(self.denoising_strength, &mut errors);
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

/// The job type asked for (`character_generation` by default); `None` once refused, so that
/// the request fails and no other check assumes a type.
fn job_type_of(raw: Option<String>, errors: &mut Vec<FieldError>) -> Option<JobType> {
    match raw {
        None => Some(JobType::CharacterGeneration),
        Some(t) => {
            check(errors, one_of("job_type", &t, &JOB_TYPES)).and_then(|t| JobType::parse(&t))
        }
    }
}

/// img2img's denoising strength: 0.6 by default, from 0 to 1.
fn denoising(raw: Option<f64>, errors: &mut Vec<FieldError>) -> f64 {
    let strength = raw.unwrap_or(0.6);
    if !(0.0..=1.0).contains(&strength) {
        errors.push(FieldError::new(
            "denoising_strength",
            "must be from 0.0 to 1.0",
        ));
    }
    strength
}

/// The output's width and height: 512 × 512 by default, multiples of 8 up to the tier's
/// longest side; `None` for jobs that take the source image's size (they refuse both).
fn requested_size(
    from_image: bool,
    job_type: &str,
    (width, height): (Option<i64>, Option<i64>),
    max_side: i64,
    errors: &mut Vec<FieldError>,
) -> Option<(i64, i64)> {
    if from_image {
        for (field, given) in [("width", width), ("height", height)] {
            if given.is_some() {
                errors.push(FieldError::new(
                    field,
                    format!("is the source image's for {job_type}; leave it out"),
                ));
            }
        }
        return None;
    }
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
    Some((side("width", width), side("height", height)))
}

/// `value`, with an error naming `field` unless it is in `min..=max` (`why` says whose bound).
fn in_range(
    errors: &mut Vec<FieldError>,
    field: &str,
    value: i64,
    (min, max): (i64, i64),
    why: &str,
) -> i64 {
    if !(min..=max).contains(&value) {
        errors.push(FieldError::new(
            field,
            format!("must be from {min} to {max}{why}"),
        ));
    }
    value
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
                            // A value the decoder could not hold at all.
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
/// transaction. The caller commits, then calls [`crate::jobs::outbox::enqueue`] — or, for a dry
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
    let character = own_character(client, user, character_id).await?;
    let mut input = input_of(&character, params)?;
    refilter(user, params, &input)?;
    if params.job_type.needs_image() {
        let primary: Option<String> = character.try_get("primary_image_id")?;
        input.source = Some(source_image(client, character_id, params, primary).await?);
    }
    let (width, height) = output_size(params.job_type, &input, params)?;
    input.width = width;
    input.height = height;
    refuse_over_concurrency(client, user).await?;
    let path = GENERATE.path(&[character_id]);
    let quote =
        engine::quote_generation(client, pricing, user, &path, &price_inputs(params, &input))
            .await?;
    if let Some(variant) = &params.variant {
        input.variant = Some(variant_plan(&character, variant)?);
    }
    let job = NewJob {
        user_id: &user.id,
        character_id,
        job_type: params.job_type,
        input: &input,
        priority: i32::try_from(params.priority).unwrap_or(5),
    };
    Ok(lifecycle::create(client, job, &quote).await?)
}

/// The character to render, the caller's own: someone else's public character is a
/// 403, anything else the caller cannot see a 404.
async fn own_character(
    client: &impl GenericClient,
    user: &User,
    character_id: &str,
) -> Result<Row, ApiError> {
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
    Ok(character)
}

/// What reaches the image server was checked against the owner's filter level when it
/// was written; the owner may have made the level stricter since, so it is checked
/// again against today's: the character's prompt, art style, mood and tags, and a
/// variant's `changes`. The request carries no other free text, and negative prompts
/// are not filtered, at creation or here: they list what to keep out of the image
/// ("nsfw, gore" there makes the image safer).
fn refilter(user: &User, params: &GenerateParams, input: &GenerationInput) -> Result<(), ApiError> {
    if let Some(variant) = &params.variant {
        super::repo::filter_content(user, &variant.changes, "changes.")?;
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
    Ok(())
}

/// A 429 when the caller's tier already runs as many jobs as it may at once.
async fn refuse_over_concurrency(client: &impl GenericClient, user: &User) -> Result<(), ApiError> {
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
    Ok(())
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

/// The generate route (the jobs function serves it).
pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/characters/{id}/generate", post(generate))
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
        (status = 401, response = Unauthorized),
        (status = 402, description = "Not enough credits: `needed` and `available` in the problem.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the caller's character, an account that may not generate, or a tier or subscription the pricing requires.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such character (or no account yet).", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job type starts from the character's image and it has none, or a request with this Idempotency-Key is in progress.", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = ValidationFailed),
        (status = 429, description = "A rate, daily or concurrent-job limit; see Retry-After.", body = Problem, content_type = "application/problem+json"),
        BodyRefused,
        ServerFailures,
    )
)]
pub(crate) async fn generate(
    State(state): State<AppState>,
    mut account: Account,
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
    account.user.require_active("generate images")?;
    let (tier, _) = engine::tier_of(&account.user);
    let (tx, user) = account.begin_system().await?;
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
        let (job, hold) = record(
            &tx,
            &state.cache::<crate::credits::engine::PricingCache>(),
            user,
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
    let (mut job, _) = record(
        &tx,
        &state.cache::<crate::credits::engine::PricingCache>(),
        user,
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
    crate::jobs::outbox::enqueue(account.client(), queue.as_ref(), &job).await;
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
        input_parameters: crate::jobs::input::public_view(&job.input_parameters),
    }
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
                "changes.name",
            ),
        ] {
            let err = GenerateBody::parse(request.as_object().cloned().unwrap())
                .and_then(|b| b.validate(Tier::Free, 20))
                .unwrap_err();
            assert_eq!(field_of(err), [field], "{request}");
        }
    }
}
