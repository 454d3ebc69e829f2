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

async fn follow(stack: &TestStack, token: &str, username: &str, method: Method) -> u16 {
    stack
        .call(
            method,
            &format!("/api/v1/users/{username}/follow"),
            Some(token),
            None,
        )
        .await
        .status
        .as_u16()
}

fn usernames(page: &Value) -> Vec<(String, bool)> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a page: {page}"))
        .iter()
        .map(|f| {
            (
                f["username"].as_str().unwrap().to_string(),
                f["friends"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn mutual_follows_are_friends_and_friends_see_a_friends_profile() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let bob = stack.user("bob@example.com", "bob").await;
    let cyd = stack.user("cyd@example.com", "cyd").await;
    set_me(&stack, &ann, json!({"profile_visibility": "friends"})).await;
    character(&stack, &ann, "Shared with friends", true).await;

    // A friends profile is followable, but not yet visible to a follower.
    assert_eq!(follow(&stack, &bob, "ann", Method::PUT).await, 204);
    assert_eq!(
        follow(&stack, &bob, "ann", Method::PUT).await,
        204,
        "idempotent"
    );
    for path in ["/api/v1/users/ann", "/api/v1/users/ann/characters"] {
        stack.get(path, Some(&bob)).await.assert_problem(404);
    }
    // Followed back: friends, who see the profile and the work under it.
    assert_eq!(follow(&stack, &ann, "bob", Method::PUT).await, 204);
    let profile = stack.get("/api/v1/users/ann", Some(&bob)).await;
    assert_eq!(profile.status, 200, "{}", profile.body);
    let work = stack.get("/api/v1/users/ann/characters", Some(&bob)).await;
    assert_eq!(work.body["items"].as_array().unwrap().len(), 1);
    // Strangers and anonymous callers do not.
    for token in [Some(cyd.as_str()), None] {
        stack
            .get("/api/v1/users/ann", token)
            .await
            .assert_problem(404);
    }
    let following = stack.get("/api/v1/me/following", Some(&bob)).await;
    assert_eq!(usernames(&following.body), [("ann".to_string(), true)]);
    assert_eq!(follow(&stack, &cyd, "ann", Method::PUT).await, 204);
    let followers = stack.get("/api/v1/me/followers", Some(&ann)).await;
    assert_eq!(
        usernames(&followers.body),
        [("cyd".to_string(), false), ("bob".to_string(), true)]
    );

    // Unfollowing ends the friendship at once; doing it again is the same 204.
    assert_eq!(follow(&stack, &ann, "bob", Method::DELETE).await, 204);
    assert_eq!(follow(&stack, &ann, "bob", Method::DELETE).await, 204);
    stack
        .get("/api/v1/users/ann", Some(&bob))
        .await
        .assert_problem(404);

    // A private profile stays private to friends (new accounts are private).
    assert_eq!(follow(&stack, &bob, "cyd", Method::PUT).await, 204);
    assert_eq!(follow(&stack, &cyd, "bob", Method::PUT).await, 204);
    stack
        .get("/api/v1/users/cyd", Some(&bob))
        .await
        .assert_problem(404);
    // Oneself, unknown people and suspended followers are refused.
    assert_eq!(follow(&stack, &ann, "ann", Method::PUT).await, 422);
    assert_eq!(follow(&stack, &bob, "nobody", Method::PUT).await, 404);
    for bad in ["a%00b", "no%20body", "x"] {
        assert_eq!(
            follow(&stack, &bob, bad, Method::DELETE).await,
            404,
            "{bad}"
        );
        assert_eq!(follow(&stack, &bob, bad, Method::PUT).await, 404, "{bad}");
    }
    sql(
        &stack,
        "UPDATE users SET account_status = 'suspended' WHERE username = 'bob'",
    )
    .await;
    assert_eq!(follow(&stack, &bob, "ann", Method::PUT).await, 403);
    stack
        .get("/api/v1/me/following?size=3", Some(&ann))
        .await
        .assert_problem(422);

    // A follow is only ever the caller's own: row-level security as the API role.
    let client = stack.sql().await;
    let ann_id: String = client
        .query_one("SELECT id FROM users WHERE username = 'ann'", &[])
        .await
        .unwrap()
        .get(0);
    let cyd_id: String = client
        .query_one("SELECT id FROM users WHERE username = 'cyd'", &[])
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL ROLE app_api; SET LOCAL app.user_id = '{ann_id}'"
        ))
        .await
        .unwrap();
    let forged = client
        .execute(
            "INSERT INTO follows (follower_id, followed_id) VALUES ($1, $2)",
            &[&cyd_id, &ann_id],
        )
        .await
        .unwrap_err();
    assert_eq!(
        forged.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    client.batch_execute("ROLLBACK").await.unwrap();

    // Erasing an account takes its follows, both ways, and its referral code with it.
    let code = stack.get("/api/v1/credits/referrals", Some(&ann)).await;
    assert_eq!(code.status, 200, "{}", code.body);
    let erased = stack
        .call(
            Method::DELETE,
            "/api/v1/me",
            Some(&ann),
            Some(json!({"confirm": "ann@example.com"})),
        )
        .await;
    assert_eq!(erased.status, 204, "{}", erased.body);
    let left = client
        .query_one(
            "SELECT (SELECT count(*) FROM follows WHERE follower_id = $1 OR followed_id = $1), \
                    (SELECT referral_code FROM users WHERE id = $1)",
            &[&ann_id],
        )
        .await
        .unwrap();
    assert_eq!(left.get::<_, i64>(0), 0);
    assert_eq!(left.get::<_, Option<String>>(1), None);
}
