//! The real `characters` binary under a Lambda Runtime API emulator, fed the
//! sample HTTP API v2 events from `events/`.

use std::path::Path;

use testkit::lambda::{RuntimeApi, http_function_env, http_reply, sample_event, with_token};

#[tokio::test]
async fn the_characters_binary_serves_its_sample_events() {
    let stack = testkit::spawn_stack().await;
    let token = stack.user("ann@example.com", "ann").await;
    stack
        .call(
            reqwest::Method::PATCH,
            "/api/v1/me",
            Some(&token),
            Some(serde_json::json!({"allow_gallery_showcase": true})),
        )
        .await;
    let api = RuntimeApi::start().await;
    let _function = api.spawn_function(
        Path::new(env!("CARGO_BIN_EXE_characters")),
        "characters",
        &http_function_env(&stack),
    );

    let (status, _, created) = http_reply(
        api.invoke(&with_token(sample_event("characters-create.json"), &token))
            .await,
    );
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["name"], "Aria");
    assert_eq!(created["tags"], serde_json::json!(["elf"]));

    let (status, headers, page) =
        http_reply(api.invoke(&sample_event("characters-gallery.json")).await);
    assert_eq!(status, 200, "{page}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(page["items"][0]["id"], created["id"]);
    assert_eq!(page["items"][0]["owner"]["username"], "ann");

    // The images of a public character with one generated image, to an anonymous caller.
    // This function has no storage configured, so there is no link to give: `null`, never
    // a bucket key.
    let character = created["id"].as_str().unwrap();
    let generated = stack
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/characters/{character}/generate"),
            Some(&token),
            Some(serde_json::json!({})),
        )
        .await;
    assert_eq!(generated.status, 202, "{}", generated.body);
    let done = stack
        .stack
        .worker
        .handle_batch(stack.stack.queue.receive(1))
        .await;
    assert!(done.batch_item_failures.is_empty());
    let image_id: String = stack
        .sql()
        .await
        .query_one(
            "SELECT id FROM character_images WHERE character_id = $1",
            &[&character],
        )
        .await
        .unwrap()
        .get(0);
    let mut event = sample_event("characters-list-images.json");
    let path = format!("/api/v1/characters/{character}/images");
    event["rawPath"] = serde_json::Value::String(path.clone());
    event["requestContext"]["http"]["path"] = serde_json::Value::String(path);
    let (status, headers, images) = http_reply(api.invoke(&event).await);
    assert_eq!(status, 200, "{images}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(images["items"][0]["id"], image_id.as_str());
    assert_eq!(images["items"][0]["is_primary"], true);
    assert_eq!(images["items"][0]["url"], serde_json::Value::Null);
    assert_eq!(images["next_cursor"], serde_json::Value::Null);
    assert!(!images.to_string().contains("users/"), "{images}");

    // The sample as committed carries a placeholder token: a 401 problem.
    let (status, headers, _) =
        http_reply(api.invoke(&sample_event("characters-create.json")).await);
    assert_eq!(status, 401);
    assert_eq!(headers["content-type"], "application/problem+json");
}
