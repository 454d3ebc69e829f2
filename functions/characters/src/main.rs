//! The `characters` Lambda: characters, the gallery, collections, likes,
//! ratings, downloads and reports.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    shared::runtime::lambda::run_http_function(shared::runtime::app::characters_router).await
}
