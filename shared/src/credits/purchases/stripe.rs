//! Stripe, spoken directly over its REST API: creating Checkout Sessions
//! (form-encoded, bearer secret key, an `Idempotency-Key` per order) and the
//! webhook signature scheme (`Stripe-Signature: t=<unix>,v1=<hex>[,v1=...]`,
//! HMAC-SHA256 over `"{t}.{raw body}"`).
//!
//! [`sign`] and [`verify`] share one function that computes the signature, so
//! the local payment provider signs exactly what the verifier checks.

use std::sync::OnceLock;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// The request header carrying the webhook signature.
pub const SIGNATURE_HEADER: &str = "stripe-signature";

/// How far (either way) a signature's timestamp may be from our clock.
pub const TOLERANCE_SECONDS: i64 = 300;

/// Connect timeout and whole-request timeout of calls to Stripe. Creating a
/// session normally takes well under a second; the total stays below API
/// Gateway's 29 s so the client gets our problem, not the gateway's.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

type HmacSha256 = Hmac<Sha256>;

// ------------------------------------------------------------------------------------------
// Webhook signatures
// ------------------------------------------------------------------------------------------

/// Why a `Stripe-Signature` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Stripe-Signature header is malformed")]
    Malformed,
    #[error("the Stripe-Signature header has no v1 signature")]
    NoSignature,
    #[error("the signature's timestamp is outside the {TOLERANCE_SECONDS} s tolerance")]
    OutsideTolerance,
    #[error("no v1 signature matches the payload")]
    Mismatch,
}

/// The one place the signature is computed: HMAC-SHA256 keyed with the
/// endpoint's signing secret (the whole `whsec_...` string, as Stripe uses
/// it) over `"{timestamp}.{body}"`.
fn signed_payload_mac(secret: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes())
        .expect("HMAC-SHA256 accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `Stripe-Signature` header value Stripe would send for `body` at
/// `timestamp` (unix seconds): `t=<timestamp>,v1=<hex>`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let signature = signed_payload_mac(secret, timestamp, body)
        .finalize()
        .into_bytes();
    format!("t={timestamp},v1={}", hex::encode(signature))
}

/// Verifies a `Stripe-Signature` header against the raw body: any of its
/// `v1` values may match (Stripe sends several while a secret is rolled),
/// compared in constant time, and `t` must be within [`TOLERANCE_SECONDS`]
/// of `now` in either direction. Returns the signed timestamp.
pub fn verify(secret: &str, header: &str, body: &[u8], now: i64) -> Result<i64, SignatureError> {
    let mut timestamp: Option<i64> = None;
    let mut signatures: Vec<&str> = Vec::new();
    for part in header.split(',') {
        let (key, value) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match key {
            "t" => {
                if timestamp.is_some() {
                    return Err(SignatureError::Malformed);
                }
                let parsed = value
                    .parse::<i64>()
                    .ok()
                    .filter(|t| *t >= 0)
                    .ok_or(SignatureError::Malformed)?;
                timestamp = Some(parsed);
            }
            "v1" => signatures.push(value),
            // Other schemes (v0 is Stripe's test-mode scheme) are not trusted.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::NoSignature);
    }
    let mac = signed_payload_mac(secret, timestamp, body);
    let matched = signatures.iter().any(|candidate| {
        hex::decode(candidate).is_ok_and(|bytes| mac.clone().verify_slice(&bytes).is_ok())
    });
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    // i128: no timestamp, however absurd, can overflow the difference.
    if (i128::from(now) - i128::from(timestamp)).abs() > i128::from(TOLERANCE_SECONDS) {
        return Err(SignatureError::OutsideTolerance);
    }
    Ok(timestamp)
}

// ------------------------------------------------------------------------------------------
// Checkout Sessions
// ------------------------------------------------------------------------------------------

/// What a Checkout Session is created for.
#[derive(Debug, Clone)]
pub struct CheckoutRequest<'a> {
    pub order_id: &'a str,
    pub product_name: &'a str,
    /// Lower-case ISO currency code.
    pub currency: &'a str,
    /// In the currency's smallest unit.
    pub unit_amount: i64,
    pub success_url: &'a str,
    pub cancel_url: &'a str,
}

/// A created session: its id and the hosted page to send the buyer to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutSession {
    pub id: String,
    pub url: String,
}

/// Why creating a session failed.
#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    /// No answer in time, a connection failure, rate limiting or a Stripe
    /// server error: worth retrying.
    #[error("Stripe is unavailable: {0}")]
    Unavailable(String),
    /// Stripe refused the request (bad key, invalid parameters): retrying the
    /// same request will not help.
    #[error("Stripe refused the request ({status}): {message}")]
    Rejected { status: u16, message: String },
    /// Stripe answered 2xx with something that is not a session.
    #[error("Stripe answered with an unexpected body: {0}")]
    InvalidResponse(String),
}

/// One HTTP client per process: building one loads TLS roots.
fn http_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot build the Stripe HTTP client; using defaults");
                reqwest::Client::new()
            })
    })
}

/// The form body of `POST /v1/checkout/sessions`.
pub fn checkout_form(request: &CheckoutRequest<'_>) -> String {
    let unit_amount = request.unit_amount.to_string();
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("mode", "payment")
        .append_pair("line_items[0][price_data][currency]", request.currency)
        .append_pair("line_items[0][price_data][unit_amount]", &unit_amount)
        .append_pair(
            "line_items[0][price_data][product_data][name]",
            request.product_name,
        )
        .append_pair("line_items[0][quantity]", "1")
        .append_pair("client_reference_id", request.order_id)
        .append_pair("metadata[purchase_order_id]", request.order_id)
        // So the charge (and its refunds) carry the order id too.
        .append_pair(
            "payment_intent_data[metadata][purchase_order_id]",
            request.order_id,
        )
        .append_pair("success_url", request.success_url)
        .append_pair("cancel_url", request.cancel_url)
        .finish()
}

/// Creates a Checkout Session. The order id is Stripe's idempotency key, so a
/// retried call for the same order never makes a second session.
pub async fn create_checkout_session(
    api_base: &str,
    secret_key: &str,
    request: &CheckoutRequest<'_>,
) -> Result<CheckoutSession, StripeError> {
    let response = http_client()
        .post(format!("{api_base}/v1/checkout/sessions"))
        .bearer_auth(secret_key)
        .header("Idempotency-Key", request.order_id)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(checkout_form(request))
        .send()
        .await
        .map_err(|e| {
            StripeError::Unavailable(if e.is_timeout() {
                "no answer in time".into()
            } else if e.is_connect() {
                "cannot connect".into()
            } else {
                e.without_url().to_string()
            })
        })?;
    let status = response.status();
    let body: Value = match response.bytes().await {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        Err(e) if e.is_timeout() => {
            return Err(StripeError::Unavailable("no answer in time".into()));
        }
        Err(e) => return Err(StripeError::Unavailable(e.without_url().to_string())),
    };
    if !status.is_success() {
        // Stripe's error object: {"error": {"type", "code", "message"}}; the
        // message never contains the key.
        let error = &body["error"];
        let message = [&error["type"], &error["code"], &error["message"]]
            .iter()
            .filter_map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(": ");
        let message = if message.is_empty() {
            "no error details".to_string()
        } else {
            message.chars().take(300).collect()
        };
        return Err(
            if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                StripeError::Unavailable(format!("{status}: {message}"))
            } else {
                StripeError::Rejected {
                    status: status.as_u16(),
                    message,
                }
            },
        );
    }
    match (body["id"].as_str(), body["url"].as_str()) {
        (Some(id), Some(url)) if !id.is_empty() && url.starts_with("http") => Ok(CheckoutSession {
            id: id.to_string(),
            url: url.to_string(),
        }),
        _ => Err(StripeError::InvalidResponse(
            "no session id and url".to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret";

    #[test]
    fn signatures_match_a_known_vector() {
        // printf '1700000000.{"id":"evt_1"}' | openssl dgst -sha256 -hmac whsec_test_secret
        assert_eq!(
            sign(SECRET, 1_700_000_000, br#"{"id":"evt_1"}"#),
            "t=1700000000,v1=248a374f50f943a28b0f6ab50faf9a7e7e29b710fa26df9fb1618b9bf8ea9c9a"
        );
    }

    #[test]
    fn a_signature_verifies_within_tolerance_either_way() {
        let body = br#"{"id":"evt_1","type":"checkout.session.completed"}"#;
        let header = sign(SECRET, 1_000_000, body);
        assert_eq!(verify(SECRET, &header, body, 1_000_000), Ok(1_000_000));
        assert!(verify(SECRET, &header, body, 1_000_300).is_ok());
        assert!(verify(SECRET, &header, body, 999_700).is_ok());
        assert_eq!(
            verify(SECRET, &header, body, 1_000_301),
            Err(SignatureError::OutsideTolerance)
        );
        assert_eq!(
            verify(SECRET, &header, body, 999_699),
            Err(SignatureError::OutsideTolerance)
        );
    }

    #[test]
    fn any_of_several_v1_values_may_match() {
        let body = b"{}";
        let good = sign(SECRET, 50, body);
        let v1 = good.split_once(",v1=").map(|(_, v)| v).unwrap();
        let header = format!("t=50, v0=abc, v1={}, v1={v1}", "0".repeat(64));
        assert_eq!(verify(SECRET, &header, body, 60), Ok(50));
        // Order does not matter either.
        let header = format!("v1={v1},t=50,v1=zz");
        assert_eq!(verify(SECRET, &header, body, 60), Ok(50));
    }

    #[test]
    fn forged_tampered_and_malformed_signatures_are_refused() {
        let body = br#"{"amount":100}"#;
        let header = sign(SECRET, 100, body);
        assert_eq!(
            verify("whsec_other", &header, body, 100),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(SECRET, &header, br#"{"amount":900}"#, 100),
            Err(SignatureError::Mismatch)
        );
        // A signature for another timestamp does not transfer.
        let moved = header.replacen("t=100", "t=101", 1);
        assert_eq!(
            verify(SECRET, &moved, body, 100),
            Err(SignatureError::Mismatch)
        );
        for bad in [
            "",
            "garbage",
            "t=abc,v1=00",
            "t=-5,v1=00",
            "t=1,t=2,v1=00",
            "v1=00",
            "t=99999999999999999999,v1=00",
        ] {
            assert_eq!(
                verify(SECRET, bad, body, 100),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            verify(SECRET, "t=100", body, 100),
            Err(SignatureError::NoSignature)
        );
        assert_eq!(
            verify(SECRET, "t=100,v0=ab", body, 100),
            Err(SignatureError::NoSignature)
        );
        // Absurd clocks and timestamps neither overflow nor pass.
        let far = sign(SECRET, i64::MAX, body);
        assert_eq!(
            verify(SECRET, &far, body, i64::MIN),
            Err(SignatureError::OutsideTolerance)
        );
    }

    #[test]
    fn the_checkout_form_carries_the_order() {
        let form = checkout_form(&CheckoutRequest {
            order_id: "ord-1",
            product_name: "Creator & co",
            currency: "usd",
            unit_amount: 1999,
            success_url: "https://app/ok?x=1",
            cancel_url: "https://app/no",
        });
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(form.as_bytes())
            .into_owned()
            .collect();
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("mode"), Some("payment"));
        assert_eq!(get("line_items[0][price_data][unit_amount]"), Some("1999"));
        assert_eq!(
            get("line_items[0][price_data][product_data][name]"),
            Some("Creator & co")
        );
        assert_eq!(get("line_items[0][quantity]"), Some("1"));
        assert_eq!(get("client_reference_id"), Some("ord-1"));
        assert_eq!(get("metadata[purchase_order_id]"), Some("ord-1"));
        assert_eq!(get("success_url"), Some("https://app/ok?x=1"));
    }
}
