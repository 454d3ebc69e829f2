//! Ports and adapters: every conversation with the outside world. Each port
//! is a trait or a narrow type (`ObjectStore`, `JobQueue`, `Generator`, the
//! PostgreSQL pool) with its adapters beside it (S3, SQS, Automatic1111, the
//! in-memory and procedural stand-ins for the local stack). Ports may use
//! the kernel only; the domains name the traits, and only the runtime layer
//! chooses which adapter a process gets.

pub mod aws;
pub mod db;
pub mod generator;
pub mod queue;
pub mod secrets;
pub mod storage;
