//! `POST /api/v1/credits/webhooks/stripe`: Stripe's signed events.
//!
//! The signature is checked against the raw body bytes before anything is
//! parsed; a missing, forged, stale or malformed signature is a 400 and
//! changes nothing. A verified event is processed in ONE database transaction
//! that first records its id in `stripe_events` (the primary key makes a
//! redelivered event a no-op: concurrent deliveries wait on the key and then
//! find it taken), then applies the effect:
//!
//! - `checkout.session.completed` with `payment_status: paid`, and
//!   `checkout.session.async_payment_succeeded`: the order goes pending → paid
//!   (a conditional update, so two different events for one order credit it
//!   once) and the buyer gets one `purchase` entry of `credit_amount` and, if
//!   any, one `bonus` entry of `bonus_credits`. A completed session still
//!   `unpaid` (bank debits) waits for the async events.
//! - `checkout.session.async_payment_failed` and `checkout.session.expired`:
//!   pending → failed, nothing credited.
//! - `charge.refunded`: claws back the refunded share of the order's credits
//!   (`amount_refunded` is cumulative, so repeated or out-of-order partial
//!   refund events never count twice): a negative `refund` entry of at most
//!   the available balance, the rest recorded as `user_credits.debt_balance`,
//!   which the ledger repays first from later credits. A refund that overtakes
//!   the payment event (Stripe does not promise order) is kept on the pending
//!   order and applied in the transaction that credits it.
//! - `charge.dispute.created`, `.updated`, `.funds_withdrawn`,
//!   `.funds_reinstated` and `.closed`: see [`disputes`]. An open dispute
//!   claws back its share like a refund and freezes the buyer's gifts and
//!   purchases; won gives the credits back, lost keeps them; either lifts the
//!   freeze.
//!
//! What an order has taken back from its buyer is always
//! `min(credit_amount + bonus_credits, refunded_credits + disputed_credits)`
//! ([`reconcile`] moves the difference when either changes), so a refund and
//! a dispute of the same money never take it twice.
//!
//! Locks, in the order every path takes them: the payment (an advisory lock
//! on the payment intent, by the paths that apply disputes), the order, its
//! buyer's `users` row then `user_credits` row, then dispute rows.
//!
//! Unknown event types and events for unknown orders are recorded and
//! answered 200 (Stripe would otherwise retry them for days).

mod disputes;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{Value, json};
use tokio_postgres::Transaction;
use utoipa::ToSchema;

use super::stripe::{self, SIGNATURE_HEADER};
use super::{ORDER_COLUMNS, PurchaseOrder, is_plain_id};
use crate::activity::{self, Activity};
use crate::credits::ledger::{self, Entry};
use crate::kernel::error::{ApiError, Problem};
use crate::kernel::metrics::WebhookOutcome;
use crate::web::http::{RawBody, RequestMeta};
use crate::web::responses::{InternalError, PayloadTooLarge};
use crate::web::state::AppState;

/// A verified event: what the handlers read of it.
#[derive(Debug)]
struct Event {
    id: String,
    kind: String,
    /// `data.object`: a Checkout Session or a Charge.
    object: Value,
}

impl Event {
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let malformed = |what: &str| ApiError::BadRequest(format!("the event {what}"));
        let value: Value = serde_json::from_slice(body).map_err(|_| malformed("is not JSON"))?;
        let id = value["id"]
            .as_str()
            .filter(|id| is_plain_id(id))
            .ok_or_else(|| malformed("has no id"))?;
        let kind = value["type"]
            .as_str()
            .filter(|t| is_plain_id(t))
            .ok_or_else(|| malformed("has no type"))?;
        Ok(Self {
            id: id.to_string(),
            kind: kind.to_string(),
            object: value["data"]["object"].clone(),
        })
    }
}

/// What an event did, recorded in `stripe_events.outcome` and answered.
type Outcome = &'static str;

// ------------------------------------------------------------------------------------------
// What the OpenAPI document says of the webhook. `Event::parse` reads the body and
// `stripe_webhook` builds the answer; these types only describe them.
// ------------------------------------------------------------------------------------------

/// A Stripe event, as `POST /api/v1/credits/webhooks/stripe` reads it (Stripe sends more
/// members; they are ignored).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct StripeEvent {
    /// The event's id (`evt_...`): each is processed once.
    id: String,
    /// `checkout.session.completed`, `checkout.session.async_payment_succeeded`,
    /// `checkout.session.async_payment_failed`, `checkout.session.expired`,
    /// `charge.refunded`, and `charge.dispute.created`, `.updated`, `.funds_withdrawn`,
    /// `.funds_reinstated` and `.closed` are acted on; other types are recorded and answered
    /// 200.
    #[schema(rename = "type")]
    kind: String,
    /// `{"object": ...}`: a Checkout Session, a Charge for `charge.refunded`, a Dispute
    /// (`id`, `charge`, `payment_intent`, `amount`, `currency`, `status`, `reason`) for
    /// `charge.dispute.*`.
    #[schema(value_type = Object)]
    data: Value,
}

/// What the webhook did with an event.
#[derive(serde::Serialize, ToSchema)]
pub(crate) struct WebhookReceipt {
    /// Always `true`.
    received: bool,
    event_id: String,
    #[schema(schema_with = outcome_schema)]
    outcome: String,
}

impl WebhookReceipt {
    fn new(event_id: &str, outcome: &str) -> Json<Self> {
        Json(Self {
            received: true,
            event_id: event_id.to_string(),
            outcome: outcome.to_string(),
        })
    }
}

fn outcome_schema() -> utoipa::openapi::Object {
    crate::web::responses::string_enum(
        &[
            "credited",
            "credited_then_refunded",
            "credited_then_disputed",
            "awaiting_payment",
            "failed",
            "expired",
            "refunded",
            "partially_refunded",
            "deferred",
            "no_change",
            "already_paid",
            "order_failed",
            "already_refunded",
            "amount_mismatch",
            "paid_without_user",
            "dispute_opened",
            "dispute_won",
            "dispute_lost",
            "dispute_deferred",
            "ignored",
            "unhandled",
            "duplicate",
        ],
        false,
        "`credited`: the order was paid and its credits (and bonus) added; \
         `credited_then_refunded`: and a refund that arrived first was applied; \
         `credited_then_disputed`: and a dispute that arrived first was applied; \
         `awaiting_payment`: a completed session not paid yet (delayed payment methods); \
         `failed`, `expired`: the pending order failed; `refunded`, `partially_refunded`: the \
         refunded share of the credits was taken back (what the balance could not cover became \
         debt); `deferred`: a refund of a still pending order, kept until it is paid; \
         `no_change`: that share was taken back already; `already_paid`, `order_failed`, \
         `already_refunded`: the order had moved on; `amount_mismatch`: the amount charged \
         differs from the order (not credited, logged for review); `paid_without_user`: the \
         buyer's account was erased; `dispute_opened`: a dispute took its share of the credits \
         back (what the balance could not cover became debt) and froze the buyer's gifts and \
         purchases; `dispute_won`: a dispute ended without a chargeback, its credits were given \
         back and, without another open dispute, the freeze lifted; `dispute_lost`: the \
         chargeback stands, its credits stay taken back and the freeze lifted likewise; \
         `dispute_deferred`: a dispute of an order not credited (or not known) yet, applied \
         when it is; `ignored`: no such order, or nothing to do; `unhandled`: \
         an event type the webhook does not act on; `duplicate`: the event was processed before.",
    )
}

/// Stripe's webhook.
///
/// Public: authenticated by the `Stripe-Signature` header, an HMAC-SHA256 over the raw body
/// with the webhook secret, checked (within 300 s of its timestamp, any `v1` signature) before
/// anything is parsed. The body is a Stripe event (schema `StripeEvent`), read as raw bytes
/// whatever its `Content-Type`. Each event id is processed once, in one transaction: paid
/// Checkout Sessions credit the order's credits and bonus exactly once, failed and expired
/// sessions fail the pending order, and `charge.refunded` takes back the refunded share of
/// the credits. `charge.dispute.*` events (created, updated, funds_withdrawn, funds_reinstated,
/// closed; tied to the order by the dispute's `payment_intent`) act on the dispute's status:
/// open takes the disputed share of the credits back like a refund and freezes the buyer's
/// gifts and purchases; `won` (or an inquiry's `warning_closed`) gives them back, any other
/// closing keeps them; both lift the freeze. A closed dispute never reopens, so late and
/// redelivered events change nothing. Events of other types, and for unknown orders, are
/// recorded and answered 200 (Stripe would retry anything else).
#[utoipa::path(
    post,
    path = "/api/v1/credits/webhooks/stripe",
    tag = "credits",
    operation_id = "stripe_webhook",
    security(()),
    params(
        ("Stripe-Signature" = String, Header, description = "`t=<unix time>,v1=<hex HMAC-SHA256 of \"<t>.<raw body>\">` (more `v1` entries allowed), as Stripe signs its events."),
    ),
    responses(
        (status = 200, description = "The event was verified and processed (or had been already).", body = WebhookReceipt),
        (status = 400, description = "The Stripe-Signature header is missing, malformed, stale or does not match, or the verified event has no `id` or `type` (`/problems/bad-request`). Nothing changed.", body = Problem, content_type = "application/problem+json"),
        (status = 413, response = PayloadTooLarge),
        (status = 503, description = "The webhook secret is not configured (`Retry-After: 60`), or the database is briefly unavailable. Nothing changed; Stripe retries.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
        (status = 500, response = InternalError),
    )
)]
pub(crate) async fn stripe_webhook(
    State(state): State<AppState>,
    meta: RequestMeta,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<WebhookReceipt>, ApiError> {
    let answer = receive(state, meta, headers, body).await;
    let (outcome, detail) = match &answer {
        Ok(Json(receipt)) => {
            let detail = Some(receipt.outcome.as_str());
            let outcome = match detail {
                Some("duplicate") => WebhookOutcome::Duplicate,
                Some("ignored" | "unhandled") => WebhookOutcome::Ignored,
                _ => WebhookOutcome::Processed,
            };
            (outcome, detail)
        }
        Err(e) if e.status().is_client_error() => (WebhookOutcome::Rejected, None),
        Err(_) => (WebhookOutcome::Failed, None),
    };
    crate::kernel::metrics::webhook("stripe", outcome, detail);
    answer
}

/// [`stripe_webhook`]'s work: verify, record once, act on the event.
async fn receive(
    state: AppState,
    meta: RequestMeta,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<WebhookReceipt>, ApiError> {
    let Some(secret) = state.config.payments.stripe_webhook_secret.as_deref() else {
        // Stripe retries: nothing is lost while the secret is being configured.
        tracing::error!("STRIPE_WEBHOOK_SECRET is not set; webhook events cannot be verified");
        return Err(ApiError::ServiceUnavailable {
            detail: "webhooks are not configured".into(),
            retry_after: 60,
        });
    };
    let header = headers
        .get(SIGNATURE_HEADER)
        .ok_or_else(|| ApiError::BadRequest("the Stripe-Signature header is missing".into()))?
        .to_str()
        .map_err(|_| ApiError::BadRequest("the Stripe-Signature header is malformed".into()))?;
    let now = chrono::Utc::now().timestamp();
    stripe::verify(secret, header, &body, now).map_err(|e| {
        tracing::warn!(reason = %e, "webhook signature refused");
        ApiError::BadRequest(e.to_string())
    })?;
    let event = Event::parse(&body)?;

    let mut pooled = state.db.get().await?;
    let client: &mut tokio_postgres::Client = &mut pooled;
    let tx = client.transaction().await?;
    let fresh = tx
        .query_opt(
            "INSERT INTO stripe_events (id, event_type, outcome) VALUES ($1, $2, 'processing') \
             ON CONFLICT (id) DO NOTHING RETURNING 1",
            &[&event.id, &event.kind],
        )
        .await?
        .is_some();
    if !fresh {
        tx.rollback().await?;
        tracing::info!(event_id = %event.id, "webhook event already processed");
        return Ok(WebhookReceipt::new(&event.id, "duplicate"));
    }
    let (outcome, order_id) = match event.kind.as_str() {
        "checkout.session.completed" => session_paid(&tx, &event, &meta, true).await?,
        "checkout.session.async_payment_succeeded" => {
            session_paid(&tx, &event, &meta, false).await?
        }
        "checkout.session.async_payment_failed" => {
            session_failed(&tx, &event, &meta, "failed").await?
        }
        "checkout.session.expired" => session_failed(&tx, &event, &meta, "expired").await?,
        "charge.refunded" => charge_refunded(&tx, &event, &meta).await?,
        "charge.dispute.created"
        | "charge.dispute.updated"
        | "charge.dispute.funds_withdrawn"
        | "charge.dispute.funds_reinstated"
        | "charge.dispute.closed" => disputes::dispute_event(&tx, &event, &meta).await?,
        _ => ("unhandled", None),
    };
    tx.execute(
        "UPDATE stripe_events SET outcome = $2, purchase_order_id = $3 WHERE id = $1",
        &[&event.id, &outcome, &order_id],
    )
    .await?;
    tx.commit().await?;
    tracing::info!(event_id = %event.id, event_type = %event.kind, outcome, "webhook event processed");
    if outcome == "credited"
        && let Some(order_id) = &order_id
    {
        settle_referral(&state, order_id).await;
    }
    Ok(WebhookReceipt::new(&event.id, outcome))
}

/// A first paid purchase settles its buyer's referral, if they were referred. After the
/// event's commit and best effort: what fails here is settled by the scheduler's sweep.
async fn settle_referral(state: &AppState, order_id: &str) {
    let settled = async {
        let mut conn = state.db.get().await?;
        let buyer: Option<String> = conn
            .query_opt(
                "SELECT user_id FROM purchase_orders WHERE id = $1",
                &[&order_id],
            )
            .await?
            .and_then(|row| row.get(0));
        match buyer {
            Some(buyer) => {
                crate::credits::referrals::settle(&mut conn, &buyer, &state.config.credits).await
            }
            None => Ok(None),
        }
    }
    .await;
    if let Err(e) = settled {
        tracing::warn!(order_id, error = %e, "settling the buyer's referral failed; the sweep retries");
    }
}

/// A string field, or the `id` of an expanded object.
fn id_of(value: &Value) -> Option<&str> {
    value
        .as_str()
        .or_else(|| value["id"].as_str())
        .filter(|id| is_plain_id(id))
}

async fn lock_order(
    tx: &Transaction<'_>,
    column: &str,
    value: &str,
) -> Result<Option<PurchaseOrder>, ApiError> {
    // `column` is one of this module's constants, never input.
    let row = tx
        .query_opt(
            &format!(
                "SELECT {ORDER_COLUMNS} FROM purchase_orders WHERE {column} = $1 \
                 ORDER BY created_at LIMIT 1 FOR UPDATE"
            ),
            &[&value],
        )
        .await?;
    Ok(row.as_ref().map(PurchaseOrder::from_row).transpose()?)
}

/// The order a Checkout Session is for, locked: by our metadata, else by
/// `client_reference_id`, else by the stored session id.
async fn session_order(
    tx: &Transaction<'_>,
    session: &Value,
) -> Result<Option<PurchaseOrder>, ApiError> {
    for candidate in [
        id_of(&session["metadata"]["purchase_order_id"]),
        id_of(&session["client_reference_id"]),
    ]
    .into_iter()
    .flatten()
    {
        if let Some(order) = lock_order(tx, "id", candidate).await? {
            return Ok(Some(order));
        }
    }
    match id_of(&session["id"]) {
        Some(session_id) => lock_order(tx, "checkout_session_id", session_id).await,
        None => Ok(None),
    }
}

/// Serialises everything that applies disputes to one payment (by its
/// payment intent, or what stands for it): taken before the order's lock.
async fn lock_payment(tx: &Transaction<'_>, key: &str) -> Result<(), ApiError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('stripe payment ' || $1))",
        &[&key],
    )
    .await?;
    Ok(())
}

/// Takes the lock order the credit engine uses everywhere (users, then
/// user_credits), so a credit here cannot deadlock with a hold being placed.
async fn lock_user(tx: &Transaction<'_>, user_id: &str) -> Result<(), ApiError> {
    tx.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", &[&user_id])
        .await?;
    Ok(())
}

/// Why an order in this status was left alone.
fn not_pending(status: &str) -> Outcome {
    match status {
        "paid" => "already_paid",
        "failed" => "order_failed",
        "refunded" => "already_refunded",
        _ => "ignored",
    }
}

fn unknown_order(event: &Event) -> (Outcome, Option<String>) {
    tracing::warn!(
        event_id = %event.id,
        event_type = %event.kind,
        "Stripe event for an unknown purchase order; recorded and ignored"
    );
    ("ignored", None)
}

/// `checkout.session.completed` (credit if `paid`) and
/// `async_payment_succeeded` (credit).
async fn session_paid(
    tx: &Transaction<'_>,
    event: &Event,
    meta: &RequestMeta,
    require_paid_status: bool,
) -> Result<(Outcome, Option<String>), ApiError> {
    let session = &event.object;
    // Before the order's lock: a dispute of this payment may be waiting for it.
    if let Some(intent) = id_of(&session["payment_intent"]) {
        lock_payment(tx, intent).await?;
    }
    let Some(order) = session_order(tx, session).await? else {
        return Ok(unknown_order(event));
    };
    let order_id = Some(order.id.clone());
    if let (Some(stored), Some(sent)) = (&order.checkout_session_id, id_of(&session["id"]))
        && stored != sent
    {
        tracing::warn!(event_id = %event.id, order_id = %order.id, "event for another checkout session of this order; ignored");
        return Ok(("ignored", order_id));
    }
    let payment_intent = id_of(&session["payment_intent"]);
    if require_paid_status && session["payment_status"].as_str() != Some("paid") {
        // Delayed payment methods: remember the payment intent, wait for the async events.
        tx.execute(
            "UPDATE purchase_orders SET payment_intent_id = coalesce(payment_intent_id, $2) \
             WHERE id = $1 AND status = 'pending'",
            &[&order.id, &payment_intent],
        )
        .await?;
        return Ok(("awaiting_payment", order_id));
    }
    if !charged_as_ordered(event, &order) {
        return Ok(("amount_mismatch", order_id));
    }
    let paid = tx
        .query_opt(
            "UPDATE purchase_orders SET status = 'paid', paid_at = now(), \
               payment_intent_id = coalesce($2, payment_intent_id) \
             WHERE id = $1 AND status = 'pending' RETURNING id",
            &[&order.id, &payment_intent],
        )
        .await?;
    if paid.is_none() {
        if order.status == "failed" {
            tracing::error!(event_id = %event.id, order_id = %order.id, "payment for a failed order; needs review");
        }
        return Ok((not_pending(&order.status), order_id));
    }
    let Some(user_id) = order.user_id.as_deref() else {
        tracing::error!(order_id = %order.id, "paid order of an erased user; nothing to credit");
        return Ok(("paid_without_user", order_id));
    };
    credit_order(tx, event, meta, &order, user_id).await?;
    let outcome = apply_waiting_reversals(tx, &order.id, event, meta).await?;
    Ok((outcome, order_id))
}

/// Whether what Stripe charged (amount and currency, where the session says)
/// is what the order costs; logged as needing review when not.
fn charged_as_ordered(event: &Event, order: &PurchaseOrder) -> bool {
    let session = &event.object;
    // What Stripe charged must be what the order costs.
    let expected = order.minor_units();
    let charged = session["amount_total"].as_i64();
    let currency = session["currency"].as_str();
    let amount_matches = charged.is_none_or(|c| expected.as_ref().is_ok_and(|e| *e == c))
        && currency.is_none_or(|c| c.eq_ignore_ascii_case(&order.price_currency));
    if !amount_matches {
        tracing::error!(
            event_id = %event.id,
            order_id = %order.id,
            charged = ?charged,
            expected = ?expected,
            "checkout amount differs from the order; not credited, needs review"
        );
    }
    amount_matches
}

/// Credits a paid order under the user's lock: the `purchase` entry, the
/// `bonus` entry if any, the activity row and the log line.
async fn credit_order(
    tx: &Transaction<'_>,
    event: &Event,
    meta: &RequestMeta,
    order: &PurchaseOrder,
    user_id: &str,
) -> Result<(), ApiError> {
    lock_user(tx, user_id).await?;
    let metadata = json!({"event_id": event.id, "package_id": order.package_id});
    ledger::post(
        tx,
        user_id,
        Entry::new(
            "purchase",
            order.credit_amount,
            format!("Purchase of {} credits", order.credit_amount),
        )
        .related("purchase_order", order.id.clone())
        .metadata(metadata.clone()),
    )
    .await?;
    if order.bonus_credits > 0 {
        ledger::post(
            tx,
            user_id,
            Entry::new(
                "bonus",
                order.bonus_credits,
                format!("Bonus of {} credits with a purchase", order.bonus_credits),
            )
            .related("purchase_order", order.id.clone())
            .metadata(metadata),
        )
        .await?;
    }
    activity::record(
        tx,
        Activity {
            user_id: Some(user_id),
            activity_type: crate::activity::ActivityType::PurchaseCompleted,
            entity_type: Some("purchase_order"),
            entity_id: Some(&order.id),
            metadata: json!({
                "package_id": order.package_id,
                "credit_amount": order.credit_amount,
                "bonus_credits": order.bonus_credits,
                "price": order.price_usd,
                "currency": order.price_currency,
                "event_id": event.id,
            }),
        },
        meta,
    )
    .await?;
    tracing::info!(order_id = %order.id, credits = order.credit_amount, bonus = order.bonus_credits, "purchase credited");
    Ok(())
}

/// Applies a refund or disputes that arrived before the payment, now that the
/// order is credited; the outcome says which did.
async fn apply_waiting_reversals(
    tx: &Transaction<'_>,
    order_id: &str,
    event: &Event,
    meta: &RequestMeta,
) -> Result<Outcome, ApiError> {
    let mut outcome = "credited";
    if let Some(refund) = apply_deferred_refund(tx, order_id, event, meta).await?
        && refund != "no_change"
    {
        tracing::info!(order_id = %order_id, outcome = refund, "deferred refund applied");
        outcome = "credited_then_refunded";
    }
    if disputes::apply_waiting(tx, order_id, event, meta).await? > 0 {
        outcome = "credited_then_disputed";
    }
    Ok(outcome)
}

/// `checkout.session.async_payment_failed` (`outcome` failed) and
/// `checkout.session.expired` (the buyer never paid; `outcome` expired): the
/// order fails, nothing is credited.
async fn session_failed(
    tx: &Transaction<'_>,
    event: &Event,
    meta: &RequestMeta,
    outcome: Outcome,
) -> Result<(Outcome, Option<String>), ApiError> {
    let session = &event.object;
    let Some(order) = session_order(tx, session).await? else {
        return Ok(unknown_order(event));
    };
    let order_id = Some(order.id.clone());
    let failed = tx
        .query_opt(
            "UPDATE purchase_orders SET status = 'failed', failed_at = now(), \
               payment_intent_id = coalesce(payment_intent_id, $2) \
             WHERE id = $1 AND status = 'pending' RETURNING id",
            &[&order.id, &id_of(&session["payment_intent"])],
        )
        .await?;
    if failed.is_none() {
        return Ok((not_pending(&order.status), order_id));
    }
    if let Some(user_id) = order.user_id.as_deref() {
        activity::record(
            tx,
            Activity {
                user_id: Some(user_id),
                activity_type: crate::activity::ActivityType::PurchaseFailed,
                entity_type: Some("purchase_order"),
                entity_id: Some(&order.id),
                metadata: json!({"event_id": event.id, "reason": outcome}),
            },
            meta,
        )
        .await?;
    }
    Ok((outcome, order_id))
}

/// Credits to claw back in total once `refunded` of `amount` (smallest
/// currency units) is refunded: the same share of the order's credits, rounded
/// down in the buyer's favour; a full refund takes everything back.
pub fn refunded_share(total_credits: i64, amount: i64, refunded: i64) -> i64 {
    if amount <= 0 || refunded >= amount {
        return total_credits;
    }
    let refunded = refunded.max(0);
    let share = i128::from(total_credits) * i128::from(refunded) / i128::from(amount);
    i64::try_from(share).unwrap_or(total_credits)
}

/// `charge.refunded`: claw back the refunded share not clawed back yet.
async fn charge_refunded(
    tx: &Transaction<'_>,
    event: &Event,
    meta: &RequestMeta,
) -> Result<(Outcome, Option<String>), ApiError> {
    let charge = &event.object;
    let mut order = None;
    if let Some(intent) = id_of(&charge["payment_intent"]) {
        order = lock_order(tx, "payment_intent_id", intent).await?;
    }
    if order.is_none()
        && let Some(id) = id_of(&charge["metadata"]["purchase_order_id"])
    {
        order = lock_order(tx, "id", id).await?;
    }
    let Some(order) = order else {
        return Ok(unknown_order(event));
    };
    let order_id = Some(order.id.clone());
    let Some(refunded) = charge["amount_refunded"].as_i64().filter(|r| *r >= 0) else {
        tracing::warn!(event_id = %event.id, "charge.refunded without amount_refunded; ignored");
        return Ok(("ignored", order_id));
    };
    let amount = match charge["amount"].as_i64().filter(|a| *a > 0) {
        Some(amount) => amount,
        None => order.minor_units().map_err(ApiError::internal)?,
    };
    match order.status.as_str() {
        "paid" | "refunded" => {
            let outcome = apply_refund(tx, &order, refunded, amount, event, meta).await?;
            Ok((outcome, order_id))
        }
        "pending" => {
            // Stripe does not promise order: the refund overtook the payment
            // event. Keep the (cumulative) refunded amount; crediting the
            // order applies it in the same transaction.
            tx.execute(
                "UPDATE purchase_orders SET metadata = metadata || jsonb_build_object( \
                   'deferred_amount_refunded', greatest(coalesce((metadata->>'deferred_amount_refunded')::int8, 0), $2::int8), \
                   'deferred_charge_amount', $3::int8) \
                 WHERE id = $1",
                &[&order.id, &refunded, &amount],
            )
            .await?;
            tracing::warn!(event_id = %event.id, order_id = %order.id, "refund before the payment event; kept until the order is paid");
            Ok(("deferred", order_id))
        }
        _ => {
            tracing::warn!(event_id = %event.id, order_id = %order.id, status = %order.status, "refund for an order that was never paid; ignored");
            Ok(("ignored", order_id))
        }
    }
}

/// Claws back the share of `order` (locked, paid) that `refunded` of
/// `amount` (smallest currency units, cumulative) stands for, minus what
/// earlier refunds took (and what its disputes took of the same credits).
async fn apply_refund(
    tx: &Transaction<'_>,
    order: &PurchaseOrder,
    refunded: i64,
    amount: i64,
    event: &Event,
    meta: &RequestMeta,
) -> Result<Outcome, ApiError> {
    let total = order_total(order);
    let target = refunded_share(i64::from(total), amount, refunded);
    let fully = refunded >= amount;
    if target <= i64::from(order.refunded_credits) {
        return Ok("no_change");
    }
    let target = i32::try_from(target).map_err(ApiError::internal)?;
    let moved = reconcile(
        tx,
        order,
        target,
        order.disputed_credits,
        event,
        &format!(
            "Credits taken back after a refund of purchase order {}",
            order.id
        ),
    )
    .await?;
    tx.execute(
        "UPDATE purchase_orders SET refunded_at = now(), \
           status = CASE WHEN $2 THEN 'refunded' ELSE status END \
         WHERE id = $1",
        &[&order.id, &fully],
    )
    .await?;
    if let Some(user_id) = order.user_id.as_deref() {
        activity::record(
            tx,
            Activity {
                user_id: Some(user_id),
                activity_type: crate::activity::ActivityType::PurchaseRefunded,
                entity_type: Some("purchase_order"),
                entity_id: Some(&order.id),
                metadata: json!({
                    "event_id": event.id,
                    "amount_refunded": refunded,
                    "credits_clawed_back": moved.taken,
                    "credits_owed": moved.owed,
                }),
            },
            meta,
        )
        .await?;
    }
    tracing::info!(order_id = %order.id, clawed_back = moved.taken, debt = moved.owed, "purchase refund applied");
    Ok(if fully {
        "refunded"
    } else {
        "partially_refunded"
    })
}

/// A refund kept while the order was pending, applied once it is credited.
async fn apply_deferred_refund(
    tx: &Transaction<'_>,
    order_id: &str,
    event: &Event,
    meta: &RequestMeta,
) -> Result<Option<Outcome>, ApiError> {
    let row = tx
        .query_one(
            "SELECT (metadata->>'deferred_amount_refunded')::int8, \
                    (metadata->>'deferred_charge_amount')::int8 \
             FROM purchase_orders WHERE id = $1",
            &[&order_id],
        )
        .await?;
    let (refunded, amount): (Option<i64>, Option<i64>) = (row.try_get(0)?, row.try_get(1)?);
    let (Some(refunded), Some(amount)) = (refunded, amount) else {
        return Ok(None);
    };
    let order = read_order(tx, order_id).await?;
    Ok(Some(
        apply_refund(tx, &order, refunded, amount, event, meta).await?,
    ))
}

/// The order as it stands now in this transaction (after earlier changes).
async fn read_order(tx: &Transaction<'_>, order_id: &str) -> Result<PurchaseOrder, ApiError> {
    let row = tx
        .query_one(
            &format!("SELECT {ORDER_COLUMNS} FROM purchase_orders WHERE id = $1"),
            &[&order_id],
        )
        .await?;
    Ok(PurchaseOrder::from_row(&row)?)
}

/// Everything an order credited: its credits and its bonus.
fn order_total(order: &PurchaseOrder) -> i32 {
    order.credit_amount.saturating_add(order.bonus_credits)
}

/// What an order has taken back from its buyer, for these refunded and
/// disputed shares: a refund and a dispute of the same money never take it
/// twice, and nothing beyond what the order credited.
fn taken_back(total: i32, refunded: i32, disputed: i32) -> i64 {
    i64::from(total).min(i64::from(refunded.max(0)) + i64::from(disputed.max(0)))
}

/// What [`reconcile`] moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Moved {
    /// Credits taken from the balance.
    taken: i64,
    /// Credits the balance could not cover, added to `debt_balance`.
    owed: i64,
    /// Credits given back (a won dispute).
    restored: i64,
    /// Of those, what went straight to repaying debt.
    repaid: i64,
}

/// Stores the order's new refunded and disputed shares and moves the
/// difference in what it has taken back ([`taken_back`]) from or to its buyer:
/// a clawback (`description` names why) or a restoration. `order` is the
/// locked row as it stood before.
async fn reconcile(
    tx: &Transaction<'_>,
    order: &PurchaseOrder,
    refunded: i32,
    disputed: i32,
    event: &Event,
    description: &str,
) -> Result<Moved, ApiError> {
    let total = order_total(order);
    let before = taken_back(total, order.refunded_credits, order.disputed_credits);
    let after = taken_back(total, refunded, disputed);
    tx.execute(
        "UPDATE purchase_orders SET refunded_credits = $2, disputed_credits = $3 WHERE id = $1",
        &[&order.id, &refunded, &disputed],
    )
    .await?;
    let Some(user_id) = order.user_id.as_deref() else {
        if after != before {
            tracing::error!(order_id = %order.id, "credits to move for an erased user's order; nothing moved");
        }
        return Ok(Moved::default());
    };
    let mut moved = Moved::default();
    if after > before {
        (moved.taken, moved.owed) =
            claw_back(tx, user_id, order, event, after - before, description).await?;
    } else if after < before {
        (moved.restored, moved.repaid) = restore(tx, user_id, order, event, before - after).await?;
    }
    Ok(moved)
}

/// Takes `owed` credits back: as much as is available (never what jobs hold)
/// as one negative `refund` entry, the rest as debt. Returns (taken, debt).
async fn claw_back(
    tx: &Transaction<'_>,
    user_id: &str,
    order: &PurchaseOrder,
    event: &Event,
    owed: i64,
    description: &str,
) -> Result<(i64, i64), ApiError> {
    lock_user(tx, user_id).await?;
    // The row lock serialises this with every other balance change of the user.
    let available: i64 = match tx
        .query_opt(
            "SELECT (current_balance - reserved_balance)::int8 FROM user_credits \
             WHERE user_id = $1 FOR UPDATE",
            &[&user_id],
        )
        .await?
    {
        Some(row) => row.try_get(0)?,
        None => {
            tracing::error!(order_id = %order.id, "clawback for a user without a credit account");
            return Ok((0, 0));
        }
    };
    let taken = owed.min(available.max(0));
    let debt = owed - taken;
    if taken > 0 {
        let amount = i32::try_from(-taken).map_err(ApiError::internal)?;
        ledger::post(
            tx,
            user_id,
            Entry::new("refund", amount, description)
                .related("purchase_order", order.id.clone())
                .metadata(json!({"event_id": event.id, "credits_owed": debt})),
        )
        .await?;
    }
    if debt > 0 {
        let debt_i32 = i32::try_from(debt).map_err(ApiError::internal)?;
        tx.execute(
            "UPDATE user_credits SET debt_balance = debt_balance + $2, updated_at = now() \
             WHERE user_id = $1",
            &[&user_id, &debt_i32],
        )
        .await?;
    }
    Ok((taken, debt))
}

/// Gives `credits` back with one positive `refund` entry; like any credit, it
/// repays debt first (the ledger posts that repayment). Returns (given,
/// repaid).
async fn restore(
    tx: &Transaction<'_>,
    user_id: &str,
    order: &PurchaseOrder,
    event: &Event,
    credits: i64,
) -> Result<(i64, i64), ApiError> {
    lock_user(tx, user_id).await?;
    let debt_of = |row: Option<tokio_postgres::Row>| -> Result<Option<i32>, ApiError> {
        Ok(row.map(|r| r.try_get::<_, i32>(0)).transpose()?)
    };
    let Some(debt_before) = debt_of(
        tx.query_opt(
            "SELECT debt_balance FROM user_credits WHERE user_id = $1 FOR UPDATE",
            &[&user_id],
        )
        .await?,
    )?
    else {
        tracing::error!(order_id = %order.id, "restoration for a user without a credit account");
        return Ok((0, 0));
    };
    let amount = i32::try_from(credits).map_err(ApiError::internal)?;
    ledger::post(
        tx,
        user_id,
        Entry::new(
            "refund",
            amount,
            format!(
                "Credits given back: the dispute of purchase order {} ended without a chargeback",
                order.id
            ),
        )
        .related("purchase_order", order.id.clone())
        .metadata(json!({"event_id": event.id})),
    )
    .await?;
    let debt_after = debt_of(
        tx.query_opt(
            "SELECT debt_balance FROM user_credits WHERE user_id = $1",
            &[&user_id],
        )
        .await?,
    )?
    .unwrap_or(debt_before);
    Ok((credits, i64::from(debt_before - debt_after)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refunded_shares_are_exact_and_cumulative() {
        // 550 credits for 1999 cents.
        assert_eq!(refunded_share(550, 1999, 1999), 550);
        assert_eq!(refunded_share(550, 1999, 5000), 550);
        assert_eq!(refunded_share(550, 1999, 0), 0);
        assert_eq!(refunded_share(550, 1999, 1000), 275); // 275.13...
        assert_eq!(refunded_share(550, 2000, 1000), 275);
        // Never more than the whole, whatever the inputs.
        assert_eq!(refunded_share(550, 0, 0), 550);
        assert_eq!(refunded_share(550, 1999, -5), 0);
        // Cumulative targets: the sum of the steps is the share of the sum.
        let steps = [300, 500, 1199];
        let mut refunded = 0;
        let mut clawed = 0;
        for step in steps {
            refunded += step;
            let target = refunded_share(550, 1999, refunded);
            clawed += target - clawed;
        }
        assert_eq!(clawed, 550);
        assert_eq!(
            refunded_share(i64::from(i32::MAX) * 2, 99_999_999, 99_999_998),
            4_294_967_251
        );
    }
}
