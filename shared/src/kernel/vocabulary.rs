//! Words of the domain that several layers name: what a job asks for
//! ([`JobType`]: the queue's messages, the generators, the prices and the
//! metrics all speak of it), which generator made its images
//! ([`GenerationProvider`]) and the style types a character may have (the
//! prompt composer reads them, the domains validate against them).

crate::text_enum! {
    /// What a job asks for (`generation_jobs.job_type`).
    pub enum JobType {
        CharacterGeneration => "character_generation",
        StyleTransfer => "style_transfer",
        Upscale => "upscale",
        Variation => "variation",
        BackgroundRemoval => "background_removal",
    }
}

impl JobType {
    /// Whether the job starts from one of the character's images (all but a
    /// generation).
    pub fn needs_image(self) -> bool {
        self != JobType::CharacterGeneration
    }

    /// Whether the job makes exactly one image and runs no sampler, so that
    /// neither `batch_size` nor `steps` applies (upscales and background
    /// removal).
    pub fn is_single_pass(self) -> bool {
        matches!(self, JobType::Upscale | JobType::BackgroundRemoval)
    }
}

crate::text_enum! {
    /// Which link of the generator chain made a job's images
    /// (`generation_jobs.generation_provider`, `character_images.generation_provider`):
    /// the primary or secondary image server, or the procedural placeholder.
    pub enum GenerationProvider {
        Primary => "primary",
        Secondary => "secondary",
        Fallback => "fallback",
    }
}

/// The `characters.style_type` values; also the allowed `favorite_art_styles`.
pub const STYLE_TYPES: [&str; 10] = [
    "anime",
    "realistic",
    "cartoon",
    "fantasy",
    "cyberpunk",
    "steampunk",
    "minimalist",
    "comic",
    "portrait",
    "artistic",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_types_round_trip_through_their_names() {
        for t in JobType::ALL {
            assert_eq!(JobType::parse(t.as_str()), Some(t));
            assert_eq!(
                serde_json::to_value(t).unwrap(),
                serde_json::json!(t.as_str())
            );
        }
        assert_eq!(JobType::parse("upscale"), Some(JobType::Upscale));
        assert_eq!(JobType::parse("Upscale"), None);
        // The same names the credit engine prices.
        let names: Vec<&str> = JobType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(names, JobType::NAMES);
        let from_image: Vec<JobType> = JobType::ALL
            .into_iter()
            .filter(|t| t.needs_image())
            .collect();
        assert_eq!(from_image.len(), 4);
        assert!(!from_image.contains(&JobType::CharacterGeneration));
        let single: Vec<JobType> = JobType::ALL
            .into_iter()
            .filter(|t| t.is_single_pass())
            .collect();
        assert_eq!(single, [JobType::Upscale, JobType::BackgroundRemoval]);
    }
}
