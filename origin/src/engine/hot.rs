//! The hot tier: every object an origin serves, in memory.
//!
//! A byte-weighted moka cache, sized to hold the whole working set (the
//! origin loads its share of the store into it before it reports ready).
//! Reads look here and nowhere else unless the key was evicted; only the
//! key's partition worker inserts (see [`super::partition`]), so a slow load can
//! never overwrite a newer write. A slot may also record that a key has no
//! object, so that repeated reads of a missing key stay in memory.
//!
//! Evictions are counted: in a sized deployment they should stay at zero,
//! and a growing count says `--cache-bytes` is too small. An evicted object
//! that is not yet stored is still in the write-behind backlog, so eviction
//! never loses a write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use moka::future::Cache;
use moka::notification::RemovalCause;
use prefold_core::Key;

use crate::base::metrics::Scrape;
use crate::base::Slot;

/// The in-memory tier of one origin.
pub(crate) struct HotTier {
    cache: Cache<Key, Slot, foldhash::fast::RandomState>,
    evictions: Arc<AtomicU64>,
}

impl HotTier {
    /// A hot tier holding at most `capacity_bytes` of keys and objects.
    pub(crate) fn new(capacity_bytes: u64) -> HotTier {
        let evictions = Arc::new(AtomicU64::new(0));
        let counter = evictions.clone();
        let cache = Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|key: &Key, slot: &Slot| {
                // Keys, bodies and a rough allowance for the bookkeeping.
                let body = slot.as_ref().map_or(0, |o| o.weight());
                u32::try_from(key.as_str().len() + body + 64).unwrap_or(u32::MAX)
            })
            .eviction_listener(move |_key, slot: Slot, cause| {
                if cause == RemovalCause::Size && slot.is_some() {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build_with_hasher(foldhash::fast::RandomState::default());
        HotTier { cache, evictions }
    }

    /// What the cache holds for a key, if anything.
    pub(crate) async fn get(&self, key: &Key) -> Option<Slot> {
        self.cache.get(key).await
    }

    /// Sets a key's slot. Only the key's partition worker calls this.
    pub(crate) async fn insert(&self, key: Key, slot: Slot) {
        self.cache.insert(key, slot).await;
    }

    /// Objects evicted for lack of room since start.
    pub(crate) fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Entries held (approximate, as moka counts).
    pub(crate) fn entries(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Bytes held, by the weigher (approximate).
    pub(crate) fn weighted_bytes(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// The hot tier's numbers, for `/metrics`.
    pub(crate) fn report(&self, s: &mut Scrape) {
        s.counter(
            "hot_evictions",
            "Objects evicted from the hot tier for lack of room",
            self.evictions(),
        );
        s.gauge("hot_entries", "Entries in the hot tier", self.entries());
        s.gauge(
            "hot_bytes",
            "Bytes in the hot tier, as weighed",
            self.weighted_bytes(),
        );
    }

    /// Drops every cached entry (tests use it to force misses).
    #[cfg(test)]
    pub(crate) fn clear(&self) {
        self.cache.invalidate_all();
    }

    /// Runs moka's pending maintenance (evictions), for tests and metrics.
    pub(crate) async fn sync(&self) {
        self.cache.run_pending_tasks().await;
    }
}
