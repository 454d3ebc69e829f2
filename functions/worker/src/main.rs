//! The `worker` Lambda: SQS batches of generation jobs, each message claimed,
//! rendered, stored and settled by `shared::jobs::worker::Worker`; failures to retry
//! come back as `batchItemFailures`.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::runtime::lambda::run_worker().await
}
