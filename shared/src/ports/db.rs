//! PostgreSQL access: the connection pool and the schema migrations.
//!
//! One small pool per process (a Lambda instance serves one request at a
//! time), `RecyclingMethod::Verified` so that a connection the database or an
//! RDS Proxy closed while the instance was frozen is replaced, not handed out.

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::kernel::config::{DatabaseConfig, SslMode};

pub use deadpool_postgres::{Object as PooledClient, Pool as DbPool};

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// Session-level advisory lock key held while migrating, so two processes
/// starting together (two cold starts, the local stack and a test) migrate one
/// after the other instead of racing on refinery's history table.
const MIGRATION_LOCK_KEY: i64 = 0x6368_6172_6d69_6772; // "charmigr"

#[derive(Debug, thiserror::Error)]
pub enum DbSetupError {
    #[error("invalid DATABASE_URL: {0}")]
    Url(#[from] tokio_postgres::Error),
    #[error("cannot read DATABASE_SSL_ROOT_CERT {path}: {reason}")]
    RootCert { path: String, reason: String },
    #[error("cannot build the TLS configuration: {0}")]
    Tls(String),
    #[error("cannot build the pool: {0}")]
    Build(#[from] deadpool_postgres::BuildError),
    #[error("cannot get a connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("migration failed: {0}")]
    Migration(#[from] refinery::Error),
}

/// Builds the pool. No connection is opened until the first request, so a cold
/// start pays nothing for a function that never touches the database.
pub fn create_pool(cfg: &DatabaseConfig) -> Result<Pool, DbSetupError> {
    let mut pg_config: tokio_postgres::Config = cfg.url.parse()?;
    pg_config.connect_timeout(cfg.connect_timeout);
    if pg_config.get_application_name().is_none() {
        pg_config.application_name(
            std::env::var("AWS_LAMBDA_FUNCTION_NAME")
                .as_deref()
                .unwrap_or("character-platform"),
        );
    }
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Verified,
    };
    let manager = match cfg.sslmode {
        SslMode::Disable => Manager::from_config(pg_config, NoTls, manager_config),
        // A root file of the operator's is read now, so a bad one fails init
        // with its name. The compiled-in roots (webpki and ~115 RDS CAs) are
        // parsed on the first connection instead: a cold start that answers
        // without the database does not pay for them.
        SslMode::Require if cfg.ssl_root_cert.is_some() => {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(rustls_client_config(cfg)?);
            Manager::from_config(pg_config, tls, manager_config)
        }
        SslMode::Require => {
            Manager::from_connect(pg_config, LazyRustlsConnect::default(), manager_config)
        }
    };
    Ok(Pool::builder(manager)
        .max_size(cfg.pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(cfg.connect_timeout))
        .create_timeout(Some(cfg.connect_timeout))
        .recycle_timeout(Some(cfg.connect_timeout))
        .build()?)
}

/// Connects over TLS with the compiled-in roots, built on first use.
#[derive(Default)]
struct LazyRustlsConnect {
    tls: std::sync::OnceLock<tokio_postgres_rustls::MakeRustlsConnect>,
}

impl deadpool_postgres::Connect for LazyRustlsConnect {
    fn connect(
        &self,
        pg_config: &tokio_postgres::Config,
    ) -> futures::future::BoxFuture<
        '_,
        Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
    > {
        let tls = self
            .tls
            .get_or_init(|| {
                let config = rustls_client_config(&DatabaseConfig::for_url(""))
                    .expect("the compiled-in roots parse (tested in shared::ports::db)");
                tokio_postgres_rustls::MakeRustlsConnect::new(config)
            })
            .clone();
        let pg_config = pg_config.clone();
        Box::pin(async move {
            let (client, connection) = pg_config.connect(tls).await?;
            let task = tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "database connection closed with an error");
                }
            });
            Ok((client, task))
        })
    }
}

/// The Amazon RDS certificate authorities (AWS's global bundle, refreshed by
/// `scripts/update-rds-ca-bundle`), compiled in: a direct RDS or Aurora
/// endpoint presents a certificate from one of these, which the webpki roots
/// do not include. (RDS Proxy presents an Amazon Trust Services one, which
/// they do.)
pub const RDS_CA_BUNDLE: &[u8] = include_bytes!("../../certs/rds-global-bundle.pem");

/// Adds every certificate of a PEM bundle to `roots`; `source` names it in errors.
fn add_pem_roots(
    roots: &mut rustls::RootCertStore,
    pem: &[u8],
    source: &str,
) -> Result<usize, DbSetupError> {
    let root_error = |reason: String| DbSetupError::RootCert {
        path: source.to_string(),
        reason,
    };
    let mut added = 0;
    let mut reader = std::io::BufReader::new(pem);
    for cert in rustls_pemfile::certs(&mut reader) {
        let cert = cert.map_err(|e| root_error(e.to_string()))?;
        roots.add(cert).map_err(|e| root_error(e.to_string()))?;
        added += 1;
    }
    Ok(added)
}

/// The roots a `require` connection trusts: the webpki roots, the RDS CA
/// bundle and `DATABASE_SSL_ROOT_CERT` when set.
pub fn database_roots(cfg: &DatabaseConfig) -> Result<rustls::RootCertStore, DbSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    add_pem_roots(&mut roots, RDS_CA_BUNDLE, "the compiled-in RDS CA bundle")?;
    if let Some(path) = &cfg.ssl_root_cert {
        let shown = path.display().to_string();
        let pem = std::fs::read(path).map_err(|e| DbSetupError::RootCert {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        add_pem_roots(&mut roots, &pem, &shown)?;
    }
    Ok(roots)
}

fn rustls_client_config(cfg: &DatabaseConfig) -> Result<rustls::ClientConfig, DbSetupError> {
    let roots = database_roots(cfg)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DbSetupError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// What a migration run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Names of the migrations applied by this run (`V1__initial_schema`...).
    pub applied: Vec<String>,
}

/// Applies every embedded migration not yet recorded in
/// `refinery_schema_history`. Running it again is a no-op.
pub async fn migrate(pool: &Pool) -> Result<MigrationReport, DbSetupError> {
    let mut conn = pool.get().await?;
    let client: &mut tokio_postgres::Client = &mut conn;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    let outcome = embedded::migrations::runner().run_async(client).await;
    // Unlock before handing the connection back to the pool, whatever happened.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    let report = outcome?;
    unlocked?;
    Ok(MigrationReport {
        applied: report
            .applied_migrations()
            .iter()
            .map(|m| format!("V{}__{}", m.version(), m.name()))
            .collect(),
    })
}

/// Why the runtime login cannot be provisioned.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(
        "DATABASE_URL and DATABASE_MIGRATION_URL log in as the same role `{0}`: the runtime login must not own the schema"
    )]
    SameLogin(String),
    #[error("DATABASE_URL names no user and password to provision")]
    NoCredentials,
    #[error(transparent)]
    Setup(#[from] DbSetupError),
    #[error("cannot provision the runtime login: {0}")]
    Sql(#[from] tokio_postgres::Error),
}

/// What [`migrate_and_provision`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployReport {
    pub applied: Vec<String>,
    /// The runtime login made a member of `app_service` (created, or its
    /// password set to the one in `DATABASE_URL`).
    pub runtime_login: String,
}

/// The deploy step: as the migration login (`cfg.migration_url`, the schema
/// owner), applies the migrations, then creates the runtime login named in
/// `cfg.url` (or sets its password to the one given there, which is how a
/// rotated password reaches the database) and makes it a member of
/// `app_service`. Both happen under the migration lock, so two runs at once
/// take turns.
pub async fn migrate_and_provision(cfg: &DatabaseConfig) -> Result<DeployReport, ProvisionError> {
    let owner_cfg = cfg.migration().ok_or(ProvisionError::NoCredentials)?;
    let runtime: tokio_postgres::Config = cfg.url.parse().map_err(DbSetupError::from)?;
    let owner: tokio_postgres::Config = owner_cfg.url.parse().map_err(DbSetupError::from)?;
    if let Some(user) = runtime
        .get_user()
        .filter(|user| owner.get_user() == Some(*user))
    {
        return Err(ProvisionError::SameLogin(user.to_string()));
    }
    let (Some(user), Some(password)) = (runtime.get_user(), runtime.get_password()) else {
        return Err(ProvisionError::NoCredentials);
    };
    let password =
        String::from_utf8(password.to_vec()).map_err(|_| ProvisionError::NoCredentials)?;
    let pool = create_pool(&owner_cfg)?;
    let report = migrate(&pool).await?;
    let conn = pool.get().await.map_err(DbSetupError::from)?;
    conn.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    let provisioned = provision_runtime_login(&conn, user, &password).await;
    let unlocked = conn
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    provisioned?;
    unlocked?;
    drop(conn);
    pool.close();
    Ok(DeployReport {
        applied: report.applied,
        runtime_login: user.to_string(),
    })
}

/// Creates the login `user` with `password` (or sets the password of an
/// existing one) and grants it `app_service`. The statements are composed by
/// the server (`format` with `%I`/`%L`), so names and passwords are quoted by
/// PostgreSQL's own rules.
pub async fn provision_runtime_login(
    client: &tokio_postgres::Client,
    user: &str,
    password: &str,
) -> Result<(), tokio_postgres::Error> {
    let statement: String = client
        .query_one(
            "SELECT format(CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1) \
                      THEN 'ALTER ROLE %I WITH LOGIN PASSWORD %L' \
                      ELSE 'CREATE ROLE %I WITH LOGIN PASSWORD %L' END, $1::text, $2::text) \
             || format('; GRANT app_service TO %I', $1::text)",
            &[&user, &password],
        )
        .await?
        .try_get(0)?;
    client.batch_execute(&statement).await
}

/// A digest of every embedded migration's name and SQL: equal digests mean
/// equal schemas (tests key their template database on it).
pub fn migrations_fingerprint() -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut migrations: Vec<_> = embedded::migrations::runner().get_migrations().to_vec();
    migrations.sort_by_key(|m| m.version());
    for migration in &migrations {
        hasher.update(migration.name().as_bytes());
        hasher.update(migration.sql().unwrap_or_default().as_bytes());
    }
    hasher.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Names of all embedded migrations, in order.
pub fn embedded_migrations() -> Vec<String> {
    let mut migrations: Vec<_> = embedded::migrations::runner().get_migrations().to_vec();
    migrations.sort_by_key(|m| m.version());
    migrations
        .iter()
        .map(|m| format!("V{}__{}", m.version(), m.name()))
        .collect()
}

/// Begins a transaction for an HTTP request: its statements run as `app_api`,
/// the role row-level security applies to, with `app.user_id` set to the
/// caller's `users.id` (`None` for anonymous callers). Both settings are
/// transaction-local, so a pooled connection never carries them to the next
/// request. This is the second wall behind each handler's own checks.
pub async fn begin_as<'a>(
    client: &'a mut tokio_postgres::Client,
    user_id: Option<&str>,
) -> Result<tokio_postgres::Transaction<'a>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    act_as(&tx, user_id).await?;
    Ok(tx)
}

/// Switches the rest of a transaction that began as the system role to the
/// API role for `user_id` (as [`begin_as`] does from the start), for requests
/// whose system-side work must commit atomically with their user-side work.
pub async fn act_as(
    tx: &tokio_postgres::Transaction<'_>,
    user_id: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "SELECT set_config('role', 'app_api', true), set_config('app.user_id', $1, true)",
        &[&user_id.unwrap_or("")],
    )
    .await?;
    Ok(())
}

/// Switches the rest of a transaction back from the API role to the system
/// role (the session's own), for the system-side work a request must commit
/// with its user-side work once the latter has passed row-level security
/// (filing a report, then weighing it: a column `app_api` may not write).
pub async fn act_as_system(
    tx: &tokio_postgres::Transaction<'_>,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "SELECT set_config('role', 'none', true), set_config('app.user_id', '', true)",
        &[],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The compiled-in RDS bundle parses whole (the lazy TLS connector relies
    /// on it) and adds its authorities to the webpki roots; an operator's file
    /// adds to both, and an unreadable one names itself.
    #[test]
    fn database_roots_are_webpki_plus_the_rds_bundle_plus_the_operators_file() {
        let webpki = webpki_roots::TLS_SERVER_ROOTS.len();
        let rds = RDS_CA_BUNDLE
            .windows(b"BEGIN CERTIFICATE".len())
            .filter(|w| *w == b"BEGIN CERTIFICATE")
            .count();
        assert!(rds >= 100, "{rds} RDS authorities");
        let roots = database_roots(&DatabaseConfig::for_url("")).unwrap();
        assert_eq!(roots.len(), webpki + rds);
        assert!(rustls_client_config(&DatabaseConfig::for_url("")).is_ok());

        let dir = std::env::temp_dir().join(format!("roots-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("extra.pem");
        let first_pem = std::str::from_utf8(RDS_CA_BUNDLE)
            .unwrap()
            .split_inclusive("-----END CERTIFICATE-----")
            .next()
            .unwrap()
            .to_string();
        std::fs::write(&file, first_pem).unwrap();
        let with_file = DatabaseConfig {
            ssl_root_cert: Some(file.clone()),
            ..DatabaseConfig::for_url("")
        };
        assert_eq!(database_roots(&with_file).unwrap().len(), webpki + rds + 1);
        let missing = DatabaseConfig {
            ssl_root_cert: Some(dir.join("missing.pem")),
            ..DatabaseConfig::for_url("")
        };
        let error = database_roots(&missing).unwrap_err().to_string();
        assert!(error.contains("missing.pem"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
