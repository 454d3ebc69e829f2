//! The OpenAPI document is CI's contract with clients:
//!
//! - the committed `openapi.json` is exactly what the code generates;
//! - every route the routers declare is documented, with every method it serves;
//! - every documented operation is served (a real request over HTTP is neither the
//!   router's "no such route" 404 nor a 405) and answers a status it documents;
//! - the document is OpenAPI 3.1 with a `bearer` scheme, and its problems are problem+json.
//!
//! After changing a route, a handler's annotation or a documented type, regenerate the
//! committed file from the repository root with:
//!
//! ```sh
//! cargo run -p local -- openapi > openapi.json
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use reqwest::Method;
use serde_json::Value;

const REGENERATE: &str = "cargo run -p local -- openapi > openapi.json";
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Routes only the local stack serves (its identity provider, signed file links, and job
/// events as Server-Sent Events, which API Gateway's HTTP API cannot stream): the document
/// describes the deployed API, where these do not exist.
const LOCAL_ONLY: [&str; 4] = [
    "/.well-known/jwks.json",
    "/dev/token",
    "/files/{*key}",
    "/api/v1/jobs/{id}/events",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("shared/ has a parent")
        .to_path_buf()
}

fn document() -> Value {
    serde_json::from_str(&shared::runtime::openapi::json()).expect("the document is JSON")
}

/// Documented operations: path -> methods (lowercase).
fn operations(doc: &Value) -> BTreeMap<String, BTreeSet<String>> {
    doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .map(|(path, item)| {
            let methods = item
                .as_object()
                .expect("path item")
                .keys()
                .filter(|k| METHODS.contains(&k.as_str()))
                .cloned()
                .collect();
            (path.clone(), methods)
        })
        .collect()
}

#[test]
fn the_committed_document_is_the_generated_one() {
    let path = repo_root().join("openapi.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = shared::runtime::openapi::json();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map(|i| i + 1)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()) + 1);
        panic!(
            "{} is not the document the code generates (first difference at line {line}); \
             regenerate it from the repository root with `{REGENERATE}` and commit it",
            path.display()
        );
    }
}

#[test]
fn the_document_is_openapi_3_1_with_a_bearer_scheme() {
    let doc = document();
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1."), "openapi: {version}");
    assert_eq!(doc["info"]["title"], "Character platform API");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let bearer = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(bearer["type"], "http", "{bearer}");
    assert_eq!(bearer["scheme"], "bearer", "{bearer}");
    assert_eq!(bearer["bearerFormat"], "JWT", "{bearer}");
}

/// Resolves a `$ref` into `components`, else returns the value itself.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value["$ref"].as_str() {
        Some(reference) => {
            let pointer = reference.trim_start_matches('#');
            doc.pointer(pointer)
                .unwrap_or_else(|| panic!("dangling reference {reference}"))
        }
        None => value,
    }
}

#[test]
fn every_operation_is_complete() {
    let doc = document();
    let tags: BTreeSet<&str> = doc["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    let mut operation_ids = BTreeSet::new();
    for (path, methods) in operations(&doc) {
        for method in methods {
            let operation = &doc["paths"][&path][&method];
            let at = format!("{} {path}", method.to_uppercase());
            assert!(
                operation_ids.insert(operation["operationId"].as_str().unwrap_or_default()),
                "{at}: operationId missing or repeated"
            );
            let tag = operation["tags"][0].as_str().unwrap_or_default();
            assert!(tags.contains(tag), "{at}: tag `{tag}` is not declared");
            assert!(
                operation["summary"].is_string(),
                "{at}: no summary (the handler's doc comment)"
            );

            // Security: bearer required, or optional (an empty requirement beside it).
            let security = operation["security"]
                .as_array()
                .unwrap_or_else(|| panic!("{at}: no security requirement"));
            assert!(
                security.iter().all(|r| r
                    .as_object()
                    .is_some_and(|r| r.keys().all(|k| k == "bearer"))),
                "{at}: unknown security scheme in {security:?}"
            );

            // Every `{param}` of the path is a documented path parameter.
            let documented: BTreeSet<&str> = operation["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .filter_map(|p| p["name"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            let in_path: BTreeSet<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            assert_eq!(documented, in_path, "{at}: path parameters");

            let responses = operation["responses"].as_object().expect("responses");
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{at}: no success response"
            );
            let authenticated = !security
                .iter()
                .any(|r| r.as_object().is_some_and(|r| r.is_empty()));
            if authenticated {
                assert!(
                    responses.contains_key("401"),
                    "{at}: needs a token but documents no 401"
                );
            }
            if operation["requestBody"].is_object() {
                for status in ["400", "413", "415", "422"] {
                    assert!(
                        responses.contains_key(status),
                        "{at}: takes a body but documents no {status}"
                    );
                }
            }
            // Every error is problem+json with the Problem schema.
            for (status, response) in responses {
                if !status.starts_with('4') && !status.starts_with('5') {
                    continue;
                }
                let response = resolve(&doc, response);
                let content = response["content"].as_object().expect("problem content");
                assert_eq!(
                    content.keys().collect::<Vec<_>>(),
                    ["application/problem+json"],
                    "{at} {status}"
                );
                assert_eq!(
                    content["application/problem+json"]["schema"]["$ref"],
                    "#/components/schemas/Problem",
                    "{at} {status}"
                );
            }
        }
    }
    let problem = &doc["components"]["schemas"]["Problem"];
    for field in ["type", "title", "status", "detail", "errors"] {
        assert!(problem["properties"][field].is_object(), "Problem.{field}");
    }
}

/// `.route("<path>", <methods>)` calls in the source of `shared/src`: the routes the
/// routers declare, with the methods chained on each (`get(a).post(b)`).
fn declared_routes() -> BTreeMap<String, BTreeSet<String>> {
    let mut routes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![repo_root().join("shared/src")];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read shared/src") {
                files.push(entry.expect("dir entry").path());
            }
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("read source");
        let mut rest = source.as_str();
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            let args = balanced(rest);
            let Some(literal) = args.trim_start().strip_prefix('"') else {
                // `.route(crate::runtime::openapi::PATH, ...)` in `app::finish`: probed over HTTP.
                continue;
            };
            let (route, methods) = literal.split_once('"').expect("string literal");
            routes
                .entry(route.to_string())
                .or_default()
                .extend(called_methods(methods));
        }
    }
    routes
}

/// The text up to the parenthesis closing the one just opened.
fn balanced(text: &str) -> &str {
    let mut depth = 1;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &text[..i];
                }
            }
            _ => {}
        }
    }
    text
}

/// `get(a).post(b)` -> {get, post}.
fn called_methods(expression: &str) -> BTreeSet<String> {
    let mut methods = BTreeSet::new();
    let mut word = String::new();
    for c in expression.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        if c == '(' && METHODS.contains(&word.as_str()) {
            methods.insert(word.clone());
        }
        word.clear();
    }
    methods
}

#[test]
fn every_declared_route_is_documented_with_its_methods() {
    let doc = document();
    let mut documented = operations(&doc);
    documented.remove(shared::runtime::openapi::PATH);
    let declared = declared_routes();
    assert!(
        declared.len() >= 10,
        "the source scan found too few routes: {declared:?}"
    );
    assert_eq!(
        declared, documented,
        "the routes declared in shared/src (left) and the documented ones (right) differ: \
         annotate the handler with #[utoipa::path], list it in shared::runtime::openapi's paths(...), \
         then run `{REGENERATE}`"
    );
    for path in LOCAL_ONLY {
        assert!(
            doc["paths"].get(path).is_none(),
            "{path} is local-stack only"
        );
    }
}

/// A concrete URL path for a documented template: placeholders for the parameters.
fn probe_path(template: &str) -> String {
    template
        .replace("{id}", "openapi-probe-id")
        .replace("{character_id}", "openapi-probe-character")
        .replace("{image_id}", "openapi-probe-image")
        .replace("{username}", "openapi_probe")
}

#[tokio::test]
async fn every_documented_operation_is_served() {
    let stack = testkit::spawn_stack().await;
    let token = stack.sign_in("openapi-probe@example.com").await;
    let doc = document();
    for (template, methods) in operations(&doc) {
        let path = probe_path(&template);
        assert!(
            !path.contains('{'),
            "no placeholder for a parameter of {template}"
        );
        for method in METHODS {
            let http_method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            if !methods.contains(method) {
                let reply = stack.call(http_method, &path, None, None).await;
                reply.assert_problem(405);
                assert_eq!(
                    reply.body["type"], "/problems/method-not-allowed",
                    "{method} {path}"
                );
                continue;
            }
            let operation = &doc["paths"][&template][method];
            // Anonymous, then signed in without a body, then with an empty JSON object
            // where the operation takes a body: each must reach the handler and answer
            // a status the operation documents.
            let mut probes = vec![(None, None), (Some(token.as_str()), None)];
            if operation["requestBody"].is_object() {
                probes.push((Some(token.as_str()), Some(serde_json::json!({}))));
            }
            for (token, body) in probes {
                let reply = stack
                    .call(http_method.clone(), &path, token, body.clone())
                    .await;
                let at = format!(
                    "{} {path} ({}, body {})",
                    method.to_uppercase(),
                    if token.is_some() {
                        "signed in"
                    } else {
                        "anonymous"
                    },
                    body.map_or("none".to_string(), |b| b.to_string())
                );
                assert_ne!(reply.status.as_u16(), 405, "{at}: documented but 405");
                assert_ne!(
                    reply.body["detail"], "no such route",
                    "{at}: documented but the router does not serve it"
                );
                let status = reply.status.as_u16().to_string();
                assert!(
                    operation["responses"].get(&status).is_some(),
                    "{at}: answered {status}, which its operation does not document; body: {}",
                    reply.body
                );
                if reply.status.is_client_error() || reply.status.is_server_error() {
                    reply.assert_problem(reply.status.as_u16());
                }
            }
        }
    }

    // The document serves itself, byte for byte as committed.
    let response = stack
        .http
        .get(format!(
            "{}{}",
            stack.base_url,
            shared::runtime::openapi::PATH
        ))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()[reqwest::header::CONTENT_TYPE],
        "application/json"
    );
    assert_eq!(
        response.text().await.expect("body"),
        shared::runtime::openapi::json()
    );
    stack.stack.stop().await.expect("stop");
}
