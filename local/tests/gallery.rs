//! The public gallery on a seeded data set: filters and sorts return exactly
//! the expected rows; private, non-showcase, suspended-user and over-reported
//! characters never appear. Reports are weighed (fresh unverified accounts
//! cannot hide anything, established accurate reporters can, a moderator's
//! review overrides the reports it saw), and views count once per viewer,
//! character and day.

use reqwest::Method;
use serde_json::{Value, json};
use testkit::{Reply, TestStack, spawn_stack};

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

    // Open reports weighing GALLERY_REPORT_THRESHOLD (3) hide a character until reviewed:
    // three reports of full weight (1 each) do, two do not. (How reports are weighed over
    // HTTP is the business of the tests below.)
    for (character, reporters) in [(&b2, &people[..3]), (&a1, &people[..2])] {
        for reporter in reporters {
            client
                .execute(
                    "INSERT INTO content_reports (character_id, reporter_id, reason, weight) \
                     VALUES ($1, $2, 'spam', 1)",
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

// ------------------------------------------------------------------------------------------
// Weighted reports
// ------------------------------------------------------------------------------------------

/// Files a report over HTTP (it must be filed: 201); returns its id.
async fn report(stack: &TestStack, token: &str, character: &str) -> String {
    let reply = stack
        .call(
            Method::POST,
            &format!("/api/v1/characters/{character}/reports"),
            Some(token),
            Some(json!({"reason": "spam"})),
        )
        .await;
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
    reply.body["id"].as_str().unwrap().to_string()
}

/// A signed-in reporter whose account is `age_days` old, verified or not, with a record of
/// `actioned` past reports moderators actioned (against a throwaway character of someone
/// else's). Returns the token.
async fn reporter(
    stack: &TestStack,
    email: &str,
    age_days: i32,
    verified: bool,
    actioned: i32,
) -> String {
    let token = stack.sign_in(email).await;
    let client = stack.sql().await;
    let id: String = client
        .query_one(
            "UPDATE users SET created_at = now() - make_interval(days => $2), \
               email_verified_at = CASE WHEN $3 THEN now() END \
             WHERE email = $1 RETURNING id",
            &[&email, &age_days, &verified],
        )
        .await
        .unwrap()
        .get(0);
    for _ in 0..actioned {
        client
            .execute(
                "WITH old AS ( \
                   INSERT INTO characters (user_id, name, prompt, style_type) \
                   SELECT id, 'Old offender', 'x', 'anime' FROM users WHERE email = 'offender@example.com' \
                   RETURNING id) \
                 INSERT INTO content_reports (character_id, reporter_id, reason, status, weight) \
                 SELECT old.id, $1, 'spam', 'actioned', 1 FROM old",
                &[&id],
            )
            .await
            .unwrap();
    }
    token
}

/// `(report_score, open_report_count)` of a character, as stored.
async fn score(stack: &TestStack, character: &str) -> (f64, i32) {
    let row = stack
        .sql()
        .await
        .query_one(
            "SELECT report_score::float8, open_report_count FROM characters WHERE id = $1",
            &[&character],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn weight_of(stack: &TestStack, report: &str) -> f64 {
    stack
        .sql()
        .await
        .query_one(
            "SELECT weight::float8 FROM content_reports WHERE id = $1",
            &[&report],
        )
        .await
        .unwrap()
        .get(0)
}

async fn in_gallery(stack: &TestStack, name: &str) -> bool {
    gallery(stack, "?limit=100").await.iter().any(|n| n == name)
}

#[tokio::test]
async fn fresh_unverified_accounts_cannot_hide_a_character_and_established_accurate_reporters_can()
{
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    stack.sign_in("offender@example.com").await;
    showcase(&stack, &ann).await;
    let target = create(&stack, &ann, "Target", "anime", &[], true).await;
    let other = create(&stack, &ann, "Other", "anime", &[], true).await;

    // Ten accounts made today, unverified: each report is filed (201) and weighs nothing.
    for i in 0..10 {
        let token = stack.sign_in(&format!("sock{i}@example.com")).await;
        let id = report(&stack, &token, &target).await;
        assert_eq!(weight_of(&stack, &id).await, 0.0);
    }
    assert_eq!(score(&stack, &target).await, (0.0, 10));
    assert!(
        in_gallery(&stack, "Target").await,
        "throwaways hide nothing"
    );
    // Even verified, an account made today weighs nothing; unverified month-old ones 0.25.
    let verified_today = reporter(&stack, "new@example.com", 0, true, 0).await;
    let id = report(&stack, &verified_today, &target).await;
    assert_eq!(weight_of(&stack, &id).await, 0.0);
    for i in 0..3 {
        let token = reporter(&stack, &format!("old{i}@example.com"), 40, false, 0).await;
        let id = report(&stack, &token, &target).await;
        assert_eq!(weight_of(&stack, &id).await, 0.25);
    }
    assert_eq!(score(&stack, &target).await, (0.75, 14));
    assert!(in_gallery(&stack, "Target").await);

    // Established (60 days), verified reporters whose two past reports were both actioned
    // weigh 2 × 3/4 = 1.5: one does not reach the threshold of 3, two do.
    let first = reporter(&stack, "sharp1@example.com", 60, true, 2).await;
    let second = reporter(&stack, "sharp2@example.com", 60, true, 2).await;
    let id = report(&stack, &first, &other).await;
    assert_eq!(weight_of(&stack, &id).await, 1.5);
    assert!(in_gallery(&stack, "Other").await, "1.5 < 3");
    let id = report(&stack, &second, &other).await;
    assert_eq!(weight_of(&stack, &id).await, 1.5);
    assert_eq!(score(&stack, &other).await, (3.0, 2));
    assert!(
        !in_gallery(&stack, "Other").await,
        "3 ≥ 3: out of the gallery"
    );
    assert!(in_gallery(&stack, "Target").await);
    // Reporting again answers the open report and adds no weight.
    let again = stack
        .call(
            Method::POST,
            &format!("/api/v1/characters/{other}/reports"),
            Some(&second),
            Some(json!({"reason": "other"})),
        )
        .await;
    assert_eq!(again.status.as_u16(), 200, "{}", again.body);
    assert_eq!(score(&stack, &other).await, (3.0, 2));
    // The weight is the system's: the reporter sees none of it.
    assert!(again.body.get("weight").is_none(), "{}", again.body);
}

/// Signs in an admin; returns the token.
async fn admin(stack: &TestStack) -> String {
    let token = stack.token_with("mod@example.com", &["admin"]);
    let reply = stack
        .call(Method::POST, "/api/v1/auth/session", Some(&token), None)
        .await;
    assert!(reply.status.is_success(), "{}", reply.body);
    token
}

async fn resolve(stack: &TestStack, token: &str, report: &str, status: &str) -> Reply {
    stack
        .call(
            Method::POST,
            &format!("/api/v1/admin/reports/{report}/resolve"),
            Some(token),
            Some(json!({"status": status})),
        )
        .await
}

#[tokio::test]
async fn a_moderators_keep_is_not_overridden_by_the_reports_it_reviewed() {
    let stack = spawn_stack().await;
    let moderator = admin(&stack).await;
    let ann = stack.user("ann@example.com", "ann").await;
    stack.sign_in("offender@example.com").await;
    showcase(&stack, &ann).await;
    let target = create(&stack, &ann, "Target", "anime", &[], true).await;
    let mut reporters = Vec::new();
    for i in 0..4 {
        reporters.push(reporter(&stack, &format!("sharp{i}@example.com"), 60, true, 2).await);
    }
    let first = report(&stack, &reporters[0], &target).await;
    report(&stack, &reporters[1], &target).await;
    report(&stack, &reporters[2], &target).await;
    assert_eq!(score(&stack, &target).await, (4.5, 3));
    assert!(!in_gallery(&stack, "Target").await);

    // The moderator looks, keeps it (dismisses one report): back in the gallery, though two
    // of the reports it reviewed are still open in the queue.
    let reply = resolve(&stack, &moderator, &first, "dismissed").await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.body);
    let character = &reply.body["report"]["character"];
    assert_eq!(character["report_score"], 0.0);
    assert_eq!(character["open_report_count"], 2);
    assert!(character["moderation_reviewed_at"].is_string());
    assert_eq!(score(&stack, &target).await, (0.0, 2));
    assert!(in_gallery(&stack, "Target").await, "kept by a moderator");
    let queue = stack.get("/api/v1/admin/reports", Some(&moderator)).await;
    assert_eq!(queue.status.as_u16(), 200, "{}", queue.body);
    assert_eq!(queue.body["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(queue.body["items"][0]["weight"], 1.5);

    // The same reports, re-sent, do not hide it again (their open reports are answered)...
    for token in &reporters[1..3] {
        let again = stack
            .call(
                Method::POST,
                &format!("/api/v1/characters/{target}/reports"),
                Some(token),
                Some(json!({"reason": "spam"})),
            )
            .await;
        assert_eq!(again.status.as_u16(), 200, "{}", again.body);
    }
    assert!(in_gallery(&stack, "Target").await);
    // ...while a report filed after the review counts: 1.5 alone stays under 3.
    report(&stack, &reporters[3], &target).await;
    assert_eq!(score(&stack, &target).await, (1.5, 3));
    assert!(in_gallery(&stack, "Target").await);
    // The first reporter, dismissed once, reports anew: 2 × 3/5 = 1.2, 2.7 in all.
    let renewed = report(&stack, &reporters[0], &target).await;
    assert_eq!(weight_of(&stack, &renewed).await, 1.2);
    assert_eq!(score(&stack, &target).await, (2.7, 4));
    assert!(in_gallery(&stack, "Target").await);
}

// ------------------------------------------------------------------------------------------
// Views
// ------------------------------------------------------------------------------------------

async fn view_count(stack: &TestStack, character: &str) -> i32 {
    stack
        .sql()
        .await
        .query_one(
            "SELECT coalesce(view_count, 0) FROM characters WHERE id = $1",
            &[&character],
        )
        .await
        .unwrap()
        .get(0)
}

/// `n` reads of the character, each answered 200: as `token`'s user, or anonymously with
/// `agent` as the User-Agent.
async fn read(stack: &TestStack, character: &str, token: Option<&str>, agent: &str, n: usize) {
    for _ in 0..n {
        let mut request = stack
            .http
            .get(format!("{}/api/v1/characters/{character}", stack.base_url))
            .header("user-agent", agent);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let reply = testkit::read(request.send().await.unwrap()).await;
        assert_eq!(reply.status.as_u16(), 200, "{}", reply.body);
        assert_eq!(reply.body["id"], character);
    }
}

/// Writes the views the stack holds (as it does by itself once a batch is full or old
/// enough); the counts asserted are the stored ones, whoever wrote them.
async fn flush(stack: &TestStack) {
    stack
        .stack
        .state
        .cache::<shared::characters::views::ViewCounter>()
        .flush(&stack.stack.state.db)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_viewer_counts_once_per_character_per_day() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let bob = stack.user("bob@example.com", "bob").await;
    let carl = stack.user("carl@example.com", "carl").await;
    showcase(&stack, &ann).await;
    let aria = create(&stack, &ann, "Aria", "anime", &[], true).await;
    let brom = create(&stack, &ann, "Brom", "anime", &[], true).await;
    let draft = create(&stack, &ann, "Draft", "anime", &[], false).await;

    // 50 reads by one viewer in a day: one view.
    read(&stack, &aria, Some(&bob), "browser", 50).await;
    flush(&stack).await;
    assert_eq!(view_count(&stack, &aria).await, 1);
    // And once written, more reads that day add nothing, whichever process serves them.
    read(&stack, &aria, Some(&bob), "another browser", 10).await;
    flush(&stack).await;
    assert_eq!(view_count(&stack, &aria).await, 1);

    // Different viewers count separately: another user, two anonymous clients (told apart
    // by their User-Agent); the owner's reads and a private character's never count.
    read(&stack, &aria, Some(&carl), "browser", 3).await;
    read(&stack, &aria, None, "anonymous A", 5).await;
    read(&stack, &aria, None, "anonymous B", 2).await;
    read(&stack, &aria, Some(&ann), "browser", 10).await;
    read(&stack, &brom, Some(&bob), "browser", 4).await;
    read(&stack, &draft, Some(&ann), "browser", 3).await;
    flush(&stack).await;
    assert_eq!(view_count(&stack, &aria).await, 4);
    assert_eq!(view_count(&stack, &brom).await, 1);
    assert_eq!(view_count(&stack, &draft).await, 0);
    // popular follows the views: Aria (4) before Brom (1).
    assert_eq!(gallery(&stack, "?sort=popular").await, ["Aria", "Brom"]);

    // Nothing in the keys says who viewed: 16-byte digests only.
    let client = stack.sql().await;
    let keys: Vec<(String, i32)> = client
        .query(
            "SELECT character_id, octet_length(viewer_digest) FROM character_view_keys ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(keys.len(), 5);
    assert!(keys.iter().all(|(_, len)| *len == 16));

    // The next day (the stored keys moved back a day) Bob's reads count again, once.
    client
        .execute("UPDATE character_view_keys SET day = day - 1", &[])
        .await
        .unwrap();
    read(&stack, &aria, Some(&bob), "browser", 7).await;
    flush(&stack).await;
    assert_eq!(view_count(&stack, &aria).await, 5);

    // The scheduler forgets keys of days before yesterday.
    client
        .execute(
            "UPDATE character_view_keys SET day = day - 1 WHERE day < (now() AT TIME ZONE 'UTC')::date",
            &[],
        )
        .await
        .unwrap();
    let state = &stack.stack.state;
    let report =
        shared::runtime::scheduler::run("idempotency-purge", &state.db, None, &state.config)
            .await
            .unwrap();
    assert_eq!(report.outcome["view_keys_purged"], 5);
    let left: i64 = client
        .query_one("SELECT count(*) FROM character_view_keys", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 1, "today's key stays");

    // No request can bump the counter directly any more: V3's per-read function is out of
    // the API role's reach.
    let mut sql = stack.sql().await;
    let tx = sql.transaction().await.unwrap();
    tx.execute("SELECT set_config('role', 'app_api', true)", &[])
        .await
        .unwrap();
    let err = tx
        .execute("SELECT count_character_view($1)", &[&aria])
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{err}"
    );
}

/// A token whose email the identity provider verified (`…/email_verified: true`, as an
/// Auth0 Action adds it beside the namespaced email).
fn verified_token(stack: &TestStack, email: &str) -> String {
    let issuer = &stack.stack.issuer;
    let mut claims = issuer.claims_for(email, &[], std::time::Duration::from_secs(600));
    claims["https://characters.app/email_verified"] = json!(true);
    issuer.key().sign(issuer.key().kid(), &claims).unwrap()
}

#[tokio::test]
async fn sign_in_records_a_verified_email_and_the_report_weighs_accordingly() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    showcase(&stack, &ann).await;
    let target = create(&stack, &ann, "Target", "anime", &[], true).await;
    let verified = |email: &'static str| {
        let stack = &stack;
        async move {
            stack
                .sql()
                .await
                .query_one(
                    "SELECT email_verified_at IS NOT NULL FROM users WHERE email = $1",
                    &[&email],
                )
                .await
                .unwrap()
                .get::<_, bool>(0)
        }
    };

    // A plain token says nothing of verification: none is recorded.
    stack.sign_in("plain@example.com").await;
    assert!(!verified("plain@example.com").await);
    // A verified one records it at sign-in; a later plain sign-in does not undo it.
    let token = verified_token(&stack, "checked@example.com");
    let reply = stack
        .call(Method::POST, "/api/v1/auth/session", Some(&token), None)
        .await;
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.body);
    assert!(verified("checked@example.com").await);
    stack.sign_in("checked@example.com").await;
    assert!(verified("checked@example.com").await);

    // Both accounts aged a month: the verified reporter weighs 1, the other 0.25.
    stack
        .sql()
        .await
        .execute(
            "UPDATE users SET created_at = now() - interval '40 days' \
             WHERE email IN ('plain@example.com', 'checked@example.com')",
            &[],
        )
        .await
        .unwrap();
    let plain = report(&stack, &stack.token("plain@example.com"), &target).await;
    let checked = report(&stack, &token, &target).await;
    assert_eq!(weight_of(&stack, &plain).await, 0.25);
    assert_eq!(weight_of(&stack, &checked).await, 1.0);
    assert_eq!(score(&stack, &target).await, (1.25, 2));
}
