//! The ledger and holds against real PostgreSQL: buckets in order, settle and
//! release exactly once, exact balances under concurrency, daily resets at
//! the user's local midnight, and idempotency keys.

use futures::future::join_all;
use serde_json::json;
use shared::credits::holds;
use shared::credits::ledger::{self, Entry, LedgerError};
use shared::credits::pricing::Quote;
use shared::web::idempotency::{self, Claim};
use testkit::ledger::assert_invariants;

async fn user(client: &tokio_postgres::Client, email: &str) -> String {
    let id: String = client
        .query_one(
            "INSERT INTO users (email) VALUES ($1) RETURNING id",
            &[&email],
        )
        .await
        .unwrap()
        .get(0);
    client
        .execute("INSERT INTO user_credits (user_id) VALUES ($1)", &[&id])
        .await
        .unwrap();
    id
}

async fn job(client: &tokio_postgres::Client, user_id: &str) -> String {
    client
        .query_one(
            "INSERT INTO generation_jobs (user_id, job_type, input_parameters) VALUES ($1, 'character_generation', '{}') RETURNING id",
            &[&user_id],
        )
        .await
        .unwrap()
        .get(0)
}

fn quote(price: i32) -> Quote {
    Quote {
        config_id: "cfg_generate".into(),
        price,
        fallback_price: 0,
        calculation: json!({"price": price}),
    }
}

async fn pool(url: &str) -> shared::ports::db::DbPool {
    shared::ports::db::create_pool(&shared::kernel::config::DatabaseConfig {
        migration_url: None,
        url: url.to_string(),
        sslmode: shared::kernel::config::SslMode::Disable,
        ssl_root_cert: None,
        pool_size: 16,
        connect_timeout: std::time::Duration::from_secs(10),
    })
    .unwrap()
}

#[tokio::test]
async fn buckets_are_spent_in_order_and_settle_or_release_exactly_once() {
    let url = testkit::fresh_database().await;
    let mut client = testkit::connect(&url).await;
    let ann = user(&client, "ann@example.com").await;
    client
        .execute("UPDATE users SET daily_quota = 1 WHERE id = $1", &[&ann])
        .await
        .unwrap();
    client
        .execute(
            "UPDATE user_credits SET daily_allowance = 15 WHERE user_id = $1",
            &[&ann],
        )
        .await
        .unwrap();
    ledger::post(&client, &ann, Entry::new("purchase", 100, "pack"))
        .await
        .unwrap();

    // 1: the free daily generation covers everything.
    let j1 = job(&client, &ann).await;
    let h1 = holds::hold(&client, &ann, &j1, &quote(10)).await.unwrap();
    assert!(h1.free_generation);
    assert_eq!((h1.allowance_credits, h1.reserved_credits), (0, 0));
    // 2: the allowance (15) covers 10...
    let j2 = job(&client, &ann).await;
    let h2 = holds::hold(&client, &ann, &j2, &quote(10)).await.unwrap();
    assert_eq!(
        (
            h2.free_generation,
            h2.allowance_credits,
            h2.reserved_credits
        ),
        (false, 10, 0)
    );
    // 3: ...and 5 of the next 10; purchased credits pay the rest.
    let j3 = job(&client, &ann).await;
    let h3 = holds::hold(&client, &ann, &j3, &quote(10)).await.unwrap();
    assert_eq!((h3.allowance_credits, h3.reserved_credits), (5, 5));
    let j4 = job(&client, &ann).await;
    let h4 = holds::hold(&client, &ann, &j4, &quote(30)).await.unwrap();
    assert_eq!((h4.allowance_credits, h4.reserved_credits), (0, 30));
    assert_invariants(&client).await;
    let balance = shared::credits::balance(
        &client,
        &ann,
        shared::kernel::config::DEFAULT_GIFT_HOLD_DAYS,
    )
    .await
    .unwrap();
    assert_eq!(
        (
            balance.current_balance,
            balance.reserved_balance,
            balance.available
        ),
        (100, 35, 65)
    );

    // Settling posts one usage entry for the purchased part; twice is a no-op.
    let settled = holds::settle(&client, &j3).await.unwrap().unwrap();
    assert_eq!(settled.balance_after, 95);
    assert!(holds::settle(&client, &j3).await.unwrap().is_none());
    assert!(
        !holds::release(&client, &j3).await.unwrap(),
        "a settled hold cannot be released"
    );
    let usage = client
        .query_one(
            "SELECT amount, related_entity_type, related_entity_id, cost_calculation FROM credit_transactions \
             WHERE transaction_type = 'usage'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(usage.get::<_, i32>(0), -5);
    assert_eq!(usage.get::<_, String>(1), "generation_job");
    assert_eq!(usage.get::<_, String>(2), j3);
    let calculation: serde_json::Value = usage.get(3);
    assert_eq!(
        calculation["paid_with"],
        json!({"free_generation": false, "daily_allowance": 5, "purchased_credits": 5})
    );
    assert_invariants(&client).await;

    // Releasing gives everything back and posts nothing; twice is a no-op.
    let transactions_before: i64 = client
        .query_one("SELECT count(*) FROM credit_transactions", &[])
        .await
        .unwrap()
        .get(0);
    assert!(holds::release(&client, &j4).await.unwrap());
    assert!(!holds::release(&client, &j4).await.unwrap());
    assert!(holds::settle(&client, &j4).await.unwrap().is_none());
    assert!(holds::release(&client, &j1).await.unwrap());
    assert!(holds::release(&client, &j2).await.unwrap());
    let transactions_after: i64 = client
        .query_one("SELECT count(*) FROM credit_transactions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(transactions_before, transactions_after);
    let balance = shared::credits::balance(
        &client,
        &ann,
        shared::kernel::config::DEFAULT_GIFT_HOLD_DAYS,
    )
    .await
    .unwrap();
    assert_eq!(balance.available, 95);
    assert_eq!(
        balance.free_generations_left, 1,
        "the free generation came back"
    );
    assert_eq!(
        balance.daily_allowance_left, 10,
        "10 of the 15 came back; 5 were spent by the settled job"
    );
    assert_invariants(&client).await;

    // Short: 402 with what was needed and what is available; nothing changes.
    client
        .execute(
            "UPDATE users SET daily_used = daily_quota WHERE id = $1",
            &[&ann],
        )
        .await
        .unwrap();
    let j5 = job(&client, &ann).await;
    let tx = client.transaction().await.unwrap();
    match holds::hold(&tx, &ann, &j5, &quote(1000)).await {
        Err(LedgerError::Insufficient { needed, available }) => {
            assert_eq!((needed, available), (1000, 105))
        }
        other => panic!("expected insufficient credits, got {other:?}"),
    }
    tx.rollback().await.unwrap();
    assert_invariants(&client).await;
}

#[tokio::test]
async fn concurrent_spends_against_a_balance_for_exactly_37_succeed_exactly_37_times() {
    let url = testkit::fresh_database().await;
    let client = testkit::connect(&url).await;
    let ann = user(&client, "ann@example.com").await;
    client
        .execute("UPDATE users SET daily_quota = 0 WHERE id = $1", &[&ann])
        .await
        .unwrap();
    ledger::post(&client, &ann, Entry::new("purchase", 37 * 3, "pack"))
        .await
        .unwrap();
    let mut jobs = Vec::new();
    for _ in 0..100 {
        jobs.push(job(&client, &ann).await);
    }
    let pool = pool(&url).await;
    let outcomes = join_all(jobs.iter().map(|job_id| {
        let pool = pool.clone();
        let ann = ann.clone();
        async move {
            let mut conn = pool.get().await.unwrap();
            let tx = (**conn).transaction().await.unwrap();
            match holds::hold(&tx, &ann, job_id, &quote(3)).await {
                Ok(_) => {
                    holds::settle(&tx, job_id).await.unwrap().unwrap();
                    tx.commit().await.unwrap();
                    true
                }
                Err(LedgerError::Insufficient { .. }) => false,
                Err(e) => panic!("{e}"),
            }
        }
    }))
    .await;
    assert_eq!(outcomes.iter().filter(|ok| **ok).count(), 37);
    let balance = shared::credits::balance(
        &client,
        &ann,
        shared::kernel::config::DEFAULT_GIFT_HOLD_DAYS,
    )
    .await
    .unwrap();
    assert_eq!((balance.current_balance, balance.reserved_balance), (0, 0));
    let lowest: i32 = client
        .query_one("SELECT min(balance_after) FROM credit_transactions", &[])
        .await
        .unwrap()
        .get(0);
    assert!(lowest >= 0, "no balance ever went negative");
    assert_invariants(&client).await;
}

#[tokio::test]
async fn daily_counters_reset_at_the_users_local_midnight() {
    let url = testkit::fresh_database().await;
    let client = testkit::connect(&url).await;
    let ann = user(&client, "tokyo@example.com").await;
    let bob = user(&client, "utc@example.com").await;
    client
        .execute(
            "UPDATE users SET timezone = 'Asia/Tokyo' WHERE id = $1",
            &[&ann],
        )
        .await
        .unwrap();
    // The first look opens each user's first daily window, in their zone: it resets nothing,
    // and it ends at their next local midnight.
    for (id, zone) in [(&ann, "Asia/Tokyo"), (&bob, "UTC")] {
        assert!(!ledger::reset_daily(&client, id).await.unwrap());
        let row = client
            .query_one(
                "SELECT quota_day = user_local_date($2), \
                        quota_resets_at = local_midnight(user_local_date($2) + 1, $2), \
                        last_reset_date = local_midnight(user_local_date($2), $2) \
                 FROM users WHERE id = $1",
                &[id, &zone],
            )
            .await
            .unwrap();
        assert_eq!(
            (
                row.get::<_, bool>(0),
                row.get::<_, bool>(1),
                row.get::<_, bool>(2)
            ),
            (true, true, true),
            "{zone}: the window is the local day"
        );
    }
    // Both used everything in that window.
    for id in [&ann, &bob] {
        client
            .execute(
                "UPDATE users SET daily_used = daily_quota WHERE id = $1",
                &[id],
            )
            .await
            .unwrap();
        client
            .execute(
                "UPDATE user_credits SET daily_allowance = 10, daily_used = 10 WHERE user_id = $1",
                &[id],
            )
            .await
            .unwrap();
    }
    // Nothing is due yet for anyone.
    assert!(!ledger::reset_daily(&client, &ann).await.unwrap());
    assert!(!ledger::reset_daily(&client, &bob).await.unwrap());
    // The last Tokyo midnight (T) and the last UTC midnight (U) are 9 hours apart. Give both
    // users the window they would have opened one minute before the later of the two: exactly
    // the user whose midnight that was is due, whatever the time of day the test runs.
    let tokyo_midnight: chrono::DateTime<chrono::Utc> = client
        .query_one(
            "SELECT user_local_date('Asia/Tokyo')::timestamp AT TIME ZONE 'Asia/Tokyo'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let utc_midnight: chrono::DateTime<chrono::Utc> = client
        .query_one(
            "SELECT date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let stamp = tokyo_midnight.max(utc_midnight) - chrono::Duration::minutes(1);
    client
        .execute(
            "UPDATE users u SET (quota_day, last_reset_date, quota_resets_at) = \
               (SELECT w.day, w.starts_at, w.ends_at FROM daily_window_next(NULL, NULL, u.timezone, $1) w)",
            &[&stamp],
        )
        .await
        .unwrap();
    client
        .execute(
            "UPDATE user_credits c SET daily_reset_date = u.quota_day FROM users u WHERE u.id = c.user_id",
            &[],
        )
        .await
        .unwrap();
    let tokyo_is_later = tokyo_midnight > utc_midnight;
    assert_eq!(
        ledger::reset_daily(&client, &ann).await.unwrap(),
        tokyo_is_later,
        "Tokyo resets at Tokyo midnight"
    );
    assert_eq!(
        ledger::reset_daily(&client, &bob).await.unwrap(),
        !tokyo_is_later,
        "UTC resets at UTC midnight"
    );
    let ann_balance = shared::credits::balance(
        &client,
        &ann,
        shared::kernel::config::DEFAULT_GIFT_HOLD_DAYS,
    )
    .await
    .unwrap();
    let expected_left = if tokyo_is_later { 10 } else { 0 };
    assert_eq!(ann_balance.daily_allowance_left, expected_left);
    assert_eq!(ann_balance.free_generations_used == 0, tokyo_is_later);
    // The window that opened ends at the next Tokyo midnight, and follows the last one.
    if tokyo_is_later {
        assert_eq!(ann_balance.daily_window_started_at, tokyo_midnight);
        assert_eq!(
            ann_balance.daily_resets_at,
            tokyo_midnight + chrono::Duration::days(1)
        );
    }

    // The bulk reset catches every user whose window has ended, once.
    client
        .execute("UPDATE users SET daily_used = daily_quota, quota_resets_at = now() - interval '3 days'", &[])
        .await
        .unwrap();
    client
        .execute("UPDATE user_credits SET daily_used = 10", &[])
        .await
        .unwrap();
    assert_eq!(ledger::reset_daily_all(&client).await.unwrap(), 2);
    assert_eq!(ledger::reset_daily_all(&client).await.unwrap(), 0);
    let reset: bool = client
        .query_one(
            "SELECT bool_and(u.daily_used = 0 AND c.daily_used = 0 AND u.quota_resets_at > now() \
                             AND c.daily_reset_date = u.quota_day) \
             FROM users u JOIN user_credits c ON c.user_id = u.id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(reset);
}

#[tokio::test]
async fn idempotency_keys_replay_refuse_changed_requests_and_serialise_duplicates() {
    let url = testkit::fresh_database().await;
    let client = testkit::connect(&url).await;
    let ann = user(&client, "ann@example.com").await;
    let body = json!({"to_username": "bob", "amount": 5});
    let pool = pool(&url).await;
    // Ten concurrent requests with one key: exactly one does the work.
    let outcomes = join_all((0..10).map(|_| {
        let pool = pool.clone();
        let ann = ann.clone();
        let body = body.clone();
        async move {
            let mut conn = pool.get().await.unwrap();
            let tx = (**conn).transaction().await.unwrap();
            let claim =
                idempotency::claim(&tx, &ann, "key-1", "POST", "/api/v1/credits/gifts", &body)
                    .await
                    .unwrap();
            let fresh = matches!(claim, Claim::New);
            if fresh {
                ledger::post(&tx, &ann, Entry::new("bonus", 1, "effect"))
                    .await
                    .unwrap();
                idempotency::complete(
                    &tx,
                    &ann,
                    "key-1",
                    axum::http::StatusCode::CREATED,
                    &json!({"done": true}),
                )
                .await
                .unwrap();
            }
            tx.commit().await.unwrap();
            fresh
        }
    }))
    .await;
    assert_eq!(outcomes.iter().filter(|fresh| **fresh).count(), 1);
    let effects: i64 = client
        .query_one("SELECT count(*) FROM credit_transactions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(effects, 1);
    match idempotency::claim(
        &client,
        &ann,
        "key-1",
        "POST",
        "/api/v1/credits/gifts",
        &body,
    )
    .await
    .unwrap()
    {
        Claim::Replay { status, body } => {
            assert_eq!(status.as_u16(), 201);
            assert_eq!(body, json!({"done": true}));
        }
        Claim::New => panic!("the key was forgotten"),
    }
    let changed = json!({"to_username": "bob", "amount": 6});
    let err = idempotency::claim(
        &client,
        &ann,
        "key-1",
        "POST",
        "/api/v1/credits/gifts",
        &changed,
    )
    .await
    .unwrap_err();
    assert_eq!(err.status().as_u16(), 422);
    // After 24 hours the key may be reused.
    client
        .execute(
            "UPDATE idempotency_keys SET created_at = now() - interval '25 hours'",
            &[],
        )
        .await
        .unwrap();
    assert!(matches!(
        idempotency::claim(
            &client,
            &ann,
            "key-1",
            "POST",
            "/api/v1/credits/gifts",
            &changed
        )
        .await
        .unwrap(),
        Claim::New
    ));
}
