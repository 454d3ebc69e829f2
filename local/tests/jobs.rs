//! Dispatching generation jobs over real HTTP: priced, paid from the right
//! bucket, recorded and queued; refused cleanly when they cannot be paid or
//! run; cancelled with their hold released exactly once.

use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};
use testkit::ledger::assert_invariants;
use testkit::{TestStack, spawn_stack};

async fn character(stack: &TestStack, token: &str, public: bool) -> String {
    let reply = stack
        .call(
            Method::POST,
            "/api/v1/characters",
            Some(token),
            Some(json!({"name": "Aria", "prompt": "an elf archer", "style_type": "fantasy", "is_public": public})),
        )
        .await;
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
    reply.body["id"].as_str().unwrap().to_string()
}

async fn generate(stack: &TestStack, token: &str, character: &str, body: Value) -> testkit::Reply {
    stack
        .call(
            Method::POST,
            &format!("/api/v1/characters/{character}/generate"),
            Some(token),
            Some(body),
        )
        .await
}

async fn scalar(stack: &TestStack, sql: &str) -> i64 {
    stack.sql().await.query_one(sql, &[]).await.unwrap().get(0)
}

/// The user's balance as the ledger reports it (with the lazy daily reset).
async fn balance(stack: &TestStack, email: &str) -> shared::credits::Balance {
    let client = stack.sql().await;
    let id: String = client
        .query_one("SELECT id FROM users WHERE email = $1", &[&email])
        .await
        .unwrap()
        .get(0);
    shared::credits::balance(&client, &id, shared::kernel::config::DEFAULT_GIFT_HOLD_DAYS)
        .await
        .unwrap()
}

async fn give_credits(stack: &TestStack, email: &str, amount: i32) {
    let client = stack.sql().await;
    let id: String = client
        .query_one("SELECT id FROM users WHERE email = $1", &[&email])
        .await
        .unwrap()
        .get(0);
    shared::credits::ledger::post(
        &client,
        &id,
        shared::credits::ledger::Entry::new("purchase", amount, "test pack"),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_generation_is_priced_held_recorded_and_queued() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let aria = character(&stack, &ann, false).await;
    let reply = generate(&stack, &ann, &aria, json!({"steps": 40})).await;
    assert_eq!(reply.status.as_u16(), 202, "{}", reply.body);
    let job = &reply.body;
    assert_eq!(job["status"], "queued");
    assert_eq!(job["job_type"], "character_generation");
    // Seed pricing: base 10 + one step block over 30 = 11, FREE tier × 1.0.
    assert_eq!(job["cost_credits"], 11);
    assert_eq!(
        job["processing_metadata"]["credits"]["free_generation"],
        true
    );
    assert_eq!(job["input_parameters"]["prompt"], "an elf archer");
    assert_eq!(job["input_parameters"]["steps"], 40);

    // The message is on the queue and the job is stamped as sent.
    let batch = stack.stack.queue.receive(10);
    assert_eq!(batch.records.len(), 1);
    assert_eq!(
        batch.records[0].message_attributes["job_id"]
            .string_value
            .as_deref(),
        job["id"].as_str()
    );
    let enqueued = scalar(
        &stack,
        "SELECT count(*) FROM generation_jobs WHERE enqueued_at IS NOT NULL",
    )
    .await;
    assert_eq!(enqueued, 1);
    assert_eq!(stack.stack.queue.len(), 1);

    assert_eq!(
        balance(&stack, "ann@example.com")
            .await
            .free_generations_left,
        2
    );
    assert_invariants(&stack.sql().await).await;

    let listed = stack.get("/api/v1/jobs", Some(&ann)).await;
    assert_eq!(listed.body["items"][0]["id"], job["id"]);
    let one = stack
        .get(
            &format!("/api/v1/jobs/{}", job["id"].as_str().unwrap()),
            Some(&ann),
        )
        .await;
    assert_eq!(one.body["cost_credits"], 11);
}

#[tokio::test]
async fn buckets_run_out_into_a_402_and_nothing_is_recorded() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let aria = character(&stack, &ann, false).await;
    stack
        .sql()
        .await
        .execute("UPDATE users SET daily_quota = 0", &[])
        .await
        .unwrap();
    let reply = generate(&stack, &ann, &aria, json!({})).await;
    reply.assert_problem(402);
    assert_eq!(reply.body["needed"], 10, "{}", reply.body);
    assert_eq!(reply.body["available"], 0);
    assert_eq!(
        scalar(&stack, "SELECT count(*) FROM generation_jobs").await,
        0
    );

    give_credits(&stack, "ann@example.com", 25).await;
    assert_eq!(
        generate(&stack, &ann, &aria, json!({}))
            .await
            .status
            .as_u16(),
        202
    );
    let credits = balance(&stack, "ann@example.com").await;
    assert_eq!(
        (
            credits.current_balance,
            credits.reserved_balance,
            credits.available
        ),
        (25, 10, 15)
    );
    assert_invariants(&stack.sql().await).await;
}

#[tokio::test]
async fn idempotent_dispatch_makes_one_job() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let aria = character(&stack, &ann, false).await;
    let replies = join_all((0..6).map(|_| {
        stack
            .http
            .post(format!(
                "{}/api/v1/characters/{aria}/generate",
                stack.base_url
            ))
            .bearer_auth(&ann)
            .header("idempotency-key", "gen-1")
            .json(&json!({"steps": 20}))
            .send()
    }))
    .await;
    let mut ids = Vec::new();
    for reply in replies {
        let reply = testkit::read(reply.unwrap()).await;
        assert_eq!(reply.status.as_u16(), 202, "{}", reply.body);
        ids.push(reply.body["id"].as_str().unwrap().to_string());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every duplicate answered the same job");
    assert_eq!(
        scalar(&stack, "SELECT count(*) FROM generation_jobs").await,
        1
    );
    let changed = stack
        .http
        .post(format!(
            "{}/api/v1/characters/{aria}/generate",
            stack.base_url
        ))
        .bearer_auth(&ann)
        .header("idempotency-key", "gen-1")
        .json(&json!({"steps": 30}))
        .send()
        .await
        .unwrap();
    testkit::read(changed).await.assert_problem(422);
    assert_invariants(&stack.sql().await).await;
}

#[tokio::test]
async fn the_tier_caps_jobs_at_once_and_parameters() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let aria = character(&stack, &ann, false).await;
    give_credits(&stack, "ann@example.com", 1000).await;
    for bad in [
        json!({"width": 2048}),
        json!({"batch_size": 2}),
        json!({"priority": 9}),
        json!({"steps": 0}),
        json!({"job_type": "teleport"}),
        json!({"width": 100}),
        json!({"cost_credits": 0}),
        json!({"surprise": true}),
    ] {
        generate(&stack, &ann, &aria, bad).await.assert_problem(422);
    }
    assert_eq!(
        scalar(&stack, "SELECT count(*) FROM generation_jobs").await,
        0
    );
    // FREE runs two jobs at once.
    assert_eq!(
        generate(&stack, &ann, &aria, json!({}))
            .await
            .status
            .as_u16(),
        202
    );
    assert_eq!(
        generate(&stack, &ann, &aria, json!({}))
            .await
            .status
            .as_u16(),
        202
    );
    let third = generate(&stack, &ann, &aria, json!({})).await;
    third.assert_problem(429);
    assert!(third.headers.contains_key("retry-after"));
    // Jobs that start from an image need one.
    stack
        .sql()
        .await
        .execute("UPDATE generation_jobs SET status = 'completed'", &[])
        .await
        .unwrap();
    generate(&stack, &ann, &aria, json!({"job_type": "upscale"}))
        .await
        .assert_problem(409);
}

#[tokio::test]
async fn only_your_own_characters_and_jobs() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let bob = stack.user("bob@example.com", "bob").await;
    let private = character(&stack, &ann, false).await;
    let public = character(&stack, &ann, true).await;
    generate(&stack, &bob, &private, json!({}))
        .await
        .assert_problem(404);
    generate(&stack, &bob, &public, json!({}))
        .await
        .assert_problem(403);
    generate(&stack, &bob, "no-such-character", json!({}))
        .await
        .assert_problem(404);
    stack
        .call(
            Method::POST,
            &format!("/api/v1/characters/{public}/generate"),
            None,
            Some(json!({})),
        )
        .await
        .assert_problem(401);
    let job = generate(&stack, &ann, &private, json!({})).await.body;
    let path = format!("/api/v1/jobs/{}", job["id"].as_str().unwrap());
    stack.get(&path, Some(&bob)).await.assert_problem(404);
    stack
        .call(Method::POST, &format!("{path}/cancel"), Some(&bob), None)
        .await
        .assert_problem(404);
    assert_eq!(
        stack.get("/api/v1/jobs", Some(&bob)).await.body["items"],
        json!([])
    );
    stack
        .get("/api/v1/jobs?status=done", Some(&ann))
        .await
        .assert_problem(422);
    // Suspended accounts cannot generate.
    stack
        .sql()
        .await
        .execute(
            "UPDATE users SET account_status = 'suspended' WHERE email = 'ann@example.com'",
            &[],
        )
        .await
        .unwrap();
    generate(&stack, &ann, &private, json!({}))
        .await
        .assert_problem(403);
}

#[tokio::test]
async fn cancelling_a_queued_job_releases_its_hold_once() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let aria = character(&stack, &ann, false).await;
    stack
        .sql()
        .await
        .execute("UPDATE users SET daily_quota = 0", &[])
        .await
        .unwrap();
    give_credits(&stack, "ann@example.com", 50).await;
    let job = generate(&stack, &ann, &aria, json!({})).await.body;
    let cancel = format!("/api/v1/jobs/{}/cancel", job["id"].as_str().unwrap());
    let replies = join_all((0..5).map(|_| {
        stack
            .http
            .post(format!("{}{cancel}", stack.base_url))
            .bearer_auth(&ann)
            .send()
    }))
    .await;
    let mut statuses: Vec<u16> = replies
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    statuses.sort();
    assert_eq!(statuses, [200, 409, 409, 409, 409]);
    let credits = balance(&stack, "ann@example.com").await;
    assert_eq!((credits.available, credits.reserved_balance), (50, 0));
    let transactions = scalar(
        &stack,
        "SELECT count(*) FROM credit_transactions WHERE transaction_type = 'usage'",
    )
    .await;
    assert_eq!(transactions, 0, "a release posts nothing");
    assert_invariants(&stack.sql().await).await;
}

#[tokio::test]
async fn generation_fails_closed_without_pricing_and_the_sweep_resends_stragglers() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let aria = character(&stack, &ann, false).await;
    stack
        .sql()
        .await
        .execute("UPDATE api_credit_configs SET is_enabled = false", &[])
        .await
        .unwrap();
    generate(&stack, &ann, &aria, json!({}))
        .await
        .assert_problem(503);
    assert_eq!(
        scalar(&stack, "SELECT count(*) FROM generation_jobs").await,
        0
    );

    // A job whose send never happened (the process died after commit).
    let client = stack.sql().await;
    let ann_id: String = client
        .query_one("SELECT id FROM users", &[])
        .await
        .unwrap()
        .get(0);
    client
        .execute(
            "INSERT INTO generation_jobs (user_id, character_id, job_type, input_parameters, queued_at) \
             VALUES ($1, $2, 'character_generation', '{}', now() - interval '5 minutes')",
            &[&ann_id, &aria],
        )
        .await
        .unwrap();
    let sent = shared::jobs::outbox::resend_unsent(
        &client,
        stack.stack.queue.as_ref(),
        std::time::Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(sent, 1);
    assert_eq!(stack.stack.queue.len(), 1);
    let again = shared::jobs::outbox::resend_unsent(
        &client,
        stack.stack.queue.as_ref(),
        std::time::Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(again, 0, "a sent job is not sent again");
}
