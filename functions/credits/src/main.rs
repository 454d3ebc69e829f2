//! The `credits` Lambda: balance, history, packages, pricing, purchases and
//! the Stripe webhook, gifts, the daily bonus.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    shared::lambda::run_http_function(shared::app::credits_router).await
}
