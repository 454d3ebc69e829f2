//! An HTTP server speaking the AUTOMATIC1111 web-UI API (`--api`):
//! `txt2img` for new characters, `img2img` for style transfer and variations,
//! `extra-single-image` for upscaling. It has no background removal endpoint,
//! so that job is refused as unsupported and the chain moves on.
//!
//! The server must answer PNGs (its default `samples_format`); anything else is
//! an invalid response. Credentials in the URL (`https://user:pass@host`) are
//! sent as basic auth (A1111's `--api-auth`) and never appear in errors.

use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    GeneratedImages, GenerationRequest, GeneratorError, ImageGenerator, JobType, decode_png,
    png_dimensions, upscaled_size,
};

/// The upscaler A1111 is asked for (bundled with the web UI).
pub const UPSCALER: &str = "R-ESRGAN 4x+";

/// Largest response read: a batch of 16 large PNGs in base64 fits; a server
/// that streams without end does not exhaust the worker's memory.
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// How much of an error answer is read.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

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
}

impl A1111Generator {
    /// `name` is the provider's place in the chain: `primary` or `secondary`.
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
        }
    }

    async fn run(&self, request: &GenerationRequest) -> Result<GeneratedImages, GeneratorError> {
        request.validate()?;
        let started = Instant::now();
        let (images, info) = match request.job_type {
            JobType::CharacterGeneration => {
                let body = self.post("txt2img", &txt2img_body(request)).await?;
                images_response(&body, request.batch_size)?
            }
            JobType::StyleTransfer | JobType::Variation => {
                let init = request.require_init_image()?;
                let mut body = txt2img_body(request);
                body["init_images"] = json!([BASE64.encode(init)]);
                body["denoising_strength"] = json!(request.denoising_strength);
                let body = self.post("img2img", &body).await?;
                images_response(&body, request.batch_size)?
            }
            JobType::Upscale => {
                let init = request.require_init_image()?;
                // Refuse before the GPU works on an answer we would refuse.
                let (w, h) = png_dimensions(init).map_err(|e| {
                    GeneratorError::InvalidRequest(format!(
                        "the source image is not a valid PNG: {e}"
                    ))
                })?;
                upscaled_size(w, h, request.upscale_factor)?;
                let body = json!({
                    "image": BASE64.encode(init),
                    "upscaling_resize": request.upscale_factor,
                    "upscaler_1": UPSCALER,
                });
                let body = self.post("extra-single-image", &body).await?;
                extras_response(&body, request.upscale_factor)?
            }
            JobType::BackgroundRemoval => {
                return Err(GeneratorError::Unsupported(JobType::BackgroundRemoval));
            }
        };
        Ok(GeneratedImages {
            images,
            provider: self.name.to_string(),
            info,
            gpu_time_ms: Some(started.elapsed().as_millis() as u64),
        })
    }

    /// POSTs JSON to `/sdapi/v1/{endpoint}` and returns the body of a 2xx.
    async fn post(&self, endpoint: &str, body: &Value) -> Result<Vec<u8>, GeneratorError> {
        let url = format!("{}/sdapi/v1/{endpoint}", self.base_url);
        let mut response = self
            .client
            .post(url)
            .timeout(self.timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(&e))?
        {
            if !status.is_success() && bytes.len() + chunk.len() > MAX_ERROR_BODY_BYTES {
                // Enough to say what went wrong; the rest is not worth waiting for.
                break;
            }
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(GeneratorError::InvalidResponse(format!(
                    "the answer is larger than {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
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
        _progress: &'a super::ProgressReporter,
    ) -> BoxFuture<'a, Result<GeneratedImages, GeneratorError>> {
        self.run(request).boxed()
    }

    fn name(&self) -> &'static str {
        self.name
    }
}

/// The txt2img parameters, also the base of img2img's.
fn txt2img_body(request: &GenerationRequest) -> Value {
    json!({
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
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
    })
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
