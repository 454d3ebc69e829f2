//! The caller's own credit routes (the `credits` function).
//!
//! | route | auth | what |
//! |---|---|---|
//! | `GET /api/v1/credits` | token | balance, held, available, debt, the daily window's allowances and when it ends, streak, totals |
//! | `GET /api/v1/credits/transactions` | token | the caller's ledger, newest first, keyset-paginated, `?transaction_type=` |
//! | `GET /api/v1/credits/packages` | optional | packages on sale now for the caller's tier |
//! | `GET /api/v1/pricing` | optional | what each priced endpoint costs the caller now, their limits and usage |
//! | `POST /api/v1/credits/daily-bonus` | token | once per daily window; streaks; optional `Idempotency-Key` |
//! | `POST /api/v1/credits/gifts` | token | giftable credits to another user; `Idempotency-Key` required |
//!
//! Credit-moving work runs as the system role in one transaction that takes
//! row locks in the engine's order: `users` rows (by id), then `user_credits`
//! rows (by user id), then ledger posts.

pub(crate) mod bonus;
pub mod gifts;
pub(crate) mod history;
pub(crate) mod packages;
pub(crate) mod price_list;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_postgres::GenericClient;
use utoipa::ToSchema;

use super::ledger::LedgerError;
use crate::kernel::error::{ApiError, PROBLEM_JSON, Problem};
use crate::users::account::Account;
use crate::web::http::ApiQuery;
use crate::web::responses::ValidationFailed;
use crate::web::responses::{Authenticated, ServerFailures};
use crate::web::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/credits", get(get_balance))
        .route("/api/v1/credits/transactions", get(history::list))
        .route("/api/v1/credits/packages", get(packages::list))
        .route("/api/v1/pricing", get(price_list::show))
        .route("/api/v1/credits/daily-bonus", post(bonus::claim))
        .route("/api/v1/credits/gifts", post(gifts::send))
}

/// Routes without query parameters still refuse unknown ones (422), like every list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct NoQuery {}

/// `GET /api/v1/credits`: every field of `Balance`, plus the daily bonus as it stands.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BalanceView {
    #[serde(flatten)]
    balance: super::Balance,
    /// The caller's local date now, in their current `timezone`. The daily counters and bonus
    /// follow the daily window (`daily_reset_date`, `daily_resets_at`), which a time zone
    /// change does not move: the new zone applies from the next window.
    local_date: NaiveDate,
    /// Whether `POST /api/v1/credits/daily-bonus` would credit something now.
    daily_bonus_available: bool,
    /// What claiming the daily bonus now would credit (`null` once claimed in this window).
    daily_bonus_amount: Option<i32>,
}

/// The caller's balance.
///
/// Balances, what jobs hold and what is available, debt, what may be gifted now (`giftable`:
/// purchases younger than `GIFT_HOLD_DAYS` are kept back, see `not_giftable_yet` and
/// `next_giftable_at`), whether a disputed payment froze gifts and purchases (`frozen`), the
/// free generations and allowance of the caller's daily window (after the lazy reset), when
/// that window ends (`daily_resets_at`: the local midnight computed when it started; a time
/// zone change applies from the next window), the daily bonus streak and whether this window's
/// bonus is open, and lifetime totals. Takes no query parameters.
#[utoipa::path(
    get,
    path = "/api/v1/credits",
    tag = "credits",
    operation_id = "get_credits",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's balance.", body = BalanceView),
        (status = 404, description = "No account (or no credit account) yet: sign in first.", body = Problem, content_type = "application/problem+json"),
        (status = 422, response = ValidationFailed),
        Authenticated,
        ServerFailures,
    )
)]
pub(crate) async fn get_balance(
    State(state): State<AppState>,
    mut account: Account,
    ApiQuery(NoQuery {}): ApiQuery<NoQuery>,
) -> Result<Json<BalanceView>, ApiError> {
    // The lazy daily reset writes: a transaction, as the system role.
    let (tx, user) = account.begin_system().await?;
    let balance = super::balance(&tx, &user.id, state.config.credits.gift_hold_days).await?;
    let local_date = local_today(&tx, user.timezone.as_deref()).await?;
    // Whether the last claim's window is the one right before this window.
    let follows_last_claim: bool = tx
        .query_one(
            "SELECT coalesce(last_daily_bonus_window_end = $2, false) FROM user_credits WHERE user_id = $1",
            &[&user.id, &balance.daily_window_started_at],
        )
        .await?
        .try_get(0)?;
    tx.commit().await?;
    let next_streak = bonus::next_streak(
        balance.last_daily_bonus_date,
        balance.daily_login_streak,
        balance.daily_reset_date,
        follows_last_claim,
    );
    Ok(Json(BalanceView {
        daily_bonus_available: next_streak.is_some(),
        daily_bonus_amount: next_streak.and_then(|s| bonus::amount(&state.config.credits, s)),
        local_date,
        balance,
    }))
}

/// The user's local date now (UTC for an unset or unknown zone, as the SQL does).
async fn local_today(
    client: &impl GenericClient,
    zone: Option<&str>,
) -> Result<NaiveDate, ApiError> {
    Ok(client
        .query_one("SELECT user_local_date($1)", &[&zone])
        .await?
        .try_get(0)?)
}

/// A refusal whose problem body carries more than [`ApiError`] renders: the
/// 402's `needed`/`available`, the gift cap's `remaining_today`, when the next
/// daily bonus opens. Status, `type`, `title` and headers (`Retry-After`) come
/// from `error`; `detail` and the extra members from here.
#[derive(Debug)]
pub struct DetailedProblem {
    error: ApiError,
    detail: String,
    extra: Map<String, Value>,
    retry_after: Option<u64>,
}

impl DetailedProblem {
    fn new(error: ApiError, detail: impl Into<String>, extra: Value) -> Self {
        Self {
            error,
            detail: detail.into(),
            extra: match extra {
                Value::Object(map) => map,
                _ => Map::new(),
            },
            retry_after: None,
        }
    }

    fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// 402 with what was needed and what is available.
    fn insufficient(needed: i64, available: i64, what: &str) -> Self {
        let detail = format!("{what} needs {needed} available credits and you have {available}");
        Self::new(
            ApiError::PaymentRequired {
                detail: detail.clone(),
                needed,
                available,
            },
            detail,
            serde_json::json!({"needed": needed, "available": available}),
        )
    }
}

impl IntoResponse for DetailedProblem {
    fn into_response(self) -> Response {
        let status = self.error.status();
        let (slug, title) = self.error.kind();
        let mut body = Map::new();
        body.insert("type".into(), Value::String(format!("/problems/{slug}")));
        body.insert("title".into(), Value::String(title.into()));
        body.insert("status".into(), Value::from(status.as_u16()));
        body.insert("detail".into(), Value::String(self.detail));
        for (key, value) in self.extra {
            body.entry(key).or_insert(value);
        }
        // The error's own response supplies its headers (Retry-After, ...).
        let mut headers = self.error.into_response().headers().clone();
        headers.remove(header::CONTENT_LENGTH);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        let mut response = (status, Json(Value::Object(body))).into_response();
        for (name, value) in &headers {
            response.headers_mut().insert(name, value.clone());
        }
        response
    }
}

/// Why a credit-moving route refused: a plain problem or a detailed one.
#[derive(Debug)]
pub enum Refusal {
    Plain(ApiError),
    Detailed(Box<DetailedProblem>),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::Plain(error) => error.into_response(),
            Self::Detailed(problem) => problem.into_response(),
        }
    }
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Self::Plain(error)
    }
}

impl From<DetailedProblem> for Refusal {
    fn from(problem: DetailedProblem) -> Self {
        Self::Detailed(Box::new(problem))
    }
}

impl From<tokio_postgres::Error> for Refusal {
    fn from(error: tokio_postgres::Error) -> Self {
        Self::Plain(error.into())
    }
}

impl From<deadpool_postgres::PoolError> for Refusal {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        Self::Plain(error.into())
    }
}

impl From<LedgerError> for Refusal {
    fn from(error: LedgerError) -> Self {
        match error {
            LedgerError::Insufficient { needed, available } => {
                DetailedProblem::insufficient(needed, available, "this").into()
            }
            other => Self::Plain(other.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;

    async fn render(response: Response) -> (u16, axum::http::HeaderMap, Value) {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, headers, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn payment_required_carries_needed_and_available() {
        let refusal: Refusal = LedgerError::Insufficient {
            needed: 10,
            available: 3,
        }
        .into();
        let (status, headers, body) = render(refusal.into_response()).await;
        assert_eq!(status, 402);
        assert_eq!(headers[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(body["type"], "/problems/insufficient-credits");
        assert_eq!(
            (body["needed"].as_i64(), body["available"].as_i64()),
            (Some(10), Some(3))
        );
        assert!(body["detail"].as_str().unwrap().contains("10"));
    }

    #[tokio::test]
    async fn extra_members_never_replace_the_standard_ones() {
        let problem = DetailedProblem::new(
            ApiError::Conflict("x".into()),
            "already claimed",
            serde_json::json!({"status": 200, "type": "forged", "next_available_at": "t"}),
        )
        .retry_after(42);
        let (status, headers, body) = render(problem.into_response()).await;
        assert_eq!(status, 409);
        assert_eq!(body["status"], 409);
        assert_eq!(body["type"], "/problems/conflict");
        assert_eq!(body["next_available_at"], "t");
        assert_eq!(headers[header::RETRY_AFTER], "42");
    }

    #[tokio::test]
    async fn rate_limits_keep_their_retry_after() {
        let problem = DetailedProblem::new(
            ApiError::TooManyRequests {
                detail: "cap".into(),
                retry_after: 17,
            },
            "cap reached",
            serde_json::json!({"remaining_today": 0}),
        );
        let (status, headers, body) = render(problem.into_response()).await;
        assert_eq!(status, 429);
        assert_eq!(headers[header::RETRY_AFTER], "17");
        assert_eq!(body["remaining_today"], 0);
    }
}
