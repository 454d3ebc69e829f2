//! The `jobs` Lambda: start, list, read and cancel generation jobs.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    shared::lambda::run_http_function(shared::app::jobs_router).await
}
