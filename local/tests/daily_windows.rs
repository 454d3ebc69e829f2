//! Daily windows (issue #12, item 1) over real HTTP against real PostgreSQL:
//! changing `timezone` never restarts a daily counter. For each counter (free
//! generations, the subscription allowance, the daily bonus, the gift cap, an
//! endpoint's `daily_limit`) the caller hops to the zone whose midnight passed
//! most recently, then through every other zone, between uses; the window
//! still gives exactly one day's worth. Time is moved by moving the stored
//! end of the window with SQL (never by sleeping): the next window then
//! follows the zone of that moment. The scheduler's bulk reset and the lazy
//! reset open the same windows; a hold taken before a window ended and
//! released after gives back purchased credits only; and no sequence of zone
//! changes makes windows come more often than one a day plus a constant.

use chrono::{DateTime, NaiveDate, Utc};
use reqwest::Method;
use serde_json::{Value, json};
use shared::jobs::worker::Worker;
use testkit::a1111::StandIn;
use testkit::ledger::assert_invariants;
use testkit::{Reply, TestStack, spawn_stack};

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

/// Zones from UTC-12 to UTC+14 (whole hours, no daylight saving) and the
/// real ones with :30 and :45 offsets: some zone's midnight is always less
/// than an hour old.
fn zones() -> Vec<String> {
    let mut zones: Vec<String> = (-12..=14)
        .map(|offset: i32| match offset {
            0 => "Etc/GMT".to_string(),
            // Etc/GMT signs are inverted: Etc/GMT-9 is UTC+9.
            o if o > 0 => format!("Etc/GMT-{o}"),
            o => format!("Etc/GMT+{}", -o),
        })
        .collect();
    zones.extend(
        [
            "Asia/Kolkata",
            "Asia/Kathmandu",
            "Australia/Eucla",
            "Pacific/Marquesas",
            "America/St_Johns",
            "Pacific/Chatham",
            "Asia/Tokyo",
            "America/New_York",
        ]
        .map(String::from),
    );
    zones
}

/// Every zone, the one whose local midnight passed most recently first.
async fn zones_by_latest_midnight(db: &tokio_postgres::Client) -> Vec<String> {
    db.query(
        "SELECT z FROM unnest($1::text[]) z ORDER BY (now() AT TIME ZONE z)::time, z",
        &[&zones()],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// The zone furthest west. Starting there, some other zone is always on a
/// later date (the zones span 26 hours), which is what the attack needs.
const WEST: &str = "Etc/GMT+12";

/// Proves the hops below reach a later local date than the window's label:
/// under per-date counting they would have restarted the counters.
async fn assert_a_later_date_is_reachable(db: &tokio_postgres::Client, label: NaiveDate) {
    let latest: NaiveDate = db
        .query_one(
            "SELECT max(user_local_date(z)) FROM unnest($1::text[]) z",
            &[&zones()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        latest > label,
        "no zone is past {label}: the attack needs one"
    );
}

async fn user_id(db: &tokio_postgres::Client, email: &str) -> String {
    db.query_one("SELECT id FROM users WHERE email = $1", &[&email])
        .await
        .unwrap()
        .get(0)
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
    assert_eq!(reply.status, 200, "{zone}: {}", reply.body);
    assert_eq!(reply.body["timezone"], zone);
}

/// The stored window: (label, start, end).
async fn window(
    db: &tokio_postgres::Client,
    user: &str,
) -> (NaiveDate, DateTime<Utc>, DateTime<Utc>) {
    let row = db
        .query_one(
            "SELECT quota_day, last_reset_date, quota_resets_at FROM users WHERE id = $1",
            &[&user],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// Time passes: the stored end of the user's open window moves to this very
/// moment, as if its midnight had just come. Not earlier: whatever the test
/// did before (gifts, generations) happened in the window that ends, as it
/// would in real time; an end moved before them would put them in the next.
async fn end_window(db: &tokio_postgres::Client, user: &str) {
    let moved = db
        .execute(
            "UPDATE users SET quota_resets_at = now() \
             WHERE id = $1 AND quota_resets_at IS NOT NULL",
            &[&user],
        )
        .await
        .unwrap();
    assert_eq!(moved, 1, "the user has an open window");
}

/// After the stored end of the window labelled `previous` passed, the next
/// window follows `zone`: its label is the later of `previous + 1` and the
/// local date there, it ends at that label's midnight there, and it starts
/// where the previous one ended when the labels follow each other.
async fn assert_next_window_follows(
    db: &tokio_postgres::Client,
    user: &str,
    zone: &str,
    previous: (NaiveDate, DateTime<Utc>),
) {
    let row = db
        .query_one(
            "SELECT quota_day = greatest($2::date + 1, user_local_date($3)), \
                    quota_resets_at = local_midnight(quota_day + 1, $3), \
                    (quota_resets_at AT TIME ZONE $3)::time = '00:00', \
                    quota_resets_at > now(), \
                    quota_day <> $2::date + 1 OR last_reset_date = $4 \
             FROM users WHERE id = $1",
            &[&user, &previous.0, &zone, &previous.1],
        )
        .await
        .unwrap();
    let checks: Vec<bool> = (0..5).map(|i| row.get(i)).collect();
    assert_eq!(
        checks, [true; 5],
        "{zone}: label, end at its midnight, 00:00 there, in the future, contiguous"
    );
}

async fn credits(stack: &TestStack, token: &str) -> Value {
    let reply = stack.get("/api/v1/credits", Some(token)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

fn instant(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not an instant: {value}"))
        .parse()
        .unwrap()
}

async fn character(stack: &TestStack, token: &str) -> String {
    stack
        .character(
            token,
            json!({"name": "Aria", "prompt": "an elf archer at dawn", "style_type": "fantasy"}),
        )
        .await
}

async fn generate(stack: &TestStack, token: &str, character: &str) -> Reply {
    stack
        .call(
            Method::POST,
            &format!("/api/v1/characters/{character}/generate"),
            Some(token),
            Some(json!({})),
        )
        .await
}

/// A generation that must be accepted; returns how its hold was paid.
async fn generated(stack: &TestStack, token: &str, character: &str) -> Value {
    let reply = generate(stack, token, character).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    reply.body.clone()
}

fn paid_with(job: &Value) -> (bool, i64, i64) {
    let hold = &job["processing_metadata"]["credits"];
    (
        hold["free_generation"].as_bool().unwrap(),
        hold["allowance_credits"].as_i64().unwrap(),
        hold["reserved_credits"].as_i64().unwrap(),
    )
}

/// Runs every queued job through `worker`; all must be acknowledged.
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

async fn count(
    db: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> i64 {
    db.query_one(sql, params).await.unwrap().get(0)
}

async fn fund(db: &tokio_postgres::Client, user: &str, amount: i32) {
    shared::credits::ledger::post(
        db,
        user,
        shared::credits::ledger::Entry::new("purchase", amount, "test funding"),
    )
    .await
    .unwrap();
    assert_invariants(db).await;
}

async fn post(stack: &TestStack, path: &str, token: &str, key: Option<&str>, body: Value) -> Reply {
    let mut request = stack
        .http
        .post(format!("{}{path}", stack.base_url))
        .bearer_auth(token)
        .json(&body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    testkit::read(request.send().await.unwrap()).await
}

async fn claim_bonus(stack: &TestStack, token: &str) -> Reply {
    post(stack, "/api/v1/credits/daily-bonus", token, None, json!({})).await
}

async fn gift(stack: &TestStack, token: &str, amount: i64) -> Reply {
    let key = uuid::Uuid::new_v4().to_string();
    post(
        stack,
        "/api/v1/credits/gifts",
        token,
        Some(&key),
        json!({"to_username": "bob", "amount": amount}),
    )
    .await
}

// ------------------------------------------------------------------------------------------
// Each counter, hopping zones between uses
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn free_generations_give_three_a_window_however_often_the_zone_changes() {
    let stack = spawn_stack().await;
    let db = stack.sql().await;
    let server = StandIn::start().await;
    let worker = stack.worker_with(server.chain());
    let ann = stack.user("ann@example.com", "ann").await;
    let ann_id = user_id(&db, "ann@example.com").await;
    // Ann's first window opens in the zone furthest west.
    set_timezone(&stack, &ann, WEST).await;
    let aria = character(&stack, &ann).await;

    // FREE: three free generations, no allowance, no purchased credits.
    for _ in 0..3 {
        let job = generated(&stack, &ann, &aria).await;
        assert_eq!(paid_with(&job), (true, 0, 0));
        drain(&stack, &worker).await;
    }
    let (day, start, end) = window(&db, &ann_id).await;
    assert_a_later_date_is_reachable(&db, day).await;
    generate(&stack, &ann, &aria).await.assert_problem(402);

    // The attack: the zone whose midnight passed most recently, then every other.
    for zone in zones_by_latest_midnight(&db).await {
        set_timezone(&stack, &ann, &zone).await;
        generate(&stack, &ann, &aria).await.assert_problem(402);
        let balance = credits(&stack, &ann).await;
        assert_eq!(balance["free_generations_used"], 3, "{zone}");
        assert_eq!(instant(&balance["daily_resets_at"]), end, "{zone}");
        assert_eq!(balance["daily_reset_date"], day.to_string(), "{zone}");
    }
    assert_eq!(window(&db, &ann_id).await, (day, start, end));
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM credit_holds WHERE user_id = $1 AND free_generation",
            &[&ann_id]
        )
        .await,
        3,
        "one window's worth, whatever the zone hopping"
    );
    assert_invariants(&db).await;

    // The new zone applies from the next window: once the stored end has passed.
    let zone = zones_by_latest_midnight(&db).await.remove(0);
    set_timezone(&stack, &ann, &zone).await;
    end_window(&db, &ann_id).await;
    let (_, _, ended) = window(&db, &ann_id).await;
    let balance = credits(&stack, &ann).await;
    assert_eq!(balance["free_generations_used"], 0);
    assert_next_window_follows(&db, &ann_id, &zone, (day, ended)).await;
    assert_eq!(
        instant(&balance["daily_resets_at"]),
        window(&db, &ann_id).await.2
    );
    for _ in 0..3 {
        let job = generated(&stack, &ann, &aria).await;
        assert_eq!(paid_with(&job), (true, 0, 0));
        drain(&stack, &worker).await;
    }
    generate(&stack, &ann, &aria).await.assert_problem(402);
    assert_invariants(&db).await;
}

#[tokio::test]
async fn the_allowance_gives_one_window_of_credits_however_often_the_zone_changes() {
    let stack = spawn_stack().await;
    let db = stack.sql().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let ann_id = user_id(&db, "ann@example.com").await;
    // Ann's first window opens in the zone furthest west.
    set_timezone(&stack, &ann, WEST).await;
    // PREMIUM without free generations: a generation costs 8, the allowance is 20 a window.
    db.execute(
        "UPDATE users SET subscription_tier = 'PREMIUM', daily_quota = 0 WHERE id = $1",
        &[&ann_id],
    )
    .await
    .unwrap();
    db.execute(
        "UPDATE user_credits SET daily_allowance = 20 WHERE user_id = $1",
        &[&ann_id],
    )
    .await
    .unwrap();
    let aria = character(&stack, &ann).await;
    assert_eq!(
        paid_with(&generated(&stack, &ann, &aria).await),
        (false, 8, 0)
    );
    assert_eq!(
        paid_with(&generated(&stack, &ann, &aria).await),
        (false, 8, 0)
    );
    let short = generate(&stack, &ann, &aria).await;
    short.assert_problem(402);
    assert_eq!(
        short.body["available"], 4,
        "4 of the allowance, no purchased credits"
    );
    let (day, _, end) = window(&db, &ann_id).await;
    assert_a_later_date_is_reachable(&db, day).await;

    for zone in zones_by_latest_midnight(&db).await {
        set_timezone(&stack, &ann, &zone).await;
        generate(&stack, &ann, &aria).await.assert_problem(402);
        let balance = credits(&stack, &ann).await;
        assert_eq!(balance["daily_allowance_used"], 16, "{zone}");
        assert_eq!(instant(&balance["daily_resets_at"]), end, "{zone}");
    }
    // With purchased credits, the window's last 4 allowance credits, then none.
    fund(&db, &ann_id, 100).await;
    assert_eq!(
        paid_with(&generated(&stack, &ann, &aria).await),
        (false, 4, 4)
    );
    let zone = zones_by_latest_midnight(&db).await.remove(0);
    set_timezone(&stack, &ann, &zone).await;
    assert_eq!(
        paid_with(&generated(&stack, &ann, &aria).await),
        (false, 0, 8)
    );
    assert_eq!(
        count(
            &db,
            "SELECT sum(allowance_credits)::int8 FROM credit_holds WHERE user_id = $1",
            &[&ann_id]
        )
        .await,
        20,
        "one window's allowance, whatever the zone hopping"
    );
    assert_invariants(&db).await;

    // The next window, in the new zone, has a fresh allowance.
    end_window(&db, &ann_id).await;
    let (_, _, ended) = window(&db, &ann_id).await;
    let balance = credits(&stack, &ann).await;
    assert_eq!(
        (
            balance["daily_allowance_used"].as_i64(),
            balance["daily_allowance_left"].as_i64()
        ),
        (Some(0), Some(20))
    );
    assert_next_window_follows(&db, &ann_id, &zone, (day, ended)).await;
    // Four jobs queued is PREMIUM's limit: let them finish on the procedural fallback.
    drain(&stack, &stack.stack.worker).await;
    assert_eq!(
        paid_with(&generated(&stack, &ann, &aria).await),
        (false, 8, 0)
    );
    assert_invariants(&db).await;
}

#[tokio::test]
async fn the_daily_bonus_is_once_a_window_and_its_streak_counts_windows() {
    let stack = spawn_stack().await;
    let db = stack.sql().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let ann_id = user_id(&db, "ann@example.com").await;
    // Ann's first window opens in the zone furthest west.
    set_timezone(&stack, &ann, WEST).await;

    let first = claim_bonus(&stack, &ann).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.body["daily_login_streak"], 1);
    let (day, _, end) = window(&db, &ann_id).await;
    assert_a_later_date_is_reachable(&db, day).await;
    assert_eq!(first.body["bonus_date"], day.to_string());
    assert_eq!(instant(&first.body["next_available_at"]), end);

    for zone in zones_by_latest_midnight(&db).await {
        set_timezone(&stack, &ann, &zone).await;
        let again = claim_bonus(&stack, &ann).await;
        again.assert_problem(409);
        assert_eq!(instant(&again.body["next_available_at"]), end, "{zone}");
        let balance = credits(&stack, &ann).await;
        assert_eq!(balance["daily_bonus_available"], false, "{zone}");
        assert!(balance["daily_bonus_amount"].is_null());
    }
    assert_eq!(
        bonuses(&db, &ann_id).await,
        1,
        "one bonus a window, whatever the zone hopping"
    );
    assert_invariants(&db).await;

    // The next window, in the zone of the moment, is the next streak day. The zone is
    // the one whose midnight passed last among those not yet two dates past the first
    // window's label: from 10:00 to 12:00 UTC the zones east of UTC+12 are, and a window
    // labelled two days on is a broken streak, not the next day of it.
    let zone: String = db
        .query_one(
            "SELECT z FROM unnest($1::text[]) z WHERE user_local_date(z) <= $2::date + 1 \
             ORDER BY (now() AT TIME ZONE z)::time, z LIMIT 1",
            &[&zones(), &day],
        )
        .await
        .unwrap()
        .get(0);
    set_timezone(&stack, &ann, &zone).await;
    end_window(&db, &ann_id).await;
    let (_, _, ended) = window(&db, &ann_id).await;
    assert_eq!(credits(&stack, &ann).await["daily_bonus_available"], true);
    assert_next_window_follows(&db, &ann_id, &zone, (day, ended)).await;
    let second = claim_bonus(&stack, &ann).await;
    assert_eq!(second.status, 201, "{}", second.body);
    assert_eq!(second.body["daily_login_streak"], 2);
    let (day2, _, end2) = window(&db, &ann_id).await;
    assert_eq!(second.body["bonus_date"], day2.to_string());
    assert_eq!(instant(&second.body["next_available_at"]), end2);

    // Hopping again in the second window: still one claim; the third window grows the streak.
    for zone in zones_by_latest_midnight(&db).await.iter().take(5) {
        set_timezone(&stack, &ann, zone).await;
        claim_bonus(&stack, &ann).await.assert_problem(409);
    }
    end_window(&db, &ann_id).await;
    let third = claim_bonus(&stack, &ann).await;
    assert_eq!(third.status, 201, "{}", third.body);
    assert_eq!(third.body["daily_login_streak"], 3);

    // A window without a claim (opened by a look at the balance) ends the streak.
    end_window(&db, &ann_id).await;
    assert_eq!(credits(&stack, &ann).await["daily_bonus_available"], true);
    end_window(&db, &ann_id).await;
    let after_a_gap = claim_bonus(&stack, &ann).await;
    assert_eq!(after_a_gap.status, 201, "{}", after_a_gap.body);
    assert_eq!(after_a_gap.body["daily_login_streak"], 1);
    assert_eq!(bonuses(&db, &ann_id).await, 4);
    assert_invariants(&db).await;

    // Crossing the date line eastward at the turn of a window: from UTC-12 the
    // next window in UTC+14 skips a date, and is still the next streak day.
    let kiri = stack.user("kiri@example.com", "kiri").await;
    let kiri_id = user_id(&db, "kiri@example.com").await;
    set_timezone(&stack, &kiri, WEST).await;
    assert_eq!(claim_bonus(&stack, &kiri).await.status, 201);
    // That window (and its claim) become yesterday's in UTC-12, ending now.
    db.execute(
        "UPDATE users SET quota_day = quota_day - 1, quota_resets_at = now() - interval '1 second' \
         WHERE id = $1",
        &[&kiri_id],
    )
    .await
    .unwrap();
    db.execute(
        "UPDATE user_credits SET last_daily_bonus_date = last_daily_bonus_date - 1, \
           last_daily_bonus_window_end = (SELECT quota_resets_at FROM users WHERE id = $1) \
         WHERE user_id = $1",
        &[&kiri_id],
    )
    .await
    .unwrap();
    let (claimed_in, _, ended) = window(&db, &kiri_id).await;
    set_timezone(&stack, &kiri, "Etc/GMT-14").await;
    let balance = credits(&stack, &kiri).await;
    assert_eq!(
        (
            &balance["daily_bonus_available"],
            &balance["daily_bonus_amount"]
        ),
        (&json!(true), &json!(6)),
        "the streak's second day is announced"
    );
    let (label, start, _) = window(&db, &kiri_id).await;
    assert!(
        label - claimed_in >= chrono::Duration::days(2),
        "the label skipped a date"
    );
    assert_eq!(start, ended, "the window follows the claim's window");
    let next = claim_bonus(&stack, &kiri).await;
    assert_eq!(next.status, 201, "{}", next.body);
    assert_eq!(next.body["daily_login_streak"], 2);
    assert_eq!(next.body["bonus_date"], label.to_string());
    assert_invariants(&db).await;
}

async fn bonuses(db: &tokio_postgres::Client, user: &str) -> i64 {
    count(
        db,
        "SELECT count(*) FROM credit_transactions WHERE user_id = $1 AND transaction_type = 'bonus'",
        &[&user],
    )
    .await
}

#[tokio::test]
async fn the_gift_cap_gives_one_window_of_gifts_however_often_the_zone_changes() {
    let stack = spawn_stack().await;
    let db = stack.sql().await;
    let ann = stack.user("ann@example.com", "ann").await;
    stack.user("bob@example.com", "bob").await;
    let ann_id = user_id(&db, "ann@example.com").await;
    // Ann's first window opens in the zone furthest west.
    set_timezone(&stack, &ann, WEST).await;
    fund(&db, &ann_id, 10_000).await;

    // Defaults: 1000 per gift, 2000 per window.
    assert_eq!(gift(&stack, &ann, 1000).await.status, 201);
    assert_eq!(gift(&stack, &ann, 1000).await.status, 201);
    let (day, start, end) = window(&db, &ann_id).await;
    assert_a_later_date_is_reachable(&db, day).await;
    for zone in zones_by_latest_midnight(&db).await {
        set_timezone(&stack, &ann, &zone).await;
        let capped = gift(&stack, &ann, 1).await;
        capped.assert_problem(429);
        assert_eq!(
            (
                capped.body["sent_today"].as_i64(),
                capped.body["remaining_today"].as_i64()
            ),
            (Some(2000), Some(0)),
            "{zone}"
        );
        assert_eq!(instant(&capped.body["resets_at"]), end, "{zone}");
        let retry: i64 = capped.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (retry - (end - Utc::now()).num_seconds()).abs() <= 5,
            "{zone}: Retry-After {retry} is the time to the stored end"
        );
    }
    assert_eq!(window(&db, &ann_id).await, (day, start, end));
    assert_eq!(
        count(
            &db,
            "SELECT coalesce(sum(-amount), 0)::int8 FROM credit_transactions \
             WHERE user_id = $1 AND transaction_type = 'gift_sent'",
            &[&ann_id]
        )
        .await,
        2000,
        "one window's cap, whatever the zone hopping"
    );
    assert_invariants(&db).await;

    // The next window, in the new zone: a new cap, counted from where it started.
    let zone = zones_by_latest_midnight(&db).await.remove(0);
    set_timezone(&stack, &ann, &zone).await;
    end_window(&db, &ann_id).await;
    let (_, _, ended) = window(&db, &ann_id).await;
    assert_eq!(gift(&stack, &ann, 1000).await.status, 201);
    assert_next_window_follows(&db, &ann_id, &zone, (day, ended)).await;
    assert_eq!(gift(&stack, &ann, 1000).await.status, 201);
    let capped = gift(&stack, &ann, 1).await;
    capped.assert_problem(429);
    assert_eq!(capped.body["sent_today"], 2000);
    assert_eq!(
        instant(&capped.body["resets_at"]),
        window(&db, &ann_id).await.2
    );
    let balance = credits(&stack, &ann).await;
    assert_eq!(balance["current_balance"], 10_000 - 4000);
    assert_invariants(&db).await;
}

#[tokio::test]
async fn an_endpoint_daily_limit_gives_one_window_of_calls_however_often_the_zone_changes() {
    let stack = spawn_stack().await;
    let db = stack.sql().await;
    db.execute(
        "UPDATE api_credit_configs SET daily_limit = 2, rate_limit_per_minute = NULL WHERE id = 'cfg_generate'",
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
    let (ann, ann_id) = stack.buyer("ann@example.com", "ann", 1000).await;
    // Ann's first window opens in the zone furthest west.
    set_timezone(&stack, &ann, WEST).await;
    // PREMIUM runs four jobs at once, so the third call meets the daily limit, not that one.
    db.execute(
        "UPDATE users SET subscription_tier = 'PREMIUM' WHERE id = $1",
        &[&ann_id],
    )
    .await
    .unwrap();
    let aria = character(&stack, &ann).await;
    generated(&stack, &ann, &aria).await;
    generated(&stack, &ann, &aria).await;
    let (day, start, end) = window(&db, &ann_id).await;
    assert_a_later_date_is_reachable(&db, day).await;
    for zone in zones_by_latest_midnight(&db).await {
        set_timezone(&stack, &ann, &zone).await;
        let limited = generate(&stack, &ann, &aria).await;
        limited.assert_problem(429);
        assert!(
            limited.body["detail"].as_str().unwrap().contains("per day"),
            "{zone}: {}",
            limited.body
        );
        let retry: i64 = limited.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (retry - (end - Utc::now()).num_seconds()).abs() <= 5,
            "{zone}: Retry-After {retry} is the time to the stored end"
        );
        let pricing = stack.get("/api/v1/pricing", Some(&ann)).await;
        assert_eq!(pricing.status, 200);
        let generate_item = pricing.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == "cfg_generate")
            .unwrap()
            .clone();
        assert_eq!(generate_item["usage"]["day"]["used"], 2, "{zone}");
        assert_eq!(instant(&generate_item["usage"]["day"]["resets_at"]), end);
    }
    let rows = db
        .query(
            "SELECT window_start, window_end, request_count FROM rate_limit_windows \
             WHERE user_id = $1 AND window_kind = 'day'",
            &[&ann_id],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "one window, keyed by its start");
    assert_eq!(
        (
            rows[0].get::<_, DateTime<Utc>>(0),
            rows[0].get::<_, DateTime<Utc>>(1),
            rows[0].get::<_, i32>(2)
        ),
        (start, end, 2),
        "refused calls are not counted"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM generation_jobs WHERE user_id = $1",
            &[&ann_id]
        )
        .await,
        2
    );

    // The next window, in the new zone, counts in its own row. (The two jobs
    // finish first, so PREMIUM's four jobs at once never answer for the limit.)
    drain(&stack, &stack.stack.worker).await;
    let zone = zones_by_latest_midnight(&db).await.remove(0);
    set_timezone(&stack, &ann, &zone).await;
    end_window(&db, &ann_id).await;
    let (_, _, ended) = window(&db, &ann_id).await;
    generated(&stack, &ann, &aria).await;
    assert_next_window_follows(&db, &ann_id, &zone, (day, ended)).await;
    let (_, new_start, new_end) = window(&db, &ann_id).await;
    let counted: i32 = db
        .query_one(
            "SELECT request_count FROM rate_limit_windows \
             WHERE user_id = $1 AND window_kind = 'day' AND window_start = $2 AND window_end = $3",
            &[&ann_id, &new_start, &new_end],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(counted, 1);
    generated(&stack, &ann, &aria).await;
    let limited = generate(&stack, &ann, &aria).await;
    limited.assert_problem(429);
    assert!(
        limited.body["detail"].as_str().unwrap().contains("per day"),
        "{}",
        limited.body
    );
    assert_invariants(&db).await;
}

// ------------------------------------------------------------------------------------------
// Resets
// ------------------------------------------------------------------------------------------

/// Two users in the same state, one reset by the scheduler's `daily-reset`
/// task, the other lazily by a look at the balance, end up in the same state:
/// the same window (label, start, end) and the same counters, for windows that
/// ended a second or 30 hours ago, after moves west, east, and across the
/// whole span of zones.
#[tokio::test]
async fn the_schedulers_bulk_reset_and_the_lazy_reset_open_the_same_windows() {
    let stack = spawn_stack().await;
    let db = stack.sql().await;
    let scenarios: [(&str, &str, i32); 5] = [
        ("Etc/GMT", "Asia/Tokyo", 1),
        ("Asia/Tokyo", "America/New_York", 1),
        ("America/Los_Angeles", "Pacific/Kiritimati", 30 * 3600),
        ("Etc/GMT+12", "Etc/GMT-14", 1),
        ("Pacific/Kiritimati", "Etc/GMT+12", 1),
    ];
    let mut pairs = Vec::new();
    for (n, (from, to, ago)) in scenarios.iter().enumerate() {
        let mut ids = Vec::new();
        for side in ["bulk", "lazy"] {
            let email = format!("{side}{n}@example.com");
            let token = stack.user(&email, &format!("{side}_{n}")).await;
            set_timezone(&stack, &token, from).await;
            // The first look opens the first window, in `from`.
            credits(&stack, &token).await;
            let id = user_id(&db, &email).await;
            db.execute("UPDATE users SET daily_used = 2 WHERE id = $1", &[&id])
                .await
                .unwrap();
            db.execute(
                "UPDATE user_credits SET daily_allowance = 10, daily_used = 7 WHERE user_id = $1",
                &[&id],
            )
            .await
            .unwrap();
            set_timezone(&stack, &token, to).await;
            ids.push((id, token));
        }
        // The same window for both, ended `ago` seconds ago.
        let ended: DateTime<Utc> = db
            .query_one(
                "SELECT now() - make_interval(secs => $1)",
                &[&f64::from(*ago)],
            )
            .await
            .unwrap()
            .get(0);
        db.execute(
            "UPDATE users l SET (quota_day, last_reset_date, quota_resets_at) = \
               (SELECT b.quota_day, b.last_reset_date, b.quota_resets_at FROM users b WHERE b.id = $1) \
             WHERE l.id = $2",
            &[&ids[0].0, &ids[1].0],
        )
        .await
        .unwrap();
        db.execute(
            "UPDATE user_credits SET daily_reset_date = (SELECT quota_day FROM users WHERE id = $1) \
             WHERE user_id = $1",
            &[&ids[1].0],
        )
        .await
        .unwrap();
        let previous = window(&db, &ids[0].0).await.0;
        pairs.push((ids, ended, *to, previous));
    }
    // The bulk side's windows end; the scheduler task resets exactly those.
    for (ids, ended, _, _) in &pairs {
        db.execute(
            "UPDATE users SET quota_resets_at = $2 WHERE id = $1",
            &[&ids[0].0, ended],
        )
        .await
        .unwrap();
    }
    let report = shared::runtime::scheduler::run(
        "daily-reset",
        &stack.stack.state.db,
        None,
        &stack.stack.state.config,
    )
    .await
    .unwrap();
    assert_eq!(report.outcome["users_reset"], scenarios.len());
    // Then the lazy side's, and a look at the balance resets each.
    for (ids, ended, _, _) in &pairs {
        db.execute(
            "UPDATE users SET quota_resets_at = $2 WHERE id = $1",
            &[&ids[1].0, ended],
        )
        .await
        .unwrap();
        credits(&stack, &ids[1].1).await;
    }
    let state = |id: String| {
        let db = &db;
        async move {
            let row = db
                .query_one(
                    "SELECT to_jsonb(s) FROM (SELECT u.quota_day, u.last_reset_date, u.quota_resets_at, \
                       u.daily_used AS free_used, c.daily_used AS allowance_used, c.daily_reset_date \
                     FROM users u JOIN user_credits c ON c.user_id = u.id WHERE u.id = $1) s",
                    &[&id],
                )
                .await
                .unwrap();
            row.get::<_, Value>(0)
        }
    };
    for (n, (ids, ended, to, previous)) in pairs.iter().enumerate() {
        let bulk = state(ids[0].0.clone()).await;
        let lazy = state(ids[1].0.clone()).await;
        assert_eq!(bulk, lazy, "scenario {n}: {:?}", scenarios[n]);
        assert_eq!(
            (&bulk["free_used"], &bulk["allowance_used"]),
            (&json!(0), &json!(0)),
            "scenario {n}"
        );
        assert_eq!(bulk["daily_reset_date"], bulk["quota_day"], "scenario {n}");
        // Whichever way the reset came, the window follows the zone of the moment.
        assert_next_window_follows(&db, &ids[0].0, to, (*previous, *ended)).await;
    }
}

/// A hold keyed to the window it took from: released after that window
/// ended, it gives back its purchased credits but not the free generation or
/// the allowance (the new window's counters are not topped up by yesterday's
/// use); released within its window, it gives back everything.
#[tokio::test]
async fn a_hold_released_after_its_window_ended_gives_back_purchased_credits_only() {
    let stack = spawn_stack().await;
    let db = stack.sql().await;
    let (ann, ann_id) = stack.buyer("ann@example.com", "ann", 100).await;
    // PREMIUM (a generation costs 8): one free generation and 5 allowance credits a window.
    db.execute(
        "UPDATE users SET subscription_tier = 'PREMIUM', daily_quota = 1 WHERE id = $1",
        &[&ann_id],
    )
    .await
    .unwrap();
    db.execute(
        "UPDATE user_credits SET daily_allowance = 5 WHERE user_id = $1",
        &[&ann_id],
    )
    .await
    .unwrap();
    let aria = character(&stack, &ann).await;
    let old_free = generated(&stack, &ann, &aria).await;
    assert_eq!(paid_with(&old_free), (true, 0, 0));
    let old_paid = generated(&stack, &ann, &aria).await;
    assert_eq!(paid_with(&old_paid), (false, 5, 3));
    let (day, _, _) = window(&db, &ann_id).await;
    let held: i64 = count(
        &db,
        "SELECT count(*) FROM credit_holds WHERE user_id = $1 AND quota_day = $2 AND status = 'held'",
        &[&ann_id, &day],
    )
    .await;
    assert_eq!(held, 2, "both holds are keyed to the window's label");
    assert_invariants(&db).await;

    // The window ends (after a hop); the next one's free generation and allowance are used.
    let zone = zones_by_latest_midnight(&db).await.remove(0);
    set_timezone(&stack, &ann, &zone).await;
    end_window(&db, &ann_id).await;
    let new_free = generated(&stack, &ann, &aria).await;
    assert_eq!(paid_with(&new_free), (true, 0, 0));
    let new_paid = generated(&stack, &ann, &aria).await;
    assert_eq!(paid_with(&new_paid), (false, 5, 3));
    assert_ne!(window(&db, &ann_id).await.0, day);

    // Yesterday's holds released: purchased credits back, nothing else.
    for job in [&old_free, &old_paid] {
        let cancelled = stack
            .call(
                Method::POST,
                &format!("/api/v1/jobs/{}/cancel", job["id"].as_str().unwrap()),
                Some(&ann),
                None,
            )
            .await;
        assert_eq!(cancelled.status, 200, "{}", cancelled.body);
        assert_invariants(&db).await;
    }
    let balance = credits(&stack, &ann).await;
    assert_eq!(
        (
            balance["current_balance"].as_i64(),
            balance["reserved_balance"].as_i64(),
            balance["available"].as_i64()
        ),
        (Some(100), Some(3), Some(97)),
        "the old hold's 3 purchased credits came back"
    );
    assert_eq!(
        (
            balance["free_generations_used"].as_i64(),
            balance["daily_allowance_used"].as_i64()
        ),
        (Some(1), Some(5)),
        "the new window is not topped up by the old window's holds"
    );

    // This window's holds released: everything comes back.
    for job in [&new_free, &new_paid] {
        let cancelled = stack
            .call(
                Method::POST,
                &format!("/api/v1/jobs/{}/cancel", job["id"].as_str().unwrap()),
                Some(&ann),
                None,
            )
            .await;
        assert_eq!(cancelled.status, 200, "{}", cancelled.body);
        assert_invariants(&db).await;
    }
    let balance = credits(&stack, &ann).await;
    assert_eq!(
        (
            balance["available"].as_i64(),
            balance["reserved_balance"].as_i64(),
            balance["free_generations_used"].as_i64(),
            balance["daily_allowance_used"].as_i64()
        ),
        (Some(100), Some(0), Some(0), Some(0))
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM credit_transactions WHERE user_id = $1",
            &[&ann_id]
        )
        .await,
        1,
        "releases post nothing: only the purchase"
    );
}

// ------------------------------------------------------------------------------------------
// No zone strategy makes windows come more often than daily
// ------------------------------------------------------------------------------------------

/// The next window as the reset functions open it, at a chosen instant:
/// `daily_window_next(label, end, zone, at)`.
async fn next_window(
    db: &tokio_postgres::Client,
    current: (NaiveDate, DateTime<Utc>, DateTime<Utc>),
    zone: &str,
    at: DateTime<Utc>,
) -> (NaiveDate, DateTime<Utc>, DateTime<Utc>) {
    let row = db
        .query_one(
            "SELECT day, starts_at, ends_at FROM daily_window_next($1, $2, $3, $4)",
            &[&current.0, &current.2, &zone, &at],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// Simulates 60 windows from 2026-03-20 (daylight saving starts and ends
/// inside the zones' years) with the zone chosen at each window end by a
/// strategy: the zone whose midnight comes soonest (greedy), hops west by
/// an hour, and seeded random zones; also resets that come late. Whatever the
/// strategy, windows never end before they start, and any N days hold at
/// most N + 3 window starts (N for a user who keeps a zone).
#[tokio::test]
async fn no_sequence_of_zone_changes_makes_windows_come_more_often_than_daily() {
    let url = testkit::fresh_database().await;
    let db = testkit::connect(&url).await;
    let zones = zones();
    let origin: DateTime<Utc> = "2026-03-20T00:00:01Z".parse().unwrap();
    #[derive(Clone, Copy, Debug)]
    enum Strategy {
        Stay,
        Greedy,
        West,
        Random(u64),
    }
    let strategies = [
        Strategy::Stay,
        Strategy::Greedy,
        Strategy::West,
        Strategy::Random(1),
        Strategy::Random(2),
        Strategy::Random(3),
        Strategy::Random(4),
    ];
    for strategy in strategies {
        let mut state = match strategy {
            Strategy::Random(seed) => seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            _ => 1,
        };
        let mut random = move || {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let first: (NaiveDate, DateTime<Utc>, DateTime<Utc>) = {
            let row = db
                .query_one(
                    "SELECT day, starts_at, ends_at FROM daily_window_next(NULL, NULL, 'Etc/GMT', $1)",
                    &[&origin],
                )
                .await
                .unwrap();
            (row.get(0), row.get(1), row.get(2))
        };
        let mut windows = vec![first];
        let mut west = 0;
        for _ in 0..60 {
            let current = *windows.last().unwrap();
            // Most resets come at the end; now and then one comes hours late.
            let late = match strategy {
                Strategy::Random(_) if random() % 4 == 0 => {
                    chrono::Duration::minutes((random() % (36 * 60)) as i64)
                }
                _ => chrono::Duration::zero(),
            };
            let at = current.2 + late;
            let zone = match strategy {
                Strategy::Stay => "Etc/GMT".to_string(),
                Strategy::Greedy => {
                    let mut best: Option<(DateTime<Utc>, String)> = None;
                    for zone in &zones {
                        let next = next_window(&db, current, zone, at).await;
                        if best.as_ref().is_none_or(|(end, _)| next.2 < *end) {
                            best = Some((next.2, zone.clone()));
                        }
                    }
                    best.unwrap().1
                }
                Strategy::West => {
                    west = (west + 1) % 13;
                    if west == 0 {
                        "Etc/GMT".to_string()
                    } else {
                        format!("Etc/GMT+{west}")
                    }
                }
                Strategy::Random(_) => zones[(random() % zones.len() as u64) as usize].clone(),
            };
            let next = next_window(&db, current, &zone, at).await;
            assert!(next.0 > current.0, "{strategy:?}: labels grow");
            assert!(
                next.1 >= current.2 && next.1 <= at && next.2 > at,
                "{strategy:?}: {next:?} after {current:?} at {at} in {zone}"
            );
            windows.push(next);
        }
        for days in 1..=20_i64 {
            let most = windows
                .iter()
                .map(|(_, start, _)| {
                    windows
                        .iter()
                        .filter(|(_, s, _)| {
                            *s >= *start && *s < *start + chrono::Duration::days(days)
                        })
                        .count() as i64
                })
                .max()
                .unwrap();
            let bound = match strategy {
                Strategy::Stay => days,
                _ => days + 3,
            };
            assert!(
                most <= bound,
                "{strategy:?}: {most} windows start within {days} days"
            );
        }
    }
}
