//! Configuration, read once from the environment at cold start.
//!
//! Every variable is documented in the README's configuration table and in
//! `template.yaml`. Values are validated here so that a misconfigured function
//! fails at start-up with a message naming the variable, not on the first request.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is required")]
    Missing(&'static str),
    #[error("environment variable {name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP (local development, a private VPC proxy that terminates TLS).
    Disable,
    /// TLS with rustls; the server certificate is verified against the
    /// webpki roots plus `DATABASE_SSL_ROOT_CERT` (the RDS CA bundle).
    Require,
}

#[derive(Clone)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/dbname` or tokio-postgres'
    /// `key=value` form (`DATABASE_URL`; on AWS derived from
    /// `DATABASE_SECRET_ARN`, see [`crate::ports::secrets`]). The runtime login: on AWS
    /// and in the tests a member of `app_service` that owns nothing.
    pub url: String,
    /// `DATABASE_MIGRATION_URL`: the login that owns the schema and applies
    /// the migrations (on AWS derived from `DATABASE_MIGRATION_SECRET_ARN`,
    /// given to the scheduler only). `None`: migrations run as `url`'s login
    /// (the single-login local set-up).
    pub migration_url: Option<String>,
    /// `DATABASE_SSLMODE`: `disable` (default) or `require`.
    pub sslmode: SslMode,
    /// `DATABASE_SSL_ROOT_CERT`: extra PEM roots for `require`.
    pub ssl_root_cert: Option<PathBuf>,
    /// `DATABASE_POOL_SIZE`: connections per process (default 2: a Lambda
    /// instance serves one request at a time).
    pub pool_size: usize,
    /// `DATABASE_CONNECT_TIMEOUT_SECONDS` (default 5): also the pool wait timeout.
    pub connect_timeout: Duration,
}

impl DatabaseConfig {
    /// A runtime configuration for `url` with the defaults (tests, tools).
    pub fn for_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            migration_url: None,
            sslmode: SslMode::Disable,
            ssl_root_cert: None,
            pool_size: 2,
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// The same settings for the migration login, when one is configured.
    pub fn migration(&self) -> Option<DatabaseConfig> {
        self.migration_url.as_ref().map(|url| DatabaseConfig {
            url: url.clone(),
            migration_url: None,
            pool_size: 1,
            ..self.clone()
        })
    }
}

/// Passwords never reach logs: the connection strings are shown without them.
impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_connection_string(&self.url))
            .field(
                "migration_url",
                &self.migration_url.as_deref().map(redact_connection_string),
            )
            .field("sslmode", &self.sslmode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// `url` with its password replaced, in either of tokio-postgres' forms.
pub fn redact_connection_string(raw: &str) -> String {
    match raw.parse::<tokio_postgres::Config>() {
        Ok(parsed) => {
            let host = parsed
                .get_hosts()
                .iter()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(name) => name.clone(),
                    #[cfg(unix)]
                    tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                })
                .collect::<Vec<_>>()
                .join(",");
            format!(
                "user={} host={} port={} dbname={}{}",
                parsed.get_user().unwrap_or("?"),
                host,
                parsed
                    .get_ports()
                    .first()
                    .map(u16::to_string)
                    .unwrap_or_else(|| "5432".into()),
                parsed.get_dbname().unwrap_or("?"),
                if parsed.get_password().is_some() {
                    " password=***"
                } else {
                    ""
                }
            )
        }
        Err(_) => "<invalid connection string>".to_string(),
    }
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `AUTH_ISSUER`: the token issuer, normalised with a trailing slash, as
    /// Auth0 writes it in `iss` (`https://tenant.eu.auth0.com/`).
    pub issuer: String,
    /// `AUTH_AUDIENCE`: accepted audiences, comma separated (the Auth0 API identifier).
    pub audiences: Vec<String>,
    /// `AUTH_JWKS_URL`: defaults to `{issuer}.well-known/jwks.json`.
    pub jwks_url: String,
    /// `AUTH_EMAIL_CLAIM`: namespaced custom claim carrying the email (Auth0
    /// access tokens have none by default; an Action adds it). `email` is the fallback.
    pub email_claim: String,
    /// `AUTH_LEEWAY_SECONDS` (default 30): clock skew allowed on `exp`/`nbf`.
    pub leeway_seconds: u64,
    /// `AUTH_JWKS_MIN_REFRESH_SECONDS` (default 60, 5..=86400): an unknown `kid`
    /// triggers a JWKS refetch at most this often, so forged kids cannot hammer
    /// the issuer; while fetches fail the wait doubles after each failure, up
    /// to 5 minutes.
    pub jwks_min_refresh: Duration,
    /// `AUTH_TRUST_GATEWAY_CLAIMS` (default false): accept the claims that API
    /// Gateway's JWT authorizer already verified (`requestContext.authorizer.jwt`).
    pub trust_gateway_claims: bool,
}

/// The gallery and how reports weigh (`shared::social::trust` has the formula).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GalleryConfig {
    /// `GALLERY_REPORT_THRESHOLD` (default 3, 1..=1000): a character leaves the
    /// gallery, until a moderator reviews it, once the weights of its open
    /// reports (filed since the last review) add up to this. A reporter of
    /// full weight counts 1 (2 at most, for a reporter whose past reports
    /// moderators actioned).
    pub report_threshold: i32,
    /// `GALLERY_TOP_RATED_MIN_RATINGS` (default 3): ratings a character needs
    /// before it can appear in the `top_rated` sort.
    pub top_rated_min_ratings: i32,
    /// `GALLERY_REPORTER_FULL_WEIGHT_DAYS` (default 30, 0..=3650): the account
    /// age at which a reporter's age factor reaches 1 (it grows linearly from
    /// 0 at sign-up); 0 leaves age out.
    pub reporter_full_weight_days: i32,
    /// `GALLERY_UNVERIFIED_REPORT_PERCENT` (default 25, 0..=100): what a
    /// reporter without a verified email (`users.email_verified_at`) weighs,
    /// in percent of a verified one.
    pub unverified_report_percent: i32,
}

impl Default for GalleryConfig {
    fn default() -> Self {
        Self {
            report_threshold: 3,
            top_rated_min_ratings: 3,
            reporter_full_weight_days: 30,
            unverified_report_percent: 25,
        }
    }
}

impl GalleryConfig {
    /// Reads the `GALLERY_*` variables through `lookup` (the local stack reads
    /// them from its environment this way).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let d = Self::default();
        Ok(Self {
            report_threshold: parse_number(
                &get,
                "GALLERY_REPORT_THRESHOLD",
                d.report_threshold as u64,
                1,
                1000,
            )? as i32,
            top_rated_min_ratings: parse_number(
                &get,
                "GALLERY_TOP_RATED_MIN_RATINGS",
                d.top_rated_min_ratings as u64,
                1,
                1000,
            )? as i32,
            reporter_full_weight_days: parse_number(
                &get,
                "GALLERY_REPORTER_FULL_WEIGHT_DAYS",
                d.reporter_full_weight_days as u64,
                0,
                3650,
            )? as i32,
            unverified_report_percent: parse_number(
                &get,
                "GALLERY_UNVERIFIED_REPORT_PERCENT",
                d.unverified_report_percent as u64,
                0,
                100,
            )? as i32,
        })
    }
}

/// How views are counted (`shared::characters::views`).
#[derive(Clone, PartialEq, Eq)]
pub struct ViewsConfig {
    /// `GALLERY_VIEW_KEY` (at least 32 characters): the HMAC key viewer
    /// digests are made with. Every process of a deployment must share it, or
    /// an anonymous viewer is counted once per process; unset, each process
    /// draws a random one (fine for one local process).
    pub key: Option<Vec<u8>>,
    /// `GALLERY_VIEW_BATCH` (default 50, 1..=10000): a process writes its
    /// pending views once it holds this many distinct ones...
    pub batch: usize,
    /// `GALLERY_VIEW_FLUSH_SECONDS` (default 30, 0..=3600): ...or when the
    /// oldest has waited this long (checked on each counted read; 0 writes
    /// every view at once). Views a process holds when it dies are lost: at
    /// most `batch` per process.
    pub flush_after: Duration,
}

impl std::fmt::Debug for ViewsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewsConfig")
            .field("key", &self.key.as_ref().map(|_| "[redacted]"))
            .field("batch", &self.batch)
            .field("flush_after", &self.flush_after)
            .finish()
    }
}

impl Default for ViewsConfig {
    fn default() -> Self {
        Self {
            key: None,
            batch: 50,
            flush_after: Duration::from_secs(30),
        }
    }
}

impl ViewsConfig {
    /// Reads the `GALLERY_VIEW_*` variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let d = Self::default();
        let key = match get("GALLERY_VIEW_KEY") {
            Some(key) if key.len() < 32 => {
                return Err(ConfigError::Invalid {
                    name: "GALLERY_VIEW_KEY",
                    reason: "must be at least 32 characters".into(),
                });
            }
            other => other.map(String::into_bytes),
        };
        Ok(Self {
            key,
            batch: parse_number(&get, "GALLERY_VIEW_BATCH", d.batch as u64, 1, 10_000)? as usize,
            flush_after: Duration::from_secs(parse_number(
                &get,
                "GALLERY_VIEW_FLUSH_SECONDS",
                d.flush_after.as_secs(),
                0,
                3600,
            )?),
        })
    }
}

/// Which payment provider creates checkout sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentProvider {
    /// Stripe Checkout over its REST API (`STRIPE_API_BASE`).
    Stripe,
    /// The local stack's own checkout page, which posts a correctly signed
    /// event to the same webhook route.
    Local,
}

#[derive(Debug, Clone)]
pub struct PaymentsConfig {
    /// `PAYMENT_PROVIDER`: `stripe` (default in Lambda) or `local`.
    pub provider: PaymentProvider,
    /// `STRIPE_API_BASE` (default `https://api.stripe.com`); tests point it at a stub.
    pub stripe_api_base: String,
    /// `STRIPE_SECRET_KEY`: needed to create checkout sessions.
    pub stripe_secret_key: Option<String>,
    /// `STRIPE_WEBHOOK_SECRET` (`whsec_...`): verifies `Stripe-Signature`.
    pub stripe_webhook_secret: Option<String>,
    /// `CHECKOUT_SUCCESS_URL` / `CHECKOUT_CANCEL_URL`: where Checkout sends the buyer back.
    pub checkout_success_url: String,
    pub checkout_cancel_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditsConfig {
    /// `DAILY_BONUS_BASE` (default 5): credits for the first day of a streak.
    pub daily_bonus_base: i32,
    /// `DAILY_BONUS_STEP` (default 1): extra credits per further streak day.
    pub daily_bonus_step: i32,
    /// `DAILY_BONUS_MAX_STREAK` (default 7): the streak day after which the bonus stops growing.
    pub daily_bonus_max_streak: i32,
    /// `GIFT_MAX_AMOUNT` (default 1000): the largest single gift.
    pub gift_max_amount: i32,
    /// `GIFT_DAILY_CAP` (default 2000): credits one user may gift per local day.
    pub gift_daily_cap: i32,
    /// `GIFT_HOLD_DAYS` (default 7, 0..=365): for how many days after a purchase is paid its
    /// credits (and its bonus) cannot be gifted, so a refund or a dispute of that payment
    /// finds them still with the buyer. 0: purchases are giftable at once.
    pub gift_hold_days: i32,
    /// `REFERRAL_CREDITS` (default 100, 0..=100000): the `referral` credits the referrer and
    /// the referred account each get when the referred account first pays for a purchase.
    /// 0: referrals are still linked and settled, but pay nothing.
    pub referral_credits: i32,
    /// `REFERRAL_MONTHLY_CAP` (default 10, 0..=10000): referrals one referrer is rewarded
    /// for per calendar month (UTC); later ones that month are settled as `capped`.
    pub referral_monthly_cap: i32,
}

/// `GIFT_HOLD_DAYS` when it is not set.
pub const DEFAULT_GIFT_HOLD_DAYS: i32 = 7;

impl Default for CreditsConfig {
    fn default() -> Self {
        Self {
            daily_bonus_base: 5,
            daily_bonus_step: 1,
            daily_bonus_max_streak: 7,
            gift_max_amount: 1000,
            gift_daily_cap: 2000,
            gift_hold_days: DEFAULT_GIFT_HOLD_DAYS,
            referral_credits: 100,
            referral_monthly_cap: 10,
        }
    }
}

/// The image providers (`shared::ports::generator::build_chain`): the configured
/// AUTOMATIC1111 servers in order, then the built-in procedural renderer.
#[derive(Clone, PartialEq, Eq)]
pub struct GeneratorConfig {
    /// `GENERATOR_PRIMARY_URL`: base URL of the AUTOMATIC1111-compatible
    /// server tried first (`http://gpu-1.internal:7860`); unset: none.
    /// Credentials in the URL are sent as basic auth (A1111's `--api-auth`).
    pub primary_url: Option<String>,
    /// `GENERATOR_SECONDARY_URL`: the server tried when the primary fails.
    pub secondary_url: Option<String>,
    /// `GENERATOR_TIMEOUT_SECONDS` (default 120, 1..=900): the longest one
    /// call to a server may take, rendering included, before the next
    /// provider is tried.
    pub timeout: Duration,
    /// `GENERATOR_MODELS`: the allow-list of checkpoints, from a character's
    /// `model_version` to the A1111 checkpoint title the servers switch to for
    /// it, as comma-separated `version=title` pairs
    /// (`v1.0=sd_xl_base_1.0.safetensors,anime-v3=animagine-xl-3.1.safetensors [1449e5b0b9]`).
    /// An unmapped `model_version` renders with the server's loaded model.
    /// Default: empty.
    pub models: BTreeMap<String, String>,
    /// `GENERATOR_PROGRESS_INTERVAL_MS` (default 1000, 100..=60000): how often
    /// a server is asked how far a render is while it works.
    pub progress_interval: Duration,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            primary_url: None,
            secondary_url: None,
            timeout: Duration::from_secs(120),
            models: BTreeMap::new(),
            progress_interval: Duration::from_millis(1000),
        }
    }
}

// By hand: the URLs may carry a password.
impl std::fmt::Debug for GeneratorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratorConfig")
            .field(
                "primary_url",
                &self.primary_url.as_deref().map(redact_password),
            )
            .field(
                "secondary_url",
                &self.secondary_url.as_deref().map(redact_password),
            )
            .field("timeout", &self.timeout)
            .field("models", &self.models)
            .field("progress_interval", &self.progress_interval)
            .finish()
    }
}

/// Longest `model_version`, as the character field allows.
const MAX_MODEL_VERSION_LEN: usize = 32;
/// Longest checkpoint title in `GENERATOR_MODELS`.
const MAX_CHECKPOINT_TITLE_LEN: usize = 255;

impl GeneratorConfig {
    /// Reads the `GENERATOR_*` variables through `lookup` (the local stack
    /// reads them from its environment this way).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let defaults = Self::default();
        Ok(Self {
            primary_url: get("GENERATOR_PRIMARY_URL")
                .map(|url| parse_server_url("GENERATOR_PRIMARY_URL", &url))
                .transpose()?,
            secondary_url: get("GENERATOR_SECONDARY_URL")
                .map(|url| parse_server_url("GENERATOR_SECONDARY_URL", &url))
                .transpose()?,
            timeout: Duration::from_secs(parse_number(
                &get,
                "GENERATOR_TIMEOUT_SECONDS",
                defaults.timeout.as_secs(),
                1,
                900,
            )?),
            models: get("GENERATOR_MODELS")
                .map(|raw| parse_models("GENERATOR_MODELS", &raw))
                .transpose()?
                .unwrap_or_default(),
            progress_interval: Duration::from_millis(parse_number(
                &get,
                "GENERATOR_PROGRESS_INTERVAL_MS",
                defaults.progress_interval.as_millis() as u64,
                100,
                60_000,
            )?),
        })
    }
}

/// `version=title` pairs, comma separated (empty items are skipped). A version
/// is what a character's `model_version` may be (1 to 32 of `A-Z a-z 0-9 . _ -`),
/// each at most once; a title is what A1111 lists in `/sdapi/v1/sd-models`
/// (1 to 255 characters, no control characters). A title cannot contain `,`
/// (it separates pairs); it may contain `=` (only the first one separates).
fn parse_models(name: &'static str, raw: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid { name, reason };
    let mut models = BTreeMap::new();
    for item in raw.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((version, title)) = item.split_once('=') else {
            return Err(invalid(format!(
                "`{item}` is not a model_version=checkpoint pair"
            )));
        };
        let (version, title) = (version.trim(), title.trim());
        let version_ok = (1..=MAX_MODEL_VERSION_LEN).contains(&version.len())
            && version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !version_ok {
            return Err(invalid(format!(
                "model version `{version}` is not 1 to {MAX_MODEL_VERSION_LEN} letters, digits, '.', '_' or '-'"
            )));
        }
        let title_ok = (1..=MAX_CHECKPOINT_TITLE_LEN).contains(&title.chars().count())
            && !title.chars().any(char::is_control);
        if !title_ok {
            return Err(invalid(format!(
                "the checkpoint for `{version}` must be 1 to {MAX_CHECKPOINT_TITLE_LEN} characters without control characters"
            )));
        }
        if models
            .insert(version.to_string(), title.to_string())
            .is_some()
        {
            return Err(invalid(format!(
                "model version `{version}` is mapped twice"
            )));
        }
    }
    Ok(models)
}

/// An http(s) base URL with a host and no query or fragment, kept without a
/// trailing slash (a path prefix, for a reverse proxy, is allowed).
fn parse_server_url(name: &'static str, raw: &str) -> Result<String, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid { name, reason };
    let parsed = url::Url::parse(raw).map_err(|e| invalid(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("the URL must be http or https".into()));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("the URL has no host".into()));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid("the URL must not have a query or fragment".into()));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_string())
}

/// The URL with its password (if any) replaced, for logs and Debug output.
fn redact_password(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => raw.to_string(),
        Err(_) => "<invalid url>".to_string(),
    }
}

/// Object storage (`shared::ports::storage`). In Lambda the S3 adapter is used when
/// `STORAGE_BUCKET` is set; otherwise the function has no store and the
/// routes that need one answer 503. The local stack always uses files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// `STORAGE_BUCKET`: the private S3 bucket holding images and thumbnails.
    /// The endpoint, region and credentials come from the AWS SDK's own
    /// configuration chain (`AWS_REGION`, the execution role,
    /// `AWS_ENDPOINT_URL` for moto or LocalStack).
    pub bucket: Option<String>,
    /// `STORAGE_URL_TTL_SECONDS` (default 300, 1..=604800): how long a
    /// presigned download URL works (S3 caps SigV4 presigning at 7 days).
    pub url_ttl: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            bucket: None,
            url_ttl: Duration::from_secs(300),
        }
    }
}

/// GDPR export and erasure (`shared::gdpr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GdprConfig {
    /// `EXPORT_INLINE_MAX_BYTES` (default 5 MiB, 0..=5500000): a `GET /api/v1/me/export`
    /// document larger than this is written to storage and answered with a download link
    /// instead (Lambda answers at most 6 MB); 0 always stores it.
    pub export_inline_max_bytes: usize,
}

impl Default for GdprConfig {
    fn default() -> Self {
        Self {
            export_inline_max_bytes: 5 * 1024 * 1024,
        }
    }
}

impl GdprConfig {
    /// Reads `EXPORT_INLINE_MAX_BYTES` through `lookup` (the local stack reads
    /// it from its environment this way).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        Ok(Self {
            export_inline_max_bytes: parse_number(
                &get,
                "EXPORT_INLINE_MAX_BYTES",
                Self::default().export_inline_max_bytes as u64,
                0,
                5_500_000,
            )? as usize,
        })
    }
}

/// The generation job queue (`shared::ports::queue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// `JOB_QUEUE_URL`: the SQS queue generation jobs are sent to
    /// (`https://sqs.eu-west-1.amazonaws.com/123456789012/generation-jobs`);
    /// unset: no queue, and dispatch answers 503 before taking any credits.
    pub job_queue_url: Option<String>,
    /// `JOB_REDELIVERY_AFTER_SECONDS` (default 10800, 60..=1209600): a job
    /// still queued this long after its message was last sent has lost its
    /// message (dead-lettered, or dropped): the scheduler's `outbox-sweep`
    /// sends it again. Keep it above the queue's receive window
    /// (maxReceiveCount × visibility timeout) plus the longest backlog you
    /// expect: a message merely waiting would be sent twice (harmless: the
    /// worker claims a job once).
    pub redelivery_after: Duration,
    /// `JOB_MAX_REDELIVERIES` (default 2, 0..=10): after this many, a job
    /// whose message is lost again fails and its credits are released.
    pub max_redeliveries: i32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            job_queue_url: None,
            redelivery_after: Duration::from_secs(3 * 3600),
            max_redeliveries: 2,
        }
    }
}

/// The generation worker (`shared::jobs::worker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerConfig {
    /// `WORKER_JOB_TIMEOUT_SECONDS` (default 600, 10..=3600): how long a
    /// claimed job may run before the scheduler's sweeper times it out;
    /// keep the queue's visibility timeout at least this long.
    pub job_timeout: Duration,
    /// `WORKER_MAX_ATTEMPTS` (default 3, 1..=20): attempts before a transient
    /// provider failure becomes final (the job fails and its hold is released).
    /// Keep the DLQ's maxReceiveCount above it.
    pub max_attempts: i32,
    /// `WORKER_RETRY_BASE_SECONDS` (default 30, 1..=900): a message to retry
    /// comes back after this × the attempt number (ChangeMessageVisibility)...
    pub retry_base: Duration,
    /// `WORKER_RETRY_MAX_SECONDS` (default 300, 1..=43200): ...but never later than this.
    pub retry_max: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            job_timeout: Duration::from_secs(600),
            max_attempts: 3,
            retry_base: Duration::from_secs(30),
            retry_max: Duration::from_secs(300),
        }
    }
}

impl WorkerConfig {
    /// How long a message waits before its `attempt`-th retry (1-based).
    pub fn retry_delay(&self, attempt: u32) -> Duration {
        self.retry_base
            .saturating_mul(attempt.max(1))
            .min(self.retry_max)
    }
}

impl StorageConfig {
    fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let bucket = get("STORAGE_BUCKET");
        if let Some(bucket) = &bucket {
            // S3's bucket naming rules, the part a typo would break.
            let valid = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-')
                })
                && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
                && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
            if !valid {
                return Err(ConfigError::Invalid {
                    name: "STORAGE_BUCKET",
                    reason: format!("`{bucket}` is not a valid S3 bucket name"),
                });
            }
        }
        Ok(Self {
            bucket,
            url_ttl: Duration::from_secs(parse_number(
                get,
                "STORAGE_URL_TTL_SECONDS",
                Self::default().url_ttl.as_secs(),
                1,
                604_800,
            )?),
        })
    }
}

impl QueueConfig {
    fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let job_queue_url = get("JOB_QUEUE_URL");
        if let Some(raw) = &job_queue_url {
            parse_server_url("JOB_QUEUE_URL", raw)?;
        }
        let defaults = Self::default();
        Ok(Self {
            job_queue_url,
            redelivery_after: Duration::from_secs(parse_number(
                get,
                "JOB_REDELIVERY_AFTER_SECONDS",
                defaults.redelivery_after.as_secs(),
                60,
                1_209_600,
            )?),
            max_redeliveries: parse_number(
                get,
                "JOB_MAX_REDELIVERIES",
                defaults.max_redeliveries as u64,
                0,
                10,
            )? as i32,
        })
    }
}

impl WorkerConfig {
    fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        Ok(Self {
            job_timeout: Duration::from_secs(parse_number(
                get,
                "WORKER_JOB_TIMEOUT_SECONDS",
                defaults.job_timeout.as_secs(),
                10,
                3600,
            )?),
            max_attempts: parse_number(
                get,
                "WORKER_MAX_ATTEMPTS",
                defaults.max_attempts as u64,
                1,
                20,
            )? as i32,
            retry_base: Duration::from_secs(parse_number(
                get,
                "WORKER_RETRY_BASE_SECONDS",
                defaults.retry_base.as_secs(),
                1,
                900,
            )?),
            retry_max: Duration::from_secs(parse_number(
                get,
                "WORKER_RETRY_MAX_SECONDS",
                defaults.retry_max.as_secs(),
                1,
                43_200,
            )?),
        })
    }
}

/// How long data is kept (`shared::runtime::scheduler`'s `partition-upkeep`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// `ACTIVITY_LOG_RETENTION_DAYS` (default 180, 1..=3650): monthly partitions of
    /// `user_activity_logs` whose whole month is older than this are dropped.
    pub activity_log_days: i32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            activity_log_days: 180,
        }
    }
}

impl RetentionConfig {
    /// Reads `ACTIVITY_LOG_RETENTION_DAYS` through `lookup` (the local stack
    /// reads it from its environment this way).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        Ok(Self {
            activity_log_days: parse_number(
                &get,
                "ACTIVITY_LOG_RETENTION_DAYS",
                Self::default().activity_log_days as u64,
                1,
                3650,
            )? as i32,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub gallery: GalleryConfig,
    pub views: ViewsConfig,
    pub payments: PaymentsConfig,
    pub credits: CreditsConfig,
    pub gdpr: GdprConfig,
    pub generator: GeneratorConfig,
    pub storage: StorageConfig,
    pub queue: QueueConfig,
    pub worker: WorkerConfig,
    pub retention: RetentionConfig,
    /// `LOG_FORMAT`: `json` or `text`; unset, Lambda's `AWS_LAMBDA_LOG_FORMAT`
    /// (`JSON` or `Text`, the function's log-format control); unset too, JSON
    /// inside Lambda and text elsewhere.
    pub log_format: LogFormat,
    /// `METRICS`, `METRICS_NAMESPACE` (see [`crate::kernel::metrics`]).
    pub metrics: MetricsConfig,
}

pub const DEFAULT_EMAIL_CLAIM: &str = "https://characters.app/email";

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads configuration through `lookup`, so tests need not touch the
    /// process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };

        let database = DatabaseConfig::from_lookup(&get)?;

        let auth = AuthConfig::from_lookup(&get)?;

        let gallery = GalleryConfig::from_lookup(&lookup)?;
        let views = ViewsConfig::from_lookup(&lookup)?;

        let payments = PaymentsConfig::from_lookup(&get)?;
        let credits = CreditsConfig::from_lookup(&get)?;

        let gdpr = GdprConfig::from_lookup(&lookup)?;
        let generator = GeneratorConfig::from_lookup(&lookup)?;
        let storage = StorageConfig::from_lookup(&get)?;
        let queue = QueueConfig::from_lookup(&get)?;
        let worker = WorkerConfig::from_lookup(&get)?;
        let retention = RetentionConfig::from_lookup(&lookup)?;

        // Lambda sets AWS_LAMBDA_LOG_FORMAT from the function's logging
        // configuration; a value it may add later leaves the default.
        let lambda_format =
            get("AWS_LAMBDA_LOG_FORMAT").and_then(|v| match v.to_ascii_lowercase().as_str() {
                "json" => Some(LogFormat::Json),
                "text" => Some(LogFormat::Text),
                _ => None,
            });
        let log_format = match get("LOG_FORMAT").as_deref() {
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            None => match lambda_format {
                Some(format) => format,
                None if get("AWS_LAMBDA_FUNCTION_NAME").is_some() => LogFormat::Json,
                None => LogFormat::Text,
            },
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: "LOG_FORMAT",
                    reason: format!("`{other}` is not one of json, text"),
                });
            }
        };

        Ok(Self {
            database,
            auth,
            gallery,
            views,
            payments,
            credits,
            gdpr,
            generator,
            storage,
            queue,
            worker,
            retention,
            log_format,
            metrics: MetricsConfig::from_lookup(&lookup)?,
        })
    }
}

/// Auth0 writes `iss` as `https://tenant.auth0.com/`; people configure it with
/// or without the slash, or as a bare domain. Accept all three, store one form.
pub fn normalise_issuer(raw: &str) -> Result<String, String> {
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("https://{raw}")
    };
    let parsed = url::Url::parse(&with_scheme).map_err(|e| e.to_string())?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err("the issuer must be an http(s) URL".into());
    }
    let mut text = parsed.to_string();
    if !text.ends_with('/') {
        text.push('/');
    }
    Ok(text)
}

fn parse_number(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let Some(raw) = get(name) else {
        return Ok(default);
    };
    let value: u64 = raw.parse().map_err(|_| ConfigError::Invalid {
        name,
        reason: format!("`{raw}` is not a whole number"),
    })?;
    if !(min..=max).contains(&value) {
        return Err(ConfigError::Invalid {
            name,
            reason: format!("{value} is outside {min}..={max}"),
        });
    }
    Ok(value)
}

fn parse_bool(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match get(name).map(|v| v.to_ascii_lowercase()).as_deref() {
        None => Ok(default),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(other) => Err(ConfigError::Invalid {
            name,
            reason: format!("`{other}` is not a boolean"),
        }),
    }
}

pub const DEFAULT_NAMESPACE: &str = "CharacterPlatform";

/// `METRICS` and `METRICS_NAMESPACE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// `METRICS=emf` (default inside Lambda) or `off` (default elsewhere).
    pub enabled: bool,
    /// `METRICS_NAMESPACE`: the CloudWatch namespace (default `CharacterPlatform`).
    pub namespace: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            namespace: DEFAULT_NAMESPACE.to_string(),
        }
    }
}

impl MetricsConfig {
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let enabled = match get("METRICS").map(|v| v.to_ascii_lowercase()).as_deref() {
            Some("emf") => true,
            Some("off") => false,
            None => get("AWS_LAMBDA_FUNCTION_NAME").is_some(),
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: "METRICS",
                    reason: format!("`{other}` is not one of emf, off"),
                });
            }
        };
        let namespace = get("METRICS_NAMESPACE").unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        if !valid_namespace(&namespace) {
            return Err(ConfigError::Invalid {
                name: "METRICS_NAMESPACE",
                reason: "1 to 255 of A-Z a-z 0-9 . - _ / # :, not starting with `AWS/`".into(),
            });
        }
        Ok(Self { enabled, namespace })
    }
}

/// What CloudWatch accepts as a custom namespace.
fn valid_namespace(namespace: &str) -> bool {
    (1..=255).contains(&namespace.len())
        && !namespace.starts_with("AWS/")
        && namespace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_/#: ".contains(&b))
}

impl DatabaseConfig {
    fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let url = get("DATABASE_URL").ok_or(ConfigError::Missing("DATABASE_URL"))?;
        url.parse::<tokio_postgres::Config>()
            .map_err(|e| ConfigError::Invalid {
                name: "DATABASE_URL",
                reason: e.to_string(),
            })?;
        let sslmode = match get("DATABASE_SSLMODE").as_deref() {
            None | Some("disable") => SslMode::Disable,
            Some("require") | Some("verify-full") => SslMode::Require,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: "DATABASE_SSLMODE",
                    reason: format!("`{other}` is not one of disable, require"),
                });
            }
        };
        let migration_url = get("DATABASE_MIGRATION_URL");
        if let Some(raw) = &migration_url {
            raw.parse::<tokio_postgres::Config>()
                .map_err(|e| ConfigError::Invalid {
                    name: "DATABASE_MIGRATION_URL",
                    reason: e.to_string(),
                })?;
        }
        let database = DatabaseConfig {
            url,
            migration_url,
            sslmode,
            ssl_root_cert: get("DATABASE_SSL_ROOT_CERT").map(PathBuf::from),
            pool_size: parse_number(get, "DATABASE_POOL_SIZE", 2, 1, 64)? as usize,
            connect_timeout: Duration::from_secs(parse_number(
                get,
                "DATABASE_CONNECT_TIMEOUT_SECONDS",
                5,
                1,
                60,
            )?),
        };
        Ok(database)
    }
}

impl AuthConfig {
    fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let issuer = get("AUTH_ISSUER").ok_or(ConfigError::Missing("AUTH_ISSUER"))?;
        let issuer = normalise_issuer(&issuer).map_err(|reason| ConfigError::Invalid {
            name: "AUTH_ISSUER",
            reason,
        })?;
        let audiences: Vec<String> = get("AUTH_AUDIENCE")
            .ok_or(ConfigError::Missing("AUTH_AUDIENCE"))?
            .split(',')
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if audiences.is_empty() {
            return Err(ConfigError::Missing("AUTH_AUDIENCE"));
        }
        let jwks_url =
            get("AUTH_JWKS_URL").unwrap_or_else(|| format!("{issuer}.well-known/jwks.json"));
        url::Url::parse(&jwks_url).map_err(|e| ConfigError::Invalid {
            name: "AUTH_JWKS_URL",
            reason: e.to_string(),
        })?;
        let auth = AuthConfig {
            issuer,
            audiences,
            jwks_url,
            email_claim: get("AUTH_EMAIL_CLAIM").unwrap_or_else(|| DEFAULT_EMAIL_CLAIM.to_string()),
            leeway_seconds: parse_number(get, "AUTH_LEEWAY_SECONDS", 30, 0, 300)?,
            jwks_min_refresh: Duration::from_secs(parse_number(
                get,
                "AUTH_JWKS_MIN_REFRESH_SECONDS",
                60,
                5,
                86_400,
            )?),
            trust_gateway_claims: parse_bool(get, "AUTH_TRUST_GATEWAY_CLAIMS", false)?,
        };
        Ok(auth)
    }
}

impl PaymentsConfig {
    fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let payments = PaymentsConfig {
            provider: match get("PAYMENT_PROVIDER").as_deref() {
                None | Some("stripe") => PaymentProvider::Stripe,
                Some("local") => PaymentProvider::Local,
                Some(other) => {
                    return Err(ConfigError::Invalid {
                        name: "PAYMENT_PROVIDER",
                        reason: format!("`{other}` is not one of stripe, local"),
                    });
                }
            },
            stripe_api_base: get("STRIPE_API_BASE")
                .unwrap_or_else(|| "https://api.stripe.com".into())
                .trim_end_matches('/')
                .to_string(),
            stripe_secret_key: get("STRIPE_SECRET_KEY"),
            stripe_webhook_secret: get("STRIPE_WEBHOOK_SECRET"),
            checkout_success_url: get("CHECKOUT_SUCCESS_URL")
                .unwrap_or_else(|| "https://characters.app/credits?checkout=success".into()),
            checkout_cancel_url: get("CHECKOUT_CANCEL_URL")
                .unwrap_or_else(|| "https://characters.app/credits?checkout=cancelled".into()),
        };
        Ok(payments)
    }
}

impl CreditsConfig {
    fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let defaults = CreditsConfig::default();
        let credits = CreditsConfig {
            daily_bonus_base: parse_number(
                get,
                "DAILY_BONUS_BASE",
                defaults.daily_bonus_base as u64,
                0,
                10_000,
            )? as i32,
            daily_bonus_step: parse_number(
                get,
                "DAILY_BONUS_STEP",
                defaults.daily_bonus_step as u64,
                0,
                10_000,
            )? as i32,
            daily_bonus_max_streak: parse_number(
                get,
                "DAILY_BONUS_MAX_STREAK",
                defaults.daily_bonus_max_streak as u64,
                1,
                365,
            )? as i32,
            gift_max_amount: parse_number(
                get,
                "GIFT_MAX_AMOUNT",
                defaults.gift_max_amount as u64,
                1,
                1_000_000,
            )? as i32,
            gift_daily_cap: parse_number(
                get,
                "GIFT_DAILY_CAP",
                defaults.gift_daily_cap as u64,
                1,
                10_000_000,
            )? as i32,
            gift_hold_days: parse_number(
                get,
                "GIFT_HOLD_DAYS",
                defaults.gift_hold_days as u64,
                0,
                365,
            )? as i32,
            referral_credits: parse_number(
                get,
                "REFERRAL_CREDITS",
                defaults.referral_credits as u64,
                0,
                100_000,
            )? as i32,
            referral_monthly_cap: parse_number(
                get,
                "REFERRAL_MONTHLY_CAP",
                defaults.referral_monthly_cap as u64,
                0,
                10_000,
            )? as i32,
        };
        Ok(credits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    const MINIMAL: [(&str, &str); 3] = [
        ("DATABASE_URL", "postgres://app@db.internal:5432/characters"),
        ("AUTH_ISSUER", "tenant.eu.auth0.com"),
        ("AUTH_AUDIENCE", "https://api.characters.app"),
    ];

    #[test]
    fn minimal_configuration_gets_defaults() {
        let cfg = config(&MINIMAL).unwrap();
        assert_eq!(cfg.auth.issuer, "https://tenant.eu.auth0.com/");
        assert_eq!(
            cfg.auth.jwks_url,
            "https://tenant.eu.auth0.com/.well-known/jwks.json"
        );
        assert_eq!(cfg.auth.audiences, vec!["https://api.characters.app"]);
        assert_eq!(cfg.database.sslmode, SslMode::Disable);
        assert_eq!(cfg.database.pool_size, 2);
        assert!(!cfg.auth.trust_gateway_claims);
        assert_eq!(cfg.log_format, LogFormat::Text);
    }

    #[test]
    fn gallery_trust_and_view_counting_are_configurable() {
        let cfg = config(&MINIMAL).unwrap();
        assert_eq!(cfg.gallery, GalleryConfig::default());
        assert_eq!(cfg.views, ViewsConfig::default());
        let mut pairs = MINIMAL.to_vec();
        pairs.extend([
            ("GALLERY_REPORT_THRESHOLD", "5"),
            ("GALLERY_REPORTER_FULL_WEIGHT_DAYS", "0"),
            ("GALLERY_UNVERIFIED_REPORT_PERCENT", "100"),
            ("GALLERY_VIEW_KEY", "0123456789abcdef0123456789abcdef"),
            ("GALLERY_VIEW_BATCH", "1"),
            ("GALLERY_VIEW_FLUSH_SECONDS", "0"),
        ]);
        let cfg = config(&pairs).unwrap();
        assert_eq!(cfg.gallery.report_threshold, 5);
        assert_eq!(cfg.gallery.reporter_full_weight_days, 0);
        assert_eq!(cfg.gallery.unverified_report_percent, 100);
        assert_eq!(cfg.views.batch, 1);
        assert_eq!(cfg.views.flush_after, Duration::ZERO);
        assert_eq!(
            cfg.views.key.as_deref(),
            Some(&b"0123456789abcdef0123456789abcdef"[..])
        );
        assert!(
            !format!("{:?}", cfg.views).contains("0123456789"),
            "the key is redacted"
        );
        for (name, value) in [
            ("GALLERY_VIEW_KEY", "too short"),
            ("GALLERY_UNVERIFIED_REPORT_PERCENT", "101"),
            ("GALLERY_VIEW_BATCH", "0"),
            ("GALLERY_REPORTER_FULL_WEIGHT_DAYS", "-1"),
        ] {
            let mut pairs = MINIMAL.to_vec();
            pairs.push((name, value));
            let err = config(&pairs).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn issuer_keeps_exactly_one_trailing_slash() {
        assert_eq!(
            normalise_issuer("https://t.auth0.com/").unwrap(),
            "https://t.auth0.com/"
        );
        assert_eq!(
            normalise_issuer("https://t.auth0.com").unwrap(),
            "https://t.auth0.com/"
        );
        assert!(normalise_issuer("ftp://t.auth0.com").is_err());
    }

    #[test]
    fn missing_and_invalid_values_name_the_variable() {
        let err = config(&MINIMAL[..2]).unwrap_err();
        assert!(err.to_string().contains("AUTH_AUDIENCE"));
        let mut pairs = MINIMAL.to_vec();
        pairs.push(("DATABASE_POOL_SIZE", "zero"));
        assert!(
            config(&pairs)
                .unwrap_err()
                .to_string()
                .contains("DATABASE_POOL_SIZE")
        );
        let mut pairs = MINIMAL.to_vec();
        pairs.push(("DATABASE_SSLMODE", "prefer"));
        assert!(
            config(&pairs)
                .unwrap_err()
                .to_string()
                .contains("DATABASE_SSLMODE")
        );
    }

    #[test]
    fn generator_servers_are_optional_urls_with_a_bounded_timeout() {
        let cfg = config(&MINIMAL).unwrap();
        assert_eq!(cfg.generator, GeneratorConfig::default());
        assert_eq!(cfg.generator.timeout, Duration::from_secs(120));

        let mut pairs = MINIMAL.to_vec();
        pairs.extend([
            ("GENERATOR_PRIMARY_URL", "http://gpu-1.internal:7860/"),
            (
                "GENERATOR_SECONDARY_URL",
                " https://user:pw@a1111.example.com/sd/ ",
            ),
            ("GENERATOR_TIMEOUT_SECONDS", "30"),
        ]);
        let cfg = config(&pairs).unwrap().generator;
        assert_eq!(
            cfg.primary_url.as_deref(),
            Some("http://gpu-1.internal:7860")
        );
        assert_eq!(
            cfg.secondary_url.as_deref(),
            Some("https://user:pw@a1111.example.com/sd")
        );
        assert_eq!(cfg.timeout, Duration::from_secs(30));
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("pw@"), "{debug}");
        assert!(debug.contains("user:***@"), "{debug}");

        for (name, value) in [
            ("GENERATOR_PRIMARY_URL", "gpu-1:7860"),
            ("GENERATOR_PRIMARY_URL", "ftp://gpu-1"),
            ("GENERATOR_SECONDARY_URL", "http://gpu/?token=1"),
            ("GENERATOR_TIMEOUT_SECONDS", "0"),
            ("GENERATOR_TIMEOUT_SECONDS", "901"),
            ("GENERATOR_TIMEOUT_SECONDS", "2m"),
        ] {
            let mut pairs = MINIMAL.to_vec();
            pairs.push((name, value));
            let err = config(&pairs).unwrap_err().to_string();
            assert!(err.contains(name), "{value}: {err}");
        }
    }

    #[test]
    fn generator_models_are_an_allow_list_of_version_checkpoint_pairs() {
        let cfg = config(&MINIMAL).unwrap().generator;
        assert!(cfg.models.is_empty());
        assert_eq!(cfg.progress_interval, Duration::from_millis(1000));

        let mut pairs = MINIMAL.to_vec();
        pairs.extend([
            (
                "GENERATOR_MODELS",
                " v1.0=sd_xl_base_1.0.safetensors, anime-v3 = animagine-xl-3.1.safetensors [1449e5b0b9],,odd_one=a=b ",
            ),
            ("GENERATOR_PROGRESS_INTERVAL_MS", "250"),
        ]);
        let cfg = config(&pairs).unwrap().generator;
        let expected: BTreeMap<String, String> = [
            ("v1.0", "sd_xl_base_1.0.safetensors"),
            ("anime-v3", "animagine-xl-3.1.safetensors [1449e5b0b9]"),
            ("odd_one", "a=b"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(cfg.models, expected);
        assert_eq!(cfg.progress_interval, Duration::from_millis(250));
        assert!(format!("{cfg:?}").contains("animagine"));

        // The longest version a character may have is accepted.
        let longest = format!("{}=x.safetensors", "v".repeat(32));
        let mut pairs = MINIMAL.to_vec();
        pairs.push(("GENERATOR_MODELS", &longest));
        assert_eq!(config(&pairs).unwrap().generator.models.len(), 1);

        let too_long = format!("{}=x.safetensors", "v".repeat(33));
        let long_title = format!("v1={}", "t".repeat(256));
        for (name, value) in [
            ("GENERATOR_MODELS", "sd_xl_base_1.0.safetensors"),
            ("GENERATOR_MODELS", "=sd_xl_base_1.0.safetensors"),
            ("GENERATOR_MODELS", "v1.0="),
            ("GENERATOR_MODELS", "v 1=x.safetensors"),
            ("GENERATOR_MODELS", "v1/2=x.safetensors"),
            ("GENERATOR_MODELS", too_long.as_str()),
            ("GENERATOR_MODELS", long_title.as_str()),
            ("GENERATOR_MODELS", "v1=a\tb"),
            ("GENERATOR_MODELS", "v1=a.safetensors,v1=b.safetensors"),
            ("GENERATOR_PROGRESS_INTERVAL_MS", "99"),
            ("GENERATOR_PROGRESS_INTERVAL_MS", "60001"),
            ("GENERATOR_PROGRESS_INTERVAL_MS", "1s"),
        ] {
            let mut pairs = MINIMAL.to_vec();
            pairs.push((name, value));
            let err = config(&pairs).unwrap_err().to_string();
            assert!(err.contains(name), "{value}: {err}");
        }
        // Bounds are inclusive.
        for value in ["100", "60000"] {
            let mut pairs = MINIMAL.to_vec();
            pairs.push(("GENERATOR_PROGRESS_INTERVAL_MS", value));
            assert!(config(&pairs).is_ok(), "{value}");
        }
    }

    #[test]
    fn aws_adapters_are_chosen_by_their_variables() {
        let cfg = config(&MINIMAL).unwrap();
        assert_eq!(cfg.storage, StorageConfig::default());
        assert_eq!(cfg.storage.url_ttl, Duration::from_secs(300));
        assert_eq!(cfg.queue.job_queue_url, None);
        assert_eq!(cfg.worker, WorkerConfig::default());
        assert_eq!(cfg.worker.job_timeout, Duration::from_secs(600));
        assert_eq!(cfg.worker.max_attempts, 3);

        let mut pairs = MINIMAL.to_vec();
        pairs.extend([
            ("STORAGE_BUCKET", "characters-images-prod"),
            ("STORAGE_URL_TTL_SECONDS", "900"),
            (
                "JOB_QUEUE_URL",
                "https://sqs.eu-west-1.amazonaws.com/123456789012/generation-jobs",
            ),
            ("WORKER_JOB_TIMEOUT_SECONDS", "300"),
            ("WORKER_MAX_ATTEMPTS", "5"),
            ("WORKER_RETRY_BASE_SECONDS", "10"),
            ("WORKER_RETRY_MAX_SECONDS", "25"),
            ("JOB_REDELIVERY_AFTER_SECONDS", "7200"),
            ("JOB_MAX_REDELIVERIES", "0"),
        ]);
        let cfg = config(&pairs).unwrap();
        assert_eq!(
            cfg.storage.bucket.as_deref(),
            Some("characters-images-prod")
        );
        assert_eq!(cfg.storage.url_ttl, Duration::from_secs(900));
        assert!(cfg.queue.job_queue_url.is_some());
        assert_eq!(cfg.worker.job_timeout, Duration::from_secs(300));
        assert_eq!(cfg.worker.max_attempts, 5);
        assert_eq!(
            [1, 2, 3, 9].map(|attempt| cfg.worker.retry_delay(attempt).as_secs()),
            [10, 20, 25, 25],
            "30 s x attempt by default, here 10 s, capped at the maximum"
        );
        assert_eq!(cfg.queue.redelivery_after, Duration::from_secs(7200));
        assert_eq!(cfg.queue.max_redeliveries, 0);

        for (name, value) in [
            ("STORAGE_BUCKET", "Images_Bucket"),
            ("STORAGE_BUCKET", "s3://images"),
            ("STORAGE_URL_TTL_SECONDS", "0"),
            ("STORAGE_URL_TTL_SECONDS", "604801"),
            ("JOB_QUEUE_URL", "generation-jobs"),
            ("WORKER_JOB_TIMEOUT_SECONDS", "5"),
            ("WORKER_MAX_ATTEMPTS", "0"),
            ("WORKER_RETRY_BASE_SECONDS", "0"),
            ("WORKER_RETRY_MAX_SECONDS", "43201"),
            ("JOB_REDELIVERY_AFTER_SECONDS", "59"),
            ("JOB_MAX_REDELIVERIES", "11"),
        ] {
            let mut pairs = MINIMAL.to_vec();
            pairs.push((name, value));
            let err = config(&pairs).unwrap_err().to_string();
            assert!(err.contains(name), "{value}: {err}");
        }
    }

    #[test]
    fn export_threshold_defaults_to_5_mib_and_stays_under_the_lambda_limit() {
        assert_eq!(
            config(&MINIMAL).unwrap().gdpr.export_inline_max_bytes,
            5 * 1024 * 1024
        );
        let mut pairs = MINIMAL.to_vec();
        pairs.push(("EXPORT_INLINE_MAX_BYTES", "0"));
        assert_eq!(config(&pairs).unwrap().gdpr.export_inline_max_bytes, 0);
        for value in ["6000000", "-1", "5MB"] {
            let mut pairs = MINIMAL.to_vec();
            pairs.push(("EXPORT_INLINE_MAX_BYTES", value));
            let err = config(&pairs).unwrap_err().to_string();
            assert!(err.contains("EXPORT_INLINE_MAX_BYTES"), "{value}: {err}");
        }
    }

    #[test]
    fn activity_log_retention_defaults_to_180_days_and_is_bounded() {
        assert_eq!(config(&MINIMAL).unwrap().retention.activity_log_days, 180);
        let mut pairs = MINIMAL.to_vec();
        pairs.push(("ACTIVITY_LOG_RETENTION_DAYS", "30"));
        assert_eq!(config(&pairs).unwrap().retention.activity_log_days, 30);
        for value in ["0", "3651", "six months"] {
            let mut pairs = MINIMAL.to_vec();
            pairs.push(("ACTIVITY_LOG_RETENTION_DAYS", value));
            let err = config(&pairs).unwrap_err().to_string();
            assert!(
                err.contains("ACTIVITY_LOG_RETENTION_DAYS"),
                "{value}: {err}"
            );
        }
    }

    #[test]
    fn lambda_environment_selects_json_logs() {
        let mut pairs = MINIMAL.to_vec();
        pairs.push(("AWS_LAMBDA_FUNCTION_NAME", "auth"));
        assert_eq!(config(&pairs).unwrap().log_format, LogFormat::Json);
    }

    #[test]
    fn log_format_is_log_format_then_lambdas_control_then_where_it_runs() {
        let format = |extra: &[(&'static str, &'static str)]| {
            let mut pairs = MINIMAL.to_vec();
            pairs.extend_from_slice(extra);
            config(&pairs).unwrap().log_format
        };
        let lambda = ("AWS_LAMBDA_FUNCTION_NAME", "auth");
        assert_eq!(
            format(&[lambda, ("AWS_LAMBDA_LOG_FORMAT", "Text")]),
            LogFormat::Text
        );
        assert_eq!(
            format(&[lambda, ("AWS_LAMBDA_LOG_FORMAT", "JSON")]),
            LogFormat::Json
        );
        assert_eq!(
            format(&[("AWS_LAMBDA_LOG_FORMAT", "JSON")]),
            LogFormat::Json
        );
        assert_eq!(
            format(&[
                lambda,
                ("AWS_LAMBDA_LOG_FORMAT", "JSON"),
                ("LOG_FORMAT", "text")
            ]),
            LogFormat::Text
        );
        assert_eq!(
            format(&[("AWS_LAMBDA_LOG_FORMAT", "Text"), ("LOG_FORMAT", "json")]),
            LogFormat::Json
        );
        // An unknown value is Lambda's to have set: the default stays.
        assert_eq!(
            format(&[lambda, ("AWS_LAMBDA_LOG_FORMAT", "xml")]),
            LogFormat::Json
        );
        assert_eq!(format(&[("AWS_LAMBDA_LOG_FORMAT", "xml")]), LogFormat::Text);
    }

    #[test]
    fn metrics_are_configured_with_the_rest() {
        assert!(!config(&MINIMAL).unwrap().metrics.enabled);
        let mut pairs = MINIMAL.to_vec();
        pairs.push(("METRICS", "sometimes"));
        assert!(config(&pairs).unwrap_err().to_string().contains("METRICS"));
    }
}
