//! The top layer: where processes start. Router assembly per Lambda
//! function ([`app`]), the OpenAPI document that lists every route
//! ([`openapi`]), the Lambda runtime adapters with their configuration
//! loading ([`lambda`]) and the scheduler's task table ([`scheduler`]).
//! It may use every layer; nothing may use it.

pub mod app;
pub mod lambda;
pub mod openapi;
pub mod scheduler;
