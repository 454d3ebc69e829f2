//! Cold starts of the function binaries under a local Lambda Runtime API
//! emulator (testkit's): the time from spawning the process to its first
//! response, for a first request that needs no database (an anonymous call
//! the router answers 401) and for one that opens the first database
//! connection, plus the process's peak RSS.
//!
//! The yardstick is `hello-lambda` (bench/hello-lambda): a Rust hello world
//! with the same runtime crate and release profile, under the same emulator,
//! measured in the same run, so the ratio holds whatever the machine's load.
//!
//! `cargo build --release -p hello-lambda -p auth -p characters -p credits -p jobs -p scheduler -p worker`
//! `cargo run --release -p bench --bin coldstart [-- RUNS [FUNCTION...]]`
//!
//! Reads the binaries from `COLDSTART_BIN_DIR`, else the release target
//! directory (`CARGO_TARGET_DIR` or `target/`), so builds with other profiles
//! can be compared. Prints figures; asserts nothing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::lambda::{Outcome, RuntimeApi, sample_event};

/// A case's binary: its name up to a `+` (`auth+secrets` runs `auth`).
fn binary(name: &str) -> PathBuf {
    let name = name.split('+').next().unwrap_or(name);
    if let Some(dir) = std::env::var_os("COLDSTART_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    target.join("release").join(name)
}

/// Peak resident memory of a process, in MiB.
fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// A function, its environment, a first request that needs no database, and
/// one that opens the first database connection.
type Case<'a> = (&'a str, &'a Vec<(&'a str, String)>, Value, Option<Value>);

struct Sample {
    first_response: Duration,
    rss_mb: Option<f64>,
}

async fn cold_start(name: &str, env: &[(&str, String)], event: &Value) -> anyhow::Result<Sample> {
    let api = RuntimeApi::start().await;
    let started = Instant::now();
    let child = api.spawn_function(&binary(name), name.split('+').next().unwrap_or(name), env);
    let outcome = api.invoke(event).await;
    let first_response = started.elapsed();
    if let Outcome::Error(error) = &outcome {
        anyhow::bail!("{name}: {error}");
    }
    let rss_mb = child.id().and_then(peak_rss_mb);
    drop(child);
    Ok(Sample {
        first_response,
        rss_mb,
    })
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// `median (min)`: the minimum is the least disturbed by other work on the machine.
fn summary(values: Vec<Duration>) -> String {
    let min = values.iter().min().copied().unwrap_or_default();
    format!("{:.1?} ({:.1?})", median(values), min)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10);
    let only: Vec<String> = std::env::args().skip(2).collect();
    let stack = testkit::spawn_stack().await;
    let token = stack.sign_in("bench@example.com").await;
    let bucket = testkit::moto::create_bucket("coldstart").await;
    let mut base = testkit::lambda::http_function_env(&stack);
    base.push(("LOG_FORMAT", "json".into()));
    let mut with_aws = base.clone();
    with_aws.extend(testkit::moto::function_env());
    with_aws.push(("STORAGE_BUCKET", bucket));

    // No database and no work of its own: `GET /api/v1/me` without a token is
    // answered 401 by the router, so the time is the process's start-up.
    let mut anonymous = sample_event("auth-get-me.json");
    if let Some(headers) = anonymous["headers"].as_object_mut() {
        headers.remove("authorization");
    }
    let me = testkit::lambda::with_token(sample_event("auth-get-me.json"), &token);
    let unreadable = {
        let mut event = sample_event("sqs-generation-batch.json");
        event["Records"][0]["body"] = json!("not a job");
        event
    };
    let upkeep = sample_event("scheduler-idempotency-purge.json");
    // As template.yaml configures it: the database login read from Secrets
    // Manager (moto) at init instead of a DATABASE_URL.
    let mut with_secrets = testkit::lambda::http_function_env_with_secrets(&stack).await;
    with_secrets.push(("DATABASE_SSLMODE", "disable".into()));

    let cases: Vec<Case> = vec![
        ("hello-lambda", &base, anonymous.clone(), None),
        ("auth", &base, anonymous.clone(), Some(me.clone())),
        (
            "auth+secrets",
            &with_secrets,
            anonymous.clone(),
            Some(me.clone()),
        ),
        (
            "characters",
            &with_aws,
            anonymous.clone(),
            Some(sample_event("characters-gallery.json")),
        ),
        (
            "credits",
            &base,
            anonymous.clone(),
            Some(sample_event("credits-packages.json")),
        ),
        (
            "jobs",
            &with_aws,
            anonymous.clone(),
            Some(testkit::lambda::with_token(
                sample_event("jobs-list.json"),
                &token,
            )),
        ),
        ("worker", &with_aws, unreadable, None),
        ("scheduler", &base, upkeep, None),
    ];
    println!(
        "{runs} cold starts each; time from process spawn to the first response, median (min)"
    );
    println!(
        "{:<12} {:>22} {:>9} {:>22} {:>10} {:>10}",
        "function", "no database", "× hello", "first db query", "peak RSS", "binary"
    );
    let mut hello: Option<Duration> = None;
    for (name, env, without_db, with_db) in cases {
        if !only.is_empty() && name != "hello-lambda" && !only.iter().any(|o| o == name) {
            continue;
        }
        let mut plain = Vec::new();
        let mut rss = 0.0_f64;
        for _ in 0..runs {
            let sample = cold_start(name, env, &without_db).await?;
            plain.push(sample.first_response);
            rss = rss.max(sample.rss_mb.unwrap_or(0.0));
        }
        let with_db = match &with_db {
            Some(event) => {
                let mut samples = Vec::new();
                for _ in 0..runs {
                    let sample = cold_start(name, env, event).await?;
                    samples.push(sample.first_response);
                    rss = rss.max(sample.rss_mb.unwrap_or(0.0));
                }
                summary(samples)
            }
            None => "—".to_string(),
        };
        let size = std::fs::metadata(binary(name))
            .map(|m| m.len() as f64 / 1_048_576.0)
            .unwrap_or(0.0);
        let plain_median = median(plain.clone());
        let ratio = match hello {
            Some(h) if name != "hello-lambda" => {
                format!("{:.2}", plain_median.as_secs_f64() / h.as_secs_f64())
            }
            _ => "1.00".to_string(),
        };
        if name == "hello-lambda" {
            hello = Some(plain_median);
        }
        println!(
            "{name:<12} {:>22} {ratio:>9} {with_db:>22} {:>6.1} MiB {:>6.1} MiB",
            summary(plain),
            rss,
            size
        );
    }
    Ok(())
}
