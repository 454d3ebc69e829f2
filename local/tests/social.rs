//! Likes, ratings and reports over real HTTP against real PostgreSQL: the
//! counters the triggers keep, idempotency under concurrency, visibility (404
//! for what the caller may not see), input validation, and row-level security
//! with the handlers bypassed.

use std::collections::HashSet;

use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};
use testkit::{Reply, TestStack, spawn_stack};

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

async fn user_id(stack: &TestStack, email: &str) -> String {
    stack
        .sql()
        .await
        .query_one("SELECT id FROM users WHERE email = $1", &[&email])
        .await
        .unwrap()
        .get(0)
}

/// Characters have no API routes yet: made with SQL, as the system role.
async fn character(stack: &TestStack, owner_email: &str, is_public: bool) -> String {
    let owner = user_id(stack, owner_email).await;
    stack
        .sql()
        .await
        .query_one(
            "INSERT INTO characters (user_id, name, prompt, style_type, is_public) \
             VALUES ($1, 'Ember', 'a small red dragon', 'fantasy', $2) RETURNING id",
            &[&owner, &is_public],
        )
        .await
        .unwrap()
        .get(0)
}

async fn set_public(stack: &TestStack, character_id: &str, is_public: bool) {
    stack
        .sql()
        .await
        .execute(
            "UPDATE characters SET is_public = $2 WHERE id = $1",
            &[&character_id, &is_public],
        )
        .await
        .unwrap();
}

async fn count(stack: &TestStack, sql: &str, character_id: &str) -> i64 {
    stack
        .sql()
        .await
        .query_one(sql, &[&character_id])
        .await
        .unwrap()
        .get(0)
}

async fn like_count(stack: &TestStack, character_id: &str) -> i64 {
    count(
        stack,
        "SELECT like_count::bigint FROM characters WHERE id = $1",
        character_id,
    )
    .await
}

async fn like_rows(stack: &TestStack, character_id: &str) -> i64 {
    count(
        stack,
        "SELECT count(*) FROM character_likes WHERE character_id = $1",
        character_id,
    )
    .await
}

async fn rating_rows(stack: &TestStack, character_id: &str) -> i64 {
    count(
        stack,
        "SELECT count(*) FROM character_ratings WHERE character_id = $1",
        character_id,
    )
    .await
}

async fn report_rows(stack: &TestStack, character_id: &str) -> i64 {
    count(
        stack,
        "SELECT count(*) FROM content_reports WHERE character_id = $1",
        character_id,
    )
    .await
}

/// The stored aggregate, checked against the rows it summarises; returns
/// `(rating_count, rating_average)`.
async fn assert_rating_aggregate_matches_rows(
    stack: &TestStack,
    character_id: &str,
) -> (i64, Option<f64>) {
    let row = stack
        .sql()
        .await
        .query_one(
            "SELECT c.rating_count::bigint, c.rating_sum::bigint, c.rating_average::float8, \
                    (SELECT count(*) FROM character_ratings r WHERE r.character_id = c.id), \
                    (SELECT coalesce(sum(rating), 0)::bigint FROM character_ratings r WHERE r.character_id = c.id), \
                    (SELECT round(avg(rating), 2)::float8 FROM character_ratings r WHERE r.character_id = c.id) \
             FROM characters c WHERE c.id = $1",
            &[&character_id],
        )
        .await
        .unwrap();
    let (stored_count, stored_sum, stored_avg): (i64, i64, Option<f64>) =
        (row.get(0), row.get(1), row.get(2));
    let (rows, sum, avg): (i64, i64, Option<f64>) = (row.get(3), row.get(4), row.get(5));
    assert_eq!(stored_count, rows, "rating_count counts the rows");
    assert_eq!(stored_sum, sum, "rating_sum sums the rows");
    assert_eq!(stored_avg, avg, "rating_average is their average");
    assert!(stored_count >= 0);
    (stored_count, stored_avg)
}

/// Everything the social routes could change, for "nothing changed" checks.
async fn social_state(stack: &TestStack) -> Value {
    stack
        .sql()
        .await
        .query_one(
            "SELECT jsonb_build_object( \
               'likes', (SELECT coalesce(jsonb_agg(to_jsonb(l) ORDER BY l.character_id, l.user_id), '[]') FROM character_likes l), \
               'ratings', (SELECT coalesce(jsonb_agg(to_jsonb(r) ORDER BY r.id), '[]') FROM character_ratings r), \
               'reports', (SELECT coalesce(jsonb_agg(to_jsonb(p) ORDER BY p.id), '[]') FROM content_reports p), \
               'characters', (SELECT coalesce(jsonb_agg(to_jsonb(c) ORDER BY c.id), '[]') FROM characters c), \
               'activity', (SELECT count(*) FROM user_activity_logs WHERE activity_type <> 'login'))",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

fn like_path(character_id: &str) -> String {
    format!("/api/v1/characters/{character_id}/like")
}

fn rating_path(character_id: &str) -> String {
    format!("/api/v1/characters/{character_id}/rating")
}

fn ratings_path(character_id: &str) -> String {
    format!("/api/v1/characters/{character_id}/ratings")
}

fn reports_path(character_id: &str) -> String {
    format!("/api/v1/characters/{character_id}/reports")
}

fn assert_status(reply: &Reply, status: u16) {
    assert_eq!(reply.status.as_u16(), status, "body: {}", reply.body);
}

/// Signs in `n` users `user{i}@example.com` concurrently; their tokens in order.
async fn many_users(stack: &TestStack, n: usize) -> Vec<String> {
    let emails: Vec<String> = (0..n).map(|i| format!("user{i}@example.com")).collect();
    join_all(emails.iter().map(|e| stack.sign_in(e))).await
}

// ------------------------------------------------------------------------------------------
// Likes
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn fifty_concurrent_likes_by_fifty_users_count_fifty() {
    let stack = spawn_stack().await;
    stack.sign_in("ann@example.com").await;
    let ember = character(&stack, "ann@example.com", true).await;
    let like = like_path(&ember);
    let tokens = many_users(&stack, 50).await;

    let replies = join_all(
        tokens
            .iter()
            .map(|t| stack.call(Method::PUT, &like, Some(t), None)),
    )
    .await;
    for reply in &replies {
        assert_status(reply, 200);
        assert_eq!(reply.body["liked"], true);
        assert_eq!(reply.body["character_id"], ember.as_str());
        let seen = reply.body["like_count"].as_i64().unwrap();
        assert!((1..=50).contains(&seen), "{}", reply.body);
    }
    assert_eq!(like_count(&stack, &ember).await, 50);
    assert_eq!(like_rows(&stack, &ember).await, 50);
    // The last like to commit saw all fifty.
    assert!(replies.iter().any(|r| r.body["like_count"] == 50));

    let replies = join_all(
        tokens
            .iter()
            .map(|t| stack.call(Method::DELETE, &like, Some(t), None)),
    )
    .await;
    for reply in &replies {
        assert_status(reply, 200);
        assert_eq!(reply.body["liked"], false);
        assert!(reply.body["like_count"].as_i64().unwrap() >= 0);
    }
    assert_eq!(like_count(&stack, &ember).await, 0);
    assert_eq!(like_rows(&stack, &ember).await, 0);
}

#[tokio::test]
async fn liking_twice_keeps_one_like_and_unliking_never_goes_negative() {
    let stack = spawn_stack().await;
    stack.sign_in("ann@example.com").await;
    let bob = stack.sign_in("bob@example.com").await;
    let ember = character(&stack, "ann@example.com", true).await;
    let like = like_path(&ember);

    let first = stack.call(Method::PUT, &like, Some(&bob), None).await;
    assert_status(&first, 200);
    assert_eq!(
        first.body,
        json!({"character_id": ember, "liked": true, "like_count": 1})
    );
    // Ten more at once: still one like.
    let replies = join_all((0..10).map(|_| stack.call(Method::PUT, &like, Some(&bob), None))).await;
    for reply in &replies {
        assert_status(reply, 200);
        assert_eq!(reply.body["like_count"], 1);
    }
    assert_eq!(like_rows(&stack, &ember).await, 1);
    assert_eq!(like_count(&stack, &ember).await, 1);

    let unliked = stack.call(Method::DELETE, &like, Some(&bob), None).await;
    assert_status(&unliked, 200);
    assert_eq!(
        unliked.body,
        json!({"character_id": ember, "liked": false, "like_count": 0})
    );
    // Unliking again, also concurrently, is a no-op, never a negative count.
    let replies =
        join_all((0..10).map(|_| stack.call(Method::DELETE, &like, Some(&bob), None))).await;
    for reply in &replies {
        assert_status(reply, 200);
        assert_eq!(reply.body["like_count"], 0);
    }
    assert_eq!(like_count(&stack, &ember).await, 0);
    assert_eq!(like_rows(&stack, &ember).await, 0);

    // Liking and unliking raced against each other: every request succeeds and
    // says what it did, and they end in a consistent state.
    let methods: Vec<Method> = (0..20)
        .map(|i| {
            if i % 2 == 0 {
                Method::PUT
            } else {
                Method::DELETE
            }
        })
        .collect();
    let replies = join_all(
        methods
            .iter()
            .map(|method| stack.call(method.clone(), &like, Some(&bob), None)),
    )
    .await;
    for (method, reply) in methods.iter().zip(&replies) {
        assert_status(reply, 200);
        assert_eq!(reply.body["character_id"], ember.as_str(), "{method}");
        assert_eq!(reply.body["liked"], *method == Method::PUT, "{method}");
        // Bob is the only one who can like it: the count a request read is
        // 0 or 1 (one that changed nothing may read a racing one's commit).
        let seen = reply.body["like_count"].as_i64();
        assert!(matches!(seen, Some(0 | 1)), "{method}: {}", reply.body);
    }
    let rows = like_rows(&stack, &ember).await;
    assert!(rows <= 1);
    assert_eq!(like_count(&stack, &ember).await, rows);
    // The race started unliked, so some like inserted the row and read its own
    // count of 1; if it ended unliked, some unlike deleted it and read 0.
    let saw = |method: Method, count: i64| {
        methods
            .iter()
            .zip(&replies)
            .any(|(m, r)| *m == method && r.body["like_count"] == count)
    };
    assert!(saw(Method::PUT, 1), "no like took effect: {replies:?}");
    if rows == 0 {
        assert!(saw(Method::DELETE, 0), "no unlike took effect: {replies:?}");
    }
}

#[tokio::test]
async fn owners_may_like_their_own_private_character() {
    let stack = spawn_stack().await;
    let ann = stack.sign_in("ann@example.com").await;
    let secret = character(&stack, "ann@example.com", false).await;
    let reply = stack
        .call(Method::PUT, &like_path(&secret), Some(&ann), None)
        .await;
    assert_status(&reply, 200);
    assert_eq!(reply.body["like_count"], 1);
}

// ------------------------------------------------------------------------------------------
// Ratings
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_rating_is_created_then_replaced_and_the_aggregate_follows_the_rows() {
    let stack = spawn_stack().await;
    stack.sign_in("ann@example.com").await;
    let bob = stack.sign_in("bob@example.com").await;
    let cat = stack.sign_in("cat@example.com").await;
    let ember = character(&stack, "ann@example.com", true).await;
    let bob_id = user_id(&stack, "bob@example.com").await;

    let created = stack
        .call(
            Method::PUT,
            &rating_path(&ember),
            Some(&bob),
            Some(json!({"rating": 4})),
        )
        .await;
    assert_status(&created, 201);
    let body = &created.body;
    assert_eq!(body["character_id"], ember.as_str());
    assert_eq!(body["user_id"], bob_id.as_str());
    assert_eq!(body["rating"], 4);
    assert_eq!(body["review_text"], Value::Null);
    assert_eq!(body["rating_count"], 1);
    assert_eq!(body["rating_average"], 4.0);
    assert!(body["created_at"].is_string() && body["updated_at"].is_string());
    let rating_id = body["id"].as_str().unwrap().to_string();
    assert_eq!(
        assert_rating_aggregate_matches_rows(&stack, &ember).await.0,
        1
    );

    let updated = stack
        .call(
            Method::PUT,
            &rating_path(&ember),
            Some(&bob),
            Some(json!({"rating": 2, "review_text": "Cute.\nBut the wings are odd."})),
        )
        .await;
    assert_status(&updated, 200);
    assert_eq!(
        updated.body["id"],
        rating_id.as_str(),
        "same rating, replaced"
    );
    assert_eq!(updated.body["rating"], 2);
    assert_eq!(updated.body["review_text"], "Cute.\nBut the wings are odd.");
    assert_eq!(updated.body["rating_count"], 1);
    assert_eq!(updated.body["rating_average"], 2.0);
    assert_eq!(rating_rows(&stack, &ember).await, 1);
    assert_rating_aggregate_matches_rows(&stack, &ember).await;

    let second = stack
        .call(
            Method::PUT,
            &rating_path(&ember),
            Some(&cat),
            Some(json!({"rating": 5, "review_text": "Perfect"})),
        )
        .await;
    assert_status(&second, 201);
    assert_eq!(second.body["rating_count"], 2);
    assert_eq!(second.body["rating_average"], 3.5);
    assert_rating_aggregate_matches_rows(&stack, &ember).await;

    // Replacing without a review clears it (PUT replaces the whole rating).
    let cleared = stack
        .call(
            Method::PUT,
            &rating_path(&ember),
            Some(&bob),
            Some(json!({"rating": 3})),
        )
        .await;
    assert_status(&cleared, 200);
    assert_eq!(cleared.body["review_text"], Value::Null);
    assert_eq!(cleared.body["rating_average"], 4.0);

    let deleted = stack
        .call(Method::DELETE, &rating_path(&ember), Some(&bob), None)
        .await;
    assert_status(&deleted, 204);
    assert_eq!(deleted.body, Value::Null);
    assert_eq!(
        assert_rating_aggregate_matches_rows(&stack, &ember).await,
        (1, Some(5.0))
    );
    stack
        .call(Method::DELETE, &rating_path(&ember), Some(&bob), None)
        .await
        .assert_problem(404);

    stack
        .call(Method::DELETE, &rating_path(&ember), Some(&cat), None)
        .await;
    assert_eq!(
        assert_rating_aggregate_matches_rows(&stack, &ember).await,
        (0, None)
    );
    let summary = stack.get(&ratings_path(&ember), None).await;
    assert_eq!(
        summary.body["summary"],
        json!({"rating_count": 0, "rating_average": null})
    );
}

#[tokio::test]
async fn twenty_concurrent_raters_keep_the_aggregate_exact() {
    let stack = spawn_stack().await;
    stack.sign_in("ann@example.com").await;
    let ember = character(&stack, "ann@example.com", true).await;
    let rating = rating_path(&ember);
    let tokens = many_users(&stack, 20).await;

    let replies = join_all(tokens.iter().enumerate().map(|(i, t)| {
        stack.call(
            Method::PUT,
            &rating,
            Some(t),
            Some(json!({"rating": i % 5 + 1})),
        )
    }))
    .await;
    for reply in &replies {
        assert_status(reply, 201);
    }
    // 20 ratings, four of each star: average 3.
    assert_eq!(
        assert_rating_aggregate_matches_rows(&stack, &ember).await,
        (20, Some(3.0))
    );

    // Now at once: even raters change their mind (twice, racing themselves),
    // odd raters withdraw.
    let requests: Vec<(usize, Method, Option<&str>)> = (0..tokens.len())
        .flat_map(|i| {
            if i % 2 == 0 {
                vec![
                    (i, Method::PUT, None),
                    (i, Method::PUT, Some("on reflection")),
                ]
            } else {
                vec![(i, Method::DELETE, None)]
            }
        })
        .collect();
    let replies = join_all(requests.iter().map(|(i, method, review)| {
        let body = (*method == Method::PUT).then(|| match review {
            Some(text) => json!({"rating": 5, "review_text": text}),
            None => json!({"rating": 5}),
        });
        stack.call(method.clone(), &rating, Some(&tokens[*i]), body)
    }))
    .await;
    // Every rating existed before the race: each change replaces it (200,
    // never a second 201) and each withdrawal finds it (204, never a 404).
    for ((i, method, review), reply) in requests.iter().zip(&replies) {
        if *method == Method::PUT {
            assert_status(reply, 200);
            assert_eq!(reply.body["rating"], 5, "rater {i}: {}", reply.body);
            assert_eq!(reply.body["review_text"], json!(review), "rater {i}");
            // What the aggregate was when it committed: between all withdrawals
            // done (10 ratings) and none (20).
            let count = reply.body["rating_count"].as_i64().unwrap_or(-1);
            assert!((10..=20).contains(&count), "rater {i}: {}", reply.body);
        } else {
            assert_status(reply, 204);
        }
    }
    assert_eq!(
        assert_rating_aggregate_matches_rows(&stack, &ember).await,
        (10, Some(5.0))
    );
    // Each even rater's one row holds one of the two texts they sent.
    let texts: Vec<Option<String>> = stack
        .sql()
        .await
        .query(
            "SELECT review_text FROM character_ratings WHERE character_id = $1",
            &[&ember],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(texts.len(), 10);
    for text in &texts {
        assert!(
            matches!(text.as_deref(), None | Some("on reflection")),
            "{text:?}"
        );
    }
}

#[tokio::test]
async fn rating_your_own_character_is_forbidden() {
    let stack = spawn_stack().await;
    let ann = stack.sign_in("ann@example.com").await;
    for is_public in [true, false] {
        let mine = character(&stack, "ann@example.com", is_public).await;
        let reply = stack
            .call(
                Method::PUT,
                &rating_path(&mine),
                Some(&ann),
                Some(json!({"rating": 5})),
            )
            .await;
        reply.assert_problem(403);
        assert!(
            reply.body["detail"]
                .as_str()
                .unwrap()
                .contains("own character"),
            "{}",
            reply.body
        );
        assert_eq!(rating_rows(&stack, &mine).await, 0);
        assert_rating_aggregate_matches_rows(&stack, &mine).await;
    }
}

#[tokio::test]
async fn the_ratings_list_walks_every_rating_once_newest_first_and_never_shows_emails() {
    let stack = spawn_stack().await;
    stack.sign_in("ann@example.com").await;
    let ember = character(&stack, "ann@example.com", true).await;
    let mut expected = HashSet::new();
    for i in 0..7 {
        let token = stack
            .user(&format!("rater{i}@example.com"), &format!("rater_{i}"))
            .await;
        let reply = stack
            .call(
                Method::PUT,
                &rating_path(&ember),
                Some(&token),
                Some(json!({"rating": i % 5 + 1, "review_text": format!("review {i}")})),
            )
            .await;
        assert_status(&reply, 201);
        expected.insert(reply.body["id"].as_str().unwrap().to_string());
    }
    // Ties on created_at are broken by id, so pages neither repeat nor skip.
    stack
        .sql()
        .await
        .execute(
            "UPDATE character_ratings SET created_at = '2024-05-01T12:00:00Z' \
             WHERE id IN (SELECT id FROM character_ratings ORDER BY id LIMIT 4)",
            &[],
        )
        .await
        .unwrap();
    // A rating of another character never shows up here.
    let other = character(&stack, "ann@example.com", true).await;
    let rater0 = stack.token("rater0@example.com");
    stack
        .call(
            Method::PUT,
            &rating_path(&other),
            Some(&rater0),
            Some(json!({"rating": 1})),
        )
        .await;

    let mut seen = Vec::new();
    let mut positions = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("{}?limit=3&cursor={c}", ratings_path(&ember)),
            None => format!("{}?limit=3", ratings_path(&ember)),
        };
        // Anonymous callers read public characters' ratings.
        let page = stack.get(&path, None).await;
        assert_status(&page, 200);
        pages += 1;
        let text = page.body.to_string();
        assert!(!text.contains("@example.com"), "no email leaks: {text}");
        assert!(!text.contains("user_id"), "no rater ids: {text}");
        assert_eq!(
            page.body["summary"],
            json!({"rating_count": 7, "rating_average": 2.57})
        );
        for item in page.body["items"].as_array().unwrap() {
            let keys: HashSet<&str> = item
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.as_str())
                .collect();
            assert_eq!(
                keys,
                HashSet::from([
                    "id",
                    "rating",
                    "review_text",
                    "created_at",
                    "updated_at",
                    "rater"
                ])
            );
            let rater_keys: HashSet<&str> = item["rater"]
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.as_str())
                .collect();
            assert_eq!(rater_keys, HashSet::from(["username", "display_name"]));
            assert!(
                item["rater"]["username"]
                    .as_str()
                    .unwrap()
                    .starts_with("rater_")
            );
            seen.push(item["id"].as_str().unwrap().to_string());
            positions.push((
                chrono::DateTime::parse_from_rfc3339(item["created_at"].as_str().unwrap()).unwrap(),
                item["id"].as_str().unwrap().to_string(),
            ));
        }
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 7, "no rating twice");
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), expected);
    let mut sorted = positions.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(positions, sorted, "newest first, ties by id");

    // Signed-in callers see the same list.
    let page = stack.get(&ratings_path(&ember), Some(&rater0)).await;
    assert_status(&page, 200);
    assert_eq!(page.body["items"].as_array().unwrap().len(), 7);
    assert_eq!(page.body["next_cursor"], Value::Null);

    // Cursors are opaque but client-held: crafted ones are refused, never a 500.
    use base64::Engine;
    let crafted =
        |key: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.to_string());
    let nul_id = crafted(json!({"at": "2024-05-01T12:00:00Z", "id": "a\u{0}b"}));
    let ancient = crafted(json!({"at": "-200000-01-01T00:00:00Z", "id": "x"}));
    let far_future = crafted(json!({"at": "+200000-01-01T00:00:00Z", "id": "x"}));
    let huge_id = crafted(json!({"at": "2024-05-01T12:00:00Z", "id": "x".repeat(5000)}));
    for query in [
        "limit=0".to_string(),
        "limit=101".to_string(),
        "limit=ten".to_string(),
        "cursor=not-a-cursor".to_string(),
        format!("cursor={nul_id}"),
        format!("cursor={ancient}"),
        format!("cursor={far_future}"),
        format!("cursor={huge_id}"),
    ] {
        stack
            .get(&format!("{}?{query}", ratings_path(&ember)), None)
            .await
            .assert_problem(422);
    }
}

// ------------------------------------------------------------------------------------------
// Reports
// ------------------------------------------------------------------------------------------

async fn open_report_count(stack: &TestStack, character_id: &str) -> i64 {
    count(
        stack,
        "SELECT open_report_count::bigint FROM characters WHERE id = $1",
        character_id,
    )
    .await
}

#[tokio::test]
async fn reports_are_filed_once_per_open_report_counted_by_reporter_and_logged() {
    let stack = spawn_stack().await;
    stack.sign_in("ann@example.com").await;
    let bob = stack.sign_in("bob@example.com").await;
    let cat = stack.sign_in("cat@example.com").await;
    let ember = character(&stack, "ann@example.com", true).await;
    let bob_id = user_id(&stack, "bob@example.com").await;

    let filed = stack
        .call(
            Method::POST,
            &reports_path(&ember),
            Some(&bob),
            Some(json!({"reason": "spam", "details": "Posted forty times.\nSame image."})),
        )
        .await;
    assert_status(&filed, 201);
    let keys: HashSet<&str> = filed
        .body
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        keys,
        HashSet::from([
            "id",
            "character_id",
            "reason",
            "details",
            "status",
            "created_at"
        ])
    );
    assert_eq!(filed.body["character_id"], ember.as_str());
    assert_eq!(filed.body["reason"], "spam");
    assert_eq!(filed.body["details"], "Posted forty times.\nSame image.");
    assert_eq!(filed.body["status"], "open");
    let report_id = filed.body["id"].as_str().unwrap().to_string();

    // Again, with another reason: the open report stands, nothing new is stored.
    let again = stack
        .call(
            Method::POST,
            &reports_path(&ember),
            Some(&bob),
            Some(json!({"reason": "hate"})),
        )
        .await;
    assert_status(&again, 200);
    assert_eq!(again.body["id"], report_id.as_str());
    assert_eq!(again.body["reason"], "spam");
    assert_eq!(report_rows(&stack, &ember).await, 1);
    assert_eq!(open_report_count(&stack, &ember).await, 1);

    // Five at once by one reporter on a fresh character: one report.
    let other = character(&stack, "ann@example.com", true).await;
    let other_reports = reports_path(&other);
    let replies = join_all((0..5).map(|_| {
        stack.call(
            Method::POST,
            &other_reports,
            Some(&cat),
            Some(json!({"reason": "violence"})),
        )
    }))
    .await;
    let mut statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    statuses.sort();
    assert_eq!(statuses, [200, 200, 200, 200, 201]);
    let ids: HashSet<&str> = replies
        .iter()
        .map(|r| r.body["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(report_rows(&stack, &other).await, 1);

    // Distinct reporters count, repeated reports do not.
    let by_cat = stack
        .call(
            Method::POST,
            &reports_path(&ember),
            Some(&cat),
            Some(json!({"reason": "copyright"})),
        )
        .await;
    assert_status(&by_cat, 201);
    assert_eq!(open_report_count(&stack, &ember).await, 2);

    // Once a moderator closes Bob's report, he may file a new one.
    stack
        .sql()
        .await
        .execute(
            "UPDATE content_reports SET status = 'dismissed' WHERE id = $1",
            &[&report_id],
        )
        .await
        .unwrap();
    assert_eq!(open_report_count(&stack, &ember).await, 1);
    let refiled = stack
        .call(
            Method::POST,
            &reports_path(&ember),
            Some(&bob),
            Some(json!({"reason": "other"})),
        )
        .await;
    assert_status(&refiled, 201);
    assert_ne!(refiled.body["id"], report_id.as_str());
    assert_eq!(open_report_count(&stack, &ember).await, 2);
    assert_eq!(report_rows(&stack, &ember).await, 3);

    // One activity row per report filed (four), none for the repeats.
    let logs = stack
        .sql()
        .await
        .query(
            "SELECT user_id, entity_type, entity_id, metadata, session_id \
             FROM user_activity_logs WHERE activity_type = 'report_filed' ORDER BY created_at",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(logs.len(), 4);
    let bobs: Vec<_> = logs
        .iter()
        .filter(|l| l.get::<_, Option<String>>(0).as_deref() == Some(bob_id.as_str()))
        .collect();
    assert_eq!(bobs.len(), 2);
    assert_eq!(
        bobs[0].get::<_, Option<String>>(1).as_deref(),
        Some("character")
    );
    assert_eq!(
        bobs[0].get::<_, Option<String>>(2).as_deref(),
        Some(ember.as_str())
    );
    let metadata: Value = bobs[0].get(3);
    assert_eq!(metadata["reason"], "spam");
    assert_eq!(metadata["report_id"], report_id.as_str());
    assert!(bobs[0].get::<_, Option<String>>(4).is_some(), "request id");
}

#[tokio::test]
async fn concurrent_reports_by_many_users_are_all_counted() {
    let stack = spawn_stack().await;
    stack.sign_in("ann@example.com").await;
    let ember = character(&stack, "ann@example.com", true).await;
    let reports = reports_path(&ember);
    let tokens = many_users(&stack, 20).await;
    let replies = join_all(tokens.iter().map(|t| {
        stack.call(
            Method::POST,
            &reports,
            Some(t),
            Some(json!({"reason": "spam"})),
        )
    }))
    .await;
    for reply in &replies {
        assert_status(reply, 201);
    }
    assert_eq!(report_rows(&stack, &ember).await, 20);
    assert_eq!(open_report_count(&stack, &ember).await, 20);
}

#[tokio::test]
async fn a_report_and_its_activity_row_commit_or_roll_back_together() {
    let stack = spawn_stack().await;
    stack.sign_in("ann@example.com").await;
    let bob = stack.sign_in("bob@example.com").await;
    let ember = character(&stack, "ann@example.com", true).await;

    // Make the audit insert fail: the report must not survive without it.
    let sql = stack.sql().await;
    sql.batch_execute(
        "CREATE FUNCTION refuse_report_logs() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
           IF NEW.activity_type = 'report_filed' THEN RAISE EXCEPTION 'audit store down'; END IF; \
           RETURN NEW; \
         END $$; \
         CREATE TRIGGER refuse_report_logs BEFORE INSERT ON user_activity_logs \
           FOR EACH ROW EXECUTE FUNCTION refuse_report_logs();",
    )
    .await
    .unwrap();
    let failed = stack
        .call(
            Method::POST,
            &reports_path(&ember),
            Some(&bob),
            Some(json!({"reason": "spam"})),
        )
        .await;
    failed.assert_problem(500);
    assert_eq!(report_rows(&stack, &ember).await, 0);
    assert_eq!(open_report_count(&stack, &ember).await, 0);

    sql.batch_execute("DROP TRIGGER refuse_report_logs ON user_activity_logs")
        .await
        .unwrap();
    let filed = stack
        .call(
            Method::POST,
            &reports_path(&ember),
            Some(&bob),
            Some(json!({"reason": "spam"})),
        )
        .await;
    assert_status(&filed, 201);
    assert_eq!(report_rows(&stack, &ember).await, 1);
    assert_eq!(
        count(
            &stack,
            "SELECT count(*) FROM user_activity_logs WHERE activity_type = 'report_filed' AND entity_id = $1",
            &ember
        )
        .await,
        1
    );
}

// ------------------------------------------------------------------------------------------
// Visibility and authentication
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn someone_elses_private_character_is_404_on_every_route() {
    let stack = spawn_stack().await;
    let ann = stack.sign_in("ann@example.com").await;
    let bob = stack.sign_in("bob@example.com").await;
    let secret = character(&stack, "ann@example.com", false).await;
    // Ann's own like and a rating stored by the system, so there is something to hide.
    stack
        .call(Method::PUT, &like_path(&secret), Some(&ann), None)
        .await;
    let bob_id = user_id(&stack, "bob@example.com").await;
    stack
        .sql()
        .await
        .execute(
            "INSERT INTO character_ratings (character_id, user_id, rating) VALUES ($1, $2, 3)",
            &[&secret, &bob_id],
        )
        .await
        .unwrap();
    let before = social_state(&stack).await;

    let unknown = "00000000-0000-0000-0000-000000000000".to_string();
    for id in [secret.clone(), unknown, "%00".to_string(), "x".repeat(200)] {
        let calls = [
            (Method::PUT, like_path(&id), None),
            (Method::DELETE, like_path(&id), None),
            (Method::PUT, rating_path(&id), Some(json!({"rating": 5}))),
            (Method::DELETE, rating_path(&id), None),
            (Method::GET, ratings_path(&id), None),
            (
                Method::POST,
                reports_path(&id),
                Some(json!({"reason": "spam"})),
            ),
        ];
        for (method, path, body) in calls {
            let reply = stack.call(method.clone(), &path, Some(&bob), body).await;
            reply.assert_problem(404);
            assert_eq!(
                reply.body["detail"], "no such character",
                "{method} {path}: private and unknown look alike"
            );
        }
        stack
            .get(&ratings_path(&id), None)
            .await
            .assert_problem(404);
    }
    assert_eq!(before, social_state(&stack).await, "nothing changed");

    // The owner sees it all.
    let list = stack.get(&ratings_path(&secret), Some(&ann)).await;
    assert_status(&list, 200);
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn anonymous_callers_read_public_ratings_but_cannot_write() {
    let stack = spawn_stack().await;
    stack.sign_in("ann@example.com").await;
    let bob = stack.sign_in("bob@example.com").await;
    let ember = character(&stack, "ann@example.com", true).await;
    stack
        .call(
            Method::PUT,
            &rating_path(&ember),
            Some(&bob),
            Some(json!({"rating": 5, "review_text": "Lovely"})),
        )
        .await;
    let before = social_state(&stack).await;

    let calls = [
        (Method::PUT, like_path(&ember), None),
        (Method::DELETE, like_path(&ember), None),
        (Method::PUT, rating_path(&ember), Some(json!({"rating": 5}))),
        (Method::DELETE, rating_path(&ember), None),
        (
            Method::POST,
            reports_path(&ember),
            Some(json!({"reason": "spam"})),
        ),
    ];
    for (method, path, body) in calls {
        stack
            .call(method, &path, None, body)
            .await
            .assert_problem(401);
    }
    assert_eq!(before, social_state(&stack).await);

    let list = stack.get(&ratings_path(&ember), None).await;
    assert_status(&list, 200);
    assert_eq!(list.body["items"][0]["review_text"], "Lovely");
    assert_eq!(list.body["summary"]["rating_count"], 1);

    // A token for an identity that never signed in reads like an anonymous caller.
    let stranger = stack.token("stranger@example.com");
    assert_status(
        &stack.get(&ratings_path(&ember), Some(&stranger)).await,
        200,
    );
    stack
        .call(Method::PUT, &like_path(&ember), Some(&stranger), None)
        .await
        .assert_problem(404);
}

#[tokio::test]
async fn a_character_made_private_hides_its_likes_and_ratings_from_others() {
    let stack = spawn_stack().await;
    let ann = stack.sign_in("ann@example.com").await;
    let bob = stack.sign_in("bob@example.com").await;
    let cat = stack.sign_in("cat@example.com").await;
    let ember = character(&stack, "ann@example.com", true).await;
    stack
        .call(Method::PUT, &like_path(&ember), Some(&cat), None)
        .await;
    stack
        .call(
            Method::PUT,
            &rating_path(&ember),
            Some(&cat),
            Some(json!({"rating": 4})),
        )
        .await;
    set_public(&stack, &ember, false).await;

    for token in [&bob, &cat] {
        stack
            .get(&ratings_path(&ember), Some(token))
            .await
            .assert_problem(404);
        stack
            .call(Method::PUT, &like_path(&ember), Some(token), None)
            .await
            .assert_problem(404);
    }
    stack
        .get(&ratings_path(&ember), None)
        .await
        .assert_problem(404);
    let owner_view = stack.get(&ratings_path(&ember), Some(&ann)).await;
    assert_status(&owner_view, 200);
    assert_eq!(owner_view.body["items"].as_array().unwrap().len(), 1);

    // RLS hides the rows from Bob even if a handler forgot to check.
    let bob_id = user_id(&stack, "bob@example.com").await;
    let mut sql = stack.sql().await;
    let tx = as_api(&mut sql, &bob_id).await;
    for table in ["character_likes", "character_ratings"] {
        let n: i64 = tx
            .query_one(
                &format!("SELECT count(*) FROM {table} WHERE character_id = $1"),
                &[&ember],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{table}");
    }
}

// ------------------------------------------------------------------------------------------
// Bad input
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_input_is_a_problem_and_changes_nothing() {
    let stack = spawn_stack().await;
    stack.sign_in("ann@example.com").await;
    let bob = stack.sign_in("bob@example.com").await;
    let ember = character(&stack, "ann@example.com", true).await;
    let bob_id = user_id(&stack, "bob@example.com").await;
    let rated = stack
        .call(
            Method::PUT,
            &rating_path(&ember),
            Some(&bob),
            Some(json!({"rating": 3, "review_text": "fine"})),
        )
        .await;
    assert_status(&rated, 201);
    let before = social_state(&stack).await;

    let long = "x".repeat(2001);
    let rating_bodies = [
        (json!({"rating": 0}), "rating"),
        (json!({"rating": 6}), "rating"),
        (json!({"rating": -3}), "rating"),
        (json!({"rating": 2.5}), "rating"),
        (json!({"rating": "5"}), "rating"),
        (json!({"rating": null}), "rating"),
        (json!({}), "rating"),
        (json!({"review_text": "no stars"}), "rating"),
        (json!({"rating": 4, "review_text": long}), "review_text"),
        (json!({"rating": 4, "review_text": ["a"]}), "review_text"),
        (
            json!({"rating": 4, "review_text": "bell\u{7}"}),
            "review_text",
        ),
        (json!({"rating": 4, "stars": 5}), "stars"),
        (json!({"rating": 4, "user_id": bob_id}), "user_id"),
        (json!({"rating": 4, "character_id": ember}), "character_id"),
        (json!({"rating": 4, "id": "r-1"}), "id"),
        (json!({"rating": 4, "rating_count": 100}), "rating_count"),
        (
            json!({"rating": 4, "created_at": "2020-01-01T00:00:00Z"}),
            "created_at",
        ),
    ];
    for (body, field) in rating_bodies {
        let reply = stack
            .call(
                Method::PUT,
                &rating_path(&ember),
                Some(&bob),
                Some(body.clone()),
            )
            .await;
        reply.assert_problem(422);
        assert_eq!(reply.body["errors"][0]["field"], field, "{body}");
    }

    let report_bodies = [
        (json!({}), "reason"),
        (json!({"reason": "boring"}), "reason"),
        (json!({"reason": null}), "reason"),
        (json!({"reason": 7}), "reason"),
        (json!({"reason": "spam", "details": long}), "details"),
        (json!({"reason": "spam", "details": 5}), "details"),
        (json!({"reason": "spam", "status": "dismissed"}), "status"),
        (
            json!({"reason": "spam", "reporter_id": bob_id}),
            "reporter_id",
        ),
        (
            json!({"reason": "spam", "character_id": ember}),
            "character_id",
        ),
        (
            json!({"reason": "spam", "resolution_note": "ok"}),
            "resolution_note",
        ),
        (json!({"reason": "spam", "urgent": true}), "urgent"),
    ];
    for (body, field) in report_bodies {
        let reply = stack
            .call(
                Method::POST,
                &reports_path(&ember),
                Some(&bob),
                Some(body.clone()),
            )
            .await;
        reply.assert_problem(422);
        assert_eq!(reply.body["errors"][0]["field"], field, "{body}");
    }

    // Bodies that are not JSON objects at all.
    for path in [rating_path(&ember), reports_path(&ember)] {
        let method = if path.ends_with("rating") {
            reqwest::Method::PUT
        } else {
            reqwest::Method::POST
        };
        let send = |body: &'static str, content_type: Option<&'static str>| {
            let mut request = stack
                .http
                .request(method.clone(), format!("{}{path}", stack.base_url))
                .bearer_auth(&bob)
                .body(body);
            if let Some(ct) = content_type {
                request = request.header("content-type", ct);
            }
            async move { testkit::read(request.send().await.unwrap()).await }
        };
        send("{\"rating\": 4", Some("application/json"))
            .await
            .assert_problem(400);
        send("[4]", Some("application/json"))
            .await
            .assert_problem(422);
        send("\"4\"", Some("application/json"))
            .await
            .assert_problem(422);
        send("", Some("application/json")).await.assert_problem(400);
        send("{\"rating\": 4}", None).await.assert_problem(415);
        send("rating=4", Some("application/x-www-form-urlencoded"))
            .await
            .assert_problem(415);
    }

    assert_eq!(before, social_state(&stack).await, "nothing changed");
}

// ------------------------------------------------------------------------------------------
// Row-level security, with the handlers bypassed
// ------------------------------------------------------------------------------------------

/// A transaction as the API role, on behalf of `user_id`: what `begin_as` does.
async fn as_api<'a>(
    client: &'a mut tokio_postgres::Client,
    user_id: &str,
) -> tokio_postgres::Transaction<'a> {
    let tx = client.transaction().await.unwrap();
    tx.execute(
        "SELECT set_config('role', 'app_api', true), set_config('app.user_id', $1, true)",
        &[&user_id],
    )
    .await
    .unwrap();
    tx
}

#[tokio::test]
async fn row_level_security_stops_what_a_careless_handler_would_let_through() {
    let stack = spawn_stack().await;
    stack.sign_in("ann@example.com").await;
    stack.sign_in("bob@example.com").await;
    stack.sign_in("cat@example.com").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let bob_id = user_id(&stack, "bob@example.com").await;
    let cat_id = user_id(&stack, "cat@example.com").await;
    let secret = character(&stack, "ann@example.com", false).await;
    let public = character(&stack, "cat@example.com", true).await;
    // As the system role: Ann likes her own character, Cat rated it while it
    // was public, Ann reported Cat's character.
    stack
        .sql()
        .await
        .batch_execute(&format!(
            "INSERT INTO character_likes (character_id, user_id) VALUES ('{secret}', '{ann_id}'); \
             INSERT INTO character_ratings (character_id, user_id, rating) VALUES ('{secret}', '{cat_id}', 2); \
             INSERT INTO content_reports (character_id, reporter_id, reason) VALUES ('{public}', '{ann_id}', 'spam');"
        ))
        .await
        .unwrap();

    let mut sql = stack.sql().await;

    // Control: Ann, as app_api, sees all three rows, so the zeros below mean RLS.
    {
        let tx = as_api(&mut sql, &ann_id).await;
        let row = tx
            .query_one(
                "SELECT (SELECT count(*) FROM character_likes WHERE character_id = $1), \
                        (SELECT count(*) FROM character_ratings WHERE character_id = $1), \
                        (SELECT count(*) FROM content_reports)",
                &[&secret],
            )
            .await
            .unwrap();
        assert_eq!(
            (
                row.get::<_, i64>(0),
                row.get::<_, i64>(1),
                row.get::<_, i64>(2)
            ),
            (1, 1, 1)
        );
        tx.rollback().await.unwrap();
    }

    // Bob reads nothing of Ann's private character, nor Ann's reports.
    {
        let tx = as_api(&mut sql, &bob_id).await;
        let row = tx
            .query_one(
                "SELECT (SELECT count(*) FROM characters WHERE id = $1), \
                        (SELECT count(*) FROM character_likes WHERE character_id = $1), \
                        (SELECT count(*) FROM character_ratings WHERE character_id = $1), \
                        (SELECT count(*) FROM content_reports)",
                &[&secret],
            )
            .await
            .unwrap();
        assert_eq!(
            (
                row.get::<_, i64>(0),
                row.get::<_, i64>(1),
                row.get::<_, i64>(2),
                row.get::<_, i64>(3)
            ),
            (0, 0, 0, 0)
        );
        tx.rollback().await.unwrap();
    }

    // Bob cannot write for Ann's private character, nor in anyone else's name.
    // (statement, character id, user id) for each write.
    let refused_writes = [
        (
            "INSERT INTO character_likes (character_id, user_id) VALUES ($1, $2)",
            &secret,
            &bob_id,
        ),
        (
            "INSERT INTO character_ratings (character_id, user_id, rating) VALUES ($1, $2, 5)",
            &secret,
            &bob_id,
        ),
        (
            "INSERT INTO content_reports (character_id, reporter_id, reason) VALUES ($1, $2, 'spam')",
            &secret,
            &bob_id,
        ),
        (
            "INSERT INTO character_likes (character_id, user_id) VALUES ($1, $2)",
            &public,
            &ann_id,
        ),
        (
            "INSERT INTO character_ratings (character_id, user_id, rating) VALUES ($1, $2, 1)",
            &public,
            &ann_id,
        ),
        // Column privileges: a counter is not the API's to write.
        (
            "UPDATE characters SET like_count = 1000 WHERE id = $1 AND user_id <> $2",
            &public,
            &bob_id,
        ),
    ];
    for (statement, character_id, user_id) in refused_writes {
        let tx = as_api(&mut sql, &bob_id).await;
        let err = tx
            .execute(statement, &[character_id, user_id])
            .await
            .expect_err(statement);
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{statement}: {err}"
        );
        tx.rollback().await.unwrap();
    }

    // Bob's updates and deletes of others' rows touch nothing.
    {
        let tx = as_api(&mut sql, &bob_id).await;
        let touched = tx
            .execute(
                "UPDATE character_ratings SET rating = 5 WHERE character_id = $1",
                &[&secret],
            )
            .await
            .unwrap()
            + tx.execute(
                "DELETE FROM character_likes WHERE character_id = $1",
                &[&secret],
            )
            .await
            .unwrap()
            + tx.execute("DELETE FROM character_ratings", &[])
                .await
                .unwrap();
        assert_eq!(touched, 0);
        tx.commit().await.unwrap();
    }
    assert_eq!(like_rows(&stack, &secret).await, 1);
    assert_eq!(rating_rows(&stack, &secret).await, 1);
}

/// `user_profiles` behind row-level security (V18), with the handlers bypassed: as
/// `app_api` on behalf of another user, a private profile's row is invisible and cannot be
/// written; a public one is readable, not writable; the owner reads and writes their own.
#[tokio::test]
async fn profiles_follow_their_visibility_under_row_level_security() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let cat = stack.user("cat@example.com", "cat").await;
    stack.sign_in("bob@example.com").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let bob_id = user_id(&stack, "bob@example.com").await;
    let cat_id = user_id(&stack, "cat@example.com").await;
    for (token, first_name) in [(&ann, "Annabel"), (&cat, "Catriona")] {
        let reply = stack
            .call(
                Method::PUT,
                "/api/v1/me/profile",
                Some(token),
                Some(json!({"first_name": first_name, "bio": "hello"})),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["first_name"], first_name);
    }
    // Ann keeps the default (private); Cat makes hers public.
    let reply = stack
        .call(
            Method::PATCH,
            "/api/v1/me",
            Some(&cat),
            Some(json!({"profile_visibility": "public"})),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    let mut sql = stack.sql().await;
    {
        let tx = as_api(&mut sql, &bob_id).await;
        let visible: Vec<String> = tx
            .query("SELECT user_id FROM user_profiles ORDER BY user_id", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert!(
            !visible.contains(&ann_id),
            "Ann's private profile is invisible"
        );
        assert!(
            visible.contains(&cat_id),
            "Cat's public profile is readable"
        );
        let updated = tx
            .execute(
                "UPDATE user_profiles SET bio = 'defaced' WHERE user_id = ANY($1)",
                &[&vec![ann_id.clone(), cat_id.clone()]],
            )
            .await
            .unwrap();
        assert_eq!(updated, 0, "no one else's row is writable");
        tx.rollback().await.unwrap();
    }
    {
        // Nor can a row be made for someone else, nor deleted.
        let tx = as_api(&mut sql, &bob_id).await;
        let err = tx
            .execute(
                "INSERT INTO user_profiles (user_id, bio) VALUES ($1, 'mine now')",
                &[&ann_id],
            )
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{err}"
        );
        tx.rollback().await.unwrap();
        let tx = as_api(&mut sql, &bob_id).await;
        let err = tx
            .execute("DELETE FROM user_profiles WHERE user_id = $1", &[&cat_id])
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{err}"
        );
        tx.rollback().await.unwrap();
    }
    {
        // The owner reads and writes her own.
        let tx = as_api(&mut sql, &ann_id).await;
        let updated = tx
            .execute(
                "UPDATE user_profiles SET bio = 'mine' WHERE user_id = $1",
                &[&ann_id],
            )
            .await
            .unwrap();
        assert_eq!(updated, 1);
        tx.rollback().await.unwrap();
    }
    // A suspended owner's public profile is hidden again, as the route hides it.
    stack
        .sql()
        .await
        .execute(
            "UPDATE users SET account_status = 'suspended' WHERE id = $1",
            &[&cat_id],
        )
        .await
        .unwrap();
    {
        let tx = as_api(&mut sql, &bob_id).await;
        let n: i64 = tx
            .query_one(
                "SELECT count(*) FROM user_profiles WHERE user_id = $1",
                &[&cat_id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0);
        tx.rollback().await.unwrap();
    }

    // Through the routes, nothing changed for the callers: Bob sees Cat's public profile
    // (while she was active) and not Ann's; Ann sees her own.
    let reply = stack.get("/api/v1/users/ann", Some(&ann)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["profile"]["bio"], "hello", "{}", reply.body);
    stack
        .get("/api/v1/users/ann", None)
        .await
        .assert_problem(404);
    let reply = stack.get("/api/v1/me/profile", Some(&ann)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["bio"], "hello");
}
