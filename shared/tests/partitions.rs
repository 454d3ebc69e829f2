//! The scheduler's `partition-upkeep` task against real PostgreSQL: it creates
//! the coming months' partitions of both monthly-partitioned tables, drops
//! activity-log months past the configured retention (whole partitions, never
//! rows of kept months), never drops a ledger month, and rows at month
//! boundaries land in the right partition.

use chrono::{Datelike, Months, NaiveDate, Utc};
use shared::kernel::config::RetentionConfig;
use shared::runtime::scheduler::{PARTITIONS_AHEAD, partition_upkeep};

fn first_of_month(date: NaiveDate) -> NaiveDate {
    date.with_day(1).unwrap()
}

fn partition_name(table: &str, month: NaiveDate) -> String {
    format!("{table}_y{:04}m{:02}", month.year(), month.month())
}

async fn partitions(client: &tokio_postgres::Client, table: &str) -> Vec<String> {
    client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = $1::text::regclass ORDER BY 1",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn home_of(client: &tokio_postgres::Client, table: &str, id: &str) -> String {
    client
        .query_one(
            &format!("SELECT tableoid::regclass::text FROM {table} WHERE id = $1"),
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn upkeep_creates_coming_months_and_drops_expired_activity_months() {
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

    let this_month = first_of_month(Utc::now().date_naive());
    let expired = this_month - Months::new(9);
    let kept = this_month - Months::new(2);
    // Old months as they would exist had the platform been running then.
    for table in ["user_activity_logs", "credit_transactions"] {
        for month in [expired, kept] {
            client
                .query_one(
                    "SELECT ensure_monthly_partitions($1, $2, 1)",
                    &[&table, &month],
                )
                .await
                .unwrap();
        }
    }
    let old_row: String = client
        .query_one(
            "INSERT INTO user_activity_logs (user_id, activity_type, created_at) \
             VALUES ($1, 'login', $2::date + interval '3 days') RETURNING id",
            &[&user_id, &expired],
        )
        .await
        .unwrap()
        .get(0);
    let kept_row: String = client
        .query_one(
            "INSERT INTO user_activity_logs (user_id, activity_type, created_at) \
             VALUES ($1, 'login', $2::date + interval '3 days') RETURNING id",
            &[&user_id, &kept],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        home_of(&client, "user_activity_logs", &old_row).await,
        partition_name("user_activity_logs", expired)
    );

    let outcome = partition_upkeep(
        &client,
        &RetentionConfig {
            activity_log_days: 180,
        },
    )
    .await
    .unwrap();
    assert_eq!(outcome["activity_partitions_dropped"], 1, "{outcome}");

    for table in ["user_activity_logs", "credit_transactions"] {
        let present = partitions(&client, table).await;
        // This month and the next PARTITIONS_AHEAD exist, and the default stays.
        for ahead in 0..=PARTITIONS_AHEAD as u32 {
            let month = this_month + Months::new(ahead);
            assert!(
                present.contains(&partition_name(table, month)),
                "{table}: {month} missing from {present:?}"
            );
        }
        assert!(present.contains(&format!("{table}_default")));
        assert!(present.contains(&partition_name(table, kept)));
    }
    // The expired activity month is gone with its rows; the ledger keeps every month.
    assert!(
        !partitions(&client, "user_activity_logs")
            .await
            .contains(&partition_name("user_activity_logs", expired))
    );
    assert!(
        partitions(&client, "credit_transactions")
            .await
            .contains(&partition_name("credit_transactions", expired))
    );
    let left: i64 = client
        .query_one("SELECT count(*) FROM user_activity_logs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 1);
    assert_eq!(
        home_of(&client, "user_activity_logs", &kept_row).await,
        partition_name("user_activity_logs", kept)
    );

    // Running it again changes nothing.
    let again = partition_upkeep(
        &client,
        &RetentionConfig {
            activity_log_days: 180,
        },
    )
    .await
    .unwrap();
    assert_eq!(again["activity_partitions_dropped"], 0, "{again}");
    assert_eq!(again["created"]["user_activity_logs"], 0, "{again}");

    // A shorter retention drops the kept month too.
    let shorter = partition_upkeep(
        &client,
        &RetentionConfig {
            activity_log_days: 1,
        },
    )
    .await
    .unwrap();
    assert!(
        shorter["activity_partitions_dropped"].as_i64().unwrap() >= 1,
        "{shorter}"
    );
    assert!(
        !partitions(&client, "user_activity_logs")
            .await
            .contains(&partition_name("user_activity_logs", kept))
    );
}

#[tokio::test]
async fn rows_at_month_boundaries_land_in_their_own_month() {
    let url = testkit::fresh_database().await;
    let client = testkit::connect(&url).await;
    partition_upkeep(&client, &RetentionConfig::default())
        .await
        .unwrap();
    let user_id: String = client
        .query_one(
            "INSERT INTO users (email) VALUES ('b@example.com') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let next_month = first_of_month(Utc::now().date_naive()) + Months::new(1);
    let this_month = next_month - Months::new(1);
    // The last microsecond of this month (UTC) and the first instant of the next.
    let last: String = client
        .query_one(
            "INSERT INTO user_activity_logs (user_id, activity_type, created_at) \
             VALUES ($1, 'login', ($2::date::timestamp AT TIME ZONE 'UTC') - interval '1 microsecond') \
             RETURNING id",
            &[&user_id, &next_month],
        )
        .await
        .unwrap()
        .get(0);
    let first: String = client
        .query_one(
            "INSERT INTO user_activity_logs (user_id, activity_type, created_at) \
             VALUES ($1, 'login', $2::date::timestamp AT TIME ZONE 'UTC') RETURNING id",
            &[&user_id, &next_month],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        home_of(&client, "user_activity_logs", &last).await,
        partition_name("user_activity_logs", this_month)
    );
    assert_eq!(
        home_of(&client, "user_activity_logs", &first).await,
        partition_name("user_activity_logs", next_month)
    );
    // The same instant written with another session time zone is the same month.
    client
        .execute("SET TIME ZONE 'Asia/Tokyo'", &[])
        .await
        .unwrap();
    let tokyo: String = client
        .query_one(
            "INSERT INTO user_activity_logs (user_id, activity_type, created_at) \
             VALUES ($1, 'login', $2::date::timestamp AT TIME ZONE 'UTC') RETURNING id",
            &[&user_id, &next_month],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        home_of(&client, "user_activity_logs", &tokyo).await,
        partition_name("user_activity_logs", next_month)
    );
}
