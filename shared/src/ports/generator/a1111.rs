//! An HTTP server speaking the AUTOMATIC1111 web-UI API (`--api`):
//! `txt2img` for new characters, `img2img` for style transfer and variations,
//! `extra-single-image` for upscaling, and the rembg extension's `/rembg` for
//! background removal. A server without the extension answers 404 (or 405)
//! there: that is [`GeneratorError::Unsupported`], and the chain moves on.
//!
//! **Prompt and model.** txt2img and img2img receive the prompt and negative
//! prompt [`compose`] makes of the character, and, when the character's
//! `model_version` is in the allow-list (`GENERATOR_MODELS`), the checkpoint
//! it maps to as `override_settings.sd_model_checkpoint`, restored after the
//! job. An unmapped or absent version sends no override: the server renders
//! with its loaded model. The provider's info records what was used:
//! `"model": {"requested": "v1.0", "checkpoint": "sd_xl_base_1.0.safetensors"}`.
//!
//! **Progress.** While a call is in flight and someone listens to the
//! [`ProgressReporter`], the adapter asks `GET /sdapi/v1/progress` every
//! `progress_interval` and reports its `progress` and `eta_relative`. That
//! is the server's current job, which is this one on a server that renders for
//! this worker alone. The fraction never goes back within one call (an idle
//! server, between steps or before the job starts, says 0); a failed or
//! garbled answer is ignored. The polling ends with the call.
//!
//! The server must answer PNGs (its default `samples_format`); anything else is
//! an invalid response. Credentials in the URL (`https://user:pass@host`) are
//! sent as basic auth (A1111's `--api-auth`) and never appear in errors.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    GeneratedImages, GenerationRequest, GeneratorError, ImageGenerator, JobType, Progress,
    ProgressReporter, compose, decode_png, png_dimensions, upscaled_size,
};

/// The upscaler A1111 is asked for (bundled with the web UI).
pub const UPSCALER: &str = "R-ESRGAN 4x+";

/// The rembg extension's model for background removal (its default).
pub const REMBG_MODEL: &str = "u2net";

/// How often progress is asked for unless configured otherwise.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_millis(1000);

/// Largest response read: a batch of 16 large PNGs in base64 fits; a server
/// that streams without end does not exhaust the worker's memory.
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// How much of an error answer is read.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// Largest progress answer read (without the preview image, it is small).
const MAX_PROGRESS_BODY_BYTES: usize = 64 * 1024;

/// The shortest wait for one progress answer (a short interval does not make
/// a busy server answer faster).
const MIN_PROGRESS_TIMEOUT: Duration = Duration::from_secs(1);

/// How much of an error body is kept in the error message.
const MAX_ERROR_DETAIL_CHARS: usize = 300;

/// Base64 as A1111 writes it (standard alphabet), tolerant about padding.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// The HTTP client the A1111 adapters share (rustls, connection pooling).
/// Per-request timeouts come from each adapter.
pub fn client() -> Result<reqwest::Client, GeneratorError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| GeneratorError::Setup(describe(&e)))
}

pub struct A1111Generator {
    name: &'static str,
    /// Without a trailing slash; may carry a path prefix (a reverse proxy).
    base_url: String,
    /// For the whole call: connecting, rendering, reading the answer.
    timeout: Duration,
    client: reqwest::Client,
    /// `model_version` → checkpoint title (`GENERATOR_MODELS`).
    models: BTreeMap<String, String>,
    /// How often `/sdapi/v1/progress` is asked while a call is in flight.
    progress_interval: Duration,
}

impl A1111Generator {
    /// `name` is the provider's place in the chain: `primary` or `secondary`.
    /// No model allow-list (every job renders with the server's loaded model)
    /// and progress asked for every second, until told otherwise.
    pub fn new(
        name: &'static str,
        base_url: &str,
        timeout: Duration,
        client: reqwest::Client,
    ) -> Self {
        Self {
            name,
            base_url: base_url.trim_end_matches('/').to_string(),
            timeout,
            client,
            models: BTreeMap::new(),
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
        }
    }

    /// The allow-list: a request whose `model_version` is a key renders with
    /// the checkpoint of that title.
    pub fn with_models(mut self, models: BTreeMap<String, String>) -> Self {
        self.models = models;
        self
    }

    /// How often progress is asked for while a call is in flight (at least
    /// 1 ms).
    pub fn with_progress_interval(mut self, interval: Duration) -> Self {
        self.progress_interval = interval.max(Duration::from_millis(1));
        self
    }

    async fn run(
        &self,
        request: &GenerationRequest,
        progress: &ProgressReporter,
    ) -> Result<GeneratedImages, GeneratorError> {
        request.validate()?;
        let started = Instant::now();
        let (images, info) = match request.job_type {
            JobType::CharacterGeneration => {
                let (body, model) = self.generation_body(request);
                let answer = self.call("sdapi/v1/txt2img", &body, progress).await?;
                let (images, info) = images_response(&answer, request.batch_size)?;
                (images, with_model(info, model))
            }
            JobType::StyleTransfer | JobType::Variation => {
                let init = request.require_init_image()?;
                let (mut body, model) = self.generation_body(request);
                body["init_images"] = json!([BASE64.encode(init)]);
                body["denoising_strength"] = json!(request.denoising_strength);
                let answer = self.call("sdapi/v1/img2img", &body, progress).await?;
                let (images, info) = images_response(&answer, request.batch_size)?;
                (images, with_model(info, model))
            }
            JobType::Upscale => {
                let init = request.require_init_image()?;
                // Refuse before the GPU works on an answer we would refuse.
                let (w, h) = source_dimensions(init)?;
                upscaled_size(w, h, request.upscale_factor)?;
                let body = json!({
                    "image": BASE64.encode(init),
                    "upscaling_resize": request.upscale_factor,
                    "upscaler_1": UPSCALER,
                });
                let answer = self
                    .call("sdapi/v1/extra-single-image", &body, progress)
                    .await?;
                extras_response(&answer, request.upscale_factor)?
            }
            JobType::BackgroundRemoval => {
                let init = request.require_init_image()?;
                source_dimensions(init)?;
                let body = json!({
                    "input_image": BASE64.encode(init),
                    "model": REMBG_MODEL,
                    "return_mask": false,
                    "alpha_matting": false,
                });
                let answer = match self.call("rembg", &body, progress).await {
                    // No extension: no such route, or (behind some proxies and
                    // UIs) a route that takes GET only.
                    Err(GeneratorError::Status {
                        status: 404 | 405, ..
                    }) => return Err(GeneratorError::Unsupported(JobType::BackgroundRemoval)),
                    other => other?,
                };
                rembg_response(&answer)?
            }
        };
        progress.report(Progress::DONE);
        Ok(GeneratedImages {
            images,
            provider: self.name.to_string(),
            info,
            gpu_time_ms: Some(started.elapsed().as_millis() as u64),
        })
    }

    /// The txt2img body (also the base of img2img's) with the composed prompt
    /// and, for an allowed `model_version`, the checkpoint override; and the
    /// account of the model for the info.
    fn generation_body(&self, request: &GenerationRequest) -> (Value, Value) {
        let composed = compose(request);
        let mut body = json!({
            "prompt": composed.prompt,
            "negative_prompt": composed.negative_prompt,
            "steps": request.steps,
            "cfg_scale": request.cfg_scale,
            "sampler_name": request.sampler,
            "seed": request.seed,
            "width": request.width,
            "height": request.height,
            "batch_size": request.batch_size,
            "n_iter": 1,
            // Unsaved means no grid image among the results, and nothing piling
            // up on the server's disk.
            "save_images": false,
            "send_images": true,
        });
        let checkpoint = request
            .model_version
            .as_deref()
            .and_then(|version| self.models.get(version));
        if let Some(title) = checkpoint {
            body["override_settings"] = json!({ "sd_model_checkpoint": title });
            // Put the server's model back afterwards, so a job without a
            // model_version gets the model the server was started with.
            body["override_settings_restore_afterwards"] = json!(true);
        }
        let model = json!({
            "requested": request.model_version,
            "checkpoint": checkpoint,
        });
        (body, model)
    }

    /// POSTs to `{base}/{path}`, reporting the server's progress meanwhile
    /// when someone listens.
    async fn call(
        &self,
        path: &str,
        body: &Value,
        progress: &ProgressReporter,
    ) -> Result<Vec<u8>, GeneratorError> {
        if !progress.is_listened() {
            return self.post(path, body).await;
        }
        // Both futures live in this one: when the call ends the poller is
        // dropped, an unanswered progress request with it.
        tokio::select! {
            result = self.post(path, body) => result,
            never = self.watch_progress(progress) => match never {},
        }
    }

    /// Asks for progress every interval and reports it, for ever (until
    /// dropped).
    async fn watch_progress(&self, progress: &ProgressReporter) -> Infallible {
        let mut ticks = tokio::time::interval_at(
            tokio::time::Instant::now() + self.progress_interval,
            self.progress_interval,
        );
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut highest = 0.0_f64;
        loop {
            ticks.tick().await;
            match self.poll_progress().await {
                Ok(Some(answer)) => {
                    highest = highest.max(answer.fraction);
                    progress.report(Progress {
                        fraction: highest,
                        eta_seconds: answer.eta_seconds,
                    });
                }
                Ok(None) => {}
                Err(error) => tracing::debug!(
                    provider = self.name,
                    %error,
                    "progress poll failed; ignored"
                ),
            }
        }
    }

    /// One `GET /sdapi/v1/progress`: `None` when the server is idle.
    async fn poll_progress(&self) -> Result<Option<Progress>, String> {
        let url = format!(
            "{}/sdapi/v1/progress?skip_current_image=true",
            self.base_url
        );
        let response = self
            .client
            .get(url)
            .timeout(self.progress_interval.max(MIN_PROGRESS_TIMEOUT))
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let (status, bytes) = read_body(response, MAX_PROGRESS_BODY_BYTES, MAX_ERROR_BODY_BYTES)
            .await
            .map_err(|e| match e {
                ReadError::Transport(e) => describe(&e),
                ReadError::TooLarge => "the answer is too large".to_string(),
            })?;
        if !status.is_success() {
            return Err(format!(
                "HTTP {}: {}",
                status.as_u16(),
                error_detail(&bytes)
            ));
        }
        progress_response(&bytes)
    }

    /// POSTs JSON to `{base}/{path}` and returns the body of a 2xx.
    async fn post(&self, path: &str, body: &Value) -> Result<Vec<u8>, GeneratorError> {
        let url = format!("{}/{path}", self.base_url);
        let response = self
            .client
            .post(url)
            .timeout(self.timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let (status, bytes) = read_body(response, MAX_RESPONSE_BYTES, MAX_ERROR_BODY_BYTES)
            .await
            .map_err(|e| match e {
                ReadError::Transport(e) => self.transport_error(&e),
                ReadError::TooLarge => GeneratorError::InvalidResponse(format!(
                    "the answer is larger than {MAX_RESPONSE_BYTES} bytes"
                )),
            })?;
        if !status.is_success() {
            return Err(GeneratorError::Status {
                status: status.as_u16(),
                detail: error_detail(&bytes),
            });
        }
        Ok(bytes)
    }

    fn transport_error(&self, error: &reqwest::Error) -> GeneratorError {
        if error.is_timeout() {
            GeneratorError::Timeout(self.timeout)
        } else if error.is_builder() {
            GeneratorError::Setup(describe(error))
        } else {
            // Connect, reset, truncated body: all worth another try.
            GeneratorError::Connection(describe(error))
        }
    }
}

impl ImageGenerator for A1111Generator {
    fn generate<'a>(
        &'a self,
        request: &'a GenerationRequest,
        progress: &'a ProgressReporter,
    ) -> BoxFuture<'a, Result<GeneratedImages, GeneratorError>> {
        self.run(request, progress).boxed()
    }

    fn name(&self) -> &'static str {
        self.name
    }
}

enum ReadError {
    Transport(reqwest::Error),
    TooLarge,
}

/// The status and body: a 2xx body up to `max_ok` bytes (more is an error),
/// the first `max_error` bytes or so of any other (enough to say what went
/// wrong; the rest is not worth waiting for).
async fn read_body(
    mut response: reqwest::Response,
    max_ok: usize,
    max_error: usize,
) -> Result<(reqwest::StatusCode, Vec<u8>), ReadError> {
    let status = response.status();
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Transport)? {
        if !status.is_success() && bytes.len() + chunk.len() > max_error {
            break;
        }
        if bytes.len() + chunk.len() > max_ok {
            return Err(ReadError::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok((status, bytes))
}

/// The size of a source image, or the permanent error for one that is not a PNG.
fn source_dimensions(init: &[u8]) -> Result<(u32, u32), GeneratorError> {
    png_dimensions(init).map_err(|e| {
        GeneratorError::InvalidRequest(format!("the source image is not a valid PNG: {e}"))
    })
}

/// A1111's info with our account of the model added (kept beside it when the
/// info is not an object).
fn with_model(info: Value, model: Value) -> Value {
    match info {
        Value::Object(mut map) => {
            map.insert("model".into(), model);
            Value::Object(map)
        }
        Value::Null => json!({ "model": model }),
        other => json!({ "info": other, "model": model }),
    }
}

#[derive(Deserialize)]
struct ImagesBody {
    images: Vec<String>,
    #[serde(default)]
    info: Value,
}

#[derive(Deserialize)]
struct ExtrasBody {
    image: String,
    #[serde(default)]
    html_info: Value,
}

/// txt2img/img2img: `{images: [base64 PNG...], parameters, info: "<JSON>"}`.
fn images_response(body: &[u8], batch_size: u32) -> Result<(Vec<Vec<u8>>, Value), GeneratorError> {
    let parsed: ImagesBody = serde_json::from_slice(body)
        .map_err(|e| GeneratorError::InvalidResponse(format!("not the expected JSON: {e}")))?;
    let info = parse_info(parsed.info);
    // Extensions may put extra pictures (a grid first, ControlNet maps last);
    // A1111 says where the generated ones start.
    let first = info
        .get("index_of_first_image")
        .and_then(Value::as_u64)
        .unwrap_or(0) as usize;
    let wanted = batch_size as usize;
    let available = parsed.images.len().saturating_sub(first);
    if available < wanted {
        return Err(GeneratorError::InvalidResponse(format!(
            "asked for {wanted} images, got {available}"
        )));
    }
    let images = parsed
        .images
        .iter()
        .skip(first)
        .take(wanted)
        .enumerate()
        .map(|(i, encoded)| decode_image_field(encoded, i))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((images, info))
}

/// extra-single-image: `{image: base64 PNG, html_info}`.
fn extras_response(body: &[u8], factor: f64) -> Result<(Vec<Vec<u8>>, Value), GeneratorError> {
    let parsed: ExtrasBody = serde_json::from_slice(body)
        .map_err(|e| GeneratorError::InvalidResponse(format!("not the expected JSON: {e}")))?;
    let image = decode_image_field(&parsed.image, 0)?;
    let info = json!({
        "upscaler_1": UPSCALER,
        "upscaling_resize": factor,
        "html_info": parsed.html_info,
    });
    Ok((vec![image], info))
}

#[derive(Deserialize)]
struct RembgBody {
    image: String,
}

/// rembg: `{image: base64 PNG}` (RGBA, the background transparent).
fn rembg_response(body: &[u8]) -> Result<(Vec<Vec<u8>>, Value), GeneratorError> {
    let parsed: RembgBody = serde_json::from_slice(body)
        .map_err(|e| GeneratorError::InvalidResponse(format!("not the expected JSON: {e}")))?;
    let image = decode_image_field(&parsed.image, 0)?;
    Ok((vec![image], json!({ "rembg_model": REMBG_MODEL })))
}

#[derive(Deserialize)]
struct ProgressBody {
    progress: f64,
    #[serde(default)]
    eta_relative: Option<f64>,
    #[serde(default)]
    state: Value,
}

/// `/sdapi/v1/progress`: `{progress: 0..1, eta_relative: seconds | null,
/// state: {job_count, ...}, ...}`; `None` when the server is idle
/// (`job_count` 0: it answers progress 0 then, which says nothing of our job).
fn progress_response(body: &[u8]) -> Result<Option<Progress>, String> {
    let parsed: ProgressBody =
        serde_json::from_slice(body).map_err(|e| format!("not the expected JSON: {e}"))?;
    if parsed.state.get("job_count").and_then(Value::as_i64) == Some(0) {
        return Ok(None);
    }
    Ok(Some(Progress {
        fraction: parsed.progress,
        eta_seconds: parsed.eta_relative,
    }))
}

/// A1111's `info` is a JSON document inside a string. An unparsable one is
/// kept as the string: the images are what matters.
fn parse_info(info: Value) -> Value {
    match info {
        Value::String(text) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
        other => other,
    }
}

/// Base64 (optionally as a `data:image/png;base64,` URL) of a valid PNG.
fn decode_image_field(encoded: &str, index: usize) -> Result<Vec<u8>, GeneratorError> {
    let payload = match encoded.split_once(";base64,") {
        Some((prefix, rest)) if prefix.starts_with("data:") => rest,
        _ => encoded,
    };
    let bytes = BASE64.decode(payload.trim()).map_err(|e| {
        GeneratorError::InvalidResponse(format!("image {index} is not base64: {e}"))
    })?;
    decode_png(&bytes).map_err(|e| {
        GeneratorError::InvalidResponse(format!("image {index} is not a valid PNG: {e}"))
    })?;
    Ok(bytes)
}

/// A short, single-line account of an error body (FastAPI's `detail`, A1111's
/// `error`/`errors`, or the text).
fn error_detail(body: &[u8]) -> String {
    let known = match serde_json::from_slice::<Value>(body) {
        Ok(json) => ["detail", "error", "errors"]
            .iter()
            .filter_map(|key| json.get(key))
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .filter(|s| !s.trim().is_empty())
            .collect::<Vec<_>>()
            .join(": "),
        Err(_) => String::new(),
    };
    let text = if known.is_empty() {
        String::from_utf8_lossy(body).into_owned()
    } else {
        known
    };
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > MAX_ERROR_DETAIL_CHARS {
        let cut: String = text.chars().take(MAX_ERROR_DETAIL_CHARS).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// The error and its causes, without the URL (it may carry credentials).
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    // reqwest names the URL in its message; cut it out rather than trust
    // without_url() to reach into every layer.
    redact_urls(&text)
}

fn redact_urls(text: &str) -> String {
    text.split(' ')
        .map(|word| {
            let bare = word
                .trim_start_matches('(')
                .trim_end_matches([')', ',', ':']);
            if bare.starts_with("http://") || bare.starts_with("https://") {
                word.replace(bare, "<url>")
            } else {
                word.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        image::RgbImage::new(width, height)
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn info_is_parsed_from_its_json_string() {
        let body = json!({
            "images": [BASE64.encode(png(8, 8))],
            "parameters": {},
            "info": "{\"seed\": 42, \"all_seeds\": [42]}",
        });
        let (images, info) = images_response(body.to_string().as_bytes(), 1).unwrap();
        assert_eq!(images, vec![png(8, 8)]);
        assert_eq!(info["seed"], 42);

        let body = json!({"images": [BASE64.encode(png(8, 8))], "info": "not json"});
        let (_, info) = images_response(body.to_string().as_bytes(), 1).unwrap();
        assert_eq!(info, json!("not json"));
    }

    #[test]
    fn a_grid_before_the_images_is_skipped() {
        let body = json!({
            "images": [BASE64.encode(png(16, 8)), BASE64.encode(png(8, 8)), BASE64.encode(png(8, 8))],
            "info": "{\"index_of_first_image\": 1}",
        });
        let (images, _) = images_response(body.to_string().as_bytes(), 2).unwrap();
        assert_eq!(images, vec![png(8, 8), png(8, 8)]);
    }

    #[test]
    fn unusable_answers_are_permanent_errors() {
        for (body, batch) in [
            (json!({"images": ["%%%"]}).to_string(), 1),
            (
                json!({"images": [BASE64.encode(b"GIF89a...")]}).to_string(),
                1,
            ),
            (json!({"images": [BASE64.encode(png(8, 8))]}).to_string(), 2),
            (json!({"images": []}).to_string(), 1),
            (json!({"detail": "hm"}).to_string(), 1),
            ("<html>".to_string(), 1),
        ] {
            let err = images_response(body.as_bytes(), batch).unwrap_err();
            assert!(matches!(err, GeneratorError::InvalidResponse(_)), "{body}");
            assert!(!err.is_transient());
        }
        // A truncated PNG: right signature, missing data.
        let mut truncated = png(64, 64);
        truncated.truncate(truncated.len() / 2);
        let body = json!({"images": [BASE64.encode(truncated)]}).to_string();
        assert!(images_response(body.as_bytes(), 1).is_err());
    }

    #[test]
    fn data_urls_and_missing_padding_are_accepted() {
        let encoded = BASE64.encode(png(4, 4));
        let data_url = format!("data:image/png;base64,{encoded}");
        assert_eq!(decode_image_field(&data_url, 0).unwrap(), png(4, 4));
        let unpadded = encoded.trim_end_matches('=');
        assert_eq!(decode_image_field(unpadded, 0).unwrap(), png(4, 4));
    }

    #[test]
    fn error_details_are_short_single_lines() {
        assert_eq!(
            error_detail(br#"{"detail": "Model not found"}"#),
            "Model not found"
        );
        assert_eq!(
            error_detail(br#"{"error": "OutOfMemoryError", "errors": "CUDA out of\nmemory"}"#),
            "OutOfMemoryError: CUDA out of memory"
        );
        assert_eq!(
            error_detail(br#"{"message": "busy"}"#),
            r#"{"message": "busy"}"#
        );
        let long = "x".repeat(1000);
        assert!(error_detail(long.as_bytes()).chars().count() <= MAX_ERROR_DETAIL_CHARS + 1);
    }

    fn generator(models: &[(&str, &str)]) -> A1111Generator {
        A1111Generator::new(
            "primary",
            "http://127.0.0.1:7860/",
            Duration::from_secs(5),
            reqwest::Client::new(),
        )
        .with_models(
            models
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn a_mapped_model_version_overrides_the_checkpoint_and_others_do_not() {
        let adapter = generator(&[("anime-v3", "animagine-xl-3.1.safetensors [1449e5b0b9]")]);
        let request = GenerationRequest {
            prompt: "a fox".into(),
            style_type: "anime".into(),
            model_version: Some("anime-v3".into()),
            ..GenerationRequest::default()
        };
        let (body, model) = adapter.generation_body(&request);
        assert_eq!(
            body["override_settings"],
            json!({"sd_model_checkpoint": "animagine-xl-3.1.safetensors [1449e5b0b9]"})
        );
        assert_eq!(body["override_settings_restore_afterwards"], true);
        assert_eq!(
            model,
            json!({"requested": "anime-v3", "checkpoint": "animagine-xl-3.1.safetensors [1449e5b0b9]"})
        );
        // The prompt is the composed one.
        assert_eq!(body["prompt"], compose(&request).prompt);
        assert_eq!(body["negative_prompt"], compose(&request).negative_prompt);

        for version in [Some("v9"), Some("ANIME-V3"), None] {
            let request = GenerationRequest {
                model_version: version.map(str::to_string),
                ..request.clone()
            };
            let (body, model) = adapter.generation_body(&request);
            assert!(body.get("override_settings").is_none(), "{version:?}");
            assert!(
                body.get("override_settings_restore_afterwards").is_none(),
                "{version:?}"
            );
            assert_eq!(model, json!({"requested": version, "checkpoint": null}));
        }
    }

    #[test]
    fn the_model_account_joins_whatever_info_the_server_gave() {
        let model = json!({"requested": "v1", "checkpoint": null});
        assert_eq!(
            with_model(json!({"seed": 1}), model.clone()),
            json!({"seed": 1, "model": model})
        );
        assert_eq!(
            with_model(Value::Null, model.clone()),
            json!({"model": model})
        );
        assert_eq!(
            with_model(json!("not json"), model.clone()),
            json!({"info": "not json", "model": model})
        );
    }

    #[test]
    fn rembg_answers_must_be_pngs() {
        let body = json!({"image": BASE64.encode(png(8, 8))}).to_string();
        let (images, info) = rembg_response(body.as_bytes()).unwrap();
        assert_eq!(images, vec![png(8, 8)]);
        assert_eq!(info["rembg_model"], REMBG_MODEL);
        for body in [
            json!({"image": BASE64.encode(b"\xff\xd8\xff a JPEG")}).to_string(),
            json!({"image": null}).to_string(),
            "null".to_string(),
            json!({"images": [BASE64.encode(png(8, 8))]}).to_string(),
        ] {
            let err = rembg_response(body.as_bytes()).unwrap_err();
            assert!(matches!(err, GeneratorError::InvalidResponse(_)), "{body}");
        }
    }

    #[test]
    fn progress_answers_are_read_leniently_and_idle_says_nothing() {
        let read = |body: Value| progress_response(body.to_string().as_bytes());
        assert_eq!(
            read(json!({
                "progress": 0.4,
                "eta_relative": 6.5,
                "state": {"job_count": 1, "sampling_step": 8, "sampling_steps": 20},
                "current_image": null,
                "textinfo": null,
            })),
            Ok(Some(Progress {
                fraction: 0.4,
                eta_seconds: Some(6.5)
            }))
        );
        // Before the first step A1111 has no estimate.
        assert_eq!(
            read(json!({"progress": 0.0, "eta_relative": null, "state": {"job_count": 1}})),
            Ok(Some(Progress {
                fraction: 0.0,
                eta_seconds: None
            }))
        );
        // Servers that say less (no state) are believed.
        assert_eq!(
            read(json!({"progress": 0.9})),
            Ok(Some(Progress {
                fraction: 0.9,
                eta_seconds: None
            }))
        );
        // Idle: progress 0, which says nothing of our job.
        assert_eq!(
            read(json!({"progress": 0, "eta_relative": 0, "state": {"job_count": 0}})),
            Ok(None)
        );
        assert!(read(json!({"eta_relative": 3})).is_err());
        assert!(read(json!({"progress": "half"})).is_err());
        assert!(progress_response(b"<html>").is_err());
    }

    #[test]
    fn urls_are_cut_out_of_error_messages() {
        assert_eq!(
            redact_urls(
                "error sending request for url (http://user:secret@gpu:7860/sdapi/v1/txt2img): refused"
            ),
            "error sending request for url (<url>): refused"
        );
    }
}
