//! The caller's credit routes over real HTTP against real PostgreSQL: balance
//! and history, the package catalogue, the price list, the daily bonus and
//! gifts. Every step that moves credits is followed by the ledger invariants
//! of docs/architecture.md (`testkit::ledger::assert_invariants`), so a failure names the
//! step that broke them.

use std::collections::HashSet;

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use futures::StreamExt;
use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};
use shared::credits::holds;
use shared::credits::ledger::{self, Entry};
use shared::credits::pricing::Quote;
use testkit::ledger::assert_invariants;
use testkit::{Reply, TestStack, spawn_stack};

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

async fn user_id(db: &tokio_postgres::Client, email: &str) -> String {
    db.query_one("SELECT id FROM users WHERE email = $1", &[&email])
        .await
        .unwrap()
        .get(0)
}

/// Credits a user through the ledger (never a raw UPDATE of balances).
async fn fund(db: &tokio_postgres::Client, user: &str, amount: i32) {
    ledger::post(db, user, Entry::new("purchase", amount, "test funding"))
        .await
        .unwrap();
    assert_invariants(db).await;
}

/// `(current_balance, reserved_balance)`.
async fn wallet(db: &tokio_postgres::Client, user: &str) -> (i32, i32) {
    let row = db
        .query_one(
            "SELECT current_balance, reserved_balance FROM user_credits WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn count(
    db: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> i64 {
    db.query_one(sql, params).await.unwrap().get(0)
}

/// Everything the credit routes could change, for "nothing changed" checks.
async fn credit_state(db: &tokio_postgres::Client) -> Value {
    db.query_one(
        "SELECT jsonb_build_object( \
           'wallets', (SELECT coalesce(jsonb_agg(to_jsonb(c) - 'updated_at' ORDER BY c.user_id), '[]') FROM user_credits c), \
           'ledger', (SELECT count(*) FROM credit_transactions), \
           'keys', (SELECT count(*) FROM idempotency_keys), \
           'activity', (SELECT count(*) FROM user_activity_logs WHERE activity_type <> 'login'))",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

async fn post(
    stack: &TestStack,
    path: &str,
    token: Option<&str>,
    key: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut request = stack.http.post(format!("{}{path}", stack.base_url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    testkit::read(request.send().await.unwrap()).await
}

async fn gift(stack: &TestStack, token: &str, key: &str, body: Value) -> Reply {
    post(
        stack,
        "/api/v1/credits/gifts",
        Some(token),
        Some(key),
        Some(body),
    )
    .await
}

async fn claim_bonus(stack: &TestStack, token: &str) -> Reply {
    post(
        stack,
        "/api/v1/credits/daily-bonus",
        Some(token),
        None,
        None,
    )
    .await
}

/// A gift under a fresh Idempotency-Key.
async fn gift_once(stack: &TestStack, token: &str, body: Value) -> Reply {
    gift(stack, token, &new_key(), body).await
}

fn new_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn set_timezone(stack: &TestStack, token: &str, zone: &str) {
    let reply = stack
        .call(
            Method::PATCH,
            "/api/v1/me",
            Some(token),
            Some(json!({"timezone": zone})),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

/// The user's local date as the database computes it.
async fn local_today(db: &tokio_postgres::Client, user: &str) -> NaiveDate {
    db.query_one(
        "SELECT user_local_date(timezone) FROM users WHERE id = $1",
        &[&user],
    )
    .await
    .unwrap()
    .get(0)
}

async fn set_last_bonus(
    db: &tokio_postgres::Client,
    user: &str,
    last: Option<NaiveDate>,
    streak: i32,
) {
    db.execute(
        "UPDATE user_credits SET last_daily_bonus_date = $2, daily_login_streak = $3 WHERE user_id = $1",
        &[&user, &last, &streak],
    )
    .await
    .unwrap();
}

/// Every page of a list, following `next_cursor`.
async fn walk(stack: &TestStack, path: &str, token: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = match &cursor {
            Some(c) => format!("{path}{sep}cursor={c}"),
            None => path.to_string(),
        };
        let reply = stack.get(&url, Some(token)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        items.extend(reply.body["items"].as_array().unwrap().iter().cloned());
        match reply.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return items,
        }
    }
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

/// A generation job holding `price` credits of `user` (free generations off).
async fn hold(db: &tokio_postgres::Client, user: &str, price: i32) {
    db.execute("UPDATE users SET daily_quota = 0 WHERE id = $1", &[&user])
        .await
        .unwrap();
    let job: String = db
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
    holds::hold(db, user, &job, &quote).await.unwrap();
    assert_invariants(db).await;
}

// ------------------------------------------------------------------------------------------
// Balance and history
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn balance_and_transactions_reflect_posted_entries() {
    let stack = spawn_stack().await;
    let db = stack.sql().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let bob = stack.user("bob@example.com", "bob").await;
    let ann_id = user_id(&db, "ann@example.com").await;
    let bob_id = user_id(&db, "bob@example.com").await;

    let empty = stack.get("/api/v1/credits", Some(&ann)).await;
    assert_eq!(empty.status, 200, "{}", empty.body);
    assert_eq!(empty.body["current_balance"], 0);
    assert_eq!(empty.body["available"], 0);
    assert_eq!(empty.body["free_generations_left"], 3);
    assert_eq!(empty.body["daily_bonus_available"], true);
    assert_eq!(empty.body["daily_bonus_amount"], 5);

    fund(&db, &ann_id, 100).await;
    ledger::post(&db, &ann_id, Entry::new("bonus", 5, "welcome"))
        .await
        .unwrap();
    assert_invariants(&db).await;
    ledger::post(&db, &ann_id, Entry::new("usage", -30, "a generation"))
        .await
        .unwrap();
    assert_invariants(&db).await;
    fund(&db, &bob_id, 7).await;
    hold(&db, &ann_id, 20).await;

    let balance = stack.get("/api/v1/credits", Some(&ann)).await;
    assert_eq!(balance.status, 200);
    let b = &balance.body;
    assert_eq!(
        (
            b["current_balance"].as_i64(),
            b["reserved_balance"].as_i64(),
            b["available"].as_i64()
        ),
        (Some(75), Some(20), Some(55))
    );
    assert_eq!(b["debt_balance"], 0);
    assert_eq!(b["total_purchased"], 100);
    assert_eq!(b["total_spent"], 30);
    assert_eq!(b["total_earned"], 5);
    assert_eq!(b["free_generations_left"], 0, "the hold set the quota to 0");
    assert_eq!(b["daily_login_streak"], 0);
    assert!(b["local_date"].is_string());

    let page = stack.get("/api/v1/credits/transactions", Some(&ann)).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let items = page.body["items"].as_array().unwrap();
    let amounts: Vec<i64> = items
        .iter()
        .map(|i| i["amount"].as_i64().unwrap())
        .collect();
    let after: Vec<i64> = items
        .iter()
        .map(|i| i["balance_after"].as_i64().unwrap())
        .collect();
    assert_eq!(
        amounts,
        [-30, 5, 100],
        "newest first; the hold posts nothing"
    );
    assert_eq!(after, [75, 105, 100]);
    assert!(page.body["next_cursor"].is_null());
    // Every column of credit_transactions, and only the caller's rows.
    let columns: HashSet<String> = db
        .query(
            "SELECT column_name::text FROM information_schema.columns WHERE table_name = 'credit_transactions'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let keys: HashSet<String> = items[0].as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, columns);
    assert!(items.iter().all(|i| i["user_id"] == ann_id.as_str()));
    assert_eq!(items[2]["transaction_type"], "purchase");
    assert_eq!(items[2]["status"], "completed");

    let bobs = stack.get("/api/v1/credits/transactions", Some(&bob)).await;
    assert_eq!(ids(bobs.body["items"].as_array().unwrap()).len(), 1);

    stack.get("/api/v1/credits", None).await.assert_problem(401);
    stack
        .get("/api/v1/credits/transactions", None)
        .await
        .assert_problem(401);
    stack
        .get("/api/v1/credits?x=1", Some(&ann))
        .await
        .assert_problem(422);
}

#[tokio::test]
async fn transaction_pages_walk_every_entry_once_while_entries_are_posted() {
    let stack = spawn_stack().await;
    let db = stack.sql().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let ann_id = user_id(&db, "ann@example.com").await;
    for i in 1..=57 {
        ledger::post(&db, &ann_id, Entry::new("bonus", i, format!("entry {i}")))
            .await
            .unwrap();
    }
    assert_invariants(&db).await;
    let existing: Vec<String> = db
        .query(
            "SELECT id FROM credit_transactions WHERE user_id = $1 ORDER BY created_at DESC, id DESC",
            &[&ann_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();

    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let url = match &cursor {
            Some(c) => format!("/api/v1/credits/transactions?limit=10&cursor={c}"),
            None => "/api/v1/credits/transactions?limit=10".to_string(),
        };
        let reply = stack.get(&url, Some(&ann)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let items = reply.body["items"].as_array().unwrap();
        assert!(items.len() <= 10);
        seen.extend(ids(items));
        pages += 1;
        // New entries land while the client walks.
        for _ in 0..3 {
            ledger::post(&db, &ann_id, Entry::new("bonus", 1, "posted mid-walk"))
                .await
                .unwrap();
        }
        assert_invariants(&db).await;
        match reply.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 6);
    assert_eq!(
        seen, existing,
        "every entry that existed, exactly once, newest first"
    );
    let total = count(
        &db,
        "SELECT count(*) FROM credit_transactions WHERE user_id = $1",
        &[&ann_id],
    )
    .await;
    assert_eq!(total, 57 + 18);
}

#[tokio::test]
async fn transactions_filter_by_type_and_refuse_bad_parameters() {
    let stack = spawn_stack().await;
    let db = stack.sql().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let ann_id = user_id(&db, "ann@example.com").await;
    fund(&db, &ann_id, 50).await;
    for _ in 0..4 {
        ledger::post(&db, &ann_id, Entry::new("bonus", 2, "b"))
            .await
            .unwrap();
    }
    fund(&db, &ann_id, 10).await;

    let purchases = walk(
        &stack,
        "/api/v1/credits/transactions?transaction_type=purchase&limit=1",
        &ann,
    )
    .await;
    assert_eq!(purchases.len(), 2);
    assert!(
        purchases
            .iter()
            .all(|i| i["transaction_type"] == "purchase")
    );
    let bonuses = walk(
        &stack,
        "/api/v1/credits/transactions?transaction_type=bonus&limit=3",
        &ann,
    )
    .await;
    assert_eq!(bonuses.len(), 4);
    let none = stack
        .get(
            "/api/v1/credits/transactions?transaction_type=gift_sent",
            Some(&ann),
        )
        .await;
    assert_eq!(none.body["items"], json!([]));

    let crafted = |at: &str, id: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(json!({"at": at, "id": id}).to_string())
    };
    for query in [
        "transaction_type=teleport".to_string(),
        "transaction_type=".to_string(),
        "limit=0".to_string(),
        "limit=101".to_string(),
        "limit=ten".to_string(),
        "limit=-1".to_string(),
        "cursor=not-a-cursor".to_string(),
        format!("cursor={}", crafted("2025-01-01T00:00:00Z", "a\u{0}b")),
        format!("cursor={}", crafted("2025-01-01T00:00:00Z", "")),
        format!("cursor={}", crafted("not a time", "abc")),
        "page=2".to_string(),
    ] {
        let reply = stack
            .get(&format!("/api/v1/credits/transactions?{query}"), Some(&ann))
            .await;
        reply.assert_problem(422);
    }
    let both = stack
        .get(
            "/api/v1/credits/transactions?transaction_type=nope&limit=0",
            Some(&ann),
        )
        .await;
    both.assert_problem(422);
    let fields: Vec<&str> = both.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["limit", "transaction_type"]);
}

// ------------------------------------------------------------------------------------------
// Packages
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn packages_honour_availability_promotion_dates_and_tiers() {
    let stack = spawn_stack().await;
    let db = stack.sql().await;
    db.batch_execute(
        "INSERT INTO credit_packages (id, name, credit_amount, price_usd, is_available, display_order) \
           VALUES ('pkg_off', 'Withdrawn', 10, 1.00, false, 0); \
         INSERT INTO credit_packages (id, name, credit_amount, price_usd, promotion_start_date, display_order) \
           VALUES ('pkg_future', 'Soon', 10, 1.00, now() + interval '1 day', 0); \
         INSERT INTO credit_packages (id, name, credit_amount, price_usd, promotion_end_date, display_order) \
           VALUES ('pkg_past', 'Over', 10, 1.00, now() - interval '1 second', 0); \
         INSERT INTO credit_packages (id, name, credit_amount, bonus_credits, price_usd, discount_percentage, \
                                      promotion_start_date, promotion_end_date, package_type, display_order, badge_text) \
           VALUES ('pkg_promo', 'Weekend', 200, 100, 7.50, 25, now() - interval '1 hour', now() + interval '1 hour', \
                   'promotional', 5, 'WEEKEND'); \
         INSERT INTO credit_packages (id, name, credit_amount, price_usd, target_tiers, display_order) \
           VALUES ('pkg_pro_only', 'Team', 5000, 120.00, '{PRO,ENTERPRISE}', 6); \
         INSERT INTO credit_packages (id, name, credit_amount, price_usd, display_order) \
           VALUES ('pkg_unordered', 'Odd', 1, 0.10, NULL);",
    )
    .await
    .unwrap();

    // An unset display order counts as 0 (the column's default), as in the admin list.
    let public = [
        "pkg_unordered",
        "pkg_starter",
        "pkg_creator",
        "pkg_studio",
        "pkg_pro",
        "pkg_promo",
    ];
    let anonymous = stack.get("/api/v1/credits/packages", None).await;
    assert_eq!(anonymous.status, 200, "{}", anonymous.body);
    assert_eq!(anonymous.body["tier"], "FREE");
    assert_eq!(ids(anonymous.body["items"].as_array().unwrap()), public);
    let starter = &anonymous.body["items"][1];
    assert_eq!(starter["price_usd"], "4.99", "an exact decimal string");
    assert_eq!(starter["price_currency"], "USD");
    assert_eq!(starter["credit_amount"], 100);
    let creator = &anonymous.body["items"][2];
    assert_eq!(
        (
            creator["bonus_credits"].as_i64(),
            creator["total_credits"].as_i64()
        ),
        (Some(50), Some(550))
    );
    assert_eq!(creator["badge_text"], "POPULAR");
    let promo = &anonymous.body["items"][5];
    assert_eq!(promo["price_usd"], "7.50");
    assert_eq!(promo["discount_percentage"], 25);
    // 750 cents less 25% is 562.5: what a purchase charges, rounded down.
    assert_eq!(promo["charged_price"], "5.62");
    assert_eq!(promo["charged_amount"], 562);
    assert_eq!(promo["package_type"], "promotional");
    assert!(promo["promotion_end_date"].is_string());
    let keys: HashSet<&str> = starter
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert!(
        !keys.contains("is_available")
            && !keys.contains("target_tiers")
            && !keys.contains("created_at")
    );

    let free = stack.user("free@example.com", "free_user").await;
    let listed = stack.get("/api/v1/credits/packages", Some(&free)).await;
    assert_eq!(ids(listed.body["items"].as_array().unwrap()), public);

    let pro = stack.user("pro@example.com", "pro_user").await;
    db.execute(
        "UPDATE users SET subscription_tier = 'PRO' WHERE email = 'pro@example.com'",
        &[],
    )
    .await
    .unwrap();
    let listed = stack.get("/api/v1/credits/packages", Some(&pro)).await;
    assert_eq!(listed.body["tier"], "PRO");
    assert_eq!(
        ids(listed.body["items"].as_array().unwrap()),
        [
            "pkg_unordered",
            "pkg_starter",
            "pkg_creator",
            "pkg_studio",
            "pkg_pro",
            "pkg_promo",
            "pkg_pro_only"
        ]
    );

    // A lapsed subscription shops as FREE.
    db.execute(
        "UPDATE users SET subscription_end_date = now() - interval '1 day' WHERE email = 'pro@example.com'",
        &[],
    )
    .await
    .unwrap();
    let lapsed = stack.get("/api/v1/credits/packages", Some(&pro)).await;
    assert_eq!(lapsed.body["tier"], "FREE");
    assert_eq!(ids(lapsed.body["items"].as_array().unwrap()), public);

    // The window is live: ending the promotion removes it at once.
    db.execute(
        "UPDATE credit_packages SET promotion_end_date = now() WHERE id = 'pkg_promo'",
        &[],
    )
    .await
    .unwrap();
    let after = stack.get("/api/v1/credits/packages", None).await;
    assert!(!ids(after.body["items"].as_array().unwrap()).contains(&"pkg_promo".to_string()));

    stack
        .get("/api/v1/credits/packages?tier=PRO", None)
        .await
        .assert_problem(422);
}

// ------------------------------------------------------------------------------------------
// Pricing
// ------------------------------------------------------------------------------------------

fn item<'a>(reply: &'a Reply, id: &str) -> &'a Value {
    reply.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {}", reply.body))
}

#[tokio::test]
async fn pricing_shows_tier_multipliers_access_and_usage_without_consuming_limits() {
    let stack = spawn_stack().await;
    let db = stack.sql().await;
    // Before the first /pricing call: the process caches the configs.
    db.batch_execute(
        "INSERT INTO api_credit_configs (id, endpoint_pattern, http_method, base_cost, minimum_tier, \
                                         rate_limit_per_minute, daily_limit, category, description) \
           VALUES ('cfg_pro_only', '/api/v1/characters/:id/upscale-hd', 'POST', 20, 'PRO', 5, 50, 'generation', 'HD'); \
         INSERT INTO api_credit_configs (id, endpoint_pattern, http_method, base_cost, requires_subscription) \
           VALUES ('cfg_subscribers', '/api/v1/characters/:id/animate', 'POST', 7, true); \
         INSERT INTO api_credit_configs (id, endpoint_pattern, http_method, base_cost, is_enabled) \
           VALUES ('cfg_off', '/api/v1/characters/:id/retired', 'POST', 1, false);",
    )
    .await
    .unwrap();

    let anonymous = stack.get("/api/v1/pricing", None).await;
    assert_eq!(anonymous.status, 200, "{}", anonymous.body);
    assert_eq!(anonymous.body["signed_in"], false);
    assert_eq!(anonymous.body["tier"], "FREE");
    assert!(anonymous.body["buckets"].is_null());
    assert_eq!(
        anonymous.body["default_request"],
        json!({"job_type": "character_generation", "steps": 20, "width": 512, "height": 512, "batch_size": 1})
    );
    let listed: HashSet<String> = ids(anonymous.body["items"].as_array().unwrap())
        .into_iter()
        .collect();
    assert_eq!(
        listed,
        ["cfg_generate"].map(String::from).into(),
        "disabled configs, and configs of routes that are not charged (written by hand: the \
         admin routes refuse them), are not listed"
    );
    let generate = item(&anonymous, "cfg_generate");
    assert_eq!(generate["http_method"], "POST");
    assert_eq!(
        generate["endpoint_pattern"],
        "/api/v1/characters/:id/generate"
    );
    assert_eq!(generate["category"], "generation");
    assert_eq!(generate["base_cost"], 10);
    assert_eq!(
        generate["cost_formula"]["steps"],
        json!({"over": 30, "every": 10, "cost": 1})
    );
    assert_eq!(
        (
            generate["price"].as_i64(),
            generate["tier_multiplier"].as_f64()
        ),
        (Some(10), Some(1.0))
    );
    assert_eq!(generate["limits"]["daily_limit"], 200);
    assert_eq!(generate["limits"]["rate_limit_per_minute"], 10);
    assert_eq!(generate["allowed"], true);
    assert!(generate["usage"].is_null() && generate["would_pay"].is_null());

    // Tier multipliers, set as an admin would.
    let ann = stack.user("ann@example.com", "ann").await;
    let ann_id = user_id(&db, "ann@example.com").await;
    // Ann lives in Tokyo from the start: her first daily window, opened by her
    // first signed-in look below, is the Tokyo day (a later zone change would
    // apply from the next window only).
    db.execute(
        "UPDATE users SET timezone = 'Asia/Tokyo' WHERE id = $1",
        &[&ann_id],
    )
    .await
    .unwrap();
    for (tier, price, multiplier) in [
        ("FREE", 10, 1.0),
        ("PREMIUM", 8, 0.8),
        ("PRO", 6, 0.6),
        ("ENTERPRISE", 4, 0.4),
    ] {
        db.execute(
            "UPDATE users SET subscription_tier = $2 WHERE id = $1",
            &[&ann_id, &tier],
        )
        .await
        .unwrap();
        let reply = stack.get("/api/v1/pricing", Some(&ann)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["tier"], tier);
        let generate = item(&reply, "cfg_generate");
        assert_eq!(generate["price"], price, "{tier}");
        assert_eq!(generate["tier_multiplier"].as_f64(), Some(multiplier));
        assert_eq!(generate["cost_calculation"]["price"], price);
    }

    // Access rules, as the generation route's config sets them.
    let bob = stack.user("bob@example.com", "bob").await;
    let bob_id = user_id(&db, "bob@example.com").await;
    db.execute(
        "UPDATE users SET subscription_tier = 'PREMIUM', subscription_end_date = now() + interval '30 days' \
         WHERE id = $1",
        &[&bob_id],
    )
    .await
    .unwrap();
    for (rules, ann_pro, bob_premium) in [
        ("minimum_tier = 'PRO'", true, false),
        (
            "minimum_tier = NULL, requires_subscription = true",
            true,
            true,
        ),
    ] {
        db.execute(
            &format!("UPDATE api_credit_configs SET {rules} WHERE id = 'cfg_generate'"),
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
        let anonymous = stack.get("/api/v1/pricing", None).await;
        assert_eq!(
            item(&anonymous, "cfg_generate")["allowed"],
            false,
            "{rules}"
        );
        // Ann is still ENTERPRISE from the loop above, without an end date.
        let ann_view = stack.get("/api/v1/pricing", Some(&ann)).await;
        assert_eq!(
            item(&ann_view, "cfg_generate")["allowed"],
            ann_pro,
            "{rules}"
        );
        let bob_view = stack.get("/api/v1/pricing", Some(&bob)).await;
        assert_eq!(
            item(&bob_view, "cfg_generate")["allowed"],
            bob_premium,
            "{rules}"
        );
    }
    let denied = stack.get("/api/v1/pricing", None).await;
    assert!(
        item(&denied, "cfg_generate")["denied_reason"]
            .as_str()
            .unwrap()
            .contains("subscription")
    );
    db.execute(
        "UPDATE api_credit_configs SET requires_subscription = false WHERE id = 'cfg_generate'",
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

    // Looking is free: far more reads than the per-minute limit, no window counted.
    db.execute(
        "UPDATE users SET subscription_tier = 'FREE', timezone = 'Asia/Tokyo' WHERE id = $1",
        &[&ann_id],
    )
    .await
    .unwrap();
    for _ in 0..15 {
        let reply = stack.get("/api/v1/pricing", Some(&ann)).await;
        assert_eq!(reply.status, 200);
        assert_eq!(item(&reply, "cfg_generate")["usage"]["minute"]["used"], 0);
        assert_eq!(item(&reply, "cfg_generate")["can_call_now"], true);
    }
    assert_eq!(
        count(&db, "SELECT count(*) FROM rate_limit_windows", &[]).await,
        0
    );

    // Windows the engine counted (this minute and the next, so a minute turning
    // mid-test changes nothing; the user's Tokyo day) are reported, not bumped.
    db.execute(
        "INSERT INTO rate_limit_windows (user_id, config_id, window_kind, window_start, window_end, request_count) VALUES \
           ($1, 'cfg_generate', 'minute', date_trunc('minute', now()), date_trunc('minute', now()) + interval '1 minute', 4), \
           ($1, 'cfg_generate', 'minute', date_trunc('minute', now()) + interval '1 minute', \
                date_trunc('minute', now()) + interval '2 minutes', 4), \
           ($1, 'cfg_generate', 'day', local_midnight(user_local_date('Asia/Tokyo'), 'Asia/Tokyo'), \
                local_midnight(user_local_date('Asia/Tokyo') + 1, 'Asia/Tokyo'), 7), \
           ($1, 'cfg_generate', 'day', local_midnight(user_local_date('UTC'), 'UTC'), \
                local_midnight(user_local_date('UTC') + 1, 'UTC'), 9)",
        &[&ann_id],
    )
    .await
    .unwrap();
    let windows_before = count(
        &db,
        "SELECT sum(request_count) FROM rate_limit_windows",
        &[],
    )
    .await;
    let reply = stack.get("/api/v1/pricing", Some(&ann)).await;
    let usage = &item(&reply, "cfg_generate")["usage"];
    assert_eq!(
        (
            usage["minute"]["used"].as_i64(),
            usage["minute"]["remaining"].as_i64()
        ),
        (Some(4), Some(6))
    );
    assert_eq!(
        (
            usage["day"]["used"].as_i64(),
            usage["day"]["remaining"].as_i64()
        ),
        (Some(7), Some(193)),
        "a window keyed on UTC midnight (9) is not the Tokyo user's day"
    );
    let tokyo_tomorrow: DateTime<Utc> = db
        .query_one(
            "SELECT local_midnight(user_local_date('Asia/Tokyo') + 1, 'Asia/Tokyo')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let resets: DateTime<Utc> = usage["day"]["resets_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        resets, tokyo_tomorrow,
        "the day window ends at Tokyo midnight"
    );

    let windows_after = count(
        &db,
        "SELECT sum(request_count) FROM rate_limit_windows",
        &[],
    )
    .await;
    assert_eq!(windows_before, windows_after, "reading does not count");

    db.execute(
        "UPDATE rate_limit_windows SET request_count = 10 WHERE config_id = 'cfg_generate' AND window_kind = 'minute'",
        &[],
    )
    .await
    .unwrap();
    let full = stack.get("/api/v1/pricing", Some(&ann)).await;
    assert_eq!(item(&full, "cfg_generate")["can_call_now"], false);
    assert_eq!(
        item(&full, "cfg_generate")["usage"]["minute"]["remaining"],
        0
    );

    // Buckets: free generations first, then the allowance, then purchased credits.
    let reply = stack.get("/api/v1/pricing", Some(&ann)).await;
    assert_eq!(
        reply.body["buckets"],
        json!({"free_generations_left": 3, "daily_allowance_left": 0, "available": 0})
    );
    assert_eq!(
        item(&reply, "cfg_generate")["would_pay"]["free_generation"],
        true
    );
    db.execute(
        "UPDATE users SET daily_used = daily_quota WHERE id = $1",
        &[&ann_id],
    )
    .await
    .unwrap();
    db.execute(
        "UPDATE user_credits SET daily_allowance = 4 WHERE user_id = $1",
        &[&ann_id],
    )
    .await
    .unwrap();
    fund(&db, &ann_id, 5).await;
    let reply = stack.get("/api/v1/pricing", Some(&ann)).await;
    assert_eq!(
        reply.body["buckets"],
        json!({"free_generations_left": 0, "daily_allowance_left": 4, "available": 5})
    );
    assert_eq!(
        item(&reply, "cfg_generate")["would_pay"],
        json!({"free_generation": false, "allowance_credits": 4, "purchased_credits": 6, "affordable": false})
    );
    fund(&db, &ann_id, 1).await;
    let reply = stack.get("/api/v1/pricing", Some(&ann)).await;
    assert_eq!(
        item(&reply, "cfg_generate")["would_pay"]["affordable"],
        true
    );

    stack
        .get("/api/v1/pricing?tier=PRO", None)
        .await
        .assert_problem(422);
}

#[tokio::test]
async fn daily_bonus_once_per_day_then_409_with_the_next_opening() {
    let stack = spawn_stack().await;
    let db = stack.sql().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let ann_id = user_id(&db, "ann@example.com").await;

    let first = claim_bonus(&stack, &ann).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.body["amount"], 5);
    assert_eq!(first.body["daily_login_streak"], 1);
    assert_eq!(first.body["balance_after"], 5);
    assert_eq!(first.body["next_amount"], 6);
    assert_invariants(&db).await;
    let today = local_today(&db, &ann_id).await;
    assert_eq!(first.body["bonus_date"], today.to_string());

    let entries = stack.get("/api/v1/credits/transactions", Some(&ann)).await;
    let entry = &entries.body["items"][0];
    assert_eq!(entry["transaction_type"], "bonus");
    assert_eq!(entry["id"], first.body["transaction_id"]);
    assert_eq!(entry["metadata"]["streak"], 1);
    let balance = stack.get("/api/v1/credits", Some(&ann)).await;
    assert_eq!(balance.body["current_balance"], 5);
    assert_eq!(balance.body["daily_login_streak"], 1);
    assert_eq!(balance.body["last_daily_bonus_date"], today.to_string());
    assert_eq!(balance.body["daily_bonus_available"], false);
    assert!(balance.body["daily_bonus_amount"].is_null());
    let logged = count(
        &db,
        "SELECT count(*) FROM user_activity_logs WHERE user_id = $1 AND activity_type = 'daily_bonus' AND entity_id = $2",
        &[&ann_id, &first.body["transaction_id"].as_str().unwrap()],
    )
    .await;
    assert_eq!(logged, 1);

    let before = credit_state(&db).await;
    let second = claim_bonus(&stack, &ann).await;
    second.assert_problem(409);
    let next: DateTime<Utc> = second.body["next_available_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(next > Utc::now() && next <= Utc::now() + chrono::Duration::hours(26));
    assert_eq!(
        first.body["next_available_at"],
        second.body["next_available_at"]
    );
    let retry: i64 = second.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=26 * 3600).contains(&retry));
    assert_eq!(
        credit_state(&db).await,
        before,
        "a refused claim changes nothing"
    );

    // Idempotency-Key: a retry of the first claim replays it; a new key is a new claim.
    let bob = stack.user("bob@example.com", "bob").await;
    let bob_id = user_id(&db, "bob@example.com").await;
    let key = new_key();
    let made = post(
        &stack,
        "/api/v1/credits/daily-bonus",
        Some(&bob),
        Some(&key),
        None,
    )
    .await;
    assert_eq!(made.status, 201);
    let replayed = post(
        &stack,
        "/api/v1/credits/daily-bonus",
        Some(&bob),
        Some(&key),
        Some(json!({})),
    )
    .await;
    assert_eq!(replayed.status, 201);
    assert_eq!(replayed.body, made.body);
    assert_eq!(replayed.headers["idempotent-replayed"], "true");
    post(
        &stack,
        "/api/v1/credits/daily-bonus",
        Some(&bob),
        Some(&new_key()),
        None,
    )
    .await
    .assert_problem(409);
    assert_eq!(wallet(&db, &bob_id).await, (5, 0));
    assert_invariants(&db).await;

    post(&stack, "/api/v1/credits/daily-bonus", None, None, None)
        .await
        .assert_problem(401);
    post(
        &stack,
        "/api/v1/credits/daily-bonus",
        Some(&bob),
        None,
        Some(json!({"amount": 1000})),
    )
    .await
    .assert_problem(422);
}

#[tokio::test]
async fn ten_concurrent_daily_bonus_claims_credit_once() {
    let stack = spawn_stack().await;
    let db = stack.sql().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let ann_id = user_id(&db, "ann@example.com").await;
    let replies = join_all((0..10).map(|_| claim_bonus(&stack, &ann))).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        9,
        "{statuses:?}"
    );
    assert_eq!(wallet(&db, &ann_id).await, (5, 0));
    let bonuses = count(
        &db,
        "SELECT count(*) FROM credit_transactions WHERE user_id = $1 AND transaction_type = 'bonus'",
        &[&ann_id],
    )
    .await;
    assert_eq!(bonuses, 1);
    assert_invariants(&db).await;
}

#[tokio::test]
async fn daily_bonus_streak_grows_resets_after_a_missed_day_and_caps() {
    let stack = spawn_stack().await;
    let db = stack.sql().await;
    // (last claim relative to the local today, streak before, streak after, amount)
    // with the defaults base 5, step 1, max streak 7.
    let cases: [(Option<i64>, i32, i32, i32); 6] = [
        (None, 0, 1, 5),
        (Some(1), 1, 2, 6),
        (Some(1), 3, 4, 8),
        (Some(2), 5, 1, 5),
        (Some(1), 6, 7, 11),
        (Some(1), 20, 21, 11),
    ];
    for (n, (days_ago, before, after, amount)) in cases.into_iter().enumerate() {
        let email = format!("u{n}@example.com");
        let token = stack.user(&email, &format!("user_{n}")).await;
        let id = user_id(&db, &email).await;
        let today = local_today(&db, &id).await;
        let last = days_ago.map(|d| today - chrono::Days::new(d as u64));
        set_last_bonus(&db, &id, last, before).await;
        let reply = claim_bonus(&stack, &token).await;
        assert_eq!(reply.status, 201, "case {n}: {}", reply.body);
        assert_eq!(reply.body["daily_login_streak"], after, "case {n}");
        assert_eq!(reply.body["amount"], amount, "case {n}");
        assert_eq!(wallet(&db, &id).await, (amount, 0), "case {n}");
        assert_invariants(&db).await;
        let stored: (Option<NaiveDate>, i32) = {
            let row = db
                .query_one(
                    "SELECT last_daily_bonus_date, daily_login_streak FROM user_credits WHERE user_id = $1",
                    &[&id],
                )
                .await
                .unwrap();
            (row.get(0), row.get(1))
        };
        assert_eq!(stored, (Some(today), after), "case {n}");
    }

    // A last claim dated after the local today (the zone moved west) keeps
    // today closed: moving time zones cannot claim a day twice.
    let token = stack.user("west@example.com", "west").await;
    let id = user_id(&db, "west@example.com").await;
    let today = local_today(&db, &id).await;
    set_last_bonus(&db, &id, Some(today + chrono::Days::new(1)), 2).await;
    claim_bonus(&stack, &token).await.assert_problem(409);
    assert_eq!(wallet(&db, &id).await, (0, 0));
}

#[tokio::test]
async fn daily_bonus_follows_the_users_local_day_in_tokyo() {
    let stack = spawn_stack().await;
    let db = stack.sql().await;
    let token = stack.user("kenji@example.com", "kenji").await;
    set_timezone(&stack, &token, "Asia/Tokyo").await;
    let id = user_id(&db, "kenji@example.com").await;
    let tokyo_today = local_today(&db, &id).await;

    // The streak continues from the Tokyo yesterday, and the claim is dated in Tokyo.
    set_last_bonus(&db, &id, Some(tokyo_today - chrono::Days::new(1)), 2).await;
    let claimed = claim_bonus(&stack, &token).await;
    assert_eq!(claimed.status, 201, "{}", claimed.body);
    assert_eq!(claimed.body["daily_login_streak"], 3);
    assert_eq!(claimed.body["bonus_date"], tokyo_today.to_string());
    assert_invariants(&db).await;
    // The next one opens at Tokyo midnight (15:00 UTC the day before).
    let next: DateTime<Utc> = claimed.body["next_available_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let tokyo_midnight = (tokyo_today + chrono::Days::new(1))
        .and_time(NaiveTime::MIN)
        .and_utc()
        - chrono::Duration::hours(9);
    assert_eq!(next, tokyo_midnight);
    let again = claim_bonus(&stack, &token).await;
    again.assert_problem(409);
    assert_eq!(
        again.body["next_available_at"],
        claimed.body["next_available_at"]
    );
    let balance = stack.get("/api/v1/credits", Some(&token)).await;
    assert_eq!(balance.body["local_date"], tokyo_today.to_string());
}

/// Two zones exactly a day apart (UTC+14 and UTC-10, +13 and -11, or +12 and
/// -12): at every instant the one's local date is the other's plus one, and
/// the UTC date is one of the two, so one of them is always on another date
/// than UTC, whatever the hour. Of the three pairs, the one whose shared
/// midnight (10:00, 11:00 or 12:00 UTC) is furthest from now (at least an
/// hour), so no local date turns while the test runs.
async fn zones_a_day_apart(db: &tokio_postgres::Client) -> (String, String) {
    let row = db
        .query_one(
            "SELECT format('Etc/GMT-%s', 24 - o), format('Etc/GMT+%s', o) \
             FROM unnest(ARRAY[10, 11, 12]) o, \
                  LATERAL (SELECT abs(extract(epoch FROM (now() AT TIME ZONE 'UTC')::time) \
                                      - o * 3600) AS d) gap \
             ORDER BY least(gap.d, 86400 - gap.d) DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn daily_bonus_follows_the_local_date_whichever_side_of_utc_it_is() {
    let stack = spawn_stack().await;
    let db = stack.sql().await;
    let (ahead_zone, behind_zone) = zones_a_day_apart(&db).await;
    let ahead = stack.user("ahead@example.com", "ahead").await;
    let behind = stack.user("behind@example.com", "behind").await;
    set_timezone(&stack, &ahead, &ahead_zone).await;
    set_timezone(&stack, &behind, &behind_zone).await;
    let (ahead_id, behind_id) = (
        user_id(&db, "ahead@example.com").await,
        user_id(&db, "behind@example.com").await,
    );
    let ahead_today = local_today(&db, &ahead_id).await;
    let behind_today = local_today(&db, &behind_id).await;
    let utc_today: NaiveDate = db
        .query_one("SELECT (now() AT TIME ZONE 'UTC')::date", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ahead_today, behind_today + chrono::Days::new(1));
    assert!(
        [ahead_today, behind_today].contains(&utc_today),
        "UTC is between {ahead_zone} and {behind_zone}"
    );

    // Ahead: a claim dated the other zone's today was yesterday here, so
    // today's is open and the streak continues. (Were the UTC date used, the
    // hours when it is the behind zone's date would refuse this claim.)
    set_last_bonus(&db, &ahead_id, Some(behind_today), 1).await;
    let reply = claim_bonus(&stack, &ahead).await;
    assert_eq!(reply.status, 201, "{ahead_zone}: {}", reply.body);
    assert_eq!(reply.body["daily_login_streak"], 2);
    assert_eq!(reply.body["bonus_date"], ahead_today.to_string());

    // Behind: a claim dated its own today is today's, although the date has
    // moved on a zone further east (and, at the hours when UTC has the ahead
    // zone's date, in UTC too).
    set_last_bonus(&db, &behind_id, Some(behind_today), 1).await;
    claim_bonus(&stack, &behind).await.assert_problem(409);
    set_last_bonus(
        &db,
        &behind_id,
        Some(behind_today - chrono::Days::new(1)),
        1,
    )
    .await;
    let reply = claim_bonus(&stack, &behind).await;
    assert_eq!(reply.status, 201, "{behind_zone}: {}", reply.body);
    assert_eq!(reply.body["daily_login_streak"], 2);
    assert_eq!(reply.body["bonus_date"], behind_today.to_string());

    // Both claims fell in the days read above: no local date turned meanwhile.
    assert_eq!(local_today(&db, &ahead_id).await, ahead_today);
    assert_eq!(local_today(&db, &behind_id).await, behind_today);
    assert_invariants(&db).await;
}

// ------------------------------------------------------------------------------------------
// Gifts
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_gift_posts_one_pair_with_one_gift_id() {
    let stack = spawn_stack().await;
    let db = stack.sql().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let bob = stack.user("bob@example.com", "Bob_Lee").await;
    let (ann_id, bob_id) = (
        user_id(&db, "ann@example.com").await,
        user_id(&db, "bob@example.com").await,
    );
    fund(&db, &ann_id, 100).await;

    let reply = gift_once(
        &stack,
        &ann,
        json!({"to_username": "bob_lee", "amount": 30, "message": "For the dragon"}),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.body["amount"], 30);
    assert_eq!(
        reply.body["to_username"], "Bob_Lee",
        "found case-insensitively, answered as spelled"
    );
    assert_eq!(reply.body["balance_after"], 70);
    assert_eq!(reply.body["message"], "For the dragon");
    assert_invariants(&db).await;
    let gift_id = reply.body["gift_id"].as_str().unwrap().to_string();

    assert_eq!(wallet(&db, &ann_id).await, (70, 0));
    assert_eq!(wallet(&db, &bob_id).await, (30, 0));
    let pair = db
        .query(
            "SELECT user_id, transaction_type, amount, balance_after, related_entity_type, metadata \
             FROM credit_transactions WHERE related_entity_id = $1 ORDER BY amount",
            &[&gift_id],
        )
        .await
        .unwrap();
    assert_eq!(pair.len(), 2);
    let (u0, t0, a0, b0, r0, m0): (String, String, i32, i32, String, Value) = (
        pair[0].get(0),
        pair[0].get(1),
        pair[0].get(2),
        pair[0].get(3),
        pair[0].get(4),
        pair[0].get(5),
    );
    let (u1, t1, a1, b1, r1, m1): (String, String, i32, i32, String, Value) = (
        pair[1].get(0),
        pair[1].get(1),
        pair[1].get(2),
        pair[1].get(3),
        pair[1].get(4),
        pair[1].get(5),
    );
    assert_eq!(
        (u0.as_str(), t0.as_str(), a0, b0, r0.as_str()),
        (ann_id.as_str(), "gift_sent", -30, 70, "gift_transfer")
    );
    assert_eq!(
        (u1.as_str(), t1.as_str(), a1, b1, r1.as_str()),
        (bob_id.as_str(), "gift_received", 30, 30, "gift_transfer")
    );
    assert_eq!(
        m0,
        json!({"to_username": "Bob_Lee", "message": "For the dragon"})
    );
    assert_eq!(
        m1,
        json!({"from_username": "ann", "message": "For the dragon"})
    );

    let ann_balance = stack.get("/api/v1/credits", Some(&ann)).await;
    assert_eq!(ann_balance.body["total_gifted_sent"], 30);
    let bob_balance = stack.get("/api/v1/credits", Some(&bob)).await;
    assert_eq!(bob_balance.body["total_gifted_received"], 30);
    let bob_history = stack
        .get(
            "/api/v1/credits/transactions?transaction_type=gift_received",
            Some(&bob),
        )
        .await;
    assert_eq!(
        bob_history.body["items"][0]["related_entity_id"],
        gift_id.as_str()
    );

    // Both sides are logged with the request id; the recipient's row carries
    // none of the sender's network details.
    let logs = db
        .query(
            "SELECT user_id, activity_type, entity_type, ip_address IS NULL, session_id IS NOT NULL \
             FROM user_activity_logs WHERE entity_id = $1 ORDER BY activity_type DESC",
            &[&gift_id],
        )
        .await
        .unwrap();
    let logs: Vec<(String, String, String, bool, bool)> = logs
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(
        logs,
        [
            (
                ann_id.clone(),
                "gift_sent".to_string(),
                "gift_transfer".to_string(),
                false,
                true
            ),
            (
                bob_id.clone(),
                "gift_received".to_string(),
                "gift_transfer".to_string(),
                true,
                true
            ),
        ]
    );

    // Without a message.
    let plain = gift_once(&stack, &ann, json!({"to_username": "BOB_LEE", "amount": 1})).await;
    assert_eq!(plain.status, 201, "{}", plain.body);
    assert!(plain.body["message"].is_null());
    assert_invariants(&db).await;
    assert_eq!(wallet(&db, &bob_id).await, (31, 0));
}

#[tokio::test]
async fn gift_idempotency_replays_refuses_another_body_and_runs_concurrent_duplicates_once() {
    let stack = spawn_stack().await;
    let db = stack.sql().await;
    let ann = stack.user("ann@example.com", "ann").await;
    stack.user("bob@example.com", "bob").await;
    let (ann_id, bob_id) = (
        user_id(&db, "ann@example.com").await,
        user_id(&db, "bob@example.com").await,
    );
    fund(&db, &ann_id, 100).await;

    let key = new_key();
    let body = json!({"to_username": "bob", "amount": 10, "message": "hi"});
    let first = gift(&stack, &ann, &key, body.clone()).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let again = gift(&stack, &ann, &key, body.clone()).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.body, first.body, "the stored response");
    assert_eq!(again.headers["idempotent-replayed"], "true");
    // The same JSON value, keys reordered and spaced differently, is the same request.
    let reordered = stack
        .http
        .post(format!("{}/api/v1/credits/gifts", stack.base_url))
        .bearer_auth(&ann)
        .header("Idempotency-Key", &key)
        .header("content-type", "application/json")
        .body("{ \"message\": \"hi\",\n  \"amount\": 10, \"to_username\": \"bob\" }")
        .send()
        .await
        .unwrap();
    let reordered = testkit::read(reordered).await;
    assert_eq!(reordered.status, 201, "{}", reordered.body);
    assert_eq!(reordered.body, first.body);
    assert_eq!(wallet(&db, &ann_id).await, (90, 0));
    assert_eq!(wallet(&db, &bob_id).await, (10, 0));
    assert_invariants(&db).await;

    let before = credit_state(&db).await;
    let other = gift(
        &stack,
        &ann,
        &key,
        json!({"to_username": "bob", "amount": 11, "message": "hi"}),
    )
    .await;
    other.assert_problem(422);
    assert_eq!(other.body["errors"][0]["field"], "Idempotency-Key");
    post(
        &stack,
        "/api/v1/credits/daily-bonus",
        Some(&ann),
        Some(&key),
        None,
    )
    .await
    .assert_problem(422);
    assert_eq!(credit_state(&db).await, before);

    // Five copies of one request at once: one gift.
    let key = new_key();
    let replies = join_all((0..5).map(|_| {
        gift(
            &stack,
            &ann,
            &key,
            json!({"to_username": "bob", "amount": 7}),
        )
    }))
    .await;
    let gift_ids: HashSet<String> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, 201, "{}", r.body);
            r.body["gift_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(gift_ids.len(), 1);
    assert_eq!(wallet(&db, &ann_id).await, (83, 0));
    assert_eq!(wallet(&db, &bob_id).await, (17, 0));
    let pairs = count(
        &db,
        "SELECT count(DISTINCT related_entity_id) FROM credit_transactions WHERE related_entity_type = 'gift_transfer'",
        &[],
    )
    .await;
    assert_eq!(pairs, 2);
    assert_invariants(&db).await;

    // A refused gift leaves its key unused: the same request succeeds once affordable.
    let key = new_key();
    let big = json!({"to_username": "bob", "amount": 500});
    gift(&stack, &ann, &key, big.clone())
        .await
        .assert_problem(402);
    fund(&db, &ann_id, 500).await;
    let retried = gift(&stack, &ann, &key, big).await;
    assert_eq!(retried.status, 201, "{}", retried.body);
    assert_eq!(wallet(&db, &ann_id).await, (83, 0));
    assert_invariants(&db).await;
}

#[tokio::test]
async fn twenty_concurrent_gifts_against_a_balance_for_seven_succeed_exactly_seven_times() {
    let stack = spawn_stack().await;
    let db = stack.sql().await;
    let ann = stack.user("ann@example.com", "ann").await;
    stack.user("bob@example.com", "bob").await;
    let (ann_id, bob_id) = (
        user_id(&db, "ann@example.com").await,
        user_id(&db, "bob@example.com").await,
    );
    fund(&db, &ann_id, 70).await;

    let replies = join_all(
        (0..20).map(|_| gift_once(&stack, &ann, json!({"to_username": "bob", "amount": 10}))),
    )
    .await;
    let ok = replies.iter().filter(|r| r.status == 201).count();
    let short: Vec<&Reply> = replies.iter().filter(|r| r.status == 402).collect();
    assert_eq!(
        (ok, short.len()),
        (7, 13),
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for reply in short {
        reply.assert_problem(402);
        assert_eq!(reply.body["needed"], 10);
        assert_eq!(reply.body["available"], 0);
    }
    let mut after: Vec<i64> = replies
        .iter()
        .filter(|r| r.status == 201)
        .map(|r| r.body["balance_after"].as_i64().unwrap())
        .collect();
    after.sort_unstable();
    assert_eq!(after, [0, 10, 20, 30, 40, 50, 60]);
    assert_eq!(wallet(&db, &ann_id).await, (0, 0));
    assert_eq!(wallet(&db, &bob_id).await, (70, 0));
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM credit_transactions WHERE transaction_type LIKE 'gift%'",
            &[]
        )
        .await,
        14
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM idempotency_keys", &[]).await,
        7,
        "refused gifts keep no key"
    );
    assert_invariants(&db).await;
}

#[tokio::test]
async fn crossing_gifts_between_two_users_never_deadlock_and_add_up() {
    let stack = spawn_stack().await;
    let db = stack.sql().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let bob = stack.user("bob@example.com", "bob").await;
    let (ann_id, bob_id) = (
        user_id(&db, "ann@example.com").await,
        user_id(&db, "bob@example.com").await,
    );
    fund(&db, &ann_id, 300).await;
    fund(&db, &bob_id, 300).await;

    let to_bob =
        (0..30).map(|_| gift_once(&stack, &ann, json!({"to_username": "bob", "amount": 4})));
    let to_ann =
        (0..30).map(|_| gift_once(&stack, &bob, json!({"to_username": "ann", "amount": 6})));
    let mut requests: Vec<_> = Vec::new();
    for (a, b) in to_bob.zip(to_ann) {
        requests.push(futures::future::Either::Left(a));
        requests.push(futures::future::Either::Right(b));
    }
    // As many in flight as the stack has database connections: all of them
    // crossing on the two users' locks, none waiting for a connection (with
    // all 60 at once, the last ones waited past the pool's timeout on a busy
    // machine and were answered 503 "the database is busy").
    let connections = stack.stack.state.db.status().max_size;
    let replies: Vec<Reply> = futures::stream::iter(requests)
        .buffered(connections)
        .collect()
        .await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    assert_eq!(wallet(&db, &ann_id).await, (300 - 120 + 180, 0));
    assert_eq!(wallet(&db, &bob_id).await, (300 - 180 + 120, 0));
    let row = db
        .query_one(
            "SELECT count(*), coalesce(sum(amount), 0)::int8 FROM credit_transactions WHERE related_entity_type = 'gift_transfer'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (120, 0),
        "pairs cancel out"
    );
    assert_invariants(&db).await;
}

#[tokio::test]
async fn gift_recipients_must_be_someone_else_and_active() {
    let stack = spawn_stack().await;
    let db = stack.sql().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let ann_id = user_id(&db, "ann@example.com").await;
    for (email, name, status) in [
        ("sus@example.com", "sus", "suspended"),
        ("ban@example.com", "banned_one", "banned"),
        ("gone@example.com", "gone", "deleted"),
    ] {
        stack.user(email, name).await;
        db.execute(
            "UPDATE users SET account_status = $2 WHERE email = $1",
            &[&email, &status],
        )
        .await
        .unwrap();
    }
    fund(&db, &ann_id, 100).await;
    let before = credit_state(&db).await;

    let own = gift_once(&stack, &ann, json!({"to_username": "ANN", "amount": 5})).await;
    own.assert_problem(422);
    assert_eq!(own.body["errors"][0]["field"], "to_username");

    let mut details = HashSet::new();
    for name in ["sus", "banned_one", "gone", "nobody_here"] {
        let reply = gift_once(&stack, &ann, json!({"to_username": name, "amount": 5})).await;
        reply.assert_problem(404);
        details.insert(
            reply.body["detail"]
                .as_str()
                .unwrap()
                .replace(name, "<name>"),
        );
    }
    assert_eq!(
        details.len(),
        1,
        "inactive and unknown users look alike: {details:?}"
    );
    assert_eq!(credit_state(&db).await, before);
    assert_invariants(&db).await;

    // A suspended sender cannot send; a sender without a username neither.
    let carl = stack.user("carl@example.com", "carl").await;
    let carl_id = user_id(&db, "carl@example.com").await;
    fund(&db, &carl_id, 50).await;
    db.execute(
        "UPDATE users SET account_status = 'suspended' WHERE id = $1",
        &[&carl_id],
    )
    .await
    .unwrap();
    let before = credit_state(&db).await;
    gift_once(&stack, &carl, json!({"to_username": "ann", "amount": 5}))
        .await
        .assert_problem(403);
    let nameless = stack.sign_in("nameless@example.com").await;
    let nameless_id = user_id(&db, "nameless@example.com").await;
    fund(&db, &nameless_id, 50).await;
    let before_nameless = credit_state(&db).await;
    gift_once(
        &stack,
        &nameless,
        json!({"to_username": "ann", "amount": 5}),
    )
    .await
    .assert_problem(403);
    assert_eq!(credit_state(&db).await, before_nameless);
    assert_ne!(before, before_nameless);
    assert_invariants(&db).await;
}

#[tokio::test]
async fn gifts_respect_the_maximum_the_daily_cap_and_the_available_balance() {
    let stack = spawn_stack().await;
    let db = stack.sql().await;
    let ann = stack.user("ann@example.com", "ann").await;
    stack.user("bob@example.com", "bob").await;
    let (ann_id, bob_id) = (
        user_id(&db, "ann@example.com").await,
        user_id(&db, "bob@example.com").await,
    );
    fund(&db, &ann_id, 5000).await;
    let send = |amount: i64| {
        gift_once(
            &stack,
            &ann,
            json!({"to_username": "bob", "amount": amount}),
        )
    };

    // Defaults: at most 1000 per gift, 2000 per local day.
    let over = send(1001).await;
    over.assert_problem(422);
    assert_eq!(over.body["errors"][0]["field"], "amount");
    assert_eq!(send(1000).await.status, 201);
    assert_eq!(send(900).await.status, 201);
    assert_invariants(&db).await;
    let capped = send(200).await;
    capped.assert_problem(429);
    assert_eq!(
        (
            capped.body["daily_cap"].as_i64(),
            capped.body["sent_today"].as_i64(),
            capped.body["remaining_today"].as_i64()
        ),
        (Some(2000), Some(1900), Some(100))
    );
    let retry: i64 = capped.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=26 * 3600).contains(&retry),
        "until the local midnight: {retry}"
    );
    assert_eq!(send(100).await.status, 201);
    send(1).await.assert_problem(429);
    assert_eq!(wallet(&db, &ann_id).await, (3000, 0));
    assert_eq!(wallet(&db, &bob_id).await, (2000, 0));
    assert_invariants(&db).await;

    // Only the available balance can be given: held credits are not.
    let cat = stack.user("cat@example.com", "cat").await;
    let cat_id = user_id(&db, "cat@example.com").await;
    fund(&db, &cat_id, 50).await;
    hold(&db, &cat_id, 45).await;
    let short = gift_once(&stack, &cat, json!({"to_username": "bob", "amount": 10})).await;
    short.assert_problem(402);
    assert_eq!(short.body["type"], "/problems/insufficient-credits");
    assert_eq!(
        (
            short.body["needed"].as_i64(),
            short.body["available"].as_i64()
        ),
        (Some(10), Some(5))
    );
    assert_eq!(wallet(&db, &cat_id).await, (50, 45));
    assert_invariants(&db).await;
    let exact = gift_once(&stack, &cat, json!({"to_username": "bob", "amount": 5})).await;
    assert_eq!(exact.status, 201, "{}", exact.body);
    assert_eq!(wallet(&db, &cat_id).await, (45, 45));
    assert_invariants(&db).await;
}

#[tokio::test]
async fn the_gift_cap_counts_from_the_senders_local_midnight() {
    let stack = spawn_stack().await;
    let db = stack.sql().await;
    let token = stack.user("kenji@example.com", "kenji").await;
    set_timezone(&stack, &token, "Asia/Tokyo").await;
    stack.user("bob@example.com", "bob").await;
    let id = user_id(&db, "kenji@example.com").await;
    fund(&db, &id, 4000).await;
    let send = |amount: i64| {
        gift_once(
            &stack,
            &token,
            json!({"to_username": "bob", "amount": amount}),
        )
    };
    assert_eq!(send(1000).await.status, 201);
    assert_eq!(send(500).await.status, 201);
    assert_invariants(&db).await;

    // Move them around Tokyo's midnight, in posting order: the purchase and the
    // 1000 one second before it (yesterday in Tokyo), the 500 at midnight
    // exactly (today: the day includes its first instant).
    // Whatever the UTC hour, counting from UTC midnight would get one of the two
    // wrong.
    let entries: Vec<String> = db
        .query(
            "SELECT id FROM credit_transactions WHERE user_id = $1 ORDER BY created_at, id",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(entries.len(), 3);
    for (entry, offset) in entries.iter().zip([-180.0_f64, -1.0, 0.0]) {
        db.execute(
            "UPDATE credit_transactions SET created_at = \
               local_midnight(user_local_date('Asia/Tokyo'), 'Asia/Tokyo') + make_interval(secs => $2) \
             WHERE id = $1",
            &[entry, &offset],
        )
        .await
        .unwrap();
    }
    assert_invariants(&db).await;

    assert_eq!(send(1000).await.status, 201);
    let capped = send(600).await;
    capped.assert_problem(429);
    assert_eq!(capped.body["sent_today"], 1500);
    assert_eq!(capped.body["remaining_today"], 500);
    assert_eq!(send(500).await.status, 201);
    send(1).await.assert_problem(429);
    assert_eq!(wallet(&db, &id).await, (4000 - 3000, 0));
    assert_invariants(&db).await;
}

#[tokio::test]
async fn bad_gift_requests_are_refused_and_change_nothing() {
    let stack = spawn_stack().await;
    let db = stack.sql().await;
    let ann = stack.user("ann@example.com", "ann").await;
    stack.user("bob@example.com", "bob").await;
    let ann_id = user_id(&db, "ann@example.com").await;
    fund(&db, &ann_id, 100).await;
    let before = credit_state(&db).await;

    for (body, status) in [
        (json!({"amount": 5}), 422),
        (json!({"to_username": null, "amount": 5}), 422),
        (json!({"to_username": 42, "amount": 5}), 422),
        (json!({"to_username": "", "amount": 5}), 422),
        (json!({"to_username": "bob smith", "amount": 5}), 422),
        (json!({"to_username": "b".repeat(31), "amount": 5}), 422),
        (json!({"to_username": "bob\u{0}", "amount": 5}), 422),
        (json!({"to_username": "bob"}), 422),
        (json!({"to_username": "bob", "amount": null}), 422),
        (json!({"to_username": "bob", "amount": 0}), 422),
        (json!({"to_username": "bob", "amount": -10}), 422),
        (json!({"to_username": "bob", "amount": 2.5}), 422),
        (json!({"to_username": "bob", "amount": "5"}), 422),
        (json!({"to_username": "bob", "amount": 1e20}), 422),
        (
            json!({"to_username": "bob", "amount": 99999999999999999999u128 as f64}),
            422,
        ),
        (json!({"to_username": "bob", "amount": [5]}), 422),
        (
            json!({"to_username": "bob", "amount": 5, "message": "m".repeat(281)}),
            422,
        ),
        (
            json!({"to_username": "bob", "amount": 5, "message": "nul\u{0}byte"}),
            422,
        ),
        (
            json!({"to_username": "bob", "amount": 5, "message": {"text": "hi"}}),
            422,
        ),
        (
            json!({"to_username": "bob", "amount": 5, "currency": "USD"}),
            422,
        ),
        (
            json!({"to_username": "bob", "amount": 5, "from_username": "bob"}),
            422,
        ),
        (json!(["bob", 5]), 422),
        (json!("bob"), 422),
    ] {
        let reply = gift_once(&stack, &ann, body.clone()).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.body);
        reply.assert_problem(status);
    }

    let url = format!("{}/api/v1/credits/gifts", stack.base_url);
    let raw = |content_type: &'static str, text: &'static str, key: Option<String>| {
        let mut request = stack
            .http
            .post(&url)
            .bearer_auth(&ann)
            .header("content-type", content_type)
            .body(text);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        async move { testkit::read(request.send().await.unwrap()).await }
    };
    raw(
        "application/json",
        "{\"to_username\": \"bob\", \"amount\": 5",
        Some(new_key()),
    )
    .await
    .assert_problem(400);
    raw("text/plain", "bob 5", Some(new_key()))
        .await
        .assert_problem(415);
    raw(
        "application/json",
        "{\"to_username\": \"bob\", \"amount\": 5}",
        None,
    )
    .await
    .assert_problem(400);
    raw(
        "application/json",
        "{\"to_username\": \"bob\", \"amount\": 5}",
        Some("k".repeat(256)),
    )
    .await
    .assert_problem(400);
    raw(
        "application/json",
        "{\"to_username\": \"bob\", \"amount\": 5}",
        Some("two words".into()),
    )
    .await
    .assert_problem(400);

    let body = json!({"to_username": "bob", "amount": 5});
    post(
        &stack,
        "/api/v1/credits/gifts",
        None,
        Some(&new_key()),
        Some(body.clone()),
    )
    .await
    .assert_problem(401);
    post(
        &stack,
        "/api/v1/credits/gifts",
        Some("not.a.token"),
        Some(&new_key()),
        Some(body),
    )
    .await
    .assert_problem(401);
    stack
        .call(Method::GET, "/api/v1/credits/gifts", Some(&ann), None)
        .await
        .assert_problem(405);

    assert_eq!(credit_state(&db).await, before, "nothing changed");
    assert_invariants(&db).await;
}

#[tokio::test]
async fn oversized_raw_bodies_are_413_problems() {
    let stack = spawn_stack().await;
    let token = stack.sign_in("ann@example.com").await;
    let huge = "x".repeat(300 * 1024);
    for (path, bearer) in [
        ("/api/v1/credits/daily-bonus", Some(token.as_str())),
        ("/api/v1/credits/webhooks/stripe", None),
    ] {
        let mut request = stack
            .http
            .post(format!("{}{path}", stack.base_url))
            .body(huge.clone());
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        testkit::read(request.send().await.unwrap())
            .await
            .assert_problem(413);
    }
}
