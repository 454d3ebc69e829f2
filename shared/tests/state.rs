//! `AppState::cache`: one cache per type and process, shared by every clone of
//! the state (each request gets a clone), separate between two states (two
//! processes, or two stacks in one test binary).

use std::sync::Arc;

use shared::characters::views::ViewCounter;
use shared::credits::engine::PricingCache;

#[tokio::test]
async fn each_cache_is_built_once_and_shared_by_every_clone_of_its_state() {
    let state = testkit::offline_state().await;
    let clone = state.clone();
    let pricing = state.cache::<PricingCache>();
    assert!(Arc::ptr_eq(&pricing, &clone.cache::<PricingCache>()));
    assert!(Arc::ptr_eq(&pricing, &state.cache::<PricingCache>()));
    // Another type is another cache, also built once.
    let views = clone.cache::<ViewCounter>();
    assert!(Arc::ptr_eq(&views, &state.cache::<ViewCounter>()));

    let other = testkit::offline_state().await;
    assert!(!Arc::ptr_eq(&pricing, &other.cache::<PricingCache>()));
}
