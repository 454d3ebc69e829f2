//! Jobs that cannot get stuck, and a worker that holds nothing while it
//! waits: retries back off through the queue's visibility, a job whose
//! message was lost (dropped, or dead-lettered) is sent again by the
//! scheduler and, lost too often, fails with its credits released, exactly
//! once; while a render runs the worker holds no pooled connection and the
//! job shows its progress.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use reqwest::Method;
use serde_json::{Value, json};
use shared::jobs::worker::Worker;
use shared::ports::generator::{
    GeneratedImages, GenerationRequest, GeneratorChain, GeneratorError, ImageGenerator,
    ProceduralGenerator, Progress, ProgressReporter,
};
use shared::ports::queue::JobQueue;
use testkit::a1111::StandIn;
use testkit::ledger::assert_invariants;
use testkit::{TestStack, spawn_stack};

async fn setup(stack: &TestStack) -> (String, String, String) {
    let (token, id) = stack.buyer("ann@example.com", "ann", 100).await;
    let character = stack
        .character(
            &token,
            json!({"name": "Aria", "prompt": "an elf archer", "style_type": "fantasy"}),
        )
        .await;
    (token, id, character)
}

async fn generate(stack: &TestStack, token: &str, character: &str) -> String {
    let reply = stack
        .call(
            Method::POST,
            &format!("/api/v1/characters/{character}/generate"),
            Some(token),
            Some(json!({})),
        )
        .await;
    assert_eq!(reply.status.as_u16(), 202, "{}", reply.body);
    reply.body["id"].as_str().unwrap().to_string()
}

async fn job_row(stack: &TestStack, job_id: &str) -> (String, i32, Option<Value>) {
    let row = stack
        .sql()
        .await
        .query_one(
            "SELECT status, redeliveries, processing_metadata FROM generation_jobs WHERE id = $1",
            &[&job_id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

async fn outbox_sweep(stack: &TestStack) -> Value {
    let state = &stack.stack.state;
    shared::runtime::scheduler::run(
        "outbox-sweep",
        &state.db,
        state.queue.as_deref(),
        &state.config,
    )
    .await
    .unwrap()
    .outcome
}

/// Makes the job look queued and sent longer ago than the redelivery window.
async fn age_message(stack: &TestStack, job_id: &str) {
    stack
        .sql()
        .await
        .execute(
            "UPDATE generation_jobs SET enqueued_at = now() - interval '2 hours', \
               queued_at = least(queued_at, now() - interval '2 hours') WHERE id = $1",
            &[&job_id],
        )
        .await
        .unwrap();
}

async fn balance(stack: &TestStack, user: &str) -> shared::credits::Balance {
    shared::credits::balance(
        &stack.sql().await,
        user,
        shared::kernel::config::DEFAULT_GIFT_HOLD_DAYS,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_message_dropped_after_send_is_recovered() {
    let stack = spawn_stack().await;
    let (token, user, character) = setup(&stack).await;
    let job_id = generate(&stack, &token, &character).await;
    // The message vanishes (received and deleted without any effect).
    let lost = stack.stack.queue.receive(1);
    assert_eq!(lost.records.len(), 1);
    assert!(
        stack
            .stack
            .queue
            .delete(lost.records[0].receipt_handle.as_deref().unwrap())
    );
    assert!(stack.stack.queue.is_empty());

    // Within the window, nothing happens: a message may just be waiting.
    let outcome = outbox_sweep(&stack).await;
    assert_eq!(outcome["redelivered"], 0, "{outcome}");
    assert!(stack.stack.queue.is_empty());

    age_message(&stack, &job_id).await;
    let outcome = outbox_sweep(&stack).await;
    assert_eq!(
        (outcome["redelivered"].as_u64(), outcome["resent"].as_u64()),
        (Some(1), Some(1)),
        "{outcome}"
    );
    assert_eq!(job_row(&stack, &job_id).await.1, 1);
    // A second sweep right after does nothing more.
    let outcome = outbox_sweep(&stack).await;
    assert_eq!(
        (outcome["redelivered"].as_u64(), outcome["resent"].as_u64()),
        (Some(0), Some(0)),
        "{outcome}"
    );

    let server = StandIn::start().await;
    let worker = stack.worker_with(server.chain());
    let response = worker.handle_batch(stack.stack.queue.receive(10)).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(job_row(&stack, &job_id).await.0, "completed");
    assert_eq!(balance(&stack, &user).await.current_balance, 90);
    assert_invariants(&stack.sql().await).await;
}

#[tokio::test]
async fn a_dead_lettered_job_is_sent_again_then_failed_with_its_credits_released_once() {
    let stack = spawn_stack().await;
    let (token, user, character) = setup(&stack).await;
    let job_id = generate(&stack, &token, &character).await;
    assert_eq!(balance(&stack, &user).await.reserved_balance, 10);
    let queue = &stack.stack.queue;
    let mut lost = 0;
    // Each round the message is received until it dead-letters (as when every
    // worker lost its database before the claim), then the sweep sends it again.
    // After JOB_MAX_REDELIVERIES (2) redeliveries, the job fails.
    loop {
        loop {
            let batch = queue.receive(1);
            let Some(record) = batch.records.first() else {
                break;
            };
            // Back at once, as if its visibility timeout had passed.
            queue
                .change_visibility(record.receipt_handle.as_deref().unwrap(), Duration::ZERO)
                .await
                .unwrap();
        }
        lost += 1;
        assert_eq!(queue.dead_letters().len(), lost);
        assert_eq!(job_row(&stack, &job_id).await.0, "queued");
        age_message(&stack, &job_id).await;
        let outcome = outbox_sweep(&stack).await;
        if lost <= 2 {
            assert_eq!(
                (outcome["redelivered"].as_u64(), outcome["failed"].as_u64()),
                (Some(1), Some(0)),
                "{outcome}"
            );
            assert_eq!(queue.len(), 1, "sent again");
        } else {
            assert_eq!(
                (outcome["redelivered"].as_u64(), outcome["failed"].as_u64()),
                (Some(0), Some(1)),
                "{outcome}"
            );
            break;
        }
    }
    let (status, redeliveries, _) = job_row(&stack, &job_id).await;
    assert_eq!((status.as_str(), redeliveries), ("failed", 2));
    let after = balance(&stack, &user).await;
    assert_eq!((after.current_balance, after.reserved_balance), (100, 0));
    // Exactly once: another sweep finds nothing to do.
    let outcome = outbox_sweep(&stack).await;
    assert_eq!(
        (outcome["redelivered"].as_u64(), outcome["failed"].as_u64()),
        (Some(0), Some(0))
    );
    let shown = stack
        .get(&format!("/api/v1/jobs/{job_id}"), Some(&token))
        .await
        .body;
    assert_eq!(shown["cost_credits"], 0);
    assert_eq!(shown["error_details"]["stage"], "queue");
    assert_invariants(&stack.sql().await).await;
}

#[tokio::test]
async fn retries_back_off_through_the_visibility_and_the_last_failure_releases_everything() {
    let stack = spawn_stack().await;
    let (token, user, character) = setup(&stack).await;
    let job_id = generate(&stack, &token, &character).await;
    let server = StandIn::start().await;
    server.fail_with(503);
    let mut settings = stack.stack.state.config.worker;
    settings.retry_base = Duration::from_millis(1500);
    settings.retry_max = Duration::from_secs(60);
    // Only the failing server: no fallback to hide the failures.
    let only_server = build_only_primary(&server);
    let worker = Worker {
        generator: Arc::new(only_server),
        settings,
        ..stack.stack.worker.clone()
    };
    for attempt in 1..=3u32 {
        let batch = receive_within(&stack, Duration::from_secs(30)).await;
        let sent_back = Instant::now();
        let response = worker.handle_batch(batch).await;
        if attempt < 3 {
            assert_eq!(response.batch_item_failures.len(), 1, "attempt {attempt}");
            assert_eq!(job_row(&stack, &job_id).await.0, "queued");
            // Not back before its backoff (1.5 s × attempt): the queue says so at once.
            assert!(stack.stack.queue.receive(1).records.is_empty());
            let back = receive_within(&stack, Duration::from_secs(30)).await;
            assert!(
                sent_back.elapsed() >= settings.retry_delay(attempt) - Duration::from_millis(50),
                "came back after {:?}",
                sent_back.elapsed()
            );
            // Put it back for the loop's own receive.
            stack
                .stack
                .queue
                .change_visibility(
                    back.records[0].receipt_handle.as_deref().unwrap(),
                    Duration::ZERO,
                )
                .await
                .unwrap();
        } else {
            assert!(
                response.batch_item_failures.is_empty(),
                "attempts exhausted"
            );
        }
    }
    let (status, _, _) = job_row(&stack, &job_id).await;
    assert_eq!(status, "failed");
    assert_eq!(
        server
            .received()
            .iter()
            .filter(|(e, _)| e == "txt2img")
            .count(),
        3
    );
    let after = balance(&stack, &user).await;
    assert_eq!((after.current_balance, after.reserved_balance), (100, 0));
    assert_invariants(&stack.sql().await).await;
}

fn build_only_primary(server: &StandIn) -> GeneratorChain {
    let chain = server.chain();
    GeneratorChain::new(
        chain
            .providers
            .into_iter()
            .filter(|p| p.name() == "primary")
            .collect(),
    )
}

/// The next visible message, polling until `deadline`.
async fn receive_within(
    stack: &TestStack,
    deadline: Duration,
) -> aws_lambda_events::event::sqs::SqsEvent {
    let until = Instant::now() + deadline;
    loop {
        let batch = stack.stack.queue.receive(1);
        if !batch.records.is_empty() {
            return batch;
        }
        assert!(
            Instant::now() < until,
            "no message came back within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reports half-way, then waits for the test to let it finish.
struct HalfWay {
    gate: Arc<tokio::sync::Semaphore>,
}

impl ImageGenerator for HalfWay {
    fn generate<'a>(
        &'a self,
        request: &'a GenerationRequest,
        progress: &'a ProgressReporter,
    ) -> BoxFuture<'a, Result<GeneratedImages, GeneratorError>> {
        async move {
            progress.report(Progress {
                fraction: 0.5,
                eta_seconds: Some(3.0),
            });
            let _permit = self.gate.acquire().await;
            let mut images = ProceduralGenerator.generate(request, progress).await?;
            images.provider = "primary".into();
            Ok(images)
        }
        .boxed()
    }

    fn name(&self) -> &'static str {
        "primary"
    }
}

#[tokio::test]
async fn a_rendering_job_shows_its_progress_and_the_worker_holds_no_connection() {
    let stack = spawn_stack().await;
    let (token, user, character) = setup(&stack).await;
    let job_id = generate(&stack, &token, &character).await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let worker = Worker {
        generator: Arc::new(GeneratorChain::new(vec![Arc::new(HalfWay {
            gate: gate.clone(),
        })])),
        ..stack.stack.worker.clone()
    };
    let batch = stack.stack.queue.receive(1);
    let running = tokio::spawn(async move { worker.handle_batch(batch).await });

    // The progress arrives in the job, as GET /api/v1/jobs/{id} shows it.
    let until = Instant::now() + Duration::from_secs(30);
    let shown = loop {
        let shown = stack
            .get(&format!("/api/v1/jobs/{job_id}"), Some(&token))
            .await
            .body;
        if shown["processing_metadata"]["progress"]["fraction"] == 0.5 {
            break shown;
        }
        assert!(Instant::now() < until, "no progress: {shown}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(shown["status"], "processing");
    assert_eq!(shown["processing_metadata"]["progress"]["eta_seconds"], 3.0);

    // While the render waits, no pooled connection is checked out (the old
    // worker kept one through the whole render).
    let pool = &stack.stack.state.db;
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let status = pool.status();
        if status.size == status.available {
            break;
        }
        assert!(
            Instant::now() < until,
            "the worker holds a connection while rendering: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        job_row(&stack, &job_id).await.0,
        "processing",
        "still rendering"
    );

    gate.add_permits(1);
    let response = running.await.unwrap();
    assert!(response.batch_item_failures.is_empty());
    let (status, _, metadata) = job_row(&stack, &job_id).await;
    assert_eq!(status, "completed");
    assert_eq!(metadata.unwrap()["progress"]["fraction"], 1.0);
    assert_eq!(balance(&stack, &user).await.current_balance, 90);
    assert_invariants(&stack.sql().await).await;
}
