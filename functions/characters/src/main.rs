//! The `characters` Lambda: characters, the gallery, collections, likes,
//! ratings, downloads and reports.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    shared::lambda::run_http_function(shared::app::characters_router).await
}
