//! Sign-in, the caller's account and profile, and public profiles, over real
//! HTTP against real PostgreSQL.

use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};
use testkit::{TestStack, spawn_stack};

async fn count(stack: &TestStack, sql: &str, subject: &str) -> i64 {
    stack
        .sql()
        .await
        .query_one(sql, &[&subject])
        .await
        .unwrap()
        .get(0)
}

/// Every column a PATCH must never reach, as stored.
async fn protected_columns(stack: &TestStack, email: &str) -> Value {
    stack
        .sql()
        .await
        .query_one(
            "SELECT to_jsonb(u) - 'updated_at' - 'username' - 'timezone' - 'preferred_language' \
               - 'display_name' - 'avatar_url' - 'notification_settings' - 'profile_visibility' \
               - 'allow_gallery_showcase' - 'content_filter_level' \
             FROM users u WHERE email = $1",
            &[&email],
        )
        .await
        .unwrap()
        .get(0)
}

async fn user_row(stack: &TestStack, email: &str) -> Value {
    stack
        .sql()
        .await
        .query_one(
            "SELECT to_jsonb(u) FROM users u WHERE email = $1",
            &[&email],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn first_sign_in_creates_user_profile_and_credits_once_under_concurrency() {
    let stack = spawn_stack().await;
    let token = stack.token("new@example.com");
    let replies = join_all((0..10).map(|_| {
        stack
            .http
            .post(format!("{}/api/v1/auth/session", stack.base_url))
            .bearer_auth(&token)
            .header("user-agent", "concurrency-test/1.0")
            .send()
    }))
    .await;
    let mut statuses: Vec<u16> = replies
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    statuses.sort();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 200, 200, 200, 201]);

    let subject = shared::web::auth::dev_issuer::DevIssuer::subject_for("new@example.com");
    assert_eq!(
        count(
            &stack,
            "SELECT count(*) FROM users WHERE auth0_id = $1",
            &subject
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &stack,
            "SELECT count(*) FROM user_profiles p JOIN users u ON u.id = p.user_id WHERE u.auth0_id = $1",
            &subject
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &stack,
            "SELECT count(*) FROM user_credits c JOIN users u ON u.id = c.user_id WHERE u.auth0_id = $1",
            &subject
        )
        .await,
        1
    );
    // Each sign-in is logged, with the client's address and user agent.
    let logins = stack
        .sql()
        .await
        .query(
            "SELECT host(ip_address), user_agent, session_id FROM user_activity_logs l JOIN users u ON u.id = l.user_id \
             WHERE u.auth0_id = $1 AND activity_type = 'login'",
            &[&subject],
        )
        .await
        .unwrap();
    assert_eq!(logins.len(), 10);
    for login in logins {
        assert_eq!(
            login.get::<_, Option<String>>(0).as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            login.get::<_, Option<String>>(1).as_deref(),
            Some("concurrency-test/1.0")
        );
        assert!(
            login.get::<_, Option<String>>(2).is_some(),
            "request id recorded"
        );
    }
    let me = stack.get("/api/v1/me", Some(&token)).await;
    assert!(me.body["last_login_at"].is_string());
}

#[tokio::test]
async fn me_before_sign_in_is_a_clear_404() {
    let stack = spawn_stack().await;
    let token = stack.token("later@example.com");
    let reply = stack.get("/api/v1/me", Some(&token)).await;
    reply.assert_problem(404);
    assert!(
        reply.body["detail"]
            .as_str()
            .unwrap()
            .contains("/api/v1/auth/session")
    );
}

#[tokio::test]
async fn a_token_without_email_cannot_create_an_account() {
    let stack = spawn_stack().await;
    let key = stack.stack.issuer.key();
    let mut claims =
        stack
            .stack
            .issuer
            .claims_for("x@example.com", &[], std::time::Duration::from_secs(600));
    claims
        .as_object_mut()
        .unwrap()
        .remove("https://characters.app/email");
    let token = key.sign(key.kid(), &claims).unwrap();
    let reply = stack
        .call(Method::POST, "/api/v1/auth/session", Some(&token), None)
        .await;
    reply.assert_problem(422);
    assert_eq!(
        stack
            .sql()
            .await
            .query_one("SELECT count(*) FROM users", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        0
    );
}

#[tokio::test]
async fn an_email_bound_to_another_identity_is_not_taken_over() {
    let stack = spawn_stack().await;
    stack.sign_in("ann@example.com").await;
    let key = stack.stack.issuer.key();
    let mut claims =
        stack
            .stack
            .issuer
            .claims_for("ANN@example.com", &[], std::time::Duration::from_secs(600));
    claims["sub"] = json!("google-oauth2|123");
    let token = key.sign(key.kid(), &claims).unwrap();
    let reply = stack
        .call(Method::POST, "/api/v1/auth/session", Some(&token), None)
        .await;
    reply.assert_problem(409);
}

#[tokio::test]
async fn banned_and_erased_accounts_cannot_sign_in() {
    let stack = spawn_stack().await;
    let token = stack.sign_in("ann@example.com").await;
    for status in ["banned", "deleted"] {
        stack
            .sql()
            .await
            .execute("UPDATE users SET account_status = $1", &[&status])
            .await
            .unwrap();
        stack
            .call(Method::POST, "/api/v1/auth/session", Some(&token), None)
            .await
            .assert_problem(403);
        stack
            .get("/api/v1/me", Some(&token))
            .await
            .assert_problem(403);
    }
}

#[tokio::test]
async fn patch_me_changes_allowed_fields() {
    let stack = spawn_stack().await;
    let token = stack.sign_in("ann@example.com").await;
    let reply = stack
        .call(
            Method::PATCH,
            "/api/v1/me",
            Some(&token),
            Some(json!({
                "username": "ann_lee",
                "display_name": "  Ann Lee ",
                "avatar_url": "https://cdn.example.com/ann.png",
                "preferred_language": "ja",
                "timezone": "Asia/Tokyo",
                "notification_settings": {"push": true},
                "profile_visibility": "public",
                "allow_gallery_showcase": true,
                "content_filter_level": "strict"
            })),
        )
        .await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.body);
    let row = user_row(&stack, "ann@example.com").await;
    assert_eq!(row["username"], "ann_lee");
    assert_eq!(row["display_name"], "Ann Lee");
    assert_eq!(row["preferred_language"], "ja");
    assert_eq!(row["timezone"], "Asia/Tokyo");
    // Settings merge: the email channel keeps its default.
    assert_eq!(
        row["notification_settings"],
        json!({"email": true, "push": true})
    );
    assert_eq!(row["allow_gallery_showcase"], true);
    assert_eq!(row["content_filter_level"], "strict");
    assert_eq!(reply.body["username"], "ann_lee");

    // null clears a nullable field; absent fields stay.
    let cleared = stack
        .call(
            Method::PATCH,
            "/api/v1/me",
            Some(&token),
            Some(json!({"display_name": null})),
        )
        .await;
    assert_eq!(cleared.status.as_u16(), 200);
    let row = user_row(&stack, "ann@example.com").await;
    assert_eq!(row["display_name"], Value::Null);
    assert_eq!(row["username"], "ann_lee");
}

#[tokio::test]
async fn patch_me_refuses_protected_fields_and_changes_nothing() {
    let stack = spawn_stack().await;
    let token = stack.sign_in("ann@example.com").await;
    let before = protected_columns(&stack, "ann@example.com").await;
    let full_before = user_row(&stack, "ann@example.com").await;
    for body in [
        json!({"subscription_tier": "ENTERPRISE"}),
        json!({"daily_quota": 1000}),
        json!({"daily_used": 0}),
        json!({"account_status": "active"}),
        json!({"id": "someone-else"}),
        json!({"email": "other@example.com"}),
        json!({"total_images_generated": 99}),
        // A valid change smuggled beside a forbidden one is refused whole.
        json!({"username": "sneaky", "subscription_tier": "PRO"}),
    ] {
        let reply = stack
            .call(
                Method::PATCH,
                "/api/v1/me",
                Some(&token),
                Some(body.clone()),
            )
            .await;
        reply.assert_problem(422);
        let field = body
            .as_object()
            .unwrap()
            .keys()
            .find(|k| *k != "username")
            .unwrap();
        assert_eq!(reply.body["errors"][0]["field"], field.as_str(), "{body}");
    }
    assert_eq!(before, protected_columns(&stack, "ann@example.com").await);
    assert_eq!(
        full_before,
        user_row(&stack, "ann@example.com").await,
        "nothing at all changed"
    );
}

#[tokio::test]
async fn patch_me_validates_like_the_schema() {
    let stack = spawn_stack().await;
    let token = stack.sign_in("ann@example.com").await;
    let before = user_row(&stack, "ann@example.com").await;
    for (body, field) in [
        (json!({"username": "ab"}), "username"),
        (json!({"username": "has space"}), "username"),
        (json!({"username": "a".repeat(31)}), "username"),
        (json!({"username": null}), "username"),
        (json!({"timezone": "Mars/Olympus"}), "timezone"),
        (json!({"timezone": null}), "timezone"),
        (json!({"preferred_language": "fr"}), "preferred_language"),
        (
            json!({"profile_visibility": "everyone"}),
            "profile_visibility",
        ),
        (
            json!({"content_filter_level": "off"}),
            "content_filter_level",
        ),
        (json!({"avatar_url": "javascript:alert(1)"}), "avatar_url"),
        (json!({"display_name": "x".repeat(51)}), "display_name"),
        (
            json!({"notification_settings": {"sms": true}}),
            "notification_settings.sms",
        ),
        (
            json!({"notification_settings": {"email": "yes"}}),
            "notification_settings.email",
        ),
        (
            json!({"notification_settings": [true]}),
            "notification_settings",
        ),
    ] {
        let reply = stack
            .call(
                Method::PATCH,
                "/api/v1/me",
                Some(&token),
                Some(body.clone()),
            )
            .await;
        reply.assert_problem(422);
        assert_eq!(
            reply.body["errors"][0]["field"], field,
            "{body}: {}",
            reply.body
        );
    }
    // Wrong JSON types and unknown fields are 422 too; broken JSON is 400;
    // a body that is not JSON at all is 415.
    for body in [
        json!({"username": 5}),
        json!({"allow_gallery_showcase": "yes"}),
        json!({"nickname": "x"}),
        json!([1, 2]),
    ] {
        let reply = stack
            .call(
                Method::PATCH,
                "/api/v1/me",
                Some(&token),
                Some(body.clone()),
            )
            .await;
        reply.assert_problem(422);
    }
    let broken = stack
        .http
        .patch(format!("{}/api/v1/me", stack.base_url))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"username\": ")
        .send()
        .await
        .unwrap();
    testkit::read(broken).await.assert_problem(400);
    let not_json = stack
        .http
        .patch(format!("{}/api/v1/me", stack.base_url))
        .bearer_auth(&token)
        .body("username=ann")
        .send()
        .await
        .unwrap();
    testkit::read(not_json).await.assert_problem(415);
    let huge = stack
        .call(
            Method::PATCH,
            "/api/v1/me",
            Some(&token),
            Some(json!({"display_name": "x".repeat(300_000)})),
        )
        .await;
    huge.assert_problem(413);
    assert_eq!(
        before,
        user_row(&stack, "ann@example.com").await,
        "nothing changed"
    );
}

#[tokio::test]
async fn usernames_are_unique_regardless_of_case() {
    let stack = spawn_stack().await;
    stack.user("ann@example.com", "Ann").await;
    let bob = stack.sign_in("bob@example.com").await;
    for taken in ["Ann", "ann", "ANN"] {
        let reply = stack
            .call(
                Method::PATCH,
                "/api/v1/me",
                Some(&bob),
                Some(json!({"username": taken})),
            )
            .await;
        reply.assert_problem(409);
    }
    assert_eq!(
        user_row(&stack, "bob@example.com").await["username"],
        Value::Null
    );
}

#[tokio::test]
async fn profile_put_replaces_editable_fields_and_refuses_the_rest() {
    let stack = spawn_stack().await;
    let token = stack.sign_in("ann@example.com").await;
    let empty = stack.get("/api/v1/me/profile", Some(&token)).await;
    assert_eq!(empty.status.as_u16(), 200);
    assert_eq!(empty.body["bio"], Value::Null);

    let profile = json!({
        "first_name": "Ann",
        "last_name": "Lee",
        "bio": "Draws dragons.\nMostly blue ones.",
        "website_url": "https://ann.example.com",
        "social_links": {"twitter": "ann", "artstation": "annlee"},
        "profession": "Illustrator",
        "experience_level": "professional",
        "primary_use_case": ["gaming", "writing", "gaming"],
        "favorite_art_styles": ["anime", "fantasy"]
    });
    let reply = stack
        .call(
            Method::PUT,
            "/api/v1/me/profile",
            Some(&token),
            Some(profile),
        )
        .await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.body);
    assert_eq!(reply.body["primary_use_case"], json!(["gaming", "writing"]));
    let read = stack.get("/api/v1/me/profile", Some(&token)).await;
    assert_eq!(read.body["social_links"]["artstation"], "annlee");
    assert_eq!(read.body["experience_level"], "professional");

    // PUT replaces: fields left out are cleared.
    let reply = stack
        .call(
            Method::PUT,
            "/api/v1/me/profile",
            Some(&token),
            Some(json!({"bio": "New bio"})),
        )
        .await;
    assert_eq!(reply.status.as_u16(), 200);
    assert_eq!(reply.body["first_name"], Value::Null);
    assert_eq!(reply.body["bio"], "New bio");

    let before = stack.get("/api/v1/me/profile", Some(&token)).await.body;
    for (body, field) in [
        (json!({"badges": [{"type": "admin"}]}), "badges"),
        (
            json!({"total_likes_received": 1000}),
            "total_likes_received",
        ),
        (json!({"user_id": "x"}), "user_id"),
        (json!({"website_url": "ftp://x.example.com"}), "website_url"),
        (json!({"experience_level": "guru"}), "experience_level"),
        (
            json!({"favorite_art_styles": ["watercolour"]}),
            "favorite_art_styles[0]",
        ),
        (
            json!({"primary_use_case": ["Not A Slug"]}),
            "primary_use_case[0]",
        ),
        (
            json!({"social_links": {"twitter": 5}}),
            "social_links.twitter",
        ),
        (json!({"social_links": "ann"}), "social_links"),
        (json!({"bio": "x".repeat(2001)}), "bio"),
    ] {
        let reply = stack
            .call(
                Method::PUT,
                "/api/v1/me/profile",
                Some(&token),
                Some(body.clone()),
            )
            .await;
        reply.assert_problem(422);
        assert_eq!(
            reply.body["errors"][0]["field"], field,
            "{body}: {}",
            reply.body
        );
    }
    stack
        .call(
            Method::PUT,
            "/api/v1/me/profile",
            Some(&token),
            Some(json!({"hobby": "x"})),
        )
        .await
        .assert_problem(422);
    assert_eq!(
        before,
        stack.get("/api/v1/me/profile", Some(&token)).await.body
    );
}

#[tokio::test]
async fn private_profiles_are_hidden_and_public_ones_never_show_email() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let bob = stack.user("bob@example.com", "bob").await;

    // Private by default: a 404 for others and for anonymous callers alike.
    stack
        .get("/api/v1/users/ann", Some(&bob))
        .await
        .assert_problem(404);
    stack
        .get("/api/v1/users/ann", None)
        .await
        .assert_problem(404);
    let own = stack.get("/api/v1/users/ann", Some(&ann)).await;
    assert_eq!(own.status.as_u16(), 200, "the owner sees their own profile");

    // `friends` is private until the platform has friendships.
    stack
        .call(
            Method::PATCH,
            "/api/v1/me",
            Some(&ann),
            Some(json!({"profile_visibility": "friends"})),
        )
        .await;
    stack
        .get("/api/v1/users/ann", Some(&bob))
        .await
        .assert_problem(404);

    stack
        .call(
            Method::PATCH,
            "/api/v1/me",
            Some(&ann),
            Some(json!({"profile_visibility": "public", "display_name": "Ann"})),
        )
        .await;
    stack
        .call(
            Method::PUT,
            "/api/v1/me/profile",
            Some(&ann),
            Some(json!({"first_name": "Annabel", "bio": "Hello"})),
        )
        .await;
    for token in [None, Some(bob.as_str())] {
        let reply = stack.get("/api/v1/users/ANN", token).await;
        assert_eq!(reply.status.as_u16(), 200, "{}", reply.body);
        assert_eq!(reply.body["username"], "ann");
        assert_eq!(reply.body["display_name"], "Ann");
        assert_eq!(reply.body["profile"]["bio"], "Hello");
        let text = reply.body.to_string();
        assert!(!text.contains("ann@example.com"), "email leaked: {text}");
        assert!(
            !text.contains("local|"),
            "identity-provider id leaked: {text}"
        );
        assert!(!text.contains("Annabel"), "legal name leaked: {text}");
    }

    // Unknown, malformed and suspended users are all plain 404s.
    stack
        .get("/api/v1/users/nobody_here", None)
        .await
        .assert_problem(404);
    stack
        .get("/api/v1/users/bad%20name", None)
        .await
        .assert_problem(404);
    stack
        .sql()
        .await
        .execute(
            "UPDATE users SET account_status = 'suspended' WHERE username = 'ann'",
            &[],
        )
        .await
        .unwrap();
    stack
        .get("/api/v1/users/ann", None)
        .await
        .assert_problem(404);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let stack = spawn_stack().await;
    stack
        .get("/api/v1/nothing-here", None)
        .await
        .assert_problem(404);
    stack
        .call(Method::PUT, "/api/v1/auth/session", None, None)
        .await
        .assert_problem(405);
    let reply = stack.get("/api/v1/me", None).await;
    reply.assert_problem(401);
    assert!(reply.headers.contains_key("x-request-id"));
}
