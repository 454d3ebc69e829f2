//! A character's image history and its family of variants, over real HTTP
//! against real PostgreSQL and the local stack's storage: every generation is
//! kept, the owner picks the primary image or deletes images (the files go
//! too), lists walk every image once, variants are listed by version with
//! each caller seeing only what they may, deleting a source keeps its
//! variants' images, and row-level security stops the API role even where a
//! handler would forget.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{Value, json};
use shared::jobs::worker::Worker;
use testkit::a1111::StandIn;
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

/// Signs in a user with credits to spare, on a tier that renders batches.
async fn person(stack: &TestStack, email: &str, username: &str) -> (String, String) {
    let token = stack.user(email, username).await;
    let id = user_id(stack, email).await;
    let client = stack.sql().await;
    client
        .execute(
            "UPDATE users SET daily_quota = 0, subscription_tier = 'PRO' WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    shared::credits::ledger::post(
        &client,
        &id,
        shared::credits::ledger::Entry::new("purchase", 1000, "pack"),
    )
    .await
    .unwrap();
    (token, id)
}

async fn create(stack: &TestStack, token: &str, name: &str, is_public: bool) -> String {
    let reply = stack
        .call(
            Method::POST,
            "/api/v1/characters",
            Some(token),
            Some(
                json!({"name": name, "prompt": format!("{name}, an elf archer at dawn"),
                        "style_type": "fantasy", "generation_seed": 7, "is_public": is_public}),
            ),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body["id"].as_str().unwrap().to_string()
}

async fn dispatch(stack: &TestStack, token: &str, character: &str, body: Value) -> Value {
    let reply = stack
        .call(
            Method::POST,
            &format!("/api/v1/characters/{character}/generate"),
            Some(token),
            Some(body),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    reply.body
}

/// Runs every queued job with `worker`.
async fn work(stack: &TestStack, worker: &Worker) {
    let batch = stack.stack.queue.receive(10);
    assert!(!batch.records.is_empty(), "nothing was queued");
    let response = worker.handle_batch(batch).await;
    assert!(response.batch_item_failures.is_empty());
}

/// A job rendered to completion by the stack's worker (the procedural
/// fallback); returns the completed job.
async fn generate(stack: &TestStack, token: &str, character: &str, body: Value) -> Value {
    let job = dispatch(stack, token, character, body).await;
    work(stack, &stack.stack.worker).await;
    let id = job["id"].as_str().unwrap();
    let done = stack.get(&format!("/api/v1/jobs/{id}"), Some(token)).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.body["status"], "completed", "{}", done.body);
    done.body
}

async fn images(stack: &TestStack, token: Option<&str>, character: &str) -> Value {
    let reply = stack
        .get(&format!("/api/v1/characters/{character}/images"), token)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

async fn character(stack: &TestStack, token: Option<&str>, id: &str) -> Value {
    let reply = stack.get(&format!("/api/v1/characters/{id}"), token).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

async fn set_primary(stack: &TestStack, token: &str, character: &str, body: Value) -> Reply {
    stack
        .call(
            Method::PUT,
            &format!("/api/v1/characters/{character}/primary-image"),
            Some(token),
            Some(body),
        )
        .await
}

async fn delete_image(stack: &TestStack, token: &str, character: &str, image: &str) -> Reply {
    stack
        .call(
            Method::DELETE,
            &format!("/api/v1/characters/{character}/images/{image}"),
            Some(token),
            None,
        )
        .await
}

/// A link without its time-limited query (`?expires=…&signature=…`).
fn path_of(link: &Value) -> String {
    link.as_str()
        .unwrap_or_else(|| panic!("not a link: {link}"))
        .split('?')
        .next()
        .unwrap_or_default()
        .to_string()
}

async fn fetch(stack: &TestStack, link: &Value) -> u16 {
    stack
        .http
        .get(link.as_str().unwrap())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn ids(items: &Value) -> Vec<String> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

fn assert_field_error(reply: &Reply, field: &str) {
    reply.assert_problem(422);
    let fields: Vec<&str> = reply.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&field), "{}", reply.body);
}

async fn activity_count(stack: &TestStack, kind: &str, entity: &str) -> i64 {
    stack
        .sql()
        .await
        .query_one(
            "SELECT count(*) FROM user_activity_logs WHERE activity_type = $1 AND entity_id = $2",
            &[&kind, &entity],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn every_generation_is_kept_and_placeholders_say_so() {
    let stack = spawn_stack().await;
    let (token, _) = person(&stack, "ann@example.com", "ann").await;
    let aria = create(&stack, &token, "Aria", false).await;
    let first = generate(&stack, &token, &aria, json!({"width": 512, "height": 384})).await;
    let second = generate(&stack, &token, &aria, json!({"width": 256, "height": 256})).await;

    let listed = images(&stack, Some(&token), &aria).await;
    assert_eq!(listed["next_cursor"], Value::Null);
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{listed}");
    // Newest first; the first image stays primary.
    let (newer, older) = (&items[0], &items[1]);
    assert_eq!(newer["job_id"], second["id"]);
    assert_eq!(older["job_id"], first["id"]);
    assert_eq!(older["is_primary"], true);
    assert_eq!(newer["is_primary"], false);
    for (image, (width, height)) in [(older, (512, 384)), (newer, (256, 256))] {
        assert_eq!(image["character_id"], aria.as_str());
        assert_eq!(image["job_type"], "character_generation");
        assert_eq!(image["batch_index"], 0);
        assert_eq!(
            (image["width"].clone(), image["height"].clone()),
            (json!(width), json!(height))
        );
        assert!(image["byte_size"].as_i64().unwrap() > 0, "{image}");
        assert_eq!(image["content_type"], "image/png");
        assert_eq!(image["seed"], 7);
        assert_eq!(image["source_image_id"], Value::Null);
        // The stack's worker renders with the procedural fallback: placeholders.
        assert_eq!(image["generation_provider"], "fallback");
        assert_eq!(image["placeholder"], true);
        assert_eq!(
            image["parameters"]["input"]["prompt"],
            "Aria, an elf archer at dawn"
        );
        for link in ["url", "thumbnail_url"] {
            assert!(
                image[link].as_str().unwrap().contains("signature="),
                "{image}"
            );
            assert_eq!(fetch(&stack, &image[link]).await, 200, "{link} of {image}");
        }
    }
    assert!(
        !listed.to_string().contains("\"users/"),
        "a raw key leaked: {listed}"
    );

    // The character shows the first as primary and lists the other.
    let shown = character(&stack, Some(&token), &aria).await;
    assert_eq!(path_of(&shown["primary_image_url"]), path_of(&older["url"]));
    assert_eq!(
        path_of(&shown["thumbnail_url"]),
        path_of(&older["thumbnail_url"])
    );
    let additional: Vec<String> = shown["additional_images"]
        .as_array()
        .unwrap()
        .iter()
        .map(path_of)
        .collect();
    assert_eq!(additional, vec![path_of(&newer["url"])]);
    assert_eq!(shown["image_metadata"]["images"], 2);

    // An image from an AI server is not a placeholder.
    let server = StandIn::start().await;
    let job = dispatch(&stack, &token, &aria, json!({})).await;
    work(
        &stack,
        &Worker {
            generator: std::sync::Arc::new(server.chain()),
            ..stack.stack.worker.clone()
        },
    )
    .await;
    let listed = images(&stack, Some(&token), &aria).await;
    let newest = &listed["items"][0];
    assert_eq!(newest["job_id"], job["id"]);
    assert_eq!(newest["generation_provider"], "primary");
    assert_eq!(newest["placeholder"], false);
    assert_eq!(listed["items"].as_array().unwrap().len(), 3);
    assert_eq!(listed["items"][2]["is_primary"], true);
}

#[tokio::test]
async fn the_owner_chooses_the_primary_image_and_nobody_else_can() {
    let stack = spawn_stack().await;
    let (ann, _) = person(&stack, "ann@example.com", "ann").await;
    let (bob, _) = person(&stack, "bob@example.com", "bob").await;
    let public = create(&stack, &ann, "Shown", true).await;
    let private = create(&stack, &ann, "Secret", false).await;
    generate(&stack, &ann, &public, json!({})).await;
    generate(&stack, &ann, &public, json!({})).await;
    generate(&stack, &ann, &private, json!({})).await;
    let listed = images(&stack, Some(&ann), &public).await;
    let (newer, older) = (listed["items"][0].clone(), listed["items"][1].clone());
    assert_eq!(older["is_primary"], true);
    let newer_id = newer["id"].as_str().unwrap();

    let chosen = set_primary(&stack, &ann, &public, json!({"image_id": newer_id})).await;
    assert_eq!(chosen.status, 200, "{}", chosen.body);
    assert_eq!(chosen.body["id"], public.as_str());
    assert_eq!(
        path_of(&chosen.body["primary_image_url"]),
        path_of(&newer["url"])
    );
    assert_eq!(
        path_of(&chosen.body["thumbnail_url"]),
        path_of(&newer["thumbnail_url"])
    );
    let additional: Vec<String> = chosen.body["additional_images"]
        .as_array()
        .unwrap()
        .iter()
        .map(path_of)
        .collect();
    assert_eq!(additional, vec![path_of(&older["url"])]);
    let shown = character(&stack, Some(&ann), &public).await;
    assert_eq!(path_of(&shown["primary_image_url"]), path_of(&newer["url"]));
    let relisted = images(&stack, Some(&ann), &public).await;
    assert_eq!(relisted["items"][0]["is_primary"], true);
    assert_eq!(relisted["items"][1]["is_primary"], false);
    assert_eq!(
        activity_count(&stack, "character_primary_image_set", &public).await,
        1
    );
    // Choosing it again changes nothing.
    let again = set_primary(&stack, &ann, &public, json!({"image_id": newer_id})).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(
        path_of(&again.body["primary_image_url"]),
        path_of(&newer["url"])
    );

    // Invalid bodies: 422, nothing changes.
    let private_image = images(&stack, Some(&ann), &private).await["items"][0]["id"].clone();
    for (body, field) in [
        (json!({"image_id": private_image}), "image_id"),
        (json!({"image_id": "no-such-image"}), "image_id"),
        (json!({"image_id": "x".repeat(200)}), "image_id"),
        (json!({"image_id": 5}), "image_id"),
        (json!({"image_id": null}), "image_id"),
        (json!({}), "image_id"),
        (
            json!({"image_id": newer_id, "primary_image_url": "x"}),
            "primary_image_url",
        ),
    ] {
        let reply = set_primary(&stack, &ann, &public, body.clone()).await;
        assert_field_error(&reply, field);
    }
    let shown = character(&stack, Some(&ann), &public).await;
    assert_eq!(path_of(&shown["primary_image_url"]), path_of(&newer["url"]));

    // Someone else: a public character is 403, a private one 404, anonymous 401.
    let older_id = older["id"].as_str().unwrap();
    set_primary(&stack, &bob, &public, json!({"image_id": older_id}))
        .await
        .assert_problem(403);
    set_primary(&stack, &bob, &private, json!({"image_id": private_image}))
        .await
        .assert_problem(404);
    stack
        .call(
            Method::PUT,
            &format!("/api/v1/characters/{public}/primary-image"),
            None,
            Some(json!({"image_id": older_id})),
        )
        .await
        .assert_problem(401);
    delete_image(&stack, &bob, &public, older_id)
        .await
        .assert_problem(403);
    delete_image(&stack, &bob, &private, private_image.as_str().unwrap())
        .await
        .assert_problem(404);
    stack
        .call(
            Method::DELETE,
            &format!("/api/v1/characters/{public}/images/{older_id}"),
            None,
            None,
        )
        .await
        .assert_problem(401);
    let shown = character(&stack, Some(&ann), &public).await;
    assert_eq!(path_of(&shown["primary_image_url"]), path_of(&newer["url"]));
    assert_eq!(
        images(&stack, Some(&ann), &public).await["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // The images are visible exactly when the character is.
    let to_bob = images(&stack, Some(&bob), &public).await;
    assert_eq!(ids(&to_bob["items"]), ids(&relisted["items"]));
    let to_anyone = images(&stack, None, &public).await;
    assert_eq!(ids(&to_anyone["items"]), ids(&relisted["items"]));
    for token in [Some(bob.as_str()), None] {
        stack
            .get(&format!("/api/v1/characters/{private}/images"), token)
            .await
            .assert_problem(404);
    }
    stack
        .get("/api/v1/characters/no-such-character/images", Some(&ann))
        .await
        .assert_problem(404);
}

#[tokio::test]
async fn deleting_the_primary_image_picks_the_next_and_removes_its_files() {
    let stack = spawn_stack().await;
    let (ann, _) = person(&stack, "ann@example.com", "ann").await;
    let aria = create(&stack, &ann, "Aria", false).await;
    let other = create(&stack, &ann, "Other", false).await;
    let first = generate(&stack, &ann, &aria, json!({})).await;
    generate(&stack, &ann, &aria, json!({})).await;
    generate(&stack, &ann, &aria, json!({})).await;
    generate(&stack, &ann, &other, json!({})).await;
    let listed = images(&stack, Some(&ann), &aria).await;
    let items = listed["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 3);
    let (primary, next, newest) = (&items[2], &items[1], &items[0]);
    assert_eq!(primary["is_primary"], true);
    assert_eq!(primary["job_id"], first["id"]);
    let primary_id = primary["id"].as_str().unwrap();
    for link in ["url", "thumbnail_url"] {
        assert_eq!(fetch(&stack, &primary[link]).await, 200);
    }

    let deleted = delete_image(&stack, &ann, &aria, primary_id).await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    // Its files are gone.
    for link in ["url", "thumbnail_url"] {
        assert_eq!(
            fetch(&stack, &primary[link]).await,
            404,
            "{link} outlived its image"
        );
    }
    // The oldest remaining image is primary now.
    let relisted = images(&stack, Some(&ann), &aria).await;
    assert_eq!(ids(&relisted["items"]), ids(&json!([newest, next])));
    assert_eq!(relisted["items"][1]["is_primary"], true);
    assert_eq!(relisted["items"][0]["is_primary"], false);
    let shown = character(&stack, Some(&ann), &aria).await;
    assert_eq!(path_of(&shown["primary_image_url"]), path_of(&next["url"]));
    let additional: Vec<String> = shown["additional_images"]
        .as_array()
        .unwrap()
        .iter()
        .map(path_of)
        .collect();
    assert_eq!(additional, vec![path_of(&newest["url"])]);
    // Its job no longer lists it; the deletion is logged.
    let job = stack
        .get(
            &format!("/api/v1/jobs/{}", first["id"].as_str().unwrap()),
            Some(&ann),
        )
        .await;
    assert_eq!(job.status, 200, "{}", job.body);
    assert_eq!(job.body["output_urls"], json!([]));
    assert_eq!(
        activity_count(&stack, "character_image_deleted", &aria).await,
        1
    );
    // The others are still there.
    for image in [next, newest] {
        assert_eq!(fetch(&stack, &image["url"]).await, 200);
    }

    // An image that is not (or no longer) this character's is a 404 and changes nothing.
    delete_image(&stack, &ann, &aria, primary_id)
        .await
        .assert_problem(404);
    delete_image(&stack, &ann, &aria, "no-such-image")
        .await
        .assert_problem(404);
    let others = images(&stack, Some(&ann), &other).await;
    let others_image = others["items"][0]["id"].as_str().unwrap();
    delete_image(&stack, &ann, &aria, others_image)
        .await
        .assert_problem(404);
    assert_eq!(fetch(&stack, &others["items"][0]["url"]).await, 200);
    assert_eq!(
        images(&stack, Some(&ann), &other).await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Deleting the rest leaves a character without an image.
    for image in [next, newest] {
        let reply = delete_image(&stack, &ann, &aria, image["id"].as_str().unwrap()).await;
        assert_eq!(reply.status, 204, "{}", reply.body);
        assert_eq!(fetch(&stack, &image["url"]).await, 404);
    }
    let shown = character(&stack, Some(&ann), &aria).await;
    assert_eq!(shown["primary_image_url"], Value::Null);
    assert_eq!(shown["thumbnail_url"], Value::Null);
    assert_eq!(shown["additional_images"], json!([]));
    assert_eq!(images(&stack, Some(&ann), &aria).await["items"], json!([]));
}

#[tokio::test]
async fn pages_walk_every_image_exactly_once() {
    let stack = spawn_stack().await;
    let (ann, _) = person(&stack, "ann@example.com", "ann").await;
    let aria = create(&stack, &ann, "Aria", true).await;
    // Batches: the images of one job share their creation time, so the id breaks ties.
    for _ in 0..3 {
        generate(
            &stack,
            &ann,
            &aria,
            json!({"batch_size": 3, "width": 64, "height": 64}),
        )
        .await;
    }
    let expected: Vec<String> = stack
        .sql()
        .await
        .query(
            "SELECT id FROM character_images WHERE character_id = $1 ORDER BY created_at DESC, id DESC",
            &[&aria],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(expected.len(), 9);

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/characters/{aria}/images?limit=2&cursor={c}"),
            None => format!("/api/v1/characters/{aria}/images?limit=2"),
        };
        let page = stack.get(&path, None).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(ids(&page.body["items"]));
        pages += 1;
        if pages == 1 {
            // An image made while the client walks the pages does not shift them.
            generate(&stack, &ann, &aria, json!({"width": 64, "height": 64})).await;
        }
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 5);
    assert_eq!(seen, expected, "every image once, newest first");
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len());

    // Unknown parameters, bad limits and foreign cursors are 422s.
    for query in ["sort=recent", "limit=0", "limit=101", "cursor=garbage!"] {
        stack
            .get(&format!("/api/v1/characters/{aria}/images?{query}"), None)
            .await
            .assert_problem(422);
    }
}

/// Makes a variant of `character` (a `variation` job) and returns its id.
async fn variant(stack: &TestStack, token: &str, character: &str, body: Value) -> String {
    let mut body = body;
    body["job_type"] = json!("variation");
    let job = generate(stack, token, character, body).await;
    let id = job["result_character_id"].as_str().unwrap().to_string();
    let made = character_of(stack, token, &id).await;
    assert_eq!(made["parent_character_id"], character);
    id
}

async fn character_of(stack: &TestStack, token: &str, id: &str) -> Value {
    character(stack, Some(token), id).await
}

async fn family(stack: &TestStack, token: Option<&str>, id: &str, limit: usize) -> Vec<Value> {
    let mut members = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/v1/characters/{id}/variants?limit={limit}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = stack.get(&path, token).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= limit);
        members.extend(items.iter().cloned());
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    members
}

#[tokio::test]
async fn variants_list_the_family_each_caller_may_see() {
    let stack = spawn_stack().await;
    let (ann, _) = person(&stack, "ann@example.com", "ann").await;
    let (bob, _) = person(&stack, "bob@example.com", "bob").await;
    let root = create(&stack, &ann, "Aria", true).await;
    generate(&stack, &ann, &root, json!({})).await;
    // Variants are private when made; Ann publishes one of them.
    let first = variant(&stack, &ann, &root, json!({})).await;
    let posed = variant(
        &stack,
        &ann,
        &root,
        json!({"variant_type": "pose_change", "changes": {"name": "Aria, kneeling"}}),
    )
    .await;
    let published = stack
        .call(
            Method::PATCH,
            &format!("/api/v1/characters/{posed}"),
            Some(&ann),
            Some(json!({"is_public": true})),
        )
        .await;
    assert_eq!(published.status, 200, "{}", published.body);
    let grandchild = variant(&stack, &ann, &first, json!({})).await;

    // The owner sees the whole family, by version, from any member.
    let whole = family(&stack, Some(&ann), &root, 24).await;
    assert_eq!(
        ids(&json!(whole)),
        vec![
            root.clone(),
            first.clone(),
            posed.clone(),
            grandchild.clone()
        ]
    );
    let versions: Vec<i64> = whole
        .iter()
        .map(|c| c["version_number"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4]);
    let tree: Vec<(Value, Value)> = whole
        .iter()
        .map(|c| (c["parent_character_id"].clone(), c["variant_type"].clone()))
        .collect();
    assert_eq!(
        tree,
        vec![
            (Value::Null, json!("original")),
            (json!(root), json!("variation")),
            (json!(root), json!("pose_change")),
            (json!(first), json!("variation")),
        ]
    );
    assert_eq!(whole[2]["name"], "Aria, kneeling");
    assert!(!json!(whole).to_string().contains("\"users/"));
    for member in [&first, &grandchild] {
        assert_eq!(
            ids(&json!(family(&stack, Some(&ann), member, 24).await)),
            ids(&json!(whole))
        );
    }
    // One per page walks the same family once.
    assert_eq!(
        ids(&json!(family(&stack, Some(&ann), &root, 1).await)),
        ids(&json!(whole))
    );

    // A variant's images are its own, under its own id.
    let variants_images = images(&stack, Some(&ann), &first).await;
    assert_eq!(variants_images["items"].as_array().unwrap().len(), 1);
    assert_eq!(variants_images["items"][0]["job_type"], "variation");
    assert_eq!(variants_images["items"][0]["is_primary"], true);
    assert!(variants_images["items"][0]["source_image_id"].is_string());
    assert_eq!(
        images(&stack, Some(&ann), &root).await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Anyone else sees only the public members.
    for token in [Some(bob.as_str()), None] {
        let seen = family(&stack, token, &root, 24).await;
        assert_eq!(ids(&json!(seen)), vec![root.clone(), posed.clone()]);
        assert_eq!(
            ids(&json!(family(&stack, token, &posed, 1).await)),
            vec![root.clone(), posed.clone()]
        );
        for hidden in [&first, &grandchild] {
            stack
                .get(&format!("/api/v1/characters/{hidden}/variants"), token)
                .await
                .assert_problem(404);
        }
    }
    stack
        .get("/api/v1/characters/no-such-character/variants", Some(&ann))
        .await
        .assert_problem(404);
    // Unknown parameters, bad limits and foreign cursors are 422s (a cursor of the images
    // list is not one of this list).
    let images_cursor = shared::web::pagination::encode(&shared::web::pagination::TimeKey {
        at: chrono::Utc::now(),
        id: root.clone(),
    });
    for query in [
        "sort=version".to_string(),
        "limit=0".to_string(),
        "cursor=garbage!".to_string(),
        format!("cursor={images_cursor}"),
    ] {
        stack
            .get(
                &format!("/api/v1/characters/{root}/variants?{query}"),
                Some(&ann),
            )
            .await
            .assert_problem(422);
    }
}

#[tokio::test]
async fn deleting_a_source_keeps_its_variants_and_their_images() {
    let stack = spawn_stack().await;
    let (ann, _) = person(&stack, "ann@example.com", "ann").await;
    let source = create(&stack, &ann, "Aria", false).await;
    generate(&stack, &ann, &source, json!({})).await;
    let made = variant(&stack, &ann, &source, json!({})).await;
    let sources = images(&stack, Some(&ann), &source).await["items"][0].clone();
    let variants = images(&stack, Some(&ann), &made).await["items"][0].clone();
    for image in [&sources, &variants] {
        for link in ["url", "thumbnail_url"] {
            assert_eq!(fetch(&stack, &image[link]).await, 200);
        }
    }

    let deleted = stack
        .call(
            Method::DELETE,
            &format!("/api/v1/characters/{source}"),
            Some(&ann),
            None,
        )
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);

    for link in ["url", "thumbnail_url"] {
        assert_eq!(
            fetch(&stack, &sources[link]).await,
            404,
            "the source's {link} outlived it"
        );
        assert_eq!(
            fetch(&stack, &variants[link]).await,
            200,
            "the variant's {link} went with its source"
        );
    }
    // The variant stays, as the first of its own family now.
    let kept = character(&stack, Some(&ann), &made).await;
    assert_eq!(kept["parent_character_id"], Value::Null);
    assert_eq!(
        path_of(&kept["primary_image_url"]),
        path_of(&variants["url"])
    );
    assert_eq!(fetch(&stack, &kept["primary_image_url"]).await, 200);
    assert_eq!(
        ids(&images(&stack, Some(&ann), &made).await["items"]),
        ids(&json!([variants]))
    );
    assert_eq!(
        ids(&json!(family(&stack, Some(&ann), &made, 24).await)),
        vec![made.clone()]
    );
}

#[tokio::test]
async fn row_level_security_stops_changes_to_someone_elses_images() {
    let stack = spawn_stack().await;
    let (ann, ann_id) = person(&stack, "ann@example.com", "ann").await;
    let (_bob, bob_id) = person(&stack, "bob@example.com", "bob").await;
    let public = create(&stack, &ann, "Shown", true).await;
    let other = create(&stack, &ann, "Other", false).await;
    generate(&stack, &ann, &public, json!({})).await;
    generate(&stack, &ann, &public, json!({})).await;
    generate(&stack, &ann, &other, json!({})).await;
    let listed = images(&stack, Some(&ann), &public).await;
    let newer = listed["items"][0]["id"].as_str().unwrap().to_string();
    let older = listed["items"][1]["id"].as_str().unwrap().to_string();
    let others = images(&stack, Some(&ann), &other).await["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // As the API role with Bob as the caller, no handler involved.
    let mut client = stack.sql().await;
    let as_user = "SELECT set_config('role', 'app_api', true), set_config('app.user_id', $1, true)";
    let tx = client.transaction().await.unwrap();
    tx.execute(as_user, &[&bob_id]).await.unwrap();
    // Bob can see the images of Ann's public character (its page shows them) ...
    let visible: i64 = tx
        .query_one(
            "SELECT count(*) FROM character_images WHERE character_id = $1",
            &[&public],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(visible, 2);
    // ... but neither delete them nor choose the primary one.
    let deleted = tx
        .execute("DELETE FROM character_images WHERE id = $1", &[&older])
        .await
        .unwrap();
    assert_eq!(deleted, 0, "Bob deleted Ann's image");
    assert_eq!(
        tx.execute("DELETE FROM character_images", &[])
            .await
            .unwrap(),
        0
    );
    let updated = tx
        .execute(
            "UPDATE characters SET primary_image_id = $2 WHERE id = $1",
            &[&public, &newer],
        )
        .await
        .unwrap();
    assert_eq!(updated, 0, "Bob changed Ann's primary image");
    tx.rollback().await.unwrap();

    // Control: as Ann the same statements change one row each, so the zeros above are RLS.
    let tx = client.transaction().await.unwrap();
    tx.execute(as_user, &[&ann_id]).await.unwrap();
    assert_eq!(
        tx.execute(
            "UPDATE characters SET primary_image_id = $2 WHERE id = $1",
            &[&public, &newer],
        )
        .await
        .unwrap(),
        1
    );
    assert_eq!(
        tx.execute("DELETE FROM character_images WHERE id = $1", &[&older])
            .await
            .unwrap(),
        1
    );
    tx.rollback().await.unwrap();

    // And even the owner cannot make an image of another character primary.
    let tx = client.transaction().await.unwrap();
    tx.execute(as_user, &[&ann_id]).await.unwrap();
    let refused = tx
        .execute(
            "UPDATE characters SET primary_image_id = $2 WHERE id = $1",
            &[&public, &others],
        )
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION)
    );
    tx.rollback().await.unwrap();

    // Nothing changed.
    let after = images(&stack, Some(&ann), &public).await;
    assert_eq!(ids(&after["items"]), vec![newer, older.clone()]);
    assert_eq!(after["items"][1]["is_primary"], true);
}
