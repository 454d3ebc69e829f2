//! `GET /api/v1/jobs/{id}/events` (local stack only): a job's status and
//! progress as Server-Sent Events, read over real HTTP and parsed here frame
//! by frame. The worker is the real one, driven from the in-process queue.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::{TestStack, spawn_stack};
use tokio::time::Instant;

/// How long a test waits for the next frame before failing.
const FRAME_DEADLINE: Duration = Duration::from_secs(20);

async fn setup(stack: &TestStack) -> (String, String) {
    let token = stack.user("ann@example.com", "ann").await;
    let client = stack.sql().await;
    client
        .execute("UPDATE users SET daily_quota = 0", &[])
        .await
        .unwrap();
    let id: String = client
        .query_one("SELECT id FROM users", &[])
        .await
        .unwrap()
        .get(0);
    shared::credits::ledger::post(
        &client,
        &id,
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
    assert_eq!(character.status, StatusCode::CREATED, "{}", character.body);
    (token, character.body["id"].as_str().unwrap().to_string())
}

async fn generate(stack: &TestStack, token: &str, character: &str) -> String {
    let reply = stack
        .call(
            Method::POST,
            &format!("/api/v1/characters/{character}/generate"),
            Some(token),
            Some(json!({"width": 512, "height": 384})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(reply.body["status"], "queued");
    reply.body["id"].as_str().unwrap().to_string()
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
struct Frame {
    id: Option<String>,
    event: Option<String>,
    data: Value,
}

/// A `text/event-stream` response body, parsed as it arrives.
struct EventStream {
    response: reqwest::Response,
    buffer: String,
}

impl EventStream {
    /// Opens the stream; asserts a 200 event stream.
    async fn open(stack: &TestStack, job_id: &str, token: &str) -> Self {
        let response = streaming_client()
            .get(format!("{}/api/v1/jobs/{job_id}/events", stack.base_url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(header(reqwest::header::CONTENT_TYPE), "text/event-stream");
        assert_eq!(header(reqwest::header::CACHE_CONTROL), "no-cache");
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (keep-alive comments skipped), or `None` once the
    /// server has ended the stream. Fails the test after [`FRAME_DEADLINE`].
    async fn next(&mut self) -> Option<Frame> {
        let deadline = Instant::now() + FRAME_DEADLINE;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(frame) = parse(&block) {
                    return Some(frame);
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .unwrap_or_else(|_| {
                    panic!("no event within {FRAME_DEADLINE:?}; have {:?}", self.buffer)
                })
                .expect("read the event stream");
            match chunk {
                Some(bytes) => self.buffer.push_str(std::str::from_utf8(&bytes).unwrap()),
                None => {
                    assert!(
                        self.buffer.trim().is_empty(),
                        "a partial event: {:?}",
                        self.buffer
                    );
                    return None;
                }
            }
        }
    }

    /// The next event, which must exist.
    async fn expect(&mut self) -> Frame {
        self.next()
            .await
            .expect("an event, not the end of the stream")
    }
}

/// A client without a whole-request timeout: streams are read with deadlines.
fn streaming_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// One event block (`field: value` lines); `None` for a comment-only block.
fn parse(block: &str) -> Option<Frame> {
    let (mut id, mut event, mut data) = (None, None, Vec::new());
    for line in block.lines().filter(|l| !l.is_empty()) {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = Some(value.to_string()),
            "event" => event = Some(value.to_string()),
            "data" => data.push(value),
            other => panic!("unexpected field `{other}` in {block:?}"),
        }
    }
    if id.is_none() && event.is_none() && data.is_empty() {
        return None;
    }
    let data = serde_json::from_str(&data.join("\n")).unwrap_or_else(|e| panic!("{e}: {block:?}"));
    Some(Frame { id, event, data })
}

fn assert_frame(frame: &Frame, id: u64, event: &str) {
    assert_eq!(
        frame.id.as_deref(),
        Some(id.to_string().as_str()),
        "{frame:?}"
    );
    assert_eq!(frame.event.as_deref(), Some(event), "{frame:?}");
}

async fn write_progress(stack: &TestStack, job_id: &str, fraction: f64, eta: Value) {
    let progress = json!({
        "fraction": fraction,
        "eta_seconds": eta,
        "updated_at": chrono::Utc::now().to_rfc3339(),
    });
    let updated = stack
        .sql()
        .await
        .execute(
            "UPDATE generation_jobs \
             SET processing_metadata = jsonb_set(coalesce(processing_metadata, '{}'), '{progress}', $1) \
             WHERE id = $2",
            &[&progress, &job_id],
        )
        .await
        .unwrap();
    assert_eq!(updated, 1);
}

#[tokio::test]
async fn a_job_streams_its_status_and_progress_until_it_completes() {
    let stack = spawn_stack().await;
    let (token, character) = setup(&stack).await;
    let job_id = generate(&stack, &token, &character).await;
    let mut events = EventStream::open(&stack, &job_id, &token).await;

    // First the job as GET /api/v1/jobs/{id} shows it.
    let first = events.expect().await;
    assert_frame(&first, 1, "status");
    assert_eq!(first.data["status"], "queued");
    let shown = stack
        .get(&format!("/api/v1/jobs/{job_id}"), Some(&token))
        .await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.body);
    assert_eq!(first.data, shown.body);

    // Progress as the worker records it: each change is one event.
    write_progress(&stack, &job_id, 0.25, json!(3.5)).await;
    let progress = events.expect().await;
    assert_frame(&progress, 2, "progress");
    assert_eq!(
        progress.data,
        json!({"job_id": job_id, "fraction": 0.25, "eta_seconds": 3.5})
    );
    write_progress(&stack, &job_id, 0.5, Value::Null).await;
    let progress = events.expect().await;
    assert_frame(&progress, 3, "progress");
    assert_eq!(
        progress.data,
        json!({"job_id": job_id, "fraction": 0.5, "eta_seconds": null})
    );

    // The real worker runs the job; the stream may catch it processing, and
    // ends with the completed job.
    let batch = stack.stack.queue.receive(10);
    assert_eq!(batch.records.len(), 1);
    let response = stack.stack.worker.handle_batch(batch).await;
    assert!(response.batch_item_failures.is_empty());
    let mut rest = Vec::new();
    while let Some(frame) = events.next().await {
        rest.push(frame);
    }
    let (last, between) = rest.split_last().expect("the completed status");
    for (n, frame) in rest.iter().enumerate() {
        assert_eq!(frame.id, Some((4 + n).to_string()), "{rest:?}");
    }
    for frame in between {
        match frame.event.as_deref() {
            Some("status") => assert_eq!(frame.data["status"], "processing", "{rest:?}"),
            Some("progress") => assert_eq!(frame.data["job_id"], job_id.as_str()),
            other => panic!("unexpected event {other:?}: {rest:?}"),
        }
    }
    assert_eq!(last.event.as_deref(), Some("status"));
    assert_eq!(last.data["status"], "completed", "{last:?}");
    assert_eq!(last.data["id"], job_id.as_str());
    // Presented: links, not storage keys.
    let outputs = last.data["output_urls"].as_array().expect("output links");
    assert!(!outputs.is_empty());
    assert!(
        outputs
            .iter()
            .all(|o| o.as_str().is_some_and(|url| url.contains("signature="))),
        "{outputs:?}"
    );
    let done = stack
        .get(&format!("/api/v1/jobs/{job_id}"), Some(&token))
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(done.body["status"], "completed");
    assert_eq!(done.body["updated_at"], last.data["updated_at"]);
}

#[tokio::test]
async fn a_cancelled_job_streams_one_status_and_closes() {
    let stack = spawn_stack().await;
    let (token, character) = setup(&stack).await;
    let job_id = generate(&stack, &token, &character).await;
    let cancel = stack
        .call(
            Method::POST,
            &format!("/api/v1/jobs/{job_id}/cancel"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(cancel.status, StatusCode::OK, "{}", cancel.body);

    let mut events = EventStream::open(&stack, &job_id, &token).await;
    let only = events.expect().await;
    assert_frame(&only, 1, "status");
    assert_eq!(only.data["status"], "cancelled");
    assert_eq!(only.data["id"], job_id.as_str());
    assert_eq!(events.next().await, None);
}

#[tokio::test]
async fn a_job_deleted_meanwhile_ends_its_stream() {
    let stack = spawn_stack().await;
    let (token, character) = setup(&stack).await;
    let job_id = generate(&stack, &token, &character).await;
    let mut events = EventStream::open(&stack, &job_id, &token).await;
    assert_eq!(events.expect().await.data["status"], "queued");

    let mut client = stack.sql().await;
    let tx = client.transaction().await.unwrap();
    tx.execute("DELETE FROM credit_holds WHERE job_id = $1", &[&job_id])
        .await
        .unwrap();
    let deleted = tx
        .execute("DELETE FROM generation_jobs WHERE id = $1", &[&job_id])
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    tx.commit().await.unwrap();

    assert_eq!(events.next().await, None);
}

#[tokio::test]
async fn a_stopping_stack_ends_open_streams() {
    let stack = spawn_stack().await;
    let (token, character) = setup(&stack).await;
    let job_id = generate(&stack, &token, &character).await;
    let mut events = EventStream::open(&stack, &job_id, &token).await;
    assert_eq!(events.expect().await.data["status"], "queued");

    // A graceful shutdown waits for open responses; the stream must not hold it.
    tokio::time::timeout(FRAME_DEADLINE, stack.stack.stop())
        .await
        .expect("the stack stops with a stream open")
        .unwrap();
    assert_eq!(events.next().await, None);
}

#[tokio::test]
async fn the_stream_is_refused_as_get_job_is() {
    let stack = spawn_stack().await;
    let (token, character) = setup(&stack).await;
    let job_id = generate(&stack, &token, &character).await;
    let bob = stack.user("bob@example.com", "bob").await;
    let events = format!("/api/v1/jobs/{job_id}/events");

    // Someone else's job and an unknown one: the same 404 as GET /api/v1/jobs/{id}.
    let theirs = stack.get(&events, Some(&bob)).await;
    theirs.assert_problem(404);
    let as_get = stack
        .get(&format!("/api/v1/jobs/{job_id}"), Some(&bob))
        .await;
    as_get.assert_problem(404);
    assert_eq!(theirs.body["detail"], as_get.body["detail"]);
    let unknown = stack
        .get("/api/v1/jobs/no-such-job/events", Some(&token))
        .await;
    unknown.assert_problem(404);
    assert_eq!(unknown.body["detail"], as_get.body["detail"]);

    // An id that cannot name a job: as GET answers it.
    let long = "x".repeat(129);
    let bad = stack
        .get(&format!("/api/v1/jobs/{long}/events"), Some(&token))
        .await;
    bad.assert_problem(404);
    let bad_get = stack
        .get(&format!("/api/v1/jobs/{long}"), Some(&token))
        .await;
    bad_get.assert_problem(404);
    assert_eq!(bad.body["detail"], bad_get.body["detail"]);

    // No token, a bad token: 401.
    stack.get(&events, None).await.assert_problem(401);
    stack
        .get(&events, Some("not-a-token"))
        .await
        .assert_problem(401);

    // A valid token of someone who never signed in: as GET answers it.
    let stranger = stack.token("carol@example.com");
    let no_account = stack.get(&events, Some(&stranger)).await;
    no_account.assert_problem(404);
    let no_account_get = stack
        .get(&format!("/api/v1/jobs/{job_id}"), Some(&stranger))
        .await;
    no_account_get.assert_problem(404);
    assert_eq!(no_account.body["detail"], no_account_get.body["detail"]);

    // The owner still gets the stream.
    let mut owned = EventStream::open(&stack, &job_id, &token).await;
    assert_eq!(owned.expect().await.data["status"], "queued");
}

#[tokio::test]
async fn streams_do_not_hold_pooled_connections() {
    let stack = spawn_stack().await;
    let (token, character) = setup(&stack).await;
    let job_id = generate(&stack, &token, &character).await;
    // More open streams than the pool has connections.
    let pool_size = stack.stack.state.config.database.pool_size;
    let mut streams = Vec::new();
    for _ in 0..pool_size + 4 {
        let mut events = EventStream::open(&stack, &job_id, &token).await;
        assert_eq!(events.expect().await.data["status"], "queued");
        streams.push(events);
    }
    // Ordinary requests are still served, and every stream still reads the job.
    let shown = stack
        .get(&format!("/api/v1/jobs/{job_id}"), Some(&token))
        .await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.body);
    write_progress(&stack, &job_id, 0.1, json!(9.0)).await;
    for events in &mut streams {
        let progress = events.expect().await;
        assert_frame(&progress, 2, "progress");
        assert_eq!(progress.data["fraction"], 0.1);
    }
}
