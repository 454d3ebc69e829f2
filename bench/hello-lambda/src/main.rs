//! A Lambda hello world, the yardstick of `bench/coldstart`: the same runtime
//! crate, release profile and emulator as the platform's functions, and
//! nothing else, so its cold start is what any Rust function pays.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

async fn hello(_event: LambdaEvent<Value>) -> Result<Value, Error> {
    Ok(json!({"statusCode": 200, "body": "hello"}))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(hello)).await
}
