//! The hot tier: every object an origin serves, in memory.
//!
//! Reads are answered from a byte-weighted moka cache. A miss (the object was
//! evicted, or has not been read since start) loads it once: the first caller
//! takes the key's stripe lock and loads; every concurrent caller for the key
//! waits on that lock and then finds the loaded value in the cache. Absence is
//! cached too, so repeated reads of a missing key stay in memory.
//!
//! Writes take the same stripe lock, so each key has exactly one writer at a
//! time and versions increase strictly. The lock is held across "read current,
//! hand to the flusher, update the cache", and a miss load also runs under it
//! and looks at the flusher's dirty set before the store: that ordering is what
//! keeps an evicted-but-unflushed object from being read back stale.
//!
//! Why stripes and not moka's own `get_with` coalescing: moka inserts the
//! loaded value after the loader returns, outside any lock of ours, so a
//! concurrent write could be overwritten by an older load. Holding our own lock
//! around load-and-insert closes that race.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::http::HeaderValue;
use bytes::Bytes;
use moka::future::Cache;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use prefold_core::envelope::object_path;
use prefold_core::http::etag;
use prefold_core::{Envelope, Key};
use tokio::sync::Mutex;

use crate::error::StoreError;
use crate::flush::Dirty;

/// Stripe count: enough that unrelated keys rarely share a lock.
const STRIPES: usize = 4096;

/// One version of one object, shared by the cache, the flusher and responses.
///
/// The response headers that depend only on the version are rendered once,
/// when the version is made, rather than on every read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Strictly increasing per key.
    pub version: u64,
    /// The media type it was written with.
    pub content_type: String,
    /// The bytes, shared without copying.
    pub body: Bytes,
    etag: HeaderValue,
    content_type_header: Option<HeaderValue>,
}

impl Object {
    /// A version of an object.
    pub fn new(version: u64, content_type: String, body: Bytes) -> Object {
        // An ETag is a quoted hex number: always a valid header value.
        let etag = HeaderValue::from_str(&etag(version))
            .unwrap_or_else(|_| HeaderValue::from_static("\"0\""));
        let content_type_header = HeaderValue::from_str(&content_type).ok();
        Object {
            version,
            content_type,
            body,
            etag,
            content_type_header,
        }
    }

    /// The strong ETag, as a header value.
    pub fn etag(&self) -> &HeaderValue {
        &self.etag
    }

    /// The content type, as a header value (absent if it cannot be one).
    pub fn content_type_header(&self) -> Option<&HeaderValue> {
        self.content_type_header.as_ref()
    }

    /// The record stored for this object.
    pub fn encode(&self) -> Result<Vec<u8>, prefold_core::EnvelopeError> {
        Envelope {
            version: self.version,
            content_type: &self.content_type,
            body: &self.body,
        }
        .encode()
    }

    /// Decodes a stored record, sharing the body with the record's buffer.
    pub fn decode(key: &Key, record: Bytes) -> Result<Object, StoreError> {
        let env = Envelope::decode(&record).map_err(|source| StoreError::Corrupt {
            key: key.to_string(),
            source,
        })?;
        Ok(Object::new(
            env.version,
            env.content_type.to_owned(),
            record.slice(env.body_offset()..),
        ))
    }
}

/// What the cache holds for a key: the object, or the knowledge that there is none.
pub type Slot = Option<Arc<Object>>;

/// The result of a write.
#[derive(Debug)]
pub struct Written {
    /// The new version.
    pub object: Arc<Object>,
    /// Whether the key had no object before.
    pub created: bool,
}

/// The in-memory tier of one origin.
pub struct HotTier {
    cache: Cache<Key, Slot>,
    stripes: Box<[Mutex<()>]>,
    stripe_hasher: RandomState,
    store: Arc<dyn ObjectStore>,
    dirty: Arc<Dirty>,
    loads: AtomicU64,
}

impl HotTier {
    /// A hot tier of `capacity_bytes` over a store, handing writes to `dirty`.
    pub fn new(capacity_bytes: u64, store: Arc<dyn ObjectStore>, dirty: Arc<Dirty>) -> HotTier {
        let cache = Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|key: &Key, slot: &Slot| {
                // Keys, bodies and a rough allowance for the bookkeeping.
                let body = slot
                    .as_ref()
                    .map_or(0, |o| o.body.len() + o.content_type.len());
                u32::try_from(key.as_str().len() + body + 96).unwrap_or(u32::MAX)
            })
            .build();
        HotTier {
            cache,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            stripe_hasher: RandomState::new(),
            store,
            dirty,
            loads: AtomicU64::new(0),
        }
    }

    fn stripe(&self, key: &Key) -> &Mutex<()> {
        let h = self.stripe_hasher.hash_one(key);
        // `h % STRIPES` fits in usize because STRIPES does.
        &self.stripes[(h % STRIPES as u64) as usize]
    }

    /// The current object under a key, loading it on a miss.
    pub async fn get(&self, key: &Key) -> Result<Slot, StoreError> {
        if let Some(slot) = self.cache.get(key).await {
            return Ok(slot);
        }
        let _guard = self.stripe(key).lock().await;
        self.get_locked(key).await
    }

    /// [`HotTier::get`] for a caller that holds the key's stripe lock.
    async fn get_locked(&self, key: &Key) -> Result<Slot, StoreError> {
        if let Some(slot) = self.cache.get(key).await {
            return Ok(slot);
        }
        let slot = self.load(key).await?;
        self.cache.insert(key.clone(), slot.clone()).await;
        Ok(slot)
    }

    /// Reads a key past the cache: the flusher's pending version wins over
    /// the store's, which may be older.
    async fn load(&self, key: &Key) -> Result<Slot, StoreError> {
        if let Some(pending) = self.dirty.get(key) {
            return Ok(Some(pending));
        }
        self.loads.fetch_add(1, Ordering::Relaxed);
        let path = Path::from(object_path(key));
        match self.store.get(&path).await {
            Ok(result) => {
                let record = result.bytes().await?;
                Ok(Some(Arc::new(Object::decode(key, record)?)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces the object under a key. `now_micros` seeds the version so
    /// that versions stay unique across restarts even if the last writes
    /// before a crash never reached the store: a version is
    /// `max(previous + 1, now)`.
    pub async fn put(
        &self,
        key: Key,
        content_type: String,
        body: Bytes,
        now_micros: u64,
    ) -> Result<Written, StoreError> {
        let _guard = self.stripe(&key).lock().await;
        let current = self.get_locked(&key).await?;
        let version = current
            .as_ref()
            .map_or(now_micros, |c| now_micros.max(c.version + 1));
        let object = Arc::new(Object::new(version, content_type, body));
        // The flusher owns the write from here on; eviction cannot lose it.
        self.dirty.insert(key.clone(), object.clone());
        self.cache.insert(key, Some(object.clone())).await;
        Ok(Written {
            object,
            created: current.is_none(),
        })
    }

    /// How many times a miss went to the store.
    pub fn store_loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// Drops every cached entry (tests use it to force misses).
    pub fn clear(&self) {
        self.cache.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use object_store::memory::InMemory;
    use object_store::PutPayload;

    fn tier(capacity: u64) -> (Arc<HotTier>, Arc<InMemory>, Arc<Dirty>) {
        let store = Arc::new(InMemory::new());
        let dirty = Arc::new(Dirty::default());
        let hot = Arc::new(HotTier::new(capacity, store.clone(), dirty.clone()));
        (hot, store, dirty)
    }

    async fn seed(store: &InMemory, key: &Key, version: u64, body: &[u8]) {
        let o = Object::new(
            version,
            "application/json".into(),
            Bytes::copy_from_slice(body),
        );
        store
            .put(
                &Path::from(object_path(key)),
                PutPayload::from(o.encode().unwrap()),
            )
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_misses_load_once() {
        let (hot, store, _) = tier(1 << 20);
        let key = Key::parse("user/1").unwrap();
        seed(&store, &key, 7, b"{}").await;
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let hot = hot.clone();
                let key = key.clone();
                tokio::spawn(async move { hot.get(&key).await.unwrap().unwrap().version })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 7);
        }
        assert_eq!(hot.store_loads(), 1);
    }

    #[tokio::test]
    async fn absence_is_cached() {
        let (hot, _, _) = tier(1 << 20);
        let key = Key::parse("user/none").unwrap();
        assert!(hot.get(&key).await.unwrap().is_none());
        assert!(hot.get(&key).await.unwrap().is_none());
        assert_eq!(hot.store_loads(), 1);
    }

    #[tokio::test]
    async fn versions_increase_even_with_a_clock_behind() {
        let (hot, store, _) = tier(1 << 20);
        let key = Key::parse("user/2").unwrap();
        seed(&store, &key, 1_000, b"{}").await;
        let body = Bytes::from_static(b"{}");
        let a = hot
            .put(key.clone(), "application/json".into(), body.clone(), 10)
            .await
            .unwrap();
        assert_eq!((a.object.version, a.created), (1_001, false));
        let b = hot
            .put(key.clone(), "application/json".into(), body, 5_000)
            .await
            .unwrap();
        assert_eq!(b.object.version, 5_000);
    }

    #[tokio::test]
    async fn an_evicted_unflushed_write_is_read_from_the_dirty_set() {
        let (hot, store, dirty) = tier(1 << 20);
        let key = Key::parse("user/3").unwrap();
        seed(&store, &key, 1, b"\"old\"").await;
        hot.put(
            key.clone(),
            "application/json".into(),
            Bytes::from_static(b"\"new\""),
            2,
        )
        .await
        .unwrap();
        hot.clear();
        let got = hot.get(&key).await.unwrap().unwrap();
        assert_eq!(&got.body[..], b"\"new\"");
        assert_eq!(dirty.len(), 1);
    }

    #[tokio::test]
    async fn a_corrupt_record_is_an_error_not_a_panic() {
        let (hot, store, _) = tier(1 << 20);
        let key = Key::parse("user/4").unwrap();
        store
            .put(
                &Path::from(object_path(&key)),
                PutPayload::from_static(b"garbage"),
            )
            .await
            .unwrap();
        assert!(matches!(
            hot.get(&key).await,
            Err(StoreError::Corrupt { .. })
        ));
    }
}
