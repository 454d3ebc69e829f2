//! Finding people's work: a person's public characters and collections, and
//! the gallery of collections, over real HTTP against real PostgreSQL.

use reqwest::Method;
use serde_json::{Value, json};
use testkit::{TestStack, spawn_stack};

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a page: {page}"))
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_string())
        .collect()
}

async fn collection(stack: &TestStack, token: &str, name: &str, public: bool) -> String {
    let reply = stack
        .call(
            Method::POST,
            "/api/v1/collections",
            Some(token),
            Some(json!({"name": name, "is_public": public})),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body["id"].as_str().unwrap().to_string()
}

async fn character(stack: &TestStack, token: &str, name: &str, public: bool) -> String {
    stack
        .character(
            token,
            json!({"name": name, "prompt": "an elf archer", "style_type": "fantasy", "is_public": public}),
        )
        .await
}

async fn set_me(stack: &TestStack, token: &str, changes: Value) {
    let reply = stack
        .call(Method::PATCH, "/api/v1/me", Some(token), Some(changes))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

async fn sql(stack: &TestStack, statement: &str) {
    stack.sql().await.batch_execute(statement).await.unwrap();
}

#[tokio::test]
async fn a_persons_page_lists_their_public_work_as_far_as_their_profile_allows() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let bob = stack.user("bob@example.com", "bob").await;
    set_me(&stack, &ann, json!({"profile_visibility": "public"})).await;
    let first = character(&stack, &ann, "First", true).await;
    let hidden = character(&stack, &ann, "Hidden", true).await;
    let private = character(&stack, &ann, "Private", false).await;
    let second = character(&stack, &ann, "Second", true).await;
    let third = character(&stack, &ann, "Third", true).await;
    sql(
        &stack,
        &format!("UPDATE characters SET moderation_hidden = true, moderation_hidden_at = now() WHERE id = '{hidden}'"),
    )
    .await;
    let shelf = collection(&stack, &ann, "Shelf", true).await;
    collection(&stack, &ann, "Drafts", false).await;

    // Newest first, page by page, only public and not hidden, for anyone.
    let page = stack
        .get("/api/v1/users/ann/characters?limit=2", None)
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(ids(&page.body), [third.clone(), second.clone()]);
    let cursor = page.body["next_cursor"].as_str().unwrap().to_string();
    let rest = stack
        .get(
            &format!("/api/v1/users/ann/characters?limit=2&cursor={cursor}"),
            Some(&bob),
        )
        .await;
    assert_eq!(ids(&rest.body), [first.as_str()]);
    assert!(rest.body["next_cursor"].is_null());
    assert!(!ids(&page.body).contains(&private) && !ids(&rest.body).contains(&hidden));
    let collections = stack.get("/api/v1/users/ann/collections", None).await;
    assert_eq!(collections.status, 200, "{}", collections.body);
    assert_eq!(ids(&collections.body), [shelf.as_str()]);

    // Bad parameters are named; unknown people, and bad usernames, are 404s.
    let bad = stack
        .get("/api/v1/users/ann/characters?limit=0&sort=new", None)
        .await;
    bad.assert_problem(422);
    for path in [
        "/api/v1/users/nobody/characters",
        "/api/v1/users/no%20body/collections",
    ] {
        stack.get(path, None).await.assert_problem(404);
    }

    // A private profile hides the page from everyone but its owner.
    set_me(&stack, &ann, json!({"profile_visibility": "private"})).await;
    for (token, status) in [
        (None, 404),
        (Some(bob.as_str()), 404),
        (Some(ann.as_str()), 200),
    ] {
        for path in [
            "/api/v1/users/ann/characters",
            "/api/v1/users/ann/collections",
        ] {
            let reply = stack.get(path, token).await;
            assert_eq!(reply.status, status, "{path} as {token:?}: {}", reply.body);
        }
    }
    // So does a suspension, even with a public profile.
    set_me(&stack, &ann, json!({"profile_visibility": "public"})).await;
    sql(
        &stack,
        "UPDATE users SET account_status = 'suspended' WHERE username = 'ann'",
    )
    .await;
    stack
        .get("/api/v1/users/ann/characters", None)
        .await
        .assert_problem(404);
}

#[tokio::test]
async fn the_collection_gallery_shows_public_collections_of_active_showcasing_people() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let bob = stack.user("bob@example.com", "bob").await;
    let cyd = stack.user("cyd@example.com", "cyd").await;
    let ann_public = collection(&stack, &ann, "Ann's", true).await;
    collection(&stack, &ann, "Ann's drafts", false).await;
    let bob_public = collection(&stack, &bob, "Bob's", true).await;
    let cyd_public = collection(&stack, &cyd, "Cyd's", true).await;

    // A new account does not showcase its work: nothing yet.
    let gallery = stack.get("/api/v1/gallery/collections", None).await;
    assert_eq!(gallery.status, 200, "{}", gallery.body);
    assert!(ids(&gallery.body).is_empty(), "{}", gallery.body);

    for token in [&ann, &bob, &cyd] {
        set_me(&stack, token, json!({"allow_gallery_showcase": true})).await;
    }
    sql(
        &stack,
        "UPDATE users SET account_status = 'suspended' WHERE username = 'cyd'",
    )
    .await;
    let gallery = stack.get("/api/v1/gallery/collections", Some(&ann)).await;
    assert_eq!(ids(&gallery.body), [bob_public.clone(), ann_public.clone()]);
    assert!(!ids(&gallery.body).contains(&cyd_public));

    // Paging walks it once.
    let first = stack.get("/api/v1/gallery/collections?limit=1", None).await;
    assert_eq!(ids(&first.body), [bob_public]);
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let second = stack
        .get(
            &format!("/api/v1/gallery/collections?limit=1&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(ids(&second.body), [ann_public]);
    assert!(second.body["next_cursor"].is_null());
    stack
        .get("/api/v1/gallery/collections?public=false", None)
        .await
        .assert_problem(422);
}
