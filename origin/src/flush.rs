//! Write-behind: the dirty set and the flusher that empties it into the store.
//!
//! A write puts its object in the [`Dirty`] set before it is acknowledged. From
//! then on the flusher owns it: the cache may evict the key, but the dirty set
//! keeps the latest version until the store has confirmed exactly that version.
//! Several writes to one key between two flushes replace each other in the set
//! and become one store PUT (coalescing). A PUT that fails stays in the set and
//! is retried, with a growing pause, until it succeeds; nothing is dropped.
//!
//! One flush round runs at a time, so an older version of a key can never be
//! stored after a newer one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::stream::{self, StreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use prefold_core::envelope::object_path;
use prefold_core::Key;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::hot::Object;

/// Longest pause between retries while the store keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Objects acknowledged to clients but not yet confirmed by the store.
#[derive(Default)]
pub struct Dirty {
    map: Mutex<HashMap<Key, Arc<Object>>>,
    notify: Notify,
    coalesced: AtomicU64,
}

impl Dirty {
    fn map(&self) -> MutexGuard<'_, HashMap<Key, Arc<Object>>> {
        // A panic while holding this lock cannot leave the map half-updated
        // (each operation is a single insert or remove), so a poisoned lock
        // is still safe to use.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the newest version of a key and wakes the flusher.
    pub fn insert(&self, key: Key, object: Arc<Object>) {
        if self.map().insert(key, object).is_some() {
            self.coalesced.fetch_add(1, Ordering::Relaxed);
        }
        self.notify.notify_one();
    }

    /// The pending version of a key, if it has one.
    pub fn get(&self, key: &Key) -> Option<Arc<Object>> {
        self.map().get(key).cloned()
    }

    /// Pending keys.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    /// Writes that replaced a pending version instead of adding a store PUT.
    pub fn coalesced(&self) -> u64 {
        self.coalesced.load(Ordering::Relaxed)
    }

    fn snapshot(&self) -> Vec<(Key, Arc<Object>)> {
        self.map()
            .iter()
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect()
    }

    /// Forgets a key once the store holds `version`, unless a newer write
    /// arrived meanwhile (that one still needs storing).
    fn stored(&self, key: &Key, version: u64) {
        let mut map = self.map();
        if map.get(key).is_some_and(|o| o.version == version) {
            map.remove(key);
        }
    }
}

/// Counters of the flusher's work.
#[derive(Default, Debug)]
pub struct FlushStats {
    /// Successful store PUTs.
    pub puts: AtomicU64,
    /// Failed store PUTs (each is retried).
    pub failures: AtomicU64,
}

/// The background task that stores dirty objects.
pub struct Flusher {
    /// What to store.
    pub dirty: Arc<Dirty>,
    /// Where to store it.
    pub store: Arc<dyn ObjectStore>,
    /// How long to gather writes before a round.
    pub interval: Duration,
    /// PUTs in flight at once.
    pub concurrency: usize,
    /// Counters.
    pub stats: Arc<FlushStats>,
}

impl Flusher {
    /// Runs until `stop`, then drains for at most `drain_timeout` and returns
    /// how many keys were left unstored (0 on a clean shutdown).
    pub async fn run(self, stop: CancellationToken, drain_timeout: Duration) -> usize {
        let mut pause = self.interval;
        loop {
            if self.dirty.is_empty() {
                tokio::select! {
                    _ = self.dirty.notify.notified() => {}
                    _ = stop.cancelled() => break,
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => break,
            }
            let failed = self.flush_round().await;
            pause = if failed == 0 {
                self.interval
            } else {
                (pause * 2).clamp(Duration::from_millis(50), MAX_BACKOFF)
            };
        }
        self.drain(drain_timeout).await
    }

    async fn drain(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(20);
        while !self.dirty.is_empty() {
            tracing::info!(
                pending = self.dirty.len(),
                "flushing pending writes before exit"
            );
            match tokio::time::timeout_at(deadline, self.flush_round()).await {
                Ok(0) => {}
                Ok(_) => {
                    tokio::time::sleep_until(deadline.min(Instant::now() + pause)).await;
                    pause = (pause * 2).min(MAX_BACKOFF);
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

    /// Stores every pending key once; returns how many PUTs failed.
    pub async fn flush_round(&self) -> usize {
        let batch = self.dirty.snapshot();
        let results: Vec<bool> = stream::iter(batch)
            .map(|(key, object)| async move {
                let record = match object.encode() {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(%key, error = %e, "cannot encode object");
                        return false;
                    }
                };
                let path = Path::from(object_path(&key));
                match self.store.put(&path, PutPayload::from(record)).await {
                    Ok(_) => {
                        self.dirty.stored(&key, object.version);
                        self.stats.puts.fetch_add(1, Ordering::Relaxed);
                        true
                    }
                    Err(e) => {
                        tracing::warn!(%key, error = %e, "store PUT failed; will retry");
                        self.stats.failures.fetch_add(1, Ordering::Relaxed);
                        false
                    }
                }
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        results.iter().filter(|ok| !**ok).count()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;
    use object_store::memory::InMemory;

    fn obj(version: u64) -> Arc<Object> {
        Arc::new(Object::new(
            version,
            "application/json".into(),
            Bytes::from(version.to_string()),
        ))
    }

    #[tokio::test]
    async fn coalesces_and_stores_the_latest() {
        let dirty = Arc::new(Dirty::default());
        let store = Arc::new(InMemory::new());
        let key = Key::parse("c/1").unwrap();
        for v in 1..=10 {
            dirty.insert(key.clone(), obj(v));
        }
        let flusher = Flusher {
            dirty: dirty.clone(),
            store: store.clone(),
            interval: Duration::from_millis(1),
            concurrency: 4,
            stats: Arc::default(),
        };
        assert_eq!(flusher.flush_round().await, 0);
        assert_eq!(flusher.stats.puts.load(Ordering::Relaxed), 1);
        assert_eq!(dirty.coalesced(), 9);
        assert!(dirty.is_empty());
        let record = store
            .get(&Path::from(object_path(&key)))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(Object::decode(&key, record).unwrap().version, 10);
    }

    #[tokio::test]
    async fn a_newer_write_during_a_put_stays_dirty() {
        let dirty = Dirty::default();
        let key = Key::parse("c/2").unwrap();
        dirty.insert(key.clone(), obj(1));
        dirty.insert(key.clone(), obj(2));
        dirty.stored(&key, 1);
        assert_eq!(dirty.get(&key).unwrap().version, 2);
        dirty.stored(&key, 2);
        assert!(dirty.get(&key).is_none());
    }

    #[tokio::test]
    async fn run_drains_on_stop() {
        let dirty = Arc::new(Dirty::default());
        let store = Arc::new(InMemory::new());
        let flusher = Flusher {
            dirty: dirty.clone(),
            store: store.clone(),
            // Longer than the test: only the drain can store these.
            interval: Duration::from_secs(3600),
            concurrency: 2,
            stats: Arc::default(),
        };
        for i in 0..20 {
            dirty.insert(Key::parse(&format!("d/{i}")).unwrap(), obj(1));
        }
        let stop = CancellationToken::new();
        let task = tokio::spawn(flusher.run(stop.clone(), Duration::from_secs(10)));
        stop.cancel();
        assert_eq!(task.await.unwrap(), 0);
        assert!(dirty.is_empty());
        let listed: Vec<_> = store.list(None).collect().await;
        assert_eq!(listed.len(), 20);
    }
}
