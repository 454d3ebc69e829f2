//! Primary → secondary → fallback: the first provider that answers serves.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::{
    GeneratedImages, GenerationRequest, GeneratorError, ImageGenerator, Progress, ProgressReporter,
};

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

    /// [`Self::provider`] as the schema stores it; `None` for a provider
    /// outside the chain's three links (a test double).
    pub fn provider_kind(&self) -> Option<crate::kernel::vocabulary::GenerationProvider> {
        crate::kernel::vocabulary::GenerationProvider::parse(&self.images.provider)
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
    /// reason to fail a job the next provider can do. Each provider reports
    /// its progress through `progress`; moving on to the next reports 0
    /// again (the next starts over).
    pub async fn generate(
        &self,
        request: &GenerationRequest,
        progress: &ProgressReporter,
    ) -> Result<ChainOutcome, ChainError> {
        let mut failures = Vec::new();
        for (index, provider) in self.providers.iter().enumerate() {
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
                    if index + 1 < self.providers.len() {
                        progress.report(Progress::START);
                    }
                }
            }
        }
        Err(ChainError { failures })
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;
    use futures::future::BoxFuture;
    use tokio::sync::watch;

    use super::*;
    use crate::ports::generator::{ProceduralGenerator, Progress};

    /// Reports half-way, then fails.
    struct HalfWayThenFails;

    impl ImageGenerator for HalfWayThenFails {
        fn generate<'a>(
            &'a self,
            _request: &'a GenerationRequest,
            progress: &'a ProgressReporter,
        ) -> BoxFuture<'a, Result<GeneratedImages, GeneratorError>> {
            async move {
                progress.report(Progress {
                    fraction: 0.5,
                    eta_seconds: Some(3.0),
                });
                Err(GeneratorError::Connection("reset".into()))
            }
            .boxed()
        }

        fn name(&self) -> &'static str {
            "primary"
        }
    }

    /// Records the progress it finds when asked, then lets the procedural
    /// renderer serve.
    struct Observer {
        seen: std::sync::Mutex<Option<Option<Progress>>>,
        receiver: watch::Receiver<Option<Progress>>,
    }

    impl ImageGenerator for Observer {
        fn generate<'a>(
            &'a self,
            request: &'a GenerationRequest,
            progress: &'a ProgressReporter,
        ) -> BoxFuture<'a, Result<GeneratedImages, GeneratorError>> {
            async move {
                let now = *self.receiver.borrow();
                *self.seen.lock().unwrap() = Some(now);
                ProceduralGenerator.generate(request, progress).await
            }
            .boxed()
        }

        fn name(&self) -> &'static str {
            "secondary"
        }
    }

    #[tokio::test]
    async fn moving_to_the_next_provider_reports_zero_and_the_last_reports_done() {
        let (reporter, receiver) = ProgressReporter::channel();
        let observer = Arc::new(Observer {
            seen: std::sync::Mutex::new(None),
            receiver: receiver.clone(),
        });
        let chain = GeneratorChain::new(vec![Arc::new(HalfWayThenFails), observer.clone()]);
        let outcome = chain
            .generate(&GenerationRequest::default(), &reporter)
            .await
            .unwrap();
        assert_eq!(outcome.failures.len(), 1);
        assert_eq!(outcome.failures[0].provider, "primary");
        assert_eq!(
            *observer.seen.lock().unwrap(),
            Some(Some(Progress::START)),
            "the second provider starts from 0"
        );
        assert_eq!(*receiver.borrow(), Some(Progress::DONE));
    }

    #[tokio::test]
    async fn when_the_last_provider_fails_its_progress_stays() {
        let (reporter, receiver) = ProgressReporter::channel();
        let chain = GeneratorChain::new(vec![Arc::new(HalfWayThenFails)]);
        let err = chain
            .generate(&GenerationRequest::default(), &reporter)
            .await
            .unwrap_err();
        assert_eq!(err.failures.len(), 1);
        // No provider follows: nothing starts over.
        assert_eq!(receiver.borrow().map(|p| p.fraction), Some(0.5));
    }
}
