//! The real `worker` binary under a Lambda Runtime API emulator, fed the
//! sample SQS batch from `events/`, with its images going to an S3 bucket on
//! moto and its state in a fresh PostgreSQL database. The job is created the
//! way the jobs function creates it: `POST /api/v1/characters/{id}/generate`
//! on the local stack (whose background worker is off, so the job waits).

use std::path::Path;

use reqwest::Method;
use serde_json::{Value, json};
use testkit::lambda::{Outcome, RuntimeApi, stop_and_read_stdout};
use testkit::ledger::assert_invariants;
use testkit::{TestStack, moto, spawn_stack};

fn sample_batch(job_id: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events/sqs-generation-batch.json");
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(&text.replace("REPLACE_WITH_JOB_ID", job_id)).unwrap()
}

fn batch_response(outcome: Outcome) -> Value {
    match outcome {
        Outcome::Response(response) => response,
        Outcome::Error(error) => panic!("the worker reported an error: {error}"),
    }
}

fn failures(response: &Value) -> usize {
    response["batchItemFailures"]
        .as_array()
        .map_or(0, |failures| failures.len())
}

fn start_worker(
    api: &RuntimeApi,
    database_url: &str,
    bucket: Option<&str>,
    image_server: Option<&str>,
) -> tokio::process::Child {
    let mut env = vec![
        ("DATABASE_URL", database_url.to_string()),
        (
            "AUTH_ISSUER",
            "https://tenant.example.auth0.com/".to_string(),
        ),
        ("AUTH_AUDIENCE", "https://api.characters.app".to_string()),
        ("LOG_FORMAT", "json".to_string()),
    ];
    env.extend(moto::function_env());
    if let Some(bucket) = bucket {
        env.push(("STORAGE_BUCKET", bucket.to_string()));
    }
    if let Some(url) = image_server {
        env.push(("GENERATOR_PRIMARY_URL", url.to_string()));
    }
    api.spawn_function(Path::new(env!("CARGO_BIN_EXE_worker")), "worker", &env)
}

/// A user with 100 purchased credits and no free generations, a character,
/// and a queued character_generation job for it. Returns (user, job, quoted price).
async fn queued_job(stack: &TestStack) -> (String, String, i64) {
    let token = stack.user("ann@example.com", "ann").await;
    let client = stack.sql().await;
    client
        .execute("UPDATE users SET daily_quota = 0", &[])
        .await
        .unwrap();
    let user: String = client
        .query_one("SELECT id FROM users", &[])
        .await
        .unwrap()
        .get(0);
    shared::credits::ledger::post(
        &client,
        &user,
        shared::credits::ledger::Entry::new("purchase", 100, "pack"),
    )
    .await
    .unwrap();
    let character = stack
        .call(
            Method::POST,
            "/api/v1/characters",
            Some(&token),
            Some(json!({"name": "Aria", "prompt": "an elf archer at dawn", "style_type": "fantasy", "generation_seed": 7})),
        )
        .await;
    assert_eq!(character.status.as_u16(), 201, "{}", character.body);
    let character = character.body["id"].as_str().unwrap().to_string();
    let job = stack
        .call(
            Method::POST,
            &format!("/api/v1/characters/{character}/generate"),
            Some(&token),
            Some(json!({"job_type": "character_generation", "width": 256, "height": 256, "steps": 10})),
        )
        .await;
    assert_eq!(job.status.as_u16(), 202, "{}", job.body);
    (
        user,
        job.body["id"].as_str().unwrap().to_string(),
        job.body["cost_credits"].as_i64().unwrap(),
    )
}

async fn usage_amounts(client: &tokio_postgres::Client) -> Vec<i32> {
    client
        .query(
            "SELECT amount FROM credit_transactions WHERE transaction_type = 'usage'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test]
async fn the_worker_binary_completes_a_job_from_the_sample_sqs_batch() {
    let stack = spawn_stack().await;
    let bucket = moto::create_bucket("worker-images").await;
    let api = RuntimeApi::start().await;
    // The image server the function is configured with: a stand-in A1111.
    let server = testkit::a1111::StandIn::start().await;
    let worker = start_worker(&api, &stack.database_url, Some(&bucket), Some(&server.url));
    let (user, job, quoted) = queued_job(&stack).await;
    let client = stack.sql().await;

    let completing = api.invoke_traced(&sample_batch(&job)).await;
    let response = batch_response(completing.outcome);
    assert_eq!(failures(&response), 0, "{response}");

    let row = client
        .query_one(
            "SELECT j.status, c.primary_image_url, c.thumbnail_url, c.generation_status \
             FROM generation_jobs j JOIN characters c ON c.id = j.character_id WHERE j.id = $1",
            &[&job],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "completed");
    assert_eq!(
        row.get::<_, Option<String>>(3).as_deref(),
        Some("completed")
    );
    let image_key: String = row.get(1);
    let thumbnail_key: String = row.get(2);
    assert!(
        image_key.starts_with(&format!("users/{user}/characters/")),
        "{image_key}"
    );

    // The image and its thumbnail are in the bucket, as PNGs.
    let s3 = moto::s3_client().await;
    for key in [&image_key, &thumbnail_key] {
        let object = s3
            .get_object()
            .bucket(&bucket)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{key} not in the bucket: {e:?}"));
        assert_eq!(object.content_type(), Some("image/png"), "{key}");
        let bytes = object.body.collect().await.unwrap().into_bytes();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{key}");
    }

    // Exactly the quoted credits, in one usage entry; nothing held.
    assert_eq!(usage_amounts(&client).await, vec![-(quoted as i32)]);
    let balance = shared::credits::balance(
        &client,
        &user,
        shared::kernel::config::DEFAULT_GIFT_HOLD_DAYS,
    )
    .await
    .unwrap();
    assert_eq!(balance.reserved_balance, 0);
    assert_invariants(&client).await;

    // SQS delivers the same message again: acknowledged, nothing settles twice.
    let redelivered = api.invoke_traced(&sample_batch(&job)).await;
    let response = batch_response(redelivered.outcome);
    assert_eq!(failures(&response), 0, "{response}");
    assert_eq!(usage_amounts(&client).await, vec![-(quoted as i32)]);
    let again = shared::credits::balance(
        &client,
        &user,
        shared::kernel::config::DEFAULT_GIFT_HOLD_DAYS,
    )
    .await
    .unwrap();
    assert_eq!(
        (again.current_balance, again.reserved_balance),
        (balance.current_balance, balance.reserved_balance)
    );
    assert_invariants(&client).await;

    // A message nobody can read is acknowledged (dropped), not retried forever.
    let mut unreadable = sample_batch(&job);
    unreadable["Records"][0]["body"] = json!("this is not a job message");
    let dropped = api.invoke_traced(&unreadable).await;
    let response = batch_response(dropped.outcome);
    assert_eq!(failures(&response), 0, "{response}");
    assert_eq!(usage_amounts(&client).await, vec![-(quoted as i32)]);

    // What the worker wrote: JSON lines, each naming the invocation it served
    // (its Lambda request id and X-Ray trace header), and the job's metrics.
    let lines: Vec<Value> = stop_and_read_stdout(worker)
        .await
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let invocations = [
        (&completing.request_id, &completing.trace_id),
        (&redelivered.request_id, &redelivered.trace_id),
        (&dropped.request_id, &dropped.trace_id),
    ];
    let ids_of = |line: &Value| {
        let ids = if line.get("_aws").is_some() {
            line
        } else {
            &line["span"]
        };
        (
            ids["lambda_request_id"].as_str().map(str::to_string),
            ids["xray_trace_id"].as_str().map(str::to_string),
        )
    };
    let first = lines
        .iter()
        .position(|l| ids_of(l).0.is_some())
        .expect("a line names an invocation");
    for line in &lines[first..] {
        let (Some(request_id), Some(trace_id)) = ids_of(line) else {
            panic!("a line names no invocation: {line}");
        };
        assert!(
            invocations.contains(&(&request_id, &trace_id)),
            "a line names another invocation: {line}"
        );
    }
    let of = |request_id: &String| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| ids_of(l).0.as_ref() == Some(request_id))
            .collect()
    };
    let completion = of(&completing.request_id);
    assert!(
        completion.iter().any(|l| l["span"]["name"] == "message"
            && l["span"]["job_id"] == job.as_str()
            && l["span"]["message_id"].is_string()),
        "{completion:#?}"
    );
    assert!(
        completion
            .iter()
            .any(|l| l["span"]["name"] == "batch" && l["message"] == "batch handled"),
        "{completion:#?}"
    );
    let metric = |lines: &[&Value], name: &str| -> Vec<Value> {
        lines
            .iter()
            .filter(|l| l.get(name).is_some() && l.get("_aws").is_some())
            .map(|l| (*l).clone())
            .collect()
    };
    let completed = metric(&completion, "JobsCompleted");
    assert_eq!(completed.len(), 1, "{completion:#?}");
    assert_eq!(completed[0]["JobType"], "character_generation");
    assert_eq!(completed[0]["Provider"], "primary");
    assert!(
        completed[0]["RenderTime"]
            .as_f64()
            .is_some_and(|ms| ms >= 0.0)
    );
    assert_eq!(
        completed[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
        json!([["JobType", "Provider"]])
    );
    let waited = metric(&completion, "QueueWait");
    assert_eq!(waited.len(), 1, "{completion:#?}");
    assert!(waited[0]["QueueWait"].as_f64().is_some_and(|ms| ms >= 0.0));
    let spent = metric(&completion, "CreditsSpent");
    assert_eq!(spent.len(), 1, "{completion:#?}");
    assert_eq!(spent[0]["CreditsSpent"], quoted);
    // The redelivery and the unreadable message did nothing worth a metric.
    for request_id in [&redelivered.request_id, &dropped.request_id] {
        let lines = of(request_id);
        assert!(lines.iter().all(|l| l.get("_aws").is_none()), "{lines:#?}");
    }
}

#[tokio::test]
async fn the_worker_refuses_to_start_without_a_bucket() {
    let database_url = testkit::fresh_database().await;
    let api = RuntimeApi::start().await;
    let mut worker = start_worker(&api, &database_url, None, None);
    let status = tokio::time::timeout(std::time::Duration::from_secs(30), worker.wait())
        .await
        .expect("the worker exits")
        .unwrap();
    assert!(!status.success());
    let mut stderr = String::new();
    let mut stdout = String::new();
    use tokio::io::AsyncReadExt;
    if let Some(mut pipe) = worker.stderr.take() {
        pipe.read_to_string(&mut stderr).await.unwrap();
    }
    if let Some(mut pipe) = worker.stdout.take() {
        pipe.read_to_string(&mut stdout).await.unwrap();
    }
    assert!(
        stderr.contains("STORAGE_BUCKET") || stdout.contains("STORAGE_BUCKET"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
}
