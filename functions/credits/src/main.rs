//! The `credits` Lambda: balance, history, packages, pricing, purchases and
//! the Stripe webhook, gifts, the daily bonus.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    shared::runtime::lambda::run_http_function(shared::runtime::app::credits_router).await
}
