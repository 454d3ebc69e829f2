//! Characters over real HTTP against real PostgreSQL: validation of every
//! field, ownership and visibility (404 for others' private work, 403 for
//! changing others' public work), row-level security behind the handlers,
//! variants, the content filter, views, and stable pagination.

use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};
use testkit::{TestStack, spawn_stack};

fn minimal(name: &str) -> Value {
    json!({"name": name, "prompt": "a wandering bard with a lute", "style_type": "fantasy"})
}

async fn create(stack: &TestStack, token: &str, body: Value) -> Value {
    let reply = stack
        .call(Method::POST, "/api/v1/characters", Some(token), Some(body))
        .await;
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
    reply.body
}

async fn scalar(stack: &TestStack, sql: &str) -> i64 {
    stack.sql().await.query_one(sql, &[]).await.unwrap().get(0)
}

async fn user_id(stack: &TestStack, email: &str) -> String {
    stack
        .sql()
        .await
        .query_one("SELECT id FROM users WHERE email = $1", &[&email])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn create_read_update_delete() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let body = json!({
        "name": "Aria",
        "description": "An elf archer.\nQuiet.",
        "prompt": "an elf archer in a misty forest",
        "negative_prompt": "blurry",
        "style_type": "fantasy",
        "art_style": "watercolour",
        "mood": "calm",
        "color_palette": ["#1E90FF", "#fff"],
        "model_version": "sdxl-1.0",
        "generation_seed": 42,
        "cfg_scale": 8.5,
        "steps": 30,
        "sampler": "Euler a",
        "tags": ["Elf", "archer", "elf"],
        "is_public": false,
        "allow_commercial_use": true,
        "license_type": "creative_commons"
    });
    let created = create(&stack, &ann, body).await;
    let id = created["id"].as_str().unwrap();
    assert_eq!(created["cfg_scale"], 8.5);
    assert_eq!(created["tags"], json!(["elf", "archer"]));
    assert_eq!(created["color_palette"], json!(["#1e90ff", "#fff"]));
    assert_eq!(created["version_number"], 1);
    assert_eq!(created["variant_type"], "original");
    assert_eq!(created["published_at"], Value::Null);

    let read = stack
        .get(&format!("/api/v1/characters/{id}"), Some(&ann))
        .await;
    assert_eq!(read.body["name"], "Aria");
    assert_eq!(
        read.body["view_count"], 0,
        "the owner's reads are not views"
    );

    let patched = stack
        .call(
            Method::PATCH,
            &format!("/api/v1/characters/{id}"),
            Some(&ann),
            Some(json!({"name": "Aria the Swift", "description": null, "is_public": true, "cfg_scale": 12})),
        )
        .await;
    assert_eq!(patched.status.as_u16(), 200, "{}", patched.body);
    assert_eq!(patched.body["name"], "Aria the Swift");
    assert_eq!(patched.body["description"], Value::Null);
    assert_eq!(patched.body["cfg_scale"], 12.0);
    assert!(
        patched.body["published_at"].is_string(),
        "publishing stamps published_at"
    );
    assert_eq!(
        patched.body["prompt"], "an elf archer in a misty forest",
        "absent fields stay"
    );

    let deleted = stack
        .call(
            Method::DELETE,
            &format!("/api/v1/characters/{id}"),
            Some(&ann),
            None,
        )
        .await;
    assert_eq!(deleted.status.as_u16(), 204);
    stack
        .get(&format!("/api/v1/characters/{id}"), Some(&ann))
        .await
        .assert_problem(404);
    let activity = scalar(
        &stack,
        "SELECT count(*) FROM user_activity_logs WHERE activity_type IN ('character_created', 'character_updated', 'character_deleted')",
    )
    .await;
    assert_eq!(activity, 3);
}

#[tokio::test]
async fn total_characters_created_stays_right_under_concurrency() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let replies = join_all((0..12).map(|i| {
        stack
            .http
            .post(format!("{}/api/v1/characters", stack.base_url))
            .bearer_auth(&ann)
            .json(&minimal(&format!("Hero {i}")))
            .send()
    }))
    .await;
    assert!(
        replies
            .into_iter()
            .all(|r| r.unwrap().status().as_u16() == 201)
    );
    let me = stack.get("/api/v1/me", Some(&ann)).await;
    assert_eq!(me.body["total_characters_created"], 12);
    assert_eq!(scalar(&stack, "SELECT count(*) FROM characters").await, 12);
}

#[tokio::test]
async fn bad_input_for_every_field_is_refused_and_nothing_is_stored() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({"name": ""}), "name"),
        (json!({"name": "x".repeat(101)}), "name"),
        (json!({"name": 7}), "name"),
        (json!({"name": null}), "name"),
        (json!({"prompt": ""}), "prompt"),
        (json!({"prompt": "p".repeat(2001)}), "prompt"),
        (json!({"description": "d".repeat(2001)}), "description"),
        (
            json!({"negative_prompt": "n".repeat(2001)}),
            "negative_prompt",
        ),
        (json!({"style_type": "watercolour"}), "style_type"),
        (json!({"style_type": ["anime"]}), "style_type"),
        (json!({"art_style": "a".repeat(51)}), "art_style"),
        (json!({"mood": "m".repeat(51)}), "mood"),
        (json!({"color_palette": ["navy"]}), "color_palette[0]"),
        (json!({"color_palette": "#ffffff"}), "color_palette"),
        (json!({"model_version": "v1 beta"}), "model_version"),
        (json!({"generation_seed": -5}), "generation_seed"),
        (json!({"generation_seed": 1.5}), "generation_seed"),
        (json!({"cfg_scale": 0.5}), "cfg_scale"),
        (json!({"cfg_scale": 30.5}), "cfg_scale"),
        (json!({"cfg_scale": 7.25}), "cfg_scale"),
        (json!({"cfg_scale": "7.5"}), "cfg_scale"),
        (json!({"steps": 0}), "steps"),
        (json!({"steps": 151}), "steps"),
        (json!({"sampler": "Warp drive"}), "sampler"),
        (json!({"tags": ["ok", "no/slash"]}), "tags[1]"),
        (
            json!({"tags": (0..21).map(|i| format!("t{i}")).collect::<Vec<_>>()}),
            "tags",
        ),
        (json!({"is_public": "yes"}), "is_public"),
        (json!({"license_type": "gpl"}), "license_type"),
        (json!({"collection_id": "not-mine"}), "collection_id"),
        (
            json!({"parent_character_id": "missing", "variant_type": "pose_change"}),
            "parent_character_id",
        ),
        (json!({"variant_type": "pose_change"}), "variant_type"),
        (json!({"mystery": true}), "mystery"),
        // Read-only columns: mass assignment is refused by name.
        (json!({"user_id": "someone"}), "user_id"),
        (json!({"is_featured": true}), "is_featured"),
        (json!({"like_count": 1000}), "like_count"),
        (json!({"view_count": 1000}), "view_count"),
        (
            json!({"generation_status": "completed"}),
            "generation_status",
        ),
        (
            json!({"primary_image_url": "https://x.example.com/a.png"}),
            "primary_image_url",
        ),
        (json!({"version_number": 9}), "version_number"),
    ];
    for (patch, field) in cases {
        let mut body = minimal("Bad");
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let reply = stack
            .call(Method::POST, "/api/v1/characters", Some(&ann), Some(body))
            .await;
        reply.assert_problem(422);
        assert_eq!(
            reply.body["errors"][0]["field"], field,
            "{patch}: {}",
            reply.body
        );
    }
    for missing in ["name", "prompt", "style_type"] {
        let mut body = minimal("Bad");
        body.as_object_mut().unwrap().remove(missing);
        let reply = stack
            .call(Method::POST, "/api/v1/characters", Some(&ann), Some(body))
            .await;
        reply.assert_problem(422);
    }
    assert_eq!(scalar(&stack, "SELECT count(*) FROM characters").await, 0);

    // The same checks guard PATCH, and a refused PATCH changes nothing.
    let created = create(&stack, &ann, minimal("Good")).await;
    let path = format!("/api/v1/characters/{}", created["id"].as_str().unwrap());
    let before = stack.get(&path, Some(&ann)).await.body;
    for body in [
        json!({"steps": 500}),
        json!({"name": null}),
        json!({"like_count": 1}),
        json!({"parent_character_id": created["id"]}),
        json!({"variant_type": "pose_change"}),
        json!({"name": "Fine", "is_featured": true}),
    ] {
        let reply = stack
            .call(Method::PATCH, &path, Some(&ann), Some(body.clone()))
            .await;
        reply.assert_problem(422);
    }
    assert_eq!(before, stack.get(&path, Some(&ann)).await.body);
}

#[tokio::test]
async fn other_users_private_work_is_invisible_and_public_work_is_read_only() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let bob = stack.user("bob@example.com", "bob").await;
    let private = create(&stack, &ann, minimal("Secret")).await;
    let mut public_body = minimal("Shown");
    public_body["is_public"] = json!(true);
    let public = create(&stack, &ann, public_body).await;
    let private_path = format!("/api/v1/characters/{}", private["id"].as_str().unwrap());
    let public_path = format!("/api/v1/characters/{}", public["id"].as_str().unwrap());

    stack
        .get(&private_path, Some(&bob))
        .await
        .assert_problem(404);
    stack.get(&private_path, None).await.assert_problem(404);
    stack
        .call(
            Method::PATCH,
            &private_path,
            Some(&bob),
            Some(json!({"name": "Mine now"})),
        )
        .await
        .assert_problem(404);
    stack
        .call(Method::DELETE, &private_path, Some(&bob), None)
        .await
        .assert_problem(404);

    assert_eq!(
        stack.get(&public_path, Some(&bob)).await.status.as_u16(),
        200
    );
    assert_eq!(stack.get(&public_path, None).await.status.as_u16(), 200);
    stack
        .call(
            Method::PATCH,
            &public_path,
            Some(&bob),
            Some(json!({"name": "Mine now"})),
        )
        .await
        .assert_problem(403);
    stack
        .call(Method::DELETE, &public_path, Some(&bob), None)
        .await
        .assert_problem(403);

    // Anonymous callers must sign in to write or to list their own.
    stack
        .call(
            Method::POST,
            "/api/v1/characters",
            None,
            Some(minimal("Anon")),
        )
        .await
        .assert_problem(401);
    stack
        .get("/api/v1/characters", None)
        .await
        .assert_problem(401);
    stack
        .call(
            Method::PATCH,
            &public_path,
            None,
            Some(json!({"name": "x"})),
        )
        .await
        .assert_problem(401);
    stack
        .call(Method::DELETE, &public_path, None, None)
        .await
        .assert_problem(401);

    // Ids that cannot name a row are the same 404 as unknown ones, on every route.
    for path in [
        "/api/v1/characters/%00",
        &format!("/api/v1/characters/{}", "x".repeat(129)),
    ] {
        stack.get(path, Some(&bob)).await.assert_problem(404);
        stack
            .call(Method::PATCH, path, Some(&bob), Some(json!({"name": "x"})))
            .await
            .assert_problem(404);
        stack
            .call(Method::DELETE, path, Some(&bob), None)
            .await
            .assert_problem(404);
    }
    stack
        .get("/api/v1/users/%FF", None)
        .await
        .assert_problem(404);

    // Bob's own list never shows Ann's characters.
    let bobs = stack.get("/api/v1/characters", Some(&bob)).await;
    assert_eq!(bobs.body["items"], json!([]));
    let unchanged = stack.get(&public_path, Some(&ann)).await;
    assert_eq!(unchanged.body["name"], "Shown");
}

#[tokio::test]
async fn row_level_security_hides_private_rows_when_a_handler_forgets() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    stack.user("bob@example.com", "bob").await;
    let private = create(&stack, &ann, minimal("Secret")).await;
    let mut public_body = minimal("Shown");
    public_body["is_public"] = json!(true);
    let public = create(&stack, &ann, public_body).await;
    let bob_id = user_id(&stack, "bob@example.com").await;

    // A query as the API role with Bob as the caller, no handler involved.
    let mut client = stack.sql().await;
    let tx = client.transaction().await.unwrap();
    tx.execute(
        "SELECT set_config('role', 'app_api', true), set_config('app.user_id', $1, true)",
        &[&bob_id],
    )
    .await
    .unwrap();
    let visible: Vec<String> = tx
        .query("SELECT name FROM characters", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(visible, vec!["Shown".to_string()]);
    let private_id = private["id"].as_str().unwrap();
    let public_id = public["id"].as_str().unwrap();
    let changed = tx
        .execute(
            "UPDATE characters SET name = 'pwned' WHERE id = $1 OR id = $2",
            &[&private_id, &public_id],
        )
        .await
        .unwrap();
    assert_eq!(changed, 0, "Bob can change none of Ann's characters");
    let deleted = tx.execute("DELETE FROM characters", &[]).await.unwrap();
    assert_eq!(deleted, 0);
    tx.rollback().await.unwrap();

    // Counters and other derived columns are not writable by the API role at all.
    let tx = client.transaction().await.unwrap();
    let ann_id = user_id(&stack, "ann@example.com").await;
    tx.execute(
        "SELECT set_config('role', 'app_api', true), set_config('app.user_id', $1, true)",
        &[&ann_id],
    )
    .await
    .unwrap();
    let err = tx
        .execute(
            "UPDATE characters SET like_count = 1000 WHERE id = $1",
            &[&public_id],
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
}

#[tokio::test]
async fn views_are_counted_for_readers_other_than_the_owner() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let bob = stack.user("bob@example.com", "bob").await;
    let mut body = minimal("Shown");
    body["is_public"] = json!(true);
    let public = create(&stack, &ann, body).await;
    let path = format!("/api/v1/characters/{}", public["id"].as_str().unwrap());
    // Views are written in batches (see local/tests/gallery.rs for once per viewer and day):
    // each read answers the count written so far; the stack writes the batch here.
    let flush = || async {
        stack
            .stack
            .state
            .cache::<shared::characters::views::ViewCounter>()
            .flush(&stack.stack.state.db)
            .await
            .unwrap();
    };
    let read = |token: Option<String>| {
        let path = path.clone();
        let stack = &stack;
        async move {
            let reply = stack.get(&path, token.as_deref()).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            reply.body["view_count"].clone()
        }
    };
    read(Some(ann.clone())).await;
    flush().await;
    assert_eq!(
        read(Some(bob.clone())).await,
        0,
        "the owner's read is no view"
    );
    flush().await;
    assert_eq!(read(None).await, 1, "Bob's");
    flush().await;
    assert_eq!(
        read(Some(ann.clone())).await,
        2,
        "and the anonymous reader's"
    );
}

#[tokio::test]
async fn variants_take_their_lineage_from_the_parent() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let bob = stack.user("bob@example.com", "bob").await;
    let original = create(&stack, &ann, minimal("Original")).await;
    let mut variant = minimal("Variant");
    variant["parent_character_id"] = original["id"].clone();
    variant["variant_type"] = json!("outfit_change");
    let v2 = create(&stack, &ann, variant.clone()).await;
    assert_eq!(v2["version_number"], 2);
    assert_eq!(v2["variant_type"], "outfit_change");
    let mut v3_body = variant.clone();
    v3_body["parent_character_id"] = v2["id"].clone();
    assert_eq!(create(&stack, &ann, v3_body).await["version_number"], 3);

    // Bob may not derive from Ann's private character...
    let refused = stack
        .call(
            Method::POST,
            "/api/v1/characters",
            Some(&bob),
            Some(variant.clone()),
        )
        .await;
    refused.assert_problem(422);
    assert_eq!(refused.body["errors"][0]["field"], "parent_character_id");
    // ...but may from a public one.
    stack
        .call(
            Method::PATCH,
            &format!("/api/v1/characters/{}", original["id"].as_str().unwrap()),
            Some(&ann),
            Some(json!({"is_public": true})),
        )
        .await;
    // Versions number the whole family (Ann's 1, 2 and 3 are taken), whoever adds to it.
    let bobs = create(&stack, &bob, variant).await;
    assert_eq!(bobs["version_number"], 4);
    assert_eq!(
        bobs["user_id"],
        user_id(&stack, "bob@example.com").await.as_str()
    );
}

#[tokio::test]
async fn variants_made_at_once_never_share_a_version_number() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let original = create(&stack, &ann, minimal("Original")).await;
    let made = join_all((0..6).map(|i| {
        let mut variant = minimal(&format!("Variant {i}"));
        variant["parent_character_id"] = original["id"].clone();
        variant["variant_type"] = json!("pose_change");
        let stack = &stack;
        let ann = &ann;
        async move {
            create(stack, ann, variant).await["version_number"]
                .as_i64()
                .unwrap()
        }
    }))
    .await;
    let mut versions = made;
    versions.sort_unstable();
    assert_eq!(versions, vec![2, 3, 4, 5, 6, 7]);
}

#[tokio::test]
async fn the_content_filter_follows_the_users_level() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let mut body = minimal("Beach day");
    body["prompt"] = json!("an elf in a bikini on the beach");
    // moderate (the default) allows it, strict refuses it.
    create(&stack, &ann, body.clone()).await;
    stack
        .call(
            Method::PATCH,
            "/api/v1/me",
            Some(&ann),
            Some(json!({"content_filter_level": "strict"})),
        )
        .await;
    let refused = stack
        .call(
            Method::POST,
            "/api/v1/characters",
            Some(&ann),
            Some(body.clone()),
        )
        .await;
    refused.assert_problem(422);
    assert_eq!(refused.body["errors"][0]["field"], "prompt");
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("`suggestive`")
    );

    let mut explicit = minimal("Explicit");
    explicit["description"] = json!("NSFW pin-up");
    stack
        .call(
            Method::PATCH,
            "/api/v1/me",
            Some(&ann),
            Some(json!({"content_filter_level": "moderate"})),
        )
        .await;
    let refused = stack
        .call(
            Method::POST,
            "/api/v1/characters",
            Some(&ann),
            Some(explicit.clone()),
        )
        .await;
    refused.assert_problem(422);
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("`explicit-sexual`")
    );
    stack
        .call(
            Method::PATCH,
            "/api/v1/me",
            Some(&ann),
            Some(json!({"content_filter_level": "relaxed"})),
        )
        .await;
    create(&stack, &ann, explicit).await;
    assert_eq!(
        scalar(&stack, "SELECT count(*) FROM characters").await,
        2,
        "refused ones were not stored"
    );

    // Edits are filtered too.
    let created = create(&stack, &ann, minimal("Clean")).await;
    let reply = stack
        .call(
            Method::PATCH,
            &format!("/api/v1/characters/{}", created["id"].as_str().unwrap()),
            Some(&ann),
            Some(json!({"prompt": "an underage elf"})),
        )
        .await;
    reply.assert_problem(422);
    assert!(
        reply.body["detail"]
            .as_str()
            .unwrap()
            .contains("`minor-safety`")
    );
}

#[tokio::test]
async fn suspended_accounts_cannot_publish() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let draft = create(&stack, &ann, minimal("Draft")).await;
    stack
        .sql()
        .await
        .execute("UPDATE users SET account_status = 'suspended'", &[])
        .await
        .unwrap();
    let mut body = minimal("Public");
    body["is_public"] = json!(true);
    stack
        .call(Method::POST, "/api/v1/characters", Some(&ann), Some(body))
        .await
        .assert_problem(403);
    stack
        .call(
            Method::PATCH,
            &format!("/api/v1/characters/{}", draft["id"].as_str().unwrap()),
            Some(&ann),
            Some(json!({"is_public": true})),
        )
        .await
        .assert_problem(403);
    // Private work goes on.
    create(&stack, &ann, minimal("Still drawing")).await;
}

#[tokio::test]
async fn own_list_filters_and_collections() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let collection: String = stack
        .sql()
        .await
        .query_one(
            "INSERT INTO collections (user_id, name) VALUES ($1, 'Heroes') RETURNING id",
            &[&ann_id],
        )
        .await
        .unwrap()
        .get(0);
    let mut a = minimal("Aria");
    a["style_type"] = json!("anime");
    a["tags"] = json!(["elf"]);
    a["collection_id"] = json!(collection);
    let a = create(&stack, &ann, a).await;
    let mut b = minimal("Brom");
    b["prompt"] = json!("a dwarven blacksmith");
    b["tags"] = json!(["dwarf"]);
    create(&stack, &ann, b).await;
    let names = |reply: &Value| -> Vec<String> {
        reply["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names(
            &stack
                .get("/api/v1/characters?style_type=anime", Some(&ann))
                .await
                .body
        ),
        ["Aria"]
    );
    assert_eq!(
        names(
            &stack
                .get("/api/v1/characters?tag=dwarf", Some(&ann))
                .await
                .body
        ),
        ["Brom"]
    );
    assert_eq!(
        names(
            &stack
                .get("/api/v1/characters?q=blacksmith", Some(&ann))
                .await
                .body
        ),
        ["Brom"]
    );
    assert_eq!(
        names(
            &stack
                .get(
                    &format!("/api/v1/characters?collection_id={collection}"),
                    Some(&ann)
                )
                .await
                .body
        ),
        ["Aria"]
    );
    assert_eq!(
        names(
            &stack
                .get("/api/v1/characters?generation_status=pending", Some(&ann))
                .await
                .body
        ),
        ["Brom", "Aria"]
    );
    assert_eq!(a["collection_id"], collection.as_str());
    let members = scalar(&stack, "SELECT character_count::bigint FROM collections").await;
    assert_eq!(
        members, 1,
        "filing a character in a collection adds the membership"
    );
    for bad in [
        "style_type=watercolour",
        "generation_status=done",
        "limit=0",
        "limit=101",
        "limit=ten",
        "cursor=garbage",
        "sort=recent",
    ] {
        stack
            .get(&format!("/api/v1/characters?{bad}"), Some(&ann))
            .await
            .assert_problem(422);
    }
}

#[tokio::test]
async fn pagination_yields_every_row_exactly_once_while_rows_are_inserted() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    for i in 0..23 {
        create(&stack, &ann, minimal(&format!("Existing {i}"))).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut inserted = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/characters?limit=5&cursor={c}"),
            None => "/api/v1/characters?limit=5".to_string(),
        };
        let page = stack.get(&path, Some(&ann)).await;
        assert_eq!(page.status.as_u16(), 200, "{}", page.body);
        for item in page.body["items"].as_array().unwrap() {
            seen.push(item["name"].as_str().unwrap().to_string());
        }
        // Someone keeps creating while the client pages.
        create(&stack, &ann, minimal(&format!("New {inserted}"))).await;
        inserted += 1;
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let existing: Vec<&String> = seen.iter().filter(|n| n.starts_with("Existing")).collect();
    assert_eq!(
        existing.len(),
        23,
        "every pre-existing row exactly once: {seen:?}"
    );
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no row twice");
}

#[tokio::test]
async fn downloads_give_expiring_links_and_count() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let bob = stack.user("bob@example.com", "bob").await;
    let mut body = minimal("Shown");
    body["is_public"] = json!(true);
    let public = create(&stack, &ann, body).await;
    let private = create(&stack, &ann, minimal("Hidden")).await;
    let public_id = public["id"].as_str().unwrap();
    let download = format!("/api/v1/characters/{public_id}/download");

    // No image yet: a clear conflict, nothing counted.
    stack
        .call(Method::POST, &download, Some(&bob), None)
        .await
        .assert_problem(409);

    // The generation pipeline stores an object key; clients get signed links.
    let key = format!("users/ann/characters/{public_id}/job1/image.png");
    stack
        .stack
        .state
        .storage
        .as_ref()
        .unwrap()
        .put(&key, b"\x89PNG fake".to_vec(), "image/png")
        .await
        .unwrap();
    stack
        .sql()
        .await
        .execute(
            "UPDATE characters SET primary_image_url = $1 WHERE id = $2",
            &[&key, &public_id],
        )
        .await
        .unwrap();
    let link = stack.call(Method::POST, &download, Some(&bob), None).await;
    assert_eq!(link.status.as_u16(), 200, "{}", link.body);
    assert_eq!(link.body["download_count"], 1);
    assert!(link.body["expires_at"].is_string());
    let url = link.body["url"].as_str().unwrap();
    assert!(
        !url.contains("users/ann") || url.contains("signature="),
        "never a bare path"
    );
    let fetched = stack.http.get(url).send().await.unwrap();
    assert_eq!(fetched.status().as_u16(), 200);
    assert_eq!(fetched.headers()["content-type"], "image/png");
    assert_eq!(fetched.bytes().await.unwrap().as_ref(), b"\x89PNG fake");
    let forged = url.replace("signature=", "signature=00");
    assert_eq!(
        stack
            .http
            .get(&forged)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );
    let unsigned = url.split('?').next().unwrap();
    assert_eq!(
        stack
            .http
            .get(unsigned)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        422
    );

    let again = stack.call(Method::POST, &download, Some(&ann), None).await;
    assert_eq!(again.body["download_count"], 2);

    stack
        .call(
            Method::POST,
            &format!(
                "/api/v1/characters/{}/download",
                private["id"].as_str().unwrap()
            ),
            Some(&bob),
            None,
        )
        .await
        .assert_problem(404);
    stack
        .call(Method::POST, &download, None, None)
        .await
        .assert_problem(401);
}
