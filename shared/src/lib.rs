//! Behaviour of the character platform backend, shared by every Lambda
//! function, the local stack and the tests.
//!
//! The crate is layered; a module may use its own layer and the ones below
//! it, never one above (checked by `tests/layers.rs`, explained in
//! `docs/architecture.md`):
//!
//! 1. [`kernel`]: configuration, errors, telemetry, metrics and the words of
//!    the domain (tiers, job types) — no I/O of its own.
//! 2. [`ports`]: the outside world behind traits and their adapters —
//!    PostgreSQL, object storage, the job queue, image generators, AWS.
//! 3. [`web`]: HTTP plumbing — request ids, input decoding, pagination,
//!    idempotency, authentication and the state every handler receives.
//! 4. the domains, one folder each: [`activity`], [`users`], [`credits`],
//!    [`characters`], [`collections`], [`social`], [`jobs`], [`moderation`],
//!    [`gdpr`]; a domain may use another only where their graph stays acyclic.
//! 5. [`runtime`]: the entry points — router assembly, the OpenAPI document,
//!    the Lambda adapters and the scheduler's task list.

pub mod kernel;
pub mod ports;
pub mod web;

pub mod activity;
pub mod characters;
pub mod collections;
pub mod credits;
pub mod gdpr;
pub mod jobs;
pub mod moderation;
pub mod social;
pub mod users;

pub mod runtime;

pub use kernel::error::ApiError;
pub use web::state::AppState;
