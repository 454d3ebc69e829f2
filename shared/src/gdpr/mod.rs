//! GDPR: a user takes their data with them (`GET /api/v1/me/export`, see
//! [`export`]) or has it erased (`DELETE /api/v1/me`, see [`erasure`]). Both
//! routes are served by the `auth` function.
//!
//! The highest domain: it may use every other domain (an export reads them all,
//! an erasure scrubs them all); only the runtime uses it.
//!
//! After an erasure the user row stays as a tombstone (the ledger and the
//! purchase orders are kept for the audit trail and reference it), with every
//! identifier scrubbed, so no token maps to it any more. What remains of the
//! identity is an erasure receipt (`account_erasures`): a digest of the token
//! subject and the time, kept only while a token issued before the erasure
//! could still be valid. It lets the API refuse those stale tokens (403) while
//! a sign-in with a token issued afterwards starts a fresh account, and answer
//! a repeated `DELETE /api/v1/me` with the same 204.

pub mod erasure;
pub mod export;
pub mod routes;
