//! The `jobs` Lambda: start, list, read and cancel generation jobs.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    shared::runtime::lambda::run_http_function(shared::runtime::app::jobs_router).await
}
