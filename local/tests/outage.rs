//! A database outage is a 503, not a 500: PostgreSQL crashes (an immediate
//! stop) under six writing clients and comes back; no acknowledged write is
//! lost, no request answers 500, and the same process recovers by itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use local::database::{self, PrivateCluster};
use serde_json::json;
use tokio::sync::Mutex;

#[derive(Default)]
struct Tally {
    created: Vec<String>,
    unavailable: usize,
    other: Vec<(u16, String)>,
    /// (when, status) of every answer, to see the recovery.
    answers: Vec<(Instant, u16)>,
}

#[tokio::test]
async fn a_database_crash_answers_503s_loses_nothing_acknowledged_and_recovers() {
    let root = std::env::temp_dir().join(format!(
        "charplat-outage-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&root).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cluster = PrivateCluster::new(root.join("pgdata"), port);
    cluster.start().await.expect("start the private cluster");
    database::ensure_database(&cluster.admin_url(), "character_platform")
        .await
        .unwrap();
    let url = database::with_database(&cluster.admin_url(), "character_platform");
    let stack = local::LocalStack::start(local::LocalOptions {
        port: 0,
        database_url: Some(url.clone()),
        migration_url: None,
        data_dir: root.clone(),
        signing_key: Some(testkit::signing_key()),
        background_tasks: false,
    })
    .await
    .expect("the stack serves from the private cluster");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut tokens = Vec::new();
    for i in 0..6 {
        let token = stack
            .issuer
            .mint(
                &format!("writer{i}@example.com"),
                &[],
                Duration::from_secs(600),
            )
            .unwrap();
        let reply = http
            .post(format!("{}/api/v1/auth/session", stack.base_url))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status().as_u16(), 201);
        tokens.push(token);
    }

    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop_at = Arc::new(Mutex::new(None::<Instant>));
    let writers: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, token)| {
            let (http, base, tally, stop_at) = (
                http.clone(),
                stack.base_url.clone(),
                tally.clone(),
                stop_at.clone(),
            );
            tokio::spawn(async move {
                let mut n = 0;
                loop {
                    if stop_at.lock().await.is_some_and(|at| Instant::now() >= at) {
                        break;
                    }
                    n += 1;
                    let sent = http
                        .post(format!("{base}/api/v1/characters"))
                        .bearer_auth(&token)
                        .json(&json!({"name": format!("W{i}-{n}"), "prompt": "a sturdy knight", "style_type": "fantasy"}))
                        .send()
                        .await;
                    let Ok(response) = sent else {
                        // The stack itself never goes away; a transport error here is a bug.
                        tally.lock().await.other.push((0, format!("{sent:?}")));
                        continue;
                    };
                    let status = response.status().as_u16();
                    let retry_after = response.headers().contains_key("retry-after");
                    let body: serde_json::Value = response.json().await.unwrap_or_default();
                    let mut tally = tally.lock().await;
                    tally.answers.push((Instant::now(), status));
                    match status {
                        201 => tally.created.push(body["id"].as_str().unwrap_or_default().to_string()),
                        503 if retry_after => tally.unavailable += 1,
                        _ => tally.other.push((status, body.to_string())),
                    }
                    drop(tally);
                    if status == 503 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            })
        })
        .collect();

    // Let the writers run, then crash the server for ~7 s and bring it back.
    wait_for_created(&tally, 30).await;
    cluster.crash().expect("crash the server");
    let crashed = Instant::now();
    tokio::time::sleep(Duration::from_secs(7)).await;
    cluster.start().await.expect("restart the server");
    let restarted = Instant::now();
    // The same process recovers: writes succeed again without restarting it.
    let created_at_restart = tally.lock().await.created.len();
    wait_for_created(&tally, created_at_restart + 30).await;
    *stop_at.lock().await = Some(Instant::now());
    for writer in writers {
        writer.await.unwrap();
    }

    let tally = tally.lock().await;
    assert!(
        tally.other.is_empty(),
        "answers other than 201/503: {:?}",
        tally.other
    );
    assert!(
        tally.unavailable > 0,
        "the outage was never noticed (crashed at {crashed:?})"
    );
    let during = tally
        .answers
        .iter()
        .filter(|(at, _)| *at > crashed && *at < restarted)
        .count();
    assert!(during > 0, "no request ran during the outage");
    // Every acknowledged write is there.
    let client = testkit::connect(&url).await;
    let ids: Vec<String> = client
        .query("SELECT id FROM characters", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for id in &tally.created {
        assert!(ids.contains(id), "acknowledged character {id} was lost");
    }
    stack.stop().await.unwrap();
    cluster.stop().expect("stop the private cluster");
    let _ = std::fs::remove_dir_all(&root);
}

/// Waits (with a deadline) until `count` characters were acknowledged.
async fn wait_for_created(tally: &Arc<Mutex<Tally>>, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if tally.lock().await.created.len() >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "writes did not resume within 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
