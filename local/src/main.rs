//! `cargo run -p local`: the whole platform on 127.0.0.1:$PORT (default 3000).
//!
//! Subcommands:
//! - `migrate`: apply migrations to the database (DATABASE_URL, else the one
//!   the local stack would use) and exit. With DATABASE_MIGRATION_URL, that
//!   login (the schema owner) migrates and DATABASE_URL's login is provisioned
//!   as the runtime login (a member of app_service), as on AWS.
//! - `database-url [--admin]`: make sure a server answers (starting the
//!   private cluster if needed) and print a connection URL; the test script
//!   uses it.
//! - `new-database NAME`: make sure a server answers, create database NAME on
//!   it (if missing) and print its URL; `scripts/fuzz` serves from one.
//! - `openapi`: print the OpenAPI document (`shared::runtime::openapi::json()`), which
//!   is committed as `openapi.json`: `cargo run -p local -- openapi > openapi.json`.

use anyhow::Context;
use local::{LocalOptions, LocalStack, database};
use shared::kernel::config::{DatabaseConfig, LogFormat, SslMode};

const USAGE: &str = "\
usage: local [COMMAND]

The whole character platform on one machine: every function's routes on
127.0.0.1:$PORT (default 3000), the worker and the scheduler in-process, a
local identity provider (POST /dev/token), files under $LOCAL_DATA_DIR
(default .local), PostgreSQL at $DATABASE_URL, else the machine's server on
127.0.0.1:5432, else a private cluster under .local/pgdata.

commands:
  serve                 run the platform until Ctrl-C (the default)
  migrate               apply the migrations to the database and exit (as
                        $DATABASE_MIGRATION_URL when set, which then also
                        makes $DATABASE_URL's login the runtime login)
  database-url [--admin]
                        make sure a server answers; print a connection URL
  new-database NAME     create database NAME on that server; print its URL
  openapi               print the OpenAPI document (committed as openapi.json)
  help, --help, -h      print this and exit
";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if matches!(
        std::env::args().nth(1).as_deref(),
        Some("help" | "--help" | "-h")
    ) {
        print!("{USAGE}");
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("openapi") {
        // Nothing but the document on stdout: it is redirected into openapi.json.
        print!("{}", shared::runtime::openapi::json());
        return Ok(());
    }
    shared::kernel::telemetry::init(LogFormat::Text);
    let options = LocalOptions::from_env()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("serve") => serve(options).await,
        Some("migrate") => migrate(options).await,
        Some("database-url") => {
            let resolved = database::resolve(&options.data_dir).await?;
            let admin = args.iter().any(|a| a == "--admin");
            println!(
                "{}",
                if admin {
                    resolved.admin_url
                } else {
                    resolved.url
                }
            );
            Ok(())
        }
        Some("new-database") => {
            let name = args
                .get(1)
                .filter(|n| {
                    !n.is_empty()
                        && n.len() <= 63
                        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                })
                .context("new-database needs a name of 1 to 63 letters, digits or _")?;
            let resolved = database::resolve(&options.data_dir).await?;
            database::ensure_database(&resolved.admin_url, name).await?;
            println!("{}", database::with_database(&resolved.admin_url, name));
            Ok(())
        }
        Some(other) => {
            anyhow::bail!("unknown command `{other}`\n\n{USAGE}")
        }
    }
}

async fn serve(options: LocalOptions) -> anyhow::Result<()> {
    let stack = LocalStack::start(options).await?;
    tracing::info!(
        url = %stack.base_url,
        database = %database::redact(&stack.database.url),
        "local stack ready: mint a token with POST {}/dev/token",
        stack.base_url
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    tracing::info!("shutting down");
    let cluster = stack.database.private_cluster.clone();
    stack.stop().await?;
    if let Some(cluster) = cluster {
        cluster.stop()?;
    }
    Ok(())
}

async fn migrate(options: LocalOptions) -> anyhow::Result<()> {
    let url = match options.database_url {
        Some(url) => url,
        None => database::resolve(&options.data_dir).await?.url,
    };
    let config = DatabaseConfig {
        migration_url: options.migration_url.clone(),
        url: url.clone(),
        sslmode: match std::env::var("DATABASE_SSLMODE").as_deref() {
            Ok("require") => SslMode::Require,
            _ => SslMode::Disable,
        },
        ssl_root_cert: std::env::var_os("DATABASE_SSL_ROOT_CERT").map(Into::into),
        pool_size: 1,
        connect_timeout: std::time::Duration::from_secs(10),
    };
    // With DATABASE_MIGRATION_URL, the schema owner migrates and provisions
    // DATABASE_URL's login as the runtime login (what the scheduler's
    // `migrate` task does on AWS).
    if config.migration_url.is_some() {
        let report = shared::ports::db::migrate_and_provision(&config).await?;
        println!(
            "{}: applied {}; runtime login `{}` provisioned",
            database::redact(&url),
            if report.applied.is_empty() {
                "nothing new".to_string()
            } else {
                report.applied.join(", ")
            },
            report.runtime_login
        );
        return Ok(());
    }
    let pool = shared::ports::db::create_pool(&config)?;
    let report = shared::ports::db::migrate(&pool).await?;
    if report.applied.is_empty() {
        println!("{}: already up to date", database::redact(&url));
    } else {
        println!(
            "{}: applied {}",
            database::redact(&url),
            report.applied.join(", ")
        );
    }
    Ok(())
}
