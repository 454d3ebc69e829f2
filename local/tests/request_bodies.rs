//! Every route that reads a JSON body reads it the same way: the body's
//! documented schema is the list of fields it takes, a field outside it is a
//! 422 naming that field, a read-only field is a 422 naming it, and a field
//! the schema documents is never called unknown. The routes come from the
//! OpenAPI document, so a new route is covered without touching this test.

use reqwest::Method;
use serde_json::{Map, Value, json};
use shared::web::input::{READ_ONLY, UNKNOWN};
use testkit::{Reply, TestStack, read, spawn_stack};

/// A JSON-body operation of the document: method, path template, whether it
/// needs the admin permission, and its body schema's property names.
struct Operation {
    method: Method,
    path: String,
    admin: bool,
    properties: Vec<String>,
}

/// The properties of a schema, through `$ref` and `allOf`.
fn properties(schema: &Value, components: &Map<String, Value>, out: &mut Vec<String>) {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap_or_default();
        properties(&components[name], components, out);
        return;
    }
    if let Some(parts) = schema["allOf"].as_array() {
        for part in parts {
            properties(part, components, out);
        }
    }
    if let Some(props) = schema["properties"].as_object() {
        out.extend(props.keys().cloned());
    }
}

fn json_body_operations() -> Vec<Operation> {
    let document = serde_json::to_value(shared::runtime::openapi::document()).unwrap();
    let components = document["components"]["schemas"]
        .as_object()
        .unwrap()
        .clone();
    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let schema = &operation["requestBody"]["content"]["application/json"]["schema"];
            if schema.is_null() {
                continue;
            }
            let mut names = Vec::new();
            properties(schema, &components, &mut names);
            let admin = operation["security"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["bearer"].as_array().is_some_and(|p| !p.is_empty()));
            operations.push(Operation {
                method: method.to_uppercase().parse().unwrap(),
                path: path.clone(),
                admin,
                properties: names,
            });
        }
    }
    operations
}

/// Sends `body` with a fresh Idempotency-Key (some routes require one).
async fn send(stack: &TestStack, method: Method, path: &str, token: &str, body: &Value) -> Reply {
    let response = stack
        .http
        .request(method, format!("{}{path}", stack.base_url))
        .bearer_auth(token)
        .header("idempotency-key", uuid::Uuid::new_v4().to_string())
        .json(body)
        .send()
        .await
        .expect("request");
    read(response).await
}

/// `(field, message)` of a 422's errors.
fn errors(reply: &Reply) -> Vec<(String, String)> {
    reply.body["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["field"].as_str().unwrap_or_default().to_string(),
                e["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// What a refused request must not change.
async fn snapshot(stack: &TestStack) -> Value {
    stack
        .sql()
        .await
        .query_one(
            "SELECT jsonb_build_object(\
               'users', (SELECT jsonb_agg(u ORDER BY id) FROM users u), \
               'profiles', (SELECT jsonb_agg(p ORDER BY user_id) FROM user_profiles p), \
               'characters', (SELECT jsonb_agg(c ORDER BY id) FROM characters c), \
               'collections', (SELECT jsonb_agg(k ORDER BY id) FROM collections k), \
               'members', (SELECT count(*) FROM collection_characters), \
               'ledger', (SELECT count(*) FROM credit_transactions), \
               'jobs', (SELECT count(*) FROM generation_jobs), \
               'configs', (SELECT jsonb_agg(a ORDER BY id) FROM api_credit_configs a), \
               'packages', (SELECT count(*) FROM credit_packages))",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn every_json_body_names_its_unknown_and_read_only_fields_and_knows_its_own() {
    let stack = spawn_stack().await;
    let alice = stack.user("alice@example.com", "alice").await;
    let admin = stack.token_with("root@example.com", &["admin"]);
    let reply = stack
        .call(Method::POST, "/api/v1/auth/session", Some(&admin), None)
        .await;
    assert!(reply.status.is_success(), "{}", reply.body);
    let character = stack
        .character(
            &alice,
            json!({"name": "Aria", "prompt": "an elf archer", "style_type": "fantasy"}),
        )
        .await;
    let collection = stack
        .call(
            Method::POST,
            "/api/v1/collections",
            Some(&alice),
            Some(json!({"name": "Elves"})),
        )
        .await;
    let collection = collection.body["id"].as_str().unwrap().to_string();
    // Changes are decoded against the stored row, so these must exist.
    let first = |reply: Reply| reply.body["items"][0]["id"].as_str().unwrap().to_string();
    let pricing = first(stack.get("/api/v1/admin/pricing", Some(&admin)).await);
    let package = first(stack.get("/api/v1/admin/packages", Some(&admin)).await);
    let before = snapshot(&stack).await;

    let operations = json_body_operations();
    assert!(operations.len() >= 20, "{} operations", operations.len());
    let target = |operation: &Operation| {
        let path = operation
            .path
            .replace("{character_id}", &character)
            .replace(
                "{id}",
                if operation.path.starts_with("/api/v1/collections/") {
                    &collection
                } else if operation.path.starts_with("/api/v1/characters/") {
                    &character
                } else if operation.path.starts_with("/api/v1/admin/pricing/") {
                    &pricing
                } else if operation.path.starts_with("/api/v1/admin/packages/") {
                    &package
                } else {
                    "00000000-0000-4000-8000-000000000000"
                },
            );
        let token = if operation.admin { &admin } else { &alice };
        let what = format!("{} {}", operation.method, operation.path);
        (path, token, what)
    };
    for operation in &operations {
        let (path, token, what) = target(operation);

        // An unknown field and `id` (read-only wherever a row has one, else unknown too).
        let reply = send(
            &stack,
            operation.method.clone(),
            &path,
            token,
            &json!({"zz_not_a_field": 1, "id": "x"}),
        )
        .await;
        reply.assert_problem(422);
        let named = errors(&reply);
        assert!(
            named.contains(&("zz_not_a_field".into(), UNKNOWN.into())),
            "{what}: {named:?}"
        );
        assert!(
            named.contains(&("id".into(), READ_ONLY.into()))
                || named.contains(&("id".into(), UNKNOWN.into())),
            "{what}: {named:?}"
        );
    }
    // The daily bonus takes no fields, and names any it is sent.
    let reply = send(
        &stack,
        Method::POST,
        "/api/v1/credits/daily-bonus",
        &alice,
        &json!({"zz_not_a_field": true}),
    )
    .await;
    reply.assert_problem(422);
    assert_eq!(
        errors(&reply),
        [("zz_not_a_field".to_string(), UNKNOWN.to_string())]
    );
    assert_eq!(
        snapshot(&stack).await,
        before,
        "a refused body changed something"
    );

    // Every documented field is one the decoder knows, whatever its value.
    for operation in &operations {
        let (path, token, what) = target(operation);
        let all_null: Map<String, Value> = operation
            .properties
            .iter()
            .map(|name| (name.clone(), Value::Null))
            .collect();
        let reply = send(
            &stack,
            operation.method.clone(),
            &path,
            token,
            &Value::Object(all_null),
        )
        .await;
        assert!(
            reply.status.as_u16() < 500,
            "{what}: {} {}",
            reply.status,
            reply.body
        );
        for (field, message) in errors(&reply) {
            assert_ne!(message, UNKNOWN, "{what}: documented field {field} refused");
        }
    }
}
