//! The GDPR export's memory: the real `auth` function binary, under testkit's
//! Lambda Runtime API emulator, exports an account with ROWS activity rows
//! (and a ledger of ROWS / 10 entries) to S3 on moto; prints the document's
//! size, the time it took and the process's peak resident memory (VmHWM).
//!
//! `cargo run --release -p bench --bin export [-- ROWS]`
//!
//! The binary is `$EXPORT_BIN`, else `auth` in `$CARGO_TARGET_DIR/release`
//! (`cargo build --release -p auth` first). Prints figures; asserts nothing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use local::{LocalOptions, LocalStack};
use testkit::lambda::{RuntimeApi, http_reply, sample_event, with_token};

fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("EXPORT_BIN") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    target.join("release").join("auth")
}

fn rss_mb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rows: i64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(50_000);
    let database_url = testkit::fresh_database().await;
    let stack = LocalStack::start(LocalOptions {
        port: 0,
        database_url: Some(database_url.clone()),
        migration_url: None,
        data_dir: std::env::temp_dir()
            .join(format!("charplat-bench-export-{}", std::process::id())),
        signing_key: Some(testkit::signing_key()),
        background_tasks: false,
    })
    .await?;
    let token = stack
        .issuer
        .mint("ann@example.com", &[], Duration::from_secs(3600))?;
    let http = reqwest::Client::new();
    let status = http
        .post(format!("{}/api/v1/auth/session", stack.base_url))
        .bearer_auth(&token)
        .send()
        .await?
        .status();
    anyhow::ensure!(status.as_u16() == 201, "sign-in answered {status}");
    let client = testkit::connect(&database_url).await;
    let seeding = Instant::now();
    client
        .execute(
            "INSERT INTO user_activity_logs (user_id, activity_type, entity_type, entity_id, metadata, \
               ip_address, user_agent, session_id, created_at) \
             SELECT u.id, 'character_updated', 'character', gen_random_uuid()::text, \
                    jsonb_build_object('changed', jsonb_build_array('name', 'prompt'), 'n', i), \
                    '203.0.113.7', 'Mozilla/5.0 (bench)', gen_random_uuid()::text, \
                    now() - make_interval(secs => i) \
             FROM users u, generate_series(1, $1::int8) i",
            &[&rows],
        )
        .await?;
    let id: String = client.query_one("SELECT id FROM users", &[]).await?.get(0);
    for i in 0..rows / 10 {
        shared::credits::ledger::post(
            &client,
            &id,
            shared::credits::ledger::Entry::new("bonus", 1, format!("bench credit {i}")),
        )
        .await?;
    }
    println!(
        "seeded {rows} activity rows and {} ledger entries in {:.1?}",
        rows / 10,
        seeding.elapsed()
    );

    let bucket = testkit::moto::create_bucket("exports").await;
    let mut env = vec![
        ("DATABASE_URL", database_url.clone()),
        ("AUTH_ISSUER", stack.issuer.issuer().to_string()),
        ("AUTH_AUDIENCE", local::LOCAL_AUDIENCE.to_string()),
        ("LOG_FORMAT", "json".to_string()),
    ];
    env.extend(testkit::moto::function_env());
    env.push(("STORAGE_BUCKET", bucket));
    // Always stored: the large-account path.
    env.push(("EXPORT_INLINE_MAX_BYTES", "0".to_string()));
    let api = RuntimeApi::start().await;
    let child = api.spawn_function(&binary(), "auth", &env);
    // A first request loads the function (init, JWKS, pool) before measuring.
    let (status, _, _) = http_reply(
        api.invoke(&with_token(sample_event("auth-get-me.json"), &token))
            .await,
    );
    anyhow::ensure!(status == 200, "GET /me answered {status}");
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let before = rss_mb(pid, "VmHWM:").unwrap_or_default();
    let started = Instant::now();
    let (status, _, body) = http_reply(
        api.invoke(&with_token(sample_event("auth-export-me.json"), &token))
            .await,
    );
    let took = started.elapsed();
    anyhow::ensure!(status == 200, "the export answered {status}: {body}");
    let peak = rss_mb(pid, "VmHWM:").unwrap_or_default();
    let bytes = body["bytes"].as_u64().unwrap_or_default();
    println!(
        "export of {rows} activity rows: {:.1} MiB document in {took:.1?}; peak RSS {before:.1} MiB before, {peak:.1} MiB after ({:+.1} MiB)",
        bytes as f64 / (1024.0 * 1024.0),
        peak - before
    );
    drop(child);
    stack.stop().await?;
    Ok(())
}
