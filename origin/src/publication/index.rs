//! The change index: every key's latest version, ordered by version, and
//! the keys waiting to be pushed.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

use foldhash::HashSet;
use prefold_core::Key;
use tokio::sync::Notify;

use super::PublishStats;
use crate::base::metrics::Scrape;
use crate::engine::Observer;

/// Every key's latest version, ordered by version, and the keys waiting to
/// be pushed.
pub(crate) struct ChangeIndex {
    inner: Mutex<Index>,
    /// Wakes the pusher.
    pub(super) changed: Notify,
    /// Whether anything pushes (without an edge URL only the feed reads).
    push: bool,
    /// Counters.
    pub(crate) stats: PublishStats,
}

/// The index holds each key once, at its latest version. It needs no map
/// from key to version: the partition worker that records a version knows
/// the one it replaces (about 40 bytes per key in all).
#[derive(Default)]
struct Index {
    by_version: BTreeSet<(u64, Key)>,
    pending: HashSet<Key>,
}

/// One page of the change feed.
pub(crate) struct FeedPage {
    /// Keys with the versions they were listed at, oldest first.
    pub(crate) keys: Vec<(u64, Key)>,
    /// Whether more changes wait before the horizon.
    pub(crate) more: bool,
}

impl ChangeIndex {
    /// An empty index; `push` says whether a pusher runs.
    pub(crate) fn new(push: bool) -> ChangeIndex {
        ChangeIndex {
            inner: Mutex::new(Index::default()),
            changed: Notify::new(),
            push,
            stats: PublishStats::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        // A panic while holding this lock leaves the index consistent
        // (every update is a remove-then-insert), so a poisoned lock is used.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records what the warm load found, without pushing it: the edge's
    /// cursor decides what it still needs.
    pub(crate) fn seed(&self, entries: impl IntoIterator<Item = (Key, u64)>) {
        let mut index = self.lock();
        index
            .by_version
            .extend(entries.into_iter().map(|(k, v)| (v, k)));
    }

    /// Records a new version of a key, replacing `previous` (called by the
    /// partition worker that applied it, the only writer of the key).
    fn record(&self, key: &Key, previous: Option<u64>, version: u64) {
        let mut index = self.lock();
        if let Some(p) = previous {
            index.by_version.remove(&(p, key.clone()));
        }
        index.by_version.insert((version, key.clone()));
        if self.push {
            index.pending.insert(key.clone());
        }
        drop(index);
        if self.push {
            self.changed.notify_one();
        }
    }

    /// Keys waiting to be pushed.
    pub(crate) fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Publication's numbers, for `/metrics`.
    pub(crate) fn report(&self, s: &mut Scrape) {
        self.stats.report(s);
        s.gauge(
            "publish_pending",
            "Changed keys waiting to be pushed",
            self.pending() as u64,
        );
    }

    /// Keys whose latest version is in `(after, horizon]`, oldest first:
    /// `limit` of them, or a few more so that a page never ends between two
    /// keys of one version (the cursor is a version, so the next page starts
    /// after all of them).
    pub(crate) fn feed(&self, after: u64, horizon: u64, limit: usize) -> FeedPage {
        use std::ops::Bound::{Excluded, Unbounded};
        let index = self.lock();
        let range = index
            .by_version
            .range((Excluded((after, max_key())), Unbounded))
            .take_while(|(v, _)| *v <= horizon);
        let mut keys: Vec<(u64, Key)> = Vec::new();
        let mut more = false;
        for (v, k) in range {
            if keys.len() >= limit && keys.last().is_none_or(|(last, _)| last != v) {
                more = true;
                break;
            }
            keys.push((*v, k.clone()));
        }
        FeedPage { keys, more }
    }

    pub(super) fn take_pending(&self) -> Vec<Key> {
        self.lock().pending.drain().collect()
    }

    pub(super) fn requeue(&self, keys: impl IntoIterator<Item = Key>) {
        self.lock().pending.extend(keys);
    }
}

/// A key that sorts after every real key (`~` is the largest unreserved
/// character, and real keys have a `/`), so `(v, max_key())` bounds every
/// entry of version `v`.
fn max_key() -> Key {
    static MAX: std::sync::OnceLock<Key> = std::sync::OnceLock::new();
    MAX.get_or_init(|| {
        // A valid key of 512 `~`-bytes once its required `/` is placed last
        // but one: `~~~…~/~`.
        let mut s = "~".repeat(prefold_core::key::MAX_KEY_BYTES - 2);
        s.push_str("/~");
        Key::parse(&s).unwrap_or_else(|_| unreachable!("a valid key"))
    })
    .clone()
}

impl Observer for ChangeIndex {
    fn applied(&self, key: &Key, previous: Option<u64>, version: u64) {
        self.record(key, previous, version);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(s: &str) -> Key {
        Key::parse(s).unwrap()
    }

    #[test]
    fn the_feed_lists_each_key_once_at_its_latest_version() {
        let c = ChangeIndex::new(true);
        c.seed([(key("a/1"), 10), (key("a/2"), 20)]);
        assert_eq!(c.pending(), 0, "seeding pushes nothing");
        c.record(&key("a/1"), Some(10), 30);
        c.record(&key("a/3"), None, 30);
        c.record(&key("a/1"), Some(30), 40);
        let page = c.feed(0, u64::MAX, 10);
        let listed: Vec<(u64, &str)> = page.keys.iter().map(|(v, k)| (*v, k.as_str())).collect();
        assert_eq!(listed, [(20, "a/2"), (30, "a/3"), (40, "a/1")]);
        assert!(!page.more);
        assert_eq!(c.pending(), 2);
        // Paging: after a cursor, up to a horizon, with `more`.
        let p = c.feed(20, u64::MAX, 1);
        assert_eq!(p.keys[0].1.as_str(), "a/3");
        assert!(p.more);
        let p = c.feed(30, 35, 10);
        assert!(
            p.keys.is_empty() && !p.more,
            "a/1 at 40 is past the horizon"
        );
        // Two keys with one version are both listed after the one before.
        c.record(&key("b/1"), None, 50);
        c.record(&key("b/2"), None, 50);
        let p = c.feed(40, u64::MAX, 10);
        assert_eq!(p.keys.len(), 2);
        let p = c.feed(30, u64::MAX, 2);
        assert_eq!(p.keys.len(), 3, "a page does not end inside version 50");
        assert!(!p.more);
        let p = c.feed(50, u64::MAX, 10);
        assert!(p.keys.is_empty());
    }
}
