//! What generation charges and makes, end to end in the local stack: a
//! placeholder from the procedural fallback costs its own price, jobs that
//! start from an image are priced on the output they make, a cost preview
//! answers exactly what dispatch charges, and variants become characters
//! while upscales and background removals add images to the same one.

use reqwest::Method;
use serde_json::{Value, json};
use shared::jobs::worker::Worker;
use testkit::a1111::StandIn;
use testkit::ledger::assert_invariants;
use testkit::{Reply, TestStack, spawn_stack};

/// Ann, with `credits` purchased credits, no free generations, and a character.
async fn setup(stack: &TestStack, credits: i32) -> (String, String, String) {
    let (token, id) = stack.buyer("ann@example.com", "ann", credits).await;
    let character = stack
        .character(
            &token,
            json!({
                "name": "Aria", "prompt": "an elf archer at dawn", "style_type": "fantasy",
                "art_style": "watercolor", "mood": "serene", "color_palette": ["#112233"],
                "tags": ["elf"], "generation_seed": 7, "description": "A ranger of the north."
            }),
        )
        .await;
    (token, id, character)
}

async fn generate(stack: &TestStack, token: &str, character: &str, body: Value) -> Reply {
    stack
        .call(
            Method::POST,
            &format!("/api/v1/characters/{character}/generate"),
            Some(token),
            Some(body),
        )
        .await
}

async fn started(stack: &TestStack, token: &str, character: &str, body: Value) -> Value {
    let reply = generate(stack, token, character, body).await;
    assert_eq!(reply.status.as_u16(), 202, "{}", reply.body);
    reply.body
}

fn ai_worker(stack: &TestStack, server: &StandIn) -> Worker {
    stack.worker_with(server.chain())
}

/// Runs every queued message through `worker` once; all must be acknowledged.
async fn drain(stack: &TestStack, worker: &Worker) {
    let batch = stack.stack.queue.receive(10);
    assert!(!batch.records.is_empty(), "no message to process");
    let response = worker.handle_batch(batch).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "{:?}",
        response.batch_item_failures
    );
}

async fn job(stack: &TestStack, token: &str, id: &str) -> Value {
    let reply = stack.get(&format!("/api/v1/jobs/{id}"), Some(token)).await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.body);
    reply.body
}

async fn balance(stack: &TestStack, user_id: &str) -> shared::credits::Balance {
    shared::credits::balance(
        &stack.sql().await,
        user_id,
        shared::kernel::config::DEFAULT_GIFT_HOLD_DAYS,
    )
    .await
    .unwrap()
}

async fn scalar(
    stack: &TestStack,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> i64 {
    stack
        .sql()
        .await
        .query_one(sql, params)
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_placeholder_is_labelled_and_costs_the_fallback_price() {
    let stack = spawn_stack().await;
    let (token, user_id, character) = setup(&stack, 100).await;
    // No image server: the procedural renderer serves, and by default that is free.
    let queued = started(&stack, &token, &character, json!({})).await;
    assert_eq!(queued["cost_credits"], 10);
    assert_eq!(balance(&stack, &user_id).await.reserved_balance, 10);
    drain(&stack, &stack.stack.worker).await;
    let done = job(&stack, &token, queued["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["generation_provider"], "fallback");
    assert_eq!(done["cost_credits"], 0, "{done}");
    assert_eq!(done["processing_metadata"]["placeholder"], true);
    assert_eq!(done["processing_metadata"]["charge"]["held"], 10);
    assert_eq!(done["processing_metadata"]["charge"]["charged"], 0);
    let after = balance(&stack, &user_id).await;
    assert_eq!((after.current_balance, after.reserved_balance), (100, 0));
    assert_eq!(
        scalar(
            &stack,
            "SELECT count(*) FROM credit_transactions WHERE transaction_type = 'usage'",
            &[]
        )
        .await,
        0
    );
    assert_eq!(
        scalar(
            &stack,
            "SELECT count(*) FROM character_images WHERE generation_provider = 'fallback'",
            &[]
        )
        .await,
        1
    );
    let hold: (String, i32) = {
        let row = stack
            .sql()
            .await
            .query_one("SELECT status, charged FROM credit_holds", &[])
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(hold, ("released".to_string(), 0));
    assert_invariants(&stack.sql().await).await;

    // An operator may price placeholders: 3 credits, from the allowance first.
    stack
        .sql()
        .await
        .execute(
            "UPDATE api_credit_configs SET cost_formula = cost_formula || '{\"fallback_cost\": 3}' WHERE id = 'cfg_generate'",
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
    stack
        .sql()
        .await
        .execute("UPDATE user_credits SET daily_allowance = 2", &[])
        .await
        .unwrap();
    let queued = started(&stack, &token, &character, json!({})).await;
    assert_eq!(
        queued["processing_metadata"]["credits"]["fallback_price"],
        3
    );
    drain(&stack, &stack.stack.worker).await;
    let done = job(&stack, &token, queued["id"].as_str().unwrap()).await;
    assert_eq!(done["cost_credits"], 3, "{done}");
    let after = balance(&stack, &user_id).await;
    // 2 from today's allowance, 1 purchased; the other 8 held purchased credits go back.
    assert_eq!(
        (
            after.current_balance,
            after.reserved_balance,
            after.daily_allowance_used
        ),
        (99, 0, 2)
    );
    assert_invariants(&stack.sql().await).await;
}

#[tokio::test]
async fn servers_all_failing_cost_only_the_fallback_price() {
    let stack = spawn_stack().await;
    let (token, user_id, character) = setup(&stack, 100).await;
    let server = StandIn::start().await;
    server.fail_with(500);
    let queued = started(&stack, &token, &character, json!({})).await;
    drain(&stack, &ai_worker(&stack, &server)).await;
    let done = job(&stack, &token, queued["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["generation_provider"], "fallback");
    assert_eq!(
        done["processing_metadata"]["generation"]["failed_providers"][0]["provider"],
        "primary"
    );
    assert_eq!(done["cost_credits"], 0);
    assert_eq!(balance(&stack, &user_id).await.current_balance, 100);
    assert_invariants(&stack.sql().await).await;
}

#[tokio::test]
async fn images_are_kept_and_upscales_are_priced_on_their_output() {
    let stack = spawn_stack().await;
    let (token, user_id, character) = setup(&stack, 10_000).await;
    stack
        .sql()
        .await
        .execute("UPDATE users SET subscription_tier = 'PRO'", &[])
        .await
        .unwrap();
    let server = StandIn::start().await;
    let worker = ai_worker(&stack, &server);
    let first = started(
        &stack,
        &token,
        &character,
        json!({"width": 1024, "height": 1024}),
    )
    .await;
    drain(&stack, &worker).await;
    let shown = stack
        .get(&format!("/api/v1/characters/{character}"), Some(&token))
        .await
        .body;
    let primary = shown["primary_image_url"]
        .as_str()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();

    // An upscale of the 1024² image by 4 is priced as a 4096² output (PRO pays 0.6).
    let preview = generate(
        &stack,
        &token,
        &character,
        json!({"job_type": "upscale", "upscale_factor": 4, "dry_run": true}),
    )
    .await;
    assert_eq!(preview.status.as_u16(), 200, "{}", preview.body);
    let pixels = &preview.body["cost_calculation"]["terms"]["pixels"];
    assert_eq!(pixels["value"], 4096 * 4096, "{}", preview.body);
    // base 10 + upscale 1 + 4 × ceil((4096² − 512²) / 512²) = 11 + 252 = 263; × 0.6 → 158.
    assert_eq!(preview.body["price"], 158);
    assert!(
        preview.body["cost_calculation"]["terms"]
            .get("steps")
            .is_none()
    );
    assert_eq!(preview.body["input_parameters"]["width"], 4096);
    let upscale = started(
        &stack,
        &token,
        &character,
        json!({"job_type": "upscale", "upscale_factor": 4}),
    )
    .await;
    assert_eq!(upscale["cost_credits"], 158);
    assert!(
        upscale["input_parameters"]["source"].get("key").is_none(),
        "a bucket key leaked: {upscale}"
    );
    assert_eq!(
        upscale["input_parameters"]["source"]["image_id"],
        first_image_id(&stack, &character).await
    );
    drain(&stack, &worker).await;
    let (endpoint, body) = server.received().last().cloned().unwrap();
    assert_eq!(endpoint, "extra-single-image");
    assert_eq!(body["upscaling_resize"], 4.0);

    // The upscale added an image; nothing was replaced: the first stays primary.
    let shown = stack
        .get(&format!("/api/v1/characters/{character}"), Some(&token))
        .await
        .body;
    assert_eq!(
        shown["primary_image_url"]
            .as_str()
            .unwrap()
            .split('?')
            .next()
            .unwrap(),
        primary
    );
    assert_eq!(shown["additional_images"].as_array().unwrap().len(), 1);
    let sizes: Vec<(i32, i32, String)> = stack
        .sql()
        .await
        .query(
            "SELECT width, height, job_type FROM character_images WHERE character_id = $1 ORDER BY created_at",
            &[&character],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        sizes,
        vec![
            (1024, 1024, "character_generation".into()),
            (4096, 4096, "upscale".into())
        ]
    );
    // Too big an output is refused before anything is held.
    let upscaled_id: String = stack
        .sql()
        .await
        .query_one(
            "SELECT id FROM character_images WHERE job_type = 'upscale'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let refused = generate(
        &stack,
        &token,
        &character,
        json!({"job_type": "upscale", "upscale_factor": 4, "source_image_id": upscaled_id}),
    )
    .await;
    refused.assert_problem(422);
    assert_eq!(refused.body["errors"][0]["field"], "upscale_factor");

    // Background removal adds an image to the same character, priced on the source's size.
    let removal = started(
        &stack,
        &token,
        &character,
        json!({"job_type": "background_removal", "dry_run": false}),
    )
    .await;
    assert_eq!(removal["input_parameters"]["width"], 1024);
    drain(&stack, &worker).await;
    assert_eq!(server.received().last().unwrap().0, "rembg");
    let removed = job(&stack, &token, removal["id"].as_str().unwrap()).await;
    assert_eq!(removed["generation_provider"], "primary");
    assert!(removed["result_character_id"].is_null());
    assert_eq!(
        scalar(
            &stack,
            "SELECT count(*) FROM character_images WHERE character_id = $1",
            &[&character]
        )
        .await,
        3
    );
    let _ = (first, user_id);
    assert_invariants(&stack.sql().await).await;
}

async fn first_image_id(stack: &TestStack, character: &str) -> String {
    stack
        .sql()
        .await
        .query_one(
            "SELECT id FROM character_images WHERE character_id = $1 ORDER BY created_at LIMIT 1",
            &[&character],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_variation_creates_a_variant_character_and_leaves_the_source_alone() {
    let stack = spawn_stack().await;
    let (token, _, character) = setup(&stack, 1_000).await;
    let server = StandIn::start().await;
    let worker = ai_worker(&stack, &server);
    started(&stack, &token, &character, json!({})).await;
    drain(&stack, &worker).await;
    let source_before = stack
        .get(&format!("/api/v1/characters/{character}"), Some(&token))
        .await
        .body;

    let queued = started(
        &stack,
        &token,
        &character,
        json!({
            "job_type": "variation",
            "variant_type": "outfit_change",
            "denoising_strength": 0.45,
            "changes": {"prompt": "an elf archer in plate armour", "name": "Aria, armoured", "tags": ["elf", "armour"]}
        }),
    )
    .await;
    assert!(queued["result_character_id"].is_null());
    drain(&stack, &worker).await;
    let (endpoint, body) = server.received().last().cloned().unwrap();
    assert_eq!(endpoint, "img2img");
    assert!(
        body["prompt"].as_str().unwrap().contains("plate armour"),
        "{body}"
    );
    assert_eq!(body["denoising_strength"], 0.45);
    assert_eq!(body["init_images"].as_array().unwrap().len(), 1);

    let done = job(&stack, &token, queued["id"].as_str().unwrap()).await;
    let variant_id = done["result_character_id"]
        .as_str()
        .expect("a variant")
        .to_string();
    let variant = stack
        .get(&format!("/api/v1/characters/{variant_id}"), Some(&token))
        .await;
    assert_eq!(variant.status.as_u16(), 200);
    let v = &variant.body;
    assert_eq!(v["parent_character_id"], character.as_str());
    assert_eq!(v["variant_type"], "outfit_change");
    assert_eq!(v["version_number"], 2);
    assert_eq!(v["name"], "Aria, armoured");
    assert_eq!(v["prompt"], "an elf archer in plate armour");
    assert_eq!(v["tags"], json!(["elf", "armour"]));
    // Inherited: what the request did not change.
    for field in [
        "style_type",
        "art_style",
        "mood",
        "color_palette",
        "description",
        "sampler",
        "cfg_scale",
    ] {
        assert_eq!(v[field], source_before[field], "{field}");
    }
    assert_eq!(v["is_public"], false);
    assert_eq!(v["generation_status"], "completed");
    assert!(
        v["primary_image_url"]
            .as_str()
            .unwrap()
            .contains(&format!("/characters/{variant_id}/"))
    );

    // The source keeps exactly its images.
    let source_after = stack
        .get(&format!("/api/v1/characters/{character}"), Some(&token))
        .await
        .body;
    let path = |v: &Value| {
        v["primary_image_url"]
            .as_str()
            .unwrap()
            .split('?')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(path(&source_after), path(&source_before));
    assert_eq!(source_after["additional_images"], json!([]));
    assert_eq!(
        scalar(
            &stack,
            "SELECT count(*) FROM character_images WHERE character_id = $1",
            &[&character]
        )
        .await,
        1
    );

    // A second variant takes the next number in the family, whoever its parent is.
    started(
        &stack,
        &token,
        &variant_id,
        json!({"job_type": "style_transfer", "style_type": "anime"}),
    )
    .await;
    drain(&stack, &worker).await;
    let (version, kind, style): (i32, String, String) = {
        let row = stack
            .sql()
            .await
            .query_one(
                "SELECT version_number, variant_type, style_type FROM characters WHERE parent_character_id = $1",
                &[&variant_id],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(
        (version, kind.as_str(), style.as_str()),
        (3, "style_transfer", "anime")
    );
    assert_invariants(&stack.sql().await).await;
}

#[tokio::test]
async fn variant_requests_are_checked_before_anything_is_held() {
    let stack = spawn_stack().await;
    let (token, user_id, character) = setup(&stack, 100).await;
    // No image yet: a job that starts from one is a conflict.
    generate(&stack, &token, &character, json!({"job_type": "variation"}))
        .await
        .assert_problem(409);
    started(&stack, &token, &character, json!({})).await;
    drain(&stack, &stack.stack.worker).await;
    for (body, status, field) in [
        (
            json!({"job_type": "variation", "changes": {"prompt": "a naked elf"}}),
            422,
            "changes.prompt",
        ),
        (
            json!({"job_type": "variation", "changes": {"is_public": true}}),
            422,
            "changes.is_public",
        ),
        (
            json!({"job_type": "variation", "source_image_id": "nope"}),
            422,
            "source_image_id",
        ),
        (json!({"job_type": "upscale", "width": 512}), 422, "width"),
        (json!({"variant_type": "pose_change"}), 422, "variant_type"),
    ] {
        let reply = generate(&stack, &token, &character, body.clone()).await;
        reply.assert_problem(status);
        assert_eq!(
            reply.body["errors"][0]["field"], field,
            "{body}: {}",
            reply.body
        );
    }
    assert_eq!(
        scalar(&stack, "SELECT count(*) FROM generation_jobs", &[]).await,
        1,
        "refused requests record no job"
    );
    assert_eq!(balance(&stack, &user_id).await.reserved_balance, 0);
}

/// A tiny deterministic generator, so the 50 requests are the same every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[tokio::test]
async fn a_preview_answers_exactly_what_dispatch_charges() {
    let stack = spawn_stack().await;
    let (token, user_id, character) = setup(&stack, 600).await;
    let client = stack.sql().await;
    // Limits would refuse most of 50 real requests a minute: lifted for this test.
    // Refusals are compared too: the purchased credits run out on the way (402).
    client
        .execute(
            "UPDATE api_credit_configs SET rate_limit_per_minute = NULL, daily_limit = NULL, \
             cost_formula = cost_formula || '{\"fallback_cost\": 2}'",
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
    client
        .execute(
            "UPDATE users SET subscription_tier = 'PRO', daily_quota = 3",
            &[],
        )
        .await
        .unwrap();
    client
        .execute("UPDATE user_credits SET daily_allowance = 40", &[])
        .await
        .unwrap();
    started(&stack, &token, &character, json!({})).await;
    drain(&stack, &stack.stack.worker).await;

    let mut rng = Lcg(20261201);
    let job_types = [
        "character_generation",
        "style_transfer",
        "variation",
        "upscale",
        "background_removal",
    ];
    let mut compared = 0;
    let mut refused = 0;
    let mut buckets_seen = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let job_type = job_types[rng.next(5) as usize];
        let mut body =
            json!({"job_type": job_type, "steps": 10 + rng.next(60), "priority": 1 + rng.next(9)});
        match job_type {
            "character_generation" => {
                body["width"] = json!(64 * (1 + rng.next(32)));
                body["height"] = json!(64 * (1 + rng.next(32)));
                body["batch_size"] = json!(1 + rng.next(4));
            }
            "upscale" => body["upscale_factor"] = json!(2 + rng.next(3)),
            "background_removal" => {}
            _ => body["batch_size"] = json!(1 + rng.next(4)),
        }
        let mut preview_body = body.clone();
        preview_body["dry_run"] = json!(true);
        let before = balance(&stack, &user_id).await;
        let preview = generate(&stack, &token, &character, preview_body).await;
        let after_preview = balance(&stack, &user_id).await;
        assert_eq!(
            (
                before.current_balance,
                before.reserved_balance,
                before.daily_allowance_used,
                before.free_generations_used
            ),
            (
                after_preview.current_balance,
                after_preview.reserved_balance,
                after_preview.daily_allowance_used,
                after_preview.free_generations_used
            ),
            "a preview changed the balance"
        );
        let real = generate(&stack, &token, &character, body.clone()).await;
        match (preview.status.as_u16(), real.status.as_u16()) {
            (200, 202) => {
                let held = &real.body["processing_metadata"]["credits"];
                assert_eq!(preview.body["price"], real.body["cost_credits"], "{body}");
                assert_eq!(preview.body["price"], held["price"], "{body}");
                assert_eq!(
                    preview.body["fallback_price"], held["fallback_price"],
                    "{body}"
                );
                assert_eq!(
                    preview.body["paid_with"]["free_generation"], held["free_generation"],
                    "{body}"
                );
                assert_eq!(
                    preview.body["paid_with"]["daily_allowance"], held["allowance_credits"],
                    "{body}"
                );
                assert_eq!(
                    preview.body["paid_with"]["purchased_credits"], held["reserved_credits"],
                    "{body}"
                );
                assert_eq!(
                    preview.body["cost_calculation"],
                    real.body["processing_metadata"]["cost_calculation"],
                    "{body}"
                );
                buckets_seen.insert(if held["free_generation"] == true {
                    "free"
                } else if held["allowance_credits"].as_i64() > Some(0) {
                    "allowance"
                } else {
                    "purchased"
                });
                compared += 1;
                // The job is done and paid, so the buckets run down request by request.
                let job_id = real.body["id"].as_str().unwrap();
                client
                    .execute(
                        "UPDATE generation_jobs SET status = 'completed' WHERE id = $1",
                        &[&job_id],
                    )
                    .await
                    .unwrap();
                shared::credits::holds::settle(&client, job_id)
                    .await
                    .unwrap()
                    .unwrap();
            }
            (p, r) => {
                refused += 1;
                assert_eq!(
                    p, r,
                    "preview {} vs real {} for {body}",
                    preview.body, real.body
                );
                assert_eq!(preview.body["type"], real.body["type"]);
                assert_eq!(preview.body["needed"], real.body["needed"], "{body}");
            }
        }
    }
    assert!(
        compared >= 15 && refused >= 1,
        "{compared} went through, {refused} were refused"
    );
    assert_eq!(
        buckets_seen.len(),
        3,
        "every bucket should pay at least once: {buckets_seen:?}"
    );
    // Previews recorded nothing: only the first job and the real ones exist.
    assert_eq!(
        scalar(&stack, "SELECT count(*) FROM generation_jobs", &[]).await,
        1 + compared
    );
    assert_invariants(&client).await;
}
