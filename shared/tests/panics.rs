//! The release profile keeps `panic = "unwind"` (bench/README.md says why):
//! a bug that panics in a handler is answered as a logged 500 problem by the
//! router's guard, and the same process goes on serving the next request
//! instead of dying and making the next caller pay a cold start.

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use shared::AppState;
use shared::runtime::app::finish;
use tower::ServiceExt;

async fn boom() -> String {
    let empty: Vec<u8> = Vec::new();
    // An out-of-bounds index: the kind of bug the guard exists for.
    let i = empty.len() + 3;
    empty[i].to_string()
}

#[tokio::test]
async fn a_panicking_handler_is_a_500_problem_and_the_router_keeps_serving() {
    let state = testkit::offline_state().await;
    let routes: Router<AppState> = Router::new().route("/boom", get(boom));
    let app = finish(routes, state);

    let response = app
        .clone()
        .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["type"], "/problems/internal-error");
    assert!(
        !body.to_string().contains("index out of bounds"),
        "the problem reveals nothing: {body}"
    );

    // The same router (the same process, in Lambda) answers the next request.
    let next = app
        .oneshot(
            Request::get("/api/v1/openapi.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(next.status(), 200);
}
