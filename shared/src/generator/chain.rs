//! Primary → secondary → fallback: the first provider that answers serves.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::{GeneratedImages, GenerationRequest, GeneratorError, ImageGenerator, ProgressReporter};

/// A provider that failed before another served (or before all failed), as
/// recorded in `processing_metadata` / `error_details`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProviderFailure {
    pub provider: String,
    /// [`GeneratorError::kind`].
    pub kind: String,
    pub transient: bool,
    pub message: String,
    pub elapsed_ms: u64,
}

impl ProviderFailure {
    fn new(provider: &str, error: &GeneratorError, elapsed_ms: u64) -> Self {
        Self {
            provider: provider.to_string(),
            kind: error.kind().to_string(),
            transient: error.is_transient(),
            message: error.to_string(),
            elapsed_ms,
        }
    }
}

/// The images, who made them, and who failed first.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainOutcome {
    pub images: GeneratedImages,
    pub failures: Vec<ProviderFailure>,
}

impl ChainOutcome {
    /// The provider that served: `primary`, `secondary` or `fallback`.
    pub fn provider(&self) -> &str {
        &self.images.provider
    }

    /// What the worker keeps in `processing_metadata`.
    pub fn metadata(&self) -> serde_json::Value {
        serde_json::json!({
            "provider": self.images.provider,
            "provider_info": self.images.info,
            "failed_providers": self.failures,
        })
    }
}

/// Every provider failed; one entry per provider, in the order tried.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainError {
    pub failures: Vec<ProviderFailure>,
}

impl ChainError {
    /// Worth retrying the job if any provider failed for a passing reason: the
    /// next attempt starts from the primary again.
    pub fn is_transient(&self) -> bool {
        self.failures.iter().any(|f| f.transient)
    }

    /// What the worker keeps in `error_details`.
    pub fn details(&self) -> serde_json::Value {
        serde_json::json!({ "failed_providers": self.failures })
    }
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.failures.is_empty() {
            return f.write_str("no image provider is configured");
        }
        f.write_str("every image provider failed: ")?;
        for (i, failure) in self.failures.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", failure.provider, failure.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ChainError {}

/// The providers in the order they are tried; [`super::build_chain`] builds
/// it from configuration.
#[derive(Clone)]
pub struct GeneratorChain {
    pub providers: Vec<Arc<dyn ImageGenerator>>,
}

impl GeneratorChain {
    pub fn new(providers: Vec<Arc<dyn ImageGenerator>>) -> Self {
        Self { providers }
    }

    pub fn provider_names(&self) -> Vec<&'static str> {
        self.providers.iter().map(|p| p.name()).collect()
    }

    /// Asks each provider in turn, moving on after any error, transient or
    /// permanent: a server that cannot do this job (or answers garbage) is no
    /// reason to fail a job the next provider can do.
    pub async fn generate(
        &self,
        request: &GenerationRequest,
        progress: &ProgressReporter,
    ) -> Result<ChainOutcome, ChainError> {
        let mut failures = Vec::new();
        for provider in &self.providers {
            let started = Instant::now();
            match provider.generate(request, progress).await {
                Ok(images) => {
                    tracing::info!(
                        provider = provider.name(),
                        images = images.images.len(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        failed_before = failures.len(),
                        "image provider served"
                    );
                    return Ok(ChainOutcome { images, failures });
                }
                Err(error) => {
                    let elapsed_ms = started.elapsed().as_millis() as u64;
                    tracing::warn!(
                        provider = provider.name(),
                        kind = error.kind(),
                        transient = error.is_transient(),
                        elapsed_ms,
                        %error,
                        "image provider failed; trying the next"
                    );
                    failures.push(ProviderFailure::new(provider.name(), &error, elapsed_ms));
                }
            }
        }
        Err(ChainError { failures })
    }
}
