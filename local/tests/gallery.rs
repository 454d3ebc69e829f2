//! The public gallery on a seeded data set: filters and sorts return exactly
//! the expected rows; private, non-showcase, suspended-user and over-reported
//! characters never appear.

use reqwest::Method;
use serde_json::{Value, json};
use testkit::{TestStack, spawn_stack};

async fn create(
    stack: &TestStack,
    token: &str,
    name: &str,
    style: &str,
    tags: &[&str],
    public: bool,
) -> String {
    let reply = stack
        .call(
            Method::POST,
            "/api/v1/characters",
            Some(token),
            Some(json!({
                "name": name, "prompt": format!("portrait of {name}"), "style_type": style,
                "tags": tags, "is_public": public
            })),
        )
        .await;
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
    reply.body["id"].as_str().unwrap().to_string()
}

fn names(body: &Value) -> Vec<String> {
    body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a page: {body}"))
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

async fn gallery(stack: &TestStack, query: &str) -> Vec<String> {
    let reply = stack.get(&format!("/api/v1/gallery{query}"), None).await;
    assert_eq!(reply.status.as_u16(), 200, "{query}: {}", reply.body);
    names(&reply.body)
}

async fn showcase(stack: &TestStack, token: &str) {
    let reply = stack
        .call(
            Method::PATCH,
            "/api/v1/me",
            Some(token),
            Some(json!({"allow_gallery_showcase": true})),
        )
        .await;
    assert_eq!(reply.status.as_u16(), 200);
}

/// Raters for the ratings and reports fixtures, made directly in the database.
async fn raters(stack: &TestStack, n: usize) -> Vec<String> {
    let client = stack.sql().await;
    let mut ids = Vec::new();
    for i in 0..n {
        let id: String = client
            .query_one(
                "INSERT INTO users (email) VALUES ($1) RETURNING id",
                &[&format!("rater{i}@example.com")],
            )
            .await
            .unwrap()
            .get(0);
        ids.push(id);
    }
    ids
}

async fn rate(stack: &TestStack, character: &str, raters: &[String], ratings: &[i32]) {
    let client = stack.sql().await;
    for (rater, rating) in raters.iter().zip(ratings) {
        client
            .execute(
                "INSERT INTO character_ratings (character_id, user_id, rating) VALUES ($1, $2, $3)",
                &[&character, rater, rating],
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn filters_and_sorts_return_exactly_the_expected_rows() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let bob = stack.user("bob@example.com", "bob").await;
    let carl = stack.user("carl@example.com", "carl").await;
    let dave = stack.user("dave@example.com", "dave").await;
    showcase(&stack, &ann).await;
    showcase(&stack, &bob).await;
    showcase(&stack, &dave).await;

    let a1 = create(&stack, &ann, "Sunset elf", "anime", &["elf"], true).await;
    let a2 = create(&stack, &ann, "Night ranger", "fantasy", &["ranger"], true).await;
    create(&stack, &ann, "Secret sketch", "anime", &["elf"], false).await;
    let b1 = create(&stack, &bob, "Robot chef", "cyberpunk", &["robot"], true).await;
    let b2 = create(
        &stack,
        &bob,
        "Steam golem",
        "steampunk",
        &["robot", "golem"],
        true,
    )
    .await;
    create(&stack, &carl, "Shy painter", "anime", &["elf"], true).await;
    create(&stack, &dave, "Banned bard", "anime", &[], true).await;

    assert_eq!(
        gallery(&stack, "").await,
        [
            "Banned bard",
            "Steam golem",
            "Robot chef",
            "Night ranger",
            "Sunset elf"
        ]
    );
    // A suspended owner's characters leave the gallery.
    stack
        .sql()
        .await
        .execute(
            "UPDATE users SET account_status = 'suspended' WHERE email = 'dave@example.com'",
            &[],
        )
        .await
        .unwrap();
    let recent = ["Steam golem", "Robot chef", "Night ranger", "Sunset elf"];
    assert_eq!(gallery(&stack, "").await, recent);
    assert_eq!(gallery(&stack, "?sort=recent").await, recent);

    assert_eq!(gallery(&stack, "?style_type=anime").await, ["Sunset elf"]);
    assert_eq!(
        gallery(&stack, "?tag=robot").await,
        ["Steam golem", "Robot chef"]
    );
    assert_eq!(
        gallery(&stack, "?tag=Robot&style_type=steampunk").await,
        ["Steam golem"]
    );
    assert_eq!(gallery(&stack, "?q=chef").await, ["Robot chef"]);
    assert_eq!(
        gallery(&stack, "?q=sketch").await,
        Vec::<String>::new(),
        "private never"
    );
    assert_eq!(
        gallery(&stack, "?q=painter").await,
        Vec::<String>::new(),
        "no showcase, never"
    );

    // popular = views + likes + downloads.
    let client = stack.sql().await;
    for (id, views, downloads) in [(&a1, 10, 0), (&a2, 3, 10), (&b1, 1, 0), (&b2, 0, 0)] {
        client
            .execute(
                "UPDATE characters SET view_count = $2, download_count = $3 WHERE id = $1",
                &[id, &views, &downloads],
            )
            .await
            .unwrap();
    }
    assert_eq!(
        gallery(&stack, "?sort=popular").await,
        ["Night ranger", "Sunset elf", "Robot chef", "Steam golem"]
    );

    // top_rated: only characters with at least 3 ratings, best average first.
    let people = raters(&stack, 4).await;
    rate(&stack, &a1, &people, &[5, 5, 4]).await;
    rate(&stack, &b1, &people, &[5, 5, 5]).await;
    rate(&stack, &a2, &people, &[5, 5]).await;
    rate(&stack, &b2, &people, &[3, 3, 3, 3]).await;
    let top = stack.get("/api/v1/gallery?sort=top_rated", None).await;
    assert_eq!(
        names(&top.body),
        ["Robot chef", "Sunset elf", "Steam golem"]
    );
    assert_eq!(top.body["items"][1]["rating_average"], 4.67);
    assert_eq!(top.body["items"][1]["rating_count"], 3);
    assert_eq!(top.body["items"][0]["owner"]["username"], "bob");
    assert!(
        !top.body.to_string().contains("@example.com"),
        "owner emails never appear"
    );

    // Open reports from 3 distinct users hide a character until reviewed; 2 do not.
    for (character, reporters) in [(&b2, &people[..3]), (&a1, &people[..2])] {
        for reporter in reporters {
            client
                .execute(
                    "INSERT INTO content_reports (character_id, reporter_id, reason) VALUES ($1, $2, 'spam')",
                    &[character, reporter],
                )
                .await
                .unwrap();
        }
    }
    assert_eq!(
        gallery(&stack, "").await,
        ["Robot chef", "Night ranger", "Sunset elf"]
    );
    client
        .execute(
            "UPDATE content_reports SET status = 'dismissed' WHERE character_id = $1",
            &[&b2],
        )
        .await
        .unwrap();
    assert_eq!(
        gallery(&stack, "").await,
        recent,
        "reviewed: back in the gallery"
    );

    // Featured.
    client
        .execute(
            "UPDATE characters SET is_featured = true WHERE id = $1",
            &[&a2],
        )
        .await
        .unwrap();
    let featured = stack.get("/api/v1/gallery/featured", None).await;
    assert_eq!(names(&featured.body), ["Night ranger"]);

    // Withdrawing showcase consent removes all of a user's characters at once.
    stack
        .call(
            Method::PATCH,
            "/api/v1/me",
            Some(&ann),
            Some(json!({"allow_gallery_showcase": false})),
        )
        .await;
    assert_eq!(gallery(&stack, "").await, ["Steam golem", "Robot chef"]);
    // Making a character private removes it too.
    stack
        .call(
            Method::PATCH,
            &format!("/api/v1/characters/{b1}"),
            Some(&bob),
            Some(json!({"is_public": false})),
        )
        .await;
    assert_eq!(gallery(&stack, "").await, ["Steam golem"]);
}

#[tokio::test]
async fn gallery_pages_walk_every_row_once_and_cursors_belong_to_their_sort() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    showcase(&stack, &ann).await;
    for i in 0..7 {
        create(&stack, &ann, &format!("Hero {i}"), "anime", &[], true).await;
    }
    for sort in ["recent", "popular"] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let query = match &cursor {
                Some(c) => format!("?sort={sort}&limit=3&cursor={c}"),
                None => format!("?sort={sort}&limit=3"),
            };
            let page = stack.get(&format!("/api/v1/gallery{query}"), None).await;
            seen.extend(names(&page.body));
            match page.body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => break,
            }
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 7, "{sort}");
    }
    let first = stack.get("/api/v1/gallery?limit=3", None).await;
    let cursor = first.body["next_cursor"].as_str().unwrap();
    stack
        .get(
            &format!("/api/v1/gallery?sort=popular&cursor={cursor}"),
            None,
        )
        .await
        .assert_problem(422);
    for bad in [
        "sort=best",
        "limit=500",
        "style_type=oil",
        "cursor=%%%",
        "unknown=1",
    ] {
        stack
            .get(&format!("/api/v1/gallery?{bad}"), None)
            .await
            .assert_problem(422);
    }
}
