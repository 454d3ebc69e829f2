//! The local payment provider: what Stripe Checkout is to production.
//!
//! `GET /dev/checkout/{order_id}` is the "hosted" checkout page with a Pay
//! button; `POST /dev/checkout/{order_id}/pay` builds the
//! `checkout.session.completed` event Stripe would send (payment paid, a fresh
//! event id), signs it with [`crate::LOCAL_WEBHOOK_SECRET`] exactly as Stripe
//! signs (the signing function is the verifier's own), and delivers it over
//! HTTP to the stack's own webhook route, so a local purchase goes through the
//! very code path a real one does. Paying again sends another event with a
//! new id: the webhook credits the order once.

use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::json;
use shared::credits::purchases::stripe::{self, SIGNATURE_HEADER};
use shared::credits::purchases::{self, PurchaseOrder};
use shared::kernel::error::ApiError;
use shared::web::http::ApiPath;
use shared::web::state::AppState;

use crate::LOCAL_WEBHOOK_SECRET;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/dev/checkout/{order_id}", get(checkout_page))
        .route("/dev/checkout/{order_id}/pay", post(pay))
}

/// The stack's own base URL. The local stack is its own token issuer, so the
/// issuer URL is where it listens.
fn base_url(state: &AppState) -> String {
    state.config.auth.issuer.trim_end_matches('/').to_string()
}

async fn order(state: &AppState, order_id: &str) -> Result<PurchaseOrder, ApiError> {
    let client = state.db.get().await?;
    purchases::find_order(&**client, order_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such order".into()))
}

fn escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&#39;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{title}</title></head>\n<body style=\"font-family: sans-serif; max-width: 32em; margin: 3em auto\">\n\
         <p><small>Local payment provider: no money moves.</small></p>\n{body}\n</body></html>\n",
        title = escape(title),
    )
}

async fn checkout_page(
    State(state): State<AppState>,
    ApiPath(order_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let order = order(&state, &order_id).await?;
    let id = escape(&order.id);
    let summary = format!(
        "<h1>Checkout</h1>\n<p>{credits} credits{bonus} for {price} {currency}</p>\n\
         <p>Order <code>{id}</code>: <strong id=\"status\">{status}</strong></p>",
        credits = order.credit_amount,
        bonus = if order.bonus_credits > 0 {
            format!(" + {} bonus credits", order.bonus_credits)
        } else {
            String::new()
        },
        price = escape(&order.price_usd),
        currency = escape(&order.price_currency),
        status = escape(&order.status),
    );
    let action = if order.status == "pending" {
        format!(
            "<form method=\"post\" action=\"/dev/checkout/{id}/pay\">\
             <button type=\"submit\">Pay</button></form>"
        )
    } else {
        // The return URL (the packages list, locally): a page of this stack that a
        // browser can open without a token. The balance needs the buyer's token.
        format!(
            "<p><a id=\"back\" href=\"{}\">Back to the app</a> (locally: the credit packages, \
             <code>GET /api/v1/credits/packages</code>)</p>\n\
             <p>Your balance: <code>GET /api/v1/credits</code> with your token.</p>",
            escape(&state.config.payments.checkout_success_url)
        )
    };
    Ok(Html(page("Checkout", &format!("{summary}\n{action}"))).into_response())
}

fn webhook_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new())
    })
}

/// The `checkout.session.completed` event Stripe sends for a paid session.
fn completed_event(order: &PurchaseOrder, unit_amount: i64, now: i64) -> serde_json::Value {
    let session_id = order
        .checkout_session_id
        .clone()
        .unwrap_or_else(|| format!("cs_local_{}", order.id));
    let random = || uuid::Uuid::new_v4().simple().to_string();
    json!({
        "id": format!("evt_local_{}", random()),
        "object": "event",
        "type": "checkout.session.completed",
        "created": now,
        "livemode": false,
        "data": {
            "object": {
                "id": session_id,
                "object": "checkout.session",
                "mode": "payment",
                "status": "complete",
                "payment_status": "paid",
                "client_reference_id": order.id,
                "metadata": {"purchase_order_id": order.id},
                "amount_total": unit_amount,
                "currency": order.price_currency.to_ascii_lowercase(),
                "payment_intent": format!("pi_local_{}", random()),
            }
        }
    })
}

async fn pay(
    State(state): State<AppState>,
    ApiPath(order_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let order = order(&state, &order_id).await?;
    let unit_amount = order.minor_units().map_err(ApiError::internal)?;
    let now = chrono::Utc::now().timestamp();
    let body = completed_event(&order, unit_amount, now).to_string();
    let signature = stripe::sign(LOCAL_WEBHOOK_SECRET, now, body.as_bytes());
    let delivered = webhook_client()
        .post(format!(
            "{}/api/v1/credits/webhooks/stripe",
            base_url(&state)
        ))
        .header(SIGNATURE_HEADER, signature)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    match delivered {
        Ok(response) if response.status().is_success() => {
            // Post/redirect/get: reloading the result page does not pay again.
            Ok(Redirect::to(&format!("/dev/checkout/{}", order.id)).into_response())
        }
        Ok(response) => {
            let status = response.status();
            tracing::warn!(%status, order_id = %order.id, "the webhook refused the local payment event");
            Ok((
                StatusCode::BAD_GATEWAY,
                Html(page(
                    "Payment not confirmed",
                    &format!(
                        "<h1>Payment not confirmed</h1><p>The webhook answered {}.</p>",
                        status.as_u16()
                    ),
                )),
            )
                .into_response())
        }
        Err(e) => {
            tracing::warn!(error = %e, order_id = %order.id, "cannot deliver the local payment event");
            Ok((
                StatusCode::BAD_GATEWAY,
                Html(page(
                    "Payment not confirmed",
                    "<h1>Payment not confirmed</h1><p>The webhook could not be reached.</p>",
                )),
            )
                .into_response())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_text_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
    }
}
