//! Admin routes of the credit engine over real HTTP against real PostgreSQL:
//! the admin wall (401/403 on every route), pricing and package CRUD with
//! field-named validation, pricing changes reaching quotes at once, pricing
//! rules at their exact boundaries through `credits::engine::quote`,
//! adjustments that never take a balance below what is available, and job
//! refunds that happen exactly once however often (or concurrently) asked.

use axum::response::IntoResponse;
use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};
use shared::credits::engine;
use shared::credits::holds;
use shared::credits::ledger::{self, Entry};
use shared::credits::pricing::{PriceInputs, Quote};
use shared::kernel::error::ApiError;
use shared::users::{USER_COLUMNS, User};
use testkit::ledger::assert_invariants;
use testkit::{Reply, TestStack, spawn_stack};

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

const ADMIN: &str = "admin@example.com";

/// Signs in an admin (so they have a users row); returns the token and id.
async fn admin(stack: &TestStack) -> (String, String) {
    let token = stack.token_with(ADMIN, &["admin"]);
    let reply = stack
        .call(Method::POST, "/api/v1/auth/session", Some(&token), None)
        .await;
    assert!(reply.status.is_success(), "{}", reply.body);
    let id = user_id(stack, ADMIN).await;
    (token, id)
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

async fn user_row(client: &tokio_postgres::Client, email: &str) -> User {
    let row = client
        .query_one(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1"),
            &[&email],
        )
        .await
        .unwrap();
    User::from_row(&row).unwrap()
}

/// Signs `email` in with the given tier (an active subscription unless `lapsed`).
async fn user_with_tier(stack: &TestStack, email: &str, tier: &str, lapsed: bool) -> String {
    stack.sign_in(email).await;
    let end: Option<chrono::DateTime<chrono::Utc>> =
        lapsed.then(|| chrono::Utc::now() - chrono::Duration::days(1));
    stack
        .sql()
        .await
        .execute(
            "UPDATE users SET subscription_tier = $2, subscription_end_date = $3 WHERE email = $1",
            &[&email, &tier, &end],
        )
        .await
        .unwrap();
    user_id(stack, email).await
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

async fn balance(client: &tokio_postgres::Client, user_id: &str) -> (i32, i32) {
    let row = client
        .query_one(
            "SELECT current_balance, reserved_balance FROM user_credits WHERE user_id = $1",
            &[&user_id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn post(stack: &TestStack, token: &str, path: &str, body: Value) -> Reply {
    stack
        .call(Method::POST, path, Some(token), Some(body))
        .await
}

async fn patch(stack: &TestStack, token: &str, path: &str, body: Value) -> Reply {
    stack
        .call(Method::PATCH, path, Some(token), Some(body))
        .await
}

async fn call_with_key(
    stack: &TestStack,
    path: &str,
    token: &str,
    body: Option<Value>,
    key: &str,
) -> Reply {
    let mut request = stack
        .http
        .post(format!("{}{path}", stack.base_url))
        .bearer_auth(token)
        .header("idempotency-key", key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    testkit::read(request.send().await.unwrap()).await
}

/// The fields a 422 names.
fn error_fields(reply: &Reply) -> Vec<String> {
    reply.assert_problem(422);
    reply.body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .filter_map(|e| e["field"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn assert_refused(reply: &Reply, field: &str) {
    let fields = error_fields(reply);
    assert!(
        fields.iter().any(|f| f == field),
        "expected a 422 naming {field}, got {fields:?}: {}",
        reply.body
    );
}

/// Quotes `method path` for `email` in its own transaction, committed only
/// when the quote succeeds (as a request handler would).
async fn quote(
    stack: &TestStack,
    email: &str,
    method: &str,
    path: &str,
    inputs: &PriceInputs,
) -> Result<Option<Quote>, ApiError> {
    let mut client = stack.sql().await;
    let user = user_row(&client, email).await;
    let tx = client.transaction().await.unwrap();
    let quoted = engine::quote(
        &tx,
        &stack
            .stack
            .state
            .cache::<shared::credits::engine::PricingCache>(),
        &user,
        method,
        path,
        inputs,
    )
    .await;
    if quoted.is_ok() {
        tx.commit().await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
    quoted
}

async fn price(stack: &TestStack, email: &str, path: &str) -> i32 {
    quote(stack, email, "POST", path, &PriceInputs::default())
        .await
        .unwrap_or_else(|e| panic!("quote for {email}: {e}"))
        .unwrap_or_else(|| panic!("no config prices {path}"))
        .price
}

fn generation_inputs() -> PriceInputs {
    PriceInputs {
        job_type: Some("character_generation".into()),
        steps: Some(20),
        width: Some(512),
        height: Some(512),
        batch_size: Some(1),
    }
}

/// A path of the one route that is charged.
const GENERATE_PATH: &str = "/api/v1/characters/abc/generate";

/// Sets the generation route's config (the seed's `cfg_generate`) through the
/// admin route to `changes` over a plain price: no formula, no limits, no
/// access rules, default multipliers. Returns its id.
async fn priced_generation(stack: &TestStack, token: &str, changes: Value) -> String {
    let mut body = json!({
        "cost_formula": null, "daily_limit": null, "rate_limit_per_minute": null,
        "minimum_tier": null, "requires_subscription": false,
        "tier_multipliers": {"FREE": 1.0, "PREMIUM": 0.8, "PRO": 0.6, "ENTERPRISE": 0.4}
    });
    for (key, value) in changes.as_object().unwrap() {
        body[key] = value.clone();
    }
    let reply = patch(stack, token, "/api/v1/admin/pricing/cfg_generate", body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["id"].as_str().unwrap().to_string()
}

/// Puts a job of `user` on hold for `price` and settles it (a usage entry of
/// the purchased part), then marks it completed as the worker would.
async fn completed_job(client: &tokio_postgres::Client, user: &str, price: i32) -> String {
    let job: String = client
        .query_one(
            "INSERT INTO generation_jobs (user_id, job_type, input_parameters) \
             VALUES ($1, 'character_generation', '{}') RETURNING id",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    let quote = Quote {
        config_id: "cfg_generate".into(),
        price,
        fallback_price: 0,
        calculation: json!({"price": price}),
    };
    holds::hold(client, user, &job, &quote).await.unwrap();
    holds::settle(client, &job).await.unwrap().unwrap();
    client
        .execute(
            "UPDATE generation_jobs SET status = 'completed', completed_at = now() WHERE id = $1",
            &[&job],
        )
        .await
        .unwrap();
    job
}

/// A user with `credits` purchased and no free daily generations (so holds
/// are paid with purchased credits).
async fn paying_user(stack: &TestStack, email: &str, credits: i32) -> String {
    stack.sign_in(email).await;
    let id = user_id(stack, email).await;
    let client = stack.sql().await;
    client
        .execute("UPDATE users SET daily_quota = 0 WHERE id = $1", &[&id])
        .await
        .unwrap();
    if credits > 0 {
        ledger::post(&client, &id, Entry::new("purchase", credits, "test pack"))
            .await
            .unwrap();
    }
    id
}

// ------------------------------------------------------------------------------------------
// The admin wall
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_admin_route_refuses_anonymous_and_non_admin_callers() {
    let stack = spawn_stack().await;
    let ann = stack.sign_in("ann@example.com").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let client = stack.sql().await;
    let job = completed_job(&client, &ann_id, 0).await;
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/api/v1/admin/pricing".into(), None),
        (
            Method::POST,
            "/api/v1/admin/pricing".into(),
            Some(json!({"endpoint_pattern": "/api/v1/x", "http_method": "GET", "base_cost": 1})),
        ),
        (
            Method::PATCH,
            "/api/v1/admin/pricing/cfg_generate".into(),
            Some(json!({"base_cost": 0})),
        ),
        (Method::GET, "/api/v1/admin/packages".into(), None),
        (
            Method::POST,
            "/api/v1/admin/packages".into(),
            Some(json!({"name": "Free", "credit_amount": 1000, "price_usd": "0"})),
        ),
        (
            Method::PATCH,
            "/api/v1/admin/packages/pkg_starter".into(),
            Some(json!({"price_usd": "0.01"})),
        ),
        (
            Method::POST,
            "/api/v1/admin/credits/adjustments".into(),
            Some(json!({"user_id": ann_id, "amount": 1000, "description": "free money"})),
        ),
        (
            Method::POST,
            format!("/api/v1/admin/jobs/{job}/refund"),
            None,
        ),
    ];
    let before = count(&client, "SELECT count(*) FROM user_activity_logs").await;
    for (method, path, body) in &routes {
        let anonymous = stack.call(method.clone(), path, None, body.clone()).await;
        anonymous.assert_problem(401);
        let user = stack
            .call(method.clone(), path, Some(&ann), body.clone())
            .await;
        user.assert_problem(403);
        // The permission is checked before the body is even read.
        let garbage = stack
            .http
            .request(method.clone(), format!("{}{path}", stack.base_url))
            .bearer_auth(&ann)
            .body("not json")
            .send()
            .await
            .unwrap();
        assert_eq!(garbage.status(), 403, "{method} {path}");
        // A token with other permissions is not an admin either.
        let other = stack.token_with("ann@example.com", &["read:all", "administrator"]);
        stack
            .call(method.clone(), path, Some(&other), body.clone())
            .await
            .assert_problem(403);
    }
    // Nothing happened.
    assert_eq!(
        count(&client, "SELECT count(*) FROM user_activity_logs").await,
        before
    );
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM api_credit_configs WHERE base_cost = 0 OR endpoint_pattern = '/api/v1/x'"
        )
        .await,
        0
    );
    assert_eq!(balance(&client, &ann_id).await, (0, 0));
    // An admin token without an account yet is told to sign in.
    let fresh_admin = stack.token_with("boss@example.com", &["admin"]);
    stack
        .get("/api/v1/admin/pricing", Some(&fresh_admin))
        .await
        .assert_problem(404);
    // With an account, the same routes answer.
    let (token, _) = admin(&stack).await;
    let reply = stack.get("/api/v1/admin/pricing", Some(&token)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

// ------------------------------------------------------------------------------------------
// Pricing
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn pricing_crud_validates_every_field_and_names_it() {
    let stack = spawn_stack().await;
    let (token, admin_id) = admin(&stack).await;
    let client = stack.sql().await;

    let list = stack.get("/api/v1/admin/pricing", Some(&token)).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.body["items"][0]["id"], "cfg_generate");
    assert_eq!(list.body["items"][0]["base_cost"], 10);

    // Only a route that is charged can be priced, and the seed prices the only one: without
    // the seed's row, a new config for it can be created.
    client
        .execute(
            "DELETE FROM api_credit_configs WHERE id = 'cfg_generate'",
            &[],
        )
        .await
        .unwrap();
    let valid = json!({
        "endpoint_pattern": "/api/v1/characters/:character_id/generate",
        "http_method": "POST",
        "base_cost": 100000,
        "cost_formula": {"steps": {"over": 30, "every": 10, "cost": 1}},
        "tier_multipliers": {"FREE": 1, "PRO": 0.5},
        "daily_limit": 1,
        "rate_limit_per_minute": 1000000,
        "requires_subscription": true,
        "minimum_tier": "PREMIUM",
        "is_enabled": true,
        "description": "Generate, priced anew.",
        "category": "generation"
    });
    let created = post(&stack, &token, "/api/v1/admin/pricing", valid.clone()).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_string();
    assert_eq!(
        created.headers["location"],
        format!("/api/v1/admin/pricing/{id}").as_str()
    );
    for (field, value) in valid.as_object().unwrap() {
        assert_eq!(&created.body[field], value, "{field}");
    }

    // Each invalid field is refused by name, and nothing is stored.
    let configs_before = count(&client, "SELECT count(*) FROM api_credit_configs").await;
    let other = |field: &str, value: Value| {
        let mut body = json!({
            "endpoint_pattern": "/api/v1/characters/:id/generate", "http_method": "POST",
            "base_cost": 1
        });
        body[field] = value;
        body
    };
    let cases = [
        (
            other("endpoint_pattern", json!("/api/v2/x")),
            "endpoint_pattern",
        ),
        (
            other("endpoint_pattern", json!("/api/v1/X")),
            "endpoint_pattern",
        ),
        (
            other("endpoint_pattern", json!("/api/v1/x/")),
            "endpoint_pattern",
        ),
        (
            other("endpoint_pattern", json!("/api/v1/x/:")),
            "endpoint_pattern",
        ),
        (other("endpoint_pattern", json!(42)), "endpoint_pattern"),
        (other("http_method", json!("post")), "http_method"),
        (other("http_method", json!("TRACE")), "http_method"),
        // Well-formed, but not a route that is charged.
        (
            other("endpoint_pattern", json!("/api/v1/characters/:id/upscale")),
            "endpoint_pattern",
        ),
        (other("http_method", json!("GET")), "endpoint_pattern"),
        (other("base_cost", json!(-1)), "base_cost"),
        (other("base_cost", json!(100001)), "base_cost"),
        (other("base_cost", json!(1.5)), "base_cost"),
        (other("base_cost", json!(null)), "base_cost"),
        (
            other("cost_formula", json!({"gpu_seconds": 1})),
            "cost_formula",
        ),
        (
            other(
                "cost_formula",
                json!({"steps": {"over": 1, "every": 0, "cost": 1}}),
            ),
            "cost_formula.steps",
        ),
        (
            other(
                "cost_formula",
                json!({"steps": {"over": 1, "every": 1, "cost": 1, "cap": 9}}),
            ),
            "cost_formula",
        ),
        (
            other("cost_formula", json!({"job_type": {"teleport": 1}})),
            "cost_formula.job_type.teleport",
        ),
        (other("cost_formula", json!([1])), "cost_formula"),
        (
            other("tier_multipliers", json!({"GOLD": 1})),
            "tier_multipliers.GOLD",
        ),
        (
            other("tier_multipliers", json!({"PRO": 0.1234})),
            "tier_multipliers.PRO",
        ),
        (
            other("tier_multipliers", json!({"PRO": 10.001})),
            "tier_multipliers.PRO",
        ),
        (other("tier_multipliers", json!(null)), "tier_multipliers"),
        (other("tier_multipliers", json!([1])), "tier_multipliers"),
        (other("daily_limit", json!(0)), "daily_limit"),
        (other("daily_limit", json!(1000001)), "daily_limit"),
        (
            other("rate_limit_per_minute", json!(0)),
            "rate_limit_per_minute",
        ),
        (
            other("rate_limit_per_minute", json!("5")),
            "rate_limit_per_minute",
        ),
        (
            other("requires_subscription", json!("yes")),
            "requires_subscription",
        ),
        (other("minimum_tier", json!("GOLD")), "minimum_tier"),
        (other("is_enabled", json!(null)), "is_enabled"),
        (other("description", json!("x".repeat(501))), "description"),
        (other("category", json!("x".repeat(51))), "category"),
        (other("category", json!("a\u{0}b")), "category"),
        (other("id", json!("cfg_mine")), "id"),
        (
            other("created_at", json!("2026-01-01T00:00:00Z")),
            "created_at",
        ),
        (
            other("updated_at", json!("2026-01-01T00:00:00Z")),
            "updated_at",
        ),
        (other("price", json!(5)), "price"),
        (
            json!({"http_method": "POST", "base_cost": 1}),
            "endpoint_pattern",
        ),
        (
            json!({"endpoint_pattern": "/api/v1/characters/:id/generate", "base_cost": 1}),
            "http_method",
        ),
        (
            json!({"endpoint_pattern": "/api/v1/characters/:id/generate", "http_method": "POST"}),
            "base_cost",
        ),
    ];
    for (body, field) in cases {
        let reply = post(&stack, &token, "/api/v1/admin/pricing", body.clone()).await;
        assert_refused(&reply, field);
    }
    assert_eq!(
        count(&client, "SELECT count(*) FROM api_credit_configs").await,
        configs_before
    );

    // Same pattern and method: 409; an overlapping pattern too (the placeholder's name does
    // not matter); another method or a literal segment is not a route that is charged (422).
    post(&stack, &token, "/api/v1/admin/pricing", valid.clone())
        .await
        .assert_problem(409);
    let mut overlapping = valid.clone();
    overlapping["endpoint_pattern"] = json!("/api/v1/characters/:id/generate");
    post(&stack, &token, "/api/v1/admin/pricing", overlapping)
        .await
        .assert_problem(409);
    let mut literal = valid.clone();
    literal["endpoint_pattern"] = json!("/api/v1/characters/featured/generate");
    let reply = post(&stack, &token, "/api/v1/admin/pricing", literal).await;
    assert_refused(&reply, "endpoint_pattern");
    let mut other_method = valid.clone();
    other_method["http_method"] = json!("PUT");
    let reply = post(&stack, &token, "/api/v1/admin/pricing", other_method).await;
    assert_refused(&reply, "endpoint_pattern");
    // A config left over from before that rule (V17 disabled them): listed, but it cannot be
    // changed until it names a route that is charged.
    client
        .execute(
            "INSERT INTO api_credit_configs (id, endpoint_pattern, http_method, base_cost, is_enabled) \
             VALUES ('cfg_leftover', '/api/v1/characters/:id/upscale', 'POST', 3, false)",
            &[],
        )
        .await
        .unwrap();
    let put_id = "cfg_leftover".to_string();

    // Partial update: what is not mentioned stays; null clears a nullable field.
    let updated = patch(
        &stack,
        &token,
        &format!("/api/v1/admin/pricing/{id}"),
        json!({"base_cost": 0, "daily_limit": null, "description": null}),
    )
    .await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_eq!(updated.body["base_cost"], 0);
    assert_eq!(updated.body["daily_limit"], Value::Null);
    assert_eq!(updated.body["description"], Value::Null);
    assert_eq!(updated.body["minimum_tier"], "PREMIUM");
    assert_eq!(
        updated.body["tier_multipliers"],
        json!({"FREE": 1, "PRO": 0.5})
    );
    // The left-over config cannot be changed in place, nor moved onto the charged route, which
    // another config prices (409).
    let reply = patch(
        &stack,
        &token,
        &format!("/api/v1/admin/pricing/{put_id}"),
        json!({"base_cost": 4}),
    )
    .await;
    assert_refused(&reply, "endpoint_pattern");
    patch(
        &stack,
        &token,
        &format!("/api/v1/admin/pricing/{put_id}"),
        json!({"endpoint_pattern": "/api/v1/characters/:id/generate"}),
    )
    .await
    .assert_problem(409);
    // Nor can a charged config be moved off its route.
    let reply = patch(
        &stack,
        &token,
        &format!("/api/v1/admin/pricing/{id}"),
        json!({"http_method": "PUT"}),
    )
    .await;
    assert_refused(&reply, "endpoint_pattern");
    for (body, field) in [
        (json!({"created_at": "2026-01-01T00:00:00Z"}), "created_at"),
        (json!({"id": "x"}), "id"),
        (
            json!({"minimum_tier": "GOLD", "base_cost": 5}),
            "minimum_tier",
        ),
        (
            json!({"cost_formula": {"pixels": {"over": 0, "every": 1}}}),
            "cost_formula",
        ),
    ] {
        let reply = patch(&stack, &token, &format!("/api/v1/admin/pricing/{id}"), body).await;
        assert_refused(&reply, field);
    }
    let unchanged: i32 = client
        .query_one(
            "SELECT base_cost FROM api_credit_configs WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unchanged, 0, "a refused update changes nothing");
    patch(
        &stack,
        &token,
        "/api/v1/admin/pricing/no-such-config",
        json!({"base_cost": 1}),
    )
    .await
    .assert_problem(404);

    // The audit trail names the admin, the target and the change.
    let rows = client
        .query(
            "SELECT user_id, activity_type, entity_type, entity_id, metadata FROM user_activity_logs \
             WHERE activity_type LIKE 'admin_pricing_%' ORDER BY created_at",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "one creation and one update");
    for row in &rows {
        assert_eq!(row.get::<_, String>(0), admin_id);
        assert_eq!(row.get::<_, String>(2), "api_credit_config");
    }
    assert_eq!(rows[1].get::<_, String>(1), "admin_pricing_updated");
    assert_eq!(rows[1].get::<_, String>(3), id);
    let metadata: Value = rows[1].get(4);
    assert_eq!(
        metadata["changes"],
        json!({
            "base_cost": {"from": 100000, "to": 0},
            "daily_limit": {"from": 1, "to": null},
            "description": {"from": "Generate, priced anew.", "to": null}
        })
    );

    // The list pages through every config exactly once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/admin/pricing?limit=1&cursor={c}"),
            None => "/api/v1/admin/pricing?limit=1".into(),
        };
        let page = stack.get(&path, Some(&token)).await;
        assert_eq!(page.status, 200, "{}", page.body);
        for item in page.body["items"].as_array().unwrap() {
            seen.push(item["id"].as_str().unwrap().to_string());
        }
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 2);
    assert!(seen.contains(&id) && seen.contains(&put_id));
    stack
        .get("/api/v1/admin/pricing?cursor=garbage", Some(&token))
        .await
        .assert_problem(422);
    stack
        .get("/api/v1/admin/pricing?sort=price", Some(&token))
        .await
        .assert_problem(422);
}

#[tokio::test]
async fn a_pricing_change_takes_effect_for_quotes_at_once() {
    let stack = spawn_stack().await;
    let (token, _) = admin(&stack).await;
    stack.sign_in("ann@example.com").await;
    let path = "/api/v1/characters/abc/generate";
    let quoted = quote(
        &stack,
        "ann@example.com",
        "POST",
        path,
        &generation_inputs(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(quoted.price, 10);
    // The cache is warm; the change must not wait for its TTL.
    let reply = patch(
        &stack,
        &token,
        "/api/v1/admin/pricing/cfg_generate",
        json!({"base_cost": 13, "cost_formula": {"job_type": {"character_generation": 4}}}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let quoted = quote(
        &stack,
        "ann@example.com",
        "POST",
        path,
        &generation_inputs(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(quoted.price, 17);
    assert_eq!(quoted.calculation["base_cost"], 13);
    // Disabled, generation fails closed.
    patch(
        &stack,
        &token,
        "/api/v1/admin/pricing/cfg_generate",
        json!({"is_enabled": false}),
    )
    .await;
    let client = stack.sql().await;
    let ann = user_row(&client, "ann@example.com").await;
    let closed = engine::quote_generation(
        &client,
        &stack
            .stack
            .state
            .cache::<shared::credits::engine::PricingCache>(),
        &ann,
        path,
        &generation_inputs(),
    )
    .await
    .unwrap_err();
    assert_eq!(closed.status(), 503);
}

#[tokio::test]
async fn a_config_for_a_route_nothing_charges_is_refused_and_one_for_generation_is_charged() {
    let stack = spawn_stack().await;
    let (token, _) = admin(&stack).await;
    let client = stack.sql().await;
    stack.sign_in("ann@example.com").await;
    let configs = "SELECT count(*) FROM api_credit_configs";
    let logs = "SELECT count(*) FROM user_activity_logs WHERE activity_type LIKE 'admin_pricing_%'";
    let (configs_before, logs_before) = (count(&client, configs).await, count(&client, logs).await);

    // Routes that exist but are not charged, and a method the generation route does not
    // take: 422 naming endpoint_pattern, saying which routes are charged; nothing stored.
    for (method, pattern) in [
        ("POST", "/api/v1/characters/:id/upscale"),
        ("GET", "/api/v1/characters/:id"),
        ("POST", "/api/v1/credits/gifts"),
        ("GET", "/api/v1/characters/:id/generate"),
    ] {
        let reply = post(
            &stack,
            &token,
            "/api/v1/admin/pricing",
            json!({"endpoint_pattern": pattern, "http_method": method, "base_cost": 5, "daily_limit": 1}),
        )
        .await;
        assert_eq!(
            error_fields(&reply),
            ["endpoint_pattern"],
            "{method} {pattern}"
        );
        let message = reply.body["errors"][0]["message"].as_str().unwrap();
        assert!(
            message.contains("POST /api/v1/characters/:id/generate"),
            "{message}"
        );
    }
    // Nor can the generation route's config be moved off it.
    let reply = patch(
        &stack,
        &token,
        "/api/v1/admin/pricing/cfg_generate",
        json!({"endpoint_pattern": "/api/v1/characters/:id/upscale", "base_cost": 1}),
    )
    .await;
    assert_eq!(error_fields(&reply), ["endpoint_pattern"]);
    assert_eq!(count(&client, configs).await, configs_before);
    assert_eq!(count(&client, logs).await, logs_before);
    let (pattern, base): (String, i32) = {
        let row = client
            .query_one(
                "SELECT endpoint_pattern, base_cost FROM api_credit_configs WHERE id = 'cfg_generate'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(
        (pattern.as_str(), base),
        ("/api/v1/characters/:id/generate", 10)
    );

    // A row written by hand for a route nothing charges, enabled (as V17 found them): neither
    // listed nor quoted, so it cannot say something is priced that is not.
    client
        .execute(
            "INSERT INTO api_credit_configs (id, endpoint_pattern, http_method, base_cost, is_enabled) \
             VALUES ('cfg_by_hand', '/api/v1/characters/:id/animate', 'POST', 7, true)",
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
    let list = stack.get("/api/v1/pricing", None).await;
    assert_eq!(list.status, 200, "{}", list.body);
    let listed: Vec<&str> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["cfg_generate"]);
    let animate = quote(
        &stack,
        "ann@example.com",
        "POST",
        "/api/v1/characters/abc/animate",
        &PriceInputs::default(),
    )
    .await
    .unwrap();
    assert!(animate.is_none(), "{animate:?}");

    // The generation route priced anew (placeholder named differently): accepted, listed,
    // and what a generation holds.
    client
        .execute(
            "DELETE FROM api_credit_configs WHERE id = 'cfg_generate'",
            &[],
        )
        .await
        .unwrap();
    let created = post(
        &stack,
        &token,
        "/api/v1/admin/pricing",
        json!({"endpoint_pattern": "/api/v1/characters/:character_id/generate", "http_method": "POST",
               "base_cost": 7, "category": "generation"}),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_string();
    let list = stack.get("/api/v1/pricing", None).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(list.body["items"][0]["id"], id.as_str());
    assert_eq!(list.body["items"][0]["price"], 7);
    let (buyer, buyer_id) = stack.buyer("bob@example.com", "bob", 100).await;
    let character = stack
        .character(
            &buyer,
            json!({"name": "Aria", "prompt": "an elf archer", "style_type": "fantasy"}),
        )
        .await;
    let generate = format!("/api/v1/characters/{character}/generate");
    let preview = stack
        .call(
            Method::POST,
            &generate,
            Some(&buyer),
            Some(json!({"job_type": "character_generation", "dry_run": true})),
        )
        .await;
    assert_eq!(preview.status, 200, "{}", preview.body);
    assert_eq!(preview.body["price"], 7);
    assert_eq!(preview.body["cost_calculation"]["config_id"], id.as_str());
    let job = stack
        .call(
            Method::POST,
            &generate,
            Some(&buyer),
            Some(json!({"job_type": "character_generation"})),
        )
        .await;
    assert_eq!(job.status, 202, "{}", job.body);
    assert_eq!(job.body["cost_credits"], 7);
    assert_eq!(balance(&client, &buyer_id).await, (100, 7));
    assert_invariants(&client).await;
}

#[tokio::test]
async fn tier_multipliers_round_up_at_thousandth_boundaries() {
    let stack = spawn_stack().await;
    let (token, _) = admin(&stack).await;
    user_with_tier(&stack, "free@example.com", "FREE", false).await;
    user_with_tier(&stack, "premium@example.com", "PREMIUM", false).await;
    user_with_tier(&stack, "pro@example.com", "PRO", false).await;
    user_with_tier(&stack, "enterprise@example.com", "ENTERPRISE", false).await;
    user_with_tier(&stack, "lapsed@example.com", "ENTERPRISE", true).await;
    // The generation route's config, as a plain base cost (no formula, no limits).
    let id = priced_generation(
        &stack,
        &token,
        json!({
            "base_cost": 1000,
            "tier_multipliers": {"FREE": 1, "PREMIUM": 0.999, "PRO": 0.001, "ENTERPRISE": 10}
        }),
    )
    .await;
    let path = GENERATE_PATH;
    // (base cost, [FREE, PREMIUM, PRO, ENTERPRISE]) — the lapsed subscriber pays FREE prices.
    let table: [(i32, [i32; 4]); 6] = [
        (1000, [1000, 999, 1, 10000]),  // exact products
        (1001, [1001, 1000, 2, 10010]), // 999.999 → 1000, 1.001 → 2
        (999, [999, 999, 1, 9990]),     // 998.001 → 999, 0.999 → 1
        (1, [1, 1, 1, 10]),             // 0.999 → 1, 0.001 → 1
        (0, [0, 0, 0, 0]),
        (100000, [100000, 99900, 100, 1000000]),
    ];
    for (base, expected) in table {
        let reply = patch(
            &stack,
            &token,
            &format!("/api/v1/admin/pricing/{id}"),
            json!({"base_cost": base}),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        for (email, want) in [
            ("free@example.com", expected[0]),
            ("premium@example.com", expected[1]),
            ("pro@example.com", expected[2]),
            ("enterprise@example.com", expected[3]),
            ("lapsed@example.com", expected[0]),
        ] {
            assert_eq!(
                price(&stack, email, path).await,
                want,
                "base {base}, {email}"
            );
        }
    }
    // A tier without an entry pays full price; 0 makes it free.
    patch(
        &stack,
        &token,
        &format!("/api/v1/admin/pricing/{id}"),
        json!({"base_cost": 7, "tier_multipliers": {"PRO": 0}}),
    )
    .await;
    assert_eq!(price(&stack, "premium@example.com", path).await, 7);
    assert_eq!(price(&stack, "pro@example.com", path).await, 0);
}

#[tokio::test]
async fn minimum_tier_and_required_subscription_at_their_boundaries() {
    let stack = spawn_stack().await;
    let (token, _) = admin(&stack).await;
    user_with_tier(&stack, "free@example.com", "FREE", false).await;
    user_with_tier(&stack, "premium@example.com", "PREMIUM", false).await;
    user_with_tier(&stack, "pro@example.com", "PRO", false).await;
    user_with_tier(&stack, "enterprise@example.com", "ENTERPRISE", false).await;
    user_with_tier(&stack, "lapsed@example.com", "PRO", true).await;
    let id = priced_generation(
        &stack,
        &token,
        json!({"base_cost": 5, "minimum_tier": "PRO"}),
    )
    .await;
    let path = GENERATE_PATH;
    let status = |r: Result<Option<Quote>, ApiError>| match r {
        Ok(Some(_)) => 200,
        Ok(None) => 404,
        Err(e) => e.status().as_u16(),
    };
    let inputs = PriceInputs::default();
    for (email, want) in [
        ("free@example.com", 403),
        ("premium@example.com", 403),
        ("pro@example.com", 200),
        ("enterprise@example.com", 200),
        ("lapsed@example.com", 403),
    ] {
        assert_eq!(
            status(quote(&stack, email, "POST", path, &inputs).await),
            want,
            "minimum tier PRO, {email}"
        );
    }
    // requires_subscription: any tier in force, never FREE or a lapsed one.
    patch(
        &stack,
        &token,
        &format!("/api/v1/admin/pricing/{id}"),
        json!({"minimum_tier": null, "requires_subscription": true}),
    )
    .await;
    for (email, want) in [
        ("free@example.com", 403),
        ("premium@example.com", 200),
        ("pro@example.com", 200),
        ("lapsed@example.com", 403),
    ] {
        assert_eq!(
            status(quote(&stack, email, "POST", path, &inputs).await),
            want,
            "requires subscription, {email}"
        );
    }
    // A subscription that has not started yet is not in force.
    stack
        .sql()
        .await
        .execute(
            "UPDATE users SET subscription_start_date = now() + interval '1 hour' WHERE email = 'premium@example.com'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        status(quote(&stack, "premium@example.com", "POST", path, &inputs).await),
        403
    );
    // Another method on the same path is not priced by this config.
    assert_eq!(
        status(quote(&stack, "pro@example.com", "GET", path, &inputs).await),
        404
    );
}

/// Retry-After of a refused quote, checking it is a 429 problem.
fn retry_after(err: ApiError) -> u64 {
    assert_eq!(err.status(), 429, "{err}");
    let response = err.into_response();
    response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After header")
}

#[tokio::test]
async fn per_minute_and_daily_limits_allow_exactly_the_limit() {
    let stack = spawn_stack().await;
    let (token, _) = admin(&stack).await;
    stack.sign_in("ann@example.com").await;
    stack.sign_in("bob@example.com").await;
    stack
        .sql()
        .await
        .execute(
            "UPDATE users SET timezone = 'Asia/Tokyo' WHERE email = 'bob@example.com'",
            &[],
        )
        .await
        .unwrap();
    let id = priced_generation(
        &stack,
        &token,
        json!({"base_cost": 1, "rate_limit_per_minute": 3}),
    )
    .await;
    let path = GENERATE_PATH;
    let inputs = PriceInputs::default();
    // The whole per-minute check happens at one instant: inside one transaction,
    // whose `now()` is the minute the engine counts in, each request in a
    // savepoint that is released when it is allowed and rolled back when it is
    // refused (as a refused request's transaction is). A minute turning while
    // the test runs cannot split its window.
    let mut client = stack.sql().await;
    let ann = user_row(&client, "ann@example.com").await;
    let bob = user_row(&client, "bob@example.com").await;
    let mut at_once = client.transaction().await.unwrap();
    let pricing = stack
        .stack
        .state
        .cache::<shared::credits::engine::PricingCache>();
    async fn quote_at(
        tx: &mut tokio_postgres::Transaction<'_>,
        pricing: &shared::credits::engine::PricingCache,
        user: &User,
        path: &str,
        inputs: &PriceInputs,
    ) -> Result<Option<Quote>, ApiError> {
        let savepoint = tx.savepoint("request").await.unwrap();
        let quoted = engine::quote(&savepoint, pricing, user, "POST", path, inputs).await;
        if quoted.is_ok() {
            savepoint.commit().await.unwrap();
        } else {
            savepoint.rollback().await.unwrap();
        }
        quoted
    }
    for n in 1..=3 {
        assert!(
            quote_at(&mut at_once, &pricing, &ann, path, &inputs)
                .await
                .is_ok(),
            "request {n} of 3 per minute"
        );
    }
    let refused = quote_at(&mut at_once, &pricing, &ann, path, &inputs)
        .await
        .unwrap_err();
    let wait = retry_after(refused);
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    // A refused request is not counted, and another user has their own window.
    let again = quote_at(&mut at_once, &pricing, &ann, path, &inputs)
        .await
        .unwrap_err();
    assert!((1..=60).contains(&retry_after(again)), "still limited");
    assert!(
        quote_at(&mut at_once, &pricing, &bob, path, &inputs)
            .await
            .is_ok()
    );
    // Raising the limit by one lets exactly one more through, at once. (Written
    // in the same transaction, as the admin route would and with the cache
    // dropped as it does: its own transaction would wait for this one's
    // window rows.)
    at_once
        .execute(
            "UPDATE api_credit_configs SET rate_limit_per_minute = 4 WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    pricing.invalidate().await;
    assert!(
        quote_at(&mut at_once, &pricing, &ann, path, &inputs)
            .await
            .is_ok()
    );
    let over = quote_at(&mut at_once, &pricing, &ann, path, &inputs)
        .await
        .unwrap_err();
    assert!((1..=60).contains(&retry_after(over)), "limited at four");
    at_once.commit().await.unwrap();

    // Daily limit 2 (per-minute off): the third is refused until local midnight.
    patch(
        &stack,
        &token,
        &format!("/api/v1/admin/pricing/{id}"),
        json!({"rate_limit_per_minute": null, "daily_limit": 2}),
    )
    .await;
    for email in ["ann@example.com", "bob@example.com"] {
        for n in 1..=2 {
            assert!(
                quote(&stack, email, "POST", path, &inputs).await.is_ok(),
                "{email}: request {n} of 2 per day"
            );
        }
        let refused = quote(&stack, email, "POST", path, &inputs)
            .await
            .unwrap_err();
        let wait = retry_after(refused) as i64;
        let zone = if email.starts_with("bob") {
            "Asia/Tokyo"
        } else {
            "UTC"
        };
        let until_midnight: i64 = client
            .query_one(
                "SELECT ceil(extract(epoch FROM ((user_local_date($1) + 1)::timestamp AT TIME ZONE $1) - now()))::int8",
                &[&zone],
            )
            .await
            .unwrap()
            .get(0);
        assert!(
            (wait - until_midnight).abs() <= 5,
            "{email}: Retry-After {wait}, local midnight in {until_midnight}"
        );
    }
}

// ------------------------------------------------------------------------------------------
// Packages
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn packages_crud_keeps_prices_exact_and_validates_every_field() {
    let stack = spawn_stack().await;
    let (token, admin_id) = admin(&stack).await;
    let client = stack.sql().await;

    let list = stack.get("/api/v1/admin/packages", Some(&token)).await;
    assert_eq!(list.status, 200, "{}", list.body);
    let ids: Vec<&str> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["pkg_starter", "pkg_creator", "pkg_studio", "pkg_pro"]);
    assert_eq!(list.body["items"][1]["price_usd"], "19.99");

    let valid = json!({
        "name": "Spring Sale",
        "description": "Limited time.",
        "credit_amount": 10000000,
        "bonus_credits": 0,
        "price_usd": "99999999.99",
        "price_currency": "EUR",
        "discount_percentage": 100,
        "is_available": false,
        "target_tiers": ["PRO", "FREE"],
        "promotion_start_date": "2026-04-01T00:00:00Z",
        "promotion_end_date": "2026-05-01T00:00:00Z",
        "package_type": "promotional",
        "display_order": 9,
        "highlight_color": "#6366F1",
        "badge_text": "SPRING"
    });
    let created = post(&stack, &token, "/api/v1/admin/packages", valid.clone()).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_string();
    assert_eq!(created.body["price_usd"], "99999999.99");
    assert_eq!(created.body["target_tiers"], json!(["FREE", "PRO"]));
    assert_eq!(created.body["promotion_end_date"], "2026-05-01T00:00:00Z");
    let exact: bool = client
        .query_one(
            "SELECT price_usd = 99999999.99::numeric FROM credit_packages WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(exact);

    // Prices as numbers keep their decimal spelling exactly.
    let minimal = post(
        &stack,
        &token,
        "/api/v1/admin/packages",
        json!({"name": "Dime", "credit_amount": 1, "price_usd": 0.1}),
    )
    .await;
    assert_eq!(minimal.status, 201, "{}", minimal.body);
    assert_eq!(minimal.body["price_usd"], "0.10");
    assert_eq!(minimal.body["price_currency"], "USD");
    assert_eq!(minimal.body["package_type"], "one_time");
    assert_eq!(
        minimal.body["target_tiers"],
        json!(["FREE", "PREMIUM", "PRO", "ENTERPRISE"])
    );

    let packages_before = count(&client, "SELECT count(*) FROM credit_packages").await;
    let with = |field: &str, value: Value| {
        let mut body = json!({"name": "P", "credit_amount": 100, "price_usd": "1.00"});
        body[field] = value;
        body
    };
    for (body, field) in [
        (with("price_usd", json!("19.999")), "price_usd"),
        (with("price_usd", json!(19.999)), "price_usd"),
        (with("price_usd", json!("-1.00")), "price_usd"),
        (with("price_usd", json!(-0.01)), "price_usd"),
        (with("price_usd", json!("100000000")), "price_usd"),
        (with("price_usd", json!("1e3")), "price_usd"),
        (with("price_usd", json!("abc")), "price_usd"),
        (with("price_usd", json!(null)), "price_usd"),
        (with("credit_amount", json!(0)), "credit_amount"),
        (with("credit_amount", json!(10000001)), "credit_amount"),
        (with("bonus_credits", json!(-1)), "bonus_credits"),
        (with("price_currency", json!("usd")), "price_currency"),
        (with("price_currency", json!("US")), "price_currency"),
        (
            with("discount_percentage", json!(101)),
            "discount_percentage",
        ),
        (
            with("discount_percentage", json!(-1)),
            "discount_percentage",
        ),
        (with("target_tiers", json!(["GOLD"])), "target_tiers"),
        (with("target_tiers", json!(["PRO", "PRO"])), "target_tiers"),
        (with("target_tiers", json!("PRO")), "target_tiers"),
        (with("package_type", json!("lifetime")), "package_type"),
        (
            with("promotion_start_date", json!("tomorrow")),
            "promotion_start_date",
        ),
        (with("display_order", json!(-1)), "display_order"),
        (with("highlight_color", json!("red")), "highlight_color"),
        (with("badge_text", json!("x".repeat(31))), "badge_text"),
        (with("name", json!("")), "name"),
        (with("name", json!("x".repeat(101))), "name"),
        (with("description", json!("x".repeat(501))), "description"),
        (with("is_available", json!("yes")), "is_available"),
        (with("id", json!("pkg_mine")), "id"),
        (
            with("created_at", json!("2026-01-01T00:00:00Z")),
            "created_at",
        ),
        (with("stripe_price", json!("price_1")), "stripe_price"),
        (json!({"name": "P", "credit_amount": 100}), "price_usd"),
    ] {
        let reply = post(&stack, &token, "/api/v1/admin/packages", body).await;
        assert_refused(&reply, field);
    }
    let unordered = post(
        &stack,
        &token,
        "/api/v1/admin/packages",
        with("promotion_start_date", json!("2026-05-01T00:00:00Z")),
    )
    .await;
    assert_eq!(unordered.status, 201, "a start alone is fine");
    let reply = patch(
        &stack,
        &token,
        &format!("/api/v1/admin/packages/{id}"),
        json!({"promotion_start_date": "2026-05-01T00:00:00Z"}),
    )
    .await;
    assert_refused(&reply, "promotion_end_date");
    assert_eq!(
        count(&client, "SELECT count(*) FROM credit_packages").await,
        packages_before + 1
    );

    // A partial update, audited with what changed.
    let updated = patch(
        &stack,
        &token,
        "/api/v1/admin/packages/pkg_starter",
        json!({"price_usd": "5.49", "badge_text": "NEW", "is_available": false}),
    )
    .await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_eq!(updated.body["price_usd"], "5.49");
    assert_eq!(updated.body["credit_amount"], 100);
    let row = client
        .query_one(
            "SELECT user_id, entity_id, metadata FROM user_activity_logs \
             WHERE activity_type = 'admin_package_updated'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), admin_id);
    assert_eq!(row.get::<_, String>(1), "pkg_starter");
    let metadata: Value = row.get(2);
    assert_eq!(
        metadata["changes"],
        json!({
            "price_usd": {"from": "4.99", "to": "5.49"},
            "badge_text": {"from": null, "to": "NEW"},
            "is_available": {"from": true, "to": false}
        })
    );
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM user_activity_logs WHERE activity_type = 'admin_package_created'"
        )
        .await,
        3
    );
    patch(
        &stack,
        &token,
        "/api/v1/admin/packages/pkg_nope",
        json!({"name": "x"}),
    )
    .await
    .assert_problem(404);
}

// ------------------------------------------------------------------------------------------
// Adjustments
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn adjustments_credit_and_debit_but_never_below_available() {
    let stack = spawn_stack().await;
    let (token, admin_id) = admin(&stack).await;
    let ann = paying_user(&stack, "ann@example.com", 0).await;
    let client = stack.sql().await;
    let path = "/api/v1/admin/credits/adjustments";

    let credited = post(
        &stack,
        &token,
        path,
        json!({"user_id": ann, "amount": 100, "description": "Goodwill for an outage"}),
    )
    .await;
    assert_eq!(credited.status, 201, "{}", credited.body);
    assert_eq!(credited.body["transaction_type"], "admin_adjustment");
    assert_eq!(credited.body["amount"], 100);
    assert_eq!(credited.body["balance_after"], 100);
    assert_eq!(credited.body["user_id"], ann.as_str());
    assert_eq!(credited.body["description"], "Goodwill for an outage");
    assert_eq!(
        credited.body["metadata"]["admin_user_id"],
        admin_id.as_str()
    );
    assert_invariants(&client).await;

    let debited = post(
        &stack,
        &token,
        path,
        json!({"user_id": ann, "amount": -40, "description": "Duplicate credit reversed"}),
    )
    .await;
    assert_eq!(debited.status, 201, "{}", debited.body);
    assert_eq!(debited.body["balance_after"], 60);
    assert_invariants(&client).await;

    // A running job holds 50 of the 60: only 10 are available.
    let job: String = client
        .query_one(
            "INSERT INTO generation_jobs (user_id, job_type, input_parameters) \
             VALUES ($1, 'character_generation', '{}') RETURNING id",
            &[&ann],
        )
        .await
        .unwrap()
        .get(0);
    let quote = Quote {
        config_id: "cfg_generate".into(),
        price: 50,
        fallback_price: 0,
        calculation: json!({}),
    };
    holds::hold(&client, &ann, &job, &quote).await.unwrap();
    let transactions = "SELECT count(*) FROM credit_transactions";
    let activity = "SELECT count(*) FROM user_activity_logs";
    let (t0, a0) = (
        count(&client, transactions).await,
        count(&client, activity).await,
    );
    let refused = post(
        &stack,
        &token,
        path,
        json!({"user_id": ann, "amount": -11, "description": "Too much"}),
    )
    .await;
    refused.assert_problem(402);
    assert_eq!(refused.body["needed"], 11);
    assert_eq!(refused.body["available"], 10);
    assert_eq!(balance(&client, &ann).await, (60, 50), "nothing changed");
    assert_eq!(count(&client, transactions).await, t0);
    assert_eq!(count(&client, activity).await, a0);
    let exact = post(
        &stack,
        &token,
        path,
        json!({"user_id": ann, "amount": -10, "description": "All that is available"}),
    )
    .await;
    assert_eq!(exact.status, 201, "{}", exact.body);
    assert_eq!(balance(&client, &ann).await, (50, 50));
    assert_invariants(&client).await;

    // Bad input is refused by field; unknown users and the admin themself too.
    let (t1, a1) = (
        count(&client, transactions).await,
        count(&client, activity).await,
    );
    for (body, field) in [
        (
            json!({"user_id": ann, "amount": 0, "description": "x"}),
            "amount",
        ),
        (
            json!({"user_id": ann, "amount": 2.5, "description": "x"}),
            "amount",
        ),
        (
            json!({"user_id": ann, "amount": 10000001, "description": "x"}),
            "amount",
        ),
        (
            json!({"user_id": ann, "amount": 5, "description": ""}),
            "description",
        ),
        (json!({"user_id": ann, "amount": 5}), "description"),
        (
            json!({"user_id": "nobody", "amount": 5, "description": "x"}),
            "user_id",
        ),
        (
            json!({"user_id": ann, "amount": 5, "description": "x", "type": "bonus"}),
            "type",
        ),
    ] {
        assert_refused(&post(&stack, &token, path, body).await, field);
    }
    post(
        &stack,
        &token,
        path,
        json!({"user_id": admin_id, "amount": 5, "description": "me"}),
    )
    .await
    .assert_problem(403);
    assert_eq!(count(&client, transactions).await, t1);
    assert_eq!(count(&client, activity).await, a1);

    // Idempotency-Key: a replay answers the stored response; a changed body is a 422.
    let body = json!({"user_id": ann, "amount": 7, "description": "Retried"});
    let first = call_with_key(&stack, path, &token, Some(body.clone()), "adj-1").await;
    assert_eq!(first.status, 201, "{}", first.body);
    let again = call_with_key(&stack, path, &token, Some(body.clone()), "adj-1").await;
    assert_eq!(again.status, 201);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body, first.body);
    let mut changed = body.clone();
    changed["amount"] = json!(8);
    call_with_key(&stack, path, &token, Some(changed), "adj-1")
        .await
        .assert_problem(422);
    assert_eq!(balance(&client, &ann).await, (57, 50));
    // Concurrent duplicates of a new key: one effect.
    let body = json!({"user_id": ann, "amount": 3, "description": "Concurrent"});
    let replies =
        join_all((0..8).map(|_| call_with_key(&stack, path, &token, Some(body.clone()), "adj-2")))
            .await;
    // Each duplicate waits for the first to commit, then replays it: all are
    // 201 with the same body, and exactly one is not a replay.
    for reply in &replies {
        assert_eq!(reply.status, 201, "{replies:?}");
        assert_eq!(reply.body, replies[0].body, "{replies:?}");
    }
    let originals = replies
        .iter()
        .filter(|r| r.headers.get("idempotent-replayed").is_none())
        .count();
    assert_eq!(originals, 1, "{replies:?}");
    assert_eq!(balance(&client, &ann).await, (60, 50));
    assert_invariants(&client).await;

    // Every adjustment's audit row names the admin and the target.
    let rows = client
        .query(
            "SELECT user_id, entity_id, metadata FROM user_activity_logs \
             WHERE activity_type = 'admin_credit_adjustment' ORDER BY created_at",
            &[],
        )
        .await
        .unwrap();
    let amounts: Vec<i64> = rows
        .iter()
        .map(|r| r.get::<_, Value>(2)["amount"].as_i64().unwrap())
        .collect();
    assert_eq!(amounts, [100, -40, -10, 7, 3]);
    for row in &rows {
        assert_eq!(row.get::<_, String>(0), admin_id);
        assert_eq!(row.get::<_, String>(1), ann);
    }
}

// ------------------------------------------------------------------------------------------
// Job refunds
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_completed_job_is_refunded_once_however_often_asked() {
    let stack = spawn_stack().await;
    let (token, admin_id) = admin(&stack).await;
    let ann = paying_user(&stack, "ann@example.com", 100).await;
    let client = stack.sql().await;
    let job = completed_job(&client, &ann, 30).await;
    assert_eq!(balance(&client, &ann).await, (70, 0));
    let path = format!("/api/v1/admin/jobs/{job}/refund");

    let refunded = stack
        .call(
            Method::POST,
            &path,
            Some(&token),
            Some(json!({"reason": "Blank image"})),
        )
        .await;
    assert_eq!(refunded.status, 201, "{}", refunded.body);
    assert_eq!(refunded.body["job_id"], job.as_str());
    assert_eq!(refunded.body["amount"], 30);
    assert_eq!(refunded.body["refunded_by"], admin_id.as_str());
    assert_eq!(refunded.body["reason"], "Blank image");
    let transaction = &refunded.body["transaction"];
    assert_eq!(transaction["transaction_type"], "refund");
    assert_eq!(transaction["amount"], 30);
    assert_eq!(transaction["balance_after"], 100);
    assert_eq!(transaction["related_entity_type"], "generation_job");
    assert_eq!(transaction["related_entity_id"], job.as_str());
    assert_eq!(balance(&client, &ann).await, (100, 0));
    assert_invariants(&client).await;

    // Again: the same refund, nothing new.
    let again = stack.call(Method::POST, &path, Some(&token), None).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["transaction"]["id"], transaction["id"]);
    assert_eq!(balance(&client, &ann).await, (100, 0));
    let refunds = "SELECT count(*) FROM credit_transactions WHERE transaction_type = 'refund'";
    assert_eq!(count(&client, refunds).await, 1);

    // The audit row names the admin, the job and the amount.
    let row = client
        .query_one(
            "SELECT user_id, entity_type, entity_id, metadata FROM user_activity_logs \
             WHERE activity_type = 'admin_job_refunded'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), admin_id);
    assert_eq!(row.get::<_, String>(1), "generation_job");
    assert_eq!(row.get::<_, String>(2), job);
    let metadata: Value = row.get(3);
    assert_eq!(metadata["amount"], 30);
    assert_eq!(metadata["target_user_id"], ann.as_str());
    assert_eq!(metadata["reason"], "Blank image");

    // With an Idempotency-Key, a retry replays the first answer.
    let second_job = completed_job(&client, &ann, 12).await;
    let second_path = format!("/api/v1/admin/jobs/{second_job}/refund");
    let first = call_with_key(&stack, &second_path, &token, None, "refund-1").await;
    assert_eq!(first.status, 201, "{}", first.body);
    let replay = call_with_key(&stack, &second_path, &token, None, "refund-1").await;
    assert_eq!(replay.status, 201);
    assert_eq!(replay.body, first.body);
    assert_eq!(count(&client, refunds).await, 2);
    assert_eq!(balance(&client, &ann).await, (100, 0));
    assert_invariants(&client).await;
}

#[tokio::test]
async fn ten_concurrent_refunds_of_one_job_refund_it_once() {
    let stack = spawn_stack().await;
    let (token, _) = admin(&stack).await;
    let ann = paying_user(&stack, "ann@example.com", 50).await;
    let client = stack.sql().await;
    let job = completed_job(&client, &ann, 20).await;
    let path = format!("/api/v1/admin/jobs/{job}/refund");
    let replies =
        join_all((0..10).map(|_| stack.call(Method::POST, &path, Some(&token), None))).await;
    let created = replies.iter().filter(|r| r.status == 201).count();
    let repeated = replies.iter().filter(|r| r.status == 200).count();
    assert_eq!((created, repeated), (1, 9), "{replies:?}");
    let ids: std::collections::HashSet<&str> = replies
        .iter()
        .map(|r| r.body["transaction"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "every answer names the one refund");
    assert_eq!(balance(&client, &ann).await, (50, 0));
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM credit_transactions WHERE transaction_type = 'refund'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM user_activity_logs WHERE activity_type = 'admin_job_refunded'"
        )
        .await,
        1
    );
    assert_invariants(&client).await;
}

#[tokio::test]
async fn only_completed_jobs_with_a_charge_can_be_refunded() {
    let stack = spawn_stack().await;
    let (token, admin_id) = admin(&stack).await;
    let ann = paying_user(&stack, "ann@example.com", 100).await;
    let client = stack.sql().await;
    let refund = |job: String| {
        let stack = &stack;
        let token = token.clone();
        async move {
            stack
                .call(
                    Method::POST,
                    &format!("/api/v1/admin/jobs/{job}/refund"),
                    Some(&token),
                    None,
                )
                .await
        }
    };
    stack
        .call(
            Method::POST,
            "/api/v1/admin/jobs/no-such-job/refund",
            Some(&token),
            None,
        )
        .await
        .assert_problem(404);

    // Settled but not (yet) completed, and each unfinished status: 409.
    let job = completed_job(&client, &ann, 10).await;
    for status in ["queued", "processing", "failed", "cancelled", "timeout"] {
        client
            .execute(
                "UPDATE generation_jobs SET status = $2 WHERE id = $1",
                &[&job, &status],
            )
            .await
            .unwrap();
        let reply = refund(job.clone()).await;
        reply.assert_problem(409);
        assert!(
            reply.body["detail"].as_str().unwrap().contains(status),
            "{}",
            reply.body
        );
    }
    // Completed without any usage posted: nothing to refund.
    let unsettled: String = client
        .query_one(
            "INSERT INTO generation_jobs (user_id, job_type, input_parameters, status) \
             VALUES ($1, 'character_generation', '{}', 'completed') RETURNING id",
            &[&ann],
        )
        .await
        .unwrap()
        .get(0);
    refund(unsettled).await.assert_problem(409);
    // Paid by a free daily generation: a usage of 0 credits, nothing to refund.
    client
        .execute("UPDATE users SET daily_quota = 3 WHERE id = $1", &[&ann])
        .await
        .unwrap();
    let free = completed_job(&client, &ann, 10).await;
    let reply = refund(free).await;
    reply.assert_problem(409);
    assert!(
        reply.body["detail"]
            .as_str()
            .unwrap()
            .contains("nothing to refund"),
        "{}",
        reply.body
    );
    // A bad body is refused before anything happens.
    client
        .execute(
            "UPDATE generation_jobs SET status = 'completed' WHERE id = $1",
            &[&job],
        )
        .await
        .unwrap();
    let bad = stack
        .call(
            Method::POST,
            &format!("/api/v1/admin/jobs/{job}/refund"),
            Some(&token),
            Some(json!({"amount": 99})),
        )
        .await;
    assert_refused(&bad, "amount");
    assert_eq!(balance(&client, &ann).await, (90, 0));
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM credit_transactions WHERE transaction_type = 'refund'"
        )
        .await,
        0
    );
    // An admin may not refund their own job.
    client
        .execute(
            "UPDATE users SET daily_quota = 0 WHERE id = $1",
            &[&admin_id],
        )
        .await
        .unwrap();
    ledger::post(&client, &admin_id, Entry::new("purchase", 10, "pack"))
        .await
        .unwrap();
    let own = completed_job(&client, &admin_id, 5).await;
    refund(own).await.assert_problem(403);
    // Now the completed job refunds.
    assert_eq!(refund(job).await.status, 201);
    assert_eq!(balance(&client, &ann).await, (100, 0));
    assert_invariants(&client).await;
}
