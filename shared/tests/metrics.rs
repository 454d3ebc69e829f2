//! The metrics the HTTP side emits, read through `shared::kernel::metrics::capture`
//! around a real router: database connection errors where the pool cannot
//! connect, 5xx by route, and the Stripe webhook's outcomes (against real
//! PostgreSQL, with the local stack's webhook secret).

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use serde_json::{Value, json};
use shared::credits::purchases::stripe;
use tower::ServiceExt;

const WEBHOOK: &str = "/api/v1/credits/webhooks/stripe";

/// Serves `request` with `router` in this task, returning the status and the
/// metrics documents emitted meanwhile.
async fn serve(router: Router, request: Request<Body>) -> (u16, Vec<Value>) {
    let (response, documents) = shared::kernel::metrics::capture(router.oneshot(request)).await;
    (response.expect("infallible").status().as_u16(), documents)
}

/// The documents carrying metric `name`.
fn named<'a>(documents: &'a [Value], name: &str) -> Vec<&'a Value> {
    documents.iter().filter(|d| d.get(name).is_some()).collect()
}

#[tokio::test]
async fn an_unreachable_database_is_one_connection_error_and_a_5xx_of_its_route() {
    let router = shared::runtime::app::credits_router(testkit::offline_state().await);
    let request = Request::get("/api/v1/credits/packages")
        .body(Body::empty())
        .unwrap();
    let (status, documents) = serve(router, request).await;
    assert_eq!(status, 503, "{documents:#?}");
    assert_eq!(documents.len(), 2, "{documents:#?}");

    let errors = named(&documents, "DatabaseConnectionErrors");
    assert_eq!(errors.len(), 1, "{documents:#?}");
    assert_eq!(errors[0]["DatabaseConnectionErrors"], 1);
    assert_eq!(errors[0]["kind"], "connection");
    assert_eq!(
        errors[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
        json!([[]])
    );

    let served = named(&documents, "Http5xx");
    assert_eq!(served.len(), 1, "{documents:#?}");
    assert_eq!(served[0]["Route"], "GET /api/v1/credits/packages");
    assert_eq!(served[0]["status"], 503);
}

fn webhook_request(body: &str, signature: Option<String>) -> Request<Body> {
    let mut request = Request::post(WEBHOOK).header("content-type", "application/json");
    if let Some(signature) = signature {
        request = request.header("Stripe-Signature", signature);
    }
    request.body(Body::from(body.to_string())).unwrap()
}

/// The one `WebhookEvents` document among `documents`: (outcome, handler's outcome).
fn webhook_outcome(documents: &[Value]) -> (String, Value) {
    let events = named(documents, "WebhookEvents");
    assert_eq!(events.len(), 1, "{documents:#?}");
    let event = events[0];
    assert_eq!(event["WebhookEvents"], 1);
    assert_eq!(event["Provider"], "stripe");
    assert_eq!(
        event["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
        json!([["Provider", "Outcome"]])
    );
    (
        event["Outcome"].as_str().unwrap().to_string(),
        event["webhook_outcome"].clone(),
    )
}

#[tokio::test]
async fn each_webhook_delivery_is_counted_by_its_outcome() {
    let stack = testkit::spawn_stack().await;
    let state = stack.stack.state.clone();
    let secret = state
        .config
        .payments
        .stripe_webhook_secret
        .clone()
        .expect("the local stack has a webhook secret");
    let router = shared::runtime::app::credits_router(state);
    let signed = |body: &str| {
        let signature = stripe::sign(&secret, chrono::Utc::now().timestamp(), body.as_bytes());
        webhook_request(body, Some(signature))
    };
    let event = |id: &str, kind: &str, object: Value| {
        json!({"id": id, "object": "event", "type": kind, "created": chrono::Utc::now().timestamp(),
               "livemode": false, "data": {"object": object}})
        .to_string()
    };

    // Unsigned: rejected, nothing recorded.
    let unhandled = event("evt_metrics_1", "customer.created", json!({"id": "cus_1"}));
    let (status, documents) = serve(router.clone(), webhook_request(&unhandled, None)).await;
    assert_eq!(status, 400);
    assert_eq!(
        webhook_outcome(&documents),
        ("rejected".into(), Value::Null)
    );

    // An event type the webhook does not act on: ignored; delivered again: a duplicate.
    let (status, documents) = serve(router.clone(), signed(&unhandled)).await;
    assert_eq!(status, 200);
    assert_eq!(
        webhook_outcome(&documents),
        ("ignored".into(), json!("unhandled"))
    );
    let (status, documents) = serve(router.clone(), signed(&unhandled)).await;
    assert_eq!(status, 200);
    assert_eq!(
        webhook_outcome(&documents),
        ("duplicate".into(), json!("duplicate"))
    );

    // A dispute of a payment not known yet: recorded for later, so processed.
    let dispute = event(
        "evt_metrics_2",
        "charge.dispute.created",
        json!({"id": "dp_metrics", "object": "dispute", "charge": "ch_metrics", "payment_intent": "pi_metrics",
               "amount": 1999, "currency": "usd", "status": "needs_response", "reason": "fraudulent"}),
    );
    let (status, documents) = serve(router.clone(), signed(&dispute)).await;
    assert_eq!(status, 200);
    assert_eq!(
        webhook_outcome(&documents),
        ("processed".into(), json!("dispute_deferred"))
    );

    // Not configured (no webhook secret, no database): failed, for Stripe to retry.
    let offline = shared::runtime::app::credits_router(testkit::offline_state().await);
    let (status, documents) = serve(offline, signed(&dispute)).await;
    assert_eq!(status, 503);
    assert_eq!(webhook_outcome(&documents), ("failed".into(), Value::Null));
}
