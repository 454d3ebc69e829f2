//! GDPR export and erasure over real HTTP against real PostgreSQL: a seeded
//! user who owns every kind of row exports all of it and nothing of anyone
//! else's (inline, or through storage when large); erasure leaves no trace of
//! the person in any table or in storage, keeps the ledger adding up, cancels
//! running jobs exactly once, leaves the other user alone, and is idempotent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use reqwest::Method;
use serde_json::{Value, json};
use shared::ports::generator::{
    GeneratedImages, GenerationRequest, GeneratorChain, GeneratorError, ImageGenerator,
    ProceduralGenerator, ProgressReporter,
};
use testkit::a1111::StandIn;
use testkit::ledger::assert_invariants;
use testkit::{Reply, TestStack, spawn_stack};

// ------------------------------------------------------------------------------------------
// Seeding a person who owns every kind of row
// ------------------------------------------------------------------------------------------

/// Who a seeded user is.
#[derive(Debug, Clone)]
struct Person {
    email: &'static str,
    username: &'static str,
    display_name: &'static str,
    first_name: &'static str,
    last_name: &'static str,
}

const ANN: Person = Person {
    email: "annabel.gdpr@example.com",
    username: "annalee_gdpr",
    display_name: "Annabel Leeworth-Quill",
    first_name: "Annabel",
    last_name: "Leeworth",
};

const BOB: Person = Person {
    email: "bob.keeper@example.org",
    username: "bobkeeper",
    display_name: "Bobby Keeps-Things",
    first_name: "Roberto",
    last_name: "Keepington",
};

/// A seeded user: their token, id and the ids of what they made.
#[derive(Debug, Clone)]
struct Seeded {
    token: String,
    id: String,
    subject: String,
    /// A private character with a generated image, then a public one.
    characters: Vec<String>,
    collection: String,
}

async fn user_id(stack: &TestStack, email: &str) -> String {
    stack
        .sql()
        .await
        .query_one(
            "SELECT id FROM users WHERE lower(email) = lower($1)",
            &[&email],
        )
        .await
        .unwrap()
        .get(0)
}

/// A request with an `Idempotency-Key`.
async fn post_keyed(stack: &TestStack, path: &str, token: &str, body: Value) -> Reply {
    let response = stack
        .http
        .post(format!("{}{path}", stack.base_url))
        .bearer_auth(token)
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .json(&body)
        .send()
        .await
        .unwrap();
    testkit::read(response).await
}

/// A successful call's body; a `null` body sends none.
async fn expect(stack: &TestStack, method: Method, path: &str, token: &str, body: Value) -> Value {
    let body = (!body.is_null()).then_some(body);
    let reply = stack.call(method, path, Some(token), body).await;
    assert!(reply.status.is_success(), "{path}: {}", reply.body);
    reply.body
}

async fn character(stack: &TestStack, token: &str, name: &str, is_public: bool) -> String {
    let body = expect(
        stack,
        Method::POST,
        "/api/v1/characters",
        token,
        json!({"name": name, "prompt": format!("{name}, a lighthouse keeper at dusk"),
               "style_type": "fantasy", "generation_seed": 11, "is_public": is_public}),
    )
    .await;
    body["id"].as_str().unwrap().to_string()
}

/// Signs `person` in with a profile, a private and a public character and a
/// collection holding both; purchased credits pay their jobs (no free quota).
async fn seed(stack: &TestStack, person: &Person) -> Seeded {
    let token = stack.user(person.email, person.username).await;
    let id = user_id(stack, person.email).await;
    expect(
        stack,
        Method::PATCH,
        "/api/v1/me",
        &token,
        json!({"display_name": person.display_name}),
    )
    .await;
    expect(
        stack,
        Method::PUT,
        "/api/v1/me/profile",
        &token,
        json!({"first_name": person.first_name, "last_name": person.last_name,
               "bio": format!("I am {} {}.", person.first_name, person.last_name),
               "company": "Lighthouse Ltd"}),
    )
    .await;
    stack
        .sql()
        .await
        .execute("UPDATE users SET daily_quota = 0 WHERE id = $1", &[&id])
        .await
        .unwrap();
    let characters = vec![
        character(
            stack,
            &token,
            &format!("Private of {}", person.username),
            false,
        )
        .await,
        character(
            stack,
            &token,
            &format!("Public of {}", person.username),
            true,
        )
        .await,
    ];
    let collection = expect(
        stack,
        Method::POST,
        "/api/v1/collections",
        &token,
        json!({"name": format!("Shelf of {}", person.username), "description": "favourites"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    for character in &characters {
        expect(
            stack,
            Method::PUT,
            &format!("/api/v1/collections/{collection}/characters/{character}"),
            &token,
            Value::Null,
        )
        .await;
    }
    Seeded {
        token,
        id,
        subject: shared::web::auth::dev_issuer::DevIssuer::subject_for(person.email),
        characters,
        collection,
    }
}

/// Buys the starter pack through the local checkout (a real order, paid by a
/// signed webhook).
async fn buy_credits(stack: &TestStack, token: &str) -> String {
    let reply = post_keyed(
        stack,
        "/api/v1/credits/purchases",
        token,
        json!({"package_id": "pkg_starter"}),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let order = reply.body["order"]["id"].as_str().unwrap().to_string();
    let paid = stack
        .http
        .post(format!("{}/dev/checkout/{order}/pay", stack.base_url))
        .send()
        .await
        .unwrap();
    assert!(paid.status().is_success(), "{}", paid.status());
    order
}

async fn generate(stack: &TestStack, token: &str, character: &str) -> String {
    let reply = stack
        .call(
            Method::POST,
            &format!("/api/v1/characters/{character}/generate"),
            Some(token),
            Some(json!({"width": 512, "height": 512})),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    reply.body["id"].as_str().unwrap().to_string()
}

/// Runs the queued jobs on the stack's own worker: procedural placeholders, not charged.
async fn run_worker(stack: &TestStack) {
    let batch = stack.stack.queue.receive(10);
    let response = stack.stack.worker.handle_batch(batch).await;
    assert!(response.batch_item_failures.is_empty());
}

/// Runs the queued jobs on an AI image server (a stand-in A1111): they deliver
/// real output and are charged for it, unlike the stack's procedural placeholders.
async fn run_ai_worker(stack: &TestStack) {
    let server = StandIn::start().await;
    let response = stack
        .worker_with(server.chain())
        .handle_batch(stack.stack.queue.receive(10))
        .await;
    assert!(response.batch_item_failures.is_empty());
}

async fn gift(stack: &TestStack, token: &str, to: &str, amount: i32, message: &str) -> Value {
    let reply = post_keyed(
        stack,
        "/api/v1/credits/gifts",
        token,
        json!({"to_username": to, "amount": amount, "message": message}),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body
}

/// Ann and Bob, each with every kind of row, and interacting: Ann bought
/// credits (over a week ago), has a completed job with images (from an AI server, so it was
/// charged: a usage entry), gave and received a gift, rated,
/// liked and reported Bob's public character and filed it in her collection;
/// Bob rated and liked Ann's public character.
async fn seed_both(stack: &TestStack) -> (Seeded, Seeded) {
    let ann = seed(stack, &ANN).await;
    let bob = seed(stack, &BOB).await;
    let order = buy_credits(stack, &ann.token).await;
    // Paid more than GIFT_HOLD_DAYS ago, so its credits may be gifted below.
    stack
        .sql()
        .await
        .execute(
            "UPDATE purchase_orders SET paid_at = paid_at - interval '8 days' WHERE id = $1",
            &[&order],
        )
        .await
        .unwrap();
    shared::credits::ledger::post(
        &stack.sql().await,
        &bob.id,
        shared::credits::ledger::Entry::new("bonus", 50, "welcome bonus"),
    )
    .await
    .unwrap();
    generate(stack, &ann.token, &ann.characters[0]).await;
    run_ai_worker(stack).await;

    let bobs_public = &bob.characters[1];
    expect(
        stack,
        Method::PUT,
        &format!(
            "/api/v1/collections/{}/characters/{bobs_public}",
            ann.collection
        ),
        &ann.token,
        Value::Null,
    )
    .await;
    expect(
        stack,
        Method::PUT,
        &format!("/api/v1/characters/{bobs_public}/rating"),
        &ann.token,
        json!({"rating": 4, "review_text": "Lovely, says Annabel"}),
    )
    .await;
    expect(
        stack,
        Method::PUT,
        &format!("/api/v1/characters/{bobs_public}/like"),
        &ann.token,
        Value::Null,
    )
    .await;
    expect(
        stack,
        Method::POST,
        &format!("/api/v1/characters/{bobs_public}/reports"),
        &ann.token,
        json!({"reason": "copyright", "details": "Annabel Leeworth drew this first"}),
    )
    .await;
    let anns_public = &ann.characters[1];
    expect(
        stack,
        Method::PUT,
        &format!("/api/v1/characters/{anns_public}/rating"),
        &bob.token,
        json!({"rating": 5, "review_text": "Bobby loves it"}),
    )
    .await;
    expect(
        stack,
        Method::PUT,
        &format!("/api/v1/characters/{anns_public}/like"),
        &bob.token,
        Value::Null,
    )
    .await;
    gift(
        stack,
        &ann.token,
        BOB.username,
        15,
        "From Annabel, with love",
    )
    .await;
    gift(stack, &bob.token, ANN.username, 5, "Thanks annalee_gdpr!").await;
    (ann, bob)
}

/// The auth function's routes over the stack's database, storage and issuer,
/// with another export threshold (and possibly no storage), on their own port.
async fn auth_function(stack: &TestStack, inline_max: usize, storage: bool) -> String {
    let mut state = stack.stack.state.clone();
    let mut config = (*state.config).clone();
    config.gdpr.export_inline_max_bytes = inline_max;
    state.config = Arc::new(config);
    if !storage {
        state.storage = None;
    }
    let app = shared::runtime::app::finish(shared::runtime::app::auth_routes(), state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    format!("http://{addr}")
}

async fn get_at(stack: &TestStack, base: &str, path: &str, token: &str) -> Reply {
    let response = stack
        .http
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    testkit::read(response).await
}

/// Where the local stack keeps its objects (the tests' data dir is the temp dir).
fn objects_root() -> PathBuf {
    std::env::temp_dir().join("objects")
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn contains_ci(haystack: &str, needle: &str) -> bool {
    haystack.to_lowercase().contains(&needle.to_lowercase())
}

/// Every row of every table of the database, as JSON text (`row_to_json`
/// casts every column, whatever its type, to its text form), by table. Tables
/// come from information_schema, so tables added later are scanned too.
async fn dump(stack: &TestStack) -> BTreeMap<String, Vec<String>> {
    let client = stack.sql().await;
    let tables: Vec<String> = client
        .query(
            "SELECT table_name FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(tables.len() > 15, "{tables:?}");
    let mut out = BTreeMap::new();
    for table in tables {
        let rows: Vec<String> = client
            .query(
                &format!("SELECT row_to_json(t)::text FROM public.\"{table}\" t ORDER BY 1"),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        out.insert(table, rows);
    }
    out
}

/// A document with the time-limited parts of its links (`?expires=…&signature=…`) cut off.
fn without_link_expiry(value: &Value) -> Value {
    match value {
        Value::String(s) if s.contains("/files/") => {
            Value::String(s.split('?').next().unwrap_or_default().to_string())
        }
        Value::Array(items) => Value::Array(items.iter().map(without_link_expiry).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), without_link_expiry(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

// ------------------------------------------------------------------------------------------
// Export
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_export_holds_every_kind_of_row_the_user_owns_and_nothing_of_anyone_elses() {
    let stack = spawn_stack().await;
    let (ann, bob) = seed_both(&stack).await;
    // A second image, on her public character.
    generate(&stack, &ann.token, &ann.characters[1]).await;
    run_worker(&stack).await;

    let reply = stack.get("/api/v1/me/export", Some(&ann.token)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.headers["cache-control"], "no-store");
    let doc = &reply.body;
    assert_eq!(doc["format"], "charplat-export");
    assert_eq!(doc["version"], 1);
    assert!(doc["generated_at"].is_string());

    // The account and profile.
    assert_eq!(doc["account"]["id"], ann.id.as_str());
    assert_eq!(doc["account"]["email"], ANN.email);
    assert_eq!(doc["account"]["display_name"], ANN.display_name);
    assert_eq!(doc["profile"]["first_name"], ANN.first_name);
    assert_eq!(doc["profile"]["last_name"], ANN.last_name);

    // Characters, with links to their images, never bucket keys.
    let mut own = ann.characters.clone();
    own.sort();
    assert_eq!(ids(&doc["characters"]), own);
    let drawn = doc["characters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == ann.characters[0].as_str())
        .unwrap();
    let image = drawn["primary_image_url"].as_str().unwrap();
    assert!(
        image.starts_with(&format!("{}/files/users/{}/", stack.base_url, ann.id)),
        "{image}"
    );
    let fetched = stack.http.get(image).send().await.unwrap();
    assert_eq!(fetched.status(), 200);
    assert!(
        drawn["thumbnail_url"]
            .as_str()
            .unwrap()
            .contains("signature=")
    );

    // Her images, oldest first: every column but the storage keys, with links to the image
    // and its thumbnail.
    let recorded: Vec<(String, String, Option<String>)> = stack
        .sql()
        .await
        .query(
            "SELECT id, character_id, job_id FROM character_images WHERE user_id = $1 \
             ORDER BY created_at, id",
            &[&ann.id],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[0].1, ann.characters[0]);
    assert_eq!(recorded[1].1, ann.characters[1]);
    let images = doc["images"].as_array().unwrap();
    let exported: Vec<(String, String, Option<String>)> = images
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_string(),
                i["character_id"].as_str().unwrap().to_string(),
                i["job_id"].as_str().map(str::to_string),
            )
        })
        .collect();
    assert_eq!(exported, recorded);
    // The first from the AI server, the second a procedural placeholder.
    assert_eq!(images[0]["generation_provider"], "primary");
    assert_eq!(images[0]["placeholder"], false);
    assert_eq!(images[1]["generation_provider"], "fallback");
    assert_eq!(images[1]["placeholder"], true);
    for image in images {
        assert_eq!(image["user_id"], ann.id.as_str());
        assert_eq!(image["is_primary"], true);
        assert_eq!(
            (image["width"].clone(), image["height"].clone()),
            (json!(512), json!(512))
        );
        assert!(
            image["parameters"]["input"]["prompt"].is_string(),
            "{image}"
        );
        assert!(image.get("storage_key").is_none() && image.get("thumbnail_key").is_none());
        for link in ["url", "thumbnail_url"] {
            let link = image[link].as_str().unwrap();
            assert!(
                link.starts_with(&format!("{}/files/users/{}/", stack.base_url, ann.id))
                    && link.contains("signature="),
                "{link}"
            );
            assert_eq!(stack.http.get(link).send().await.unwrap().status(), 200);
        }
    }
    assert!(
        !doc["images"].to_string().contains("\"users/"),
        "a raw key: {}",
        doc["images"]
    );

    // The collection, with its members' ids (Bob's public character among them).
    let collections = doc["collections"].as_array().unwrap();
    assert_eq!(collections.len(), 1);
    assert_eq!(collections[0]["id"], ann.collection.as_str());
    let mut members: Vec<&str> = collections[0]["character_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    members.sort_unstable();
    let mut expected = vec![
        ann.characters[0].as_str(),
        ann.characters[1].as_str(),
        bob.characters[1].as_str(),
    ];
    expected.sort_unstable();
    assert_eq!(members, expected);

    // Jobs, the credit account, the whole ledger, holds, the purchase and the gifts.
    let jobs = doc["generation_jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    assert!(jobs.iter().all(|j| j["status"] == "completed"), "{jobs:?}");
    assert_eq!(
        jobs.iter().map(|j| j["id"].as_str()).collect::<Vec<_>>(),
        recorded.iter().map(|r| r.2.as_deref()).collect::<Vec<_>>()
    );
    assert!(
        jobs[0]["output_urls"][0]
            .as_str()
            .unwrap()
            .contains("/files/")
    );
    let credits = stack.get("/api/v1/credits", Some(&ann.token)).await.body;
    assert_eq!(
        doc["credit_account"]["current_balance"],
        credits["current_balance"]
    );
    assert_eq!(doc["credit_account"]["available"], credits["available"]);
    let ledger = doc["credit_transactions"].as_array().unwrap();
    let kinds: Vec<&str> = ledger
        .iter()
        .map(|t| t["transaction_type"].as_str().unwrap())
        .collect();
    for kind in ["purchase", "usage", "gift_sent", "gift_received"] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let sum: i64 = ledger.iter().map(|t| t["amount"].as_i64().unwrap()).sum();
    assert_eq!(json!(sum), credits["current_balance"]);
    assert!(ledger.iter().all(|t| t["user_id"] == ann.id.as_str()));
    let history = stack
        .get("/api/v1/credits/transactions?limit=100", Some(&ann.token))
        .await
        .body;
    assert_eq!(ids(&doc["credit_transactions"]), ids(&history["items"]));
    assert_eq!(doc["credit_holds"].as_array().unwrap().len(), 2);
    let orders = doc["purchase_orders"].as_array().unwrap();
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0]["status"], "paid");
    assert_eq!(doc["gifts"]["sent"][0]["amount"], 15);
    assert_eq!(
        doc["gifts"]["sent"][0]["counterpart_username"],
        BOB.username
    );
    assert_eq!(
        doc["gifts"]["sent"][0]["message"],
        "From Annabel, with love"
    );
    assert_eq!(doc["gifts"]["received"][0]["amount"], 5);
    assert_eq!(
        doc["gifts"]["received"][0]["counterpart_username"],
        BOB.username
    );

    // What Ann gave: her rating, like and report, not Bob's rating of her character.
    let ratings = doc["ratings"].as_array().unwrap();
    assert_eq!(ratings.len(), 1);
    assert_eq!(ratings[0]["character_id"], bob.characters[1].as_str());
    assert_eq!(ratings[0]["user_id"], ann.id.as_str());
    assert_eq!(doc["likes"].as_array().unwrap().len(), 1);
    assert_eq!(doc["likes"][0]["character_id"], bob.characters[1].as_str());
    assert_eq!(doc["reports"].as_array().unwrap().len(), 1);
    assert_eq!(doc["reports"][0]["reason"], "copyright");

    // The activity log, with what the platform recorded of each request.
    let activity = doc["activity"].as_array().unwrap();
    let kinds: Vec<&str> = activity
        .iter()
        .map(|a| a["activity_type"].as_str().unwrap())
        .collect();
    for kind in [
        "login",
        "character_created",
        "generation_requested",
        "image_generated",
        "purchase_completed",
        "gift_sent",
        "gift_received",
        "report_filed",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    assert!(activity.iter().all(|a| a["user_id"] == ann.id.as_str()));
    assert!(activity.iter().any(|a| a["ip_address"] == "127.0.0.1"));

    // Nothing of Bob's but what Ann's own rows reference (his public character's id, his
    // username as the gift entries hold it).
    let text = doc.to_string();
    let client = stack.sql().await;
    let bobs_rating: String = client
        .query_one(
            "SELECT id FROM character_ratings WHERE user_id = $1",
            &[&bob.id],
        )
        .await
        .unwrap()
        .get(0);
    let bobs_ledger: Vec<String> = client
        .query(
            "SELECT id FROM credit_transactions WHERE user_id = $1",
            &[&bob.id],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    for foreign in [
        bob.id.as_str(),
        BOB.email,
        BOB.display_name,
        BOB.first_name,
        BOB.last_name,
        bob.subject.as_str(),
        bob.collection.as_str(),
        bob.characters[0].as_str(),
        bobs_rating.as_str(),
        "Bobby loves it",
    ]
    .into_iter()
    .chain(bobs_ledger.iter().map(String::as_str))
    {
        assert!(!contains_ci(&text, foreign), "the export holds {foreign}");
    }

    // The export itself is logged, as an `export` activity of Ann's.
    let logged: i64 = client
        .query_one(
            "SELECT count(*) FROM user_activity_logs WHERE user_id = $1 AND activity_type = 'export' \
             AND metadata->>'delivery' = 'inline'",
            &[&ann.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(logged, 1);

    // Bob's export is his own.
    let bobs = stack.get("/api/v1/me/export", Some(&bob.token)).await.body;
    assert_eq!(bobs["account"]["id"], bob.id.as_str());
    assert_eq!(
        bobs["ratings"][0]["character_id"],
        ann.characters[1].as_str()
    );
    assert!(!contains_ci(&bobs.to_string(), ANN.email));
}

/// The document is written section by section; its keys are exactly the
/// documented schema's (`ExportDocument` in the OpenAPI document), and so are
/// those of its nested gift lists.
#[tokio::test]
async fn the_written_document_has_exactly_the_documented_keys() {
    let stack = spawn_stack().await;
    let (ann, _bob) = seed_both(&stack).await;
    let reply = stack.get("/api/v1/me/export", Some(&ann.token)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let spec = serde_json::to_value(shared::runtime::openapi::document()).unwrap();
    let keys = |schema: &str| -> std::collections::BTreeSet<String> {
        spec["components"]["schemas"][schema]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{schema} has no properties"))
            .keys()
            .cloned()
            .collect()
    };
    let written: std::collections::BTreeSet<String> =
        reply.body.as_object().unwrap().keys().cloned().collect();
    assert_eq!(written, keys("ExportDocument"));
    let gifts: std::collections::BTreeSet<String> = reply.body["gifts"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(gifts, keys("ExportGifts"));
    assert!(!reply.body["gifts"]["sent"].as_array().unwrap().is_empty());
    assert!(!reply.body["activity"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_large_export_is_stored_and_its_link_downloads_the_same_document() {
    let stack = spawn_stack().await;
    let (ann, _bob) = seed_both(&stack).await;
    let small_limit = auth_function(&stack, 1000, true).await;

    let reply = get_at(&stack, &small_limit, "/api/v1/me/export", &ann.token).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.headers["cache-control"], "no-store");
    let link = &reply.body;
    assert_eq!(link["format"], "charplat-export-link");
    assert_eq!(link["version"], 1);
    assert!(link["expires_at"].is_string());
    let url = link["download_url"].as_str().unwrap();
    assert!(
        url.contains(&format!("/files/exports/{}/", ann.id)),
        "{url}"
    );
    let download = stack.http.get(url).send().await.unwrap();
    assert_eq!(download.status(), 200);
    let bytes = download.bytes().await.unwrap();
    assert_eq!(link["bytes"], bytes.len());
    let stored: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(stored["format"], "charplat-export");
    assert_eq!(stored["generated_at"], link["generated_at"]);

    // The same document as an inline export made right after, but for the stored export's
    // own activity entry (written after its document was read) and the links' expiry.
    let inline = stack.get("/api/v1/me/export", Some(&ann.token)).await.body;
    assert_eq!(inline["format"], "charplat-export");
    let mut stored = without_link_expiry(&stored);
    let mut inline = without_link_expiry(&inline);
    let inline_activity = inline["activity"].as_array_mut().unwrap();
    let last = inline_activity.pop().unwrap();
    assert_eq!(last["activity_type"], "export");
    assert_eq!(last["metadata"]["delivery"], "storage");
    assert_eq!(last["metadata"]["bytes"], link["bytes"]);
    for doc in [&mut stored, &mut inline] {
        doc.as_object_mut().unwrap().remove("generated_at");
    }
    assert_eq!(stored, inline);

    // Without storage, a document that does not fit inline cannot be delivered: 503, and
    // nothing is logged.
    let no_storage = auth_function(&stack, 1000, false).await;
    let before: i64 = stack
        .sql()
        .await
        .query_one(
            "SELECT count(*) FROM user_activity_logs WHERE activity_type = 'export'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    get_at(&stack, &no_storage, "/api/v1/me/export", &ann.token)
        .await
        .assert_problem(503);
    let after: i64 = stack
        .sql()
        .await
        .query_one(
            "SELECT count(*) FROM user_activity_logs WHERE activity_type = 'export'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(before, after);
}

// ------------------------------------------------------------------------------------------
// Erasure
// ------------------------------------------------------------------------------------------

/// A token for `email` issued `ago` in the past: one a client held before the erasure.
fn token_issued_ago(stack: &TestStack, email: &str, ago: Duration) -> String {
    let issuer = &stack.stack.issuer;
    let mut claims = issuer.claims_for(email, &[], Duration::from_secs(600));
    let iat = chrono::Utc::now().timestamp() - ago.as_secs() as i64;
    claims["iat"] = json!(iat);
    claims["nbf"] = json!(iat);
    issuer.key().sign(issuer.key().kid(), &claims).unwrap()
}

/// What the other user can see of their own account, minus counters Ann's
/// likes and ratings fed.
async fn bobs_view(stack: &TestStack, bob: &Seeded) -> Value {
    let me = stack.get("/api/v1/me", Some(&bob.token)).await.body;
    let profile = stack.get("/api/v1/me/profile", Some(&bob.token)).await.body;
    let credits = stack.get("/api/v1/credits", Some(&bob.token)).await.body;
    let characters = stack.get("/api/v1/characters", Some(&bob.token)).await.body;
    let collections = stack
        .get("/api/v1/collections", Some(&bob.token))
        .await
        .body;
    let ledger: Vec<Value> = stack
        .sql()
        .await
        .query(
            "SELECT id, transaction_type, amount, balance_after FROM credit_transactions \
             WHERE user_id = $1 ORDER BY created_at, id",
            &[&bob.id],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| {
            json!([
                row.get::<_, String>(0),
                row.get::<_, String>(1),
                row.get::<_, i32>(2),
                row.get::<_, i32>(3)
            ])
        })
        .collect();
    json!({
        "me": me,
        "profile": profile,
        "balance": [credits["current_balance"], credits["reserved_balance"]],
        "characters": characters["items"].as_array().unwrap().iter()
            .map(|c| json!([c["id"], c["name"], c["prompt"], c["is_public"]])).collect::<Vec<_>>(),
        "collections": collections["items"].as_array().unwrap().iter()
            .map(|c| json!([c["id"], c["name"]])).collect::<Vec<_>>(),
        "ledger": ledger,
    })
}

#[tokio::test]
async fn erasure_leaves_no_trace_of_the_person_and_keeps_the_books() {
    let stack = spawn_stack().await;
    let (ann, bob) = seed_both(&stack).await;
    // A variant of her drawn character, with an image of its own.
    let variation = stack
        .call(
            Method::POST,
            &format!("/api/v1/characters/{}/generate", ann.characters[0]),
            Some(&ann.token),
            Some(json!({"job_type": "variation"})),
        )
        .await;
    assert_eq!(variation.status, 202, "{}", variation.body);
    run_worker(&stack).await;
    let client = stack.sql().await;
    let variant: String = client
        .query_one(
            "SELECT result_character_id FROM generation_jobs WHERE id = $1",
            &[&variation.body["id"].as_str().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    // An image recorded by no job's outputs, with a thumbnail not named after it (as the
    // V15 backfill may record an older image).
    let legacy = format!(
        "users/{}/characters/{}/legacy/portrait.png",
        ann.id, ann.characters[1]
    );
    let legacy_thumb = format!(
        "users/{}/characters/{}/legacy/small.png",
        ann.id, ann.characters[1]
    );
    let storage = stack.stack.state.storage.clone().unwrap();
    for key in [&legacy, &legacy_thumb] {
        storage.put(key, vec![1, 2, 3], "image/png").await.unwrap();
    }
    client
        .execute(
            "INSERT INTO character_images (character_id, user_id, storage_key, thumbnail_key) \
             VALUES ($1, $2, $3, $4)",
            &[&ann.characters[1], &ann.id, &legacy, &legacy_thumb],
        )
        .await
        .unwrap();
    let recorded: Vec<String> = client
        .query(
            "SELECT k FROM character_images i, LATERAL (VALUES (i.storage_key), (i.thumbnail_key)) v(k) \
             WHERE i.user_id = $1 AND k IS NOT NULL",
            &[&ann.id],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    // Her drawn character's image, the variant's and the legacy one, each with a thumbnail.
    assert_eq!(recorded.len(), 6, "{recorded:?}");
    assert!(
        recorded
            .iter()
            .any(|k| k.contains(&format!("/characters/{variant}/"))),
        "{recorded:?}"
    );
    for key in &recorded {
        assert!(objects_root().join(key).is_file(), "{key} is not stored");
    }
    // A job still queued, holding purchased credits, and an export left in storage.
    let queued = generate(&stack, &ann.token, &ann.characters[1]).await;
    let reserved: i32 = client
        .query_one(
            "SELECT reserved_balance FROM user_credits WHERE user_id = $1",
            &[&ann.id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(reserved > 0);
    let stored_export = auth_function(&stack, 0, true).await;
    let reply = get_at(&stack, &stored_export, "/api/v1/me/export", &ann.token).await;
    assert_eq!(reply.body["format"], "charplat-export-link");
    let anns_images = objects_root().join("users").join(&ann.id);
    let anns_exports = objects_root().join("exports").join(&ann.id);
    assert!(
        files_under(&anns_images).len() >= 2,
        "an image and its thumbnail"
    );
    assert_eq!(files_under(&anns_exports).len(), 1);
    let bob_before = bobs_view(&stack, &bob).await;
    let old_token = token_issued_ago(&stack, ANN.email, Duration::from_secs(120));

    let erased = stack
        .call(
            Method::DELETE,
            "/api/v1/me",
            Some(&ann.token),
            Some(json!({"confirm": ANN.email.to_uppercase()})),
        )
        .await;
    assert_eq!(erased.status, 204, "{}", erased.body);

    // No table holds her email, names, username or identity any more; her id only keys
    // the tombstone and the records kept for the audit trail: the ledger and what it
    // points at (holds, jobs, purchase orders, the credit account) and her own, scrubbed
    // activity log.
    let database = dump(&stack).await;
    for needle in [
        ANN.email,
        ANN.username,
        ANN.display_name,
        ANN.first_name,
        ANN.last_name,
        ann.subject.as_str(),
    ] {
        for (table, rows) in &database {
            for row in rows {
                assert!(
                    !contains_ci(row, needle),
                    "{table} still holds {needle}: {row}"
                );
            }
        }
    }
    let keyed_by_her = [
        "credit_transactions",
        "credit_holds",
        "generation_jobs",
        "purchase_orders",
        "user_credits",
        "user_activity_logs",
    ];
    for (table, rows) in &database {
        for row in rows.iter().filter(|row| row.contains(&ann.id)) {
            let parsed: Value = serde_json::from_str(row).unwrap();
            if table == "users" {
                assert_eq!(parsed["id"], ann.id.as_str());
                assert_eq!(parsed["account_status"], "deleted");
                continue;
            }
            assert!(
                keyed_by_her.iter().any(|kept| table.starts_with(kept)),
                "{table} refers to her: {row}"
            );
            assert_eq!(parsed["user_id"], ann.id.as_str(), "{table}: {row}");
            assert!(parsed.get("ip_address").is_none_or(Value::is_null), "{row}");
            assert!(parsed.get("user_agent").is_none_or(Value::is_null), "{row}");
        }
    }
    let tombstone = client
        .query_one(
            "SELECT email, auth0_id, username, display_name, avatar_url, account_status \
             FROM users WHERE id = $1",
            &[&ann.id],
        )
        .await
        .unwrap();
    assert!(tombstone.get::<_, String>(0).ends_with("@erased.invalid"));
    for column in 1..=4 {
        assert_eq!(tombstone.get::<_, Option<String>>(column), None);
    }
    assert_eq!(tombstone.get::<_, String>(5), "deleted");
    for table in [
        "characters",
        "collections",
        "character_ratings",
        "character_likes",
        "user_profiles",
        "idempotency_keys",
    ] {
        let left: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM {table} WHERE user_id = $1"),
                &[&ann.id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "{table}");
    }
    // Her report stays for the moderators, without its reporter or her name.
    let report = client
        .query_one(
            "SELECT reporter_id, details FROM content_reports WHERE character_id = $1",
            &[&bob.characters[1]],
        )
        .await
        .unwrap();
    assert_eq!(report.get::<_, Option<String>>(0), None);
    assert_eq!(
        report.get::<_, Option<String>>(1).as_deref(),
        Some("[erased] [erased] drew this first")
    );
    // Bob's side of their gifts no longer names her, nor carries her message.
    let bobs_gift = client
        .query_one(
            "SELECT description, metadata FROM credit_transactions \
             WHERE user_id = $1 AND transaction_type = 'gift_received'",
            &[&bob.id],
        )
        .await
        .unwrap();
    assert_eq!(bobs_gift.get::<_, String>(0), "Gift from [erased]");
    assert_eq!(bobs_gift.get::<_, Value>(1)["from_username"], "[erased]");
    assert!(bobs_gift.get::<_, Value>(1).get("message").is_none());
    // Erasure is logged, without where it came from.
    let logged = client
        .query_one(
            "SELECT ip_address::text, user_agent, session_id, metadata FROM user_activity_logs \
             WHERE user_id = $1 AND activity_type = 'erasure'",
            &[&ann.id],
        )
        .await
        .unwrap();
    assert_eq!(logged.get::<_, Option<String>>(0), None);
    assert_eq!(logged.get::<_, Option<String>>(1), None);
    assert_eq!(logged.get::<_, Option<String>>(2), None);
    assert_eq!(logged.get::<_, Value>(3)["jobs_cancelled"], 1);

    // Storage holds none of her images (her variant's and those no job lists included),
    // thumbnails or exports.
    for key in &recorded {
        assert!(
            !objects_root().join(key).exists(),
            "{key} outlived the erasure"
        );
    }
    assert_eq!(files_under(&anns_images), Vec::<PathBuf>::new());
    assert_eq!(files_under(&anns_exports), Vec::<PathBuf>::new());

    // The queued job was cancelled and its hold released exactly once; the books add up.
    let job = client
        .query_one(
            "SELECT j.status, h.status FROM generation_jobs j JOIN credit_holds h ON h.job_id = j.id \
             WHERE j.id = $1",
            &[&queued],
        )
        .await
        .unwrap();
    assert_eq!(job.get::<_, String>(0), "cancelled");
    assert_eq!(job.get::<_, String>(1), "released");
    let reserved: i32 = client
        .query_one(
            "SELECT reserved_balance FROM user_credits WHERE user_id = $1",
            &[&ann.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(reserved, 0);
    assert_invariants(&client).await;
    // Its message, delivered late, does nothing.
    run_worker(&stack).await;
    assert_eq!(dump(&stack).await, database);

    // Bob's account is as it was.
    assert_eq!(bobs_view(&stack, &bob).await, bob_before);

    // A token from before the erasure reaches nothing: refused everywhere, sign-in too.
    stack
        .get("/api/v1/me", Some(&old_token))
        .await
        .assert_problem(403);
    stack
        .call(Method::POST, "/api/v1/auth/session", Some(&old_token), None)
        .await
        .assert_problem(403);
    stack
        .get("/api/v1/me/export", Some(&old_token))
        .await
        .assert_problem(403);

    // A second DELETE (a retry whose first answer was lost) is a no-op, answered the same.
    let again = stack
        .call(
            Method::DELETE,
            "/api/v1/me",
            Some(&old_token),
            Some(json!({"confirm": ANN.email})),
        )
        .await;
    assert_eq!(again.status, 204, "{}", again.body);
    assert_eq!(dump(&stack).await, database);

    // A new sign-in with the same email starts a new, empty account.
    let fresh = stack.token(ANN.email);
    stack
        .get("/api/v1/me", Some(&fresh))
        .await
        .assert_problem(404);
    let signed_in = stack
        .call(Method::POST, "/api/v1/auth/session", Some(&fresh), None)
        .await;
    assert_eq!(signed_in.status, 201, "{}", signed_in.body);
    assert_ne!(signed_in.body["id"], ann.id.as_str());
    assert_eq!(signed_in.body["email"], ANN.email);
    let export = stack.get("/api/v1/me/export", Some(&fresh)).await.body;
    assert_eq!(export["characters"], json!([]));
    assert_eq!(export["credit_transactions"], json!([]));
    assert_eq!(export["credit_account"]["current_balance"], 0);
    assert_invariants(&client).await;
}

#[tokio::test]
async fn a_wrong_or_missing_confirmation_changes_nothing_and_anonymous_callers_are_refused() {
    let stack = spawn_stack().await;
    let ann = seed(&stack, &ANN).await;
    let before = dump(&stack).await;

    for body in [
        None,
        Some(json!({})),
        Some(json!({"confirm": null})),
        Some(json!({"confirm": ""})),
        Some(json!({"confirm": "someone.else@example.com"})),
        Some(json!({"confirm": ANN.username})),
        Some(json!({"confirm": 42})),
        Some(json!({"confirm": ANN.email, "reason": "bye"})),
    ] {
        let reply = stack
            .call(Method::DELETE, "/api/v1/me", Some(&ann.token), body.clone())
            .await;
        reply.assert_problem(422);
        assert!(reply.body["errors"][0]["field"].is_string(), "{body:?}");
    }
    // The body must be JSON.
    let not_json = stack
        .http
        .delete(format!("{}/api/v1/me", stack.base_url))
        .bearer_auth(&ann.token)
        .header("content-type", "text/plain")
        .body(ANN.email)
        .send()
        .await
        .unwrap();
    testkit::read(not_json).await.assert_problem(415);
    let malformed = stack
        .http
        .delete(format!("{}/api/v1/me", stack.base_url))
        .bearer_auth(&ann.token)
        .header("content-type", "application/json")
        .body("{\"confirm\":")
        .send()
        .await
        .unwrap();
    testkit::read(malformed).await.assert_problem(400);

    // Anonymous callers and bad tokens get 401 on both routes.
    stack
        .call(
            Method::DELETE,
            "/api/v1/me",
            None,
            Some(json!({"confirm": ANN.email})),
        )
        .await
        .assert_problem(401);
    stack
        .get("/api/v1/me/export", None)
        .await
        .assert_problem(401);
    stack
        .get("/api/v1/me/export", Some("not-a-token"))
        .await
        .assert_problem(401);

    // An identity that never signed in has nothing to erase or export.
    let stranger = stack.token("stranger@example.com");
    stack
        .call(
            Method::DELETE,
            "/api/v1/me",
            Some(&stranger),
            Some(json!({"confirm": "stranger@example.com"})),
        )
        .await
        .assert_problem(404);
    stack
        .get("/api/v1/me/export", Some(&stranger))
        .await
        .assert_problem(404);

    assert_eq!(dump(&stack).await, before);
    let me = stack.get("/api/v1/me", Some(&ann.token)).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.body["email"], ANN.email);

    // (Last: banning changes the row.) A banned account is kept for the moderation record.
    stack
        .sql()
        .await
        .execute(
            "UPDATE users SET account_status = 'banned' WHERE id = $1",
            &[&ann.id],
        )
        .await
        .unwrap();
    stack
        .call(
            Method::DELETE,
            "/api/v1/me",
            Some(&ann.token),
            Some(json!({"confirm": ANN.email})),
        )
        .await
        .assert_problem(403);
}

// ------------------------------------------------------------------------------------------
// A job running while its owner erases the account
// ------------------------------------------------------------------------------------------

/// The procedural renderer, once the test lets it start.
struct GatedGenerator {
    gate: Arc<tokio::sync::Semaphore>,
}

impl ImageGenerator for GatedGenerator {
    fn generate<'a>(
        &'a self,
        request: &'a GenerationRequest,
        progress: &'a ProgressReporter,
    ) -> BoxFuture<'a, Result<GeneratedImages, GeneratorError>> {
        async move {
            let _permit = self.gate.acquire().await;
            ProceduralGenerator.generate(request, progress).await
        }
        .boxed()
    }

    fn name(&self) -> &'static str {
        "fallback"
    }
}

#[tokio::test]
async fn a_job_finishing_after_the_erasure_settles_nothing_and_keeps_no_image() {
    let stack = spawn_stack().await;
    let ann = seed(&stack, &ANN).await;
    shared::credits::ledger::post(
        &stack.sql().await,
        &ann.id,
        shared::credits::ledger::Entry::new("bonus", 40, "welcome bonus"),
    )
    .await
    .unwrap();
    let job = generate(&stack, &ann.token, &ann.characters[0]).await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let worker = shared::jobs::worker::Worker {
        generator: Arc::new(GeneratorChain::new(vec![Arc::new(GatedGenerator {
            gate: gate.clone(),
        })])),
        ..stack.stack.worker.clone()
    };
    let batch = stack.stack.queue.receive(10);
    let running = tokio::spawn(async move { worker.handle_batch(batch).await });
    let client = stack.sql().await;
    // Wait for the worker to claim the job (it then waits at the gate).
    let mut claimed = false;
    for _ in 0..200 {
        let status: String = client
            .query_one("SELECT status FROM generation_jobs WHERE id = $1", &[&job])
            .await
            .unwrap()
            .get(0);
        if status == "processing" {
            claimed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(claimed, "the worker never claimed the job");

    let erased = stack
        .call(
            Method::DELETE,
            "/api/v1/me",
            Some(&ann.token),
            Some(json!({"confirm": ANN.email})),
        )
        .await;
    assert_eq!(erased.status, 204, "{}", erased.body);
    gate.add_permits(10);
    let response = running.await.unwrap();
    assert!(response.batch_item_failures.is_empty());

    let row = client
        .query_one(
            "SELECT j.status, h.status, j.output_urls FROM generation_jobs j \
             JOIN credit_holds h ON h.job_id = j.id WHERE j.id = $1",
            &[&job],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "cancelled");
    assert_eq!(row.get::<_, String>(1), "released");
    assert_eq!(row.get::<_, Value>(2), json!([]));
    let usage: i64 = client
        .query_one(
            "SELECT count(*) FROM credit_transactions WHERE user_id = $1 AND transaction_type = 'usage'",
            &[&ann.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(usage, 0, "a cancelled job is never charged");
    let balance = client
        .query_one(
            "SELECT current_balance, reserved_balance FROM user_credits WHERE user_id = $1",
            &[&ann.id],
        )
        .await
        .unwrap();
    assert_eq!(balance.get::<_, i32>(0), 40);
    assert_eq!(balance.get::<_, i32>(1), 0);
    assert_invariants(&client).await;
    let characters: i64 = client
        .query_one(
            "SELECT count(*) FROM characters WHERE user_id = $1",
            &[&ann.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(characters, 0);
    assert_eq!(
        files_under(&objects_root().join("users").join(&ann.id)),
        Vec::<PathBuf>::new()
    );
}

/// A user named `amount` gifts and is gifted, then erases their account: the
/// other side's rows lose the name, only in the fields that held it; the key
/// `amount` and every other value stay as they were (V13's scrub would have
/// turned `{"amount": 5}` into `{"[erased]": 5}`).
#[tokio::test]
async fn erasure_scrubs_only_the_fields_that_name_the_person() {
    let stack = spawn_stack().await;
    let (amount, amount_id) = stack.buyer("amount@example.com", "amount", 100).await;
    let (bob, bob_id) = stack.buyer("bob@example.com", "bob", 100).await;
    stack.user("carol@example.com", "carol").await;
    let to_bob = gift(&stack, &amount, "bob", 5, "an amount for you").await;
    let to_amount = gift(&stack, &bob, "AMOUNT", 2, "thanks").await;
    let to_carol = gift(&stack, &bob, "carol", 3, "the right amount").await;

    let reply = stack
        .call(
            Method::DELETE,
            "/api/v1/me",
            Some(&amount),
            Some(json!({"confirm": "amount@example.com"})),
        )
        .await;
    assert_eq!(reply.status, 204, "{}", reply.body);

    let client = stack.sql().await;
    let activity = |kind: &'static str, gift: &Value| {
        let id = gift["gift_id"].as_str().unwrap().to_string();
        let client = &client;
        let bob_id = bob_id.clone();
        async move {
            client
                .query_one(
                    "SELECT metadata FROM user_activity_logs \
                     WHERE user_id = $1 AND activity_type = $2 AND entity_id = $3",
                    &[&bob_id, &kind, &id],
                )
                .await
                .unwrap()
                .get::<_, Value>(0)
        }
    };
    // Bob's record of the gift from `amount`: the key stays, the name goes.
    let received = activity("gift_received", &to_bob).await;
    assert_eq!(
        received,
        json!({"amount": 5, "from_username": "[erased]",
               "transaction_id": received["transaction_id"].clone()})
    );
    assert!(received["transaction_id"].is_string());
    // Bob's gift to `amount`: only the recipient's name goes.
    let sent = activity("gift_sent", &to_amount).await;
    assert_eq!(sent["amount"], 2);
    assert_eq!(sent["to_username"], "[erased]");
    // Bob's gift to Carol names no one erased, though its message says "amount".
    let unrelated = activity("gift_sent", &to_carol).await;
    assert_eq!(unrelated["amount"], 3);
    assert_eq!(unrelated["to_username"], "carol");

    // Bob's ledger: the known descriptions rewritten, identifier fields scrubbed, the
    // message written by `amount` dropped, his own message to Carol untouched.
    let ledger: Vec<(String, String, Value)> = client
        .query(
            "SELECT transaction_type, description, metadata FROM credit_transactions \
             WHERE user_id = $1 AND transaction_type LIKE 'gift%' ORDER BY created_at, id",
            &[&bob_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert_eq!(
        ledger,
        vec![
            (
                "gift_received".to_string(),
                "Gift from [erased]".to_string(),
                json!({"from_username": "[erased]"})
            ),
            (
                "gift_sent".to_string(),
                "Gift to [erased]".to_string(),
                json!({"to_username": "[erased]", "message": "thanks"})
            ),
            (
                "gift_sent".to_string(),
                "Gift to carol".to_string(),
                json!({"to_username": "carol", "message": "the right amount"})
            ),
        ]
    );
    // Bob's stored responses: the one naming `amount` is scrubbed in its field only.
    let responses: Vec<Value> = client
        .query(
            "SELECT response_body FROM idempotency_keys WHERE user_id = $1 \
             AND response_body ? 'gift_id' ORDER BY created_at",
            &[&bob_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(responses.len(), 2);
    for response in &responses {
        assert!(response.get("amount").is_some(), "{response}");
        assert!(response.get("[erased]").is_none(), "{response}");
    }
    let scrubbed: Vec<&Value> = responses.iter().map(|r| &r["to_username"]).collect();
    assert!(scrubbed.contains(&&json!("[erased]")) && scrubbed.contains(&&json!("carol")));
    // Nothing anywhere holds a key `[erased]`.
    let broken_keys: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM user_activity_logs WHERE metadata::text LIKE '%\"[erased]\":%') \
                  + (SELECT count(*) FROM credit_transactions WHERE metadata::text LIKE '%\"[erased]\":%')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(broken_keys, 0);
    // And the erased account is a tombstone.
    let status: String = client
        .query_one(
            "SELECT account_status FROM users WHERE id = $1",
            &[&amount_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "deleted");
}
