//! The bottom layer: what every other layer may use and which uses nothing
//! of the crate above it — configuration read from the environment, the
//! error type every route answers with, logging and tracing, CloudWatch
//! metrics, and the words of the domain as typed enums (tiers, job types,
//! the `text_enum!` macro that stores them as the schema's text values).
//! Nothing here performs I/O besides writing log and metric lines.

pub mod config;
pub mod error;
pub mod metrics;
pub mod telemetry;
pub mod text_enum;
pub mod tier;
pub mod vocabulary;
