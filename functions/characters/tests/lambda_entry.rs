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

    // The sample as committed carries a placeholder token: a 401 problem.
    let (status, headers, _) =
        http_reply(api.invoke(&sample_event("characters-create.json")).await);
    assert_eq!(status, 401);
    assert_eq!(headers["content-type"], "application/problem+json");
}
