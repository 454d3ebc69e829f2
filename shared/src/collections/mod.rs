//! (being built for issue #3)

pub mod routes;
