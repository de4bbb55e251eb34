//! The flusher: the background worker that empties the write-behind backlog
//! into the object store.
//!
//! It gathers writes for the flush interval (so that many writes of one key
//! become one PUT), then stores every due key with bounded concurrency. A
//! failed or timed-out PUT leaves the key in the backlog with a jittered,
//! exponentially growing pause (see [`Dirty::failed`]); nothing is dropped.
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
//! segment any pending write may need are deleted (see [`crate::wal`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{self, StreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use prefold_core::envelope::object_path;
use prefold_core::Key;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::dirty::{Dirty, BACKOFF_CAP};
use crate::object::Object;
use crate::wal::Wal;

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

/// Counters of the flusher's work.
#[derive(Default, Debug)]
pub struct FlushStats {
    /// Successful store PUTs.
    pub puts: AtomicU64,
    /// PUT attempts that were retries of a failed one.
    pub retries: AtomicU64,
    /// Failed or timed-out PUTs (each is retried).
    pub failures: AtomicU64,
    /// PUTs not made because the store already held a newer version.
    pub superseded: AtomicU64,
    /// Log segments deleted.
    pub trimmed: AtomicU64,
}

/// The background task that stores dirty objects.
pub struct Flusher {
    /// What to store.
    pub dirty: Arc<Dirty>,
    /// Where to store it.
    pub store: Arc<dyn ObjectStore>,
    /// The log to trim once its records are stored.
    pub wal: Option<Wal>,
    /// How long to gather writes before a round.
    pub interval: Duration,
    /// PUTs in flight at once.
    pub concurrency: usize,
    /// Longest wait for one PUT before it counts as failed.
    pub put_timeout: Duration,
    /// What the backend supports.
    pub conditional: Conditional,
    /// Counters.
    pub stats: Arc<FlushStats>,
    /// The store's version tag of each key we have written, for `Update`
    /// (with `Create` only, a tag just says the key exists).
    tags: Mutex<HashMap<Key, UpdateVersion>>,
}

enum PutOutcome {
    Stored,
    Superseded,
    Failed,
}

impl Flusher {
    /// A flusher with no store tags known yet.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dirty: Arc<Dirty>,
        store: Arc<dyn ObjectStore>,
        wal: Option<Wal>,
        interval: Duration,
        concurrency: usize,
        put_timeout: Duration,
        conditional: Conditional,
        stats: Arc<FlushStats>,
    ) -> Flusher {
        Flusher {
            dirty,
            store,
            wal,
            interval,
            concurrency,
            put_timeout,
            conditional,
            stats,
            tags: Mutex::default(),
        }
    }

    /// Runs until `stop`, then drains for at most `drain_timeout` and returns
    /// how many keys were left unstored (0 on a clean shutdown).
    pub async fn run(self, stop: CancellationToken, drain_timeout: Duration) -> usize {
        loop {
            if self.dirty.is_empty() {
                tokio::select! {
                    _ = self.dirty.work.notified() => {}
                    _ = stop.cancelled() => break,
                }
            }
            // Gather writes for the interval, or until the next retry is due
            // when everything pending is backing off. A `store`-mode write
            // that is waiting skips the gathering (it is counted, not just
            // signalled, so that a missed wake-up cannot leave it waiting a
            // whole interval).
            let due = self.dirty.any_due();
            let wake = match self.dirty.next_retry() {
                Some(t) if !due => t,
                _ => Instant::now() + self.interval,
            };
            if !(due && self.dirty.store_waiters() > 0) {
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => {}
                    _ = self.dirty.urgent.notified() => {}
                    _ = stop.cancelled() => break,
                }
            }
            self.flush_round(false).await;
        }
        self.drain(drain_timeout).await
    }

    async fn drain(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(20);
        while !self.dirty.is_empty() {
            tracing::info!(
                pending = self.dirty.len(),
                "storing pending writes before exit"
            );
            match tokio::time::timeout_at(deadline, self.flush_round(true)).await {
                Ok(0) => {}
                Ok(_) => {
                    tokio::time::sleep_until(deadline.min(Instant::now() + pause)).await;
                    pause = (pause * 2).min(BACKOFF_CAP);
                }
                Err(_) => break,
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        let left = self.dirty.len();
        if left > 0 {
            tracing::error!(left, "shutdown deadline passed with writes not yet stored");
        }
        left
    }

    /// Stores every due key once (every key with `all`); returns how many
    /// PUTs failed.
    pub async fn flush_round(&self, all: bool) -> usize {
        let batch = self.dirty.due(all);
        let results: Vec<bool> = stream::iter(batch)
            .map(|(key, object, attempts)| async move {
                if attempts > 0 {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                }
                match self.put_one(&key, &object).await {
                    PutOutcome::Stored => {
                        self.stats.puts.fetch_add(1, Ordering::Relaxed);
                        self.dirty.stored(&key, object.version);
                        true
                    }
                    PutOutcome::Superseded => {
                        self.stats.superseded.fetch_add(1, Ordering::Relaxed);
                        self.dirty.stored(&key, object.version);
                        true
                    }
                    PutOutcome::Failed => {
                        self.stats.failures.fetch_add(1, Ordering::Relaxed);
                        self.dirty.failed(&key);
                        false
                    }
                }
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        self.trim();
        results.iter().filter(|ok| !**ok).count()
    }

    fn trim(&self) {
        let Some(wal) = &self.wal else { return };
        let below = self
            .dirty
            .oldest_segment()
            .unwrap_or_else(|| wal.current_segment());
        let n = wal.trim_below(below);
        if n > 0 {
            self.stats.trimmed.fetch_add(n as u64, Ordering::Relaxed);
            tracing::debug!(segments = n, "trimmed the log");
        }
    }

    fn tag(&self, key: &Key) -> Option<UpdateVersion> {
        self.tags
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    fn forget_tag(&self, key: &Key) {
        self.tags
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    fn set_tag(&self, key: &Key, tag: UpdateVersion) {
        self.tags
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), tag);
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
        let first = match (self.conditional, self.tag(key)) {
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
                    self.set_tag(key, tag);
                    return PutOutcome::Stored;
                }
                Err(Some(e)) => {
                    // A timed-out PUT may still land later: do not trust the
                    // tag until the store has been read again.
                    self.forget_tag(key);
                    tracing::warn!(%key, error = %e, "store PUT failed; will retry");
                    return PutOutcome::Failed;
                }
                Err(None) => {}
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
            Some((_, tag)) if self.conditional == Conditional::Full => PutMode::Update(tag),
            Some(_) => PutMode::Overwrite,
            None => PutMode::Create,
        };
        match self.put(&path, record, mode).await {
            Ok(tag) => {
                self.set_tag(key, tag);
                PutOutcome::Stored
            }
            Err(e) => {
                self.forget_tag(key);
                let e = e.map_or_else(|| "conflict again".to_owned(), |e| e.to_string());
                tracing::warn!(%key, error = %e, "store PUT failed; will retry");
                PutOutcome::Failed
            }
        }
    }

    /// One PUT with the timeout. `Err(None)` is a conditional-put conflict.
    async fn put(
        &self,
        path: &Path,
        payload: PutPayload,
        mode: PutMode,
    ) -> Result<UpdateVersion, Option<String>> {
        let opts = PutOptions::from(mode);
        match tokio::time::timeout(self.put_timeout, self.store.put_opts(path, payload, opts)).await
        {
            Ok(Ok(r)) => Ok(r.into()),
            Ok(Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            )) => Err(None),
            Ok(Err(e)) => Err(Some(e.to_string())),
            Err(_) => Err(Some(format!("timed out after {:?}", self.put_timeout))),
        }
    }

    /// The version and store tag of what the store holds under a key.
    async fn read_current(
        &self,
        key: &Key,
        path: &Path,
    ) -> Result<Option<(u64, UpdateVersion)>, String> {
        let read = async {
            match self.store.get(path).await {
                Ok(r) => {
                    let tag = UpdateVersion {
                        e_tag: r.meta.e_tag.clone(),
                        version: r.meta.version.clone(),
                    };
                    let bytes = r.bytes().await.map_err(|e| e.to_string())?;
                    match Object::decode(key, bytes) {
                        Ok(object) => Ok(Some((object.version, tag))),
                        // A record that does not decode is older than
                        // anything we hold: replace it rather than retry
                        // forever.
                        Err(e) => {
                            tracing::error!(%key, error = %e, "replacing a stored record that does not decode");
                            Ok(Some((0, tag)))
                        }
                    }
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        };
        tokio::time::timeout(self.put_timeout, read)
            .await
            .map_err(|_| "timed out".to_owned())?
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::dirty::Limits;
    use bytes::Bytes;
    use object_store::memory::InMemory;

    fn obj(version: u64) -> Arc<Object> {
        Arc::new(Object::new(
            version,
            "application/json",
            Bytes::from(version.to_string()),
        ))
    }

    fn flusher(store: Arc<dyn ObjectStore>, conditional: Conditional) -> Flusher {
        let dirty = Arc::new(Dirty::new(Limits {
            max_keys: 1000,
            max_bytes: 1 << 20,
        }));
        Flusher::new(
            dirty,
            store,
            None,
            Duration::from_secs(3600),
            4,
            Duration::from_secs(5),
            conditional,
            Arc::default(),
        )
    }

    async fn stored_version(store: &dyn ObjectStore, key: &Key) -> u64 {
        let r = store.get(&Path::from(object_path(key))).await.unwrap();
        Object::decode(key, r.bytes().await.unwrap())
            .unwrap()
            .version
    }

    #[tokio::test]
    async fn coalesces_and_stores_the_latest() {
        let store = Arc::new(InMemory::new());
        let f = flusher(store.clone(), Conditional::Full);
        let key = Key::parse("c/1").unwrap();
        for v in 1..=10 {
            f.dirty.insert(key.clone(), obj(v), 1);
        }
        assert_eq!(f.flush_round(false).await, 0);
        assert_eq!(f.stats.puts.load(Ordering::Relaxed), 1);
        assert!(f.dirty.is_empty());
        assert_eq!(stored_version(store.as_ref(), &key).await, 10);
        // The next PUT of the key is an Update against the tag we now hold.
        f.dirty.insert(key.clone(), obj(11), 1);
        assert_eq!(f.flush_round(false).await, 0);
        assert_eq!(stored_version(store.as_ref(), &key).await, 11);
    }

    #[tokio::test]
    async fn a_stale_writer_never_overwrites_a_newer_version() {
        for conditional in [Conditional::Full, Conditional::Create] {
            let store = Arc::new(InMemory::new());
            let key = Key::parse("s/1").unwrap();
            let newer = flusher(store.clone(), conditional);
            newer.dirty.insert(key.clone(), obj(50), 1);
            newer.flush_round(false).await;
            // Another process still believes in version 20.
            let stale = flusher(store.clone(), conditional);
            stale.dirty.insert(key.clone(), obj(20), 1);
            assert_eq!(stale.flush_round(false).await, 0);
            assert_eq!(stale.stats.superseded.load(Ordering::Relaxed), 1);
            assert_eq!(stored_version(store.as_ref(), &key).await, 50);
            // And an older stored version is replaced.
            stale.dirty.insert(key.clone(), obj(60), 1);
            assert_eq!(stale.flush_round(false).await, 0);
            assert_eq!(stored_version(store.as_ref(), &key).await, 60);
        }
    }

    #[tokio::test]
    async fn create_mode_checks_a_known_key_before_overwriting() {
        let store = Arc::new(InMemory::new());
        let key = Key::parse("k/1").unwrap();
        let late = flusher(store.clone(), Conditional::Create);
        late.dirty.insert(key.clone(), obj(1), 1);
        late.flush_round(false).await;
        let fresh = flusher(store.clone(), Conditional::Create);
        fresh.dirty.insert(key.clone(), obj(9), 1);
        fresh.flush_round(false).await;
        // `late` has a tag for the key, and still must not overwrite 9 with 5.
        late.dirty.insert(key.clone(), obj(5), 1);
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
            f.dirty.insert(key.clone(), obj(3), 1);
            assert_eq!(f.flush_round(false).await, 0);
            assert!(f.dirty.is_empty());
            assert_eq!(stored_version(store.as_ref(), &key).await, 3);
        }
    }

    #[tokio::test]
    async fn update_fails_when_someone_wrote_in_between() {
        let store = Arc::new(InMemory::new());
        let key = Key::parse("u/1").unwrap();
        let a = flusher(store.clone(), Conditional::Full);
        a.dirty.insert(key.clone(), obj(1), 1);
        a.flush_round(false).await;
        let b = flusher(store.clone(), Conditional::Full);
        b.dirty.insert(key.clone(), obj(5), 1);
        b.flush_round(false).await;
        // `a` still holds the tag of version 1: its Update is refused, it
        // looks, finds 5 newer than its 3, and leaves it.
        a.dirty.insert(key.clone(), obj(3), 1);
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
            let dirty = f.dirty.clone();
            let stop = CancellationToken::new();
            let task = tokio::spawn(f.run(stop.clone(), Duration::from_secs(5)));
            let key = Key::parse(&format!("w/{i}")).unwrap();
            dirty.insert(key.clone(), obj(1), 1);
            let waited = tokio::time::timeout(Duration::from_secs(10), dirty.wait_stored(&key, 1));
            assert!(waited.await.is_ok(), "round {i}: still waiting");
            assert_eq!(dirty.store_waiters(), 0);
            stop.cancel();
            assert_eq!(task.await.unwrap(), 0);
        }
    }

    #[tokio::test]
    async fn run_drains_on_stop() {
        let store = Arc::new(InMemory::new());
        let f = flusher(store.clone(), Conditional::Full);
        let dirty = f.dirty.clone();
        for i in 0..20 {
            dirty.insert(Key::parse(&format!("d/{i}")).unwrap(), obj(1), 1);
        }
        let stop = CancellationToken::new();
        let task = tokio::spawn(f.run(stop.clone(), Duration::from_secs(10)));
        stop.cancel();
        assert_eq!(task.await.unwrap(), 0);
        assert!(dirty.is_empty());
        let listed: Vec<_> = store.list(None).collect().await;
        assert_eq!(listed.len(), 20);
    }
}
