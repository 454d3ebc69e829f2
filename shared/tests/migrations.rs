//! The migrations against a real, empty PostgreSQL database: they create every
//! table, column and index of the seed design (read from
//! `docs/database-design.md` itself, not from a list copied into the test),
//! with the fixes the README's Data section lists, and a second run changes nothing.

use std::collections::BTreeSet;
use std::time::Duration;

use shared::kernel::config::{DatabaseConfig, SslMode};

struct SeedColumn {
    table: String,
    name: String,
    /// The seed's type, normalised to `format_type()` spelling.
    sql_type: String,
    not_null: bool,
}

struct Seed {
    tables: Vec<String>,
    columns: Vec<SeedColumn>,
    /// (table, index name)
    indexes: Vec<(String, String)>,
    /// Named CONSTRAINTs.
    constraints: Vec<(String, String)>,
}

const TYPE_STOP_WORDS: [&str; 7] = [
    "DEFAULT",
    "NOT",
    "PRIMARY",
    "REFERENCES",
    "UNIQUE",
    "CHECK",
    "--",
];

fn normalise_type(words: &[&str]) -> String {
    let raw = words
        .iter()
        .take_while(|w| !TYPE_STOP_WORDS.contains(&w.trim_end_matches(',')))
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
        .trim_end_matches(',')
        .to_lowercase();
    raw.replace("decimal", "numeric")
}

/// Reads the seed design's SQL: tables, columns, indexes and named constraints.
fn parse_seed(text: &str) -> Seed {
    let mut seed = Seed {
        tables: vec![],
        columns: vec![],
        indexes: vec![],
        constraints: vec![],
    };
    let mut current: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("CREATE TABLE ") {
            let name = rest.split_whitespace().next().unwrap().to_string();
            seed.tables.push(name.clone());
            current = Some(name);
            continue;
        }
        if trimmed.starts_with(");") {
            current = None;
            continue;
        }
        if trimmed.starts_with("CREATE INDEX") || trimmed.starts_with("CREATE UNIQUE INDEX") {
            let words: Vec<&str> = trimmed.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "INDEX").unwrap();
            let on = words.iter().position(|w| *w == "ON").unwrap();
            let table = words[on + 1].split('(').next().unwrap().to_string();
            seed.indexes.push((table, words[at + 1].to_string()));
            continue;
        }
        let Some(table) = &current else { continue };
        let words: Vec<&str> = trimmed.split_whitespace().collect();
        if words.len() >= 2 && words[0] == "CONSTRAINT" {
            seed.constraints.push((table.clone(), words[1].to_string()));
            continue;
        }
        let is_column = words.len() >= 2
            && words[0]
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && words[1]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_uppercase());
        if is_column {
            seed.columns.push(SeedColumn {
                table: table.clone(),
                name: words[0].to_string(),
                sql_type: normalise_type(&words[1..]),
                not_null: trimmed.contains("NOT NULL") || trimmed.contains("PRIMARY KEY"),
            });
        }
    }
    seed
}

fn seed() -> Seed {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/database-design.md");
    let text = std::fs::read_to_string(path).expect("docs/database-design.md");
    let seed = parse_seed(&text);
    // Guard the parser itself: the seed has twelve tables and ~200 columns.
    assert_eq!(seed.tables.len(), 12, "{:?}", seed.tables);
    assert!(
        seed.columns.len() > 180,
        "parsed only {} columns",
        seed.columns.len()
    );
    assert_eq!(seed.indexes.len(), 46, "the seed names 46 indexes");
    seed
}

async fn pool(url: &str) -> shared::ports::db::DbPool {
    shared::ports::db::create_pool(&DatabaseConfig {
        migration_url: None,
        url: url.to_string(),
        sslmode: SslMode::Disable,
        ssl_root_cert: None,
        pool_size: 2,
        connect_timeout: Duration::from_secs(10),
    })
    .unwrap()
}

/// Everything the schema consists of, as sorted text, to compare runs.
async fn catalog_snapshot(client: &tokio_postgres::Client) -> BTreeSet<String> {
    let mut snapshot = BTreeSet::new();
    for row in client
        .query(
            "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                    coalesce(pg_get_expr(d.adbin, d.adrelid), '') \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE n.nspname = 'public' AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p')",
            &[],
        )
        .await
        .unwrap()
    {
        let (t, c, ty, nn, d): (String, String, String, bool, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        snapshot.insert(format!("column {t}.{c} {ty} notnull={nn} default={d}"));
    }
    for row in client
        .query(
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'",
            &[],
        )
        .await
        .unwrap()
    {
        let (t, i, d): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        snapshot.insert(format!("index {t}.{i} {d}"));
    }
    for row in client
        .query(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint \
             WHERE connamespace = 'public'::regnamespace",
            &[],
        )
        .await
        .unwrap()
    {
        let (t, c, d): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        snapshot.insert(format!("constraint {t}.{c} {d}"));
    }
    snapshot
}

#[tokio::test]
async fn migrations_create_the_whole_seed_design_and_rerunning_changes_nothing() {
    let url = testkit::empty_database().await;
    let pool = pool(&url).await;
    let first = shared::ports::db::migrate(&pool).await.unwrap();
    assert_eq!(first.applied, shared::ports::db::embedded_migrations());
    let client = testkit::connect(&url).await;

    let seed = seed();
    for table in &seed.tables {
        let kind: Option<i8> = client
            .query_opt(
                "SELECT relkind::\"char\" FROM pg_class WHERE relname = $1 AND relnamespace = 'public'::regnamespace",
                &[table],
            )
            .await
            .unwrap()
            .map(|r| r.get(0));
        assert!(kind.is_some(), "table {table} is missing");
    }
    for column in &seed.columns {
        let row = client
            .query_opt(
                "SELECT format_type(a.atttypid, a.atttypmod), a.attnotnull FROM pg_attribute a \
                 WHERE a.attrelid = ('public.' || $1)::regclass AND a.attname = $2 AND NOT a.attisdropped",
                &[&column.table, &column.name],
            )
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("column {}.{} is missing", column.table, column.name));
        let (sql_type, not_null): (String, bool) = (row.get(0), row.get(1));
        assert_eq!(
            sql_type, column.sql_type,
            "type of {}.{}",
            column.table, column.name
        );
        if column.not_null {
            assert!(
                not_null,
                "{}.{} should be NOT NULL",
                column.table, column.name
            );
        }
    }
    for (table, index) in &seed.indexes {
        let found: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_indexes WHERE tablename = $1 AND indexname = $2)",
                &[table, index],
            )
            .await
            .unwrap()
            .get(0);
        assert!(found, "index {index} on {table} is missing");
    }
    for (table, constraint) in &seed.constraints {
        let found: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = ('public.' || $1)::regclass AND conname = $2)",
                &[table, constraint],
            )
            .await
            .unwrap()
            .get(0);
        assert!(found, "constraint {constraint} on {table} is missing");
    }

    // The fixes the README's Data section lists.
    let fk: String = client
        .query_one(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'characters_collection_id_fkey'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(fk.contains("REFERENCES collections(id)"), "{fk}");
    for partitioned in ["credit_transactions", "user_activity_logs"] {
        let kind: i8 = client
            .query_one(
                "SELECT relkind::\"char\" FROM pg_class WHERE relname = $1",
                &[&partitioned],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(kind as u8, b'p', "{partitioned} should be partitioned");
        // The current month and the next ones exist ahead of time, plus the default.
        for months_ahead in 0..=2 {
            let name: String = client
                .query_one(
                    "SELECT $1 || to_char(date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => $2), '\"_y\"YYYY\"m\"MM')",
                    &[&partitioned, &months_ahead],
                )
                .await
                .unwrap()
                .get(0);
            let attached: bool = client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhparent = $1::text::regclass AND inhrelid = $2::text::regclass)",
                    &[&partitioned, &name],
                )
                .await
                .unwrap()
                .get(0);
            assert!(attached, "partition {name} is missing");
        }
    }

    // Emails and usernames are unique regardless of case.
    client
        .execute(
            "INSERT INTO users (email, username) VALUES ('Ann@Example.com', 'Ann')",
            &[],
        )
        .await
        .unwrap();
    let same_email = client
        .execute("INSERT INTO users (email) VALUES ('ann@example.COM')", &[])
        .await
        .expect_err("case-insensitive email uniqueness");
    assert_eq!(
        same_email.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION),
        "{same_email:?}"
    );
    let same_username = client
        .execute(
            "INSERT INTO users (email, username) VALUES ('bob@example.com', 'ANN')",
            &[],
        )
        .await
        .expect_err("case-insensitive username uniqueness");
    assert_eq!(
        same_username.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION),
        "{same_username:?}"
    );
    client.execute("DELETE FROM users", &[]).await.unwrap();

    // Seed data.
    let packages: i64 = client
        .query_one(
            "SELECT count(*) FROM credit_packages WHERE is_available",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(packages >= 3, "default credit packages");
    let generate: i64 = client
        .query_one(
            "SELECT count(*) FROM api_credit_configs WHERE http_method = 'POST' \
             AND endpoint_pattern = '/api/v1/characters/:id/generate' AND is_enabled",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(generate, 1, "pricing row for the generation endpoint");

    // A second run applies nothing and changes nothing.
    let before = catalog_snapshot(&client).await;
    let second = shared::ports::db::migrate(&pool).await.unwrap();
    assert!(second.applied.is_empty(), "{:?}", second.applied);
    assert_eq!(before, catalog_snapshot(&client).await);
    let history: i64 = client
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        history as usize,
        shared::ports::db::embedded_migrations().len()
    );
}

#[tokio::test]
async fn concurrent_migrations_apply_each_migration_once() {
    let url = testkit::empty_database().await;
    let a = pool(&url).await;
    let b = pool(&url).await;
    let (ra, rb) = tokio::join!(
        shared::ports::db::migrate(&a),
        shared::ports::db::migrate(&b)
    );
    let mut applied = ra.unwrap().applied;
    applied.extend(rb.unwrap().applied);
    assert_eq!(applied, shared::ports::db::embedded_migrations());
}

#[tokio::test]
async fn partition_upkeep_moves_default_rows_and_drops_old_months() {
    let url = testkit::fresh_database().await;
    let client = testkit::connect(&url).await;
    let user_id: String = client
        .query_one(
            "INSERT INTO users (email) VALUES ('p@example.com') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // A row far in the future lands in the default partition, not lost...
    client
        .execute(
            "INSERT INTO user_activity_logs (user_id, activity_type, created_at) VALUES ($1, 'login', '2031-03-31 23:59:59.999+00')",
            &[&user_id],
        )
        .await
        .unwrap();
    let home: String = client
        .query_one(
            "SELECT tableoid::regclass::text FROM user_activity_logs",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(home, "user_activity_logs_default");
    // ...and moves into its month when that month's partition is created.
    let created: i32 = client
        .query_one(
            "SELECT ensure_monthly_partitions('user_activity_logs', '2031-03-01', 2)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(created, 2);
    let home: String = client
        .query_one(
            "SELECT tableoid::regclass::text FROM user_activity_logs",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(home, "user_activity_logs_y2031m03");
    // Month boundary: the first instant of April goes to April.
    client
        .execute(
            "INSERT INTO user_activity_logs (user_id, activity_type, created_at) VALUES ($1, 'login', '2031-04-01 00:00:00+00')",
            &[&user_id],
        )
        .await
        .unwrap();
    let april: i64 = client
        .query_one("SELECT count(*) FROM user_activity_logs_y2031m04", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(april, 1);
    // Retention drops whole partitions before the cutoff, never the default.
    let dropped: i32 = client
        .query_one(
            "SELECT drop_monthly_partitions_before('user_activity_logs', '2031-04-01')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(dropped >= 1);
    let remaining: Vec<String> = client
        .query(
            "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'user_activity_logs'::regclass",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(remaining.contains(&"user_activity_logs_default".to_string()));
    assert!(remaining.contains(&"user_activity_logs_y2031m04".to_string()));
    assert!(!remaining.contains(&"user_activity_logs_y2031m03".to_string()));
}

/// The migration files from version `from` up to (not including) `to`, in
/// order, applied by hand (not through refinery): the schema an existing
/// database had before a migration, then that migration on it.
async fn apply_files(client: &tokio_postgres::Client, from: u32, to: u32) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");
    let mut files: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name()?.to_str()?.to_string();
            let number: u32 = name.strip_prefix('V')?.split("__").next()?.parse().ok()?;
            Some((number, path))
        })
        .filter(|(number, _)| (from..to).contains(number))
        .collect();
    files.sort();
    for (_, path) in files {
        let sql = std::fs::read_to_string(&path).unwrap();
        client
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// V16 on a database that V15 was counting days in: the local date each user's
/// counters belonged to becomes their open daily window; a counter of an older
/// date than the other is reset, as V15's next read would have done; a day that
/// is over is due at once; the current per-endpoint day rows keep counting.
#[tokio::test]
async fn v16_turns_the_day_each_user_was_counting_into_their_open_window() {
    let url = testkit::empty_database().await;
    let client = testkit::connect(&url).await;
    apply_files(&client, 1, 16).await;
    let user = |email: &'static str, zone: &'static str, last_reset: &'static str| {
        let client = &client;
        async move {
            let sql = format!(
                "INSERT INTO users (email, timezone, daily_quota, daily_used, last_reset_date, updated_at) \
                 VALUES ($1, $2, 3, 2, {last_reset}, now() - interval '7 days') RETURNING id"
            );
            let id: String = client
                .query_one(&sql, &[&email, &zone])
                .await
                .unwrap()
                .get(0);
            id
        }
    };
    // Counting today in Tokyo, both counters.
    let today = user("tokyo@example.com", "Asia/Tokyo", "now()").await;
    // Last counted three days ago: over, due at once.
    let stale = user("stale@example.com", "UTC", "now() - interval '3 days'").await;
    // Free generations counted yesterday, the allowance today (only the allowance is today's).
    let mixed = user("mixed@example.com", "UTC", "now() - interval '1 day'").await;
    // No credit account.
    let bare = user("bare@example.com", "America/New_York", "now()").await;
    client
        .execute(
            "INSERT INTO user_credits (user_id, daily_allowance, daily_used, daily_reset_date) VALUES \
               ($1, 10, 5, user_local_date('Asia/Tokyo')), \
               ($2, 10, 5, user_local_date('UTC') - 3), \
               ($3, 10, 5, user_local_date('UTC'))",
            &[&today, &stale, &mixed],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO rate_limit_windows (user_id, config_id, window_kind, window_start, request_count) VALUES \
               ($1, 'cfg_generate', 'day', local_midnight(user_local_date('Asia/Tokyo'), 'Asia/Tokyo'), 4), \
               ($1, 'cfg_generate', 'minute', date_trunc('minute', now()), 2)",
            &[&today],
        )
        .await
        .unwrap();

    apply_files(&client, 16, 17).await;

    let row = |id: String| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT u.quota_day, u.last_reset_date, u.quota_resets_at, u.daily_used, \
                            c.daily_used, c.daily_reset_date, u.updated_at < now() - interval '6 days' \
                     FROM users u LEFT JOIN user_credits c ON c.user_id = u.id WHERE u.id = $1",
                    &[&id],
                )
                .await
                .unwrap()
        }
    };
    let date = |sql: &str| {
        let client = &client;
        let sql = sql.to_string();
        async move {
            client
                .query_one(&sql, &[])
                .await
                .unwrap()
                .get::<_, chrono::NaiveDate>(0)
        }
    };
    let instant = |sql: &str| {
        let client = &client;
        let sql = sql.to_string();
        async move {
            client
                .query_one(&sql, &[])
                .await
                .unwrap()
                .get::<_, chrono::DateTime<chrono::Utc>>(0)
        }
    };
    type Window = (
        chrono::NaiveDate,
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
    );
    let window = |r: &tokio_postgres::Row| -> Window { (r.get(0), r.get(1), r.get(2)) };

    let tokyo = row(today.clone()).await;
    assert_eq!(
        window(&tokyo),
        (
            date("SELECT user_local_date('Asia/Tokyo')").await,
            instant("SELECT local_midnight(user_local_date('Asia/Tokyo'), 'Asia/Tokyo')").await,
            instant("SELECT local_midnight(user_local_date('Asia/Tokyo') + 1, 'Asia/Tokyo')").await,
        ),
        "today in Tokyo is the open window"
    );
    assert_eq!(
        (
            tokyo.get::<_, i32>(3),
            tokyo.get::<_, Option<i32>>(4),
            tokyo.get::<_, bool>(6)
        ),
        (2, Some(5), true),
        "counters kept, updated_at untouched"
    );
    assert_eq!(
        tokyo.get::<_, Option<chrono::NaiveDate>>(5),
        Some(window(&tokyo).0)
    );
    // The day row V15 was counting is the open window's row, with its end.
    let rows = client
        .query(
            "SELECT window_kind, window_start, window_end, request_count FROM rate_limit_windows ORDER BY window_kind",
            &[],
        )
        .await
        .unwrap();
    let day = &rows[0];
    assert_eq!(day.get::<_, String>(0), "day");
    assert_eq!(
        (
            day.get::<_, chrono::DateTime<chrono::Utc>>(1),
            day.get::<_, chrono::DateTime<chrono::Utc>>(2)
        ),
        (window(&tokyo).1, window(&tokyo).2)
    );
    let minute = &rows[1];
    assert_eq!(
        minute.get::<_, chrono::DateTime<chrono::Utc>>(2)
            - minute.get::<_, chrono::DateTime<chrono::Utc>>(1),
        chrono::Duration::minutes(1)
    );

    let over = row(stale.clone()).await;
    assert_eq!(
        over.get::<_, chrono::NaiveDate>(0),
        date("SELECT user_local_date('UTC') - 3").await
    );
    assert!(over.get::<_, chrono::DateTime<chrono::Utc>>(2) < chrono::Utc::now());
    assert_eq!(
        (over.get::<_, i32>(3), over.get::<_, Option<i32>>(4)),
        (2, Some(5)),
        "kept until the first reset"
    );
    let reset: bool = client
        .query_one("SELECT credits_reset_daily($1)", &[&stale])
        .await
        .unwrap()
        .get(0);
    assert!(reset, "a day that is over is due at once");
    let after = row(stale).await;
    assert_eq!(
        (
            after.get::<_, chrono::NaiveDate>(0),
            after.get::<_, i32>(3),
            after.get::<_, Option<i32>>(4)
        ),
        (date("SELECT user_local_date('UTC')").await, 0, Some(0))
    );

    let both = row(mixed).await;
    assert_eq!(
        both.get::<_, chrono::NaiveDate>(0),
        date("SELECT user_local_date('UTC')").await
    );
    assert_eq!(
        (both.get::<_, i32>(3), both.get::<_, Option<i32>>(4)),
        (0, Some(5)),
        "yesterday's free generations reset, today's allowance kept"
    );

    let alone = row(bare).await;
    assert_eq!(
        window(&alone).0,
        date("SELECT user_local_date('America/New_York')").await
    );
    assert_eq!(alone.get::<_, Option<i32>>(4), None);
}

/// V17 disables the enabled pricing configs of routes that are not charged
/// (they were listed but never charged or limited) and says why in their
/// description; what it leaves enabled is chargeable by the code's one list.
#[tokio::test]
async fn v17_disables_the_prices_of_routes_nothing_charges_and_says_why() {
    let url = testkit::empty_database().await;
    let client = testkit::connect(&url).await;
    // Every migration before V17, as refinery would run them (in order, one script each).
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");
    let mut scripts: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path.file_name()?.to_str()?.to_string();
            let version = name.strip_prefix('V')?.split("__").next()?.parse().ok()?;
            Some((version, path))
        })
        .collect();
    scripts.sort();
    let v17 = scripts
        .iter()
        .find(|(v, _)| *v == 17)
        .map(|(_, p)| p.clone())
        .expect("V17 is present");
    for (_, path) in scripts.iter().filter(|(v, _)| *v < 17) {
        let sql = std::fs::read_to_string(path).unwrap();
        client
            .batch_execute(&format!("BEGIN; {sql}; COMMIT;"))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    client
        .batch_execute(
            "INSERT INTO api_credit_configs (id, endpoint_pattern, http_method, base_cost, is_enabled, description) VALUES \
               ('cfg_upscale', '/api/v1/characters/:id/upscale', 'POST', 5, true, 'Upscale an image.'), \
               ('cfg_get_generate', '/api/v1/characters/:id/generate', 'GET', 1, true, NULL), \
               ('cfg_off', '/api/v1/things', 'POST', 1, false, 'Never used.'), \
               ('cfg_renamed', '/api/v1/characters/:cid/generate', 'PUT', 1, true, NULL)",
        )
        .await
        .unwrap();
    let sql = std::fs::read_to_string(&v17).unwrap();
    client
        .batch_execute(&format!("BEGIN; {sql}; COMMIT;"))
        .await
        .unwrap();

    let rows = client
        .query(
            "SELECT id, http_method, endpoint_pattern, is_enabled, description FROM api_credit_configs ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let rows: Vec<(String, String, String, bool, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    let find = |id: &str| rows.iter().find(|r| r.0 == id).unwrap().clone();
    let generate = find("cfg_generate");
    assert!(generate.3, "the seed's generation price stays enabled");
    assert_eq!(
        find("cfg_upscale").4.as_deref(),
        Some(
            "Disabled by V17: no route charges POST /api/v1/characters/:id/upscale, so this price \
             was listed but never charged or limited. Was: Upscale an image."
        )
    );
    for id in ["cfg_upscale", "cfg_get_generate", "cfg_renamed"] {
        let row = find(id);
        assert!(!row.3, "{id} stays enabled");
        assert!(
            row.4.as_deref().unwrap().starts_with("Disabled by V17"),
            "{id}: {:?}",
            row.4
        );
    }
    // Already disabled: left as it was.
    assert_eq!(find("cfg_off").4.as_deref(), Some("Never used."));
    // The SQL and the code agree on what is chargeable.
    for (id, method, pattern, enabled, _) in &rows {
        assert_eq!(
            *enabled,
            shared::credits::pricing::chargeable_endpoint(method, pattern).is_some(),
            "{id}: {method} {pattern}"
        );
    }
}

/// The runtime role (V19) reaches every protected table by policy, owns
/// nothing, and later migrations keep it so: a new table with row-level
/// security but no `system_all` policy would hide every row from the worker
/// and the scheduler, and this fails first.
#[tokio::test]
async fn the_runtime_role_has_a_policy_on_every_protected_table_and_owns_nothing() {
    let url = testkit::fresh_database().await;
    let client = testkit::connect(&url).await;
    let unprotected: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relrowsecurity AND NOT EXISTS ( \
               SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = 'system_all' \
                 AND p.polroles @> ARRAY[(SELECT oid FROM pg_roles WHERE rolname = 'app_service')]) \
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(
        unprotected.is_empty(),
        "no system_all policy: {unprotected:?}"
    );
    let protected: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relrowsecurity",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(protected >= 10, "{protected} protected tables");
    let owned: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relowner IN \
             (SELECT oid FROM pg_roles WHERE rolname IN ('app_service', 'app_api'))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owned, 0);
    // Every table is reachable (the history table excepted), and none may be truncated.
    let unreachable: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relispartition = false \
               AND c.relname <> 'refinery_schema_history' \
               AND NOT has_table_privilege('app_service', c.oid, 'SELECT, INSERT') \
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(unreachable.is_empty(), "{unreachable:?}");
    let truncatable: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') \
               AND has_table_privilege('app_service', c.oid, 'TRUNCATE')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(truncatable, 0);
}

/// The domain's enums and the schema agree: each enum's texts are exactly the
/// values its column's CHECK constraint allows, so a row always parses and an
/// enum value is always storable.
#[tokio::test]
async fn the_domain_enums_match_the_check_constraints_of_their_columns() {
    let url = testkit::fresh_database().await;
    let client = testkit::connect(&url).await;
    let cases: [(&str, &str, &[&str]); 8] = [
        (
            "users",
            "subscription_tier",
            &shared::kernel::tier::Tier::NAMES,
        ),
        (
            "users",
            "account_status",
            &shared::users::AccountStatus::NAMES,
        ),
        (
            "users",
            "profile_visibility",
            &shared::users::ProfileVisibility::NAMES,
        ),
        (
            "users",
            "content_filter_level",
            &shared::users::ContentFilterLevel::NAMES,
        ),
        (
            "generation_jobs",
            "job_type",
            &shared::kernel::vocabulary::JobType::NAMES,
        ),
        ("generation_jobs", "status", &shared::jobs::JobStatus::NAMES),
        (
            "generation_jobs",
            "generation_provider",
            &shared::kernel::vocabulary::GenerationProvider::NAMES,
        ),
        (
            "character_images",
            "generation_provider",
            &shared::kernel::vocabulary::GenerationProvider::NAMES,
        ),
    ];
    for (table, column, names) in cases {
        // The constraint on exactly this column, as PostgreSQL prints it:
        // `CHECK ((col = ANY (ARRAY['a'::text, 'b'::text])))`.
        let definitions: Vec<String> = client
            .query(
                "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c \
                 JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey) \
                 WHERE c.conrelid = $1::text::regclass AND c.contype = 'c' AND a.attname = $2 \
                   AND cardinality(c.conkey) = 1",
                &[&table, &column],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(definitions.len(), 1, "{table}.{column}: {definitions:?}");
        let mut allowed: Vec<String> = definitions[0]
            .split('\'')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        allowed.sort();
        let mut ours: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        ours.sort();
        assert_eq!(ours, allowed, "{table}.{column}");
    }
}
