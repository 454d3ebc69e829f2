//! Counting views: at most one per viewer, character and UTC day, without a
//! database write per read.
//!
//! A read of someone else's public character (`GET /api/v1/characters/{id}`)
//! is a view. The viewer is the caller's user id or, for anonymous callers,
//! their client (address and User-Agent); either is reduced to a 16-byte
//! HMAC-SHA256 digest under the deployment's key (`GALLERY_VIEW_KEY`), with
//! the day mixed in, so no user id, address or user agent is ever stored in
//! clear and digests cannot be linked from one day to the next.
//!
//! Each process keeps the views it has not written yet in memory, each
//! (character, day, viewer) once, and writes them in one transaction when it
//! holds `GALLERY_VIEW_BATCH` of them or the oldest has waited
//! `GALLERY_VIEW_FLUSH_SECONDS` (checked on each counted read, so a Lambda
//! environment frozen between requests flushes on its next one). The write
//! inserts the keys into `character_view_keys` (V18) with `ON CONFLICT DO
//! NOTHING` and adds to `characters.view_count` only the keys that were new,
//! so a viewer is counted once per character and day across every process of
//! the deployment, however many reads they make and whichever process serves
//! them.
//!
//! Why this and not an append-only table the scheduler aggregates: that still
//! writes a row per read, on the hot path; here repeated reads by one viewer
//! cost nothing and a process writes at most one transaction per batch.
//!
//! Bounds (see the README's Gallery section):
//! - lost views: those a process holds when it is shut down or dies, at most
//!   `GALLERY_VIEW_BATCH` per process (Lambda reaps idle environments without
//!   warning; the local stack flushes when it stops). A failed write is logged
//!   and its batch dropped, the same bound.
//! - duplicates: none while `character_view_keys` holds the day's keys. It is
//!   UNLOGGED, so a database crash (or failover) empties it: a viewer may then
//!   be counted once more that day. Without `GALLERY_VIEW_KEY` each process
//!   has its own key, and an anonymous viewer counts once per process.
//! - viewers sharing an address and User-Agent (behind one NAT, say) count
//!   as one anonymous viewer.
//! - `view_count` trails reads by up to the flush interval.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::kernel::config::ViewsConfig;
use crate::kernel::error::ApiError;
use crate::ports::db::DbPool;
use crate::web::http::RequestMeta;

/// Who reads: a signed-in user, or an anonymous client.
#[derive(Debug, Clone, Copy)]
pub enum Viewer<'a> {
    User(&'a str),
    Anonymous(&'a RequestMeta),
}

type Key = (String, NaiveDate, [u8; 16]);

#[derive(Default)]
struct Pending {
    keys: HashSet<Key>,
    since: Option<Instant>,
}

/// A process's views not written yet; one per process, in [`crate::web::state::AppState`].
pub struct ViewCounter {
    key: Vec<u8>,
    batch: usize,
    flush_after: Duration,
    pending: Mutex<Pending>,
}

impl std::fmt::Debug for ViewCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewCounter")
            .field("batch", &self.batch)
            .field("flush_after", &self.flush_after)
            .finish_non_exhaustive()
    }
}

impl crate::web::state::ProcessCache for ViewCounter {
    fn build(config: &crate::kernel::config::Config) -> Self {
        Self::new(&config.views)
    }
}

impl ViewCounter {
    pub fn new(config: &ViewsConfig) -> Self {
        let key = config.key.clone().unwrap_or_else(|| {
            let mut key = vec![0u8; 32];
            rand::thread_rng().fill_bytes(&mut key);
            key
        });
        Self {
            key,
            batch: config.batch.max(1),
            flush_after: config.flush_after,
            pending: Mutex::new(Pending::default()),
        }
    }

    /// The viewer's digest for `day`: HMAC-SHA256 of the day and the viewer,
    /// truncated to 16 bytes.
    pub fn digest(&self, viewer: Viewer<'_>, day: NaiveDate) -> [u8; 16] {
        // HMAC takes a key of any length; new_from_slice cannot fail for it.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => return [0; 16],
        };
        mac.update(day.to_string().as_bytes());
        match viewer {
            Viewer::User(id) => {
                mac.update(b"\0user\0");
                mac.update(id.as_bytes());
            }
            Viewer::Anonymous(meta) => {
                mac.update(b"\0anonymous\0");
                mac.update(
                    meta.ip
                        .map(|ip| ip.to_string())
                        .unwrap_or_default()
                        .as_bytes(),
                );
                mac.update(b"\0");
                mac.update(meta.user_agent.as_deref().unwrap_or_default().as_bytes());
            }
        }
        let full = mac.finalize().into_bytes();
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&full[..16]);
        digest
    }

    /// Notes a view of `character_id` by `viewer` today; true when the batch
    /// is due to be written ([`Self::flush`]).
    pub fn record(&self, character_id: &str, viewer: Viewer<'_>) -> bool {
        let day = Utc::now().date_naive();
        let key = (character_id.to_string(), day, self.digest(viewer, day));
        let mut pending = self.lock();
        pending.keys.insert(key);
        let since = *pending.since.get_or_insert_with(Instant::now);
        pending.keys.len() >= self.batch || since.elapsed() >= self.flush_after
    }

    /// How many views wait to be written.
    pub fn pending(&self) -> usize {
        self.lock().keys.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves a set that is still valid.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes the pending views and answers how many were new (counted). On
    /// failure the batch is dropped (and logged by the caller): those views
    /// are lost, never counted twice.
    pub async fn flush(&self, db: &DbPool) -> Result<u64, ApiError> {
        let keys: Vec<Key> = {
            let mut pending = self.lock();
            pending.since = None;
            pending.keys.drain().collect()
        };
        if keys.is_empty() {
            return Ok(0);
        }
        let mut characters = Vec::with_capacity(keys.len());
        let mut days = Vec::with_capacity(keys.len());
        let mut digests = Vec::with_capacity(keys.len());
        for (character, day, digest) in keys {
            characters.push(character);
            days.push(day);
            digests.push(digest.to_vec());
        }
        let mut client = db.get().await?;
        let tx = client.transaction().await?;
        // Lock the characters in id order first, so two processes flushing
        // overlapping batches cannot deadlock on the counters.
        tx.execute(
            "SELECT 1 FROM characters WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
            &[&characters],
        )
        .await?;
        let counted: i64 = tx
            .query_one(
                "WITH batch AS ( \
                   SELECT * FROM unnest($1::text[], $2::date[], $3::bytea[]) AS b(character_id, day, viewer_digest) \
                 ), fresh AS ( \
                   INSERT INTO character_view_keys (character_id, day, viewer_digest) \
                   SELECT b.character_id, b.day, b.viewer_digest FROM batch b \
                   WHERE EXISTS (SELECT 1 FROM characters c WHERE c.id = b.character_id) \
                   ON CONFLICT DO NOTHING \
                   RETURNING character_id \
                 ), counts AS ( \
                   SELECT character_id, count(*) AS n FROM fresh GROUP BY character_id \
                 ), bumped AS ( \
                   UPDATE characters c SET view_count = coalesce(c.view_count, 0) + counts.n \
                   FROM counts WHERE c.id = counts.character_id \
                   RETURNING counts.n \
                 ) \
                 SELECT coalesce(sum(n), 0)::int8 FROM bumped",
                &[&characters, &days, &digests],
            )
            .await?
            .try_get(0)?;
        tx.commit().await?;
        Ok(counted.max(0) as u64)
    }

    /// [`Self::flush`], logging instead of failing: for the read that found
    /// the batch due, whose answer does not depend on it.
    pub async fn flush_logged(&self, db: &DbPool) {
        match self.flush(db).await {
            Ok(counted) => tracing::debug!(counted, "views written"),
            Err(e) => tracing::warn!(error = %e, "views lost: the batch could not be written"),
        }
    }
}

/// Forgets view keys of days before yesterday (UTC): the scheduler's
/// `idempotency-purge` task.
pub async fn purge_old_keys(
    client: &impl tokio_postgres::GenericClient,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM character_view_keys WHERE day < (now() AT TIME ZONE 'UTC')::date - 1",
            &[],
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(batch: usize, flush_after: Duration) -> ViewCounter {
        ViewCounter::new(&ViewsConfig {
            key: Some(b"a test key of at least thirty-two bytes".to_vec()),
            batch,
            flush_after,
        })
    }

    #[test]
    fn digests_depend_on_viewer_and_day_and_never_contain_it() {
        let views = counter(10, Duration::from_secs(60));
        let day = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap_or_default();
        let next = day.succ_opt().unwrap_or_default();
        let ann = views.digest(Viewer::User("ann"), day);
        assert_eq!(ann, views.digest(Viewer::User("ann"), day));
        assert_ne!(ann, views.digest(Viewer::User("bob"), day));
        assert_ne!(ann, views.digest(Viewer::User("ann"), next));
        let meta = RequestMeta {
            ip: "203.0.113.9".parse().ok(),
            user_agent: Some("Firefox".into()),
            ..RequestMeta::default()
        };
        let other_agent = RequestMeta {
            user_agent: Some("Chrome".into()),
            ..meta.clone()
        };
        let anonymous = views.digest(Viewer::Anonymous(&meta), day);
        assert_ne!(
            anonymous,
            views.digest(Viewer::Anonymous(&other_agent), day)
        );
        assert!(!anonymous.windows(3).any(|w| w == b"203"));
        let other_key = ViewCounter::new(&ViewsConfig {
            key: Some(b"another key, also thirty-two bytes long".to_vec()),
            ..ViewsConfig::default()
        });
        assert_ne!(ann, other_key.digest(Viewer::User("ann"), day));
    }

    #[test]
    fn repeated_views_are_held_once_and_the_batch_is_due_when_full() {
        let views = counter(3, Duration::from_secs(3600));
        for _ in 0..50 {
            assert!(!views.record("c1", Viewer::User("ann")));
        }
        assert_eq!(views.pending(), 1);
        assert!(!views.record("c2", Viewer::User("ann")));
        assert!(views.record("c1", Viewer::User("bob")), "3 distinct views");
        let immediate = counter(100, Duration::ZERO);
        assert!(immediate.record("c1", Viewer::User("ann")));
    }
}
