//! HTTP plumbing shared by every domain's routes: request ids and problem
//! fallbacks ([`http`]), request-body and query decoding ([`input`]),
//! cursor pagination, idempotency keys, bearer-token authentication
//! ([`auth`]), the named OpenAPI response sets ([`responses`]) and the state
//! each handler receives ([`state`]). It may use the kernel and the ports;
//! it knows nothing of any domain.

pub mod auth;
pub mod http;
pub mod idempotency;
pub mod input;
pub mod pagination;
pub mod responses;
pub mod state;
