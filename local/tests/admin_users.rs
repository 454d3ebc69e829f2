//! User admin over real HTTP against real PostgreSQL: looking users up,
//! tier changes setting the daily quota and allowance from the tier table
//! (and touching no balance), subscription dates, and account status — a
//! suspended user reads but cannot generate or publish and leaves the gallery,
//! a banned user's token is refused on every authenticated route. Every change
//! is logged with the admin's id.

use reqwest::Method;
use serde_json::{Value, json};
use shared::kernel::tier::Tier;
use testkit::ledger::assert_invariants;
use testkit::{Reply, TestStack, spawn_stack};

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

const ADMIN: &str = "root@example.com";

/// Signs in an admin (so they have a users row); returns the token and id.
async fn admin(stack: &TestStack) -> (String, String) {
    let token = stack.token_with(ADMIN, &["admin"]);
    let reply = stack
        .call(Method::POST, "/api/v1/auth/session", Some(&token), None)
        .await;
    assert!(reply.status.is_success(), "{}", reply.body);
    (token, user_id(stack, ADMIN).await)
}

async fn user_id(stack: &TestStack, email: &str) -> String {
    stack
        .sql()
        .await
        .query_one("SELECT id FROM users WHERE email = $1", &[&email])
        .await
        .unwrap()
        .get(0)
}

async fn patch_user(stack: &TestStack, token: &str, id: &str, body: Value) -> Reply {
    stack
        .call(
            Method::PATCH,
            &format!("/api/v1/admin/users/{id}"),
            Some(token),
            Some(body),
        )
        .await
}

/// `users.daily_quota` and `user_credits.daily_allowance` as stored.
async fn entitlements(stack: &TestStack, id: &str) -> (i32, i32) {
    let row = stack
        .sql()
        .await
        .query_one(
            "SELECT u.daily_quota, c.daily_allowance FROM users u JOIN user_credits c ON c.user_id = u.id \
             WHERE u.id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// The whole `users` row and credit account, as text.
async fn user_row(stack: &TestStack, id: &str) -> String {
    stack
        .sql()
        .await
        .query_one(
            "SELECT u::text || c::text FROM users u JOIN user_credits c ON c.user_id = u.id WHERE u.id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}

async fn count(stack: &TestStack, sql: &str) -> i64 {
    stack.sql().await.query_one(sql, &[]).await.unwrap().get(0)
}

/// `(user_id, entity_id, metadata)` of the `admin_user_updated` rows, in order.
async fn user_updates(stack: &TestStack) -> Vec<(String, String, Value)> {
    stack
        .sql()
        .await
        .query(
            "SELECT user_id, entity_id, metadata FROM user_activity_logs \
             WHERE activity_type = 'admin_user_updated' ORDER BY created_at",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

async fn create(stack: &TestStack, token: &str, name: &str, public: bool) -> Reply {
    stack
        .call(
            Method::POST,
            "/api/v1/characters",
            Some(token),
            Some(json!({"name": name, "prompt": "an elf archer", "style_type": "fantasy", "is_public": public})),
        )
        .await
}

async fn gallery(stack: &TestStack) -> Vec<String> {
    let reply = stack.get("/api/v1/gallery", None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

// ------------------------------------------------------------------------------------------
// Lookup
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn users_are_found_by_email_and_username_regardless_of_case() {
    let stack = spawn_stack().await;
    let (token, _) = admin(&stack).await;
    stack.user("Ann.Lee@Example.com", "Ann_Lee").await;
    stack.user("bob@example.com", "bob").await;
    let ann_id = user_id(&stack, "Ann.Lee@Example.com").await;

    for query in [
        "email=ann.lee@example.com",
        "email=ANN.LEE%40EXAMPLE.COM",
        "username=ann_lee",
        "username=ANN_LEE&email=Ann.Lee@example.com",
    ] {
        let reply = stack
            .get(&format!("/api/v1/admin/users?{query}"), Some(&token))
            .await;
        assert_eq!(reply.status, 200, "{query}: {}", reply.body);
        let user = &reply.body;
        assert_eq!(user["id"], ann_id, "{query}");
        // The whole row, internals included.
        assert_eq!(user["email"], "Ann.Lee@Example.com");
        assert_eq!(user["username"], "Ann_Lee");
        assert!(user["auth0_id"].is_string());
        assert_eq!(user["account_status"], "active");
        assert_eq!(user["subscription_tier"], "FREE");
        assert_eq!(user["daily_quota"], 3);
        // And the credit account.
        let credits = &user["credits"];
        assert_eq!(credits["current_balance"], 0, "{credits}");
        assert_eq!(credits["available"], 0);
        assert_eq!(credits["daily_allowance"], 0);
        assert_eq!(credits["free_generations_left"], 3);
    }

    // Exact matches only; both given must both match.
    for query in [
        "email=ann",
        "username=ann",
        "email=nobody@example.com",
        "email=ann.lee@example.com&username=bob",
    ] {
        stack
            .get(&format!("/api/v1/admin/users?{query}"), Some(&token))
            .await
            .assert_problem(404);
    }
    // At least one, well-formed, and nothing else.
    for (query, field) in [
        ("", "query"),
        ("?email=", "email"),
        ("?username=", "username"),
        ("?email=a%00b", "email"),
        ("?id=x", "id"),
    ] {
        let reply = stack
            .get(&format!("/api/v1/admin/users{query}"), Some(&token))
            .await;
        reply.assert_problem(422);
        assert_eq!(reply.body["errors"][0]["field"], field, "{query}");
    }
}

// ------------------------------------------------------------------------------------------
// Tiers and subscriptions
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_tier_change_sets_quota_and_allowance_from_the_table_and_moves_no_credits() {
    let stack = spawn_stack().await;
    let (token, admin_id) = admin(&stack).await;
    let ann = stack.user("ann@example.com", "ann").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    // A new account has what the table gives FREE.
    let terms = |tier: Tier| {
        (
            tier.terms().free_generations_per_day,
            tier.terms().allowance_credits_per_day,
        )
    };
    assert_eq!(entitlements(&stack, &ann_id).await, terms(Tier::Free));

    let mut previous = Tier::Free;
    for tier in Tier::ALL.into_iter().skip(1).chain([Tier::Free]) {
        let (quota, allowance) = terms(tier);
        let reply = patch_user(
            &stack,
            &token,
            &ann_id,
            json!({"subscription_tier": tier.as_str()}),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["subscription_tier"], tier.as_str());
        assert_eq!(reply.body["daily_quota"], quota);
        assert_eq!(reply.body["credits"]["daily_allowance"], allowance);
        assert_eq!(entitlements(&stack, &ann_id).await, (quota, allowance));
        // The user sees it in their balance.
        let credits = stack.get("/api/v1/credits", Some(&ann)).await;
        assert_eq!(credits.body["free_generations_quota"], quota);
        assert_eq!(credits.body["daily_allowance"], allowance);
        assert_eq!(credits.body["current_balance"], 0);
        // Logged with what changed.
        let (admin, target, meta) = user_updates(&stack).await.pop().unwrap();
        assert_eq!(
            (admin.as_str(), target.as_str()),
            (admin_id.as_str(), ann_id.as_str())
        );
        assert_eq!(meta["target_user_id"], ann_id);
        let (quota_before, allowance_before) = terms(previous);
        assert_eq!(
            meta["changes"],
            json!({
                "subscription_tier": {"from": previous.as_str(), "to": tier.as_str()},
                "daily_quota": {"from": quota_before, "to": quota},
                "daily_allowance": {"from": allowance_before, "to": allowance},
            })
        );
        previous = tier;
    }
    // The allowance is not balance: no ledger entry, the books still balance.
    assert_eq!(
        count(&stack, "SELECT count(*) FROM credit_transactions").await,
        0
    );
    assert_invariants(&stack.sql().await).await;
    assert_eq!(user_updates(&stack).await.len(), Tier::ALL.len());

    // Subscription dates: set, cleared, and start before end.
    let reply = patch_user(
        &stack,
        &token,
        &ann_id,
        json!({
            "subscription_tier": "PRO",
            "subscription_start_date": "2026-01-01T00:00:00Z",
            "subscription_end_date": "2099-01-01T00:00:00Z",
        }),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.body["subscription_start_date"],
        "2026-01-01T00:00:00Z"
    );
    assert_eq!(reply.body["subscription_end_date"], "2099-01-01T00:00:00Z");
    let reply = patch_user(
        &stack,
        &token,
        &ann_id,
        json!({"subscription_end_date": "2025-12-31T00:00:00Z"}),
    )
    .await;
    reply.assert_problem(422);
    assert_eq!(reply.body["errors"][0]["field"], "subscription_end_date");
    let reply = patch_user(
        &stack,
        &token,
        &ann_id,
        json!({"subscription_end_date": null}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body["subscription_end_date"].is_null());
    assert_eq!(
        reply.body["subscription_start_date"],
        "2026-01-01T00:00:00Z"
    );
    assert_eq!(reply.body["subscription_tier"], "PRO");
}

#[tokio::test]
async fn bad_user_updates_are_refused_and_change_nothing() {
    let stack = spawn_stack().await;
    let (token, admin_id) = admin(&stack).await;
    stack.user("ann@example.com", "ann").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let before = user_row(&stack, &ann_id).await;
    for (body, field) in [
        (json!({}), "body"),
        (json!({"account_status": "deleted"}), "account_status"),
        (json!({"account_status": "frozen"}), "account_status"),
        (json!({"subscription_tier": "GOLD"}), "subscription_tier"),
        (json!({"subscription_tier": null}), "subscription_tier"),
        (
            json!({"subscription_start_date": "soon"}),
            "subscription_start_date",
        ),
        (
            json!({"subscription_tier": "PRO", "daily_quota": 1000}),
            "daily_quota",
        ),
        (
            json!({"account_status": "active", "email": "x@example.com"}),
            "email",
        ),
        (json!({"account_status": "active", "role": "admin"}), "role"),
    ] {
        let reply = patch_user(&stack, &token, &ann_id, body.clone()).await;
        reply.assert_problem(422);
        assert_eq!(reply.body["errors"][0]["field"], field, "{body}");
    }
    patch_user(
        &stack,
        &token,
        "no-such-user",
        json!({"account_status": "banned"}),
    )
    .await
    .assert_problem(404);
    // An admin cannot change their own account.
    patch_user(
        &stack,
        &token,
        &admin_id,
        json!({"subscription_tier": "ENTERPRISE"}),
    )
    .await
    .assert_problem(403);
    assert_eq!(user_row(&stack, &ann_id).await, before);
    assert!(user_updates(&stack).await.is_empty());

    // An erased account cannot be changed.
    stack
        .sql()
        .await
        .execute(
            "UPDATE users SET account_status = 'deleted' WHERE id = $1",
            &[&ann_id],
        )
        .await
        .unwrap();
    let erased = user_row(&stack, &ann_id).await;
    for body in [
        json!({"account_status": "active"}),
        json!({"subscription_tier": "PRO"}),
    ] {
        patch_user(&stack, &token, &ann_id, body)
            .await
            .assert_problem(409);
    }
    assert_eq!(user_row(&stack, &ann_id).await, erased);
    assert!(user_updates(&stack).await.is_empty());
}

// ------------------------------------------------------------------------------------------
// Account status
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_suspended_user_reads_but_cannot_generate_or_publish_and_leaves_the_gallery() {
    let stack = spawn_stack().await;
    let (token, admin_id) = admin(&stack).await;
    let ann = stack.user("ann@example.com", "ann").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    stack
        .call(
            Method::PATCH,
            "/api/v1/me",
            Some(&ann),
            Some(json!({"allow_gallery_showcase": true})),
        )
        .await;
    let public = create(&stack, &ann, "Aria", true).await;
    assert_eq!(public.status, 201, "{}", public.body);
    let draft = create(&stack, &ann, "Draft", false).await;
    let draft_id = draft.body["id"].as_str().unwrap().to_string();
    assert_eq!(gallery(&stack).await, ["Aria"]);

    let reply = patch_user(
        &stack,
        &token,
        &ann_id,
        json!({"account_status": "suspended"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["account_status"], "suspended");
    // The V3 trigger takes a suspended owner's characters out of the gallery.
    assert_eq!(gallery(&stack).await, Vec::<String>::new());

    // Reading goes on.
    for path in [
        "/api/v1/me".to_string(),
        "/api/v1/characters".to_string(),
        format!("/api/v1/characters/{draft_id}"),
        "/api/v1/credits".to_string(),
        "/api/v1/jobs".to_string(),
    ] {
        let reply = stack.get(&path, Some(&ann)).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    }
    // No generating, no publishing; private work is fine.
    let generate = format!("/api/v1/characters/{draft_id}/generate");
    stack
        .call(Method::POST, &generate, Some(&ann), Some(json!({})))
        .await
        .assert_problem(403);
    create(&stack, &ann, "Loud", true).await.assert_problem(403);
    stack
        .call(
            Method::PATCH,
            &format!("/api/v1/characters/{draft_id}"),
            Some(&ann),
            Some(json!({"is_public": true})),
        )
        .await
        .assert_problem(403);
    assert_eq!(create(&stack, &ann, "Quiet", false).await.status, 201);
    assert_eq!(
        count(&stack, "SELECT count(*) FROM generation_jobs").await,
        0
    );

    // Reinstated: back in the gallery, generating again.
    let reply = patch_user(&stack, &token, &ann_id, json!({"account_status": "active"})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(gallery(&stack).await, ["Aria"]);
    let reply = stack
        .call(Method::POST, &generate, Some(&ann), Some(json!({})))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);

    let log = user_updates(&stack).await;
    let statuses: Vec<&Value> = log
        .iter()
        .map(|(admin, target, meta)| {
            assert_eq!((admin, target), (&admin_id, &ann_id));
            &meta["changes"]["account_status"]
        })
        .collect();
    assert_eq!(
        statuses,
        [
            &json!({"from": "active", "to": "suspended"}),
            &json!({"from": "suspended", "to": "active"}),
        ]
    );
}

/// A concrete path and a valid body for an operation of the document, as Ann (who owns
/// `character`, `collection` and `job`) would call it.
fn probe(method: &str, template: &str, ids: &[(&str, &str)]) -> (String, Option<Value>) {
    let mut path = template.to_string();
    for (placeholder, value) in ids {
        path = path.replace(placeholder, value);
    }
    let body = match (method, template) {
        ("POST", "/api/v1/characters") => {
            json!({"name": "Probe", "prompt": "an elf", "style_type": "fantasy"})
        }
        ("PATCH", "/api/v1/characters/{id}") => json!({"name": "Renamed"}),
        ("PUT", "/api/v1/characters/{id}/rating") => json!({"rating": 5}),
        ("POST", "/api/v1/characters/{id}/reports") => json!({"reason": "spam"}),
        ("POST", "/api/v1/collections") => json!({"name": "Probe"}),
        ("PATCH", "/api/v1/collections/{id}") => json!({"name": "Renamed"}),
        ("POST", "/api/v1/credits/gifts") => json!({"to_username": "bob", "amount": 1}),
        ("POST", "/api/v1/credits/purchases") => json!({"package_id": "pkg_starter"}),
        ("PATCH", "/api/v1/me") => json!({"display_name": "Ann"}),
        ("DELETE", "/api/v1/me") => json!({"confirm": "ann@example.com"}),
        _ => json!({}),
    };
    (path, Some(body))
}

#[tokio::test]
async fn a_banned_users_token_is_refused_on_every_authenticated_route() {
    let stack = spawn_stack().await;
    let (token, _) = admin(&stack).await;
    let ann = stack.user("ann@example.com", "ann").await;
    stack.user("bob@example.com", "bob").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let character = create(&stack, &ann, "Aria", true).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let collection = stack
        .call(
            Method::POST,
            "/api/v1/collections",
            Some(&ann),
            Some(json!({"name": "Mine"})),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let job = stack
        .call(
            Method::POST,
            &format!("/api/v1/characters/{character}/generate"),
            Some(&ann),
            Some(json!({})),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(stack.get("/api/v1/me", Some(&ann)).await.status, 200);

    let reply = patch_user(&stack, &token, &ann_id, json!({"account_status": "banned"})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["account_status"], "banned");
    // Signing in again does not help.
    stack
        .call(Method::POST, "/api/v1/auth/session", Some(&ann), None)
        .await
        .assert_problem(403);
    stack
        .get("/api/v1/me", Some(&ann))
        .await
        .assert_problem(403);

    // Every operation the document says takes a token (optional ones included) refuses it,
    // each with a body it would otherwise accept.
    let doc: Value = serde_json::from_str(&shared::runtime::openapi::json()).unwrap();
    let member = format!("{collection}/characters/{character}");
    let collection_path = format!("/collections/{collection}");
    let job_path = format!("/jobs/{job}");
    let ids = [
        ("{id}/characters/{character_id}", member.as_str()),
        ("/collections/{id}", collection_path.as_str()),
        ("/jobs/{id}", job_path.as_str()),
        ("{id}", character.as_str()),
        ("{username}", "bob"),
    ];
    let before = count(&stack, "SELECT count(*) FROM user_activity_logs").await;
    let mut probed = 0;
    for (template, item) in doc["paths"].as_object().unwrap() {
        if template.starts_with("/api/v1/admin") {
            continue;
        }
        for (method, operation) in item.as_object().unwrap() {
            let takes_token = operation["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
            if !takes_token {
                continue;
            }
            let method = method.to_uppercase();
            let (path, body) = probe(&method, template, &ids);
            let body = body.filter(|_| operation["requestBody"].is_object());
            let mut request = stack
                .http
                .request(
                    Method::from_bytes(method.as_bytes()).unwrap(),
                    format!("{}{path}", stack.base_url),
                )
                .bearer_auth(&ann)
                .header("idempotency-key", format!("banned-probe-{probed}"));
            if let Some(body) = &body {
                request = request.json(body);
            }
            let reply = testkit::read(request.send().await.unwrap()).await;
            assert_eq!(
                reply.status, 403,
                "{method} {path} answered a banned user: {}",
                reply.body
            );
            reply.assert_problem(403);
            // Refused for the ban, not for anything else a 403 can mean.
            assert!(
                reply.body["detail"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("this account has been banned")),
                "{method} {path}: {}",
                reply.body
            );
            probed += 1;
        }
    }
    assert!(probed >= 35, "only {probed} operations probed");
    assert_eq!(
        count(&stack, "SELECT count(*) FROM user_activity_logs").await,
        before,
        "a refused request was logged as done"
    );

    // A banned admin is refused as well.
    let boss = stack.token_with("boss@example.com", &["admin"]);
    stack
        .call(Method::POST, "/api/v1/auth/session", Some(&boss), None)
        .await;
    let boss_id = user_id(&stack, "boss@example.com").await;
    let reply = patch_user(
        &stack,
        &token,
        &boss_id,
        json!({"account_status": "banned"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    for path in ["/api/v1/admin/reports", "/api/v1/admin/users?username=ann"] {
        stack.get(path, Some(&boss)).await.assert_problem(403);
    }

    // Lifting the ban lets Ann back in.
    let reply = patch_user(&stack, &token, &ann_id, json!({"account_status": "active"})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(stack.get("/api/v1/me", Some(&ann)).await.status, 200);
}

// ------------------------------------------------------------------------------------------
// Suspension and bans stop what the account does to others
// ------------------------------------------------------------------------------------------

async fn reserved(stack: &TestStack, id: &str) -> (i32, i32) {
    let row = stack
        .sql()
        .await
        .query_one(
            "SELECT current_balance, reserved_balance FROM user_credits WHERE user_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// `(job status, hold status)` of a job.
async fn job_and_hold(stack: &TestStack, job: &str) -> (String, String) {
    let row = stack
        .sql()
        .await
        .query_one(
            "SELECT j.status, h.status FROM generation_jobs j JOIN credit_holds h ON h.job_id = j.id \
             WHERE j.id = $1",
            &[&job],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn queue_job(stack: &TestStack, token: &str) -> String {
    let character = create(stack, token, "Sketch", false).await;
    assert_eq!(character.status, 201, "{}", character.body);
    let id = character.body["id"].as_str().unwrap();
    let reply = stack
        .call(
            Method::POST,
            &format!("/api/v1/characters/{id}/generate"),
            Some(token),
            Some(json!({})),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    reply.body["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn suspending_or_banning_cancels_queued_jobs_and_releases_each_hold_once() {
    let stack = spawn_stack().await;
    let (token, _) = admin(&stack).await;
    let (ann, ann_id) = stack.buyer("ann@example.com", "ann", 100).await;
    let (carl, carl_id) = stack.buyer("carl@example.com", "carl", 100).await;
    let anns_job = queue_job(&stack, &ann).await;
    let carls_job = queue_job(&stack, &carl).await;
    let (balance, held) = reserved(&stack, &ann_id).await;
    assert_eq!(balance, 100);
    assert!(held > 0, "the job holds credits");
    assert_eq!(
        job_and_hold(&stack, &anns_job).await,
        ("queued".into(), "held".into())
    );

    // Suspension: the queued job is cancelled and its hold released, in the same change.
    let reply = patch_user(
        &stack,
        &token,
        &ann_id,
        json!({"account_status": "suspended"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        job_and_hold(&stack, &anns_job).await,
        ("cancelled".into(), "released".into())
    );
    assert_eq!(reserved(&stack, &ann_id).await, (100, 0));
    // Suspending again releases nothing twice.
    let reply = patch_user(
        &stack,
        &token,
        &ann_id,
        json!({"account_status": "suspended"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reserved(&stack, &ann_id).await, (100, 0));

    // A ban does the same.
    let reply = patch_user(
        &stack,
        &token,
        &carl_id,
        json!({"account_status": "banned"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        job_and_hold(&stack, &carls_job).await,
        ("cancelled".into(), "released".into())
    );
    assert_eq!(reserved(&stack, &carl_id).await, (100, 0));

    // The worker, handed their messages, renders and charges nothing.
    let batch = stack.stack.queue.receive(10);
    assert_eq!(batch.records.len(), 2);
    let response = stack.stack.worker.handle_batch(batch).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(reserved(&stack, &ann_id).await, (100, 0));
    assert_eq!(reserved(&stack, &carl_id).await, (100, 0));
    assert_eq!(
        count(&stack, "SELECT count(*) FROM character_images").await,
        0
    );
    assert_invariants(&stack.sql().await).await;

    // The log names the jobs each change cancelled.
    let cancelled: Vec<Value> = user_updates(&stack)
        .await
        .into_iter()
        .map(|(_, _, meta)| meta["jobs_cancelled"].clone())
        .collect();
    assert_eq!(
        cancelled,
        [json!([anns_job]), json!([]), json!([carls_job])]
    );
}

#[tokio::test]
async fn a_suspended_user_cannot_like_rate_report_or_publish_collections() {
    let stack = spawn_stack().await;
    let (token, _) = admin(&stack).await;
    let ann = stack.user("ann@example.com", "ann").await;
    let bob = stack.user("bob@example.com", "bob").await;
    let bob_id = user_id(&stack, "bob@example.com").await;
    let aria = create(&stack, &ann, "Aria", true).await;
    let aria = aria.body["id"].as_str().unwrap().to_string();
    let like = format!("/api/v1/characters/{aria}/like");
    let reply = stack.call(Method::PUT, &like, Some(&bob), None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let shelf = stack
        .call(
            Method::POST,
            "/api/v1/collections",
            Some(&bob),
            Some(json!({"name": "Shelf"})),
        )
        .await;
    assert_eq!(shelf.status, 201, "{}", shelf.body);
    let shelf = shelf.body["id"].as_str().unwrap().to_string();

    let reply = patch_user(
        &stack,
        &token,
        &bob_id,
        json!({"account_status": "suspended"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // Acting on what others see: 403, and nothing is stored.
    stack
        .call(Method::PUT, &like, Some(&bob), None)
        .await
        .assert_problem(403);
    stack
        .call(
            Method::PUT,
            &format!("/api/v1/characters/{aria}/rating"),
            Some(&bob),
            Some(json!({"rating": 5})),
        )
        .await
        .assert_problem(403);
    stack
        .call(
            Method::POST,
            &format!("/api/v1/characters/{aria}/reports"),
            Some(&bob),
            Some(json!({"reason": "spam"})),
        )
        .await
        .assert_problem(403);
    stack
        .call(
            Method::POST,
            "/api/v1/collections",
            Some(&bob),
            Some(json!({"name": "Loud", "is_public": true})),
        )
        .await
        .assert_problem(403);
    stack
        .call(
            Method::PATCH,
            &format!("/api/v1/collections/{shelf}"),
            Some(&bob),
            Some(json!({"is_public": true})),
        )
        .await
        .assert_problem(403);
    assert_eq!(
        count(&stack, "SELECT count(*) FROM character_ratings").await,
        0
    );
    assert_eq!(
        count(&stack, "SELECT count(*) FROM content_reports").await,
        0
    );
    assert_eq!(
        count(
            &stack,
            "SELECT count(*) FROM collections WHERE coalesce(is_public, false)"
        )
        .await,
        0
    );

    // Reading, private work and taking back are fine.
    let reply = stack
        .get(&format!("/api/v1/characters/{aria}"), Some(&bob))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = stack
        .get(&format!("/api/v1/characters/{aria}/ratings"), Some(&bob))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = stack
        .call(
            Method::POST,
            "/api/v1/collections",
            Some(&bob),
            Some(json!({"name": "Quiet"})),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let reply = stack.call(Method::DELETE, &like, Some(&bob), None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["liked"], false);

    // Reinstated, Bob may like again.
    let reply = patch_user(&stack, &token, &bob_id, json!({"account_status": "active"})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = stack.call(Method::PUT, &like, Some(&bob), None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

// ------------------------------------------------------------------------------------------
// Admin reads are audited
// ------------------------------------------------------------------------------------------

/// `(user_id, activity_type, entity_type, entity_id, metadata)` of an activity row.
type LogRow = (
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    Value,
);

#[tokio::test]
async fn lookups_and_report_queue_reads_are_logged_with_the_admin() {
    let stack = spawn_stack().await;
    let (token, admin_id) = admin(&stack).await;
    let ann = stack.user("ann@example.com", "ann").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let bob = stack.user("bob@example.com", "bob").await;
    let aria = create(&stack, &ann, "Aria", true).await;
    let aria = aria.body["id"].as_str().unwrap().to_string();
    let filed = stack
        .call(
            Method::POST,
            &format!("/api/v1/characters/{aria}/reports"),
            Some(&bob),
            Some(json!({"reason": "spam"})),
        )
        .await;
    assert_eq!(filed.status, 201, "{}", filed.body);
    let report_id = filed.body["id"].as_str().unwrap().to_string();

    let found = stack
        .get("/api/v1/admin/users?email=ANN@example.com", Some(&token))
        .await;
    assert_eq!(found.status, 200, "{}", found.body);
    stack
        .get("/api/v1/admin/users?username=nobody", Some(&token))
        .await
        .assert_problem(404);
    // Refused before any read: nothing to log.
    stack
        .get("/api/v1/admin/users?email=", Some(&token))
        .await
        .assert_problem(422);
    stack
        .get("/api/v1/admin/users?email=ann@example.com", Some(&ann))
        .await
        .assert_problem(403);
    let queue = stack.get("/api/v1/admin/reports", Some(&token)).await;
    assert_eq!(queue.status, 200, "{}", queue.body);

    let rows: Vec<LogRow> = stack
        .sql()
        .await
        .query(
            "SELECT user_id, activity_type, entity_type, entity_id, metadata FROM user_activity_logs \
             WHERE activity_type IN ('admin_user_lookup', 'admin_reports_listed') ORDER BY created_at",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4)))
        .collect();
    assert_eq!(
        rows,
        vec![
            (
                Some(admin_id.clone()),
                "admin_user_lookup".to_string(),
                Some("user".to_string()),
                Some(ann_id.clone()),
                json!({"query": {"email": "ANN@example.com", "username": null},
                       "found": true, "target_user_id": ann_id}),
            ),
            (
                Some(admin_id.clone()),
                "admin_user_lookup".to_string(),
                Some("user".to_string()),
                None,
                json!({"query": {"email": null, "username": "nobody"},
                       "found": false, "target_user_id": null}),
            ),
            (
                Some(admin_id.clone()),
                "admin_reports_listed".to_string(),
                Some("content_report".to_string()),
                None,
                json!({"status": "open", "limit": 24, "after_cursor": false,
                       "report_ids": [report_id]}),
            ),
        ]
    );
}
