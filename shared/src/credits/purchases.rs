//! Credit pack purchases through Stripe Checkout, credited exactly once.
//!
//! | route | what |
//! |---|---|
//! | `POST /api/v1/credits/purchases` | `{package_id}` with a required `Idempotency-Key`: a pending order and a Checkout Session; 201 `{order, checkout_url}` |
//! | `GET /api/v1/credits/purchases` | the caller's orders, newest first, cursor-paginated |
//! | `POST /api/v1/credits/webhooks/stripe` | Stripe's signed events (public; see [`webhook`]) |
//!
//! Creating a purchase is three steps, so that no database transaction stays
//! open while Stripe is called: (1) claim the idempotency key and insert the
//! pending order, commit; (2) create the Checkout Session (the order id is
//! Stripe's idempotency key); (3) store the session and the response under the
//! key, commit. If step 2 fails the order is marked failed and the key is
//! forgotten, so the client may retry with the same key. A duplicate arriving
//! during step 2 finds the key claimed but unanswered: 409.
//!
//! Credits move only in the webhook, once the payment is confirmed.

pub mod stripe;
pub mod webhook;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio_postgres::{GenericClient, Row};
use utoipa::ToSchema;

use self::stripe::{CheckoutRequest, CheckoutSession, StripeError};
use crate::credits::offers::{self, Offer};
use crate::credits::{engine, gifting};
use crate::kernel::config::{PaymentProvider, PaymentsConfig};
use crate::kernel::error::{ApiError, PROBLEM_JSON, Problem};
use crate::users::User;
use crate::users::account::Account;
use crate::web::http::ApiQuery;
use crate::web::idempotency::{self, Claim, IdempotencyKey};
use crate::web::input::{RequestBody, decode};
use crate::web::pagination::{self, Page, PageQuery, TimeKey};
use crate::web::responses::NoAccountYet;
use crate::web::responses::{BodyRefused, ServerFailures, SignedIn};
use crate::web::responses::{InternalError, Unauthorized, ValidationFailed};
use crate::web::state::AppState;

/// The route pattern idempotency keys are stored under.
const PURCHASES_ROUTE: &str = "/api/v1/credits/purchases";

use crate::kernel::error::PAYMENT_PROVIDER_PROBLEM;

pub fn router() -> Router<AppState> {
    // The path is spelled out (it is `PURCHASES_ROUTE`): shared/tests/openapi.rs finds the
    // declared routes by their string literals.
    Router::new()
        .route(
            "/api/v1/credits/purchases",
            post(create_purchase).get(list_purchases),
        )
        .route(
            "/api/v1/credits/webhooks/stripe",
            post(webhook::stripe_webhook),
        )
}

/// A `purchase_orders` row as its buyer sees it. `price_usd` is a decimal
/// string (`"19.99"`), never a float.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PurchaseOrder {
    pub id: String,
    pub user_id: Option<String>,
    pub package_id: Option<String>,
    pub credit_amount: i32,
    pub bonus_credits: i32,
    pub price_usd: String,
    pub price_currency: String,
    /// `pending` until the payment is confirmed, then `paid` (credited); `failed` (not paid,
    /// expired, or the checkout could not start); `refunded` once fully refunded.
    pub status: String,
    /// `stripe` (`local` on the local stack).
    pub provider: String,
    pub checkout_session_id: Option<String>,
    pub checkout_url: Option<String>,
    pub payment_intent_id: Option<String>,
    pub paid_at: Option<DateTime<Utc>>,
    pub failed_at: Option<DateTime<Utc>>,
    pub refunded_at: Option<DateTime<Utc>>,
    /// The refunded share of the credits (and bonus) so far.
    pub refunded_credits: i32,
    /// The share of the credits (and bonus) of the order's open and lost disputes. The order
    /// has taken back `min(credit_amount + bonus_credits, refunded_credits + disputed_credits)`.
    pub disputed_credits: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The column list matching [`PurchaseOrder::from_row`].
pub const ORDER_COLUMNS: &str = "id, user_id, package_id, credit_amount, bonus_credits, \
    price_usd::text AS price_usd, price_currency, status, provider, checkout_session_id, \
    checkout_url, payment_intent_id, paid_at, failed_at, refunded_at, refunded_credits, \
    disputed_credits, created_at, updated_at";

impl PurchaseOrder {
    pub fn from_row(row: &Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            user_id: row.try_get("user_id")?,
            package_id: row.try_get("package_id")?,
            credit_amount: row.try_get("credit_amount")?,
            bonus_credits: row.try_get("bonus_credits")?,
            price_usd: row.try_get("price_usd")?,
            price_currency: row.try_get("price_currency")?,
            status: row.try_get("status")?,
            provider: row.try_get("provider")?,
            checkout_session_id: row.try_get("checkout_session_id")?,
            checkout_url: row.try_get("checkout_url")?,
            payment_intent_id: row.try_get("payment_intent_id")?,
            paid_at: row.try_get("paid_at")?,
            failed_at: row.try_get("failed_at")?,
            refunded_at: row.try_get("refunded_at")?,
            refunded_credits: row.try_get("refunded_credits")?,
            disputed_credits: row.try_get("disputed_credits")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }

    /// The price in the currency's smallest unit (cents for USD).
    pub fn minor_units(&self) -> Result<i64, String> {
        crate::credits::money::minor_units(&self.price_usd, &self.price_currency)
    }
}

/// An order by id (the local checkout page reads it).
pub async fn find_order(
    client: &impl GenericClient,
    order_id: &str,
) -> Result<Option<PurchaseOrder>, ApiError> {
    if !is_plain_id(order_id) {
        return Ok(None);
    }
    let row = client
        .query_opt(
            &format!("SELECT {ORDER_COLUMNS} FROM purchase_orders WHERE id = $1"),
            &[&order_id],
        )
        .await?;
    Ok(row.as_ref().map(PurchaseOrder::from_row).transpose()?)
}

/// Ids that came from outside (paths, event payloads) are looked up only if
/// they could be ids at all: short, no control characters (a NUL would be a
/// database error, not a miss).
fn is_plain_id(id: &str) -> bool {
    (1..=255).contains(&id.len()) && !id.chars().any(char::is_control)
}

// ------------------------------------------------------------------------------------------
// POST /api/v1/credits/purchases
// ------------------------------------------------------------------------------------------

/// A purchase of a credit package. Unknown fields are refused with a 422.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PurchaseRequest {
    /// A package on offer to the caller now (see `GET /api/v1/credits/packages`).
    #[serde(default)]
    #[schema(value_type = String, required = true)]
    package_id: Option<String>,
}

impl RequestBody for PurchaseRequest {
    /// The package's id.
    type Valid = String;

    fn validate(self, errors: &mut Vec<crate::kernel::error::FieldError>) -> String {
        crate::web::input::required("package_id", self.package_id, errors).unwrap_or_default()
    }
}

// Documents the object `create_purchase` builds with `json!`; nothing builds one.
/// A purchase started: pay at `checkout_url`; the credits arrive once the payment is
/// confirmed.
#[derive(Serialize, ToSchema)]
pub(crate) struct PurchaseStarted {
    /// The pending order.
    order: PurchaseOrder,
    /// The payment provider's checkout page.
    checkout_url: String,
}

/// What can go wrong creating a purchase: an API problem, or the payment
/// provider failing (503 when worth retrying, else 502).
#[derive(Debug)]
pub(crate) enum PurchaseError {
    Api(ApiError),
    Provider(StripeError),
}

impl From<ApiError> for PurchaseError {
    fn from(err: ApiError) -> Self {
        Self::Api(err)
    }
}

impl From<tokio_postgres::Error> for PurchaseError {
    fn from(err: tokio_postgres::Error) -> Self {
        Self::Api(err.into())
    }
}

impl From<deadpool_postgres::PoolError> for PurchaseError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        Self::Api(err.into())
    }
}

impl IntoResponse for PurchaseError {
    fn into_response(self) -> Response {
        match self {
            Self::Api(err) => err.into_response(),
            Self::Provider(StripeError::Unavailable(_)) => ApiError::ServiceUnavailable {
                detail: "the payment provider is unavailable; retry shortly".into(),
                retry_after: 5,
            }
            .into_response(),
            Self::Provider(_) => bad_gateway(
                "the payment provider refused to start a checkout; nothing was charged, try again later",
            ),
        }
    }
}

/// A 502 problem: `ApiError` has no bad-gateway variant, and only this route
/// talks to an upstream whose refusal is neither the client's fault nor ours.
fn bad_gateway(detail: &str) -> Response {
    let body = json!({
        "type": PAYMENT_PROVIDER_PROBLEM,
        "title": "Payment provider error",
        "status": 502,
        "detail": detail,
    });
    let mut response = (StatusCode::BAD_GATEWAY, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

/// Buy a credit package.
///
/// Creates a pending order for a package on offer to the caller's tier now and a Stripe
/// Checkout Session for it. Nothing is charged or credited here: the credits are added when
/// Stripe confirms the payment (`POST /api/v1/credits/webhooks/stripe`). If the checkout cannot
/// be started the order fails and the Idempotency-Key may be used again. Refused (403) while
/// one of the caller's payments is disputed. Requires `Idempotency-Key`.
#[utoipa::path(
    post,
    path = "/api/v1/credits/purchases",
    tag = "credits",
    operation_id = "create_purchase",
    security(("bearer" = [])),
    params(
        ("Idempotency-Key" = String, Header, description = "Required: 1 to 255 printable ASCII characters, a unique value per purchase. A retry replays the stored response (with `Idempotent-Replayed: true`) for 24 h."),
    ),
    request_body = PurchaseRequest,
    responses(
        (status = 201, description = "The pending order and where to pay.", body = PurchaseStarted),
        (status = 400, description = "The body is not valid JSON, or the Idempotency-Key is missing or malformed (`/problems/bad-request`).", body = Problem, content_type = "application/problem+json"),
        (status = 401, response = Unauthorized),
        (status = 403, description = "The package is not offered to the caller's tier, or the account is banned or erased (`/problems/forbidden`); or one of the caller's payments is disputed, and purchases are frozen until the dispute closes (`/problems/account-frozen`; the Idempotency-Key stays unused).", body = Problem, content_type = "application/problem+json"),
        (status = 404, response = NoAccountYet),
        (status = 409, description = "A request with this Idempotency-Key is still in progress (its checkout is being created), or the package is misconfigured and cannot be bought now.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input: a missing or unknown field, a package that is unknown, withdrawn or outside its promotion window, or an Idempotency-Key already used with a different request (`/problems/validation-error`).", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The payment provider refused to start a checkout (`/problems/payment-provider-error`); nothing was charged, the order failed, and the Idempotency-Key may be used again.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Purchases are not configured (`Retry-After: 60`), the payment provider is unavailable (`Retry-After: 5`; the order failed and the Idempotency-Key may be used again), or the database is briefly unavailable.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
        (status = 500, response = InternalError),
        BodyRefused,
    )
)]
pub(crate) async fn create_purchase(
    State(state): State<AppState>,
    mut account: Account,
    IdempotencyKey(key): IdempotencyKey,
    crate::web::http::ApiJson(body): crate::web::http::ApiJson<Map<String, Value>>,
) -> Result<Response, PurchaseError> {
    let key = key.ok_or_else(|| {
        ApiError::BadRequest(
            "this route requires an Idempotency-Key header (1 to 255 printable ASCII characters)"
                .into(),
        )
    })?;
    let request_body = Value::Object(body.clone());
    let package_id = decode::<PurchaseRequest>(body)?;
    if !is_plain_id(&package_id) {
        return Err(ApiError::validation("package_id", "is not a package on offer").into());
    }
    let payments = &state.config.payments;
    let secret_key = stripe_secret_key(payments)?;
    let (client, user) = account.parts();
    let started = Started {
        user,
        key: &key,
        request_body: &request_body,
    };
    let (order, package) = match open_order(client, &started, &package_id, payments).await? {
        Opened::Replay(status, body) => return Ok(Claim::replay(status, body)),
        Opened::Order(opened) => *opened,
    };
    let session = checkout_session(&state, secret_key.as_deref(), &order, &package).await;
    record_checkout(client, &started, &order, &package, session).await
}

/// The Stripe key when Stripe is the provider (a 503 when it is not set), `None` locally.
fn stripe_secret_key(payments: &PaymentsConfig) -> Result<Option<String>, ApiError> {
    match payments.provider {
        PaymentProvider::Stripe => payments.stripe_secret_key.clone().map(Some).ok_or_else(|| {
            tracing::error!("STRIPE_SECRET_KEY is not set; purchases are unavailable");
            ApiError::ServiceUnavailable {
                detail: "purchases are not available right now".into(),
                retry_after: 60,
            }
        }),
        PaymentProvider::Local => Ok(None),
    }
}

/// Who is buying, under which Idempotency-Key, with which request.
struct Started<'a> {
    user: &'a User,
    key: &'a str,
    request_body: &'a Value,
}

/// The first step's outcome: a replayed answer, or a new pending order.
enum Opened {
    Replay(StatusCode, Value),
    Order(Box<(PurchaseOrder, Offer)>),
}

/// Step 1, in one transaction: claim the key and create the pending order.
async fn open_order(
    client: &mut tokio_postgres::Client,
    started: &Started<'_>,
    package_id: &str,
    payments: &PaymentsConfig,
) -> Result<Opened, ApiError> {
    let user = started.user;
    let (tier, _) = engine::tier_of(user);
    let tx = client.transaction().await?;
    if let Claim::Replay { status, body } = idempotency::claim(
        &tx,
        &user.id,
        started.key,
        "POST",
        PURCHASES_ROUTE,
        started.request_body,
    )
    .await?
    {
        tx.commit().await?;
        return Ok(Opened::Replay(status, body));
    }
    gifting::refuse_if_frozen(&tx, &user.id, "purchases").await?;
    let package = offered_package(&tx, package_id, tier).await?;
    let provider = match payments.provider {
        PaymentProvider::Stripe => "stripe",
        PaymentProvider::Local => "local",
    };
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO purchase_orders (user_id, package_id, credit_amount, bonus_credits, \
                   price_usd, price_currency, provider, metadata) \
                 VALUES ($1, $2, $3, $4, $5::text::numeric, $6, $7, $8) RETURNING {ORDER_COLUMNS}"
            ),
            &[
                &user.id,
                &package.id,
                &package.credit_amount,
                &package.bonus_credits,
                &package.charged_price,
                &package.price_currency,
                &provider,
                &json!({
                    "package_name": package.name,
                    "unit_amount": package.charged_amount,
                    "list_price": package.price_usd,
                    "discount_percentage": package.discount_percentage,
                }),
            ],
        )
        .await?;
    let order = PurchaseOrder::from_row(&row)?;
    tx.commit().await?;
    Ok(Opened::Order(Box::new((order, package))))
}

/// Step 2, outside any transaction: the provider's checkout session.
async fn checkout_session(
    state: &AppState,
    secret_key: Option<&str>,
    order: &PurchaseOrder,
    package: &Offer,
) -> Result<CheckoutSession, StripeError> {
    let payments = &state.config.payments;
    match secret_key {
        None => Ok(local_session(&state.config.auth.issuer, &order.id)),
        Some(secret_key) => {
            let currency = package.price_currency.to_ascii_lowercase();
            stripe::create_checkout_session(
                &payments.stripe_api_base,
                secret_key,
                &CheckoutRequest {
                    order_id: &order.id,
                    product_name: &package.name,
                    currency: &currency,
                    unit_amount: package.charged_amount,
                    success_url: &payments.checkout_success_url,
                    cancel_url: &payments.checkout_cancel_url,
                },
            )
            .await
        }
    }
}

/// Step 3, in one transaction: store the session and the answer, or fail the
/// order and let go of the key (so that it may be used again).
async fn record_checkout(
    client: &mut tokio_postgres::Client,
    started: &Started<'_>,
    order: &PurchaseOrder,
    package: &Offer,
    session: Result<CheckoutSession, StripeError>,
) -> Result<Response, PurchaseError> {
    let user_id = &started.user.id;
    let tx = client.transaction().await?;
    match session {
        Err(err) => {
            tracing::warn!(order_id = %order.id, error = %err, "creating the checkout session failed");
            tx.execute(
                "UPDATE purchase_orders SET status = 'failed', failed_at = now(), \
                   metadata = metadata || jsonb_build_object('checkout_error', $2::text) \
                 WHERE id = $1 AND status = 'pending'",
                &[&order.id, &err.to_string()],
            )
            .await?;
            idempotency::forget(&tx, user_id, started.key).await?;
            tx.commit().await?;
            Err(PurchaseError::Provider(err))
        }
        Ok(session) => {
            let row = tx
                .query_one(
                    &format!(
                        "UPDATE purchase_orders SET checkout_session_id = $2, checkout_url = $3 \
                         WHERE id = $1 RETURNING {ORDER_COLUMNS}"
                    ),
                    &[&order.id, &session.id, &session.url],
                )
                .await?;
            let order = PurchaseOrder::from_row(&row)?;
            let order_id = order.id.clone();
            let body = serde_json::to_value(PurchaseStarted {
                order,
                checkout_url: session.url,
            })
            .map_err(ApiError::internal)?;
            idempotency::complete(&tx, user_id, started.key, StatusCode::CREATED, &body).await?;
            tx.commit().await?;
            tracing::info!(order_id = %order_id, package_id = %package.id, "purchase started");
            Ok((StatusCode::CREATED, Json(body)).into_response())
        }
    }
}

/// The local provider's "session": the local stack's own checkout page. The
/// local stack is its own token issuer, so the issuer URL is its base URL.
fn local_session(issuer: &str, order_id: &str) -> CheckoutSession {
    let base = issuer.trim_end_matches('/');
    CheckoutSession {
        id: format!("cs_local_{order_id}"),
        url: format!("{base}/dev/checkout/{order_id}"),
    }
}

/// The package, if the caller may buy it now: available, inside its promotion
/// window (when it has one), offered to the caller's tier, with a price that
/// converts exactly to the currency's smallest unit.
async fn offered_package(
    client: &impl GenericClient,
    package_id: &str,
    tier: crate::kernel::tier::Tier,
) -> Result<Offer, ApiError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {}, {} AS available, {} AS in_window, {} AS for_tier \
                 FROM credit_packages WHERE id = $1",
                offers::COLUMNS,
                offers::AVAILABLE,
                offers::IN_WINDOW,
                offers::for_tier(2)
            ),
            &[&package_id, &tier],
        )
        .await?;
    // Unknown and withdrawn packages look the same: hidden ones stay hidden.
    let not_on_offer = || ApiError::validation("package_id", "is not a package on offer");
    let row = row.ok_or_else(not_on_offer)?;
    if !row.try_get::<_, bool>("available")? {
        return Err(not_on_offer());
    }
    if !row.try_get::<_, bool>("in_window")? {
        return Err(ApiError::validation(
            "package_id",
            "is a promotion that is not running now",
        ));
    }
    if !row.try_get::<_, bool>("for_tier")? {
        return Err(ApiError::Forbidden(format!(
            "this package is not offered to the {tier} tier"
        )));
    }
    Offer::from_row(&row)?.map_err(|why| {
        tracing::error!(package_id = %package_id, reason = %why, "credit package cannot be sold");
        ApiError::Conflict("this package cannot be bought right now".into())
    })
}

// ------------------------------------------------------------------------------------------
// GET /api/v1/credits/purchases
// ------------------------------------------------------------------------------------------

/// The caller's purchase orders, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/credits/purchases",
    tag = "credits",
    operation_id = "list_purchases",
    security(("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "A page of the caller's orders.", body = Page<PurchaseOrder>),
        (status = 422, response = ValidationFailed),
        SignedIn,
        ServerFailures,
    )
)]
pub(crate) async fn list_purchases(
    account: Account,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page<PurchaseOrder>>, ApiError> {
    let limit = pagination::limit(query.limit)?;
    let after = pagination::decode_time_key(query.cursor.as_deref())?;
    let client = account.client();
    let user = &account.user;
    let rows = client
        .query(
            &format!(
                "SELECT {ORDER_COLUMNS} FROM purchase_orders \
                 WHERE user_id = $1 \
                   AND ($2::timestamptz IS NULL OR (created_at, id) < ($2::timestamptz, $3::text)) \
                 ORDER BY created_at DESC, id DESC LIMIT $4"
            ),
            &[
                &user.id,
                &after.as_ref().map(|k| k.at),
                &after.as_ref().map(|k| k.id.as_str()),
                &(limit + 1),
            ],
        )
        .await?;
    let orders = rows
        .iter()
        .map(PurchaseOrder::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(pagination::page(orders, limit, |o| TimeKey {
        at: o.created_at,
        id: o.id.clone(),
    })))
}
