//! Behaviour of the character platform backend, shared by every Lambda
//! function, the local stack and the tests. See DESIGN.md and the README's
//! architecture section.

pub mod activity;
pub mod app;
pub mod auth;
pub mod aws;
pub mod characters;
pub mod collections;
pub mod config;
pub mod credits;
pub mod db;
pub mod error;
pub mod gdpr;
pub mod generator;
pub mod http;
pub mod idempotency;
pub mod input;
pub mod jobs;
pub mod lambda;
pub mod metrics;
pub mod moderation;
pub mod openapi;
pub mod pagination;
pub mod queue;
pub mod scheduler;
pub mod secrets;
pub mod social;
pub mod storage;
pub mod telemetry;
pub mod text_enum;
pub mod tier;
pub mod users;
pub mod worker;

pub use app::AppState;
pub use error::ApiError;
