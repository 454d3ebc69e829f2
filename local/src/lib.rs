//! The local stack: every function's routes on one port, its own identity
//! provider, and embedded defaults for everything AWS, so the platform runs on
//! a laptop with `cargo run -p local` and nothing else.

mod background;
mod checkout;
pub mod database;
mod dev_routes;
mod job_events;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use shared::AppState;
use shared::jobs::worker::Worker;
use shared::kernel::config::{
    AuthConfig, Config, CreditsConfig, DEFAULT_EMAIL_CLAIM, DatabaseConfig, GalleryConfig,
    GeneratorConfig, LogFormat, PaymentProvider, PaymentsConfig, SslMode,
};
use shared::ports::queue::memory::MemoryQueue;
use shared::ports::storage::local::LocalObjectStore;
use shared::runtime::app;
use shared::web::auth::dev_issuer::{DevIssuer, SigningKey};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The webhook signing secret of the local payment provider.
pub const LOCAL_WEBHOOK_SECRET: &str = "whsec_local_development_only";

/// The local job queue's SQS-like settings: a message in flight comes back
/// after this long, and moves to the dead letters after this many receives.
pub const JOB_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(120);
pub const JOB_MAX_RECEIVES: u32 = 5;
/// How long a claimed job may run before the scheduler times it out.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(600);
/// Attempts before a transient generation failure becomes final.
pub const JOB_MAX_ATTEMPTS: i32 = 3;
/// A retried job's message comes back after 5 s × the attempt, at most 30 s.
pub const JOB_RETRY_BASE: Duration = Duration::from_secs(5);
pub const JOB_RETRY_MAX: Duration = Duration::from_secs(30);
/// A job still queued this long after its message was sent has lost it (its
/// receive window is `JOB_MAX_RECEIVES` × `JOB_VISIBILITY_TIMEOUT`).
pub const JOB_REDELIVERY_AFTER: Duration = Duration::from_secs(900);

/// Where the local checkout page sends the buyer back (relative to the stack's
/// base URL): the credit packages, which answer without a token, so a browser
/// can open them.
pub const LOCAL_RETURN_PATH: &str = "api/v1/credits/packages";

/// The audience the local issuer writes into its tokens.
pub const LOCAL_AUDIENCE: &str = "https://api.characters.local";

#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// The database to use; `None` resolves one (see [`database::resolve`]).
    pub database_url: Option<String>,
    /// `DATABASE_MIGRATION_URL`: the login that owns the schema and applies
    /// the migrations, when `database_url`'s login is a runtime login that
    /// may not (as on AWS and in the tests). `None`: `database_url` migrates.
    pub migration_url: Option<String>,
    /// Where the private cluster and the issuer's key live (`.local/`).
    pub data_dir: PathBuf,
    /// The issuer's key; `None` loads or creates `<data_dir>/dev-issuer-key.pem`.
    pub signing_key: Option<SigningKey>,
    /// Run the worker on the in-process queue and the scheduler's tasks on
    /// timers (the whole platform); tests turn it off and drive them.
    pub background_tasks: bool,
}

impl LocalOptions {
    /// Options from the environment: `PORT` (default 3000), `DATABASE_URL`,
    /// `LOCAL_DATA_DIR` (default `.local`).
    pub fn from_env() -> anyhow::Result<Self> {
        let port = match std::env::var("PORT") {
            Ok(raw) => raw
                .parse()
                .with_context(|| format!("PORT `{raw}` is not a port number"))?,
            Err(_) => 3000,
        };
        Ok(Self {
            port,
            database_url: std::env::var("DATABASE_URL")
                .ok()
                .filter(|u| !u.trim().is_empty()),
            migration_url: std::env::var("DATABASE_MIGRATION_URL")
                .ok()
                .filter(|u| !u.trim().is_empty()),
            data_dir: std::env::var_os("LOCAL_DATA_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(".local")),
            signing_key: None,
            background_tasks: true,
        })
    }
}

/// A running local stack.
pub struct LocalStack {
    pub addr: SocketAddr,
    pub base_url: String,
    pub issuer: DevIssuer,
    pub state: AppState,
    pub database: database::ResolvedDatabase,
    /// The in-process job queue (SQS semantics) the jobs routes send to.
    pub queue: Arc<MemoryQueue>,
    /// The generation worker, fed from `queue` (by the background task, or by
    /// tests calling `worker.handle_batch(queue.receive(n))`).
    pub worker: Worker,
    stop_background: tokio::sync::watch::Sender<bool>,
    background: Vec<JoinHandle<()>>,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<std::io::Result<()>>,
}

impl LocalStack {
    /// Resolves the database, applies migrations, and starts serving.
    pub async fn start(options: LocalOptions) -> anyhow::Result<Self> {
        let database = match &options.database_url {
            Some(url) => database::ResolvedDatabase {
                admin_url: url.clone(),
                url: url.clone(),
                private_cluster: None,
            },
            None => database::resolve(&options.data_dir).await?,
        };
        let listener = TcpListener::bind(("127.0.0.1", options.port))
            .await
            .with_context(|| format!("binding 127.0.0.1:{}", options.port))?;
        let addr = listener.local_addr()?;
        let base_url = format!("http://{addr}");
        let issuer_url = format!("{base_url}/");

        let signing_key = match options.signing_key {
            Some(key) => key,
            None => SigningKey::load_or_generate(&options.data_dir.join("dev-issuer-key.pem"))?,
        };
        let issuer = DevIssuer::new(signing_key, issuer_url.clone(), LOCAL_AUDIENCE);
        let config = local_config(&database.url, &issuer_url)?;
        shared::kernel::metrics::init(&config.metrics);
        let mut state = AppState::from_config(config).await?;
        let store = Arc::new(LocalObjectStore::new(
            options.data_dir.join("objects"),
            base_url.clone(),
            uuid::Uuid::new_v4().as_bytes().to_vec(),
        ));
        state.storage = Some(store.clone());
        let queue = Arc::new(MemoryQueue::new(
            "generation-jobs",
            JOB_VISIBILITY_TIMEOUT,
            JOB_MAX_RECEIVES,
        ));
        state.queue = Some(queue.clone());
        let report = match &options.migration_url {
            Some(url) => {
                let owner = DatabaseConfig {
                    url: url.clone(),
                    pool_size: 1,
                    ..state.config.database.clone()
                };
                let pool = shared::ports::db::create_pool(&owner)?;
                let report = shared::ports::db::migrate(&pool).await;
                pool.close();
                report
            }
            None => shared::ports::db::migrate(&state.db).await,
        }
        .with_context(|| format!("migrating {}", database::redact(&database.url)))?;
        for name in &report.applied {
            tracing::info!(migration = %name, "applied");
        }

        let generator = Arc::new(shared::ports::generator::build_chain(
            &state.config.generator,
        )?);
        let worker = Worker {
            db: state.db.clone(),
            storage: store.clone(),
            generator,
            queue: Some(queue.clone()),
            settings: state.config.worker,
        };
        let (stop_background, background_stopped) = tokio::sync::watch::channel(false);
        let router = router(
            state.clone(),
            issuer.clone(),
            store,
            background_stopped.clone(),
        );
        let background = if options.background_tasks {
            vec![
                tokio::spawn(background::consume_jobs(
                    queue.clone(),
                    worker.clone(),
                    background_stopped.clone(),
                )),
                tokio::spawn(background::run_schedules(state.clone(), background_stopped)),
            ]
        } else {
            Vec::new()
        };
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = shutdown_rx.await;
            })
            .await
        });
        Ok(Self {
            addr,
            base_url,
            issuer,
            state,
            database,
            queue,
            worker,
            stop_background,
            background,
            shutdown: Some(shutdown),
            server,
        })
    }

    /// Stops serving, finishing requests in flight, then writes the views
    /// read but not written yet.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        // Stops the worker and the schedules, and ends job event streams.
        let _ = self.stop_background.send(true);
        for task in self.background.drain(..) {
            let _ = task.await;
        }
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        (&mut self.server).await??;
        self.state
            .cache::<shared::characters::views::ViewCounter>()
            .flush(&self.state.db)
            .await?;
        Ok(())
    }
}

/// Every function's routes, plus what only the local stack serves: the
/// identity provider, signed file links, the checkout page, and job events as
/// Server-Sent Events (which end when `stopping` turns true, so that a
/// graceful shutdown does not wait on open streams).
pub fn router(
    state: AppState,
    issuer: DevIssuer,
    store: Arc<LocalObjectStore>,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> Router {
    let routes = app::auth_routes()
        .merge(app::characters_routes())
        .merge(app::credits_routes())
        .merge(app::jobs_routes())
        .merge(job_events::routes(stopping))
        .merge(dev_routes::routes(issuer))
        .merge(dev_routes::files(store))
        .merge(checkout::routes());
    app::finish(routes, state)
}

fn local_config(database_url: &str, issuer_url: &str) -> anyhow::Result<Config> {
    Ok(Config {
        database: DatabaseConfig {
            migration_url: None,
            url: database_url.to_string(),
            sslmode: SslMode::Disable,
            ssl_root_cert: None,
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
        },
        auth: AuthConfig {
            issuer: issuer_url.to_string(),
            audiences: vec![LOCAL_AUDIENCE.to_string()],
            jwks_url: format!("{issuer_url}.well-known/jwks.json"),
            email_claim: DEFAULT_EMAIL_CLAIM.to_string(),
            leeway_seconds: 30,
            jwks_min_refresh: Duration::from_secs(5),
            trust_gateway_claims: false,
        },
        // The GALLERY_* variables, as in Lambda.
        gallery: GalleryConfig::from_lookup(|name| std::env::var(name).ok())?,
        views: shared::kernel::config::ViewsConfig::from_lookup(|name| std::env::var(name).ok())?,
        payments: PaymentsConfig {
            provider: PaymentProvider::Local,
            stripe_api_base: "https://api.stripe.com".into(),
            stripe_secret_key: None,
            // The local checkout page signs its events with this; any value works locally.
            stripe_webhook_secret: Some(LOCAL_WEBHOOK_SECRET.into()),
            // The local stack has no app to return to: the checkout page's "Back to the
            // app" leads to the packages list, a page of this stack anyone may open.
            checkout_success_url: format!("{issuer_url}{LOCAL_RETURN_PATH}"),
            checkout_cancel_url: format!("{issuer_url}{LOCAL_RETURN_PATH}"),
        },
        credits: CreditsConfig::default(),
        // EXPORT_INLINE_MAX_BYTES, as in Lambda (default 5 MiB).
        gdpr: shared::kernel::config::GdprConfig::from_lookup(|name| std::env::var(name).ok())?,
        // No image server unless GENERATOR_PRIMARY_URL / _SECONDARY_URL point
        // at one: the procedural renderer serves every job.
        generator: GeneratorConfig::from_lookup(|name| std::env::var(name).ok())?,
        // Files and the in-process queue, set up by `LocalStack::start`; never AWS.
        storage: shared::kernel::config::StorageConfig::default(),
        queue: shared::kernel::config::QueueConfig {
            job_queue_url: None,
            redelivery_after: JOB_REDELIVERY_AFTER,
            max_redeliveries: shared::kernel::config::QueueConfig::default().max_redeliveries,
        },
        worker: shared::kernel::config::WorkerConfig {
            job_timeout: JOB_TIMEOUT,
            max_attempts: JOB_MAX_ATTEMPTS,
            retry_base: JOB_RETRY_BASE,
            retry_max: JOB_RETRY_MAX,
        },
        retention: shared::kernel::config::RetentionConfig::from_lookup(|name| {
            std::env::var(name).ok()
        })?,
        log_format: LogFormat::Text,
        // Off unless METRICS=emf: the local stack's stdout is a terminal.
        metrics: shared::kernel::config::MetricsConfig::from_lookup(|name| {
            std::env::var(name).ok()
        })?,
    })
}
