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
        data_dir: root.clone(),
        signing_key: Some(testkit::signing_key()),
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
