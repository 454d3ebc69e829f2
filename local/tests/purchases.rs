//! Purchases through Stripe Checkout, exactly once, over real HTTP against
//! real PostgreSQL: checkout sessions against a stub Stripe server, signed
//! webhook events delivered again and again (in sequence and concurrently),
//! refused signatures that change nothing, failed payments, refunds with
//! debt, the local payment provider end to end, and bad input.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::response::IntoResponse;
use axum::routing::post;
use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};
use shared::credits::holds;
use shared::credits::ledger::{self, Entry};
use shared::credits::pricing::Quote;
use shared::credits::purchases::stripe;
use shared::kernel::config::PaymentProvider;
use testkit::ledger::assert_invariants;
use testkit::{Reply, TestStack, spawn_stack};

const WEBHOOK: &str = "/api/v1/credits/webhooks/stripe";
const PURCHASES: &str = "/api/v1/credits/purchases";

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

/// (current, reserved, debt) of a user.
async fn balances(stack: &TestStack, user: &str) -> (i32, i32, i32) {
    let row = stack
        .sql()
        .await
        .query_one(
            "SELECT current_balance, reserved_balance, debt_balance FROM user_credits WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

async fn count(
    stack: &TestStack,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> i64 {
    stack
        .sql()
        .await
        .query_one(sql, params)
        .await
        .unwrap()
        .get(0)
}

/// The ledger invariants, and the disputes' own: an order's `disputed_credits`
/// is the sum of its applied open and lost disputes' credits, and no order has
/// taken back more than it credited.
async fn check_ledger(stack: &TestStack) {
    let db = stack.sql().await;
    assert_invariants(&db).await;
    let broken: Vec<String> = db
        .query(
            "SELECT o.id FROM purchase_orders o \
             WHERE o.disputed_credits <> coalesce((SELECT sum(d.credits) FROM payment_disputes d \
                     WHERE d.purchase_order_id = o.id AND d.applied_at IS NOT NULL \
                       AND d.status IN ('open', 'lost')), 0) \
                OR o.refunded_credits > o.credit_amount + o.bonus_credits",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        broken.is_empty(),
        "orders whose disputed credits do not add up: {broken:?}"
    );
}

async fn order_status(stack: &TestStack, order_id: &str) -> String {
    stack
        .sql()
        .await
        .query_one(
            "SELECT status FROM purchase_orders WHERE id = $1",
            &[&order_id],
        )
        .await
        .unwrap()
        .get(0)
}

/// `POST /api/v1/credits/purchases` on `base`, with an optional key.
async fn purchase(
    stack: &TestStack,
    base: &str,
    token: Option<&str>,
    key: Option<&str>,
    body: Value,
) -> Reply {
    let mut request = stack.http.post(format!("{base}{PURCHASES}")).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    testkit::read(request.send().await.unwrap()).await
}

/// Buys `package` through the local stack (local provider): the pending order's id.
async fn pending_order(stack: &TestStack, token: &str, package: &str) -> String {
    let key = uuid::Uuid::new_v4().to_string();
    let reply = purchase(
        stack,
        &stack.base_url,
        Some(token),
        Some(&key),
        json!({"package_id": package}),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body["order"]["id"].as_str().unwrap().to_string()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn event(id: &str, kind: &str, object: Value) -> String {
    json!({
        "id": id,
        "object": "event",
        "type": kind,
        "created": now(),
        "livemode": false,
        "data": {"object": object},
    })
    .to_string()
}

/// A Checkout Session object for `order_id` as Stripe sends it.
fn session(order_id: &str, payment_status: &str, payment_intent: &str) -> Value {
    json!({
        "id": format!("cs_local_{order_id}"),
        "object": "checkout.session",
        "mode": "payment",
        "payment_status": payment_status,
        "client_reference_id": order_id,
        "metadata": {"purchase_order_id": order_id},
        "amount_total": 1999,
        "currency": "usd",
        "payment_intent": payment_intent,
    })
}

fn completed(event_id: &str, order_id: &str) -> String {
    event(
        event_id,
        "checkout.session.completed",
        session(order_id, "paid", &format!("pi_{order_id}")),
    )
}

fn refunded(event_id: &str, order_id: &str, amount_refunded: i64) -> String {
    event(
        event_id,
        "charge.refunded",
        json!({
            "id": format!("ch_{order_id}"),
            "object": "charge",
            "amount": 1999,
            "amount_refunded": amount_refunded,
            "currency": "usd",
            "refunded": amount_refunded >= 1999,
            "payment_intent": format!("pi_{order_id}"),
        }),
    )
}

/// Delivers `body` to the stack's webhook with this `Stripe-Signature` (none if `None`).
async fn deliver_signed(stack: &TestStack, body: &str, signature: Option<String>) -> Reply {
    let mut request = stack
        .http
        .post(format!("{}{WEBHOOK}", stack.base_url))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(signature) = signature {
        request = request.header("Stripe-Signature", signature);
    }
    testkit::read(request.send().await.unwrap()).await
}

/// Delivers `body` signed now with the local stack's webhook secret, as Stripe would.
async fn deliver(stack: &TestStack, body: &str) -> Reply {
    let signature = stripe::sign(local::LOCAL_WEBHOOK_SECRET, now(), body.as_bytes());
    deliver_signed(stack, body, Some(signature)).await
}

async fn deliver_ok(stack: &TestStack, body: &str) -> String {
    let reply = deliver(stack, body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["outcome"].as_str().unwrap().to_string()
}

// ------------------------------------------------------------------------------------------
// A stub Stripe: records what it is sent and answers as scripted
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Recorded {
    authorization: Option<String>,
    idempotency_key: Option<String>,
    content_type: Option<String>,
    form: Vec<(String, String)>,
}

impl Recorded {
    fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone)]
enum Script {
    /// Answer with `status` and Stripe's error object.
    Fail(u16),
    /// Say the call arrived (`arrived`), then answer normally once `release`
    /// gets a permit: the test holds the call open as long as it needs.
    Held {
        arrived: Arc<tokio::sync::Notify>,
        release: Arc<tokio::sync::Semaphore>,
    },
}

#[derive(Clone, Default)]
struct StubStripe {
    calls: Arc<Mutex<Vec<Recorded>>>,
    script: Arc<Mutex<VecDeque<Script>>>,
}

impl StubStripe {
    async fn start() -> (Self, String) {
        let stub = Self::default();
        let app = Router::new()
            .route("/v1/checkout/sessions", post(stub_create_session))
            .with_state(stub.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (stub, format!("http://{addr}"))
    }

    fn calls(&self) -> Vec<Recorded> {
        self.calls.lock().unwrap().clone()
    }

    fn then(&self, script: Script) {
        self.script.lock().unwrap().push_back(script);
    }
}

async fn stub_create_session(
    State(stub): State<StubStripe>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let recorded = Recorded {
        authorization: header("authorization"),
        idempotency_key: header("idempotency-key"),
        content_type: header("content-type"),
        form: url::form_urlencoded::parse(&body).into_owned().collect(),
    };
    let n = {
        let mut calls = stub.calls.lock().unwrap();
        calls.push(recorded);
        calls.len()
    };
    let script = stub.script.lock().unwrap().pop_front();
    match script {
        Some(Script::Fail(status)) => {
            let status = AxumStatus::from_u16(status).unwrap();
            let error = json!({"error": {"type": "api_error", "message": "stub says no"}});
            return (status, axum::Json(error)).into_response();
        }
        Some(Script::Held { arrived, release }) => {
            arrived.notify_one();
            let _permit = release.acquire().await;
        }
        None => {}
    }
    axum::Json(json!({
        "id": format!("cs_test_{n}"),
        "object": "checkout.session",
        "url": format!("https://checkout.stripe.test/c/pay/cs_test_{n}"),
        "payment_status": "unpaid",
    }))
    .into_response()
}

/// The credits function's routes, configured for Stripe at `stripe_base`,
/// served beside the local stack (same database, same token issuer).
async fn stripe_credits_function(stack: &TestStack, stripe_base: &str) -> String {
    let mut state = stack.stack.state.clone();
    let mut config = (*state.config).clone();
    config.payments.provider = PaymentProvider::Stripe;
    config.payments.stripe_api_base = stripe_base.to_string();
    config.payments.stripe_secret_key = Some("sk_test_stub".into());
    config.payments.checkout_success_url = "https://app.test/credits?checkout=success".into();
    config.payments.checkout_cancel_url = "https://app.test/credits?checkout=cancelled".into();
    state.config = Arc::new(config);
    let app = shared::runtime::app::finish(shared::runtime::app::credits_routes(), state);
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

// ------------------------------------------------------------------------------------------
// Creating purchases against (a stub of) Stripe
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_purchase_creates_one_order_and_one_checkout_session_per_idempotency_key() {
    let stack = spawn_stack().await;
    let (stub, stripe_base) = StubStripe::start().await;
    let credits = stripe_credits_function(&stack, &stripe_base).await;
    let ann = stack.sign_in("ann@example.com").await;
    let ann_id = user_id(&stack, "ann@example.com").await;

    let body = json!({"package_id": "pkg_creator"});
    let reply = purchase(&stack, &credits, Some(&ann), Some("buy-1"), body.clone()).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let order = &reply.body["order"];
    let order_id = order["id"].as_str().unwrap().to_string();
    assert_eq!(order["status"], "pending");
    assert_eq!(order["credit_amount"], 500);
    assert_eq!(order["bonus_credits"], 50);
    assert_eq!(order["price_usd"], "19.99");
    assert_eq!(order["price_currency"], "USD");
    assert_eq!(order["provider"], "stripe");
    assert_eq!(order["checkout_session_id"], "cs_test_1");
    assert_eq!(
        reply.body["checkout_url"],
        "https://checkout.stripe.test/c/pay/cs_test_1"
    );

    // What Stripe was sent.
    let calls = stub.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.authorization.as_deref(), Some("Bearer sk_test_stub"));
    assert_eq!(call.idempotency_key.as_deref(), Some(order_id.as_str()));
    assert_eq!(
        call.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(call.field("mode"), Some("payment"));
    assert_eq!(
        call.field("line_items[0][price_data][currency]"),
        Some("usd")
    );
    assert_eq!(
        call.field("line_items[0][price_data][unit_amount]"),
        Some("1999")
    );
    assert_eq!(
        call.field("line_items[0][price_data][product_data][name]"),
        Some("Creator")
    );
    assert_eq!(call.field("line_items[0][quantity]"), Some("1"));
    assert_eq!(call.field("client_reference_id"), Some(order_id.as_str()));
    assert_eq!(
        call.field("metadata[purchase_order_id]"),
        Some(order_id.as_str())
    );
    assert_eq!(
        call.field("success_url"),
        Some("https://app.test/credits?checkout=success")
    );
    assert_eq!(
        call.field("cancel_url"),
        Some("https://app.test/credits?checkout=cancelled")
    );

    // The order row.
    let row = stack
        .sql()
        .await
        .query_one(
            "SELECT user_id, package_id, status, credit_amount, bonus_credits, price_usd::text, \
                    checkout_session_id, checkout_url FROM purchase_orders WHERE id = $1",
            &[&order_id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), ann_id);
    assert_eq!(row.get::<_, String>(1), "pkg_creator");
    assert_eq!(row.get::<_, String>(2), "pending");
    assert_eq!(row.get::<_, i32>(3), 500);
    assert_eq!(row.get::<_, i32>(4), 50);
    assert_eq!(row.get::<_, String>(5), "19.99");
    assert_eq!(row.get::<_, String>(6), "cs_test_1");
    assert_eq!(
        row.get::<_, String>(7),
        "https://checkout.stripe.test/c/pay/cs_test_1"
    );

    // Same key, same body: the stored response, no second order or Stripe call.
    let replay = purchase(&stack, &credits, Some(&ann), Some("buy-1"), body.clone()).await;
    assert_eq!(replay.status, 201);
    assert_eq!(replay.body, reply.body);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(stub.calls().len(), 1);
    let orders = "SELECT count(*) FROM purchase_orders";
    assert_eq!(count(&stack, orders, &[]).await, 1);

    // Same key, another body: 422, nothing new.
    purchase(
        &stack,
        &credits,
        Some(&ann),
        Some("buy-1"),
        json!({"package_id": "pkg_starter"}),
    )
    .await
    .assert_problem(422);
    assert_eq!(stub.calls().len(), 1);
    assert_eq!(count(&stack, orders, &[]).await, 1);

    // A new key is a new purchase (another session, another Stripe idempotency key).
    let second = purchase(&stack, &credits, Some(&ann), Some("buy-2"), body).await;
    assert_eq!(second.status, 201, "{}", second.body);
    assert_ne!(second.body["order"]["id"], order["id"]);
    assert_eq!(stub.calls().len(), 2);
    assert_ne!(stub.calls()[1].idempotency_key, call.idempotency_key);

    // Nothing is credited before Stripe says the payment went through.
    assert_eq!(balances(&stack, &ann_id).await, (0, 0, 0));
    check_ledger(&stack).await;
}

#[tokio::test]
async fn a_failed_stripe_call_fails_the_order_and_frees_the_key() {
    let stack = spawn_stack().await;
    let (stub, stripe_base) = StubStripe::start().await;
    let credits = stripe_credits_function(&stack, &stripe_base).await;
    let ann = stack.sign_in("ann@example.com").await;
    let body = json!({"package_id": "pkg_starter"});

    // Stripe down: 503 to retry, the order failed, the key forgotten.
    stub.then(Script::Fail(500));
    let reply = purchase(&stack, &credits, Some(&ann), Some("k1"), body.clone()).await;
    reply.assert_problem(503);
    assert!(reply.headers.contains_key("retry-after"));
    let failed: String = stack
        .sql()
        .await
        .query_one("SELECT status FROM purchase_orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(failed, "failed");
    let keys = "SELECT count(*) FROM idempotency_keys";
    assert_eq!(count(&stack, keys, &[]).await, 0);

    // The same key may be retried: a new order, a session this time.
    let retry = purchase(&stack, &credits, Some(&ann), Some("k1"), body.clone()).await;
    assert_eq!(retry.status, 201, "{}", retry.body);
    assert_eq!(retry.body["order"]["status"], "pending");
    let statuses = "SELECT count(*) FROM purchase_orders WHERE status = $1";
    assert_eq!(count(&stack, statuses, &[&"failed"]).await, 1);
    assert_eq!(count(&stack, statuses, &[&"pending"]).await, 1);

    // Stripe refusing the request (a bad key, say) is a 502: retrying will not help.
    stub.then(Script::Fail(401));
    let refused = purchase(&stack, &credits, Some(&ann), Some("k2"), body.clone()).await;
    refused.assert_problem(502);
    assert_eq!(refused.body["type"], "/problems/payment-provider-error");
    assert!(!refused.body.to_string().contains("sk_test_stub"));
    assert_eq!(count(&stack, statuses, &[&"failed"]).await, 2);

    // An unreachable Stripe is a 503.
    let down = stripe_credits_function(&stack, "http://127.0.0.1:9").await;
    purchase(&stack, &down, Some(&ann), Some("k3"), body)
        .await
        .assert_problem(503);
    assert_eq!(count(&stack, statuses, &[&"failed"]).await, 3);
    assert_eq!(count(&stack, keys, &[]).await, 1); // only k1's success is kept
    check_ledger(&stack).await;
}

#[tokio::test]
async fn a_duplicate_sent_during_the_stripe_call_is_told_to_wait() {
    let stack = spawn_stack().await;
    let (stub, stripe_base) = StubStripe::start().await;
    let credits = stripe_credits_function(&stack, &stripe_base).await;
    let ann = stack.sign_in("ann@example.com").await;
    let body = json!({"package_id": "pkg_studio"});

    let arrived = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    stub.then(Script::Held {
        arrived: arrived.clone(),
        release: release.clone(),
    });
    let first = purchase(&stack, &credits, Some(&ann), Some("slow"), body.clone());
    // The duplicate is sent while the first request is inside its Stripe call,
    // and the call is let go only once the duplicate has its answer.
    let second = async {
        arrived.notified().await;
        let second = purchase(&stack, &credits, Some(&ann), Some("slow"), body.clone()).await;
        release.add_permits(1);
        second
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(first.status, 201, "{}", first.body);
    second.assert_problem(409);
    assert_eq!(stub.calls().len(), 1);
    // Once done, the key answers the stored response.
    let replay = purchase(&stack, &credits, Some(&ann), Some("slow"), body).await;
    assert_eq!(replay.status, 201);
    assert_eq!(replay.body, first.body);
    assert_eq!(
        count(&stack, "SELECT count(*) FROM purchase_orders", &[]).await,
        1
    );
}

// ------------------------------------------------------------------------------------------
// The webhook: exactly once
// ------------------------------------------------------------------------------------------

async fn entries(stack: &TestStack, order_id: &str) -> Vec<(String, i32)> {
    stack
        .sql()
        .await
        .query(
            "SELECT transaction_type, amount FROM credit_transactions \
             WHERE related_entity_type = 'purchase_order' AND related_entity_id = $1 \
             ORDER BY created_at, id",
            &[&order_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn a_paid_order_is_credited_once_however_often_events_arrive() {
    let stack = spawn_stack().await;
    let ann = stack.sign_in("ann@example.com").await;
    let ann_id = user_id(&stack, "ann@example.com").await;

    // The same event five times in a row.
    let o1 = pending_order(&stack, &ann, "pkg_creator").await;
    let body = completed("evt_seq", &o1);
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        outcomes.push(deliver_ok(&stack, &body).await);
        check_ledger(&stack).await;
    }
    assert_eq!(outcomes[0], "credited");
    assert!(
        outcomes[1..].iter().all(|o| o == "duplicate"),
        "{outcomes:?}"
    );
    assert_eq!(balances(&stack, &ann_id).await, (550, 0, 0));
    assert_eq!(
        entries(&stack, &o1).await,
        vec![("purchase".into(), 500), ("bonus".into(), 50)]
    );
    assert_eq!(order_status(&stack, &o1).await, "paid");
    let paid_intent: Option<String> = stack
        .sql()
        .await
        .query_one(
            "SELECT payment_intent_id FROM purchase_orders WHERE id = $1",
            &[&o1],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(paid_intent, Some(format!("pi_{o1}")));

    // The same event five times at once.
    let o2 = pending_order(&stack, &ann, "pkg_creator").await;
    let body = completed("evt_par", &o2);
    let replies = join_all((0..5).map(|_| deliver(&stack, &body))).await;
    assert!(replies.iter().all(|r| r.status == 200));
    let credited = replies
        .iter()
        .filter(|r| r.body["outcome"] == "credited")
        .count();
    assert_eq!(credited, 1);
    assert_eq!(balances(&stack, &ann_id).await, (1100, 0, 0));
    assert_eq!(entries(&stack, &o2).await.len(), 2);
    check_ledger(&stack).await;

    // Two different events for one order: completed, then async_payment_succeeded.
    let o3 = pending_order(&stack, &ann, "pkg_creator").await;
    assert_eq!(
        deliver_ok(&stack, &completed("evt_a", &o3)).await,
        "credited"
    );
    let succeeded = event(
        "evt_b",
        "checkout.session.async_payment_succeeded",
        session(&o3, "paid", &format!("pi_{o3}")),
    );
    assert_eq!(deliver_ok(&stack, &succeeded).await, "already_paid");
    assert_eq!(balances(&stack, &ann_id).await, (1650, 0, 0));
    check_ledger(&stack).await;

    // ...and different event ids for one order, all at once.
    let o4 = pending_order(&stack, &ann, "pkg_creator").await;
    let bodies: Vec<String> = (0..5)
        .map(|i| {
            if i % 2 == 0 {
                completed(&format!("evt_c{i}"), &o4)
            } else {
                event(
                    &format!("evt_c{i}"),
                    "checkout.session.async_payment_succeeded",
                    session(&o4, "paid", &format!("pi_{o4}")),
                )
            }
        })
        .collect();
    let replies = join_all(bodies.iter().map(|b| deliver(&stack, b))).await;
    assert!(replies.iter().all(|r| r.status == 200));
    let credited = replies
        .iter()
        .filter(|r| r.body["outcome"] == "credited")
        .count();
    assert_eq!(credited, 1);
    assert_eq!(balances(&stack, &ann_id).await, (2200, 0, 0));
    assert_eq!(entries(&stack, &o4).await.len(), 2);
    check_ledger(&stack).await;

    // Every delivery of a distinct event id is recorded once; one activity row per purchase.
    assert_eq!(
        count(&stack, "SELECT count(*) FROM stripe_events", &[]).await,
        1 + 1 + 2 + 5
    );
    assert_eq!(
        count(
            &stack,
            "SELECT count(*) FROM user_activity_logs WHERE activity_type = 'purchase_completed' AND user_id = $1",
            &[&ann_id],
        )
        .await,
        4
    );
}

#[tokio::test]
async fn unknown_events_and_unknown_orders_are_recorded_and_acknowledged() {
    let stack = spawn_stack().await;
    let ann = stack.sign_in("ann@example.com").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let order = pending_order(&stack, &ann, "pkg_starter").await;

    let other = event("evt_other", "customer.created", json!({"id": "cus_1"}));
    assert_eq!(deliver_ok(&stack, &other).await, "unhandled");
    let stranger = completed("evt_stranger", "no-such-order");
    assert_eq!(deliver_ok(&stack, &stranger).await, "ignored");
    let rows = stack
        .sql()
        .await
        .query(
            "SELECT id, outcome, purchase_order_id FROM stripe_events ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let rows: Vec<(String, String, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("evt_other".into(), "unhandled".into(), None),
            ("evt_stranger".into(), "ignored".into(), None),
        ]
    );
    // A paid amount that differs from the order is not credited.
    let mut cheap = session(&order, "paid", "pi_cheap");
    cheap["amount_total"] = json!(1);
    cheap["id"] = json!(format!("cs_local_{order}"));
    let cheap = event("evt_cheap", "checkout.session.completed", cheap);
    assert_eq!(deliver_ok(&stack, &cheap).await, "amount_mismatch");
    assert_eq!(order_status(&stack, &order).await, "pending");
    assert_eq!(balances(&stack, &ann_id).await, (0, 0, 0));
    check_ledger(&stack).await;
}

#[tokio::test]
async fn refused_signatures_change_nothing() {
    let stack = spawn_stack().await;
    let ann = stack.sign_in("ann@example.com").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let order = pending_order(&stack, &ann, "pkg_creator").await;
    let body = completed("evt_sig", &order);
    let secret = local::LOCAL_WEBHOOK_SECRET;
    let good = stripe::sign(secret, now(), body.as_bytes());
    let v1 = good.split_once(",v1=").unwrap().1.to_string();
    let mut forged_v1 = v1.clone().into_bytes();
    forged_v1[0] = if forged_v1[0] == b'0' { b'1' } else { b'0' };
    let forged_v1 = String::from_utf8(forged_v1).unwrap();
    let tampered = body.replace("\"amount_total\":1999", "\"amount_total\":1998");
    assert_ne!(tampered, body);

    let cases: Vec<(&str, String, Option<String>)> = vec![
        (
            "forged signature",
            body.clone(),
            Some(format!("t={},v1={forged_v1}", now())),
        ),
        (
            "wrong secret",
            body.clone(),
            Some(stripe::sign("whsec_someone_else", now(), body.as_bytes())),
        ),
        (
            "stale timestamp",
            body.clone(),
            Some(stripe::sign(secret, now() - 301, body.as_bytes())),
        ),
        (
            "future timestamp",
            body.clone(),
            Some(stripe::sign(secret, now() + 301, body.as_bytes())),
        ),
        ("missing header", body.clone(), None),
        ("malformed header", body.clone(), Some("garbage".into())),
        (
            "malformed timestamp",
            body.clone(),
            Some(format!("t=yesterday,v1={v1}")),
        ),
        (
            "no v1 signature",
            body.clone(),
            Some(format!("t={},v0={v1}", now())),
        ),
        ("tampered body", tampered, Some(good.clone())),
    ];
    for (name, body, signature) in cases {
        let reply = deliver_signed(&stack, &body, signature).await;
        assert_eq!(reply.status, 400, "{name}: {}", reply.body);
        reply.assert_problem(400);
    }
    assert_eq!(order_status(&stack, &order).await, "pending");
    assert_eq!(
        count(&stack, "SELECT count(*) FROM stripe_events", &[]).await,
        0
    );
    assert_eq!(
        count(&stack, "SELECT count(*) FROM credit_transactions", &[]).await,
        0
    );
    assert_eq!(balances(&stack, &ann_id).await, (0, 0, 0));

    // The untampered event with its real signature (among others) goes through.
    let rolled = format!("{},v1={}", good, "0".repeat(64));
    let reply = deliver_signed(&stack, &body, Some(rolled)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(balances(&stack, &ann_id).await, (550, 0, 0));
    check_ledger(&stack).await;
}

#[tokio::test]
async fn a_failed_async_payment_fails_the_order_and_credits_nothing() {
    let stack = spawn_stack().await;
    let ann = stack.sign_in("ann@example.com").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let order = pending_order(&stack, &ann, "pkg_creator").await;

    // A bank debit: the session completes unpaid, then the payment fails.
    let unpaid = event(
        "evt_unpaid",
        "checkout.session.completed",
        session(&order, "unpaid", "pi_debit"),
    );
    assert_eq!(deliver_ok(&stack, &unpaid).await, "awaiting_payment");
    assert_eq!(order_status(&stack, &order).await, "pending");
    let failed = event(
        "evt_failed",
        "checkout.session.async_payment_failed",
        session(&order, "unpaid", "pi_debit"),
    );
    assert_eq!(deliver_ok(&stack, &failed).await, "failed");
    assert_eq!(deliver_ok(&stack, &failed).await, "duplicate");
    let row = stack
        .sql()
        .await
        .query_one(
            "SELECT status, failed_at IS NOT NULL, payment_intent_id FROM purchase_orders WHERE id = $1",
            &[&order],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "failed");
    assert!(row.get::<_, bool>(1));
    assert_eq!(row.get::<_, String>(2), "pi_debit");
    // A late "paid" event for the failed order credits nothing either.
    assert_eq!(
        deliver_ok(&stack, &completed("evt_late", &order)).await,
        "order_failed"
    );
    assert_eq!(balances(&stack, &ann_id).await, (0, 0, 0));
    assert!(entries(&stack, &order).await.is_empty());
    check_ledger(&stack).await;

    // A session the buyer abandoned expires: the order fails.
    let abandoned = pending_order(&stack, &ann, "pkg_creator").await;
    let expired = event(
        "evt_expired",
        "checkout.session.expired",
        session(&abandoned, "unpaid", "pi_none"),
    );
    assert_eq!(deliver_ok(&stack, &expired).await, "expired");
    assert_eq!(order_status(&stack, &abandoned).await, "failed");
    assert_eq!(balances(&stack, &ann_id).await, (0, 0, 0));
}

// ------------------------------------------------------------------------------------------
// Refunds
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_full_refund_claws_back_what_it_can_and_records_the_rest_as_debt() {
    let stack = spawn_stack().await;
    let ann = stack.sign_in("ann@example.com").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let order = pending_order(&stack, &ann, "pkg_creator").await;
    assert_eq!(
        deliver_ok(&stack, &completed("evt_paid", &order)).await,
        "credited"
    );
    assert_eq!(balances(&stack, &ann_id).await, (550, 0, 0));

    // Spend 500, and let a job hold 20 more: 30 available.
    let db = stack.sql().await;
    ledger::post(&db, &ann_id, Entry::new("usage", -500, "generations"))
        .await
        .unwrap();
    db.execute("UPDATE users SET daily_quota = 0 WHERE id = $1", &[&ann_id])
        .await
        .unwrap();
    let job: String = db
        .query_one(
            "INSERT INTO generation_jobs (user_id, job_type, input_parameters) \
             VALUES ($1, 'character_generation', '{}') RETURNING id",
            &[&ann_id],
        )
        .await
        .unwrap()
        .get(0);
    let quote = Quote {
        config_id: "cfg_generate".into(),
        price: 20,
        fallback_price: 0,
        calculation: json!({"price": 20}),
    };
    holds::hold(&db, &ann_id, &job, &quote).await.unwrap();
    assert_eq!(balances(&stack, &ann_id).await, (50, 20, 0));
    check_ledger(&stack).await;

    // Full refund: 550 owed, 30 available -> 30 taken back, 520 owed; the hold is untouched.
    assert_eq!(
        deliver_ok(&stack, &refunded("evt_refund", &order, 1999)).await,
        "refunded"
    );
    assert_eq!(balances(&stack, &ann_id).await, (20, 20, 520));
    let available =
        "SELECT current_balance - reserved_balance FROM user_credits WHERE user_id = $1";
    let available: i32 = db.query_one(available, &[&ann_id]).await.unwrap().get(0);
    assert_eq!(available, 0);
    let row = db
        .query_one(
            "SELECT status, refunded_credits, refunded_at IS NOT NULL FROM purchase_orders WHERE id = $1",
            &[&order],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "refunded");
    assert_eq!(row.get::<_, i32>(1), 550);
    assert!(row.get::<_, bool>(2));
    check_ledger(&stack).await;

    // The job fails: its hold is released; the debt stays until credits come in.
    holds::release(&db, &job).await.unwrap();
    assert_eq!(balances(&stack, &ann_id).await, (20, 0, 520));
    check_ledger(&stack).await;

    // The same refund again, redelivered or as a new event id: nothing changes.
    assert_eq!(
        deliver_ok(&stack, &refunded("evt_refund", &order, 1999)).await,
        "duplicate"
    );
    assert_eq!(
        deliver_ok(&stack, &refunded("evt_refund_again", &order, 1999)).await,
        "no_change"
    );
    assert_eq!(balances(&stack, &ann_id).await, (20, 0, 520));
    check_ledger(&stack).await;

    // A later purchase repays the debt first: 20 + 550 - 520 = 50.
    let next = pending_order(&stack, &ann, "pkg_creator").await;
    assert_eq!(
        deliver_ok(&stack, &completed("evt_next", &next)).await,
        "credited"
    );
    assert_eq!(balances(&stack, &ann_id).await, (50, 0, 0));
    check_ledger(&stack).await;
    let refunds: i64 = db
        .query_one(
            "SELECT coalesce(sum(amount), 0)::int8 FROM credit_transactions \
             WHERE user_id = $1 AND transaction_type = 'refund'",
            &[&ann_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(refunds, -550);
}

#[tokio::test]
async fn partial_refunds_claw_back_their_share_exactly_once() {
    let stack = spawn_stack().await;
    let ann = stack.sign_in("ann@example.com").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let order = pending_order(&stack, &ann, "pkg_creator").await;
    assert_eq!(
        deliver_ok(&stack, &completed("evt_paid", &order)).await,
        "credited"
    );

    // 10.00 of 19.99 refunded: floor(550 * 1000 / 1999) = 275.
    assert_eq!(
        deliver_ok(&stack, &refunded("evt_r1", &order, 1000)).await,
        "partially_refunded"
    );
    assert_eq!(balances(&stack, &ann_id).await, (275, 0, 0));
    assert_eq!(order_status(&stack, &order).await, "paid");
    check_ledger(&stack).await;
    // Redelivered, re-sent with a new id, or arriving late with a smaller total: no change.
    assert_eq!(
        deliver_ok(&stack, &refunded("evt_r1", &order, 1000)).await,
        "duplicate"
    );
    assert_eq!(
        deliver_ok(&stack, &refunded("evt_r1b", &order, 1000)).await,
        "no_change"
    );
    assert_eq!(
        deliver_ok(&stack, &refunded("evt_r0", &order, 500)).await,
        "no_change"
    );
    assert_eq!(balances(&stack, &ann_id).await, (275, 0, 0));
    // Concurrent deliveries of the next step: applied once.
    let step = refunded("evt_r2", &order, 1500);
    let again = refunded("evt_r2b", &order, 1500);
    let replies = join_all([
        deliver(&stack, &step),
        deliver(&stack, &step),
        deliver(&stack, &again),
    ])
    .await;
    assert!(replies.iter().all(|r| r.status == 200));
    // floor(550 * 1500 / 1999) = 412: 137 more.
    assert_eq!(balances(&stack, &ann_id).await, (550 - 412, 0, 0));
    check_ledger(&stack).await;
    // The rest.
    assert_eq!(
        deliver_ok(&stack, &refunded("evt_r3", &order, 1999)).await,
        "refunded"
    );
    assert_eq!(balances(&stack, &ann_id).await, (0, 0, 0));
    assert_eq!(order_status(&stack, &order).await, "refunded");
    let clawed: Vec<i32> = entries(&stack, &order)
        .await
        .into_iter()
        .filter(|(kind, _)| kind == "refund")
        .map(|(_, amount)| amount)
        .collect();
    assert_eq!(clawed, vec![-275, -137, -138]);
    check_ledger(&stack).await;
}

#[tokio::test]
async fn a_refund_that_overtakes_the_payment_event_is_applied_when_the_order_is_credited() {
    let stack = spawn_stack().await;
    let ann = stack.sign_in("ann@example.com").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let order = pending_order(&stack, &ann, "pkg_creator").await;
    // The charge metadata names the order (Checkout copies payment_intent_data.metadata).
    let mut early = serde_json::from_str::<Value>(&refunded("evt_early", &order, 1000)).unwrap();
    early["data"]["object"]["payment_intent"] = json!("pi_not_yet_known");
    early["data"]["object"]["metadata"] = json!({"purchase_order_id": order});
    assert_eq!(deliver_ok(&stack, &early.to_string()).await, "deferred");
    assert_eq!(order_status(&stack, &order).await, "pending");
    assert_eq!(balances(&stack, &ann_id).await, (0, 0, 0));

    assert_eq!(
        deliver_ok(&stack, &completed("evt_paid", &order)).await,
        "credited_then_refunded"
    );
    assert_eq!(balances(&stack, &ann_id).await, (550 - 275, 0, 0));
    assert_eq!(
        entries(&stack, &order).await,
        vec![
            ("purchase".into(), 500),
            ("bonus".into(), 50),
            ("refund".into(), -275)
        ]
    );
    check_ledger(&stack).await;
    // The same refund arriving again in order changes nothing; the rest of it does.
    assert_eq!(
        deliver_ok(&stack, &refunded("evt_again", &order, 1000)).await,
        "no_change"
    );
    assert_eq!(
        deliver_ok(&stack, &refunded("evt_rest", &order, 1999)).await,
        "refunded"
    );
    assert_eq!(balances(&stack, &ann_id).await, (0, 0, 0));
    check_ledger(&stack).await;
}

// ------------------------------------------------------------------------------------------
// The local payment provider, end to end
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_local_checkout_page_pays_through_the_signed_webhook_once() {
    let stack = spawn_stack().await;
    let ann = stack.sign_in("ann@example.com").await;
    let ann_id = user_id(&stack, "ann@example.com").await;

    let reply = purchase(
        &stack,
        &stack.base_url,
        Some(&ann),
        Some("local-1"),
        json!({"package_id": "pkg_creator"}),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let order_id = reply.body["order"]["id"].as_str().unwrap().to_string();
    assert_eq!(reply.body["order"]["provider"], "local");
    let checkout_url = reply.body["checkout_url"].as_str().unwrap().to_string();
    assert_eq!(
        checkout_url,
        format!("{}/dev/checkout/{order_id}", stack.base_url)
    );

    let page = stack.http.get(&checkout_url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains(&format!("action=\"/dev/checkout/{order_id}/pay\"")));
    assert!(html.contains(">Pay</button>"));

    // Pay: the signed event goes through the webhook; the page then shows the order paid.
    let pay_url = format!("{checkout_url}/pay");
    let paid = stack.http.post(&pay_url).send().await.unwrap();
    assert_eq!(paid.status(), 200);
    let paid_page = paid.text().await.unwrap();
    assert!(paid_page.contains(">paid</strong>"));
    assert_eq!(balances(&stack, &ann_id).await, (550, 0, 0));

    // "Back to the app" leads to a page of the stack a browser opens without a token.
    let back = paid_page
        .split("<a id=\"back\" href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the paid page links back to the app");
    assert_eq!(back, format!("{}/api/v1/credits/packages", stack.base_url));
    let packages = stack.http.get(back).send().await.unwrap();
    assert_eq!(packages.status(), 200);
    let packages: serde_json::Value = packages.json().await.unwrap();
    assert!(
        packages["items"]
            .as_array()
            .is_some_and(|items| !items.is_empty())
    );
    assert_eq!(order_status(&stack, &order_id).await, "paid");
    check_ledger(&stack).await;

    // Paying twice sends a second event (a new id): credited once all the same.
    let again = stack.http.post(&pay_url).send().await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(balances(&stack, &ann_id).await, (550, 0, 0));
    let outcomes: Vec<String> = stack
        .sql()
        .await
        .query(
            "SELECT outcome FROM stripe_events WHERE purchase_order_id = $1 ORDER BY received_at",
            &[&order_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(outcomes, vec!["credited", "already_paid"]);
    check_ledger(&stack).await;

    // The order, as its buyer lists it.
    let list = stack.get(PURCHASES, Some(&ann)).await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(list.body["items"][0]["id"], order_id.as_str());
    assert_eq!(list.body["items"][0]["status"], "paid");

    // Unknown orders have no checkout page.
    let missing = stack
        .http
        .get(format!("{}/dev/checkout/nope", stack.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

// ------------------------------------------------------------------------------------------
// Listing and bad input
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn orders_are_listed_newest_first_page_by_page_and_only_to_their_buyer() {
    let stack = spawn_stack().await;
    let ann = stack.sign_in("ann@example.com").await;
    let bob = stack.sign_in("bob@example.com").await;
    let mut ids = Vec::new();
    for package in ["pkg_starter", "pkg_creator", "pkg_studio"] {
        ids.push(pending_order(&stack, &ann, package).await);
    }
    ids.reverse();
    let first = stack.get(&format!("{PURCHASES}?limit=2"), Some(&ann)).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let page_ids: Vec<&str> = first.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(page_ids, vec![ids[0].as_str(), ids[1].as_str()]);
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let second = stack
        .get(&format!("{PURCHASES}?limit=2&cursor={cursor}"), Some(&ann))
        .await;
    assert_eq!(second.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(second.body["items"][0]["id"], ids[2].as_str());
    assert!(second.body["next_cursor"].is_null());

    let theirs = stack.get(PURCHASES, Some(&bob)).await;
    assert_eq!(theirs.body["items"], json!([]));
    stack.get(PURCHASES, None).await.assert_problem(401);
    stack
        .get(&format!("{PURCHASES}?cursor=garbage"), Some(&ann))
        .await
        .assert_problem(422);
    stack
        .get(&format!("{PURCHASES}?limit=0"), Some(&ann))
        .await
        .assert_problem(422);
    stack
        .get(&format!("{PURCHASES}?colour=red"), Some(&ann))
        .await
        .assert_problem(422);
}

#[tokio::test]
async fn bad_purchase_requests_are_refused_and_change_nothing() {
    let stack = spawn_stack().await;
    let ann = stack.sign_in("ann@example.com").await;
    let base = stack.base_url.clone();
    let db = stack.sql().await;
    db.batch_execute(
        "INSERT INTO credit_packages (id, name, credit_amount, price_usd, is_available) \
           VALUES ('pkg_gone', 'Gone', 10, 1.00, false); \
         INSERT INTO credit_packages (id, name, credit_amount, price_usd, promotion_start_date, promotion_end_date) \
           VALUES ('pkg_over', 'Over', 10, 1.00, now() - interval '2 days', now() - interval '1 day'); \
         INSERT INTO credit_packages (id, name, credit_amount, price_usd, promotion_start_date) \
           VALUES ('pkg_soon', 'Soon', 10, 1.00, now() + interval '1 day'); \
         INSERT INTO credit_packages (id, name, credit_amount, price_usd, target_tiers) \
           VALUES ('pkg_pro_only', 'Pro only', 10, 1.00, '{PRO,ENTERPRISE}'); \
         INSERT INTO credit_packages (id, name, credit_amount, price_usd, promotion_start_date, promotion_end_date) \
           VALUES ('pkg_now', 'Now', 10, 1.00, now() - interval '1 day', now() + interval '1 day');",
    )
    .await
    .unwrap();

    let buy = |token: Option<String>, key: Option<&'static str>, body: Value| {
        let stack = &stack;
        let base = base.clone();
        async move { purchase(stack, &base, token.as_deref(), key, body).await }
    };
    let pkg = |id: &str| json!({"package_id": id});
    let me = Some(ann.clone());

    buy(None, Some("a"), pkg("pkg_starter"))
        .await
        .assert_problem(401);
    buy(me.clone(), None, pkg("pkg_starter"))
        .await
        .assert_problem(400);
    buy(me.clone(), Some("b"), pkg("pkg_nope"))
        .await
        .assert_problem(422);
    buy(me.clone(), Some("c"), pkg("pkg_gone"))
        .await
        .assert_problem(422);
    buy(me.clone(), Some("d"), pkg("pkg_over"))
        .await
        .assert_problem(422);
    buy(me.clone(), Some("e"), pkg("pkg_soon"))
        .await
        .assert_problem(422);
    buy(me.clone(), Some("f"), pkg("pkg_pro_only"))
        .await
        .assert_problem(403);
    buy(
        me.clone(),
        Some("g"),
        json!({"package_id": "pkg_starter", "price_usd": "0.01"}),
    )
    .await
    .assert_problem(422);
    buy(me.clone(), Some("h"), json!({"package_id": 7}))
        .await
        .assert_problem(422);
    buy(me.clone(), Some("i"), json!({}))
        .await
        .assert_problem(422);
    buy(me.clone(), Some("j"), pkg("pkg\u{0}nul"))
        .await
        .assert_problem(422);
    buy(me.clone(), Some("k"), pkg(&"x".repeat(300)))
        .await
        .assert_problem(422);
    // A key that is not printable ASCII.
    let reply = stack
        .http
        .post(format!("{base}{PURCHASES}"))
        .bearer_auth(&ann)
        .header("Idempotency-Key", "has space")
        .json(&pkg("pkg_starter"))
        .send()
        .await
        .unwrap();
    testkit::read(reply).await.assert_problem(400);
    // Not JSON.
    let reply = stack
        .http
        .post(format!("{base}{PURCHASES}"))
        .bearer_auth(&ann)
        .header("Idempotency-Key", "l")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    testkit::read(reply).await.assert_problem(400);

    assert_eq!(
        count(&stack, "SELECT count(*) FROM purchase_orders", &[]).await,
        0
    );
    assert_eq!(
        count(&stack, "SELECT count(*) FROM idempotency_keys", &[]).await,
        0
    );

    // A PRO subscriber may buy the PRO package; a running promotion is on offer.
    let ann_id = user_id(&stack, "ann@example.com").await;
    db.execute(
        "UPDATE users SET subscription_tier = 'PRO', subscription_end_date = now() + interval '30 days' WHERE id = $1",
        &[&ann_id],
    )
    .await
    .unwrap();
    assert_eq!(
        buy(me.clone(), Some("m"), pkg("pkg_pro_only")).await.status,
        201
    );
    assert_eq!(buy(me.clone(), Some("n"), pkg("pkg_now")).await.status, 201);
    // A lapsed subscription is FREE again.
    db.execute(
        "UPDATE users SET subscription_end_date = now() - interval '1 day' WHERE id = $1",
        &[&ann_id],
    )
    .await
    .unwrap();
    buy(me, Some("o"), pkg("pkg_pro_only"))
        .await
        .assert_problem(403);

    // The webhook route is POST only.
    let reply = stack.call(Method::GET, WEBHOOK, None, None).await;
    reply.assert_problem(405);
}

// ------------------------------------------------------------------------------------------
// Disputes, and credits that cannot be gifted while young
// ------------------------------------------------------------------------------------------

/// A `charge.dispute.*` event for `order_id`'s payment, as Stripe sends it.
fn dispute(event_id: &str, kind: &str, order_id: &str, status: &str, amount: i64) -> String {
    event(
        event_id,
        kind,
        json!({
            "id": format!("dp_{order_id}"),
            "object": "dispute",
            "amount": amount,
            "currency": "usd",
            "charge": format!("ch_{order_id}"),
            "payment_intent": format!("pi_{order_id}"),
            "reason": "fraudulent",
            "status": status,
            "is_charge_refundable": false,
            "livemode": false,
        }),
    )
}

/// `POST /api/v1/credits/gifts` on `base` under a fresh Idempotency-Key.
async fn gift_on(stack: &TestStack, base: &str, token: &str, to: &str, amount: i64) -> Reply {
    let reply = stack
        .http
        .post(format!("{base}/api/v1/credits/gifts"))
        .bearer_auth(token)
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .json(&json!({"to_username": to, "amount": amount}))
        .send()
        .await
        .unwrap();
    testkit::read(reply).await
}

async fn gift(stack: &TestStack, token: &str, to: &str, amount: i64) -> Reply {
    gift_on(stack, &stack.base_url, token, to, amount).await
}

/// `GET /api/v1/credits` on `base` (it must answer 200).
async fn credits_on(stack: &TestStack, base: &str, token: &str) -> Value {
    let reply = testkit::read(
        stack
            .http
            .get(format!("{base}/api/v1/credits"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

async fn credits(stack: &TestStack, token: &str) -> Value {
    credits_on(stack, &stack.base_url, token).await
}

/// (giftable, not_giftable_yet, frozen) as `GET /api/v1/credits` shows them.
async fn gifting(stack: &TestStack, token: &str) -> (i64, i64, bool) {
    let view = credits(stack, token).await;
    (
        view["giftable"].as_i64().unwrap(),
        view["not_giftable_yet"].as_i64().unwrap(),
        view["frozen"].as_bool().unwrap(),
    )
}

/// Ages an order's payment by `days`, as if it had been paid that long ago.
async fn age(stack: &TestStack, order_id: &str, days: i32) {
    stack
        .sql()
        .await
        .execute(
            "UPDATE purchase_orders SET paid_at = paid_at - make_interval(days => $2) WHERE id = $1",
            &[&order_id, &days],
        )
        .await
        .unwrap();
}

/// The metadata of the user's activity rows of this type, oldest first.
async fn activity(stack: &TestStack, user: &str, kind: &str) -> Vec<Value> {
    stack
        .sql()
        .await
        .query(
            "SELECT metadata FROM user_activity_logs WHERE user_id = $1 AND activity_type = $2 \
             ORDER BY created_at, id",
            &[&user, &kind],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn disputed_credits(stack: &TestStack, order_id: &str) -> i32 {
    stack
        .sql()
        .await
        .query_one(
            "SELECT disputed_credits FROM purchase_orders WHERE id = $1",
            &[&order_id],
        )
        .await
        .unwrap()
        .get(0)
}

/// Buys `pkg_creator` (500 credits + 50 bonus, 19.99) and has Stripe confirm it.
async fn paid_order(stack: &TestStack, token: &str, event_id: &str) -> String {
    let order = pending_order(stack, token, "pkg_creator").await;
    assert_eq!(
        deliver_ok(stack, &completed(event_id, &order)).await,
        "credited"
    );
    check_ledger(stack).await;
    order
}

#[tokio::test]
async fn buy_gift_dispute_win_young_purchases_stay_home_and_a_dispute_claws_back_and_freezes() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let bob = stack.user("bob@example.com", "bob").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let bob_id = user_id(&stack, "bob@example.com").await;
    let gifts =
        "SELECT count(*) FROM credit_transactions WHERE related_entity_type = 'gift_transfer'";

    // Ann buys 500 credits and a 50 bonus.
    let order = paid_order(&stack, &ann, "evt_paid").await;
    let matures: chrono::DateTime<chrono::Utc> = stack
        .sql()
        .await
        .query_one(
            "SELECT paid_at + interval '7 days' FROM purchase_orders WHERE id = $1",
            &[&order],
        )
        .await
        .unwrap()
        .get(0);
    let view = credits(&stack, &ann).await;
    assert_eq!(view["available"], 550);
    assert_eq!(view["giftable"], 0);
    assert_eq!(view["not_giftable_yet"], 550);
    let next: chrono::DateTime<chrono::Utc> =
        view["next_giftable_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(next, matures);
    assert_eq!(view["frozen"], false);

    // Young purchased credits (the bonus with them) cannot be gifted: 402, nothing moves, and
    // the Idempotency-Key stays unused.
    let refused = gift(&stack, &ann, "bob", 100).await;
    refused.assert_problem(402);
    assert_eq!(refused.body["type"], "/problems/insufficient-credits");
    assert_eq!(
        (
            refused.body["needed"].as_i64(),
            refused.body["available"].as_i64(),
            refused.body["giftable"].as_i64(),
            refused.body["not_giftable_yet"].as_i64(),
            refused.body["debt_balance"].as_i64()
        ),
        (Some(100), Some(0), Some(0), Some(550), Some(0))
    );
    let next: chrono::DateTime<chrono::Utc> = refused.body["next_giftable_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(next, matures);
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("550 credits of purchases paid in the last 7 days")
    );
    assert_eq!(balances(&stack, &ann_id).await, (550, 0, 0));
    assert_eq!(balances(&stack, &bob_id).await, (0, 0, 0));
    assert_eq!(count(&stack, gifts, &[]).await, 0);
    assert_eq!(
        count(
            &stack,
            "SELECT count(*) FROM idempotency_keys WHERE request_path = '/api/v1/credits/gifts'",
            &[]
        )
        .await,
        0
    );
    check_ledger(&stack).await;

    // Bonus credits are giftable at once; so are gifts received.
    let bonus = stack
        .call(
            Method::POST,
            "/api/v1/credits/daily-bonus",
            Some(&ann),
            None,
        )
        .await;
    assert_eq!(bonus.status, 201, "{}", bonus.body);
    assert_eq!(bonus.body["amount"], 5);
    check_ledger(&stack).await;
    assert_eq!(gifting(&stack, &ann).await, (5, 550, false));
    gift(&stack, &ann, "bob", 6).await.assert_problem(402);
    let sent = gift(&stack, &ann, "bob", 5).await;
    assert_eq!(sent.status, 201, "{}", sent.body);
    check_ledger(&stack).await;
    assert_eq!(gifting(&stack, &ann).await, (0, 550, false));
    assert_eq!(gifting(&stack, &bob).await, (5, 0, false));

    // GIFT_HOLD_DAYS after the payment, the purchase is giftable.
    age(&stack, &order, 7).await;
    let view = credits(&stack, &ann).await;
    assert_eq!(
        (
            &view["giftable"],
            &view["not_giftable_yet"],
            &view["next_giftable_at"]
        ),
        (&json!(550), &json!(0), &Value::Null)
    );
    let sent = gift(&stack, &ann, "bob", 300).await;
    assert_eq!(sent.status, 201, "{}", sent.body);
    assert_eq!(balances(&stack, &ann_id).await, (250, 0, 0));
    assert_eq!(balances(&stack, &bob_id).await, (305, 0, 0));
    check_ledger(&stack).await;

    // Ann disputes the payment: its credits are taken back as far as the balance goes, the rest
    // is owed, and her gifts and purchases are frozen.
    assert_eq!(
        deliver_ok(
            &stack,
            &dispute(
                "evt_dp_created",
                "charge.dispute.created",
                &order,
                "needs_response",
                1999
            )
        )
        .await,
        "dispute_opened"
    );
    assert_eq!(balances(&stack, &ann_id).await, (0, 0, 300));
    assert_eq!(disputed_credits(&stack, &order).await, 550);
    check_ledger(&stack).await;
    let view = credits(&stack, &ann).await;
    assert_eq!(
        (&view["frozen"], &view["giftable"]),
        (&json!(true), &json!(0))
    );
    let opened = activity(&stack, &ann_id, "purchase_disputed").await;
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0]["dispute_id"], format!("dp_{order}"));
    assert_eq!(opened[0]["event_id"], "evt_dp_created");
    assert_eq!(
        (
            opened[0]["credits"].as_i64(),
            opened[0]["credits_clawed_back"].as_i64(),
            opened[0]["credits_owed"].as_i64(),
            opened[0]["frozen"].as_bool()
        ),
        (Some(550), Some(250), Some(300), Some(true))
    );

    // Frozen: no gifts out, no purchases; a gift to her repays her debt first.
    let frozen = gift(&stack, &ann, "bob", 1).await;
    frozen.assert_problem(403);
    assert_eq!(frozen.body["type"], "/problems/account-frozen");
    let orders = "SELECT count(*) FROM purchase_orders";
    let orders_before = count(&stack, orders, &[]).await;
    let keys_before = count(&stack, "SELECT count(*) FROM idempotency_keys", &[]).await;
    let refused = purchase(
        &stack,
        &stack.base_url,
        Some(&ann),
        Some("while-frozen"),
        json!({"package_id": "pkg_starter"}),
    )
    .await;
    refused.assert_problem(403);
    assert_eq!(refused.body["type"], "/problems/account-frozen");
    assert_eq!(count(&stack, orders, &[]).await, orders_before);
    assert_eq!(
        count(&stack, "SELECT count(*) FROM idempotency_keys", &[]).await,
        keys_before
    );
    let to_ann = gift(&stack, &bob, "ann", 10).await;
    assert_eq!(to_ann.status, 201, "{}", to_ann.body);
    assert_eq!(balances(&stack, &ann_id).await, (0, 0, 290));
    check_ledger(&stack).await;

    // Redelivered and later events of the open dispute change nothing.
    assert_eq!(
        deliver_ok(
            &stack,
            &dispute(
                "evt_dp_created",
                "charge.dispute.created",
                &order,
                "needs_response",
                1999
            )
        )
        .await,
        "duplicate"
    );
    for (id, kind, status) in [
        (
            "evt_dp_withdrawn",
            "charge.dispute.funds_withdrawn",
            "needs_response",
        ),
        ("evt_dp_review", "charge.dispute.updated", "under_review"),
    ] {
        assert_eq!(
            deliver_ok(&stack, &dispute(id, kind, &order, status, 1999)).await,
            "no_change",
            "{kind}"
        );
    }
    assert_eq!(balances(&stack, &ann_id).await, (0, 0, 290));
    assert_eq!(disputed_credits(&stack, &order).await, 550);
    check_ledger(&stack).await;

    // Won: the credits come back (repaying what she owes first) and the freeze lifts.
    assert_eq!(
        deliver_ok(
            &stack,
            &dispute("evt_dp_won", "charge.dispute.closed", &order, "won", 1999)
        )
        .await,
        "dispute_won"
    );
    assert_eq!(balances(&stack, &ann_id).await, (260, 0, 0));
    assert_eq!(disputed_credits(&stack, &order).await, 0);
    check_ledger(&stack).await;
    assert_eq!(gifting(&stack, &ann).await, (260, 0, false));
    let won = activity(&stack, &ann_id, "purchase_dispute_won").await;
    assert_eq!(won.len(), 1);
    assert_eq!(
        (
            won[0]["credits_restored"].as_i64(),
            won[0]["debt_repaid"].as_i64(),
            won[0]["frozen"].as_bool()
        ),
        (Some(550), Some(290), Some(false))
    );
    // Late events (a reinstatement, a created that overtook nothing) cannot reopen it.
    for (id, kind, status) in [
        (
            "evt_dp_reinstated",
            "charge.dispute.funds_reinstated",
            "won",
        ),
        ("evt_dp_late", "charge.dispute.created", "needs_response"),
    ] {
        assert_eq!(
            deliver_ok(&stack, &dispute(id, kind, &order, status, 1999)).await,
            "no_change",
            "{kind}"
        );
    }
    assert_eq!(balances(&stack, &ann_id).await, (260, 0, 0));
    assert_eq!(gifting(&stack, &ann).await, (260, 0, false));
    check_ledger(&stack).await;

    // Gifts and purchases are open again.
    let sent = gift(&stack, &ann, "bob", 10).await;
    assert_eq!(sent.status, 201, "{}", sent.body);
    pending_order(&stack, &ann, "pkg_starter").await;
    assert_eq!(
        entries(&stack, &order).await,
        vec![
            ("purchase".into(), 500),
            ("bonus".into(), 50),
            ("refund".into(), -250),
            ("refund".into(), 550)
        ]
    );
    let row = stack
        .sql()
        .await
        .query_one(
            "SELECT status, stripe_status, credits, applied_at IS NOT NULL, closed_at IS NOT NULL, \
                    user_id, purchase_order_id, event_ids FROM payment_disputes",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "won");
    assert_eq!(row.get::<_, String>(1), "won");
    assert_eq!(row.get::<_, i32>(2), 550);
    assert!(row.get::<_, bool>(3) && row.get::<_, bool>(4));
    assert_eq!(row.get::<_, String>(5), ann_id);
    assert_eq!(row.get::<_, String>(6), order);
    assert_eq!(
        row.get::<_, Vec<String>>(7),
        [
            "evt_dp_created",
            "evt_dp_withdrawn",
            "evt_dp_review",
            "evt_dp_won",
            "evt_dp_reinstated",
            "evt_dp_late"
        ]
    );
    check_ledger(&stack).await;
}

#[tokio::test]
async fn a_lost_dispute_keeps_its_clawback_and_a_refund_of_the_same_money_takes_nothing_twice() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let order = paid_order(&stack, &ann, "evt_paid").await;
    // She spends 500 of the 550.
    ledger::post(
        &stack.sql().await,
        &ann_id,
        Entry::new("usage", -500, "generations"),
    )
    .await
    .unwrap();
    check_ledger(&stack).await;

    // Half refunded: 275 owed, 50 available.
    assert_eq!(
        deliver_ok(&stack, &refunded("evt_half", &order, 1000)).await,
        "partially_refunded"
    );
    assert_eq!(balances(&stack, &ann_id).await, (0, 0, 225));
    check_ledger(&stack).await;
    // Then the whole payment is disputed: only what the refund did not take is taken.
    assert_eq!(
        deliver_ok(
            &stack,
            &dispute(
                "evt_dp",
                "charge.dispute.created",
                &order,
                "warning_needs_response",
                1999
            )
        )
        .await,
        "dispute_opened"
    );
    assert_eq!(balances(&stack, &ann_id).await, (0, 0, 500));
    assert_eq!(gifting(&stack, &ann).await, (0, 0, true));
    check_ledger(&stack).await;
    // The rest refunded while disputed: the same money, nothing more to take.
    assert_eq!(
        deliver_ok(&stack, &refunded("evt_rest", &order, 1999)).await,
        "refunded"
    );
    assert_eq!(balances(&stack, &ann_id).await, (0, 0, 500));
    assert_eq!(order_status(&stack, &order).await, "refunded");
    check_ledger(&stack).await;

    // Lost: the clawback stays, the freeze lifts.
    assert_eq!(
        deliver_ok(
            &stack,
            &dispute("evt_lost", "charge.dispute.closed", &order, "lost", 1999)
        )
        .await,
        "dispute_lost"
    );
    assert_eq!(balances(&stack, &ann_id).await, (0, 0, 500));
    assert_eq!(disputed_credits(&stack, &order).await, 550);
    assert_eq!(gifting(&stack, &ann).await, (0, 0, false));
    let lost = activity(&stack, &ann_id, "purchase_dispute_lost").await;
    assert_eq!(lost.len(), 1);
    assert_eq!(
        (
            lost[0]["credits_restored"].as_i64(),
            lost[0]["frozen"].as_bool()
        ),
        (Some(0), Some(false))
    );
    check_ledger(&stack).await;
    // A late win cannot undo the loss.
    assert_eq!(
        deliver_ok(
            &stack,
            &dispute("evt_late_won", "charge.dispute.closed", &order, "won", 1999)
        )
        .await,
        "no_change"
    );
    assert_eq!(balances(&stack, &ann_id).await, (0, 0, 500));

    // She may buy again; the new credits repay the debt first: 550 − 500.
    let next = paid_order(&stack, &ann, "evt_next").await;
    assert_eq!(balances(&stack, &ann_id).await, (50, 0, 0));
    // Owed credits are never giftable, and the new purchase is young.
    assert_eq!(gifting(&stack, &ann).await, (0, 550, false));
    age(&stack, &next, 7).await;
    assert_eq!(gifting(&stack, &ann).await, (50, 0, false));
    check_ledger(&stack).await;
}

#[tokio::test]
async fn a_dispute_won_after_a_full_refund_gives_nothing_back() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let order = paid_order(&stack, &ann, "evt_paid").await;
    // A partial dispute (10.00 of 19.99): its share, 275, is taken.
    assert_eq!(
        deliver_ok(
            &stack,
            &dispute(
                "evt_dp",
                "charge.dispute.created",
                &order,
                "needs_response",
                1000
            )
        )
        .await,
        "dispute_opened"
    );
    assert_eq!(balances(&stack, &ann_id).await, (275, 0, 0));
    check_ledger(&stack).await;
    // Refunded in full meanwhile: only the part the dispute did not take is taken.
    assert_eq!(
        deliver_ok(&stack, &refunded("evt_refund", &order, 1999)).await,
        "refunded"
    );
    assert_eq!(balances(&stack, &ann_id).await, (0, 0, 0));
    check_ledger(&stack).await;
    // Won: the money went back through the refund, so no credits come back.
    assert_eq!(
        deliver_ok(
            &stack,
            &dispute("evt_won", "charge.dispute.closed", &order, "won", 1000)
        )
        .await,
        "dispute_won"
    );
    assert_eq!(balances(&stack, &ann_id).await, (0, 0, 0));
    assert_eq!(gifting(&stack, &ann).await, (0, 0, false));
    assert_eq!(
        entries(&stack, &order).await,
        vec![
            ("purchase".into(), 500),
            ("bonus".into(), 50),
            ("refund".into(), -275),
            ("refund".into(), -275)
        ]
    );
    check_ledger(&stack).await;
}

#[tokio::test]
async fn dispute_events_apply_once_in_any_order_and_however_often_delivered() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let ann_id = user_id(&stack, "ann@example.com").await;

    // Closed (won) before created: nothing is taken, nothing frozen; the late created is
    // about a closed dispute.
    let o1 = paid_order(&stack, &ann, "evt_paid_1").await;
    assert_eq!(
        deliver_ok(
            &stack,
            &dispute(
                "evt_1_won",
                "charge.dispute.closed",
                &o1,
                "warning_closed",
                1999
            )
        )
        .await,
        "dispute_won"
    );
    assert_eq!(
        deliver_ok(
            &stack,
            &dispute(
                "evt_1_created",
                "charge.dispute.created",
                &o1,
                "warning_needs_response",
                1999
            )
        )
        .await,
        "no_change"
    );
    assert_eq!(balances(&stack, &ann_id).await, (550, 0, 0));
    assert!(!gifting(&stack, &ann).await.2, "not frozen");
    check_ledger(&stack).await;

    // Closed (lost) first: the share is taken, nothing frozen; later events change nothing.
    let o2 = paid_order(&stack, &ann, "evt_paid_2").await;
    assert_eq!(
        deliver_ok(
            &stack,
            &dispute("evt_2_lost", "charge.dispute.closed", &o2, "lost", 1999)
        )
        .await,
        "dispute_lost"
    );
    for (id, kind) in [
        ("evt_2_created", "charge.dispute.created"),
        ("evt_2_withdrawn", "charge.dispute.funds_withdrawn"),
    ] {
        assert_eq!(
            deliver_ok(&stack, &dispute(id, kind, &o2, "needs_response", 1999)).await,
            "no_change"
        );
    }
    assert_eq!(balances(&stack, &ann_id).await, (550, 0, 0));
    assert_eq!(disputed_credits(&stack, &o2).await, 550);
    assert!(!gifting(&stack, &ann).await.2, "not frozen");
    check_ledger(&stack).await;

    // A dispute that overtakes the payment event waits, and is applied as the order is
    // credited (in the same transaction).
    let o3 = pending_order(&stack, &ann, "pkg_creator").await;
    assert_eq!(
        deliver_ok(
            &stack,
            &dispute(
                "evt_3_created",
                "charge.dispute.created",
                &o3,
                "needs_response",
                1999
            )
        )
        .await,
        "dispute_deferred"
    );
    assert_eq!(balances(&stack, &ann_id).await, (550, 0, 0));
    assert!(!gifting(&stack, &ann).await.2, "not frozen");
    assert_eq!(
        deliver_ok(&stack, &completed("evt_paid_3", &o3)).await,
        "credited_then_disputed"
    );
    assert_eq!(balances(&stack, &ann_id).await, (550, 0, 0));
    assert!(gifting(&stack, &ann).await.2, "frozen");
    check_ledger(&stack).await;
    assert_eq!(
        deliver_ok(
            &stack,
            &dispute("evt_3_won", "charge.dispute.closed", &o3, "won", 1999)
        )
        .await,
        "dispute_won"
    );
    assert_eq!(balances(&stack, &ann_id).await, (1100, 0, 0));
    assert!(!gifting(&stack, &ann).await.2, "not frozen");
    check_ledger(&stack).await;

    // The same event five times at once, and three more ids for the same dispute: one
    // clawback.
    let o4 = paid_order(&stack, &ann, "evt_paid_4").await;
    let created = dispute(
        "evt_4_created",
        "charge.dispute.created",
        &o4,
        "needs_response",
        1999,
    );
    let others: Vec<String> = [
        ("evt_4_withdrawn", "charge.dispute.funds_withdrawn"),
        ("evt_4_updated", "charge.dispute.updated"),
        ("evt_4_created_again", "charge.dispute.created"),
    ]
    .iter()
    .map(|(id, kind)| dispute(id, kind, &o4, "needs_response", 1999))
    .collect();
    let replies = join_all(
        std::iter::repeat_n(&created, 5)
            .chain(others.iter())
            .map(|body| deliver(&stack, body)),
    )
    .await;
    let outcomes: Vec<&str> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200, "{}", r.body);
            r.body["outcome"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == "dispute_opened").count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .all(|o| ["dispute_opened", "duplicate", "no_change"].contains(o)),
        "{outcomes:?}"
    );
    assert_eq!(balances(&stack, &ann_id).await, (1100, 0, 0));
    assert!(gifting(&stack, &ann).await.2, "frozen");
    assert_eq!(
        count(
            &stack,
            "SELECT count(*) FROM credit_transactions WHERE related_entity_id = $1 AND transaction_type = 'refund'",
            &[&o4]
        )
        .await,
        1
    );
    check_ledger(&stack).await;

    // Every dispute event was recorded once, tied to its order.
    let recorded = count(
        &stack,
        "SELECT count(*) FROM stripe_events WHERE event_type LIKE 'charge.dispute.%' AND purchase_order_id IS NOT NULL",
        &[],
    )
    .await;
    assert_eq!(recorded, 2 + 3 + 1 + 4);
    // A dispute of a payment no order knows is recorded and waits.
    assert_eq!(
        deliver_ok(
            &stack,
            &dispute(
                "evt_stranger",
                "charge.dispute.created",
                "nobody",
                "needs_response",
                100
            )
        )
        .await,
        "dispute_deferred"
    );
    assert!(gifting(&stack, &ann).await.2, "frozen");
    check_ledger(&stack).await;
}

#[tokio::test]
async fn gifts_racing_a_dispute_either_go_first_or_are_refused_and_the_sums_stay_exact() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    stack.user("bob@example.com", "bob").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let bob_id = user_id(&stack, "bob@example.com").await;
    let order = paid_order(&stack, &ann, "evt_paid").await;
    age(&stack, &order, 8).await;
    assert_eq!(gifting(&stack, &ann).await, (550, 0, false));

    let opened = dispute(
        "evt_dp",
        "charge.dispute.created",
        &order,
        "needs_response",
        1999,
    );
    let gifts = (0..10).map(|_| futures::future::Either::Left(gift(&stack, &ann, "bob", 50)));
    let mut requests: Vec<_> = gifts.collect();
    requests.insert(5, futures::future::Either::Right(deliver(&stack, &opened)));
    let replies = join_all(requests).await;
    let mut sent = 0;
    for reply in &replies {
        match reply.status.as_u16() {
            200 => assert_eq!(reply.body["outcome"], "dispute_opened"),
            201 => sent += 1,
            403 => {
                reply.assert_problem(403);
                assert_eq!(reply.body["type"], "/problems/account-frozen");
            }
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    // Gifts before the dispute left less to take back: what they moved is owed.
    assert_eq!(balances(&stack, &ann_id).await, (0, 0, 50 * sent));
    assert_eq!(balances(&stack, &bob_id).await, (50 * sent, 0, 0));
    check_ledger(&stack).await;
}

/// The credits function's routes with another `GIFT_HOLD_DAYS`, beside the
/// local stack (same database).
async fn credits_function_holding(stack: &TestStack, days: i32) -> String {
    let mut state = stack.stack.state.clone();
    let mut config = (*state.config).clone();
    config.credits.gift_hold_days = days;
    state.config = Arc::new(config);
    let app = shared::runtime::app::finish(shared::runtime::app::credits_routes(), state);
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

#[tokio::test]
async fn gift_hold_days_is_configurable() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    stack.user("bob@example.com", "bob").await;
    let order = paid_order(&stack, &ann, "evt_paid").await;
    let at_once = credits_function_holding(&stack, 0).await;
    let month = credits_function_holding(&stack, 30).await;

    // GIFT_HOLD_DAYS=0: purchases are giftable at once.
    let view = credits_on(&stack, &at_once, &ann).await;
    assert_eq!(
        (&view["giftable"], &view["not_giftable_yet"]),
        (&json!(550), &json!(0))
    );
    let sent = gift_on(&stack, &at_once, &ann, "bob", 100).await;
    assert_eq!(sent.status, 201, "{}", sent.body);
    check_ledger(&stack).await;

    // GIFT_HOLD_DAYS=30: a week is not enough; thirty days are.
    age(&stack, &order, 8).await;
    let view = credits_on(&stack, &month, &ann).await;
    assert_eq!(
        (&view["giftable"], &view["not_giftable_yet"]),
        (&json!(0), &json!(550))
    );
    gift_on(&stack, &month, &ann, "bob", 1)
        .await
        .assert_problem(402);
    assert_eq!(
        credits(&stack, &ann).await["giftable"],
        450,
        "the default 7 days are over"
    );
    age(&stack, &order, 22).await;
    let view = credits_on(&stack, &month, &ann).await;
    assert_eq!(
        (&view["giftable"], &view["not_giftable_yet"]),
        (&json!(450), &json!(0))
    );
    let sent = gift_on(&stack, &month, &ann, "bob", 450).await;
    assert_eq!(sent.status, 201, "{}", sent.body);
    check_ledger(&stack).await;
}

// ------------------------------------------------------------------------------------------
// What is on sale, and at what price: the list and a purchase agree
// ------------------------------------------------------------------------------------------

/// A package row for the offer tests: listed price 19.99 USD, every tier, no window.
async fn package(stack: &TestStack, id: &str, settings: &str) {
    stack
        .sql()
        .await
        .batch_execute(&format!(
            "INSERT INTO credit_packages (id, name, credit_amount, bonus_credits, price_usd, \
               price_currency, display_order) VALUES ('{id}', '{id}', 100, 0, 19.99, 'USD', 50); \
             UPDATE credit_packages SET {settings} WHERE id = '{id}'"
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_listed_package_is_bought_at_its_listed_price_and_an_unlisted_one_is_not_sold() {
    let stack = spawn_stack().await;
    let ann = stack.sign_in("ann@example.com").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    // (id, settings, what a FREE buyer's purchase answers)
    let cases = [
        ("t_plain", "discount_percentage = 0", 201),
        ("t_discount", "discount_percentage = 15", 201),
        (
            "t_half",
            "discount_percentage = 50, price_currency = 'eur'",
            201,
        ),
        (
            "t_window",
            "promotion_start_date = now() - interval '1 hour', promotion_end_date = now() + interval '1 hour'",
            201,
        ),
        (
            "t_ended",
            "promotion_end_date = now() - interval '1 second'",
            422,
        ),
        (
            "t_future",
            "promotion_start_date = now() + interval '1 hour'",
            422,
        ),
        ("t_null_tiers", "target_tiers = NULL", 403),
        ("t_pro_only", "target_tiers = '{PRO}'", 403),
        ("t_null_available", "is_available = NULL", 422),
        ("t_unavailable", "is_available = false", 422),
        ("t_free", "discount_percentage = 100", 409),
        ("t_zero", "price_usd = 0", 409),
    ];
    for (id, settings, _) in cases {
        package(&stack, id, settings).await;
    }
    let list = stack.get("/api/v1/credits/packages", Some(&ann)).await;
    assert_eq!(list.status, 200, "{}", list.body);
    let listed: Vec<&Value> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["id"].as_str().unwrap().starts_with("t_"))
        .collect();
    let shown = |id: &str| listed.iter().find(|p| p["id"] == id).copied();

    let discounted = shown("t_discount").expect("t_discount is on sale");
    assert_eq!(discounted["price_usd"], "19.99");
    assert_eq!(discounted["discount_percentage"], 15);
    assert_eq!(discounted["charged_price"], "16.99"); // 1699.15 cents, rounded down
    assert_eq!(discounted["charged_amount"], 1699);
    let half = shown("t_half").expect("t_half is on sale");
    assert_eq!(half["price_currency"], "EUR");
    assert_eq!(half["charged_price"], "9.99"); // 999.5 cents, rounded down
    assert_eq!(shown("t_plain").unwrap()["charged_price"], "19.99");

    for (id, _, expected) in cases {
        let key = uuid::Uuid::new_v4().to_string();
        let reply = purchase(
            &stack,
            &stack.base_url,
            Some(&ann),
            Some(&key),
            json!({"package_id": id}),
        )
        .await;
        assert_eq!(reply.status, expected, "{id}: {}", reply.body);
        // Listed exactly when it can be bought, and bought at the listed price.
        assert_eq!(shown(id).is_some(), expected == 201, "{id}");
        if let Some(offer) = shown(id) {
            let order = &reply.body["order"];
            assert_eq!(order["price_usd"], offer["charged_price"], "{id}");
            assert_eq!(order["price_currency"], offer["price_currency"], "{id}");
        }
    }

    // The checkout charges the discounted amount: the payment event for it credits the
    // order; one for the list price would not have matched.
    let order_id: String = stack
        .sql()
        .await
        .query_one(
            "SELECT id FROM purchase_orders WHERE package_id = 't_discount'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let metadata: Value = stack
        .sql()
        .await
        .query_one(
            "SELECT metadata FROM purchase_orders WHERE id = $1",
            &[&order_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(metadata["unit_amount"], 1699);
    assert_eq!(metadata["list_price"], "19.99");
    assert_eq!(metadata["discount_percentage"], 15);
    let mut paid = session(&order_id, "paid", &format!("pi_{order_id}"));
    paid["amount_total"] = json!(1999);
    let outcome = deliver_ok(
        &stack,
        &event("evt_list_price", "checkout.session.completed", paid.clone()),
    )
    .await;
    assert_ne!(
        outcome, "credited",
        "the list price is not what was ordered"
    );
    assert_eq!(balances(&stack, &ann_id).await.0, 0);
    paid["amount_total"] = json!(1699);
    let outcome = deliver_ok(
        &stack,
        &event("evt_charged_price", "checkout.session.completed", paid),
    )
    .await;
    assert_eq!(outcome, "credited");
    assert_eq!(balances(&stack, &ann_id).await.0, 100);
    check_ledger(&stack).await;
}

#[tokio::test]
async fn packages_are_listed_by_display_order_with_unset_as_zero_then_price() {
    let stack = spawn_stack().await;
    let client = stack.sql().await;
    client
        .batch_execute(
            "UPDATE credit_packages SET is_available = false; \
             INSERT INTO credit_packages (id, name, credit_amount, price_usd, display_order) VALUES \
               ('o_one', 'One', 10, 1.00, 1), ('o_unset_cheap', 'Unset cheap', 10, 2.00, NULL), \
               ('o_zero_dear', 'Zero dear', 10, 3.00, 0)",
        )
        .await
        .unwrap();
    let list = stack.get("/api/v1/credits/packages", None).await;
    let ids: Vec<&str> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["o_unset_cheap", "o_zero_dear", "o_one"]);
    assert_eq!(list.body["items"][0]["display_order"], 0);
}

// ------------------------------------------------------------------------------------------
// Referrals: linked at sign-up, paid once the new account first pays
// ------------------------------------------------------------------------------------------

async fn referral_code(stack: &TestStack, token: &str) -> String {
    let reply = stack.get("/api/v1/credits/referrals", Some(token)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["code"].as_str().unwrap().to_string()
}

/// The first sign-in of `email` naming `code`; the reply.
async fn sign_up_with(stack: &TestStack, email: &str, code: &str) -> Reply {
    let token = stack.token(email);
    stack
        .call(
            Method::POST,
            "/api/v1/auth/session",
            Some(&token),
            Some(json!({"referral_code": code})),
        )
        .await
}

/// `referral` credits of a user, as the ledger and the running total have them.
async fn referral_credits(stack: &TestStack, user: &str) -> (i64, i32) {
    let row = stack
        .sql()
        .await
        .query_one(
            "SELECT (SELECT coalesce(sum(amount), 0) FROM credit_transactions \
                     WHERE user_id = $1 AND transaction_type = 'referral'), \
                    (SELECT referral_bonus FROM user_credits WHERE user_id = $1)",
            &[&user],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Marks `user`'s order paid eight days ago (past the default seven-day refund
/// window) without the webhook, as a crash after the payment was credited would
/// leave it; answers its id.
async fn paid_without_webhook(stack: &TestStack, token: &str) -> String {
    let order = pending_order(stack, token, "pkg_starter").await;
    stack
        .sql()
        .await
        .execute(
            "UPDATE purchase_orders SET status = 'paid', paid_at = now() - interval '8 days' \
             WHERE id = $1",
            &[&order],
        )
        .await
        .unwrap();
    order
}

async fn sweep(stack: &TestStack) -> Value {
    let state = &stack.stack.state;
    shared::runtime::scheduler::run("outbox-sweep", &state.db, None, &state.config)
        .await
        .unwrap()
        .outcome
}

#[tokio::test]
async fn a_referral_pays_both_accounts_once_when_the_new_account_first_pays() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let code = referral_code(&stack, &ann).await;
    assert_eq!(code.len(), 8);
    assert_eq!(referral_code(&stack, &ann).await, code, "a code is kept");

    // An unknown code creates nothing; a known one links the new account once.
    let refused = sign_up_with(&stack, "bob@example.com", "ZZZZZZZZ").await;
    refused.assert_problem(422);
    assert_eq!(refused.body["errors"][0]["field"], "referral_code");
    assert_eq!(
        count(
            &stack,
            "SELECT count(*) FROM users WHERE email = $1",
            &[&"bob@example.com"]
        )
        .await,
        0
    );
    let joined = sign_up_with(&stack, "bob@example.com", &code.to_lowercase()).await;
    assert_eq!(joined.status, 201, "{}", joined.body);
    let bob = stack.token("bob@example.com");
    let bob_id = user_id(&stack, "bob@example.com").await;
    // Later sign-ins ignore a code: one referrer per account.
    let cyd = stack.sign_in("cyd@example.com").await;
    let cyd_code = referral_code(&stack, &cyd).await;
    assert_eq!(
        sign_up_with(&stack, "bob@example.com", &cyd_code)
            .await
            .status,
        200
    );
    // Something that is not a code at all is refused on any sign-in.
    for bad in ["short", "ABCDEFG0", "ABCD EFG", "ÀBCDEFGH"] {
        let reply = sign_up_with(&stack, "bob@example.com", bad).await;
        reply.assert_problem(422);
        assert_eq!(reply.body["errors"][0]["field"], "referral_code", "{bad}");
    }
    let waiting = stack.get("/api/v1/credits/referrals", Some(&bob)).await;
    assert_eq!(waiting.body["own_referral"], "waiting");
    let ann_view = stack.get("/api/v1/credits/referrals", Some(&ann)).await;
    assert_eq!(
        (
            ann_view.body["referred"].as_i64(),
            ann_view.body["waiting"].as_i64()
        ),
        (Some(1), Some(1))
    );

    // Bob's first paid purchase qualifies once it is past the refund window
    // (GIFT_HOLD_DAYS, 7): then 100 referral credits each, in the ledger.
    let order = pending_order(&stack, &bob, "pkg_creator").await;
    assert_eq!(
        deliver_ok(&stack, &completed("evt_ref_1", &order)).await,
        "credited"
    );
    assert_eq!(referral_credits(&stack, &ann_id).await, (0, 0));
    assert_eq!(sweep(&stack).await["referrals_settled"], 0);
    age(&stack, &order, 8).await;
    assert_eq!(sweep(&stack).await["referrals_settled"], 1);
    assert_eq!(referral_credits(&stack, &ann_id).await, (100, 100));
    assert_eq!(referral_credits(&stack, &bob_id).await, (100, 100));
    // Redelivery, a second purchase and the sweep pay nothing more.
    assert_eq!(
        deliver_ok(&stack, &completed("evt_ref_1", &order)).await,
        "duplicate"
    );
    let second = pending_order(&stack, &bob, "pkg_creator").await;
    assert_eq!(
        deliver_ok(&stack, &completed("evt_ref_2", &second)).await,
        "credited"
    );
    age(&stack, &second, 8).await;
    assert_eq!(sweep(&stack).await["referrals_settled"], 0);
    assert_eq!(referral_credits(&stack, &ann_id).await, (100, 100));
    assert_eq!(referral_credits(&stack, &bob_id).await, (100, 100));
    // A purchase refunded, even in part, never qualifies: buying, collecting the
    // referral and refunding gains nothing.
    assert_eq!(
        sign_up_with(&stack, "lee@example.com", &code).await.status,
        201
    );
    let refunded = paid_without_webhook(&stack, &stack.token("lee@example.com")).await;
    stack
        .sql()
        .await
        .execute(
            "UPDATE purchase_orders SET refunded_credits = 10, refunded_at = now() WHERE id = $1",
            &[&refunded],
        )
        .await
        .unwrap();
    assert_eq!(sweep(&stack).await["referrals_settled"], 0);
    let ann_view = stack.get("/api/v1/credits/referrals", Some(&ann)).await;
    assert_eq!(ann_view.body["rewarded"], 1);
    assert_eq!(ann_view.body["rewarded_this_month"], 1);
    assert_eq!(ann_view.body["referral_bonus"], 100);
    let bob_view = stack.get("/api/v1/credits/referrals", Some(&bob)).await;
    assert_eq!(bob_view.body["own_referral"], "rewarded");
    // Both exports carry it, without naming the other account.
    let export = stack.get("/api/v1/me/export", Some(&ann)).await;
    assert_eq!(export.status, 200, "{}", export.body);
    assert_eq!(export.body["referrals"]["code"], code.as_str());
    assert_eq!(export.body["referrals"]["made"][0]["outcome"], "rewarded");
    assert!(!export.body["referrals"].to_string().contains(&bob_id));
    let export = stack.get("/api/v1/me/export", Some(&bob)).await;
    assert_eq!(export.body["referrals"]["referred_by"]["credits_each"], 100);
    check_ledger(&stack).await;
}

#[tokio::test]
async fn referrals_past_the_monthly_cap_or_of_an_inactive_referrer_pay_nothing() {
    let stack = spawn_stack().await;
    let ann = stack.user("ann@example.com", "ann").await;
    let ann_id = user_id(&stack, "ann@example.com").await;
    let code = referral_code(&stack, &ann).await;
    // Nine of this month's ten places are taken.
    let db = stack.sql().await;
    for i in 0..9 {
        let id: String = db
            .query_one(
                &format!(
                    "INSERT INTO users (email, username) VALUES ('old{i}@example.com', 'old{i}') \
                     RETURNING id"
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        db.execute(
            "INSERT INTO referrals (referred_user_id, referrer_id, outcome, settled_at, credits_each) \
             VALUES ($1, $2, 'rewarded', now(), 100)",
            &[&id, &ann_id],
        )
        .await
        .unwrap();
    }
    // Two new accounts pay at once: one takes the last place, the other is capped.
    let mut referred = Vec::new();
    for email in ["gus@example.com", "hal@example.com"] {
        assert_eq!(sign_up_with(&stack, email, &code).await.status, 201);
        paid_without_webhook(&stack, &stack.token(email)).await;
        referred.push(user_id(&stack, email).await);
    }
    let config = stack.stack.state.config.credits;
    let outcomes = join_all(referred.iter().map(|id| {
        let url = stack.database_url.clone();
        let id = id.clone();
        async move {
            let mut client = testkit::connect(&url).await;
            shared::credits::referrals::settle(&mut client, &id, &config)
                .await
                .unwrap()
        }
    }))
    .await;
    let mut outcomes: Vec<_> = outcomes.into_iter().map(Option::unwrap).collect();
    outcomes.sort();
    assert_eq!(outcomes, ["capped", "rewarded"]);
    assert_eq!(referral_credits(&stack, &ann_id).await, (100, 100));

    // A referrer suspended before the purchase: settled, nothing paid to either.
    let eve = stack.user("eve@example.com", "eve").await;
    let eve_id = user_id(&stack, "eve@example.com").await;
    let eve_code = referral_code(&stack, &eve).await;
    assert_eq!(
        sign_up_with(&stack, "ivy@example.com", &eve_code)
            .await
            .status,
        201
    );
    db.execute(
        "UPDATE users SET account_status = 'suspended' WHERE id = $1",
        &[&eve_id],
    )
    .await
    .unwrap();
    let ivy = stack.token("ivy@example.com");
    let ivy_id = user_id(&stack, "ivy@example.com").await;
    paid_without_webhook(&stack, &ivy).await;
    // The scheduler's sweep settles what the webhook did not.
    assert_eq!(sweep(&stack).await["referrals_settled"], 1);
    let outcome: String = db
        .query_one(
            "SELECT outcome FROM referrals WHERE referred_user_id = $1",
            &[&ivy_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(outcome, "referrer_inactive");
    assert_eq!(referral_credits(&stack, &ivy_id).await, (0, 0));
    assert_eq!(referral_credits(&stack, &eve_id).await, (0, 0));
    check_ledger(&stack).await;
}
