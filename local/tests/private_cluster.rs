//! The fallback that lets a fresh machine run the platform without a database
//! server set up by hand: a private cluster made with the system's
//! `initdb`/`pg_ctl`, which the local stack can migrate and serve from.

use local::database::{self, PrivateCluster};

#[tokio::test]
async fn a_private_cluster_starts_serves_the_stack_and_stops() {
    let root = std::env::temp_dir().join(format!("charplat-cluster-{}", uuid_like()));
    std::fs::create_dir_all(&root).unwrap();
    let port = free_port();
    let cluster = PrivateCluster::new(root.join("pgdata"), port);
    cluster.start().await.expect("start the private cluster");
    // Starting again is a no-op on a running cluster.
    cluster.start().await.expect("start is idempotent");
    assert!(database::answers(&cluster.admin_url()).await);

    database::ensure_database(&cluster.admin_url(), "character_platform")
        .await
        .unwrap();
    let url = database::with_database(&cluster.admin_url(), "character_platform");
    let stack = local::LocalStack::start(local::LocalOptions {
        port: 0,
        database_url: Some(url),
        migration_url: None,
        data_dir: root.clone(),
        signing_key: Some(testkit::signing_key()),
        background_tasks: false,
    })
    .await
    .expect("the stack migrates and serves from the private cluster");
    let token = stack
        .issuer
        .mint("ann@example.com", &[], std::time::Duration::from_secs(60))
        .unwrap();
    let reply = reqwest::Client::new()
        .post(format!("{}/api/v1/auth/session", stack.base_url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 201);
    stack.stop().await.unwrap();

    cluster.stop().expect("stop the private cluster");
    assert!(!database::answers(&cluster.admin_url()).await);
    let _ = std::fs::remove_dir_all(&root);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// `DATABASE_SSLMODE=require` connects over TLS with rustls, verifying the
/// server against `DATABASE_SSL_ROOT_CERT` (as with the RDS CA bundle), and
/// refuses a server whose certificate it cannot verify.
#[tokio::test]
async fn require_ssl_connects_over_verified_tls() {
    let root = std::env::temp_dir().join(format!("charplat-tls-{}", uuid_like()));
    std::fs::create_dir_all(&root).unwrap();
    let certs = root.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&certs)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        certs.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    ]);

    let port = free_port();
    let cluster = PrivateCluster::new(root.join("pgdata"), port);
    cluster.start().await.unwrap();
    // The key must belong to the server's user and be private to it.
    let owner = if is_root() { "postgres" } else { "" };
    if !owner.is_empty() {
        let status = std::process::Command::new("chown")
            .args(["-R", "postgres:", &certs.to_string_lossy()])
            .status()
            .unwrap();
        assert!(status.success());
    }
    std::fs::set_permissions(
        certs.join("server.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let admin = testkit::connect(&cluster.admin_url()).await;
    for setting in [
        format!("ssl_cert_file = '{}'", certs.join("server.crt").display()),
        format!("ssl_key_file = '{}'", certs.join("server.key").display()),
        "ssl = on".to_string(),
    ] {
        admin
            .batch_execute(&format!("ALTER SYSTEM SET {setting}"))
            .await
            .unwrap();
    }
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    drop(admin);

    let config =
        |sslmode, root_cert: Option<std::path::PathBuf>| shared::kernel::config::DatabaseConfig {
            migration_url: None,
            url: format!("postgres://postgres@localhost:{port}/postgres"),
            sslmode,
            ssl_root_cert: root_cert,
            pool_size: 1,
            connect_timeout: std::time::Duration::from_secs(5),
        };
    let verified = shared::ports::db::create_pool(&config(
        shared::kernel::config::SslMode::Require,
        Some(certs.join("ca.crt")),
    ))
    .unwrap();
    // The server turns TLS on once the postmaster has reloaded its
    // configuration, which pg_reload_conf() only signals: wait for that, not
    // for a fixed time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let client = loop {
        match verified.get().await {
            Ok(client) => break client,
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::debug!("TLS not on yet: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("TLS connection with the CA configured: {e}"),
        }
    };
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the connection must be encrypted");
    drop(client);

    // Without the file, the compiled-in roots (webpki and the RDS CAs, built
    // on first use) do not know the private CA: the handshake refuses it.
    let unverified =
        shared::ports::db::create_pool(&config(shared::kernel::config::SslMode::Require, None))
            .unwrap();
    let refused = unverified
        .get()
        .await
        .expect_err("an unknown CA must be refused");
    let mut refused_chain = refused.to_string();
    let mut source = std::error::Error::source(&refused);
    while let Some(cause) = source {
        refused_chain.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    let refused = refused_chain;
    assert!(
        refused.contains("certificate") || refused.contains("UnknownIssuer"),
        "{refused}"
    );

    cluster.stop().unwrap();
    let _ = std::fs::remove_dir_all(&root);
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
