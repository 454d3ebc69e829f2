//! Image generator port: turns a generation request into PNG images.
//!
//! Adapters, chosen by configuration ([`build_chain`]), never by `cfg(test)`:
//!
//! - [`A1111Generator`]: an HTTP server speaking the AUTOMATIC1111 web-UI API
//!   (`GENERATOR_PRIMARY_URL`, `GENERATOR_SECONDARY_URL`), which receives the
//!   prompt [`prompt::compose`] makes of the character, and the checkpoint
//!   `GENERATOR_MODELS` maps its `model_version` to;
//! - [`ProceduralGenerator`]: the built-in renderer, always last. It draws a
//!   deterministic abstract "character card" from prompt, seed and style. It is
//!   an offline fallback and says so (`"procedural": true` in its info), it
//!   never passes for AI output.
//!
//! [`GeneratorChain`] tries them in order and records who served and who
//! failed; [`thumbnail`] makes the gallery's small images.
//!
//! **Progress.** The caller hands [`ImageGenerator::generate`] a
//! [`ProgressReporter`]; providers report a [`Progress`] through it while they
//! work (A1111 from its `/sdapi/v1/progress`, the fallback once, when done),
//! and whoever holds the receiver of [`ProgressReporter::channel`] reads the
//! latest one. [`ProgressReporter::none`] reports nowhere (and spares A1111
//! the polling).

pub mod a1111;
pub mod chain;
pub mod procedural;
pub mod prompt;
pub mod thumbnail;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;
use tokio::sync::watch;

use crate::kernel::config::GeneratorConfig;

pub use a1111::A1111Generator;
pub use chain::{ChainError, ChainOutcome, GeneratorChain, ProviderFailure};
pub use procedural::ProceduralGenerator;
pub use prompt::{ComposedPrompt, compose};
pub use thumbnail::{
    THUMBNAIL_CONTENT_TYPE, THUMBNAIL_EXTENSION, THUMBNAIL_MAX_SIDE, ThumbnailError, thumbnail,
};

/// Largest width or height a request may ask for.
pub const MAX_SIDE: u32 = 4096;
/// Largest side of any image we produce or accept (an upscaled image).
pub const MAX_OUTPUT_SIDE: u32 = 8192;
/// Most images one request may produce.
pub const MAX_BATCH_SIZE: u32 = 16;
/// AUTOMATIC1111's range for `upscaling_resize`.
pub const UPSCALE_FACTOR_RANGE: std::ops::RangeInclusive<f64> = 1.0..=8.0;

use crate::kernel::vocabulary::JobType;

/// One generation, as the worker hands it to a provider. The dispatcher has
/// already validated and capped the user's parameters; [`Self::validate`] only
/// guards the providers against values that would exhaust memory.
#[derive(Clone, PartialEq)]
pub struct GenerationRequest {
    pub job_type: JobType,
    /// The character's prompt, as the user wrote it. A1111 receives it
    /// first in the prompt [`prompt::compose`] makes of this request.
    pub prompt: String,
    pub negative_prompt: String,
    /// One of the character style types (`anime`, `cyberpunk`, ...); picks
    /// the procedural renderer's palette and, for A1111, a short style phrase
    /// (and a few negative terms) in the composed prompt.
    pub style_type: String,
    /// The character's free-text art style (`watercolor`), added to A1111's
    /// prompt.
    pub art_style: Option<String>,
    /// The character's mood (`melancholic`), added as "`melancholic mood`".
    pub mood: Option<String>,
    /// The character's colours as `#rrggbb` or `#rgb`; A1111's prompt names
    /// them ("`blue and orange color palette`").
    pub color_palette: Vec<String>,
    /// The character's tags, each added to A1111's prompt.
    pub tags: Vec<String>,
    /// The character's `model_version` (`v1.0`): A1111 switches to the
    /// checkpoint `GENERATOR_MODELS` maps it to, or keeps its loaded model
    /// when it is unmapped or absent.
    pub model_version: Option<String>,
    pub steps: u32,
    pub cfg_scale: f64,
    /// An AUTOMATIC1111 sampler name (`Euler a`, `DPM++ 2M Karras`, ...).
    pub sampler: String,
    /// Always concrete: A1111 reads -1 as "random", and a retried job must
    /// render the same picture, so the caller picks the seed.
    pub seed: i64,
    pub width: u32,
    pub height: u32,
    pub batch_size: u32,
    /// The source image (PNG bytes) for style transfer, variation, upscale
    /// and background removal.
    pub init_image: Option<Vec<u8>>,
    /// img2img: how much of the source is repainted, 0.0..=1.0.
    pub denoising_strength: f64,
    /// upscale: the scale factor, 1.0..=8.0.
    pub upscale_factor: f64,
}

impl Default for GenerationRequest {
    fn default() -> Self {
        Self {
            job_type: JobType::CharacterGeneration,
            prompt: String::new(),
            negative_prompt: String::new(),
            style_type: "artistic".into(),
            art_style: None,
            mood: None,
            color_palette: Vec::new(),
            tags: Vec::new(),
            model_version: None,
            steps: 20,
            cfg_scale: 7.0,
            sampler: "Euler a".into(),
            seed: 0,
            width: 512,
            height: 512,
            batch_size: 1,
            init_image: None,
            denoising_strength: 0.75,
            upscale_factor: 2.0,
        }
    }
}

// By hand, so that logging a request prints the size of the source image, not its bytes.
impl fmt::Debug for GenerationRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenerationRequest")
            .field("job_type", &self.job_type)
            .field("prompt", &self.prompt)
            .field("negative_prompt", &self.negative_prompt)
            .field("style_type", &self.style_type)
            .field("art_style", &self.art_style)
            .field("mood", &self.mood)
            .field("color_palette", &self.color_palette)
            .field("tags", &self.tags)
            .field("model_version", &self.model_version)
            .field("steps", &self.steps)
            .field("cfg_scale", &self.cfg_scale)
            .field("sampler", &self.sampler)
            .field("seed", &self.seed)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("batch_size", &self.batch_size)
            .field(
                "init_image",
                &self
                    .init_image
                    .as_ref()
                    .map(|b| format!("{} bytes", b.len())),
            )
            .field("denoising_strength", &self.denoising_strength)
            .field("upscale_factor", &self.upscale_factor)
            .finish()
    }
}

impl GenerationRequest {
    /// Refuses sizes, batches and factors no provider should be asked to
    /// allocate for (a permanent error).
    pub fn validate(&self) -> Result<(), GeneratorError> {
        let invalid = |m: String| Err(GeneratorError::InvalidRequest(m));
        if !(1..=MAX_SIDE).contains(&self.width) || !(1..=MAX_SIDE).contains(&self.height) {
            return invalid(format!(
                "{}x{} is outside 1..={MAX_SIDE} per side",
                self.width, self.height
            ));
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return invalid(format!(
                "batch_size {} is outside 1..={MAX_BATCH_SIZE}",
                self.batch_size
            ));
        }
        if !(0.0..=1.0).contains(&self.denoising_strength) {
            return invalid(format!(
                "denoising_strength {} is outside 0..=1",
                self.denoising_strength
            ));
        }
        if !UPSCALE_FACTOR_RANGE.contains(&self.upscale_factor) {
            return invalid(format!(
                "upscale factor {} is outside 1..=8",
                self.upscale_factor
            ));
        }
        if !self.cfg_scale.is_finite() {
            return invalid("cfg_scale is not a number".into());
        }
        Ok(())
    }

    /// The source image, or the permanent error a job that needs one gets.
    pub fn require_init_image(&self) -> Result<&[u8], GeneratorError> {
        self.init_image.as_deref().ok_or_else(|| {
            GeneratorError::InvalidRequest(format!("{} needs a source image", self.job_type))
        })
    }
}

/// What a provider made.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedImages {
    /// PNG files, each checked to decode.
    pub images: Vec<Vec<u8>>,
    /// The provider that made them: `primary`, `secondary` or `fallback`
    /// (`generation_jobs.generation_provider`).
    pub provider: String,
    /// The provider's own account of the generation (A1111's parsed `info`;
    /// the fallback's `{"provider": "fallback", "procedural": true, ...}`).
    pub info: serde_json::Value,
    /// Time spent in the provider's call, where a GPU did the work (A1111 does
    /// not report GPU time, so this is the wall time of its HTTP call).
    pub gpu_time_ms: Option<u64>,
}

/// Why a provider could not serve. [`Self::is_transient`] tells the worker
/// whether the same request may succeed later.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GeneratorError {
    #[error("timed out after {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("connection failed: {0}")]
    Connection(String),
    #[error("HTTP {status}: {detail}")]
    Status { status: u16, detail: String },
    #[error("invalid response: {0}")]
    InvalidResponse(String),
    #[error("{0} is not supported by this provider")]
    Unsupported(JobType),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("rendering failed: {0}")]
    Render(String),
    #[error("HTTP client setup failed: {0}")]
    Setup(String),
}

impl GeneratorError {
    /// Timeouts, broken connections, 5xx, 408 and 429 may pass; everything
    /// else (4xx, an answer we cannot use, an unsupported job) will not.
    pub fn is_transient(&self) -> bool {
        match self {
            GeneratorError::Timeout(_) | GeneratorError::Connection(_) => true,
            GeneratorError::Status { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
            GeneratorError::InvalidResponse(_)
            | GeneratorError::Unsupported(_)
            | GeneratorError::InvalidRequest(_)
            | GeneratorError::Render(_)
            | GeneratorError::Setup(_) => false,
        }
    }

    /// A stable name for metadata and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            GeneratorError::Timeout(_) => "timeout",
            GeneratorError::Connection(_) => "connection",
            GeneratorError::Status { .. } => "http_status",
            GeneratorError::InvalidResponse(_) => "invalid_response",
            GeneratorError::Unsupported(_) => "unsupported",
            GeneratorError::InvalidRequest(_) => "invalid_request",
            GeneratorError::Render(_) => "render",
            GeneratorError::Setup(_) => "setup",
        }
    }
}

/// How far a generation is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Progress {
    /// 0.0 (started) to 1.0 (done).
    pub fraction: f64,
    /// The provider's estimate of the seconds left, when it has one.
    pub eta_seconds: Option<f64>,
}

impl Progress {
    /// A provider that starts over (the chain moved to the next one).
    pub const START: Progress = Progress {
        fraction: 0.0,
        eta_seconds: None,
    };
    /// A provider that has served.
    pub const DONE: Progress = Progress {
        fraction: 1.0,
        eta_seconds: Some(0.0),
    };
}

/// Where a provider reports its [`Progress`]: the sending half of a
/// `tokio::sync::watch` channel (the receiver always holds the latest report),
/// or nowhere ([`Self::none`], the default). Cloning shares the channel.
#[derive(Clone, Default)]
pub struct ProgressReporter(Option<Arc<watch::Sender<Option<Progress>>>>);

impl ProgressReporter {
    /// Reports nowhere.
    pub fn none() -> Self {
        Self(None)
    }

    /// A reporter and the receiver that sees its reports (`None` until the
    /// first).
    pub fn channel() -> (Self, watch::Receiver<Option<Progress>>) {
        let (sender, receiver) = watch::channel(None);
        (Self(Some(Arc::new(sender))), receiver)
    }

    /// Publishes `progress`, its fraction clamped to 0..=1; a NaN fraction is
    /// ignored, and an estimate that is not a finite, non-negative number of
    /// seconds becomes `None`. Repeating the latest report wakes no receiver.
    pub fn report(&self, progress: Progress) {
        let Some(sender) = &self.0 else { return };
        if progress.fraction.is_nan() {
            return;
        }
        let progress = Progress {
            fraction: progress.fraction.clamp(0.0, 1.0),
            eta_seconds: progress
                .eta_seconds
                .filter(|eta| eta.is_finite() && *eta >= 0.0),
        };
        sender.send_if_modified(|latest| {
            if *latest == Some(progress) {
                false
            } else {
                *latest = Some(progress);
                true
            }
        });
    }

    /// Whether anyone can see a report: a channel whose receivers are not all
    /// dropped. Providers skip work done only to report (A1111's polling)
    /// when nobody listens.
    pub fn is_listened(&self) -> bool {
        self.0.as_ref().is_some_and(|sender| !sender.is_closed())
    }
}

impl fmt::Debug for ProgressReporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("ProgressReporter(none)"),
            Some(sender) => write!(f, "ProgressReporter({:?})", *sender.borrow()),
        }
    }
}

/// A provider of images.
pub trait ImageGenerator: Send + Sync {
    /// Makes the images, reporting through `progress` while it works (a
    /// provider that cannot tell how far it is reports nothing until done).
    fn generate<'a>(
        &'a self,
        request: &'a GenerationRequest,
        progress: &'a ProgressReporter,
    ) -> BoxFuture<'a, Result<GeneratedImages, GeneratorError>>;

    /// `primary`, `secondary` or `fallback`.
    fn name(&self) -> &'static str;
}

/// The configured A1111 servers in order (primary, then secondary), each with
/// the model allow-list and the progress interval, then the procedural
/// fallback. Fails only if the HTTP client cannot be built.
pub fn build_chain(config: &GeneratorConfig) -> Result<GeneratorChain, GeneratorError> {
    let mut providers: Vec<Arc<dyn ImageGenerator>> = Vec::new();
    let servers = [
        ("primary", config.primary_url.as_deref()),
        ("secondary", config.secondary_url.as_deref()),
    ];
    if servers.iter().any(|(_, url)| url.is_some()) {
        let client = a1111::client()?;
        for (name, url) in servers {
            if let Some(url) = url {
                providers.push(Arc::new(
                    A1111Generator::new(name, url, config.timeout, client.clone())
                        .with_models(config.models.clone())
                        .with_progress_interval(config.progress_interval),
                ));
            }
        }
    }
    providers.push(Arc::new(ProceduralGenerator));
    Ok(GeneratorChain::new(providers))
}

/// The size of an image `width`×`height` upscaled by `factor` (rounded, at
/// least 1), or the permanent error if a side would exceed [`MAX_OUTPUT_SIDE`].
pub fn upscaled_size(width: u32, height: u32, factor: f64) -> Result<(u32, u32), GeneratorError> {
    let scale = |side: u32| (f64::from(side) * factor).round().max(1.0);
    let (w, h) = (scale(width), scale(height));
    let max = f64::from(MAX_OUTPUT_SIDE);
    if !(w <= max && h <= max) {
        return Err(GeneratorError::InvalidRequest(format!(
            "upscaling {width}x{height} by {factor} exceeds {MAX_OUTPUT_SIDE} px per side"
        )));
    }
    Ok((w as u32, h as u32))
}

/// A PNG's width and height, from its header.
pub(crate) fn png_dimensions(bytes: &[u8]) -> Result<(u32, u32), String> {
    image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::Png)
        .into_dimensions()
        .map_err(|e| e.to_string())
}

/// Decodes a PNG completely (a truncated or corrupt file fails), refusing
/// anything larger than [`MAX_OUTPUT_SIDE`] per side before allocating.
pub(crate) fn decode_png(bytes: &[u8]) -> Result<image::DynamicImage, String> {
    let mut reader =
        image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::Png);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_OUTPUT_SIDE);
    limits.max_image_height = Some(MAX_OUTPUT_SIDE);
    reader.limits(limits);
    reader.decode().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors_are_the_ones_a_retry_can_fix() {
        let status = |status| GeneratorError::Status {
            status,
            detail: String::new(),
        };
        assert!(GeneratorError::Timeout(Duration::from_secs(1)).is_transient());
        assert!(GeneratorError::Connection("reset".into()).is_transient());
        for s in [500, 502, 503, 504, 408, 429] {
            assert!(status(s).is_transient(), "{s}");
        }
        for s in [400, 401, 404, 422] {
            assert!(!status(s).is_transient(), "{s}");
        }
        assert!(!GeneratorError::InvalidResponse("x".into()).is_transient());
        assert!(!GeneratorError::Unsupported(JobType::BackgroundRemoval).is_transient());
        assert!(!GeneratorError::InvalidRequest("x".into()).is_transient());
    }

    #[test]
    fn validation_refuses_what_would_exhaust_memory() {
        let ok = GenerationRequest::default();
        assert!(ok.validate().is_ok());
        for bad in [
            GenerationRequest {
                width: 0,
                ..ok.clone()
            },
            GenerationRequest {
                height: MAX_SIDE + 1,
                ..ok.clone()
            },
            GenerationRequest {
                batch_size: 0,
                ..ok.clone()
            },
            GenerationRequest {
                batch_size: MAX_BATCH_SIZE + 1,
                ..ok.clone()
            },
            GenerationRequest {
                upscale_factor: 9.0,
                ..ok.clone()
            },
            GenerationRequest {
                upscale_factor: f64::NAN,
                ..ok.clone()
            },
            GenerationRequest {
                denoising_strength: 1.5,
                ..ok.clone()
            },
        ] {
            let err = bad.validate().unwrap_err();
            assert!(!err.is_transient(), "{bad:?}");
        }
    }

    #[test]
    fn debug_output_shows_the_source_image_size_not_its_bytes() {
        let request = GenerationRequest {
            init_image: Some(vec![7; 1234]),
            ..Default::default()
        };
        let text = format!("{request:?}");
        assert!(text.contains("1234 bytes"), "{text}");
        assert!(!text.contains("7, 7"), "{text}");
    }

    #[test]
    fn debug_output_lists_the_characters_attributes() {
        let request = GenerationRequest {
            art_style: Some("ink wash".into()),
            mood: Some("serene".into()),
            color_palette: vec!["#1e90ff".into()],
            tags: vec!["mist".into()],
            model_version: Some("v1.0".into()),
            ..Default::default()
        };
        let text = format!("{request:?}");
        for part in ["ink wash", "serene", "#1e90ff", "mist", "v1.0"] {
            assert!(text.contains(part), "{part}: {text}");
        }
        let empty = GenerationRequest::default();
        assert!(empty.color_palette.is_empty() && empty.tags.is_empty());
        assert_eq!(empty.model_version, None);
    }

    #[test]
    fn progress_reports_are_clamped_and_nan_is_ignored() {
        let (reporter, mut receiver) = ProgressReporter::channel();
        assert!(reporter.is_listened());
        assert_eq!(*receiver.borrow(), None);

        let report = |fraction: f64, eta_seconds: Option<f64>| {
            reporter.report(Progress {
                fraction,
                eta_seconds,
            });
        };
        report(0.25, Some(12.5));
        assert!(receiver.has_changed().unwrap());
        assert_eq!(
            *receiver.borrow_and_update(),
            Some(Progress {
                fraction: 0.25,
                eta_seconds: Some(12.5)
            })
        );
        report(1.7, Some(-3.0));
        assert_eq!(
            *receiver.borrow_and_update(),
            Some(Progress {
                fraction: 1.0,
                eta_seconds: None
            })
        );
        report(-0.5, Some(f64::INFINITY));
        assert_eq!(
            *receiver.borrow_and_update(),
            Some(Progress {
                fraction: 0.0,
                eta_seconds: None
            })
        );
        report(f64::NAN, Some(1.0));
        assert!(!receiver.has_changed().unwrap(), "NaN is ignored");
        report(0.0, Some(f64::NAN));
        assert!(!receiver.has_changed().unwrap(), "the same report again");
        report(0.5, None);
        assert!(receiver.has_changed().unwrap());

        // Clones share the channel.
        reporter.clone().report(Progress::DONE);
        assert_eq!(*receiver.borrow(), Some(Progress::DONE));
        assert!(format!("{reporter:?}").contains("1.0"));

        drop(receiver);
        assert!(!reporter.is_listened());
        reporter.report(Progress::START); // nobody listens: no error

        let none = ProgressReporter::none();
        assert!(!none.is_listened());
        none.report(Progress::DONE);
        assert!(!ProgressReporter::default().is_listened());
        assert_eq!(
            serde_json::to_value(Progress {
                fraction: 0.5,
                eta_seconds: None
            })
            .unwrap(),
            serde_json::json!({"fraction": 0.5, "eta_seconds": null})
        );
    }

    #[test]
    fn the_chain_is_the_configured_servers_then_the_fallback() {
        let names = |config: &GeneratorConfig| build_chain(config).unwrap().provider_names();
        assert_eq!(names(&GeneratorConfig::default()), vec!["fallback"]);
        let both = GeneratorConfig {
            primary_url: Some("http://127.0.0.1:7860".into()),
            secondary_url: Some("http://127.0.0.1:7861".into()),
            ..GeneratorConfig::default()
        };
        assert_eq!(names(&both), vec!["primary", "secondary", "fallback"]);
        let secondary_only = GeneratorConfig {
            secondary_url: Some("http://127.0.0.1:7861".into()),
            ..GeneratorConfig::default()
        };
        assert_eq!(names(&secondary_only), vec!["secondary", "fallback"]);
    }

    #[tokio::test]
    async fn the_fallback_reports_done_when_it_has_rendered() {
        let (reporter, receiver) = ProgressReporter::channel();
        let out = ProceduralGenerator
            .generate(&GenerationRequest::default(), &reporter)
            .await
            .unwrap();
        assert_eq!(out.provider, "fallback");
        assert_eq!(*receiver.borrow(), Some(Progress::DONE));

        // A request it refuses reports nothing.
        let (reporter, receiver) = ProgressReporter::channel();
        let bad = GenerationRequest {
            width: 0,
            ..Default::default()
        };
        assert!(ProceduralGenerator.generate(&bad, &reporter).await.is_err());
        assert_eq!(*receiver.borrow(), None);
    }
}
