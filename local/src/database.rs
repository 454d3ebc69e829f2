//! Finding a PostgreSQL server for the local stack, with no setup by hand:
//! `DATABASE_URL` if set; else the machine's server on 127.0.0.1:5432; else a
//! private cluster under `.local/` made with the system's `initdb`/`pg_ctl`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio_postgres::NoTls;

/// The database the local stack keeps its data in.
pub const LOCAL_DATABASE: &str = "character_platform";
/// The machine's own server, tried when `DATABASE_URL` is unset.
pub const MACHINE_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Port of the private cluster, away from the standard one.
pub const PRIVATE_PORT: u16 = 54329;

/// Where the local stack's data lives.
#[derive(Debug, Clone)]
pub struct ResolvedDatabase {
    /// Maintenance connection (database `postgres`) on the chosen server.
    pub admin_url: String,
    /// The local stack's own database on it.
    pub url: String,
    /// Set when this process started a private cluster.
    pub private_cluster: Option<PrivateCluster>,
}

/// `DATABASE_URL` wins; otherwise a server is found or started and the
/// `character_platform` database is created on it if missing.
pub async fn resolve(data_dir: &Path) -> anyhow::Result<ResolvedDatabase> {
    if let Ok(url) = std::env::var("DATABASE_URL")
        && !url.trim().is_empty()
    {
        return Ok(ResolvedDatabase {
            admin_url: url.clone(),
            url,
            private_cluster: None,
        });
    }
    let (admin_url, private_cluster) = if answers(MACHINE_SERVER).await {
        (MACHINE_SERVER.to_string(), None)
    } else {
        let cluster = PrivateCluster::new(data_dir.join("pgdata"), PRIVATE_PORT);
        cluster.start().await?;
        (cluster.admin_url(), Some(cluster))
    };
    ensure_database(&admin_url, LOCAL_DATABASE).await?;
    Ok(ResolvedDatabase {
        url: with_database(&admin_url, LOCAL_DATABASE),
        admin_url,
        private_cluster,
    })
}

/// True when a server accepts a connection at `url` within two seconds.
pub async fn answers(url: &str) -> bool {
    let Ok(mut config) = url.parse::<tokio_postgres::Config>() else {
        return false;
    };
    config.connect_timeout(Duration::from_secs(2));
    match config.connect(NoTls).await {
        Ok((client, connection)) => {
            drop(client);
            let _ = connection.await;
            true
        }
        Err(_) => false,
    }
}

/// Creates `name` on the server at `admin_url` unless it exists.
pub async fn ensure_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let (client, connection) = tokio_postgres::connect(admin_url, NoTls)
        .await
        .with_context(|| format!("connecting to {}", redact(admin_url)))?;
    let connection = tokio::spawn(connection);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        // Identifiers cannot be bound as parameters; `name` is one of ours, quoted.
        let created = client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await;
        if let Err(e) = created
            && e.code() != Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE)
        {
            return Err(e.into());
        }
    }
    drop(client);
    let _ = connection.await;
    Ok(())
}

/// `url` with its database name replaced.
pub fn with_database(url: &str, database: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            parsed.set_path(&format!("/{database}"));
            parsed.to_string()
        }
        Err(_) => url.to_string(),
    }
}

/// A connection URL with any password replaced, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// A PostgreSQL cluster owned by the project, under its own data directory.
#[derive(Debug, Clone)]
pub struct PrivateCluster {
    data_dir: PathBuf,
    port: u16,
}

impl PrivateCluster {
    pub fn new(data_dir: PathBuf, port: u16) -> Self {
        Self { data_dir, port }
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Initialises the cluster if needed and starts it unless it already runs.
    pub async fn start(&self) -> anyhow::Result<()> {
        if answers(&self.admin_url()).await {
            return Ok(());
        }
        let bin = postgres_bin_dir().context(
            "no PostgreSQL server answers on 127.0.0.1:5432 and initdb/pg_ctl were not found; \
             install PostgreSQL's server binaries or set DATABASE_URL",
        )?;
        if !self.data_dir.join("PG_VERSION").exists() {
            std::fs::create_dir_all(&self.data_dir)
                .with_context(|| format!("creating {}", self.data_dir.display()))?;
            self.hand_to_postgres_user_if_root()?;
            run(self.as_cluster_owner(bin.join("initdb")).args([
                "-D",
                &self.data_dir.to_string_lossy(),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ]))
            .context("initdb")?;
            let conf = format!(
                "\n# Written by the local stack.\nport = {}\nlisten_addresses = '127.0.0.1'\n\
                 unix_socket_directories = ''\nfsync = off\n",
                self.port
            );
            let conf_path = self.data_dir.join("postgresql.conf");
            let mut existing =
                std::fs::read_to_string(&conf_path).context("reading postgresql.conf")?;
            existing.push_str(&conf);
            std::fs::write(&conf_path, existing).context("writing postgresql.conf")?;
        }
        let log = self.data_dir.join("server.log");
        run(self.as_cluster_owner(bin.join("pg_ctl")).args([
            "-D",
            &self.data_dir.to_string_lossy(),
            "-l",
            &log.to_string_lossy(),
            "-w",
            "-t",
            "60",
            "start",
        ]))
        .with_context(|| format!("pg_ctl start (see {})", log.display()))?;
        if !answers(&self.admin_url()).await {
            bail!(
                "the private cluster started but does not answer on port {}",
                self.port
            );
        }
        Ok(())
    }

    pub fn stop(&self) -> anyhow::Result<()> {
        self.stop_with("fast")
    }

    /// Stops the server the way a crash would (`pg_ctl -m immediate`): every
    /// connection is cut, nothing is shut down cleanly, and the next start
    /// recovers from the write-ahead log. For outage tests.
    pub fn crash(&self) -> anyhow::Result<()> {
        self.stop_with("immediate")
    }

    fn stop_with(&self, mode: &str) -> anyhow::Result<()> {
        let bin = postgres_bin_dir().context("pg_ctl not found")?;
        run(self.as_cluster_owner(bin.join("pg_ctl")).args([
            "-D",
            &self.data_dir.to_string_lossy(),
            "-m",
            mode,
            "-w",
            "stop",
        ]))
    }

    /// PostgreSQL refuses to run as root; as root, the cluster belongs to the
    /// `postgres` system user and its commands run through `runuser`.
    fn as_cluster_owner(&self, program: PathBuf) -> Command {
        if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn hand_to_postgres_user_if_root(&self) -> anyhow::Result<()> {
        if is_root() {
            run(Command::new("chown").args(["-R", "postgres:", &self.data_dir.to_string_lossy()]))
                .context("handing the data directory to the postgres user")?;
            run(Command::new("chmod").args(["700", &self.data_dir.to_string_lossy()]))?;
        }
        Ok(())
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {:?}", command.get_program()))?;
    if !output.status.success() {
        bail!(
            "{:?} failed: {}{}",
            command.get_program(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The directory holding `initdb` and `pg_ctl`: on `PATH`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian keeps them off `PATH`).
pub fn postgres_bin_dir() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}
