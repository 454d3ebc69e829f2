//! `POST /api/v1/credits/gifts {to_username, amount, message}`: credits from
//! the caller's available balance to another active user, with a required
//! `Idempotency-Key`.
//!
//! One transaction: claim the key; find the recipient (case-insensitively);
//! lock both `users` rows, then both `user_credits` rows, each pair in user id
//! order (two users gifting each other at once queue instead of deadlocking);
//! refuse a sender frozen by an open payment dispute (403); check the sender's
//! daily-window cap (429) and giftable balance (402: see
//! [`crate::credits::gifting`]: purchases younger than `GIFT_HOLD_DAYS` and
//! credits owed cannot be gifted); post `gift_sent` (−amount) and
//! `gift_received` (+amount) sharing one `gift_transfer` id; log both sides;
//! store the response under the key.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio_postgres::Transaction;
use utoipa::ToSchema;

use super::{DetailedProblem, Refusal};
use crate::activity::{self, Activity};
use crate::credits::gifting::{self, Giftable};
use crate::credits::ledger::{self, Entry, LedgerError};
use crate::kernel::config::CreditsConfig;
use crate::kernel::error::{ApiError, FieldError, Problem};
use crate::users::User;
use crate::users::account::Account;
use crate::users::fields;
use crate::web::http::{ApiJson, RequestMeta};
use crate::web::idempotency::{self, Claim, IdempotencyKey};
use crate::web::input::checks::{self, check};
use crate::web::input::{RequestBody, decode_with, required};
use crate::web::responses::Unauthorized;
use crate::web::responses::{BodyRefused, ServerFailures};
use crate::web::state::AppState;

const ROUTE: &str = "/api/v1/credits/gifts";
pub const MAX_MESSAGE_CHARS: usize = 280;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GiftRequest {
    pub to_username: String,
    pub amount: i32,
    pub message: Option<String>,
}

fn validate(body: Map<String, Value>, config: &CreditsConfig) -> Result<GiftRequest, ApiError> {
    decode_with::<NewGift, _>(body, |raw, errors| checked(raw, config, errors))?
        .ok_or_else(|| ApiError::validation("body", "is not a gift"))
}

/// The gift, once its fields pass the gift settings' bounds; `None` when one does not.
fn checked(
    raw: NewGift,
    config: &CreditsConfig,
    errors: &mut Vec<FieldError>,
) -> Option<GiftRequest> {
    let to_username = required("to_username", raw.to_username, errors)
        .and_then(|name| check(errors, fields::username("to_username", &name)));
    let max = config.gift_max_amount;
    // Integers only: 1.5, 1e2 and "10" were refused while decoding.
    let amount = required("amount", raw.amount, errors).and_then(|amount| {
        let valid = i32::try_from(amount)
            .ok()
            .filter(|a| (1..=max).contains(a))
            .ok_or_else(|| {
                FieldError::new(
                    "amount",
                    format!("must be a whole number of credits from 1 to {max}"),
                )
            });
        check(errors, valid)
    });
    let message = raw.message.and_then(|text| {
        check(
            errors,
            checks::text("message", &text, MAX_MESSAGE_CHARS, true),
        )
        .flatten()
    });
    Some(GiftRequest {
        to_username: to_username?,
        amount: amount?,
        message,
    })
}

/// A gift of credits. Unknown fields are refused with a 422 naming them.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewGift {
    /// The recipient's username (any case): an active user other than the caller.
    #[serde(default)]
    #[schema(
        value_type = String,
        required = true,
        min_length = 3,
        max_length = 30,
        pattern = "^[a-zA-Z0-9_]{3,30}$"
    )]
    to_username: Option<String>,
    /// Whole credits, 1 to `GIFT_MAX_AMOUNT` (default 1000): `2.5`, `1.0` and `"10"` are
    /// refused.
    #[serde(default)]
    #[schema(value_type = i32, required = true, minimum = 1)]
    amount: Option<i64>,
    /// Shown to the recipient: at most 280 characters, multi-line, trimmed; `null` or blank
    /// is none.
    #[serde(default)]
    #[schema(max_length = 280)]
    message: Option<String>,
}

impl RequestBody for NewGift {
    /// Checked against the gift settings afterwards: `validate`.
    type Valid = Self;

    fn validate(self, _errors: &mut Vec<FieldError>) -> Self {
        self
    }
}

/// A gift sent.
#[derive(serde::Serialize, ToSchema)]
pub(crate) struct Gift {
    /// Shared by the sender's `gift_sent` and the recipient's `gift_received` entries
    /// (their `related_entity_id`).
    gift_id: String,
    amount: i32,
    /// The recipient's username as they spell it.
    to_username: String,
    message: Option<String>,
    /// The sender's `gift_sent` ledger entry.
    transaction_id: String,
    /// The sender's `current_balance` after the gift.
    balance_after: i32,
}

/// Give credits to another user.
///
/// Moves `amount` of the caller's giftable credits to an active user, as a `gift_sent` entry
/// for the caller and a `gift_received` entry for the recipient, in one transaction. Giftable
/// (`giftable` in `GET /api/v1/credits`): the available credits (not held by jobs) less any
/// debt and less the credits of purchases paid less than `GIFT_HOLD_DAYS` (default 7) days ago,
/// which a refund or a dispute of the payment could still take back; bonuses, gifts received
/// and older purchases are giftable. A sender may give at most `GIFT_DAILY_CAP` credits
/// (default 2000) per daily window (it ends at the local midnight computed when it started; a
/// time zone change applies from the next window), and nothing while one of their payments is
/// disputed. Requires `Idempotency-Key`.
#[utoipa::path(
    post,
    path = "/api/v1/credits/gifts",
    tag = "credits",
    operation_id = "send_gift",
    security(("bearer" = [])),
    params(
        ("Idempotency-Key" = String, Header, description = "Required: 1 to 255 printable ASCII characters, a unique value per gift, reused only to retry it. A retry replays the stored response (with `Idempotent-Replayed: true`) for 24 h."),
    ),
    request_body = NewGift,
    responses(
        (status = 201, description = "The gift, sent.", body = Gift),
        (status = 400, description = "The body is not valid JSON, or the Idempotency-Key is missing or malformed (`/problems/bad-request`).", body = Problem, content_type = "application/problem+json"),
        (status = 401, response = Unauthorized),
        (status = 402, description = "Not enough giftable credits: the problem carries `needed`, `available` (what is giftable now), `giftable`, `not_giftable_yet` (credits of purchases younger than `GIFT_HOLD_DAYS`), `debt_balance` and `next_giftable_at` (when the next young purchase matures, or `null`).", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The caller's account is suspended, banned or erased, or has no username yet (recipients see who sent a gift) (`/problems/forbidden`); or one of the caller's payments is disputed and gifts are frozen until the dispute closes (`/problems/account-frozen`).", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No active user has that username, or the caller has no account yet.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A request with this Idempotency-Key is still in progress.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input, every invalid field named in `errors` (a gift to oneself included), or an Idempotency-Key already used with a different request (`/problems/validation-error`).", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the daily gift cap: the problem carries `daily_cap`, `sent_today` and `remaining_today` (in the sender's daily window) and `resets_at` (when the window ends); `Retry-After` is the time until then.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds until the sender's daily window ends."))),
        BodyRefused,
        ServerFailures,
    )
)]
pub(crate) async fn send(
    State(state): State<AppState>,
    mut account: Account,
    IdempotencyKey(key): IdempotencyKey,
    meta: RequestMeta,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<Response, Refusal> {
    let key = key.ok_or_else(|| {
        ApiError::BadRequest(
            "gifts need an Idempotency-Key header (a unique value per gift, reused only to retry it)"
                .into(),
        )
    })?;
    let request_body = Value::Object(body.clone());
    let gift = validate(body, &state.config.credits)?;

    let (tx, sender) = account.begin_system().await?;
    if let Claim::Replay { status, body } =
        idempotency::claim(&tx, &sender.id, &key, "POST", ROUTE, &request_body).await?
    {
        tx.commit().await?;
        return Ok(Claim::replay(status, body));
    }
    let response = transfer(&tx, &state.config.credits, sender, &gift, &meta).await?;
    idempotency::complete(&tx, &sender.id, &key, StatusCode::CREATED, &response).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(response)).into_response())
}

/// Unknown, suspended, banned and erased recipients look the same: a public
/// profile would not tell them apart either.
fn no_such_recipient(name: &str) -> ApiError {
    ApiError::NotFound(format!("no active user is named {name}"))
}

fn is_active(status: Option<&str>) -> bool {
    matches!(status, None | Some("active"))
}

/// The gift itself, in the caller's transaction (everything the route does
/// after its Idempotency-Key): the locks, the checks, both entries and both
/// activity rows; the JSON answer. Public so that the ledger's property
/// tests race the real thing against the engine's other writers.
pub async fn transfer(
    tx: &Transaction<'_>,
    config: &CreditsConfig,
    sender: &User,
    gift: &GiftRequest,
    meta: &RequestMeta,
) -> Result<Value, Refusal> {
    let recipient_id = find_recipient(tx, sender, gift).await?;
    let (sender_row, recipient_row) = lock_both(tx, sender, &recipient_id, gift).await?;
    let (from_username, to_username) = check_parties(sender_row, recipient_row, gift)?;
    check_giftable(tx, config, sender, gift).await?;

    let gift_id = uuid::Uuid::new_v4().to_string();
    let (sent, received) = post_gift_pair(
        tx,
        sender,
        &recipient_id,
        gift,
        &gift_id,
        &from_username,
        &to_username,
    )
    .await?;
    record_sent(tx, sender, gift, &gift_id, &to_username, &sent, meta).await?;
    record_received(
        tx,
        &recipient_id,
        gift,
        &gift_id,
        &from_username,
        &received,
        meta,
    )
    .await?;

    serde_json::to_value(Gift {
        gift_id,
        amount: gift.amount,
        to_username,
        message: gift.message.clone(),
        transaction_id: sent.transaction_id,
        balance_after: sent.balance_after,
    })
    .map_err(|e| ApiError::internal(e).into())
}

/// The recipient's user id, looked up by name (case-insensitively); 404 if
/// none, 422 if it is the sender.
async fn find_recipient(
    tx: &Transaction<'_>,
    sender: &User,
    gift: &GiftRequest,
) -> Result<String, Refusal> {
    let recipient_id: String = tx
        .query_opt(
            "SELECT id FROM users WHERE lower(username) = lower($1)",
            &[&gift.to_username],
        )
        .await?
        .ok_or_else(|| no_such_recipient(&gift.to_username))?
        .try_get(0)?;
    if recipient_id == sender.id {
        return Err(ApiError::validation("to_username", "is you; gifts go to someone else").into());
    }
    Ok(recipient_id)
}

/// Locks both `users` rows, then both wallets, in user id order; returns the
/// sender's and the recipient's `(username, account_status)` rows.
async fn lock_both(
    tx: &Transaction<'_>,
    sender: &User,
    recipient_id: &str,
    gift: &GiftRequest,
) -> Result<(Option<tokio_postgres::Row>, Option<tokio_postgres::Row>), Refusal> {
    // Both users, then both wallets, in user id order.
    let mut ids = [sender.id.as_str(), recipient_id];
    ids.sort_unstable();
    let mut sender_row = None;
    let mut recipient_row = None;
    for id in ids {
        let row = tx
            .query_opt(
                "SELECT username, account_status FROM users WHERE id = $1 FOR NO KEY UPDATE",
                &[&id],
            )
            .await?;
        if id == sender.id {
            sender_row = row;
        } else {
            recipient_row = row;
        }
    }
    for id in ids {
        let wallet = tx
            .query_opt(
                "SELECT 1 FROM user_credits WHERE user_id = $1 FOR NO KEY UPDATE",
                &[&id],
            )
            .await?;
        if wallet.is_none() {
            return Err(if id == sender.id {
                ApiError::NotFound("no credit account; sign in first".into())
            } else {
                no_such_recipient(&gift.to_username)
            }
            .into());
        }
    }
    Ok((sender_row, recipient_row))
}

/// Checks the locked rows (sender active with a username, recipient still
/// active under the name asked for); returns `(from_username, to_username)`.
fn check_parties(
    sender_row: Option<tokio_postgres::Row>,
    recipient_row: Option<tokio_postgres::Row>,
    gift: &GiftRequest,
) -> Result<(String, String), Refusal> {
    let sender_row =
        sender_row.ok_or_else(|| ApiError::NotFound("no account; sign in first".into()))?;
    let from_username: Option<String> = sender_row.try_get(0)?;
    let sender_status: Option<String> = sender_row.try_get(1)?;
    if !is_active(sender_status.as_deref()) {
        return Err(ApiError::Forbidden("a suspended account cannot send gifts".into()).into());
    }
    let Some(from_username) = from_username else {
        return Err(ApiError::Forbidden(
            "choose a username (PATCH /api/v1/me) before sending gifts: recipients see who sent them".into(),
        )
        .into());
    };
    let recipient_row = recipient_row.ok_or_else(|| no_such_recipient(&gift.to_username))?;
    let to_username: Option<String> = recipient_row.try_get(0)?;
    let recipient_status: Option<String> = recipient_row.try_get(1)?;
    // Re-read under the lock: renamed or suspended since the lookup.
    let to_username = match to_username {
        Some(name)
            if name.eq_ignore_ascii_case(&gift.to_username)
                && is_active(recipient_status.as_deref()) =>
        {
            name
        }
        _ => return Err(no_such_recipient(&gift.to_username).into()),
    };
    Ok((from_username, to_username))
}

/// Refuses a frozen sender (403), one over the daily cap (429) or a gift
/// larger than what is giftable (402).
async fn check_giftable(
    tx: &Transaction<'_>,
    config: &CreditsConfig,
    sender: &User,
    gift: &GiftRequest,
) -> Result<(), Refusal> {
    gifting::refuse_if_frozen(tx, &sender.id, "gifts").await?;
    enforce_daily_cap(tx, config, &sender.id, gift.amount).await?;
    // Under both row locks: nothing can change what is giftable before the gift is posted.
    let giftable = gifting::giftable(tx, &sender.id, config.gift_hold_days)
        .await?
        .ok_or_else(|| ApiError::NotFound("no credit account; sign in first".into()))?;
    if gift.amount > giftable.giftable {
        return Err(not_giftable(gift.amount, &giftable, config.gift_hold_days).into());
    }
    Ok(())
}

/// Posts `gift_sent` (−amount, 402 if short) then `gift_received` (+amount),
/// both related to the one `gift_transfer` id.
async fn post_gift_pair(
    tx: &Transaction<'_>,
    sender: &User,
    recipient_id: &str,
    gift: &GiftRequest,
    gift_id: &str,
    from_username: &str,
    to_username: &str,
) -> Result<(ledger::Posted, ledger::Posted), Refusal> {
    let sent = ledger::post(
        tx,
        &sender.id,
        Entry::new("gift_sent", -gift.amount, format!("Gift to {to_username}"))
            .related("gift_transfer", gift_id.to_owned())
            .metadata(json!({"to_username": to_username, "message": gift.message})),
    )
    .await
    .map_err(|e| match e {
        LedgerError::Insufficient { needed, available } => Refusal::from(
            DetailedProblem::insufficient(needed, available, "this gift"),
        ),
        other => other.into(),
    })?;
    let received = ledger::post(
        tx,
        recipient_id,
        Entry::new(
            "gift_received",
            gift.amount,
            format!("Gift from {from_username}"),
        )
        .related("gift_transfer", gift_id.to_owned())
        .metadata(json!({"from_username": from_username, "message": gift.message})),
    )
    .await?;
    Ok((sent, received))
}

/// Logs the sender's side of the gift (`gift_sent`), with the request's meta.
async fn record_sent(
    tx: &Transaction<'_>,
    sender: &User,
    gift: &GiftRequest,
    gift_id: &str,
    to_username: &str,
    sent: &ledger::Posted,
    meta: &RequestMeta,
) -> Result<(), Refusal> {
    activity::record(
        tx,
        Activity {
            user_id: Some(&sender.id),
            activity_type: crate::activity::ActivityType::GiftSent,
            entity_type: Some("gift_transfer"),
            entity_id: Some(gift_id),
            metadata: json!({"amount": gift.amount, "to_username": to_username,
                             "transaction_id": sent.transaction_id}),
        },
        meta,
    )
    .await?;
    Ok(())
}

/// Logs the recipient's side of the gift (`gift_received`), with only the
/// request id from the meta.
async fn record_received(
    tx: &Transaction<'_>,
    recipient_id: &str,
    gift: &GiftRequest,
    gift_id: &str,
    from_username: &str,
    received: &ledger::Posted,
    meta: &RequestMeta,
) -> Result<(), Refusal> {
    // The recipient's row records the request, not the sender's address or browser.
    let recipient_meta = RequestMeta {
        request_id: meta.request_id.clone(),
        ..RequestMeta::default()
    };
    activity::record(
        tx,
        Activity {
            user_id: Some(recipient_id),
            activity_type: crate::activity::ActivityType::GiftReceived,
            entity_type: Some("gift_transfer"),
            entity_id: Some(gift_id),
            metadata: json!({"amount": gift.amount, "from_username": from_username,
                             "transaction_id": received.transaction_id}),
        },
        &recipient_meta,
    )
    .await?;
    Ok(())
}

/// 402 for a gift larger than what is giftable, saying what is kept back and
/// until when.
fn not_giftable(amount: i32, giftable: &Giftable, hold_days: i32) -> DetailedProblem {
    let needed = i64::from(amount);
    let available = i64::from(giftable.giftable);
    let mut detail = format!("this gift needs {needed} giftable credits and you have {available}");
    if giftable.not_giftable_yet > 0 {
        detail.push_str(&format!(
            "; {} credits of purchases paid in the last {hold_days} days cannot be gifted yet",
            giftable.not_giftable_yet
        ));
        if let Some(at) = giftable.next_giftable_at {
            detail.push_str(&format!(
                " (the next become giftable at {})",
                at.to_rfc3339()
            ));
        }
    }
    if giftable.debt_balance > 0 {
        detail.push_str(&format!(
            "; {} credits are owed after a refund or dispute and are repaid first",
            giftable.debt_balance
        ));
    }
    DetailedProblem::new(
        ApiError::PaymentRequired {
            detail: detail.clone(),
            needed,
            available,
        },
        detail,
        json!({
            "needed": needed,
            "available": available,
            "giftable": giftable.giftable,
            "not_giftable_yet": giftable.not_giftable_yet,
            "debt_balance": giftable.debt_balance,
            "next_giftable_at": giftable.next_giftable_at,
        }),
    )
}

/// At most `gift_daily_cap` credits sent per daily window of the sender
/// ([`ledger::daily_window`]): the sum of their `gift_sent` entries since the
/// window started. Over it: 429 with what is left in the window, when it ends
/// (`resets_at`) and `Retry-After` until then. The window ends where it was
/// set to end when it started, so a time zone change cannot start a new
/// allowance of gifts. The sender's row lock serialises their gifts, so the
/// sum cannot be raced past the cap.
async fn enforce_daily_cap(
    tx: &Transaction<'_>,
    config: &CreditsConfig,
    sender_id: &str,
    amount: i32,
) -> Result<(), Refusal> {
    let window = ledger::daily_window(tx, sender_id).await?;
    let row = tx
        .query_one(
            "SELECT coalesce(sum(-amount), 0)::int8, ceil(extract(epoch FROM $3::timestamptz - now()))::int8 \
             FROM credit_transactions \
             WHERE user_id = $1 AND transaction_type = 'gift_sent' AND status = 'completed' \
               AND created_at >= $2",
            &[&sender_id, &window.starts_at, &window.ends_at],
        )
        .await?;
    let sent_today: i64 = row.try_get(0)?;
    let until_reset: i64 = row.try_get(1)?;
    let cap = i64::from(config.gift_daily_cap);
    let remaining = (cap - sent_today).max(0);
    if i64::from(amount) <= remaining {
        return Ok(());
    }
    let detail = format!(
        "gifts are capped at {cap} credits per day; you have sent {sent_today} in your daily window and can \
         send {remaining} more until it ends at {}",
        window.ends_at.to_rfc3339()
    );
    Err(DetailedProblem::new(
        ApiError::TooManyRequests {
            detail: detail.clone(),
            retry_after: until_reset.max(1) as u64,
        },
        detail,
        json!({"daily_cap": cap, "sent_today": sent_today, "remaining_today": remaining,
               "resets_at": window.ends_at}),
    )
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("not an object"),
        }
    }

    fn fields_of(result: Result<GiftRequest, ApiError>) -> Vec<String> {
        match result {
            Err(ApiError::Validation { errors, .. }) => {
                errors.into_iter().map(|e| e.field).collect()
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_gift() {
        let config = CreditsConfig::default();
        let gift = validate(
            body(json!({"to_username": "Bob_1", "amount": 25, "message": "  happy birthday\n "})),
            &config,
        )
        .unwrap();
        assert_eq!(
            gift,
            GiftRequest {
                to_username: "Bob_1".into(),
                amount: 25,
                message: Some("happy birthday".into())
            }
        );
        let bare = validate(body(json!({"to_username": "bob", "amount": 1000})), &config).unwrap();
        assert_eq!(bare.message, None);
        let blank = validate(
            body(json!({"to_username": "bob", "amount": 1, "message": "  "})),
            &config,
        );
        assert_eq!(blank.unwrap().message, None);
    }

    #[test]
    fn every_bad_field_is_named() {
        let config = CreditsConfig::default();
        for (value, field) in [
            (json!({"amount": 5}), "to_username"),
            (json!({"to_username": null, "amount": 5}), "to_username"),
            (json!({"to_username": 7, "amount": 5}), "to_username"),
            (
                json!({"to_username": "no spaces", "amount": 5}),
                "to_username",
            ),
            (json!({"to_username": "bo", "amount": 5}), "to_username"),
            (
                json!({"to_username": "bob\u{0}", "amount": 5}),
                "to_username",
            ),
            (json!({"to_username": "bob"}), "amount"),
            (json!({"to_username": "bob", "amount": 0}), "amount"),
            (json!({"to_username": "bob", "amount": -5}), "amount"),
            (json!({"to_username": "bob", "amount": 1001}), "amount"),
            (json!({"to_username": "bob", "amount": 2.5}), "amount"),
            (json!({"to_username": "bob", "amount": 1.0}), "amount"),
            (json!({"to_username": "bob", "amount": "10"}), "amount"),
            (json!({"to_username": "bob", "amount": 1e30}), "amount"),
            (json!({"to_username": "bob", "amount": u64::MAX}), "amount"),
            (json!({"to_username": "bob", "amount": true}), "amount"),
            (
                json!({"to_username": "bob", "amount": 5, "message": "x".repeat(281)}),
                "message",
            ),
            (
                json!({"to_username": "bob", "amount": 5, "message": "bell\u{7}"}),
                "message",
            ),
            (
                json!({"to_username": "bob", "amount": 5, "message": ["hi"]}),
                "message",
            ),
            (
                json!({"to_username": "bob", "amount": 5, "from": "x"}),
                "from",
            ),
        ] {
            assert_eq!(
                fields_of(validate(body(value.clone()), &config)),
                [field],
                "{value}"
            );
        }
        assert_eq!(
            fields_of(validate(body(json!({"message": 1})), &config)),
            ["message", "to_username", "amount"]
        );
        // 280 characters (not bytes) are fine.
        let long = "é".repeat(280);
        assert!(
            validate(
                body(json!({"to_username": "bob", "amount": 5, "message": long})),
                &config
            )
            .is_ok()
        );
    }
}
