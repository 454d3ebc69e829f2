//! Moderation over real HTTP against real PostgreSQL: the admin wall on every
//! admin route the OpenAPI document lists, the report queue (order, pages,
//! filters, resolution and what it does to the gallery), featuring, hiding
//! (which survives re-publishing) and unpublishing, every action logged with
//! the admin's id; and the content filter applied again at generation time.

use reqwest::Method;
use serde_json::{Value, json};
use testkit::{Reply, TestStack, spawn_stack};

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

const ADMIN: &str = "mod@example.com";

/// Signs in an admin (so they have a users row); returns the token and id.
async fn admin(stack: &TestStack) -> (String, String) {
    let token = stack.token_with(ADMIN, &["admin"]);
    let reply = stack
        .call(Method::POST, "/api/v1/auth/session", Some(&token), None)
        .await;
    assert!(reply.status.is_success(), "{}", reply.body);
    (token, user_id(stack, ADMIN).await)
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

/// A user with a username who allows gallery showcase.
async fn artist(stack: &TestStack, email: &str, username: &str) -> String {
    let token = stack.user(email, username).await;
    let reply = stack
        .call(
            Method::PATCH,
            "/api/v1/me",
            Some(&token),
            Some(json!({"allow_gallery_showcase": true})),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    token
}

async fn create(stack: &TestStack, token: &str, name: &str, public: bool) -> String {
    let reply = stack
        .call(
            Method::POST,
            "/api/v1/characters",
            Some(token),
            Some(json!({
                "name": name, "prompt": format!("portrait of {name}"),
                "style_type": "fantasy", "is_public": public
            })),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body["id"].as_str().unwrap().to_string()
}

async fn set_public(stack: &TestStack, token: &str, id: &str, public: bool) {
    let reply = stack
        .call(
            Method::PATCH,
            &format!("/api/v1/characters/{id}"),
            Some(token),
            Some(json!({"is_public": public})),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

/// Files a report; returns its id.
async fn report(stack: &TestStack, token: &str, character: &str, reason: &str) -> String {
    let reply = stack
        .call(
            Method::POST,
            &format!("/api/v1/characters/{character}/reports"),
            Some(token),
            Some(json!({"reason": reason})),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body["id"].as_str().unwrap().to_string()
}

fn ids(body: &Value) -> Vec<String> {
    body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a page: {body}"))
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_string())
        .collect()
}

/// Ids of every gallery listing: each sort, plus the featured list.
async fn gallery(stack: &TestStack) -> Vec<String> {
    let mut seen: Option<Vec<String>> = None;
    for sort in ["recent", "popular"] {
        let reply = stack
            .get(&format!("/api/v1/gallery?sort={sort}"), None)
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let mut listed = ids(&reply.body);
        listed.sort();
        if let Some(seen) = &seen {
            assert_eq!(&listed, seen, "sort={sort} lists other characters");
        }
        seen = Some(listed);
    }
    seen.unwrap_or_default()
}

async fn featured(stack: &TestStack) -> Vec<String> {
    let reply = stack.get("/api/v1/gallery/featured", None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    ids(&reply.body)
}

async fn call(stack: &TestStack, method: Method, path: &str, token: &str) -> Reply {
    stack.call(method, path, Some(token), None).await
}

async fn resolve(stack: &TestStack, token: &str, report: &str, body: Value) -> Reply {
    stack
        .call(
            Method::POST,
            &format!("/api/v1/admin/reports/{report}/resolve"),
            Some(token),
            Some(body),
        )
        .await
}

/// `(user_id, activity_type, entity_id, metadata)` of the admin activity rows of writes, in
/// order (the rows of one transaction share its `created_at`: those go by type). Reads of the
/// queue are logged too (`admin_reports_listed`, see admin_users.rs); they are left out here.
async fn admin_activity(stack: &TestStack) -> Vec<(String, String, String, Value)> {
    stack
        .sql()
        .await
        .query(
            "SELECT user_id, activity_type, entity_id, metadata FROM user_activity_logs \
             WHERE activity_type LIKE 'admin\\_%' AND activity_type <> 'admin_reports_listed' \
             ORDER BY created_at, activity_type",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect()
}

/// A digest of every table an admin route could change.
async fn snapshot(stack: &TestStack) -> Vec<(String, String)> {
    let client = stack.sql().await;
    let mut digests = Vec::new();
    for table in [
        "users",
        "user_profiles",
        "user_credits",
        "characters",
        "content_reports",
        "api_credit_configs",
        "credit_packages",
        "credit_transactions",
        "generation_jobs",
        "job_refunds",
        "user_activity_logs",
    ] {
        let digest: String = client
            .query_one(
                &format!(
                    "SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {table} t"
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        digests.push((table.to_string(), digest));
    }
    digests
}

// ------------------------------------------------------------------------------------------
// The admin wall
// ------------------------------------------------------------------------------------------

/// Every operation of the OpenAPI document under `/api/v1/admin`, so that a new admin route
/// is covered without touching this test.
fn admin_operations() -> Vec<(Method, String, bool)> {
    let doc: Value = serde_json::from_str(&shared::runtime::openapi::json()).unwrap();
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/api/v1/admin") {
            continue;
        }
        for (method, operation) in item.as_object().unwrap() {
            let Ok(method) = Method::from_bytes(method.to_uppercase().as_bytes()) else {
                continue;
            };
            operations.push((method, path.clone(), operation["requestBody"].is_object()));
        }
    }
    operations
}

#[tokio::test]
async fn every_admin_route_refuses_anonymous_and_non_admin_callers_and_changes_nothing() {
    let stack = spawn_stack().await;
    let ann = artist(&stack, "ann@example.com", "ann").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let bob = stack.user("bob@example.com", "bob").await;
    let character = create(&stack, &ann, "Aria", true).await;
    let report_id = report(&stack, &bob, &character, "spam").await;
    let operations = admin_operations();
    let paths: Vec<&str> = operations.iter().map(|(_, p, _)| p.as_str()).collect();
    for expected in [
        "/api/v1/admin/pricing",
        "/api/v1/admin/credits/adjustments",
        "/api/v1/admin/reports",
        "/api/v1/admin/reports/{id}/resolve",
        "/api/v1/admin/characters/{id}/feature",
        "/api/v1/admin/characters/{id}/hidden",
        "/api/v1/admin/characters/{id}/unpublish",
        "/api/v1/admin/users",
        "/api/v1/admin/users/{id}",
    ] {
        assert!(paths.contains(&expected), "{expected} not in {paths:?}");
    }
    assert!(operations.len() >= 17, "{operations:?}");

    // Real targets and bodies that would change something if the wall let them through.
    let target = |path: &str| -> String {
        let id = if path.starts_with("/api/v1/admin/reports/") {
            report_id.as_str()
        } else if path.starts_with("/api/v1/admin/characters/") {
            character.as_str()
        } else if path.starts_with("/api/v1/admin/users/") {
            ann_id.as_str()
        } else if path.starts_with("/api/v1/admin/pricing/") {
            "cfg_generate"
        } else if path.starts_with("/api/v1/admin/packages/") {
            "pkg_starter"
        } else {
            "no-such-id"
        };
        path.replace("{id}", id)
    };
    let body_for = |method: &Method, path: &str| -> Value {
        match (method.as_str(), path) {
            ("POST", "/api/v1/admin/reports/{id}/resolve") => {
                json!({"status": "actioned", "action": "unpublish"})
            }
            ("PATCH", "/api/v1/admin/users/{id}") => {
                json!({"account_status": "banned", "subscription_tier": "ENTERPRISE"})
            }
            ("POST", "/api/v1/admin/credits/adjustments") => {
                json!({"user_id": ann_id, "amount": 1000, "description": "free money"})
            }
            ("PATCH", "/api/v1/admin/pricing/{id}") => json!({"base_cost": 0}),
            _ => json!({}),
        }
    };

    let before = snapshot(&stack).await;
    let other = stack.token_with("ann@example.com", &["read:all", "administrator"]);
    for (method, template, takes_body) in &operations {
        let path = target(template);
        let body = takes_body.then(|| body_for(method, template));
        let at = format!("{method} {path}");
        let anonymous = stack.call(method.clone(), &path, None, body.clone()).await;
        assert_eq!(anonymous.status, 401, "{at}: {}", anonymous.body);
        anonymous.assert_problem(401);
        for token in [&ann, &other] {
            let reply = stack
                .call(method.clone(), &path, Some(token), body.clone())
                .await;
            assert_eq!(reply.status, 403, "{at}: {}", reply.body);
            reply.assert_problem(403);
        }
        // The permission is checked before the body is even read.
        let garbage = stack
            .http
            .request(method.clone(), format!("{}{path}", stack.base_url))
            .bearer_auth(&ann)
            .body("not json")
            .send()
            .await
            .unwrap();
        assert_eq!(garbage.status(), 403, "{at}");
    }
    assert_eq!(
        snapshot(&stack).await,
        before,
        "a refused call changed something"
    );
    // Ann's character is where she left it, in the gallery.
    assert_eq!(gallery(&stack).await, vec![character.clone()]);
}

// ------------------------------------------------------------------------------------------
// The report queue
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_report_queue_lists_oldest_first_in_pages_and_by_status() {
    let stack = spawn_stack().await;
    let (token, admin_id) = admin(&stack).await;
    let ann = artist(&stack, "ann@example.com", "ann").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let r1 = stack.sign_in("r1@example.com").await;
    let r2 = stack.sign_in("r2@example.com").await;
    let r3 = stack.sign_in("r3@example.com").await;
    let a = create(&stack, &ann, "Aria", true).await;
    let b = create(&stack, &ann, "Brom", true).await;
    let c = create(&stack, &ann, "Cora", true).await;
    let reports = vec![
        report(&stack, &r1, &a, "spam").await,
        report(&stack, &r2, &b, "violence").await,
        report(&stack, &r3, &a, "hate").await,
        report(&stack, &r1, &c, "other").await,
    ];

    let queue = stack.get("/api/v1/admin/reports", Some(&token)).await;
    assert_eq!(queue.status, 200, "{}", queue.body);
    assert_eq!(ids(&queue.body), reports, "open reports, oldest first");
    assert!(queue.body["next_cursor"].is_null());
    let first = &queue.body["items"][0];
    assert_eq!(first["status"], "open");
    assert_eq!(first["reason"], "spam");
    assert_eq!(first["character_id"], a);
    assert_eq!(
        first["reporter_id"],
        user_id(&stack, "r1@example.com").await
    );
    assert!(first["resolved_by"].is_null() && first["resolved_at"].is_null());
    let summary = &first["character"];
    assert_eq!(summary["id"], a);
    assert_eq!(summary["name"], "Aria");
    assert_eq!(summary["user_id"], ann_id);
    assert_eq!(summary["is_public"], true);
    assert_eq!(summary["in_gallery"], true);
    assert_eq!(summary["moderation_hidden"], false);
    assert_eq!(summary["open_report_count"], 2);
    assert_eq!(queue.body["items"][1]["character"]["open_report_count"], 1);

    // Page by page, the same reports in the same order.
    let mut walked = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/admin/reports?limit=1&cursor={c}"),
            None => "/api/v1/admin/reports?limit=1".into(),
        };
        let page = stack.get(&path, Some(&token)).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let page_ids = ids(&page.body);
        assert!(page_ids.len() <= 1);
        walked.extend(page_ids);
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(walked, reports);

    // Nothing resolved yet; then one dismissed report moves to that filter.
    let dismissed = stack
        .get("/api/v1/admin/reports?status=dismissed", Some(&token))
        .await;
    assert_eq!(ids(&dismissed.body), Vec::<String>::new());
    let reply = resolve(
        &stack,
        &token,
        &reports[1],
        json!({"status": "dismissed", "note": "  not violent  "}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["also_resolved"], json!([]));
    let open = stack
        .get("/api/v1/admin/reports?status=open", Some(&token))
        .await;
    assert_eq!(
        ids(&open.body),
        vec![reports[0].clone(), reports[2].clone(), reports[3].clone()]
    );
    let dismissed = stack
        .get("/api/v1/admin/reports?status=dismissed", Some(&token))
        .await;
    assert_eq!(ids(&dismissed.body), vec![reports[1].clone()]);
    let item = &dismissed.body["items"][0];
    assert_eq!(item["status"], "dismissed");
    assert_eq!(item["resolution_note"], "not violent");
    assert_eq!(item["resolved_by"], admin_id);
    assert!(item["resolved_at"].is_string());
    assert_eq!(item["character"]["open_report_count"], 0);
    let actioned = stack
        .get("/api/v1/admin/reports?status=actioned", Some(&token))
        .await;
    assert_eq!(ids(&actioned.body), Vec::<String>::new());

    // Bad parameters are 422s naming them.
    for (query, field) in [
        ("?status=closed", "status"),
        ("?limit=0", "limit"),
        ("?limit=101", "limit"),
        ("?cursor=garbage", "cursor"),
    ] {
        let reply = stack
            .get(&format!("/api/v1/admin/reports{query}"), Some(&token))
            .await;
        reply.assert_problem(422);
        assert_eq!(reply.body["errors"][0]["field"], field, "{query}");
    }
    stack
        .get("/api/v1/admin/reports?character=x", Some(&token))
        .await
        .assert_problem(422);
}

#[tokio::test]
async fn resolving_a_report_acts_on_the_character_in_the_same_transaction() {
    let stack = spawn_stack().await;
    let (token, admin_id) = admin(&stack).await;
    let ann = artist(&stack, "ann@example.com", "ann").await;
    let bob = stack.user("bob@example.com", "bob").await;
    let carol = stack.user("carol@example.com", "carol").await;
    let dave = stack.user("dave@example.com", "dave").await;
    let erin = stack.user("erin@example.com", "erin").await;
    let a = create(&stack, &ann, "Aria", true).await;
    let b = create(&stack, &ann, "Brom", true).await;
    let c = create(&stack, &ann, "Cora", true).await;
    let bob_on_a = report(&stack, &bob, &a, "sexual_content").await;
    let carol_on_a = report(&stack, &carol, &a, "other").await;
    let dave_on_b = report(&stack, &dave, &b, "spam").await;
    let erin_on_c = report(&stack, &erin, &c, "copyright").await;
    let mut everything = vec![a.clone(), b.clone(), c.clone()];
    everything.sort();
    assert_eq!(gallery(&stack).await, everything);

    // Actioned with hide: the character leaves the gallery, and every open report of it is
    // resolved with this one.
    let reply = resolve(
        &stack,
        &token,
        &bob_on_a,
        json!({"status": "actioned", "note": "nudity", "action": "hide"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let resolved = &reply.body["report"];
    assert_eq!(resolved["id"], bob_on_a);
    assert_eq!(resolved["status"], "actioned");
    assert_eq!(resolved["resolution_note"], "nudity");
    assert_eq!(resolved["resolved_by"], admin_id);
    assert_eq!(resolved["character"]["moderation_hidden"], true);
    assert_eq!(resolved["character"]["in_gallery"], false);
    assert_eq!(resolved["character"]["is_public"], true);
    assert_eq!(resolved["character"]["open_report_count"], 0);
    assert_eq!(reply.body["also_resolved"], json!([carol_on_a]));
    let mut rest = vec![b.clone(), c.clone()];
    rest.sort();
    assert_eq!(gallery(&stack).await, rest);
    let actioned = stack
        .get("/api/v1/admin/reports?status=actioned", Some(&token))
        .await;
    assert_eq!(
        ids(&actioned.body),
        vec![bob_on_a.clone(), carol_on_a.clone()]
    );
    assert_eq!(actioned.body["items"][1]["resolution_note"], "nudity");
    assert_eq!(actioned.body["items"][1]["resolved_by"], admin_id);
    // The owner sees why.
    let own = stack
        .get(&format!("/api/v1/characters/{a}"), Some(&ann))
        .await;
    assert_eq!(own.body["moderation_hidden"], true, "{}", own.body);

    // Only an open report can be resolved; a second try changes nothing.
    let activity_before = admin_activity(&stack).await.len();
    for id in [&bob_on_a, &carol_on_a] {
        resolve(&stack, &token, id, json!({"status": "dismissed"}))
            .await
            .assert_problem(409);
    }
    assert_eq!(admin_activity(&stack).await.len(), activity_before);

    // Dismissed: the character stays.
    let reply = resolve(
        &stack,
        &token,
        &dave_on_b,
        json!({"status": "dismissed", "action": "none"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["report"]["character"]["in_gallery"], true);
    assert_eq!(gallery(&stack).await, rest);

    // Bad requests are refused and change nothing.
    let before = snapshot(&stack).await;
    for (body, field) in [
        (json!({}), "status"),
        (json!({"status": "open"}), "status"),
        (json!({"status": "actioned", "action": "delete"}), "action"),
        (
            json!({"status": "dismissed", "action": "unpublish"}),
            "action",
        ),
        (
            json!({"status": "actioned", "note": "x".repeat(2001)}),
            "note",
        ),
        (
            json!({"status": "actioned", "resolved_by": "me"}),
            "resolved_by",
        ),
        (json!({"status": "actioned", "ban": true}), "ban"),
    ] {
        let reply = resolve(&stack, &token, &erin_on_c, body.clone()).await;
        reply.assert_problem(422);
        assert_eq!(reply.body["errors"][0]["field"], field, "{body}");
    }
    let malformed = stack
        .http
        .post(format!(
            "{}/api/v1/admin/reports/{erin_on_c}/resolve",
            stack.base_url
        ))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"status\": ")
        .send()
        .await
        .unwrap();
    testkit::read(malformed).await.assert_problem(400);
    resolve(
        &stack,
        &token,
        "no-such-report",
        json!({"status": "dismissed"}),
    )
    .await
    .assert_problem(404);
    assert_eq!(snapshot(&stack).await, before);

    // Actioned with unpublish makes the character private.
    let reply = resolve(
        &stack,
        &token,
        &erin_on_c,
        json!({"status": "actioned", "action": "unpublish"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["report"]["character"]["is_public"], false);
    assert_eq!(gallery(&stack).await, vec![b.clone()]);
    stack
        .get(&format!("/api/v1/characters/{c}"), Some(&bob))
        .await
        .assert_problem(404);

    // Each resolution and each action on a character is logged, naming the admin.
    let log = admin_activity(&stack).await;
    let kinds: Vec<(&str, &str)> = log
        .iter()
        .map(|(_, kind, entity, _)| (kind.as_str(), entity.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("admin_character_hidden", a.as_str()),
            ("admin_report_resolved", bob_on_a.as_str()),
            ("admin_report_resolved", dave_on_b.as_str()),
            ("admin_character_unpublished", c.as_str()),
            ("admin_report_resolved", erin_on_c.as_str()),
        ]
    );
    assert!(log.iter().all(|(user, ..)| *user == admin_id));
    let (_, _, _, hidden) = &log[0];
    assert_eq!(hidden["report_id"], bob_on_a);
    assert_eq!(
        hidden["changes"]["moderation_hidden"],
        json!({"from": false, "to": true})
    );
    let (_, _, _, first) = &log[1];
    assert_eq!(first["status"], "actioned");
    assert_eq!(first["action"], "hide");
    assert_eq!(first["note"], "nudity");
    assert_eq!(first["also_resolved"], json!([carol_on_a]));
}

#[tokio::test]
async fn concurrent_resolutions_of_one_character_resolve_each_report_once() {
    let stack = spawn_stack().await;
    let (token, _) = admin(&stack).await;
    let ann = artist(&stack, "ann@example.com", "ann").await;
    let a = create(&stack, &ann, "Aria", true).await;
    let mut reports = Vec::new();
    for i in 0..4 {
        let reporter = stack.sign_in(&format!("r{i}@example.com")).await;
        reports.push(report(&stack, &reporter, &a, "spam").await);
    }
    // Every report of the character at once, twice each: the first resolution to get the
    // character resolves all of them; every other one finds its report resolved.
    let attempts = reports.iter().chain(reports.iter()).map(|id| {
        resolve(
            &stack,
            &token,
            id,
            json!({"status": "actioned", "action": "hide"}),
        )
    });
    let replies = futures::future::join_all(attempts).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        reports.len() * 2 - 1,
        "{statuses:?}"
    );
    let winner = replies.iter().find(|r| r.status == 200).unwrap();
    let mut resolved: Vec<String> = winner.body["also_resolved"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    resolved.push(winner.body["report"]["id"].as_str().unwrap().to_string());
    resolved.sort();
    let mut all = reports.clone();
    all.sort();
    assert_eq!(resolved, all);
    let log = admin_activity(&stack).await;
    let kinds: Vec<&str> = log.iter().map(|(_, kind, ..)| kind.as_str()).collect();
    assert_eq!(kinds, ["admin_character_hidden", "admin_report_resolved"]);
    assert_eq!(gallery(&stack).await, Vec::<String>::new());
}

// ------------------------------------------------------------------------------------------
// Moderating characters
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn featuring_shows_in_the_featured_gallery_and_is_idempotent() {
    let stack = spawn_stack().await;
    let (token, admin_id) = admin(&stack).await;
    let ann = artist(&stack, "ann@example.com", "ann").await;
    let a = create(&stack, &ann, "Aria", true).await;
    let b = create(&stack, &ann, "Brom", true).await;
    let draft = create(&stack, &ann, "Draft", false).await;
    assert_eq!(featured(&stack).await, Vec::<String>::new());

    let feature = format!("/api/v1/admin/characters/{a}/feature");
    for _ in 0..2 {
        let reply = call(&stack, Method::PUT, &feature, &token).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["is_featured"], true);
        assert_eq!(reply.body["id"], a);
    }
    assert_eq!(featured(&stack).await, vec![a.clone()]);
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(gallery(&stack).await, both);

    // Only a character in the gallery can be featured.
    let reply = call(
        &stack,
        Method::PUT,
        &format!("/api/v1/admin/characters/{draft}/feature"),
        &token,
    )
    .await;
    reply.assert_problem(409);
    call(
        &stack,
        Method::PUT,
        "/api/v1/admin/characters/no-such-character/feature",
        &token,
    )
    .await
    .assert_problem(404);

    for _ in 0..2 {
        let reply = call(&stack, Method::DELETE, &feature, &token).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["is_featured"], false);
    }
    assert_eq!(featured(&stack).await, Vec::<String>::new());
    assert_eq!(gallery(&stack).await, both);

    // Every call is logged, saying whether it changed anything.
    let log = admin_activity(&stack).await;
    let summary: Vec<(&str, bool)> = log
        .iter()
        .map(|(_, kind, _, meta)| (kind.as_str(), meta["changed"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("admin_character_featured", true),
            ("admin_character_featured", false),
            ("admin_character_unfeatured", true),
            ("admin_character_unfeatured", false),
        ]
    );
    assert!(
        log.iter()
            .all(|(user, _, entity, _)| *user == admin_id && *entity == a)
    );
}

#[tokio::test]
async fn a_hidden_character_stays_out_of_the_gallery_until_unhidden() {
    let stack = spawn_stack().await;
    let (token, admin_id) = admin(&stack).await;
    let ann = artist(&stack, "ann@example.com", "ann").await;
    let a = create(&stack, &ann, "Aria", true).await;
    let b = create(&stack, &ann, "Brom", true).await;
    call(
        &stack,
        Method::PUT,
        &format!("/api/v1/admin/characters/{a}/feature"),
        &token,
    )
    .await;
    assert_eq!(featured(&stack).await, vec![a.clone()]);

    let hidden = format!("/api/v1/admin/characters/{a}/hidden");
    for _ in 0..2 {
        let reply = call(&stack, Method::PUT, &hidden, &token).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["moderation_hidden"], true);
        assert_eq!(reply.body["in_gallery"], false);
        assert_eq!(reply.body["is_featured"], false);
        assert!(reply.body["moderation_hidden_at"].is_string());
    }
    assert_eq!(gallery(&stack).await, vec![b.clone()]);
    assert_eq!(featured(&stack).await, Vec::<String>::new());
    // Still public: its link works.
    let by_link = stack.get(&format!("/api/v1/characters/{a}"), None).await;
    assert_eq!(by_link.status, 200, "{}", by_link.body);

    // The owner re-publishing does not bring it back, and cannot clear the flag.
    set_public(&stack, &ann, &a, false).await;
    set_public(&stack, &ann, &a, true).await;
    assert_eq!(gallery(&stack).await, vec![b.clone()]);
    let reply = stack
        .call(
            Method::PATCH,
            &format!("/api/v1/characters/{a}"),
            Some(&ann),
            Some(json!({"moderation_hidden": false})),
        )
        .await;
    reply.assert_problem(422);
    assert_eq!(reply.body["errors"][0]["field"], "moderation_hidden");
    // Not even a query as the API role that forgot to filter could.
    let client = stack.sql().await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let refused = client
        .batch_execute(&format!(
            "BEGIN; SELECT set_config('role', 'app_api', true), set_config('app.user_id', '{ann_id}', true); \
             UPDATE characters SET moderation_hidden = false WHERE id = '{a}'; COMMIT;"
        ))
        .await
        .expect_err("app_api wrote moderation_hidden");
    // Refused by the column privileges, not by some other failure.
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{refused:?}"
    );
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(gallery(&stack).await, vec![b.clone()]);

    // Unhiding returns it (public again), not featured.
    for _ in 0..2 {
        let reply = call(&stack, Method::DELETE, &hidden, &token).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["moderation_hidden"], false);
        assert!(reply.body["moderation_hidden_at"].is_null());
        assert_eq!(reply.body["in_gallery"], true);
    }
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(gallery(&stack).await, both);
    assert_eq!(featured(&stack).await, Vec::<String>::new());

    let log = admin_activity(&stack).await;
    let kinds: Vec<&str> = log.iter().map(|(_, kind, ..)| kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "admin_character_featured",
            "admin_character_hidden",
            "admin_character_hidden",
            "admin_character_unhidden",
            "admin_character_unhidden",
        ]
    );
    assert!(log.iter().all(|(user, ..)| *user == admin_id));
}

#[tokio::test]
async fn unpublishing_makes_a_character_private_until_its_owner_publishes_again() {
    let stack = spawn_stack().await;
    let (token, admin_id) = admin(&stack).await;
    let ann = artist(&stack, "ann@example.com", "ann").await;
    let bob = stack.user("bob@example.com", "bob").await;
    let a = create(&stack, &ann, "Aria", true).await;
    call(
        &stack,
        Method::PUT,
        &format!("/api/v1/admin/characters/{a}/feature"),
        &token,
    )
    .await;

    let unpublish = format!("/api/v1/admin/characters/{a}/unpublish");
    for _ in 0..2 {
        let reply = call(&stack, Method::POST, &unpublish, &token).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["is_public"], false);
        assert_eq!(reply.body["is_featured"], false);
        assert_eq!(reply.body["in_gallery"], false);
    }
    assert_eq!(gallery(&stack).await, Vec::<String>::new());
    assert_eq!(featured(&stack).await, Vec::<String>::new());
    stack
        .get(&format!("/api/v1/characters/{a}"), Some(&bob))
        .await
        .assert_problem(404);
    let own = stack
        .get(&format!("/api/v1/characters/{a}"), Some(&ann))
        .await;
    assert_eq!(own.body["is_public"], false);

    // Unlike hiding, the owner may publish it again.
    set_public(&stack, &ann, &a, true).await;
    assert_eq!(gallery(&stack).await, vec![a.clone()]);
    call(
        &stack,
        Method::POST,
        "/api/v1/admin/characters/no-such-character/unpublish",
        &token,
    )
    .await
    .assert_problem(404);

    let log = admin_activity(&stack).await;
    let unpublished: Vec<bool> = log
        .iter()
        .filter(|(_, kind, ..)| kind == "admin_character_unpublished")
        .map(|(user, _, _, meta)| {
            assert_eq!(*user, admin_id);
            meta["changed"].as_bool().unwrap()
        })
        .collect();
    assert_eq!(unpublished, [true, false]);
}

// ------------------------------------------------------------------------------------------
// The content filter at generation time
// ------------------------------------------------------------------------------------------

async fn set_level(stack: &TestStack, token: &str, level: &str) {
    let reply = stack
        .call(
            Method::PATCH,
            "/api/v1/me",
            Some(token),
            Some(json!({"content_filter_level": level})),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

async fn jobs(stack: &TestStack) -> i64 {
    stack
        .sql()
        .await
        .query_one("SELECT count(*) FROM generation_jobs", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn every_part_that_reaches_the_image_server_is_filtered() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    set_level(&stack, &ann, "moderate").await;
    // At creation: art style, mood and tags are checked like the prompt.
    for (field, value) in [
        ("art_style", json!("hentai")),
        ("mood", json!("nude")),
        ("tags", json!(["elf", "gore"])),
    ] {
        let mut body = json!({"name": "Nyx", "prompt": "an elf", "style_type": "fantasy"});
        body[field] = value;
        let reply = stack
            .call(Method::POST, "/api/v1/characters", Some(&ann), Some(body))
            .await;
        reply.assert_problem(422);
        assert_eq!(reply.body["errors"][0]["field"], field, "{}", reply.body);
    }
    // At generation: against the level of the moment.
    set_level(&stack, &ann, "relaxed").await;
    let reply = stack
        .call(
            Method::POST,
            "/api/v1/characters",
            Some(&ann),
            Some(json!({"name": "Nyx", "prompt": "an elf", "style_type": "fantasy", "mood": "seductive"})),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let generate = format!(
        "/api/v1/characters/{}/generate",
        reply.body["id"].as_str().unwrap()
    );
    set_level(&stack, &ann, "strict").await;
    let reply = stack
        .call(Method::POST, &generate, Some(&ann), Some(json!({})))
        .await;
    reply.assert_problem(422);
    assert_eq!(reply.body["errors"][0]["field"], "character.mood");
    assert_eq!(jobs(&stack).await, 0);
}

#[tokio::test]
async fn generation_checks_the_prompt_against_the_owners_current_filter_level() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    set_level(&stack, &ann, "relaxed").await;
    // Allowed at `relaxed`, blocked at `moderate` (rule explicit-sexual).
    let reply = stack
        .call(
            Method::POST,
            "/api/v1/characters",
            Some(&ann),
            Some(json!({"name": "Nyx", "prompt": "nsfw elf", "style_type": "fantasy"})),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let nyx = reply.body["id"].as_str().unwrap().to_string();
    let generate = format!("/api/v1/characters/{nyx}/generate");

    set_level(&stack, &ann, "moderate").await;
    let reply = stack
        .call(Method::POST, &generate, Some(&ann), Some(json!({})))
        .await;
    reply.assert_problem(422);
    assert_eq!(reply.body["errors"][0]["field"], "character.prompt");
    assert!(
        reply.body["detail"]
            .as_str()
            .unwrap()
            .contains("`explicit-sexual`"),
        "{}",
        reply.body
    );
    assert_eq!(jobs(&stack).await, 0);
    let credits = stack.get("/api/v1/credits", Some(&ann)).await;
    assert_eq!(credits.body["free_generations_used"], 0, "{}", credits.body);

    // No prompt can be slipped in with the request: its fields are all fixed.
    for field in ["prompt", "negative_prompt", "extra_prompt"] {
        let reply = stack
            .call(
                Method::POST,
                &generate,
                Some(&ann),
                Some(json!({field: "a harmless knight"})),
            )
            .await;
        reply.assert_problem(422);
        assert_eq!(jobs(&stack).await, 0);
    }

    set_level(&stack, &ann, "relaxed").await;
    let reply = stack
        .call(Method::POST, &generate, Some(&ann), Some(json!({})))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(jobs(&stack).await, 1);
}

#[tokio::test]
async fn an_owner_making_a_featured_character_private_ends_its_featuring() {
    let stack = spawn_stack().await;
    let (token, _) = admin(&stack).await;
    let ann = artist(&stack, "ann@example.com", "ann").await;
    let a = create(&stack, &ann, "Aria", true).await;
    let reply = call(
        &stack,
        Method::PUT,
        &format!("/api/v1/admin/characters/{a}/feature"),
        &token,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(featured(&stack).await, vec![a.clone()]);

    set_public(&stack, &ann, &a, false).await;
    set_public(&stack, &ann, &a, true).await;
    // Back in the gallery, but no moderator chose to feature it again.
    assert_eq!(gallery(&stack).await, vec![a.clone()]);
    assert_eq!(featured(&stack).await, Vec::<String>::new());
}
