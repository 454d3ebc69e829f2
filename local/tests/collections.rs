//! Collections and their members over real HTTP against real PostgreSQL:
//! ownership and visibility, pagination, ordering, the trigger-kept
//! `character_count`, input validation, and row-level security underneath.
//!
//! Characters have no routes yet, so tests create them with SQL as the system
//! role.

use std::collections::HashSet;

use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};
use testkit::{Reply, TestStack, spawn_stack};

async fn user_id(stack: &TestStack, email: &str) -> String {
    stack
        .sql()
        .await
        .query_one("SELECT id FROM users WHERE email = $1", &[&email])
        .await
        .unwrap()
        .get(0)
}

/// A character of `owner`, made with SQL (characters have no routes yet).
async fn character(stack: &TestStack, owner: &str, name: &str, is_public: bool) -> String {
    stack
        .sql()
        .await
        .query_one(
            "INSERT INTO characters (user_id, name, prompt, style_type, is_public, tags, thumbnail_url) \
             VALUES ($1, $2, 'a prompt', 'anime', $3, '{hero}', 'https://cdn.example.com/t.png') RETURNING id",
            &[&owner, &name, &is_public],
        )
        .await
        .unwrap()
        .get(0)
}

async fn create(stack: &TestStack, token: &str, body: Value) -> Value {
    let reply = stack
        .call(Method::POST, "/api/v1/collections", Some(token), Some(body))
        .await;
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
    reply.body
}

async fn put_member(stack: &TestStack, token: &str, collection: &str, character: &str) -> Reply {
    stack
        .call(
            Method::PUT,
            &format!("/api/v1/collections/{collection}/characters/{character}"),
            Some(token),
            None,
        )
        .await
}

async fn put_member_at(
    stack: &TestStack,
    token: &str,
    collection: &str,
    character: &str,
    display_order: Value,
) -> Reply {
    stack
        .call(
            Method::PUT,
            &format!("/api/v1/collections/{collection}/characters/{character}"),
            Some(token),
            Some(json!({ "display_order": display_order })),
        )
        .await
}

async fn remove_member(stack: &TestStack, token: &str, collection: &str, character: &str) -> Reply {
    stack
        .call(
            Method::DELETE,
            &format!("/api/v1/collections/{collection}/characters/{character}"),
            Some(token),
            None,
        )
        .await
}

/// The stored row, as the database has it.
async fn collection_row(stack: &TestStack, id: &str) -> Value {
    stack
        .sql()
        .await
        .query_opt(
            "SELECT to_jsonb(c) FROM collections c WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .map(|row| row.get(0))
        .unwrap_or(Value::Null)
}

/// `character_count` beside the number of membership rows it should equal.
async fn counts(stack: &TestStack, collection: &str) -> (i32, i64) {
    let row = stack
        .sql()
        .await
        .query_one(
            "SELECT c.character_count, \
                    (SELECT count(*) FROM collection_characters cc WHERE cc.collection_id = c.id) \
             FROM collections c WHERE c.id = $1",
            &[&collection],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn assert_count(stack: &TestStack, collection: &str, expected: i64) {
    let (count, rows) = counts(stack, collection).await;
    assert_eq!(rows, expected, "membership rows");
    assert_eq!(i64::from(count), rows, "character_count follows the rows");
}

/// Walks every page of `path` (which may already carry a query string).
async fn walk(stack: &TestStack, path: &str, token: Option<&str>) -> Vec<Value> {
    let separator = if path.contains('?') { '&' } else { '?' };
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}{separator}cursor={c}"),
            None => path.to_string(),
        };
        let reply = stack.get(&url, token).await;
        assert_eq!(reply.status.as_u16(), 200, "{}", reply.body);
        items.extend(reply.body["items"].as_array().unwrap().iter().cloned());
        match reply.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return items,
        }
    }
}

#[tokio::test]
async fn collection_crud_happy_path() {
    let stack = spawn_stack().await;
    let ann = stack.sign_in("ann@example.com").await;
    let ann_id = user_id(&stack, "ann@example.com").await;

    let reply = stack
        .call(
            Method::POST,
            "/api/v1/collections",
            Some(&ann),
            Some(json!({
                "name": "  Dragons  ",
                "description": "Blue ones.\nRed ones.",
                "cover_image_url": "https://cdn.example.com/cover.png",
                "tags": ["fire", "ice", "fire"],
                "category": "fantasy",
                "theme": "mythic",
                "is_public": true,
                "allow_collaboration": true,
                "collaboration_settings": {"invite_only": true, "roles": ["editor"]}
            })),
        )
        .await;
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
    let created = reply.body.clone();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        reply.headers["location"].to_str().unwrap(),
        format!("/api/v1/collections/{id}")
    );
    assert_eq!(created["user_id"], ann_id.as_str());
    assert_eq!(created["name"], "Dragons");
    assert_eq!(created["description"], "Blue ones.\nRed ones.");
    assert_eq!(created["tags"], json!(["fire", "ice"]));
    assert_eq!(created["is_public"], true);
    assert_eq!(created["allow_collaboration"], true);
    assert_eq!(
        created["collaboration_settings"]["roles"],
        json!(["editor"])
    );
    assert_eq!(created["character_count"], 0);
    assert_eq!(created["total_views"], 0);
    assert!(created["created_at"].is_string() && created["updated_at"].is_string());

    // Defaults for a minimal body.
    let minimal = create(&stack, &ann, json!({"name": "Sketches"})).await;
    assert_eq!(minimal["is_public"], false);
    assert_eq!(minimal["tags"], json!([]));
    assert_eq!(minimal["collaboration_settings"], json!({}));
    assert_eq!(minimal["description"], Value::Null);

    let read = stack
        .get(&format!("/api/v1/collections/{id}"), Some(&ann))
        .await;
    assert_eq!(read.status.as_u16(), 200);
    assert_eq!(read.body, created);

    // PATCH: absent fields stay, null clears, name changes.
    let patched = stack
        .call(
            Method::PATCH,
            &format!("/api/v1/collections/{id}"),
            Some(&ann),
            Some(json!({"name": "Wyrms", "description": null, "tags": ["scales"], "is_public": false})),
        )
        .await;
    assert_eq!(patched.status.as_u16(), 200, "{}", patched.body);
    assert_eq!(patched.body["name"], "Wyrms");
    assert_eq!(patched.body["description"], Value::Null);
    assert_eq!(patched.body["tags"], json!(["scales"]));
    assert_eq!(patched.body["is_public"], false);
    assert_eq!(patched.body["category"], "fantasy");
    assert_eq!(
        patched.body["cover_image_url"],
        "https://cdn.example.com/cover.png"
    );
    let row = collection_row(&stack, &id).await;
    assert_eq!(row["name"], "Wyrms");
    assert_eq!(row["description"], Value::Null);
    assert_eq!(row["theme"], "mythic");

    // An empty PATCH changes nothing at all.
    let before = collection_row(&stack, &id).await;
    let same = stack
        .call(
            Method::PATCH,
            &format!("/api/v1/collections/{id}"),
            Some(&ann),
            Some(json!({})),
        )
        .await;
    assert_eq!(same.status.as_u16(), 200);
    assert_eq!(before, collection_row(&stack, &id).await);

    // Deleting a collection keeps its characters.
    let dragon = character(&stack, &ann_id, "Dragon", false).await;
    assert_eq!(put_member(&stack, &ann, &id, &dragon).await.status, 201);
    let deleted = stack
        .call(
            Method::DELETE,
            &format!("/api/v1/collections/{id}"),
            Some(&ann),
            None,
        )
        .await;
    assert_eq!(deleted.status.as_u16(), 204);
    assert_eq!(deleted.body, Value::Null);
    stack
        .get(&format!("/api/v1/collections/{id}"), Some(&ann))
        .await
        .assert_problem(404);
    stack
        .call(
            Method::DELETE,
            &format!("/api/v1/collections/{id}"),
            Some(&ann),
            None,
        )
        .await
        .assert_problem(404);
    let left: i64 = stack
        .sql()
        .await
        .query_one("SELECT count(*) FROM characters WHERE id = $1", &[&dragon])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 1, "the character outlives its collection");
    assert_eq!(collection_row(&stack, &id).await, Value::Null);
}

#[tokio::test]
async fn listing_walks_every_collection_once_while_new_ones_arrive() {
    let stack = spawn_stack().await;
    let ann = stack.sign_in("ann@example.com").await;
    let bob = stack.sign_in("bob@example.com").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    create(&stack, &bob, json!({"name": "Bob's"})).await;

    let mut expected = HashSet::new();
    for i in 0..14 {
        let c = create(&stack, &ann, json!({"name": format!("c{i}")})).await;
        expected.insert(c["id"].as_str().unwrap().to_string());
    }
    // Rows sharing one created_at are told apart by id.
    let tied = stack
        .sql()
        .await
        .query(
            "INSERT INTO collections (user_id, name, created_at) \
             SELECT $1, 'tied ' || n, now() - interval '1 second' FROM generate_series(1, 6) n \
             RETURNING id",
            &[&ann_id],
        )
        .await
        .unwrap();
    expected.extend(tied.iter().map(|r| r.get::<_, String>(0)));

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut added_meanwhile = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/collections?limit=4&cursor={c}"),
            None => "/api/v1/collections?limit=4".to_string(),
        };
        let page = stack.get(&path, Some(&ann)).await;
        assert_eq!(page.status.as_u16(), 200, "{}", page.body);
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 4);
        for item in items {
            assert_eq!(item["user_id"], ann_id.as_str(), "only the caller's own");
            seen.push(item.clone());
        }
        // A new collection between page fetches must not disturb the walk.
        create(
            &stack,
            &ann,
            json!({"name": format!("new {added_meanwhile}")}),
        )
        .await;
        added_meanwhile += 1;
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let ids: Vec<String> = seen
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    let unique: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique.len(), ids.len(), "no collection twice");
    assert_eq!(unique, expected, "every collection, and only those");
    // Newest first.
    let times: Vec<&str> = seen
        .iter()
        .map(|c| c["created_at"].as_str().unwrap())
        .collect();
    let parsed: Vec<chrono::DateTime<chrono::Utc>> =
        times.iter().map(|t| t.parse().unwrap()).collect();
    assert!(parsed.windows(2).all(|w| w[0] >= w[1]), "{times:?}");

    // A fresh walk sees the ones added meanwhile too.
    let all = walk(&stack, "/api/v1/collections?limit=100", Some(&ann)).await;
    assert_eq!(all.len(), expected.len() + added_meanwhile);

    // Bad paging parameters are 422s.
    for bad in [
        "/api/v1/collections?limit=0",
        "/api/v1/collections?limit=101",
        "/api/v1/collections?limit=abc",
        "/api/v1/collections?cursor=not-a-cursor",
    ] {
        stack.get(bad, Some(&ann)).await.assert_problem(422);
    }
}

#[tokio::test]
async fn other_users_get_404_for_private_and_403_for_public_collections() {
    let stack = spawn_stack().await;
    let ann = stack.sign_in("ann@example.com").await;
    let bob = stack.sign_in("bob@example.com").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let bob_id = user_id(&stack, "bob@example.com").await;
    let private = create(&stack, &ann, json!({"name": "Secret"})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let public = create(&stack, &ann, json!({"name": "Shown", "is_public": true})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let anns = character(&stack, &ann_id, "Ann's", true).await;
    let bobs = character(&stack, &bob_id, "Bob's", true).await;
    assert_eq!(put_member(&stack, &ann, &private, &anns).await.status, 201);
    assert_eq!(put_member(&stack, &ann, &public, &anns).await.status, 201);
    let private_before = collection_row(&stack, &private).await;
    let public_before = collection_row(&stack, &public).await;

    // Bob cannot tell Ann's private collection from one that does not exist.
    for id in [private.as_str(), "no-such-collection"] {
        let base = format!("/api/v1/collections/{id}");
        let member = format!("{base}/characters/{anns}");
        let own_member = format!("{base}/characters/{bobs}");
        for (method, path, body) in [
            (Method::GET, base.clone(), None),
            (Method::PATCH, base.clone(), Some(json!({"name": "Mine"}))),
            (Method::DELETE, base.clone(), None),
            (Method::GET, format!("{base}/characters"), None),
            (Method::PUT, own_member.clone(), None),
            (
                Method::PUT,
                member.clone(),
                Some(json!({"display_order": 1})),
            ),
            (Method::DELETE, member.clone(), None),
        ] {
            let reply = stack.call(method.clone(), &path, Some(&bob), body).await;
            reply.assert_problem(404);
            assert_eq!(
                reply.body["detail"], "no such collection",
                "{method} {path}"
            );
        }
    }
    // Anonymous callers see nothing of it either.
    stack
        .get(&format!("/api/v1/collections/{private}"), None)
        .await
        .assert_problem(404);
    stack
        .get(&format!("/api/v1/collections/{private}/characters"), None)
        .await
        .assert_problem(404);

    // Ann's public collection: Bob and anonymous callers can read it...
    for token in [Some(bob.as_str()), None] {
        let read = stack
            .get(&format!("/api/v1/collections/{public}"), token)
            .await;
        assert_eq!(read.status.as_u16(), 200, "{}", read.body);
        assert_eq!(read.body["name"], "Shown");
        let members = stack
            .get(&format!("/api/v1/collections/{public}/characters"), token)
            .await;
        assert_eq!(members.status.as_u16(), 200);
        assert_eq!(members.body["items"][0]["character_id"], anns.as_str());
    }
    // ...but Bob cannot change it.
    let base = format!("/api/v1/collections/{public}");
    for (method, path, body) in [
        (Method::PATCH, base.clone(), Some(json!({"name": "Mine"}))),
        (Method::DELETE, base.clone(), None),
        (Method::PUT, format!("{base}/characters/{bobs}"), None),
        (
            Method::PUT,
            format!("{base}/characters/{anns}"),
            Some(json!({"display_order": 5})),
        ),
        (Method::DELETE, format!("{base}/characters/{anns}"), None),
    ] {
        stack
            .call(method, &path, Some(&bob), body)
            .await
            .assert_problem(403);
    }

    // Anonymous callers must sign in for every change and for their own list.
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1/collections".to_string(),
            Some(json!({"name": "x"})),
        ),
        (Method::GET, "/api/v1/collections".to_string(), None),
        (Method::PATCH, base.clone(), Some(json!({"name": "x"}))),
        (Method::DELETE, base.clone(), None),
        (Method::PUT, format!("{base}/characters/{anns}"), None),
        (Method::DELETE, format!("{base}/characters/{anns}"), None),
    ] {
        stack
            .call(method, &path, None, body)
            .await
            .assert_problem(401);
    }

    // Bob's own list holds none of Ann's collections.
    let bobs_list = stack.get("/api/v1/collections", Some(&bob)).await;
    assert_eq!(bobs_list.body["items"], json!([]));

    assert_eq!(private_before, collection_row(&stack, &private).await);
    assert_eq!(public_before, collection_row(&stack, &public).await);
    assert_count(&stack, &private, 1).await;
    assert_count(&stack, &public, 1).await;
}

#[tokio::test]
async fn only_visible_characters_can_be_added_and_one_can_be_in_several_collections() {
    let stack = spawn_stack().await;
    let ann = stack.sign_in("ann@example.com").await;
    stack.sign_in("bob@example.com").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let bob_id = user_id(&stack, "bob@example.com").await;
    let first = create(&stack, &ann, json!({"name": "First"})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let second = create(&stack, &ann, json!({"name": "Second"})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let own_private = character(&stack, &ann_id, "Mine", false).await;
    let bobs_private = character(&stack, &bob_id, "Bob's secret", false).await;
    let bobs_public = character(&stack, &bob_id, "Bob's shown", true).await;

    let refused = put_member(&stack, &ann, &first, &bobs_private).await;
    refused.assert_problem(404);
    assert_eq!(refused.body["detail"], "no such character");
    put_member(&stack, &ann, &first, "no-such-character")
        .await
        .assert_problem(404);
    put_member(&stack, &ann, &first, "bad%00id")
        .await
        .assert_problem(404);
    assert_count(&stack, &first, 0).await;

    let added = put_member(&stack, &ann, &first, &bobs_public).await;
    assert_eq!(added.status.as_u16(), 201, "{}", added.body);
    assert_eq!(added.body["collection_id"], first.as_str());
    assert_eq!(added.body["character_id"], bobs_public.as_str());
    assert_eq!(added.body["display_order"], Value::Null);
    assert_eq!(added.body["character"]["name"], "Bob's shown");
    assert_eq!(added.body["character"]["user_id"], bob_id.as_str());
    assert_eq!(
        put_member(&stack, &ann, &first, &own_private).await.status,
        201
    );
    // The same characters in a second collection.
    assert_eq!(
        put_member(&stack, &ann, &second, &own_private).await.status,
        201
    );
    assert_eq!(
        put_member(&stack, &ann, &second, &bobs_public).await.status,
        201
    );
    assert_count(&stack, &first, 2).await;
    assert_count(&stack, &second, 2).await;

    // PUT again: 200, still one row; an order given is stored, an absent one kept.
    let again = put_member_at(&stack, &ann, &first, &own_private, json!(7)).await;
    assert_eq!(again.status.as_u16(), 200, "{}", again.body);
    assert_eq!(again.body["display_order"], 7);
    let again = put_member(&stack, &ann, &first, &own_private).await;
    assert_eq!(again.status.as_u16(), 200);
    assert_eq!(again.body["display_order"], 7);
    let cleared = put_member_at(&stack, &ann, &first, &own_private, Value::Null).await;
    assert_eq!(cleared.status.as_u16(), 200);
    assert_eq!(cleared.body["display_order"], Value::Null);
    assert_count(&stack, &first, 2).await;

    // Removing a member removes that membership only.
    let removed = stack
        .call(
            Method::DELETE,
            &format!("/api/v1/collections/{first}/characters/{own_private}"),
            Some(&ann),
            None,
        )
        .await;
    assert_eq!(removed.status.as_u16(), 204);
    stack
        .call(
            Method::DELETE,
            &format!("/api/v1/collections/{first}/characters/{own_private}"),
            Some(&ann),
            None,
        )
        .await
        .assert_problem(404);
    assert_count(&stack, &first, 1).await;
    assert_count(&stack, &second, 2).await;
}

#[tokio::test]
async fn character_count_equals_membership_rows_through_every_change() {
    let stack = spawn_stack().await;
    let ann = stack.sign_in("ann@example.com").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let id = create(&stack, &ann, json!({"name": "Counted"})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut chars = Vec::new();
    for i in 0..4 {
        chars.push(character(&stack, &ann_id, &format!("c{i}"), false).await);
    }
    let remove = |c| remove_member(&stack, &ann, &id, c);

    for c in &chars {
        assert_eq!(put_member(&stack, &ann, &id, c).await.status, 201);
    }
    assert_count(&stack, &id, 4).await;
    // PUT twice is still one row.
    assert_eq!(put_member(&stack, &ann, &id, &chars[0]).await.status, 200);
    assert_count(&stack, &id, 4).await;
    assert_eq!(remove(&chars[1]).await.status, 204);
    assert_count(&stack, &id, 3).await;
    // Removing a non-member changes nothing.
    remove(&chars[1]).await.assert_problem(404);
    assert_count(&stack, &id, 3).await;
    // Re-adding.
    assert_eq!(put_member(&stack, &ann, &id, &chars[1]).await.status, 201);
    assert_count(&stack, &id, 4).await;
    // Deleting a member character cascades to its membership.
    stack
        .sql()
        .await
        .execute("DELETE FROM characters WHERE id = $1", &[&chars[2]])
        .await
        .unwrap();
    assert_count(&stack, &id, 3).await;
    let body = stack
        .get(&format!("/api/v1/collections/{id}"), Some(&ann))
        .await
        .body;
    assert_eq!(body["character_count"], 3);
    let listed = walk(
        &stack,
        &format!("/api/v1/collections/{id}/characters"),
        Some(&ann),
    )
    .await;
    assert_eq!(listed.len(), 3);
}

#[tokio::test]
async fn concurrent_adds_keep_character_count_exact() {
    let stack = spawn_stack().await;
    let ann = stack.sign_in("ann@example.com").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let id = create(&stack, &ann, json!({"name": "Busy"})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let chars: Vec<String> = stack
        .sql()
        .await
        .query(
            "INSERT INTO characters (user_id, name, prompt, style_type) \
             SELECT $1, 'c' || n, 'p', 'comic' FROM generate_series(1, 20) n RETURNING id",
            &[&ann_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();

    let replies = join_all(chars.iter().map(|c| put_member(&stack, &ann, &id, c))).await;
    for reply in &replies {
        assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
    }
    assert_count(&stack, &id, 20).await;

    // Ten concurrent PUTs of one pair: one adds, the others update.
    let replies =
        join_all((0..10).map(|i| put_member_at(&stack, &ann, &id, &chars[0], json!(i)))).await;
    let mut statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    statuses.sort();
    assert_eq!(statuses, [200; 10], "it was a member already");
    // And on a character that was not a member yet.
    let extra = character(&stack, &ann_id, "extra", false).await;
    let replies = join_all((0..10).map(|_| put_member(&stack, &ann, &id, &extra))).await;
    let mut statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    statuses.sort();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 200, 200, 200, 201]);
    assert_count(&stack, &id, 21).await;

    // Concurrent removals too.
    let replies = join_all(
        chars
            .iter()
            .take(10)
            .map(|c| remove_member(&stack, &ann, &id, c)),
    )
    .await;
    assert!(replies.iter().all(|r| r.status.as_u16() == 204));
    assert_count(&stack, &id, 11).await;
}

#[tokio::test]
async fn members_are_listed_by_display_order_with_nulls_last() {
    let stack = spawn_stack().await;
    let ann = stack.sign_in("ann@example.com").await;
    let bob = stack.sign_in("bob@example.com").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let bob_id = user_id(&stack, "bob@example.com").await;
    let id = create(&stack, &ann, json!({"name": "Ordered", "is_public": true})).await["id"]
        .as_str()
        .unwrap()
        .to_string();

    // (name, display_order), added in this order.
    let plan = [
        ("three", json!(3)),
        ("unordered-a", Value::Null),
        ("one-a", json!(1)),
        ("unordered-b", Value::Null),
        ("two", json!(2)),
        ("one-b", json!(1)),
        ("zero", json!(0)),
        ("unordered-c", Value::Null),
    ];
    for (name, order) in &plan {
        let c = character(&stack, &ann_id, name, true).await;
        let reply = if order.is_null() {
            put_member(&stack, &ann, &id, &c).await
        } else {
            put_member_at(&stack, &ann, &id, &c, order.clone()).await
        };
        assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
    }
    let expected = [
        "zero",
        "one-a",
        "one-b",
        "two",
        "three",
        "unordered-a",
        "unordered-b",
        "unordered-c",
    ];
    for limit in [1, 2, 3, 100] {
        let items = walk(
            &stack,
            &format!("/api/v1/collections/{id}/characters?limit={limit}"),
            Some(&ann),
        )
        .await;
        let names: Vec<&str> = items
            .iter()
            .map(|i| i["character"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, expected, "limit {limit}");
    }

    // The item carries the membership and a character card.
    let first = &stack
        .get(
            &format!("/api/v1/collections/{id}/characters?limit=1"),
            None,
        )
        .await
        .body["items"][0];
    assert_eq!(first["collection_id"], id.as_str());
    assert_eq!(first["display_order"], 0);
    assert!(first["added_at"].is_string());
    let card = &first["character"];
    assert_eq!(card["id"], first["character_id"]);
    assert_eq!(card["user_id"], ann_id.as_str());
    assert_eq!(card["style_type"], "anime");
    assert_eq!(card["tags"], json!(["hero"]));
    assert_eq!(card["is_public"], true);
    assert_eq!(card["thumbnail_url"], "https://cdn.example.com/t.png");
    assert_eq!(card["primary_image_url"], Value::Null);
    assert_eq!(card["like_count"], 0);
    assert!(card["created_at"].is_string());
    assert!(
        card.get("prompt").is_none(),
        "the card is not the whole character"
    );

    // Reordering moves a member.
    let three = walk(
        &stack,
        &format!("/api/v1/collections/{id}/characters"),
        Some(&ann),
    )
    .await[4]["character_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        put_member_at(&stack, &ann, &id, &three, json!(0))
            .await
            .status,
        200
    );
    let items = walk(
        &stack,
        &format!("/api/v1/collections/{id}/characters"),
        None,
    )
    .await;
    let names: Vec<&str> = items
        .iter()
        .map(|i| i["character"]["name"].as_str().unwrap())
        .collect();
    // Ties on display_order go by added_at: "three" was added first.
    assert_eq!(names[..2], ["three", "zero"]);

    // A member whose character turns private to someone else is not listed to
    // them, though it stays a member.
    let bobs = character(&stack, &bob_id, "Bob's", true).await;
    assert_eq!(put_member(&stack, &ann, &id, &bobs).await.status, 201);
    stack
        .sql()
        .await
        .execute(
            "UPDATE characters SET is_public = false WHERE id = $1",
            &[&bobs],
        )
        .await
        .unwrap();
    for token in [Some(ann.as_str()), None] {
        let items = walk(
            &stack,
            &format!("/api/v1/collections/{id}/characters?limit=3"),
            token,
        )
        .await;
        assert_eq!(items.len(), 8);
        assert!(items.iter().all(|i| i["character_id"] != bobs.as_str()));
    }
    let bobs_view = walk(
        &stack,
        &format!("/api/v1/collections/{id}/characters"),
        Some(&bob),
    )
    .await;
    assert_eq!(bobs_view.len(), 9, "Bob sees his own private character");
    assert_count(&stack, &id, 9).await;
    // The owner can still take it out.
    let removed = stack
        .call(
            Method::DELETE,
            &format!("/api/v1/collections/{id}/characters/{bobs}"),
            Some(&ann),
            None,
        )
        .await;
    assert_eq!(removed.status.as_u16(), 204);

    stack
        .get(
            &format!("/api/v1/collections/{id}/characters?cursor=garbage"),
            None,
        )
        .await
        .assert_problem(422);
}

#[tokio::test]
async fn bad_inputs_are_problems_and_change_nothing() {
    let stack = spawn_stack().await;
    let ann = stack.sign_in("ann@example.com").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let id = create(
        &stack,
        &ann,
        json!({"name": "Stable", "tags": ["keep"], "collaboration_settings": {"a": 1}}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let member = character(&stack, &ann_id, "Member", false).await;
    assert_eq!(
        put_member_at(&stack, &ann, &id, &member, json!(5))
            .await
            .status,
        201
    );
    let other = character(&stack, &ann_id, "Other", false).await;
    let row_before = collection_row(&stack, &id).await;
    let members_before: Value = stack
        .sql()
        .await
        .query_one(
            "SELECT coalesce(jsonb_agg(to_jsonb(cc) ORDER BY character_id), '[]') FROM collection_characters cc",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    let many_tags: Vec<String> = (0..21).map(|i| format!("t{i}")).collect();
    let many_keys: serde_json::Map<String, Value> =
        (0..21).map(|i| (format!("k{i}"), json!(i))).collect();
    let cases = [
        // wrong types
        (json!({"name": 5}), "name"),
        (json!({"name": null}), "name"),
        (json!({"description": ["x"]}), "description"),
        (json!({"cover_image_url": 1}), "cover_image_url"),
        (json!({"tags": "fire"}), "tags"),
        (json!({"tags": [1]}), "tags[0]"),
        (json!({"category": true}), "category"),
        (json!({"theme": {}}), "theme"),
        (json!({"is_public": "yes"}), "is_public"),
        (json!({"is_public": null}), "is_public"),
        (json!({"allow_collaboration": 1}), "allow_collaboration"),
        (
            json!({"collaboration_settings": [1]}),
            "collaboration_settings",
        ),
        (
            json!({"collaboration_settings": "x"}),
            "collaboration_settings",
        ),
        // too long, badly formed, too many
        (json!({"name": "x".repeat(101)}), "name"),
        (json!({"name": "   "}), "name"),
        (json!({"name": "a\u{0}b"}), "name"),
        (json!({"name": "two\nlines"}), "name"),
        (json!({"description": "x".repeat(2001)}), "description"),
        (json!({"category": "x".repeat(51)}), "category"),
        (json!({"theme": "x".repeat(51)}), "theme"),
        (
            json!({"cover_image_url": "javascript:alert(1)"}),
            "cover_image_url",
        ),
        (
            json!({"cover_image_url": "ftp://cdn.example.com/c.png"}),
            "cover_image_url",
        ),
        (
            json!({"cover_image_url": "/relative.png"}),
            "cover_image_url",
        ),
        (json!({"tags": many_tags}), "tags"),
        (json!({"tags": ["Upper"]}), "tags[0]"),
        (json!({"tags": ["x".repeat(33)]}), "tags[0]"),
        (json!({"tags": [""]}), "tags[0]"),
        (
            json!({"collaboration_settings": many_keys}),
            "collaboration_settings",
        ),
        (
            json!({"collaboration_settings": {"note": "x".repeat(4100)}}),
            "collaboration_settings",
        ),
        (
            json!({"collaboration_settings": {"note": "a\u{0}b"}}),
            "collaboration_settings",
        ),
        // unknown and read-only fields
        (json!({"colour": "blue"}), "colour"),
        (json!({"id": "mine"}), "id"),
        (json!({"user_id": "someone"}), "user_id"),
        (json!({"character_count": 99}), "character_count"),
        (json!({"total_views": 1}), "total_views"),
        (json!({"total_likes": 1}), "total_likes"),
        (json!({"created_at": "2020-01-01T00:00:00Z"}), "created_at"),
        (json!({"updated_at": "2020-01-01T00:00:00Z"}), "updated_at"),
        // a valid change beside a refused one is refused whole
        (
            json!({"name": "Sneaky", "character_count": 99}),
            "character_count",
        ),
        (json!({"name": "Sneaky", "tags": ["Bad Tag"]}), "tags[0]"),
    ];
    for (body, field) in &cases {
        for (method, path) in [
            (Method::PATCH, format!("/api/v1/collections/{id}")),
            (Method::POST, "/api/v1/collections".to_string()),
        ] {
            // POST needs a name; give one unless the case is about the name.
            let mut body = body.clone();
            if method == Method::POST && body.get("name").is_none() {
                body["name"] = json!("Valid");
            }
            let reply = stack
                .call(method.clone(), &path, Some(&ann), Some(body.clone()))
                .await;
            reply.assert_problem(422);
            let named: Vec<&str> = reply.body["errors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["field"].as_str().unwrap())
                .collect();
            assert_eq!(named, [*field], "{method} {body}: {}", reply.body);
        }
    }
    // POST without a name; bodies that are not objects; broken JSON; not JSON.
    let reply = stack
        .call(
            Method::POST,
            "/api/v1/collections",
            Some(&ann),
            Some(json!({"theme": "x"})),
        )
        .await;
    reply.assert_problem(422);
    assert_eq!(reply.body["errors"][0]["field"], "name");
    for body in [json!([1, 2]), json!("name"), json!(null)] {
        stack
            .call(
                Method::POST,
                "/api/v1/collections",
                Some(&ann),
                Some(body.clone()),
            )
            .await
            .assert_problem(422);
        stack
            .call(
                Method::PATCH,
                &format!("/api/v1/collections/{id}"),
                Some(&ann),
                Some(body),
            )
            .await
            .assert_problem(422);
    }
    for (method, path) in [
        (Method::POST, "/api/v1/collections".to_string()),
        (Method::PATCH, format!("/api/v1/collections/{id}")),
        (
            Method::PUT,
            format!("/api/v1/collections/{id}/characters/{other}"),
        ),
    ] {
        let broken = stack
            .http
            .request(method.clone(), format!("{}{path}", stack.base_url))
            .bearer_auth(&ann)
            .header("content-type", "application/json")
            .body("{\"name\": ")
            .send()
            .await
            .unwrap();
        testkit::read(broken).await.assert_problem(400);
        let not_json = stack
            .http
            .request(method.clone(), format!("{}{path}", stack.base_url))
            .bearer_auth(&ann)
            .body("name=x")
            .send()
            .await
            .unwrap();
        testkit::read(not_json).await.assert_problem(415);
        let huge = stack
            .call(
                method,
                &path,
                Some(&ann),
                Some(json!({"name": "x".repeat(300_000)})),
            )
            .await;
        huge.assert_problem(413);
    }

    // Membership bodies.
    for (body, field) in [
        (json!({"display_order": -1}), "display_order"),
        (json!({"display_order": 1_000_001}), "display_order"),
        (json!({"display_order": 1.5}), "display_order"),
        (json!({"display_order": "3"}), "display_order"),
        (json!({"display_order": 1e300}), "display_order"),
        (json!({"position": 1}), "position"),
        (json!({"added_at": "2020-01-01T00:00:00Z"}), "added_at"),
        (
            json!({"character_id": "x", "display_order": 1}),
            "character_id",
        ),
        (json!({"collection_id": "x"}), "collection_id"),
    ] {
        for character in [&member, &other] {
            let reply = stack
                .call(
                    Method::PUT,
                    &format!("/api/v1/collections/{id}/characters/{character}"),
                    Some(&ann),
                    Some(body.clone()),
                )
                .await;
            reply.assert_problem(422);
            assert_eq!(reply.body["errors"][0]["field"], field, "{body}");
        }
    }
    stack
        .call(
            Method::PUT,
            &format!("/api/v1/collections/{id}/characters/{other}"),
            Some(&ann),
            Some(json!([5])),
        )
        .await
        .assert_problem(422);

    // Ids no row could have are plain 404s, never 500s.
    for path in [
        "/api/v1/collections/bad%00id".to_string(),
        format!("/api/v1/collections/{}", "x".repeat(300)),
        "/api/v1/collections/%FF%FE".to_string(),
        "/api/v1/collections/bad%00id/characters".to_string(),
    ] {
        stack.get(&path, Some(&ann)).await.assert_problem(404);
        stack.get(&path, None).await.assert_problem(404);
    }
    stack
        .call(
            Method::DELETE,
            &format!("/api/v1/collections/{id}/characters/bad%00id"),
            Some(&ann),
            None,
        )
        .await
        .assert_problem(404);

    assert_eq!(
        row_before,
        collection_row(&stack, &id).await,
        "row unchanged"
    );
    let members_after: Value = stack
        .sql()
        .await
        .query_one(
            "SELECT coalesce(jsonb_agg(to_jsonb(cc) ORDER BY character_id), '[]') FROM collection_characters cc",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(members_before, members_after, "memberships unchanged");
    let collections: i64 = stack
        .sql()
        .await
        .query_one("SELECT count(*) FROM collections", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(collections, 1, "no bad POST created anything");
}

/// Row-level security on its own, with the handlers bypassed: statements run
/// as `app_api` with Bob's id, exactly as `begin_as` sets them up.
#[tokio::test]
async fn row_level_security_hides_and_protects_other_users_collections() {
    let stack = spawn_stack().await;
    let ann = stack.sign_in("ann@example.com").await;
    stack.sign_in("bob@example.com").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let bob_id = user_id(&stack, "bob@example.com").await;
    let private = create(&stack, &ann, json!({"name": "Secret"})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let public = create(&stack, &ann, json!({"name": "Shown", "is_public": true})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let anns = character(&stack, &ann_id, "Ann's", true).await;
    let bobs = character(&stack, &bob_id, "Bob's", true).await;
    for c in [&private, &public] {
        assert_eq!(put_member(&stack, &ann, c, &anns).await.status, 201);
    }
    let private_before = collection_row(&stack, &private).await;
    let public_before = collection_row(&stack, &public).await;

    let mut client = stack.sql().await;
    const AS_USER: &str =
        "SELECT set_config('role', 'app_api', true), set_config('app.user_id', $1, true)";

    // Bob.
    let mut tx = client.transaction().await.unwrap();
    tx.execute(AS_USER, &[&bob_id]).await.unwrap();
    let count = |sql: &'static str, id: String| {
        let tx = &tx;
        async move { tx.query_one(sql, &[&id]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(
        count(
            "SELECT count(*) FROM collections WHERE id = $1",
            private.clone()
        )
        .await,
        0
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM collection_characters WHERE collection_id = $1",
            private.clone()
        )
        .await,
        0
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM collections WHERE user_id = $1",
            ann_id.clone()
        )
        .await,
        1,
        "only Ann's public collection"
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM collection_characters WHERE collection_id = $1",
            public.clone()
        )
        .await,
        1
    );
    for sql in [
        "UPDATE collections SET name = 'Taken' WHERE id = $1",
        "UPDATE collections SET is_public = true WHERE id = $1",
        "DELETE FROM collections WHERE id = $1",
        "DELETE FROM collection_characters WHERE collection_id = $1",
        "UPDATE collection_characters SET display_order = 1 WHERE collection_id = $1",
    ] {
        for id in [&private, &public] {
            assert_eq!(tx.execute(sql, &[id]).await.unwrap(), 0, "{sql}");
        }
    }
    // Filing into Ann's collection is refused outright.
    let sp = tx.savepoint("insert").await.unwrap();
    let refused = sp
        .execute(
            "INSERT INTO collection_characters (collection_id, character_id) VALUES ($1, $2)",
            &[&public, &bobs],
        )
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{refused}"
    );
    sp.rollback().await.unwrap();
    // Nor can Bob create a collection in Ann's name.
    let sp = tx.savepoint("forge").await.unwrap();
    let forged = sp
        .execute(
            "INSERT INTO collections (user_id, name) VALUES ($1, 'Forged')",
            &[&ann_id],
        )
        .await
        .unwrap_err();
    // Row-level security's WITH CHECK refuses the row.
    assert_eq!(
        forged.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{forged:?}"
    );
    sp.rollback().await.unwrap();
    tx.rollback().await.unwrap();

    // Ann herself cannot write a counter: column privileges refuse it.
    let tx = client.transaction().await.unwrap();
    tx.execute(AS_USER, &[&ann_id]).await.unwrap();
    assert_eq!(
        tx.query_one("SELECT count(*) FROM collections", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        2
    );
    let denied = tx
        .execute(
            "UPDATE collections SET character_count = 99 WHERE id = $1",
            &[&private],
        )
        .await
        .unwrap_err();
    assert_eq!(
        denied.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{denied:?}"
    );
    tx.rollback().await.unwrap();

    // Anonymous: public collections only.
    let tx = client.transaction().await.unwrap();
    tx.execute(AS_USER, &[&""]).await.unwrap();
    let visible: Vec<String> = tx
        .query("SELECT id FROM collections", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(visible, vec![public.clone()]);
    tx.rollback().await.unwrap();

    assert_eq!(private_before, collection_row(&stack, &private).await);
    assert_eq!(public_before, collection_row(&stack, &public).await);
    assert_count(&stack, &private, 1).await;
    assert_count(&stack, &public, 1).await;
}

#[tokio::test]
async fn unknown_query_parameters_are_refused() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    stack
        .get("/api/v1/collections?bogus=1", Some(&ann))
        .await
        .assert_problem(422);
    stack
        .get("/api/v1/characters/anything/ratings?bogus=1", None)
        .await
        .assert_problem(422);
}

/// Filing a character with generated images answers its card with links,
/// never bucket keys, as the member list does.
#[tokio::test]
async fn a_filed_characters_card_carries_links_not_bucket_keys() {
    let stack = spawn_stack().await;
    let (ann, _) = stack.buyer("ann@example.com", "ann", 100).await;
    let character = stack
        .character(
            &ann,
            json!({"name": "Aria", "prompt": "an elf archer", "style_type": "fantasy"}),
        )
        .await;
    let generated = stack
        .call(
            Method::POST,
            &format!("/api/v1/characters/{character}/generate"),
            Some(&ann),
            Some(json!({})),
        )
        .await;
    assert_eq!(generated.status.as_u16(), 202, "{}", generated.body);
    let response = stack
        .stack
        .worker
        .handle_batch(stack.stack.queue.receive(1))
        .await;
    assert!(response.batch_item_failures.is_empty());
    let collection = create(&stack, &ann, json!({"name": "Heroes"})).await;
    let added = put_member(&stack, &ann, collection["id"].as_str().unwrap(), &character).await;
    assert_eq!(added.status.as_u16(), 201, "{}", added.body);
    let card = &added.body["character"];
    for field in ["primary_image_url", "thumbnail_url"] {
        let link = card[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field}: {card}"));
        assert!(link.contains("signature="), "{field} is not a link: {link}");
    }
    assert!(
        !added.body.to_string().contains("\"users/"),
        "a raw key leaked: {}",
        added.body
    );
}
