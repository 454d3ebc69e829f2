//! The real `scheduler` binary under a Lambda Runtime API emulator, fed the
//! sample EventBridge events from `events/`.

use std::path::Path;

use serde_json::{Value, json};
use testkit::lambda::{Outcome, RuntimeApi, stop_and_read_stdout};

fn sample(task: &str) -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../events/scheduler-{task}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn report(outcome: Outcome) -> Value {
    match outcome {
        Outcome::Response(report) => report["outcome"].clone(),
        Outcome::Error(error) => panic!("the task failed: {error}"),
    }
}

async fn start(api: &RuntimeApi, database_url: &str) -> tokio::process::Child {
    api.spawn_function(
        Path::new(env!("CARGO_BIN_EXE_scheduler")),
        "scheduler",
        &[
            ("DATABASE_URL", database_url.to_string()),
            (
                "AUTH_ISSUER",
                "https://tenant.example.auth0.com/".to_string(),
            ),
            ("AUTH_AUDIENCE", "https://api.characters.app".to_string()),
        ],
    )
}

#[tokio::test]
async fn every_scheduled_task_runs_through_the_lambda_entry_point() {
    let url = testkit::fresh_database().await;
    let client = testkit::connect(&url).await;
    let api = RuntimeApi::start().await;
    let _function = start(&api, &url).await;

    // A worker died mid-job: the job is processing past its deadline, its credits held.
    let user: String = client
        .query_one(
            "INSERT INTO users (email, daily_quota) VALUES ('ann@example.com', 0) RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    client
        .execute("INSERT INTO user_credits (user_id) VALUES ($1)", &[&user])
        .await
        .unwrap();
    shared::credits::ledger::post(
        &client,
        &user,
        shared::credits::ledger::Entry::new("purchase", 50, "pack"),
    )
    .await
    .unwrap();
    let job: String = client
        .query_one(
            "INSERT INTO generation_jobs (user_id, job_type, input_parameters) VALUES ($1, 'character_generation', '{}') RETURNING id",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    shared::credits::holds::hold(
        &client,
        &user,
        &job,
        &shared::credits::pricing::Quote {
            config_id: "cfg_generate".into(),
            price: 20,
            fallback_price: 0,
            calculation: json!({}),
        },
    )
    .await
    .unwrap();
    client
        .execute(
            "UPDATE generation_jobs SET status = 'processing', started_at = now() - interval '20 minutes', \
             timeout_at = now() - interval '5 minutes' WHERE id = $1",
            &[&job],
        )
        .await
        .unwrap();
    assert_eq!(
        report(api.invoke(&sample("job-timeouts")).await)["timed_out"],
        1
    );
    assert_eq!(
        report(api.invoke(&sample("job-timeouts")).await)["timed_out"],
        0,
        "exactly once"
    );
    let status: String = client
        .query_one("SELECT status FROM generation_jobs WHERE id = $1", &[&job])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "timeout");
    let balance = shared::credits::balance(
        &client,
        &user,
        shared::kernel::config::DEFAULT_GIFT_HOLD_DAYS,
    )
    .await
    .unwrap();
    assert_eq!((balance.available, balance.reserved_balance), (50, 0));
    testkit::ledger::assert_invariants(&client).await;

    // Partition upkeep recreates a missing future month.
    let next: String = client
        .query_one(
            "SELECT 'credit_transactions' || to_char(date_trunc('month', now() AT TIME ZONE 'UTC') + interval '2 months', '\"_y\"YYYY\"m\"MM')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute(&format!("DROP TABLE {next}"))
        .await
        .unwrap();
    let upkeep = report(api.invoke(&sample("partition-upkeep")).await);
    assert!(
        upkeep["created"]["credit_transactions"].as_i64().unwrap() >= 1,
        "{upkeep}"
    );
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&next])
        .await
        .unwrap()
        .get(0);
    assert!(exists);

    // Daily reset (of the window the hold above opened, ended three days ago) and key purge.
    client
        .execute(
            "UPDATE users SET daily_used = 3, daily_quota = 3, quota_resets_at = now() - interval '3 days'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        report(api.invoke(&sample("daily-reset")).await)["users_reset"],
        1
    );
    client
        .execute(
            "INSERT INTO idempotency_keys (user_id, idempotency_key, request_method, request_path, request_hash, created_at) \
             VALUES ($1, 'old', 'POST', '/x', 'h', now() - interval '2 days')",
            &[&user],
        )
        .await
        .unwrap();
    // An erasure receipt past its expiry goes too; a live one stays.
    client
        .batch_execute(&format!(
            "INSERT INTO account_erasures (subject_digest, erased_at, expires_at) VALUES \
             ('{}', now() - interval '40 days', now() - interval '10 days'), \
             ('{}', now(), now() + interval '30 days')",
            "a".repeat(64),
            "b".repeat(64)
        ))
        .await
        .unwrap();
    let purge = report(api.invoke(&sample("idempotency-purge")).await);
    assert_eq!(purge["purged"], 1);
    assert_eq!(purge["erasure_receipts_purged"], 1);
    let left: Vec<String> = client
        .query("SELECT subject_digest FROM account_erasures", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, vec!["b".repeat(64)]);
    // Lambda has no queue until the SQS adapter is configured: the sweep says so.
    let sweep = report(api.invoke(&sample("outbox-sweep")).await);
    assert_eq!(sweep["resent"], 0);

    // An unknown task is an error the function reports, not a silent success.
    let mut unknown = sample("daily-reset");
    unknown["detail-type"] = json!("defragment-the-moon");
    match api.invoke(&unknown).await {
        Outcome::Error(error) => {
            assert!(error.to_string().contains("defragment-the-moon"), "{error}")
        }
        Outcome::Response(body) => panic!("an unknown task succeeded: {body}"),
    }
}

#[tokio::test]
async fn the_migrate_task_brings_an_empty_database_to_the_current_schema_once() {
    let url = testkit::empty_database().await;
    let api = RuntimeApi::start().await;
    let function = start(&api, &url).await;

    let migrating = api.invoke_traced(&sample("migrate")).await;
    let first = report(migrating.outcome);
    let applied: Vec<String> = first["applied"]
        .as_array()
        .expect("applied is a list")
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    assert_eq!(applied, shared::ports::db::embedded_migrations());
    assert_eq!(first["known"], applied.len());

    // The schema is usable: the tables the other tasks need exist.
    let client = testkit::connect(&url).await;
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_name IN ('users', 'credit_transactions', 'generation_jobs')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 3);

    // Invoking it again (a second deploy) applies nothing.
    let again = api.invoke_traced(&sample("migrate")).await;
    let second = report(again.outcome);
    assert_eq!(second["applied"], json!([]));

    // Each invocation's lines name it: the task span carries its Lambda
    // request id and trace header.
    let lines: Vec<Value> = stop_and_read_stdout(function)
        .await
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    // Every line from the first invocation on names one of the two, even the
    // server's NOTICEs, logged by the database connection's own task.
    let first = lines
        .iter()
        .position(|l| l["span"]["lambda_request_id"].is_string())
        .expect("a line names an invocation");
    for line in &lines[first..] {
        let named = (
            &line["span"]["lambda_request_id"],
            &line["span"]["xray_trace_id"],
        );
        assert!(
            [
                (&migrating.request_id, &migrating.trace_id),
                (&again.request_id, &again.trace_id)
            ]
            .iter()
            .any(|(id, trace)| named.0 == id.as_str() && named.1 == trace.as_str()),
            "a line names no invocation of this test: {line}"
        );
    }
    assert!(
        lines[first..].iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("NOTICE"))),
        "the migrations' NOTICEs were logged: {lines:#?}"
    );
    for (request_id, trace_id) in [
        (&migrating.request_id, &migrating.trace_id),
        (&again.request_id, &again.trace_id),
    ] {
        let done = lines
            .iter()
            .find(|l| {
                l["message"] == "scheduler task done"
                    && l["span"]["lambda_request_id"] == request_id.as_str()
            })
            .unwrap_or_else(|| panic!("no `scheduler task done` line: {lines:#?}"));
        assert_eq!(done["span"]["name"], "task");
        assert_eq!(done["span"]["task"], "migrate");
        assert_eq!(done["span"]["xray_trace_id"], trace_id.as_str());
    }
}

#[tokio::test]
async fn lapsed_subscriptions_fall_back_to_free_once() {
    let url = testkit::fresh_database().await;
    let client = testkit::connect(&url).await;
    let api = RuntimeApi::start().await;
    let _function = start(&api, &url).await;

    // Pro until yesterday, Pro until next month, and a free account.
    let mut ids = Vec::new();
    for (email, tier, end) in [
        ("lapsed@example.com", "PRO", "now() - interval '1 day'"),
        ("current@example.com", "PRO", "now() + interval '30 days'"),
        ("free@example.com", "FREE", "NULL"),
    ] {
        let id: String = client
            .query_one(
                &format!(
                    "INSERT INTO users (email, subscription_tier, subscription_end_date, daily_quota) \
                     VALUES ($1, $2, {end}, CASE WHEN $2 = 'PRO' THEN 25 ELSE 3 END) RETURNING id"
                ),
                &[&email, &tier],
            )
            .await
            .unwrap()
            .get(0);
        client
            .execute(
                "INSERT INTO user_credits (user_id, daily_allowance) \
                 VALUES ($1, CASE WHEN $2 = 'PRO' THEN 200 ELSE 0 END)",
                &[&id, &tier],
            )
            .await
            .unwrap();
        ids.push(id);
    }
    shared::credits::ledger::post(
        &client,
        &ids[0],
        shared::credits::ledger::Entry::new("purchase", 40, "pack"),
    )
    .await
    .unwrap();

    assert_eq!(
        report(api.invoke(&sample("subscription-expiry")).await)["expired"],
        1
    );
    assert_eq!(
        report(api.invoke(&sample("subscription-expiry")).await)["expired"],
        0,
        "once"
    );

    let state = |id: String| {
        let client = &client;
        async move {
            let row = client
                .query_one(
                    "SELECT u.subscription_tier, u.daily_quota, c.daily_allowance, c.current_balance \
                     FROM users u JOIN user_credits c ON c.user_id = u.id WHERE u.id = $1",
                    &[&id],
                )
                .await
                .unwrap();
            (
                row.get::<_, String>(0),
                row.get::<_, i32>(1),
                row.get::<_, i32>(2),
                row.get::<_, i32>(3),
            )
        }
    };
    // The lapsed one is FREE with FREE's entitlements; purchased credits are untouched.
    assert_eq!(state(ids[0].clone()).await, ("FREE".into(), 3, 0, 40));
    assert_eq!(state(ids[1].clone()).await, ("PRO".into(), 25, 200, 0));
    assert_eq!(state(ids[2].clone()).await, ("FREE".into(), 3, 0, 0));
    let logged: String = client
        .query_one(
            "SELECT metadata->>'from_tier' FROM user_activity_logs \
             WHERE user_id = $1 AND activity_type = 'subscription_expired'",
            &[&ids[0]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(logged, "PRO");
    testkit::ledger::assert_invariants(&client).await;
}

/// The deploy step as template.yaml configures it: the scheduler names two
/// logins by their Secrets Manager secrets (moto here), the schema owner and
/// the runtime login. `migrate` applies the schema as the owner and creates
/// the runtime login as a member of `app_service`, which then works on the
/// data but owns nothing: it cannot change the schema, turn row-level
/// security off, rewrite the ledger or read the migration history.
#[tokio::test]
async fn migrate_as_the_schema_owner_provisions_a_runtime_login_that_owns_nothing() {
    let url = testkit::empty_database().await;
    let owner = url::Url::parse(&url).expect("test database URLs are URLs");
    let runtime_user = testkit::moto::unique_name("charplat_rt").replace('-', "_");
    let runtime_password = uuid::Uuid::new_v4().to_string();
    let owner_secret = testkit::moto::create_secret(
        "owner",
        &json!({
            "username": owner.username(),
            // Trust authentication ignores it; a password-protected server needs it.
            "password": owner.password().unwrap_or("unused-with-trust-auth"),
        }),
    )
    .await;
    let runtime_secret = testkit::moto::create_secret(
        "runtime",
        &json!({"username": runtime_user, "password": runtime_password}),
    )
    .await;
    let api = RuntimeApi::start().await;
    let mut env = vec![
        ("DATABASE_SECRET_ARN", runtime_secret),
        ("DATABASE_MIGRATION_SECRET_ARN", owner_secret),
        ("DATABASE_HOST", owner.host_str().unwrap().to_string()),
        ("DATABASE_PORT", owner.port().unwrap_or(5432).to_string()),
        (
            "DATABASE_NAME",
            owner.path().trim_start_matches('/').to_string(),
        ),
        (
            "AUTH_ISSUER",
            "https://tenant.example.auth0.com/".to_string(),
        ),
        ("AUTH_AUDIENCE", "https://api.characters.app".to_string()),
    ];
    env.extend(testkit::moto::function_env());
    let _function = api.spawn_function(
        Path::new(env!("CARGO_BIN_EXE_scheduler")),
        "scheduler",
        &env,
    );

    let first = report(api.invoke(&sample("migrate")).await);
    assert_eq!(first["runtime_login"], runtime_user.as_str());
    assert_eq!(
        first["known"],
        shared::ports::db::embedded_migrations().len()
    );
    // Again (the next deploy): nothing to apply, the login is kept.
    let second = report(api.invoke(&sample("migrate")).await);
    assert_eq!(second["applied"], json!([]));
    assert_eq!(second["runtime_login"], runtime_user.as_str());

    let mut runtime_url = owner.clone();
    runtime_url.set_username(&runtime_user).unwrap();
    runtime_url.set_password(Some(&runtime_password)).unwrap();
    let runtime = testkit::connect(runtime_url.as_str()).await;
    let owned: i64 = runtime
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owned, 0);
    // The scheduled tasks run as this login, partition upkeep's DDL included
    // (through the owner's SECURITY DEFINER functions): the furthest monthly
    // partition ahead is dropped, and upkeep as the runtime login makes it again.
    let admin = testkit::connect(&url).await;
    let furthest: String = admin
        .query_one(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'user_activity_logs'::regclass \
               AND c.relname <> 'user_activity_logs_default' ORDER BY c.relname DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    admin
        .batch_execute(&format!("DROP TABLE \"{furthest}\""))
        .await
        .unwrap();
    let scheduled = shared::runtime::scheduler::run(
        "partition-upkeep",
        &shared::ports::db::create_pool(&shared::kernel::config::DatabaseConfig::for_url(
            runtime_url.as_str(),
        ))
        .unwrap(),
        None,
        &shared::kernel::config::Config::from_lookup(|name| match name {
            "DATABASE_URL" => Some(runtime_url.to_string()),
            "AUTH_ISSUER" => Some("https://tenant.example.auth0.com/".into()),
            "AUTH_AUDIENCE" => Some("https://api.characters.app".into()),
            _ => None,
        })
        .unwrap(),
    )
    .await
    .expect("partition upkeep runs as the runtime login");
    assert_eq!(
        scheduled.outcome["created"]["user_activity_logs"], 1,
        "{:?}",
        scheduled.outcome
    );
    for forbidden in [
        "DROP TABLE users",
        "ALTER TABLE characters DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE characters NO FORCE ROW LEVEL SECURITY",
        "TRUNCATE generation_jobs",
        "DELETE FROM credit_transactions",
        "UPDATE credit_transactions SET amount = 0",
        "UPDATE credit_transactions SET balance_after = 0",
        "SELECT * FROM refinery_schema_history",
        "CREATE POLICY everything ON characters USING (true)",
    ] {
        let error = runtime.batch_execute(forbidden).await.expect_err(forbidden);
        assert_eq!(
            error.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{forbidden}: {error}"
        );
    }
    // What it does need works: writing rows, rewriting a ledger description
    // (erasure), and switching to the API role for a caller's transaction.
    runtime
        .batch_execute(
            "INSERT INTO users (email) VALUES ('rt@example.com'); \
             UPDATE credit_transactions SET description = description; \
             BEGIN; SET LOCAL ROLE app_api; SELECT count(*) FROM characters; COMMIT;",
        )
        .await
        .expect("the runtime login's own work");
    drop(runtime);

    // The two logins must differ: a runtime login that owns the schema is refused.
    let same = shared::ports::db::migrate_and_provision(&shared::kernel::config::DatabaseConfig {
        migration_url: Some(url.clone()),
        ..shared::kernel::config::DatabaseConfig::for_url(url.clone())
    })
    .await
    .unwrap_err();
    assert!(
        same.to_string()
            .contains("the runtime login must not own the schema"),
        "{same}"
    );

    // Roles are cluster-wide: leave none behind.
    admin
        .batch_execute(&format!("DROP ROLE \"{runtime_user}\""))
        .await
        .unwrap();
}
