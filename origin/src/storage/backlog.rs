//! The write-behind backlog: objects acknowledged to clients but not yet
//! confirmed by the store.
//!
//! A write enters the backlog before it is acknowledged. From then on the
//! flusher owns it: the hot tier may evict the key, but the backlog keeps the
//! newest version until the store has confirmed exactly that version. Several
//! writes of one key between two flushes replace each other here and become
//! one store PUT (coalescing).
//!
//! The backlog is bounded in keys and bytes. Past either bound a write that
//! would grow it is refused up front (the API answers 503 with
//! `Retry-After`) — nothing already accepted is ever dropped.
//!
//! Derived objects (views) are kept apart: they do not count against the
//! bounds, because the view engine can always rebuild them and must never
//! make a client's write wait, and each waits a delay before its first PUT,
//! so that a burst of view changes (a fan-out to 100,000 pages) becomes one
//! PUT per page later instead of competing with the burst.

use foldhash::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prefold_core::Key;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::base::metrics::Scrape;
use crate::base::{Backoff, Object};

/// Pauses between retries of one key after failed PUTs: from 100 ms,
/// doubling per attempt up to 10 s, with full jitter.
pub(crate) const RETRY: Backoff =
    Backoff::new(Duration::from_millis(100), Duration::from_secs(10)).with_jitter();

struct Pending {
    object: Arc<Object>,
    /// When the key became dirty (kept while newer writes coalesce into it).
    since: Instant,
    /// The log segment that holds (or will hold) the record of the pending
    /// version. Older records of the key do not matter: replay keeps the
    /// newest version per key. So a key written without pause does not pin
    /// old segments.
    segment: u64,
    attempts: u32,
    retry_at: Option<Instant>,
    /// A derived object: outside the bounds.
    derived: bool,
}

/// Bounds of the backlog.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Most keys waiting at once.
    pub(crate) max_keys: usize,
    /// Most bytes waiting at once (bodies plus a per-object allowance).
    pub(crate) max_bytes: usize,
}

/// Objects acknowledged to clients but not yet confirmed by the store.
pub(crate) struct Backlog {
    map: Mutex<Map>,
    limits: Limits,
    /// Wakes the flusher when work arrives.
    pub(crate) work: Notify,
    /// Wakes the flusher at once, skipping its gathering window.
    pub(crate) urgent: Notify,
    stored: watch::Sender<u64>,
    coalesced: AtomicU64,
    waiters: AtomicUsize,
}

/// Counts one waiting `store`-mode write while alive (also when the wait is
/// cancelled by a timeout or a dropped request).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(counter: &'a AtomicUsize) -> Waiting<'a> {
        counter.fetch_add(1, Ordering::SeqCst);
        Waiting(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct Map {
    keys: HashMap<Key, Pending>,
    bytes: usize,
    /// Of which derived objects.
    derived_keys: usize,
    derived_bytes: usize,
}

/// How much the backlog holds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Extent {
    /// Keys waiting.
    pub(crate) keys: usize,
    /// Bytes waiting.
    pub(crate) bytes: usize,
    /// Age of the oldest write waiting.
    pub(crate) oldest: Duration,
}

impl Backlog {
    /// An empty backlog with bounds.
    pub(crate) fn new(limits: Limits) -> Backlog {
        Backlog {
            map: Mutex::default(),
            limits,
            work: Notify::new(),
            urgent: Notify::new(),
            stored: watch::Sender::new(0),
            coalesced: AtomicU64::new(0),
            waiters: AtomicUsize::new(0),
        }
    }

    fn map(&self) -> MutexGuard<'_, Map> {
        // Every operation leaves the map consistent before it can panic, so
        // a poisoned lock is still safe to use.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the newest version of a key and wakes the flusher, if it fits
    /// in the bounds; returns `false` (and changes nothing) if it does not.
    /// Writes that do not grow the backlog always fit. `segment` is the log
    /// segment current when the write was made.
    pub(crate) fn try_insert(&self, key: Key, object: Arc<Object>, segment: u64) -> bool {
        let mut map = self.map();
        let weight = object.weight();
        let old = map.keys.get(&key).map(|p| p.object.weight());
        let (keys, bytes) = (
            map.keys.len() - map.derived_keys,
            map.bytes - map.derived_bytes,
        );
        if old.is_none() && keys >= self.limits.max_keys {
            return false;
        }
        let old_weight = old.unwrap_or(0);
        if weight > old_weight && bytes - old_weight + weight > self.limits.max_bytes {
            return false;
        }
        Self::put(&mut map, key, object, segment, &self.coalesced, None);
        drop(map);
        self.work.notify_one();
        true
    }

    /// Records a version regardless of the bounds (for log replay at start:
    /// those writes were acknowledged before the restart).
    pub(crate) fn insert(&self, key: Key, object: Arc<Object>, segment: u64) {
        let mut map = self.map();
        Self::put(&mut map, key, object, segment, &self.coalesced, None);
        drop(map);
        self.work.notify_one();
    }

    /// Records the newest version of a derived object, outside the bounds,
    /// first due `delay` after it became pending (later versions coalesce
    /// into it without pushing that back).
    pub(crate) fn insert_derived(
        &self,
        key: Key,
        object: Arc<Object>,
        segment: u64,
        delay: Duration,
    ) {
        let mut map = self.map();
        Self::put(&mut map, key, object, segment, &self.coalesced, Some(delay));
        drop(map);
        self.work.notify_one();
    }

    fn put(
        map: &mut Map,
        key: Key,
        object: Arc<Object>,
        segment: u64,
        coalesced: &AtomicU64,
        derived: Option<Duration>,
    ) {
        let weight = object.weight();
        match map.keys.get_mut(&key) {
            Some(p) => {
                let old = p.object.weight();
                p.object = object;
                p.segment = segment;
                let derived = p.derived;
                map.bytes = map.bytes - old + weight;
                if derived {
                    map.derived_bytes = map.derived_bytes - old + weight;
                }
                coalesced.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                let now = Instant::now();
                map.keys.insert(
                    key,
                    Pending {
                        object,
                        since: now,
                        segment,
                        attempts: 0,
                        retry_at: derived.map(|d| now + d),
                        derived: derived.is_some(),
                    },
                );
                map.bytes += weight;
                if derived.is_some() {
                    map.derived_keys += 1;
                    map.derived_bytes += weight;
                }
            }
        }
    }

    /// The pending version of a key, if it has one.
    pub(crate) fn get(&self, key: &Key) -> Option<Arc<Object>> {
        self.map().keys.get(key).map(|p| p.object.clone())
    }

    /// Pending keys.
    pub(crate) fn len(&self) -> usize {
        self.map().keys.len()
    }

    /// Whether nothing is pending.
    pub(crate) fn is_empty(&self) -> bool {
        self.map().keys.is_empty()
    }

    /// Writes that replaced a pending version instead of adding a store PUT.
    pub(crate) fn coalesced(&self) -> u64 {
        self.coalesced.load(Ordering::Relaxed)
    }

    /// Keys, bytes and the oldest write's age (scans the backlog; for metrics).
    pub(crate) fn extent(&self) -> Extent {
        let map = self.map();
        let now = Instant::now();
        Extent {
            keys: map.keys.len(),
            bytes: map.bytes,
            oldest: map
                .keys
                .values()
                .map(|p| now.duration_since(p.since))
                .max()
                .unwrap_or_default(),
        }
    }

    /// The oldest log segment a pending write may still need, if any.
    pub(crate) fn oldest_segment(&self) -> Option<u64> {
        self.map().keys.values().map(|p| p.segment).min()
    }

    /// Pending keys whose retry pause is over (all of them with `all`), with
    /// how many attempts each has had.
    pub(crate) fn due(&self, all: bool) -> Vec<(Key, Arc<Object>, u32)> {
        let now = Instant::now();
        self.map()
            .keys
            .iter()
            .filter(|(_, p)| all || p.retry_at.is_none_or(|t| t <= now))
            .map(|(k, p)| (k.clone(), p.object.clone(), p.attempts))
            .collect()
    }

    /// Whether any pending key is due (not backing off).
    pub(crate) fn any_due(&self) -> bool {
        let now = Instant::now();
        self.map()
            .keys
            .values()
            .any(|p| p.retry_at.is_none_or(|t| t <= now))
    }

    /// `store`-mode writes waiting for the store now.
    pub(crate) fn store_waiters(&self) -> usize {
        self.waiters.load(Ordering::SeqCst)
    }

    /// When the next key that is backing off becomes due.
    pub(crate) fn next_retry(&self) -> Option<Instant> {
        self.map().keys.values().filter_map(|p| p.retry_at).min()
    }

    /// Forgets a key once the store holds `version`, unless a newer write
    /// arrived meanwhile (that one still needs storing).
    pub(crate) fn stored(&self, key: &Key, version: u64) {
        let mut map = self.map();
        if map
            .keys
            .get(key)
            .is_some_and(|p| p.object.version == version)
        {
            if let Some(p) = map.keys.remove(key) {
                let weight = p.object.weight();
                map.bytes -= weight;
                if p.derived {
                    map.derived_keys -= 1;
                    map.derived_bytes -= weight;
                }
            }
        }
        drop(map);
        self.stored.send_modify(|n| *n += 1);
    }

    /// Schedules a retry of a key after a failed PUT: exponential backoff
    /// with full jitter, so that many keys failing together do not retry in
    /// lockstep.
    pub(crate) fn failed(&self, key: &Key) {
        let mut map = self.map();
        if let Some(p) = map.keys.get_mut(key) {
            p.attempts = p.attempts.saturating_add(1);
            p.retry_at = Some(Instant::now() + RETRY.delay(p.attempts));
        }
    }

    /// The backlog's numbers, for `/metrics`.
    pub(crate) fn report(&self, s: &mut Scrape) {
        let e = self.extent();
        s.gauge(
            "backlog_keys",
            "Keys acknowledged but not yet in the object store",
            e.keys as u64,
        );
        s.gauge(
            "backlog_bytes",
            "Bytes acknowledged but not yet in the object store",
            e.bytes as u64,
        );
        s.gauge_f64(
            "backlog_oldest_age_seconds",
            "Age of the oldest write not yet in the object store",
            e.oldest.as_secs_f64(),
        );
        s.counter(
            "writes_coalesced",
            "Writes folded into a pending version instead of adding a PUT",
            self.coalesced(),
        );
    }

    /// Resolves once the store holds `version` of `key` or a newer one.
    pub(crate) async fn wait_stored(&self, key: &Key, version: u64) {
        let mut rx = self.stored.subscribe();
        let _waiting = Waiting::new(&self.waiters);
        loop {
            let pending = self.get(key).is_some_and(|o| o.version >= version);
            if !pending {
                return;
            }
            self.urgent.notify_one();
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;

    fn obj(version: u64, len: usize) -> Arc<Object> {
        Arc::new(Object::new(
            version,
            "application/json",
            Bytes::from(vec![b'1'; len]),
        ))
    }

    fn limits(max_keys: usize, max_bytes: usize) -> Limits {
        Limits {
            max_keys,
            max_bytes,
        }
    }

    #[test]
    fn coalesces_and_keeps_a_newer_write() {
        let dirty = Backlog::new(limits(10, 1 << 20));
        let key = Key::parse("c/1").unwrap();
        for v in 1..=3 {
            dirty.insert(key.clone(), obj(v, 1), 4 + v);
        }
        assert_eq!((dirty.len(), dirty.coalesced()), (1, 2));
        dirty.stored(&key, 2);
        assert_eq!(dirty.get(&key).unwrap().version, 3);
        assert_eq!(dirty.oldest_segment(), Some(7));
        dirty.stored(&key, 3);
        assert!(dirty.is_empty());
        assert_eq!(dirty.extent().bytes, 0);
    }

    #[test]
    fn derived_objects_wait_their_delay_and_never_take_client_room() {
        let d = Backlog::new(limits(1, 1 << 20));
        let delay = Duration::from_secs(3600);
        for i in 0..10 {
            d.insert_derived(Key::parse(&format!("v/{i}")).unwrap(), obj(1, 10), 0, delay);
        }
        // Ten derived objects pending, yet a client write still fits...
        assert!(d.try_insert(Key::parse("a/1").unwrap(), obj(1, 10), 0));
        // ...and the bound (one key) holds for client writes.
        assert!(!d.try_insert(Key::parse("a/2").unwrap(), obj(1, 10), 0));
        // Only the client write is due; the derived ones wait their delay.
        let due: Vec<String> = d
            .due(false)
            .into_iter()
            .map(|(k, _, _)| k.to_string())
            .collect();
        assert_eq!(due, ["a/1"]);
        assert_eq!(d.due(true).len(), 11, "a drain takes everything");
        // Storing a derived object frees only derived room.
        d.stored(&Key::parse("v/3").unwrap(), 1);
        assert_eq!(d.len(), 10);
        assert!(!d.try_insert(Key::parse("a/2").unwrap(), obj(1, 10), 0));
        d.stored(&Key::parse("a/1").unwrap(), 1);
        assert!(d.try_insert(Key::parse("a/2").unwrap(), obj(1, 10), 0));
    }

    #[test]
    fn bounds_refuse_growth_only() {
        let dirty = Backlog::new(limits(2, 1000));
        let (a, b, c) = (
            Key::parse("b/a").unwrap(),
            Key::parse("b/b").unwrap(),
            Key::parse("b/c").unwrap(),
        );
        assert!(dirty.try_insert(a.clone(), obj(1, 10), 1));
        assert!(dirty.try_insert(b.clone(), obj(1, 10), 1));
        assert!(!dirty.try_insert(c.clone(), obj(1, 10), 1), "key bound");
        assert!(dirty.get(&c).is_none());
        assert!(
            dirty.try_insert(a.clone(), obj(2, 10), 1),
            "replacing a pending key"
        );
        assert!(!dirty.try_insert(a.clone(), obj(3, 900), 1), "byte bound");
        assert_eq!(dirty.get(&a).unwrap().version, 2);
        dirty.stored(&b, 1);
        assert!(dirty.try_insert(c, obj(1, 10), 1));
    }

    #[tokio::test]
    async fn failures_back_off_with_jitter_up_to_the_cap() {
        let dirty = Backlog::new(limits(10, 1 << 20));
        let key = Key::parse("f/1").unwrap();
        dirty.insert(key.clone(), obj(1, 1), 1);
        assert_eq!(dirty.due(false).len(), 1);
        for _ in 0..40 {
            dirty.failed(&key);
        }
        assert_eq!(dirty.due(true)[0].2, 40);
        let wait = dirty.next_retry().unwrap() - Instant::now();
        assert!(wait <= RETRY.cap(), "{wait:?}");
    }

    #[tokio::test]
    async fn wait_stored_resolves_on_the_version_or_a_newer_one() {
        let dirty = Arc::new(Backlog::new(limits(10, 1 << 20)));
        let key = Key::parse("w/1").unwrap();
        dirty.insert(key.clone(), obj(1, 1), 1);
        let waiter = {
            let (dirty, key) = (dirty.clone(), key.clone());
            tokio::spawn(async move { dirty.wait_stored(&key, 1).await })
        };
        dirty.insert(key.clone(), obj(2, 1), 1);
        dirty.stored(&key, 1);
        let mut waiter = waiter;
        let early = tokio::time::timeout(Duration::from_millis(50), &mut waiter).await;
        assert!(early.is_err(), "version 2 is still pending");
        dirty.stored(&key, 2);
        waiter.await.unwrap();
    }
}
