//! The generation pipeline end to end in the local stack: dispatch over HTTP,
//! the in-process queue with SQS semantics, the worker, the provider chain,
//! storage, settlement — and exactly-once under redelivery, failures, and
//! cancels racing the worker.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};
use shared::jobs::worker::Worker;
use shared::ports::generator::{
    A1111Generator, GeneratorChain, ImageGenerator, ProceduralGenerator,
};
use testkit::a1111::StandIn;
use testkit::ledger::assert_invariants;
use testkit::{TestStack, spawn_stack};

async fn setup(stack: &TestStack, credits: i32) -> (String, String) {
    let (token, _) = stack.buyer("ann@example.com", "ann", credits).await;
    let character = stack
        .character(
            &token,
            json!({"name": "Aria", "prompt": "an elf archer at dawn", "style_type": "fantasy", "generation_seed": 7}),
        )
        .await;
    (token, character)
}

async fn generate(stack: &TestStack, token: &str, character: &str, body: Value) -> Value {
    let reply = stack
        .call(
            Method::POST,
            &format!("/api/v1/characters/{character}/generate"),
            Some(token),
            Some(body),
        )
        .await;
    assert_eq!(reply.status.as_u16(), 202, "{}", reply.body);
    reply.body
}

async fn balance(stack: &TestStack) -> shared::credits::Balance {
    let client = stack.sql().await;
    let id: String = client
        .query_one("SELECT id FROM users", &[])
        .await
        .unwrap()
        .get(0);
    shared::credits::balance(&client, &id, shared::kernel::config::DEFAULT_GIFT_HOLD_DAYS)
        .await
        .unwrap()
}

async fn job_status(stack: &TestStack, job_id: &str) -> String {
    stack
        .sql()
        .await
        .query_one(
            "SELECT status FROM generation_jobs WHERE id = $1",
            &[&job_id],
        )
        .await
        .unwrap()
        .get(0)
}

/// A worker over the stack's database and storage with another provider chain.
fn worker_with(stack: &TestStack, providers: Vec<Arc<dyn ImageGenerator>>) -> Worker {
    Worker {
        generator: Arc::new(GeneratorChain::new(providers)),
        ..stack.stack.worker.clone()
    }
}

/// A worker whose primary image server is a stand-in A1111 (then the fallback).
fn ai_worker(stack: &TestStack, server: &StandIn) -> Worker {
    stack.worker_with(server.chain())
}

/// A generator server that is not there (connection refused: transient).
fn unreachable(name: &'static str) -> Arc<dyn ImageGenerator> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    Arc::new(A1111Generator::new(
        name,
        &format!("http://127.0.0.1:{port}"),
        Duration::from_secs(2),
        shared::ports::generator::a1111::client().unwrap(),
    ))
}

/// A generator server that refuses every request (HTTP 400: permanent).
async fn refusing(name: &'static str) -> Arc<dyn ImageGenerator> {
    let app =
        axum::Router::new().fallback(|| async { (axum::http::StatusCode::BAD_REQUEST, "no") });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Arc::new(A1111Generator::new(
        name,
        &url,
        Duration::from_secs(5),
        shared::ports::generator::a1111::client().unwrap(),
    ))
}

#[tokio::test]
async fn generate_complete_download_and_pay_exactly_the_quote() {
    let stack = spawn_stack().await;
    let (token, character) = setup(&stack, 100).await;
    let job = generate(
        &stack,
        &token,
        &character,
        json!({"width": 512, "height": 384}),
    )
    .await;
    let quoted = job["cost_credits"].as_i64().unwrap();
    assert_eq!(quoted, 10);
    assert_eq!(balance(&stack).await.reserved_balance, 10);

    let server = StandIn::start().await;
    let batch = stack.stack.queue.receive(10);
    assert_eq!(batch.records.len(), 1);
    let response = ai_worker(&stack, &server).handle_batch(batch).await;
    assert!(response.batch_item_failures.is_empty());

    let job_id = job["id"].as_str().unwrap();
    let done = stack
        .get(&format!("/api/v1/jobs/{job_id}"), Some(&token))
        .await
        .body;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["generation_provider"], "primary");
    assert_eq!(
        done["processing_metadata"]["generation"]["provider"],
        "primary"
    );
    assert_eq!(done["cost_credits"], 10);
    assert_eq!(done["processing_metadata"]["charge"]["charged"], 10);
    assert_eq!(done["processing_metadata"]["progress"]["fraction"], 1.0);
    assert!(done["memory_used_mb"].as_i64().unwrap() > 0);

    let shown = stack
        .get(&format!("/api/v1/characters/{character}"), Some(&token))
        .await
        .body;
    assert_eq!(shown["generation_status"], "completed");
    // Responses carry time-limited links, never bucket keys.
    let thumb_link = shown["thumbnail_url"].as_str().unwrap().to_string();
    assert!(thumb_link.contains("signature="), "{thumb_link}");
    assert!(
        shown["primary_image_url"]
            .as_str()
            .unwrap()
            .contains("/image-0.png?")
    );
    assert!(
        !shown.to_string().contains("\"users/"),
        "a raw key leaked: {shown}"
    );
    let listed = stack
        .get(&format!("/api/v1/jobs/{job_id}"), Some(&token))
        .await
        .body;
    assert!(
        listed["output_urls"][0]
            .as_str()
            .unwrap()
            .contains("signature="),
        "{listed}"
    );

    // The image downloads through a signed link, as a real PNG of the asked size.
    let link = stack
        .call(
            Method::POST,
            &format!("/api/v1/characters/{character}/download"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(link.status.as_u16(), 200, "{}", link.body);
    let png = stack
        .http
        .get(link.body["url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let image = image::load_from_memory_with_format(&png, image::ImageFormat::Png).unwrap();
    assert_eq!((image.width(), image.height()), (512, 384));
    let thumb = stack
        .http
        .get(&thumb_link)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let thumb = image::load_from_memory_with_format(&thumb, image::ImageFormat::Png).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (256, 192));

    // Exactly the quoted credits were spent, in one usage entry, and nothing is held.
    let after = balance(&stack).await;
    assert_eq!(
        (after.current_balance, after.reserved_balance),
        (100 - quoted as i32, 0)
    );
    let usage: Vec<i32> = stack
        .sql()
        .await
        .query(
            "SELECT amount FROM credit_transactions WHERE transaction_type = 'usage'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(usage, vec![-(quoted as i32)]);
    assert_invariants(&stack.sql().await).await;
    let me = stack.get("/api/v1/me", Some(&token)).await.body;
    assert_eq!(me["total_images_generated"], 1);
}

#[tokio::test]
async fn a_message_delivered_three_times_at_once_makes_one_image_and_one_settlement() {
    let stack = spawn_stack().await;
    let (token, character) = setup(&stack, 100).await;
    let job = generate(&stack, &token, &character, json!({})).await;
    let server = StandIn::start().await;
    let batch = stack.stack.queue.receive(1);
    let record = batch.records[0].clone();
    let deliveries = join_all((0..3).map(|_| {
        let worker = ai_worker(&stack, &server);
        let mut event = batch.clone();
        event.records = vec![record.clone()];
        async move { worker.handle_batch(event).await }
    }))
    .await;
    assert!(deliveries.iter().all(|r| r.batch_item_failures.is_empty()));
    // A fourth, late redelivery is acknowledged without effect too.
    let late = ai_worker(&stack, &server).handle_batch(batch).await;
    assert!(late.batch_item_failures.is_empty());
    assert_eq!(
        job_status(&stack, job["id"].as_str().unwrap()).await,
        "completed"
    );
    let client = stack.sql().await;
    let settlements: i64 = client
        .query_one(
            "SELECT count(*) FROM credit_transactions WHERE transaction_type = 'usage'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(settlements, 1);
    let generated: i32 = client
        .query_one("SELECT total_images_generated FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(generated, 1);
    assert_eq!(balance(&stack).await.current_balance, 90);
    assert_invariants(&client).await;
}

#[tokio::test]
async fn a_failing_primary_hands_over_and_the_failure_is_recorded() {
    let stack = spawn_stack().await;
    let (token, character) = setup(&stack, 100).await;
    let job = generate(&stack, &token, &character, json!({})).await;
    let worker = worker_with(
        &stack,
        vec![
            unreachable("primary"),
            refusing("secondary").await,
            Arc::new(ProceduralGenerator),
        ],
    );
    let response = worker.handle_batch(stack.stack.queue.receive(1)).await;
    assert!(response.batch_item_failures.is_empty());
    let row = stack
        .sql()
        .await
        .query_one(
            "SELECT status, generation_provider, processing_metadata FROM generation_jobs WHERE id = $1",
            &[&job["id"].as_str().unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "completed");
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("fallback"));
    let metadata: Value = row.get(2);
    let failed = metadata["generation"]["failed_providers"]
        .as_array()
        .unwrap();
    assert_eq!(failed.len(), 2, "{metadata}");
    assert_eq!(failed[0]["provider"], "primary");
    assert_eq!(failed[0]["transient"], true);
    assert_eq!(failed[1]["provider"], "secondary");
    assert_eq!(failed[1]["transient"], false);
}

#[tokio::test]
async fn failures_retry_while_transient_then_fail_and_give_every_credit_back() {
    let stack = spawn_stack().await;
    let (token, character) = setup(&stack, 100).await;
    let transient = generate(&stack, &token, &character, json!({})).await;
    let permanent = generate(&stack, &token, &character, json!({})).await;
    let transient_id = transient["id"].as_str().unwrap().to_string();
    let permanent_id = permanent["id"].as_str().unwrap().to_string();

    // Only an unreachable server: transient, retried while attempts remain.
    let flaky = worker_with(&stack, vec![unreachable("primary")]);
    // Only a refusing server: permanent, failed at once.
    let broken = worker_with(&stack, vec![refusing("primary").await]);

    let batch = stack.stack.queue.receive(10);
    assert_eq!(batch.records.len(), 2);
    let id_of = |job: &str| {
        batch
            .records
            .iter()
            .find(|r| r.body.as_deref().is_some_and(|b| b.contains(job)))
            .and_then(|r| r.message_id.clone())
            .unwrap()
    };
    let mut transient_only = batch.clone();
    transient_only
        .records
        .retain(|r| r.body.as_deref().is_some_and(|b| b.contains(&transient_id)));
    let mut permanent_only = batch.clone();
    permanent_only
        .records
        .retain(|r| r.body.as_deref().is_some_and(|b| b.contains(&permanent_id)));

    // A mixed batch: the transient one is reported for retry, the permanent one is not.
    let mixed = flaky.handle_batch(transient_only.clone()).await;
    let permanent_result = broken.handle_batch(permanent_only).await;
    assert_eq!(
        mixed
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.clone())
            .collect::<Vec<_>>(),
        vec![id_of(&transient_id)]
    );
    assert!(permanent_result.batch_item_failures.is_empty());
    assert_eq!(job_status(&stack, &permanent_id).await, "failed");
    assert_eq!(
        job_status(&stack, &transient_id).await,
        "queued",
        "back for another attempt"
    );

    // The redeliveries: the third attempt is the last, then the job fails.
    for attempt in 2..=3 {
        let outcome = flaky.handle_batch(transient_only.clone()).await;
        if attempt < 3 {
            assert_eq!(outcome.batch_item_failures.len(), 1);
        } else {
            assert!(
                outcome.batch_item_failures.is_empty(),
                "attempts exhausted: acknowledged"
            );
        }
    }
    assert_eq!(job_status(&stack, &transient_id).await, "failed");

    // Every credit came back and nothing was posted.
    let after = balance(&stack).await;
    assert_eq!((after.current_balance, after.reserved_balance), (100, 0));
    let usage: i64 = stack
        .sql()
        .await
        .query_one(
            "SELECT count(*) FROM credit_transactions WHERE transaction_type = 'usage'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(usage, 0);
    let shown = stack
        .get(&format!("/api/v1/characters/{character}"), Some(&token))
        .await
        .body;
    assert_eq!(shown["generation_status"], "failed");
    assert_invariants(&stack.sql().await).await;
}

#[tokio::test]
async fn cancel_racing_the_worker_has_exactly_one_winner() {
    let stack = spawn_stack().await;
    let (token, character) = setup(&stack, 10_000).await;
    stack
        .sql()
        .await
        .execute("UPDATE users SET subscription_tier = 'ENTERPRISE'", &[])
        .await
        .unwrap();
    // More generations than the seed's 10 a minute.
    stack
        .sql()
        .await
        .execute(
            "UPDATE api_credit_configs SET rate_limit_per_minute = NULL WHERE id = 'cfg_generate'",
            &[],
        )
        .await
        .unwrap();
    stack
        .stack
        .state
        .cache::<shared::credits::engine::PricingCache>()
        .invalidate()
        .await;
    let server = StandIn::start().await;

    // Both outcomes, each forced: the cancel and the worker are both in
    // flight, queued on the job's row lock in a chosen order, so each path of
    // the race is taken on every run, whatever the machine's speed.
    let (mut completed, mut cancelled) = (0, 0);
    for cancel_first in [true, false, true, false] {
        let (c, x) = ordered_race(&stack, &token, &character, &server, cancel_first).await;
        assert_eq!((c, x), if cancel_first { (0, 1) } else { (1, 0) });
        completed += c;
        cancelled += x;
    }
    // Then free races, in whatever order they fall: still one winner each.
    for _ in 0..2 {
        let (c, x) = race_round(&stack, &token, &character, &server).await;
        completed += c;
        cancelled += x;
    }
    assert!(
        completed >= 2 && cancelled >= 2,
        "both outcomes must occur: {completed} completed, {cancelled} cancelled"
    );
    let client = stack.sql().await;
    let usage: i64 = client
        .query_one(
            "SELECT count(*) FROM credit_transactions WHERE transaction_type = 'usage'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        usage, completed as i64,
        "one settlement per completed job, none for cancelled ones"
    );
    let after = balance(&stack).await;
    assert_eq!(after.reserved_balance, 0);
    // ENTERPRISE pays 0.4 × 10 = 4 per job.
    assert_eq!(after.current_balance, 10_000 - 4 * completed);
    assert_invariants(&client).await;
}

/// Backends of this test's database waiting for a lock.
async fn lock_waiters(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Polls until `n` backends wait for a lock (deadline: 30 s).
async fn until_lock_waiters(client: &tokio_postgres::Client, n: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while lock_waiters(client).await < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{n} lock waiters never appeared"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One job whose cancel and worker race with their order fixed: the test
/// holds the job's row lock, starts the first contender, waits until it
/// queues on the lock, starts the second, waits until it queues too, then
/// lets go. PostgreSQL grants a row's lock to its waiters in arrival order,
/// so the first one started wins. Returns (completed, cancelled).
async fn ordered_race(
    stack: &TestStack,
    token: &str,
    character: &str,
    server: &StandIn,
    cancel_first: bool,
) -> (i32, i32) {
    let job_id = generate(stack, token, character, json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let batch = stack.stack.queue.receive(10);
    assert_eq!(batch.records.len(), 1);

    let watcher = stack.sql().await;
    assert_eq!(lock_waiters(&watcher).await, 0);
    let mut holder = stack.sql().await;
    let lock = holder.transaction().await.unwrap();
    lock.query(
        "SELECT 1 FROM generation_jobs WHERE id = $1 FOR UPDATE",
        &[&job_id],
    )
    .await
    .unwrap();

    let start_cancel = || {
        let request = stack
            .http
            .post(format!("{}/api/v1/jobs/{job_id}/cancel", stack.base_url))
            .bearer_auth(token)
            .send();
        tokio::spawn(async move { request.await.unwrap().status().as_u16() })
    };
    let start_worker = || {
        let worker = ai_worker(stack, server);
        let batch = batch.clone();
        tokio::spawn(async move { worker.handle_batch(batch).await })
    };
    let (cancel, work) = if cancel_first {
        let cancel = start_cancel();
        until_lock_waiters(&watcher, 1).await;
        let work = start_worker();
        until_lock_waiters(&watcher, 2).await;
        (cancel, work)
    } else {
        let work = start_worker();
        until_lock_waiters(&watcher, 1).await;
        let cancel = start_cancel();
        until_lock_waiters(&watcher, 2).await;
        (cancel, work)
    };
    lock.commit().await.unwrap();
    let cancel_status = cancel.await.unwrap();
    let processed = work.await.unwrap();
    assert!(processed.batch_item_failures.is_empty());
    outcome(stack, &job_id, cancel_status).await
}

/// What became of a raced job; its cancel's answer must agree.
/// Returns (completed, cancelled).
async fn outcome(stack: &TestStack, job_id: &str, cancel_status: u16) -> (i32, i32) {
    match job_status(stack, job_id).await.as_str() {
        "cancelled" => {
            assert_eq!(cancel_status, 200, "{job_id}");
            (0, 1)
        }
        "completed" => {
            assert_eq!(cancel_status, 409, "{job_id}");
            (1, 0)
        }
        other => panic!("job {job_id} ended {other}"),
    }
}

/// Eight jobs, each raced by a cancel and the worker with nothing steering
/// the order: exactly one of them wins each job, and its answer says so.
/// Returns (completed, cancelled).
async fn race_round(
    stack: &TestStack,
    token: &str,
    character: &str,
    server: &StandIn,
) -> (i32, i32) {
    let mut jobs = Vec::new();
    for _ in 0..8 {
        jobs.push(
            generate(stack, token, character, json!({})).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let batch = stack.stack.queue.receive(10);
    assert_eq!(batch.records.len(), 8);
    let races = jobs.iter().map(|job_id| {
        let worker = ai_worker(stack, server);
        let mut event = batch.clone();
        event.records.retain(|r| {
            r.body
                .as_deref()
                .is_some_and(|b| b.contains(job_id.as_str()))
        });
        let cancel = stack
            .http
            .post(format!("{}/api/v1/jobs/{job_id}/cancel", stack.base_url))
            .bearer_auth(token)
            .send();
        async move {
            let (processed, cancelled) = tokio::join!(worker.handle_batch(event), cancel);
            assert!(processed.batch_item_failures.is_empty());
            cancelled.unwrap().status().as_u16()
        }
    });
    let statuses = join_all(races).await;
    let (mut completed, mut cancelled) = (0, 0);
    for (job_id, status) in jobs.iter().zip(statuses) {
        let (c, x) = outcome(stack, job_id, status).await;
        completed += c;
        cancelled += x;
    }
    (completed, cancelled)
}

#[tokio::test]
async fn deleting_a_character_deletes_its_images() {
    let stack = spawn_stack().await;
    let (token, character) = setup(&stack, 100).await;
    generate(&stack, &token, &character, json!({})).await;
    let response = stack
        .stack
        .worker
        .handle_batch(stack.stack.queue.receive(1))
        .await;
    assert!(response.batch_item_failures.is_empty());
    let shown = stack
        .get(&format!("/api/v1/characters/{character}"), Some(&token))
        .await
        .body;
    let links: Vec<String> = ["primary_image_url", "thumbnail_url"]
        .iter()
        .map(|f| shown[*f].as_str().unwrap().to_string())
        .collect();
    for link in &links {
        assert_eq!(
            stack.http.get(link).send().await.unwrap().status().as_u16(),
            200
        );
    }
    let deleted = stack
        .call(
            Method::DELETE,
            &format!("/api/v1/characters/{character}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(deleted.status.as_u16(), 204);
    for link in &links {
        assert_eq!(
            stack.http.get(link).send().await.unwrap().status().as_u16(),
            404,
            "{link} outlived its character"
        );
    }
}

#[tokio::test]
async fn deleting_a_character_cancels_its_queued_jobs_and_releases_their_credits() {
    let stack = spawn_stack().await;
    let (token, character) = setup(&stack, 100).await;
    let job = generate(&stack, &token, &character, json!({})).await;
    assert_eq!(balance(&stack).await.reserved_balance, 10);
    let deleted = stack
        .call(
            Method::DELETE,
            &format!("/api/v1/characters/{character}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(deleted.status.as_u16(), 204);
    let job_id = job["id"].as_str().unwrap();
    assert_eq!(job_status(&stack, job_id).await, "cancelled");
    let after = balance(&stack).await;
    assert_eq!((after.current_balance, after.reserved_balance), (100, 0));
    // Its message, still on the queue, is acknowledged without effect.
    let response = stack
        .stack
        .worker
        .handle_batch(stack.stack.queue.receive(1))
        .await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(job_status(&stack, job_id).await, "cancelled");
    assert_invariants(&stack.sql().await).await;
}
