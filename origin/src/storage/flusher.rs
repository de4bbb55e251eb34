//! The flusher: the background worker that empties the write-behind backlog
//! into the object store.
//!
//! It gathers writes for the flush interval (so that many writes of one key
//! become one PUT), then stores every due key with bounded concurrency. A
//! failed or timed-out PUT leaves the key in the backlog with a jittered,
//! exponentially growing pause (see [`Backlog::failed`]); nothing is dropped.
//! One round runs at a time, so an older version of a key can never be
//! stored after a newer one.
//!
//! **Conditional puts.** Where the backend supports them, a PUT names what it
//! expects to replace: `PutMode::Create` for a key the store should not have,
//! `PutMode::Update` with the store's ETag from our last PUT otherwise. If the
//! store refuses, someone else wrote the key (an origin that owned it before,
//! a process that should be dead): the flusher reads what is there and stores
//! its version only if it is newer, so a stale writer never overwrites a
//! newer version. The local filesystem has no `Update`; there the flusher
//! uses `Create` for a key it has not stored and otherwise reads the stored
//! version before overwriting it (a check, not an atomic one: two processes
//! writing one filesystem store can still race inside that window).
//!
//! **Log trimming.** After each round, log segments older than the oldest
//! segment any pending write may need are deleted (see [`super::wal`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{self, StreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion};
use prefold_core::envelope::object_path;
use prefold_core::Key;
use thiserror::Error;
use tokio::time::Instant;

use super::backlog::Backlog;
use super::read::read_record;
use super::wal::Wal;
use super::{within, StoreError};
use crate::base::metrics::counters;
use crate::base::{Backoff, Object, Shutdown, Worker};

/// Pauses between drain rounds at shutdown, while some PUTs fail.
const DRAIN_RETRY: Backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(10));

/// Which conditional puts the backend supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Conditional {
    /// Plain overwrites (for stores with no conditional put).
    None,
    /// `Create` only (the local filesystem).
    Create,
    /// `Create` and `Update` (S3, R2, MinIO, Garage, s3s-fs, in-memory).
    Full,
}

/// How the flusher works.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlushSettings {
    /// How long to gather writes before a round.
    pub(crate) interval: Duration,
    /// PUTs in flight at once.
    pub(crate) concurrency: usize,
    /// Longest wait for one PUT (or one read of what it would replace)
    /// before it counts as failed.
    pub(crate) put_timeout: Duration,
    /// What the backend supports.
    pub(crate) conditional: Conditional,
}

counters! {
    /// Counters of the flusher's work.
    pub(crate) struct FlushStats {
        puts: counter("store_puts", "Object store PUTs that succeeded"),
        retries: counter("store_put_retries", "Object store PUTs that retried a failed one"),
        failures: counter("store_put_failures", "Object store PUTs that failed or timed out (each is retried)"),
        superseded: counter("store_put_superseded", "PUTs skipped because the store held a newer version"),
        trimmed: counter("wal_segments_trimmed", "Log segments deleted once their writes were stored"),
    }
}

/// The background worker that stores the backlog.
pub(crate) struct Flusher {
    /// What to store.
    pub(crate) backlog: Arc<Backlog>,
    store: Arc<dyn ObjectStore>,
    /// The log to trim once its records are stored.
    wal: Option<Wal>,
    settings: FlushSettings,
    /// Counters.
    pub(crate) stats: Arc<FlushStats>,
    /// The store's version tag of each key we have written, for `Update`
    /// (with `Create` only, a tag just says the key exists).
    tags: Mutex<HashMap<Key, UpdateVersion>>,
}

/// Why one store PUT did not happen.
#[derive(Debug, Error)]
enum PutError {
    /// The conditional put was refused: the store holds something other
    /// than what we expected to replace.
    #[error("the store holds another version than expected")]
    Conflict,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

enum PutOutcome {
    Stored,
    Superseded,
    Failed,
}

impl Worker for Flusher {
    fn name(&self) -> &'static str {
        "flusher"
    }

    /// Stores rounds until shutdown, then drains until the deadline; what is
    /// left is still in the backlog (and the log), for the caller to count.
    async fn run(self, shutdown: Shutdown) {
        loop {
            if self.backlog.is_empty() && shutdown.or(self.backlog.work.notified()).await.is_none()
            {
                break;
            }
            // Gather writes for the interval, or until the next retry is due
            // when everything pending is backing off. A `store`-mode write
            // that is waiting skips the gathering (it is counted, not just
            // signalled, so that a missed wake-up cannot leave it waiting a
            // whole interval).
            let due = self.backlog.any_due();
            let wake = match self.backlog.next_retry() {
                Some(t) if !due => t,
                _ => Instant::now() + self.settings.interval,
            };
            if !(due && self.backlog.store_waiters() > 0) {
                let gathered = shutdown
                    .or(async {
                        tokio::select! {
                            () = tokio::time::sleep_until(wake) => {}
                            () = self.backlog.urgent.notified() => {}
                        }
                    })
                    .await;
                if gathered.is_none() {
                    break;
                }
            }
            self.flush_round(false).await;
        }
        self.drain(shutdown.drain_deadline()).await;
    }
}

impl Flusher {
    /// A flusher with no store tags known yet.
    pub(crate) fn new(
        backlog: Arc<Backlog>,
        store: Arc<dyn ObjectStore>,
        wal: Option<Wal>,
        settings: FlushSettings,
        stats: Arc<FlushStats>,
    ) -> Flusher {
        Flusher {
            backlog,
            store,
            wal,
            settings,
            stats,
            tags: Mutex::default(),
        }
    }

    /// Stores everything pending, retrying failures, until `deadline`;
    /// returns how many keys were left unstored.
    async fn drain(&self, deadline: Instant) -> usize {
        let mut retry = DRAIN_RETRY.retry();
        while !self.backlog.is_empty() {
            tracing::info!(
                pending = self.backlog.len(),
                "storing pending writes before exit"
            );
            match tokio::time::timeout_at(deadline, self.flush_round(true)).await {
                Ok(0) => {}
                Ok(_) => {
                    let pause = Instant::now() + retry.next_delay();
                    tokio::time::sleep_until(deadline.min(pause)).await;
                }
                Err(_) => break,
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        let left = self.backlog.len();
        if left > 0 {
            tracing::error!(left, "shutdown deadline passed with writes not yet stored");
        }
        left
    }

    /// Stores every due key once (every key with `all`); returns how many
    /// PUTs failed.
    pub(crate) async fn flush_round(&self, all: bool) -> usize {
        let batch = self.backlog.due(all);
        let results: Vec<bool> = stream::iter(batch)
            .map(|(key, object, attempts)| async move {
                if attempts > 0 {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                }
                match self.put_one(&key, &object).await {
                    PutOutcome::Stored => {
                        self.stats.puts.fetch_add(1, Ordering::Relaxed);
                        self.backlog.stored(&key, object.version);
                        true
                    }
                    PutOutcome::Superseded => {
                        self.stats.superseded.fetch_add(1, Ordering::Relaxed);
                        self.backlog.stored(&key, object.version);
                        true
                    }
                    PutOutcome::Failed => {
                        self.stats.failures.fetch_add(1, Ordering::Relaxed);
                        self.backlog.failed(&key);
                        false
                    }
                }
            })
            .buffer_unordered(self.settings.concurrency)
            .collect()
            .await;
        self.trim();
        results.iter().filter(|ok| !**ok).count()
    }

    fn trim(&self) {
        let Some(wal) = &self.wal else { return };
        let below = self
            .backlog
            .oldest_segment()
            .unwrap_or_else(|| wal.current_segment());
        let n = wal.trim_below(below);
        if n > 0 {
            self.stats.trimmed.fetch_add(n as u64, Ordering::Relaxed);
            tracing::debug!(segments = n, "trimmed the log");
        }
    }

    fn tags(&self) -> std::sync::MutexGuard<'_, HashMap<Key, UpdateVersion>> {
        // Every use is one map operation: a poisoned lock is still consistent.
        self.tags.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn put_one(&self, key: &Key, object: &Object) -> PutOutcome {
        let record = match object.encode() {
            Ok(r) => PutPayload::from(r),
            Err(e) => {
                tracing::error!(%key, error = %e, "cannot encode object");
                return PutOutcome::Failed;
            }
        };
        let path = Path::from(object_path(key));
        let tag = self.tags().get(key).cloned();
        let first = match (self.settings.conditional, tag) {
            (Conditional::None, _) => Some(PutMode::Overwrite),
            (Conditional::Full, Some(tag)) => Some(PutMode::Update(tag)),
            // Without `Update`, a known key is checked before every
            // overwrite: the tag alone cannot stop a stale overwrite.
            (Conditional::Create, Some(_)) => None,
            (_, None) => Some(PutMode::Create),
        };
        if let Some(mode) = first {
            match self.put(&path, record.clone(), mode).await {
                Ok(tag) => {
                    self.tags().insert(key.clone(), tag);
                    return PutOutcome::Stored;
                }
                Err(PutError::Store(e)) => {
                    // A timed-out PUT may still land later: do not trust the
                    // tag until the store has been read again.
                    self.tags().remove(key);
                    tracing::warn!(%key, error = %e, "store PUT failed; will retry");
                    return PutOutcome::Failed;
                }
                Err(PutError::Conflict) => {}
            }
        }
        // The store holds something we did not expect: look before writing.
        let current = match self.read_current(key, &path).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%key, error = %e, "cannot read the stored version; will retry");
                return PutOutcome::Failed;
            }
        };
        let mode = match current {
            Some((version, _)) if version >= object.version => {
                tracing::warn!(%key, stored = version, ours = object.version,
                    "the store holds a newer version written elsewhere; not overwriting it");
                return PutOutcome::Superseded;
            }
            Some((_, tag)) if self.settings.conditional == Conditional::Full => {
                PutMode::Update(tag)
            }
            Some(_) => PutMode::Overwrite,
            None => PutMode::Create,
        };
        match self.put(&path, record, mode).await {
            Ok(tag) => {
                self.tags().insert(key.clone(), tag);
                PutOutcome::Stored
            }
            Err(e) => {
                self.tags().remove(key);
                tracing::warn!(%key, error = %e, "store PUT failed; will retry");
                PutOutcome::Failed
            }
        }
    }

    /// One PUT with the timeout.
    async fn put(
        &self,
        path: &Path,
        payload: PutPayload,
        mode: PutMode,
    ) -> Result<UpdateVersion, PutError> {
        let timeout = self.settings.put_timeout;
        let opts = PutOptions::from(mode);
        match tokio::time::timeout(timeout, self.store.put_opts(path, payload, opts)).await {
            Ok(Ok(r)) => Ok(r.into()),
            Ok(Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            )) => Err(PutError::Conflict),
            Ok(Err(e)) => Err(StoreError::Backend(e).into()),
            Err(_) => Err(StoreError::Timeout(timeout).into()),
        }
    }

    /// The version and store tag of what the store holds under a key.
    async fn read_current(
        &self,
        key: &Key,
        path: &Path,
    ) -> Result<Option<(u64, UpdateVersion)>, StoreError> {
        let timeout = self.settings.put_timeout;
        let record = within(timeout, read_record(self.store.as_ref(), path)).await?;
        let Some(record) = record else {
            return Ok(None);
        };
        let tag = record.tag.clone();
        match record.decode(key) {
            Ok(object) => Ok(Some((object.version, tag))),
            // A record that does not decode is older than anything we
            // hold: replace it rather than retry forever.
            Err(e) => {
                tracing::error!(%key, error = %e, "replacing a stored record that does not decode");
                Ok(Some((0, tag)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::base::Tasks;
    use crate::storage::backlog::Limits;
    use crate::storage::read::read_object;
    use bytes::Bytes;
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;

    fn obj(version: u64) -> Arc<Object> {
        Arc::new(Object::new(
            version,
            "application/json",
            Bytes::from(version.to_string()),
        ))
    }

    fn flusher(store: Arc<dyn ObjectStore>, conditional: Conditional) -> Flusher {
        let backlog = Arc::new(Backlog::new(Limits {
            max_keys: 1000,
            max_bytes: 1 << 20,
        }));
        let settings = FlushSettings {
            interval: Duration::from_secs(3600),
            concurrency: 4,
            put_timeout: Duration::from_secs(5),
            conditional,
        };
        Flusher::new(backlog, store, None, settings, Arc::default())
    }

    async fn stored_version(store: &dyn ObjectStore, key: &Key) -> u64 {
        read_object(store, key).await.unwrap().unwrap().version
    }

    #[tokio::test]
    async fn coalesces_and_stores_the_latest() {
        let store = Arc::new(InMemory::new());
        let f = flusher(store.clone(), Conditional::Full);
        let key = Key::parse("c/1").unwrap();
        for v in 1..=10 {
            f.backlog.insert(key.clone(), obj(v), 1);
        }
        assert_eq!(f.flush_round(false).await, 0);
        assert_eq!(f.stats.puts.load(Ordering::Relaxed), 1);
        assert!(f.backlog.is_empty());
        assert_eq!(stored_version(store.as_ref(), &key).await, 10);
        // The next PUT of the key is an Update against the tag we now hold.
        f.backlog.insert(key.clone(), obj(11), 1);
        assert_eq!(f.flush_round(false).await, 0);
        assert_eq!(stored_version(store.as_ref(), &key).await, 11);
    }

    #[tokio::test]
    async fn a_stale_writer_never_overwrites_a_newer_version() {
        for conditional in [Conditional::Full, Conditional::Create] {
            let store = Arc::new(InMemory::new());
            let key = Key::parse("s/1").unwrap();
            let newer = flusher(store.clone(), conditional);
            newer.backlog.insert(key.clone(), obj(50), 1);
            newer.flush_round(false).await;
            // Another process still believes in version 20.
            let stale = flusher(store.clone(), conditional);
            stale.backlog.insert(key.clone(), obj(20), 1);
            assert_eq!(stale.flush_round(false).await, 0);
            assert_eq!(stale.stats.superseded.load(Ordering::Relaxed), 1);
            assert_eq!(stored_version(store.as_ref(), &key).await, 50);
            // And an older stored version is replaced.
            stale.backlog.insert(key.clone(), obj(60), 1);
            assert_eq!(stale.flush_round(false).await, 0);
            assert_eq!(stored_version(store.as_ref(), &key).await, 60);
        }
    }

    #[tokio::test]
    async fn create_mode_checks_a_known_key_before_overwriting() {
        let store = Arc::new(InMemory::new());
        let key = Key::parse("k/1").unwrap();
        let late = flusher(store.clone(), Conditional::Create);
        late.backlog.insert(key.clone(), obj(1), 1);
        late.flush_round(false).await;
        let fresh = flusher(store.clone(), Conditional::Create);
        fresh.backlog.insert(key.clone(), obj(9), 1);
        fresh.flush_round(false).await;
        // `late` has a tag for the key, and still must not overwrite 9 with 5.
        late.backlog.insert(key.clone(), obj(5), 1);
        assert_eq!(late.flush_round(false).await, 0);
        assert_eq!(late.stats.superseded.load(Ordering::Relaxed), 1);
        assert_eq!(stored_version(store.as_ref(), &key).await, 9);
    }

    #[tokio::test]
    async fn a_corrupt_stored_record_is_replaced_not_retried_forever() {
        for conditional in [Conditional::Full, Conditional::Create] {
            let store = Arc::new(InMemory::new());
            let key = Key::parse("bad/1").unwrap();
            store
                .put(
                    &Path::from(object_path(&key)),
                    PutPayload::from_static(b"garbage"),
                )
                .await
                .unwrap();
            let f = flusher(store.clone(), conditional);
            f.backlog.insert(key.clone(), obj(3), 1);
            assert_eq!(f.flush_round(false).await, 0);
            assert!(f.backlog.is_empty());
            assert_eq!(stored_version(store.as_ref(), &key).await, 3);
        }
    }

    #[tokio::test]
    async fn update_fails_when_someone_wrote_in_between() {
        let store = Arc::new(InMemory::new());
        let key = Key::parse("u/1").unwrap();
        let a = flusher(store.clone(), Conditional::Full);
        a.backlog.insert(key.clone(), obj(1), 1);
        a.flush_round(false).await;
        let b = flusher(store.clone(), Conditional::Full);
        b.backlog.insert(key.clone(), obj(5), 1);
        b.flush_round(false).await;
        // `a` still holds the tag of version 1: its Update is refused, it
        // looks, finds 5 newer than its 3, and leaves it.
        a.backlog.insert(key.clone(), obj(3), 1);
        a.flush_round(false).await;
        assert_eq!(a.stats.superseded.load(Ordering::Relaxed), 1);
        assert_eq!(stored_version(store.as_ref(), &key).await, 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_mode_wait_does_not_wait_for_the_interval() {
        // The flusher gathers for an hour; a waiting `store` write must cut
        // that short every time (a lost wake-up was a race: repeat).
        for i in 0..20 {
            let f = flusher(Arc::new(InMemory::new()), Conditional::Full);
            let dirty = f.backlog.clone();
            let mut tasks = Tasks::new("storage");
            tasks.spawn(f);
            let key = Key::parse(&format!("w/{i}")).unwrap();
            dirty.insert(key.clone(), obj(1), 1);
            let waited = tokio::time::timeout(Duration::from_secs(10), dirty.wait_stored(&key, 1));
            assert!(waited.await.is_ok(), "round {i}: still waiting");
            assert_eq!(dirty.store_waiters(), 0);
            assert!(tasks.stop(Duration::from_secs(5)).await);
            assert_eq!(dirty.len(), 0);
        }
    }

    #[tokio::test]
    async fn run_drains_on_stop() {
        let store = Arc::new(InMemory::new());
        let f = flusher(store.clone(), Conditional::Full);
        let dirty = f.backlog.clone();
        for i in 0..20 {
            dirty.insert(Key::parse(&format!("d/{i}")).unwrap(), obj(1), 1);
        }
        let mut tasks = Tasks::new("storage");
        tasks.spawn(f);
        assert!(tasks.stop(Duration::from_secs(10)).await);
        assert!(dirty.is_empty());
        let listed: Vec<_> = store.list(None).collect().await;
        assert_eq!(listed.len(), 20);
    }
}
