//! What a job renders: [`GenerationInput`], resolved once by dispatch from the
//! character, the request and the source image, stored as the job's
//! `input_parameters`, and read back by the worker. Dispatch and the worker
//! share this one type, so a default is chosen in exactly one place (here and
//! in dispatch), never again by the worker.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::kernel::vocabulary::JobType;
use crate::ports::generator::GenerationRequest;

/// The sampler a job renders with when neither the request nor the character names one.
pub const DEFAULT_SAMPLER: &str = "DPM++ 2M Karras";
/// The CFG scale a job renders with when neither the request nor the character sets one.
pub const DEFAULT_CFG_SCALE: f64 = 7.5;

/// The character's look and the render's parameters, as the job will use
/// them. A variant job's look already has the requested changes applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationInput {
    pub prompt: String,
    #[serde(default)]
    pub negative_prompt: Option<String>,
    pub style_type: String,
    #[serde(default)]
    pub art_style: Option<String>,
    #[serde(default)]
    pub mood: Option<String>,
    #[serde(default)]
    pub color_palette: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub model_version: Option<String>,
    #[serde(default = "default_sampler")]
    pub sampler: String,
    #[serde(default = "default_cfg_scale")]
    pub cfg_scale: f64,
    /// Always concrete: a retried job renders the same picture.
    pub seed: i64,
    /// The size of the output: asked for by txt2img, the source's for jobs
    /// that start from an image, the source's × the factor for upscales.
    pub width: i64,
    pub height: i64,
    pub steps: i64,
    pub batch_size: i64,
    pub denoising_strength: f64,
    pub upscale_factor: i64,
    /// The image the job starts from (style transfer, variation, upscale,
    /// background removal).
    #[serde(default)]
    pub source: Option<SourceImage>,
    /// Set when the job creates a variant character.
    #[serde(default)]
    pub variant: Option<VariantPlan>,
}

/// A stored image a job starts from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceImage {
    /// Its `character_images` row.
    pub image_id: String,
    /// Its storage key: for the worker only, never shown to clients
    /// ([`crate::jobs::Job::present`] removes it).
    pub key: String,
    #[serde(default)]
    pub width: Option<i64>,
    #[serde(default)]
    pub height: Option<i64>,
}

/// The character a variant job creates when it completes: the source
/// character's fields with the requested changes (its look is the job's
/// [`GenerationInput`]). The id is chosen at dispatch, so the images are
/// stored under the variant from the start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantPlan {
    pub character_id: String,
    /// `variation`, `style_transfer`, `pose_change`, `outfit_change` or
    /// `expression_change`.
    pub variant_type: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub allow_commercial_use: Option<bool>,
    #[serde(default)]
    pub license_type: Option<String>,
}

fn default_sampler() -> String {
    DEFAULT_SAMPLER.to_string()
}

fn default_cfg_scale() -> f64 {
    DEFAULT_CFG_SCALE
}

/// Keys of `input_parameters` that are ours, never a client's to see.
const PRIVATE_KEYS: [&str; 2] = ["key", "init_image_key"];

impl GenerationInput {
    /// Reads a job's `input_parameters`. Jobs queued before the typed input
    /// (V15) named the source image `init_image_key`; they still render.
    pub fn from_value(value: &Value) -> Result<Self, String> {
        // The first dispatcher wrote `null` for a character without a sampler or
        // cfg_scale: absent and null both mean the default.
        let mut present = value.clone();
        if let Some(object) = present.as_object_mut() {
            object.retain(|_, v| !v.is_null());
        }
        let mut input: Self = serde_json::from_value(present)
            .map_err(|e| format!("the job's input_parameters cannot be read: {e}"))?;
        if input.source.is_none()
            && let Some(key) = value.get("init_image_key").and_then(Value::as_str)
        {
            input.source = Some(SourceImage {
                image_id: String::new(),
                key: key.to_string(),
                width: None,
                height: None,
            });
        }
        Ok(input)
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The character whose images this job adds to: the variant it creates,
    /// else the job's own character.
    pub fn target_character<'a>(&'a self, job_character: Option<&'a str>) -> Option<&'a str> {
        match &self.variant {
            Some(plan) => Some(plan.character_id.as_str()),
            None => job_character,
        }
    }

    /// The provider request, with the source image's bytes if the job has one.
    pub fn to_request(
        &self,
        job_type: JobType,
        init_image: Option<Vec<u8>>,
    ) -> Result<GenerationRequest, String> {
        let side = |value: i64, name: &str| {
            u32::try_from(value).map_err(|_| format!("{name} {value} is out of range"))
        };
        let request = GenerationRequest {
            job_type,
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone().unwrap_or_default(),
            style_type: self.style_type.clone(),
            art_style: self.art_style.clone(),
            mood: self.mood.clone(),
            color_palette: self.color_palette.clone(),
            tags: self.tags.clone(),
            model_version: self.model_version.clone(),
            steps: side(self.steps, "steps")?,
            cfg_scale: self.cfg_scale,
            sampler: self.sampler.clone(),
            seed: self.seed,
            width: side(self.width, "width")?,
            height: side(self.height, "height")?,
            batch_size: side(self.batch_size, "batch_size")?,
            init_image,
            denoising_strength: self.denoising_strength,
            upscale_factor: self.upscale_factor as f64,
        };
        request.validate().map_err(|e| e.to_string())?;
        Ok(request)
    }
}

/// `input_parameters` as clients see them: without storage keys.
pub fn public_view(input: &Value) -> Value {
    let mut shown = input.clone();
    if let Some(object) = shown.as_object_mut() {
        for key in PRIVATE_KEYS {
            object.remove(key);
        }
        if let Some(source) = object.get_mut("source").and_then(Value::as_object_mut) {
            for key in PRIVATE_KEYS {
                source.remove(key);
            }
        }
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input() -> GenerationInput {
        GenerationInput {
            prompt: "an elf".into(),
            negative_prompt: None,
            style_type: "fantasy".into(),
            art_style: Some("watercolor".into()),
            mood: None,
            color_palette: vec!["#112233".into()],
            tags: vec!["elf".into()],
            model_version: Some("v1.0".into()),
            sampler: "Euler a".into(),
            cfg_scale: 7.5,
            seed: 7,
            width: 512,
            height: 384,
            steps: 20,
            batch_size: 1,
            denoising_strength: 0.6,
            upscale_factor: 2,
            source: Some(SourceImage {
                image_id: "img".into(),
                key: "users/u/characters/c/j/image-0.png".into(),
                width: Some(512),
                height: Some(384),
            }),
            variant: None,
        }
    }

    #[test]
    fn round_trips_through_json() {
        let value = input().to_value();
        assert_eq!(GenerationInput::from_value(&value).unwrap(), input());
    }

    #[test]
    fn old_jobs_with_an_init_image_key_still_read() {
        let old = json!({"prompt": "p", "negative_prompt": null, "style_type": "anime", "sampler": null,
            "cfg_scale": null, "seed": 1, "width": 512, "height": 512, "steps": 20, "batch_size": 1,
            "denoising_strength": 0.6, "upscale_factor": 2, "init_image_key": "users/u/x.png"});
        let input = GenerationInput::from_value(&old).unwrap();
        assert_eq!(input.source.unwrap().key, "users/u/x.png");
        assert_eq!(input.sampler, "DPM++ 2M Karras");
        assert_eq!(input.cfg_scale, 7.5);
    }

    #[test]
    fn clients_never_see_storage_keys() {
        let shown = public_view(&input().to_value());
        assert!(shown["source"].get("key").is_none(), "{shown}");
        assert_eq!(shown["source"]["image_id"], "img");
        let old = public_view(&json!({"init_image_key": "users/u/x.png", "seed": 1}));
        assert_eq!(old, json!({"seed": 1}));
    }

    #[test]
    fn the_request_carries_every_rendering_parameter() {
        let request = input()
            .to_request(JobType::StyleTransfer, Some(vec![1, 2]))
            .unwrap();
        assert_eq!((request.width, request.height, request.seed), (512, 384, 7));
        assert_eq!(request.init_image, Some(vec![1, 2]));
        assert_eq!(request.upscale_factor, 2.0);
        assert_eq!(request.art_style.as_deref(), Some("watercolor"));
        assert_eq!(request.color_palette, vec!["#112233".to_string()]);
        assert_eq!(request.tags, vec!["elf".to_string()]);
        assert_eq!(request.model_version.as_deref(), Some("v1.0"));
        let mut bad = input();
        bad.width = -1;
        assert!(bad.to_request(JobType::CharacterGeneration, None).is_err());
    }
}
