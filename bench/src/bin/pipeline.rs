//! The generation pipeline through the local stack: dispatch requests per
//! second and their latency (POST /api/v1/characters/{id}/generate over real
//! HTTP: price, hold, record, enqueue), then worker jobs per second with the
//! procedural renderer at 512×512 (claim, render, thumbnail, store, settle).
//!
//! `cargo run --release -p bench --bin pipeline [-- USERS JOBS_PER_USER CLIENTS]`
//!
//! Prints figures; asserts nothing (the ledger invariants are checked at the end).

use std::sync::Arc;
use std::time::{Duration, Instant};

use local::{LocalOptions, LocalStack};
use serde_json::json;
use shared::auth::dev_issuer::DevIssuer;
use tokio::sync::Mutex;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let users: usize = args.first().map(|a| a.parse()).transpose()?.unwrap_or(100);
    let per_user: usize = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(8);
    let clients: usize = args.get(2).map(|a| a.parse()).transpose()?.unwrap_or(8);

    let url = testkit::fresh_database().await;
    let setup = testkit::connect(&url).await;
    let stack = LocalStack::start(LocalOptions {
        port: 0,
        database_url: Some(url.clone()),
        data_dir: std::env::temp_dir().join(format!("charplat-bench-{}", std::process::id())),
        signing_key: Some(testkit::signing_key()),
        background_tasks: false,
    })
    .await?;

    // Users on the ENTERPRISE tier (16 jobs at once), with credits and a character each.
    let mut work = Vec::new();
    for i in 0..users {
        let email = format!("bench{i}@example.com");
        let id: String = setup
            .query_one(
                "INSERT INTO users (email, auth0_id, subscription_tier, daily_quota) VALUES ($1, $2, 'ENTERPRISE', 0) RETURNING id",
                &[&email, &DevIssuer::subject_for(&email)],
            )
            .await?
            .get(0);
        setup
            .execute("INSERT INTO user_credits (user_id) VALUES ($1)", &[&id])
            .await?;
        shared::credits::ledger::post(
            &setup,
            &id,
            shared::credits::ledger::Entry::new("purchase", 100_000, "bench"),
        )
        .await?;
        let character: String = setup
            .query_one(
                "INSERT INTO characters (user_id, name, prompt, style_type) VALUES ($1, 'Hero', 'a bench hero', 'fantasy') RETURNING id",
                &[&id],
            )
            .await?
            .get(0);
        let token = stack.issuer.mint(&email, &[], Duration::from_secs(3600))?;
        for _ in 0..per_user {
            work.push((token.clone(), character.clone()));
        }
    }
    // The seed pricing limits each user to 10 generations a minute.
    setup
        .execute(
            "UPDATE api_credit_configs SET rate_limit_per_minute = NULL, daily_limit = NULL",
            &[],
        )
        .await?;
    setup.batch_execute("ANALYZE").await?;

    let http = reqwest::Client::new();
    let queue = Arc::new(Mutex::new(work));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (queue, latencies, http, base) = (
            queue.clone(),
            latencies.clone(),
            http.clone(),
            stack.base_url.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let Some((token, character)) = queue.lock().await.pop() else {
                    break;
                };
                let sent = Instant::now();
                let response = http
                    .post(format!("{base}/api/v1/characters/{character}/generate"))
                    .bearer_auth(&token)
                    .json(&json!({"width": 512, "height": 512}))
                    .send()
                    .await?;
                let status = response.status();
                response.bytes().await?;
                anyhow::ensure!(status.as_u16() == 202, "dispatch answered {status}");
                latencies.lock().await.push(sent.elapsed());
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let dispatch_time = started.elapsed();
    let mut samples = latencies.lock().await.clone();
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    println!("dispatch: {} requests, {clients} clients", samples.len());
    println!(
        "  {:.0} requests/s, median {:.2?}, p99 {:.2?}",
        samples.len() as f64 / dispatch_time.as_secs_f64(),
        at(0.5),
        at(0.99)
    );

    // The worker drains the queue, batches of 10 as SQS would deliver them.
    let jobs = stack.queue.len();
    let started = Instant::now();
    let mut processed = 0;
    loop {
        let batch = stack.queue.receive(10);
        if batch.records.is_empty() {
            break;
        }
        let receipts: Vec<String> = batch
            .records
            .iter()
            .filter_map(|r| r.receipt_handle.clone())
            .collect();
        let response = stack.worker.handle_batch(batch).await;
        anyhow::ensure!(
            response.batch_item_failures.is_empty(),
            "the worker asked for retries"
        );
        for receipt in receipts {
            stack.queue.delete(&receipt);
        }
        processed += 10.min(jobs - processed);
    }
    let worker_time = started.elapsed();
    println!("worker: {jobs} jobs at 512x512 with the procedural renderer, one worker");
    println!(
        "  {:.1} jobs/s, {:.1} ms per job (claim, render, thumbnail, store, settle)",
        jobs as f64 / worker_time.as_secs_f64(),
        worker_time.as_secs_f64() * 1000.0 / jobs as f64
    );
    let completed: i64 = setup
        .query_one(
            "SELECT count(*) FROM generation_jobs WHERE status = 'completed'",
            &[],
        )
        .await?
        .get(0);
    println!("  {completed} completed");
    testkit::ledger::assert_invariants(&setup).await;
    println!("ledger invariants hold");
    stack.stop().await?;
    Ok(())
}
