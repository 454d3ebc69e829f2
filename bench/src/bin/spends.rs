//! Ledger spends per second: through `ledger::post` (the code every spend
//! takes) versus pgbench running the same two statements directly, on one hot
//! account and spread across 1,000 accounts.
//!
//! `cargo run --release -p bench --bin spends [-- SECONDS CLIENTS]`
//!
//! Prints figures and the ratio; asserts nothing. Needs `pgbench` on PATH (or
//! under /usr/lib/postgresql/*/bin) and PostgreSQL as the tests do.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shared::credits::ledger::{self, Entry};
use shared::kernel::config::{DatabaseConfig, SslMode};

const ACCOUNTS: i32 = 1000;
const START_BALANCE: i32 = 1_000_000_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds: u64 = args.first().map(|a| a.parse()).transpose()?.unwrap_or(10);
    let clients: usize = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(8);

    let url = testkit::fresh_database().await;
    let setup = testkit::connect(&url).await;
    setup
        .batch_execute(&format!(
            "INSERT INTO users (id, email) SELECT 'bench-' || i, 'bench' || i || '@example.com' \
               FROM generate_series(1, {ACCOUNTS}) i;
             INSERT INTO user_credits (user_id, current_balance) SELECT 'bench-' || i, 0 FROM generate_series(1, {ACCOUNTS}) i;"
        ))
        .await?;
    // Opening balances go through the ledger too, so the invariants hold.
    for i in 1..=ACCOUNTS {
        ledger::post(
            &setup,
            &format!("bench-{i}"),
            Entry::new("purchase", START_BALANCE, "bench opening balance"),
        )
        .await?;
    }
    setup.batch_execute("ANALYZE").await?;

    let pool = shared::ports::db::create_pool(&DatabaseConfig {
        migration_url: None,
        url: url.clone(),
        sslmode: SslMode::Disable,
        ssl_root_cert: None,
        pool_size: clients,
        connect_timeout: Duration::from_secs(10),
    })?;

    println!("{clients} clients, {seconds} s per run");
    println!(
        "{:<28} {:>14} {:>14} {:>8}",
        "workload", "ledger::post/s", "pgbench tps", "ratio"
    );
    for (name, hot) in [("one hot account", true), ("1,000 accounts", false)] {
        let ours = run_ledger(&pool, clients, Duration::from_secs(seconds), hot).await?;
        let theirs = run_pgbench(&url, clients, seconds, hot)?;
        println!(
            "{name:<28} {ours:>14.0} {theirs:>14.0} {:>8.2}",
            ours / theirs
        );
    }
    testkit::ledger::assert_invariants(&setup).await;
    println!("ledger invariants hold after the run");
    Ok(())
}

async fn run_ledger(
    pool: &shared::ports::db::DbPool,
    clients: usize,
    duration: Duration,
    hot: bool,
) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..clients {
        let pool = pool.clone();
        let done = done.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut n: u64 = worker as u64;
            while !stop.load(Ordering::Relaxed) {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let account = if hot {
                    1
                } else {
                    1 + (n >> 33) % ACCOUNTS as u64
                };
                let mut conn = pool.get().await?;
                let tx = (**conn).transaction().await?;
                ledger::post(
                    &tx,
                    &format!("bench-{account}"),
                    Entry::new("usage", -1, "bench spend"),
                )
                .await?;
                tx.commit().await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// The statements `ledger::post` sends for a spend (the user lock, then the
/// balance update and its entry in one statement), as a pgbench script.
fn pgbench_script(hot: bool) -> String {
    let pick = if hot {
        "\\set n 1".to_string()
    } else {
        format!("\\set n random(1, {ACCOUNTS})")
    };
    format!(
        "{pick}
BEGIN;
SELECT 1 FROM users WHERE id = 'bench-' || :n FOR NO KEY UPDATE;
WITH balance AS (UPDATE user_credits SET current_balance = current_balance + -1, total_purchased = total_purchased + 0, total_gifted_received = total_gifted_received + 0, total_gifted_sent = total_gifted_sent + 0, total_spent = total_spent + 1, total_earned = total_earned + 0, referral_bonus = referral_bonus + 0, achievement_bonus = achievement_bonus + 0, updated_at = now() WHERE user_id = 'bench-' || :n AND current_balance + -1 >= reserved_balance RETURNING current_balance) INSERT INTO credit_transactions (user_id, transaction_type, amount, balance_after, related_entity_type, related_entity_id, description, metadata, api_endpoint, cost_calculation, status, processed_at, created_at) SELECT 'bench-' || :n, 'usage', -1, balance.current_balance, NULL, NULL, 'pgbench spend', '{{}}', NULL, NULL, 'completed', clock_timestamp(), clock_timestamp() FROM balance RETURNING id, balance_after;
COMMIT;
"
    )
}

fn pgbench_binary() -> String {
    if Command::new("pgbench").arg("--version").output().is_ok() {
        return "pgbench".into();
    }
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|dirs| {
            dirs.filter_map(|d| d.ok())
                .map(|d| d.path().join("bin/pgbench"))
                .find(|p| p.is_file())
        })
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "pgbench".into())
}

fn run_pgbench(url: &str, clients: usize, seconds: u64, hot: bool) -> anyhow::Result<f64> {
    let script = std::env::temp_dir().join(format!("charplat-spend-{}.sql", std::process::id()));
    std::fs::write(&script, pgbench_script(hot))?;
    let output = Command::new(pgbench_binary())
        .args([
            "-n",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-f",
        ])
        .arg(&script)
        .arg(url)
        .output()?;
    let _ = std::fs::remove_file(&script);
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "pgbench failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.trim_start_matches("tps = ").split_whitespace().next())
        .and_then(|tps| tps.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no tps in pgbench output: {stdout}"))
}
