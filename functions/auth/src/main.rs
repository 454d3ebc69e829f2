//! The `auth` Lambda: sign-in, the caller's account and profile, public profiles, GDPR
//! export and erasure.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    shared::runtime::lambda::run_http_function(shared::runtime::app::auth_router).await
}
