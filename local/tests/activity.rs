//! `GET /api/v1/me/activity` over real HTTP against real PostgreSQL: the rows
//! the actions wrote, with their request context, only the caller's own,
//! newest first, paginated, filtered, and bad parameters refused.

use std::collections::HashSet;

use reqwest::Method;
use serde_json::{Value, json};
use testkit::{TestStack, spawn_stack};

async fn create_character(stack: &TestStack, token: &str, name: &str, public: bool) -> String {
    let reply = stack
        .call(
            Method::POST,
            "/api/v1/characters",
            Some(token),
            Some(json!({
                "name": name,
                "prompt": "a wandering bard with a lute",
                "style_type": "fantasy",
                "is_public": public,
            })),
        )
        .await;
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
    reply.body["id"].as_str().unwrap().to_string()
}

/// Every page of the caller's activity, following `next_cursor`.
async fn walk(stack: &TestStack, token: &str, query: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/me/activity?{query}&cursor={c}"),
            None => format!("/api/v1/me/activity?{query}"),
        };
        let reply = stack.get(&path, Some(token)).await;
        assert_eq!(reply.status.as_u16(), 200, "{}", reply.body);
        items.extend(reply.body["items"].as_array().unwrap().iter().cloned());
        match reply.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return items,
        }
    }
}

#[tokio::test]
async fn the_caller_sees_their_own_actions_with_request_context_newest_first() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let bob = stack.user("bob@example.com", "bob").await;
    let ann_id: String = stack.get("/api/v1/me", Some(&ann)).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Ann makes a character; Bob rates it, then withdraws the rating.
    let aria = create_character(&stack, &ann, "Aria", true).await;
    let request = stack
        .http
        .put(format!(
            "{}/api/v1/characters/{aria}/rating",
            stack.base_url
        ))
        .bearer_auth(&bob)
        .header("user-agent", "activity-test/1.0")
        .header("referer", "https://characters.app/gallery")
        .header("x-request-id", "rate-request-1")
        .json(&json!({"rating": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(request.status().as_u16(), 201);
    let withdrawn = stack
        .call(
            Method::DELETE,
            &format!("/api/v1/characters/{aria}/rating"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(withdrawn.status.as_u16(), 204, "{}", withdrawn.body);

    let ann_items = walk(&stack, &ann, "limit=1").await;
    let kinds: Vec<&str> = ann_items
        .iter()
        .map(|i| i["activity_type"].as_str().unwrap())
        .collect();
    // Newest first: the creation after the sign-in; nothing of Bob's.
    assert_eq!(kinds, ["character_created", "login"], "{ann_items:?}");
    assert!(ann_items.iter().all(|i| i["user_id"] == ann_id.as_str()));
    assert_eq!(ann_items[0]["entity_id"], aria.as_str());
    assert_eq!(ann_items[0]["ip_address"], "127.0.0.1");

    let bob_items = walk(&stack, &bob, "limit=2").await;
    let kinds: Vec<&str> = bob_items
        .iter()
        .map(|i| i["activity_type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["rating_withdrawn", "character_rated", "login"]);
    let rated = &bob_items[1];
    assert_eq!(rated["entity_type"], "character");
    assert_eq!(rated["entity_id"], aria.as_str());
    assert_eq!(rated["metadata"]["rating"], 4);
    assert_eq!(rated["session_id"], "rate-request-1");
    assert_eq!(rated["user_agent"], "activity-test/1.0");
    assert_eq!(rated["referrer"], "https://characters.app/gallery");
    assert_eq!(rated["ip_address"], "127.0.0.1");
    // Pages never repeat an entry.
    let ids: HashSet<&str> = bob_items
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), bob_items.len());

    // A type filter.
    let logins = walk(&stack, &bob, "activity_type=login").await;
    assert_eq!(logins.len(), 1);
    assert_eq!(logins[0]["activity_type"], "login");
}

#[tokio::test]
async fn bad_parameters_are_refused_and_anonymous_callers_are_401() {
    let stack = spawn_stack().await;
    let ann = stack.sign_in("ann@example.com").await;
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("cursor=garbage!", "cursor"),
        ("activity_type=DROP%20TABLE", "activity_type"),
        ("activity_type=", "activity_type"),
        // Well-formed, but no activity of the platform has this type.
        ("activity_type=nope", "activity_type"),
        ("activity_type=LOGIN", "activity_type"),
        ("colour=red", "colour"),
    ] {
        let reply = stack
            .get(&format!("/api/v1/me/activity?{query}"), Some(&ann))
            .await;
        reply.assert_problem(422);
        let fields: Vec<&str> = reply.body["errors"]
            .as_array()
            .map(|e| e.iter().filter_map(|e| e["field"].as_str()).collect())
            .unwrap_or_default();
        assert!(fields.contains(&field), "{query}: {}", reply.body);
    }
    stack
        .get("/api/v1/me/activity", None)
        .await
        .assert_problem(401);
    // Signed in elsewhere but never here: no account yet.
    let stranger = stack.token("nobody@example.com");
    stack
        .get("/api/v1/me/activity", Some(&stranger))
        .await
        .assert_problem(404);
}

#[tokio::test]
async fn crafted_cursors_are_422_on_every_time_ordered_list() {
    let stack = spawn_stack().await;
    let ann = stack.sign_in("ann@example.com").await;
    let collection = stack
        .call(
            Method::POST,
            "/api/v1/collections",
            Some(&ann),
            Some(json!({"name": "Mine"})),
        )
        .await;
    assert_eq!(collection.status.as_u16(), 201, "{}", collection.body);
    let aria = create_character(&stack, &ann, "Aria", true).await;
    // Well-formed cursors no endpoint could have returned: a NUL in the id, an
    // id longer than any row's, a time outside PostgreSQL's range.
    let crafted = [
        json!({"at": "2026-01-01T00:00:00Z", "id": "a\u{0}b"}),
        json!({"at": "2026-01-01T00:00:00Z", "id": "x".repeat(500)}),
        json!({"at": "+20000-01-01T00:00:00Z", "id": "abc"}),
    ];
    for path in [
        "/api/v1/me/activity",
        "/api/v1/characters",
        "/api/v1/collections",
        "/api/v1/jobs",
        "/api/v1/credits/transactions",
        "/api/v1/credits/purchases",
        &format!("/api/v1/characters/{aria}/ratings"),
    ] {
        for key in &crafted {
            let cursor = encode(key);
            let reply = stack
                .get(&format!("{path}?cursor={cursor}"), Some(&ann))
                .await;
            reply.assert_problem(422);
        }
    }
}

/// A cursor as the pagination module encodes one: base64url JSON.
fn encode(value: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}
