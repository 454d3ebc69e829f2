//! The state every handler receives: the process's infrastructure (the
//! database pool, the token verifier, the configuration, the storage and
//! queue ports) and the per-process caches the domains keep in it.
//!
//! The state names no domain type, so that the web layer stays below the
//! domains: a domain keeps its cache (the pricing table, the view counter) in
//! [`AppState::cache`], keyed by the cache's type and built on first use.
//! Which adapters fill the ports is decided by the runtime layer
//! (`AppState::from_config` in [`crate::runtime::app`]).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::FromRef;

use crate::kernel::config::Config;
use crate::ports::db::DbPool;
use crate::ports::queue::JobQueue;
use crate::ports::storage::ObjectStore;
use crate::web::auth::Authenticator;

/// Largest request body any route accepts.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Everything a handler may need, built once per process (per cold start).
#[derive(Clone)]
pub struct AppState {
    pub db: DbPool,
    pub auth: Arc<Authenticator>,
    pub config: Arc<Config>,
    /// Image storage; `None` where none is configured (routes needing it answer 503).
    pub storage: Option<Arc<dyn ObjectStore>>,
    /// Where generation jobs are sent; `None` where none is configured
    /// (dispatch then answers 503 before taking any credits).
    pub queue: Option<Arc<dyn JobQueue>>,
    /// The domains' per-process caches (see [`AppState::cache`]).
    caches: Arc<Caches>,
}

/// A per-process cache a domain keeps in the [`AppState`].
pub trait ProcessCache: Any + Send + Sync {
    /// Builds the cache the first time a process asks for it.
    fn build(config: &Config) -> Self;
}

/// The caches, one per type, each built on first use.
#[derive(Default)]
struct Caches(Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>);

impl AppState {
    /// A state over these ports, with no cache built yet.
    pub fn new(
        db: DbPool,
        auth: Arc<Authenticator>,
        config: Arc<Config>,
        storage: Option<Arc<dyn ObjectStore>>,
        queue: Option<Arc<dyn JobQueue>>,
    ) -> Self {
        Self {
            db,
            auth,
            config,
            storage,
            queue,
            caches: Arc::default(),
        }
    }

    /// This process's `T`, built from the configuration on first use and
    /// shared by every clone of the state afterwards.
    pub fn cache<T: ProcessCache>(&self) -> Arc<T> {
        let mut caches = self
            .caches
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = caches
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::build(&self.config)));
        Arc::clone(entry)
            .downcast::<T>()
            .unwrap_or_else(|_| unreachable!("the cache under T's TypeId is a T"))
    }
}

impl FromRef<AppState> for Arc<Authenticator> {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}
