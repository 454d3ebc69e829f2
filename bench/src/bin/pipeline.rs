//! The generation pipeline through the local stack: dispatch requests per
//! second and their latency (POST /api/v1/characters/{id}/generate over real
//! HTTP: price, hold, record, enqueue), then worker jobs per second and per
//! job type against testkit's stand-in A1111 server (claim, fetch the source,
//! render, thumbnail, store, record the images, settle). Round 1 gives every
//! user a first image; round 2 is the mix: generations, variations and style
//! transfers (new variant characters), upscales and background removals.
//!
//! `cargo run --release -p bench --bin pipeline [-- USERS JOBS_PER_USER CLIENTS]`
//!
//! Prints figures; asserts nothing (the ledger invariants are checked at the end).

use std::sync::Arc;
use std::time::{Duration, Instant};

use local::{LocalOptions, LocalStack};
use serde_json::json;
use shared::web::auth::dev_issuer::DevIssuer;
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
        migration_url: None,
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
    // The worker's image server: testkit's stand-in A1111 over real HTTP (flat
    // images, no GPU time), so every job takes the charged path of a real server.
    let server = testkit::a1111::StandIn::start().await;
    let worker = shared::jobs::worker::Worker {
        generator: Arc::new(server.chain()),
        ..stack.worker.clone()
    };

    // Round 1: each user's first image (jobs that start from an image need one).
    let firsts: Vec<(String, String, &'static str)> = work
        .iter()
        .step_by(per_user.max(1))
        .map(|(token, character)| (token.clone(), character.clone(), "character_generation"))
        .collect();
    let (samples, time) = dispatch(&http, &stack.base_url, firsts, clients).await?;
    report("dispatch, round 1 (first images)", &samples, time, clients);
    drain(&stack, &worker).await?;

    // Round 2: the mix: half new generations, the rest variations (new variant
    // characters), style transfers, 2× upscales and background removals.
    let mix: Vec<(String, String, &'static str)> = work
        .iter()
        .enumerate()
        .map(|(i, (token, character))| {
            let job_type = match i % 10 {
                0..=4 => "character_generation",
                5 => "variation",
                6 => "style_transfer",
                7 | 8 => "upscale",
                _ => "background_removal",
            };
            (token.clone(), character.clone(), job_type)
        })
        .collect();
    let (samples, time) = dispatch(&http, &stack.base_url, mix, clients).await?;
    report("dispatch, round 2 (the mix)", &samples, time, clients);
    drain(&stack, &worker).await?;

    let variants: i64 = setup
        .query_one(
            "SELECT count(*) FROM characters WHERE parent_character_id IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    let images: i64 = setup
        .query_one("SELECT count(*) FROM character_images", &[])
        .await?
        .get(0);
    println!("  {variants} variant characters, {images} image records");
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

type Work = Vec<(String, String, &'static str)>;

/// Sends every request of `work` from `clients` concurrent clients; the
/// latency of each and the wall time of all.
async fn dispatch(
    http: &reqwest::Client,
    base: &str,
    work: Work,
    clients: usize,
) -> anyhow::Result<(Vec<(&'static str, Duration)>, Duration)> {
    let queue = Arc::new(Mutex::new(work));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (queue, latencies, http, base) = (
            queue.clone(),
            latencies.clone(),
            http.clone(),
            base.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let Some((token, character, job_type)) = queue.lock().await.pop() else {
                    break;
                };
                let body = match job_type {
                    "character_generation" => json!({"width": 512, "height": 512}),
                    "upscale" => json!({"job_type": "upscale", "upscale_factor": 2}),
                    "style_transfer" => {
                        json!({"job_type": "style_transfer", "style_type": "anime"})
                    }
                    "variation" => json!({"job_type": "variation", "variant_type": "pose_change",
                                          "changes": {"prompt": "a bench hero, sitting"}}),
                    other => json!({"job_type": other}),
                };
                let sent = Instant::now();
                let response = http
                    .post(format!("{base}/api/v1/characters/{character}/generate"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await?;
                let status = response.status();
                let text = response.text().await?;
                anyhow::ensure!(status.as_u16() == 202, "dispatch answered {status}: {text}");
                latencies.lock().await.push((job_type, sent.elapsed()));
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let time = started.elapsed();
    let samples = latencies.lock().await.clone();
    Ok((samples, time))
}

fn report(what: &str, samples: &[(&'static str, Duration)], time: Duration, clients: usize) {
    let mut all: Vec<Duration> = samples.iter().map(|(_, d)| *d).collect();
    all.sort();
    if all.is_empty() {
        return;
    }
    let at = |q: f64| all[((all.len() as f64 - 1.0) * q).round() as usize];
    println!("{what}: {} requests, {clients} clients", all.len());
    println!(
        "  {:.0} requests/s, median {:.2?}, p99 {:.2?}",
        all.len() as f64 / time.as_secs_f64(),
        at(0.5),
        at(0.99)
    );
}

/// One worker drains the queue one message at a time (as the template's
/// BatchSize 1 delivers them), timing each job by type.
async fn drain(stack: &LocalStack, worker: &shared::jobs::worker::Worker) -> anyhow::Result<()> {
    let mut by_type: std::collections::BTreeMap<String, Vec<Duration>> = Default::default();
    let started = Instant::now();
    loop {
        let batch = stack.queue.receive(1);
        let Some(record) = batch.records.first() else {
            break;
        };
        let job_type = record
            .message_attributes
            .get("job_type")
            .and_then(|a| a.string_value.clone())
            .unwrap_or_default();
        let receipt = record.receipt_handle.clone().unwrap_or_default();
        let one = Instant::now();
        let response = worker.handle_batch(batch).await;
        anyhow::ensure!(
            response.batch_item_failures.is_empty(),
            "the worker asked for retries"
        );
        by_type.entry(job_type).or_default().push(one.elapsed());
        stack.queue.delete(&receipt);
    }
    let total: usize = by_type.values().map(Vec::len).sum();
    let time = started.elapsed();
    println!(
        "worker: {total} jobs, one worker, {:.1} jobs/s (claim, fetch source, render on the stand-in server, thumbnail, store, record, settle)",
        total as f64 / time.as_secs_f64()
    );
    for (job_type, times) in &by_type {
        let mean = times.iter().sum::<Duration>() / times.len() as u32;
        println!(
            "  {job_type:<22} {:>4} jobs, {:>7.1} ms per job",
            times.len(),
            mean.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}
