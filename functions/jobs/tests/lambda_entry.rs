//! The real `jobs` binary under a Lambda Runtime API emulator, fed the sample
//! HTTP API v2 events from `events/`, sending its messages to SQS on moto.

use std::path::Path;

use testkit::lambda::{RuntimeApi, http_function_env, http_reply, sample_event, with_token};
use testkit::moto;

#[tokio::test]
async fn the_jobs_binary_dispatches_to_sqs_and_lists_jobs() {
    let stack = testkit::spawn_stack().await;
    let token = stack.user("ann@example.com", "ann").await;
    let created = stack
        .call(
            reqwest::Method::POST,
            "/api/v1/characters",
            Some(&token),
            Some(serde_json::json!({"name": "Aria", "prompt": "an elf archer", "style_type": "fantasy"})),
        )
        .await;
    let character = created.body["id"].as_str().unwrap().to_string();

    let sqs = moto::sqs_client().await;
    let queue_url = sqs
        .create_queue()
        .queue_name(moto::unique_name("jobs"))
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let mut env = http_function_env(&stack);
    env.extend(moto::function_env());
    env.push(("JOB_QUEUE_URL", queue_url.clone()));
    let api = RuntimeApi::start().await;
    let _function = api.spawn_function(Path::new(env!("CARGO_BIN_EXE_jobs")), "jobs", &env);

    let path = format!("/api/v1/characters/{character}/generate");
    let for_character = |name: &str| {
        let mut event = with_token(sample_event(name), &token);
        event["rawPath"] = serde_json::Value::String(path.clone());
        event["requestContext"]["http"]["path"] = serde_json::Value::String(path.clone());
        event
    };
    // A cost preview: priced (a new account's free generation pays), nothing sent.
    let (status, _, preview) = http_reply(
        api.invoke(&for_character("jobs-generate-dry-run.json"))
            .await,
    );
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["dry_run"], true);
    assert_eq!(preview["paid_with"]["free_generation"], true, "{preview}");
    assert!(preview["price"].as_i64().unwrap() > 0);
    assert_eq!(preview["input_parameters"]["width"], 768);

    let (status, _, job) = http_reply(api.invoke(&for_character("jobs-generate.json")).await);
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["status"], "queued");

    // The message is on the SQS queue, carrying the job id.
    let received = sqs
        .receive_message()
        .queue_url(&queue_url)
        .message_attribute_names("All")
        .wait_time_seconds(2)
        .send()
        .await
        .unwrap();
    let messages = received.messages();
    assert_eq!(messages.len(), 1);
    assert!(
        messages[0]
            .body()
            .unwrap_or_default()
            .contains(job["id"].as_str().unwrap())
    );

    let (status, _, list) = http_reply(
        api.invoke(&with_token(sample_event("jobs-list.json"), &token))
            .await,
    );
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["items"][0]["id"], job["id"]);
}
