//! The real `credits` binary under a Lambda Runtime API emulator, fed the
//! sample HTTP API v2 events from `events/`.

use std::path::Path;

use testkit::lambda::{RuntimeApi, http_function_env, http_reply, sample_event, with_token};

#[tokio::test]
async fn the_credits_binary_serves_its_sample_events() {
    let stack = testkit::spawn_stack().await;
    let token = stack.sign_in("ann@example.com").await;
    let api = RuntimeApi::start().await;
    let _function = api.spawn_function(
        Path::new(env!("CARGO_BIN_EXE_credits")),
        "credits",
        &http_function_env(&stack),
    );

    let (status, _, packages) =
        http_reply(api.invoke(&sample_event("credits-packages.json")).await);
    assert_eq!(status, 200, "{packages}");
    assert!(
        packages["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|p| p["id"] == "pkg_starter")),
        "{packages}"
    );

    let (status, _, balance) = http_reply(
        api.invoke(&with_token(sample_event("credits-balance.json"), &token))
            .await,
    );
    assert_eq!(status, 200, "{balance}");
    assert_eq!(balance["current_balance"], 0);
    assert_eq!(balance["free_generations_left"], 3);

    let (status, _, _) = http_reply(api.invoke(&sample_event("credits-balance.json")).await);
    assert_eq!(status, 401);
}
