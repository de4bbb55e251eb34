//! Publication to the edge: the change index, the change feed it serves, and
//! the pusher.
//!
//! Every applied write (a client's, or a derived view's) is recorded in
//! [`Changes`], one entry per key at its latest version, ordered by version.
//! Two readers use it:
//!
//! - the **pusher** ([`Pusher::run`]) sends changed keys to the edge's
//!   publication endpoint in batches of at most
//!   [`MAX_BATCH_ITEMS`](prefold_core::publish::MAX_BATCH_ITEMS), with the
//!   object as it is when the batch is built, so a key changed many times in
//!   a second is sent once, latest version only. It never sends one key
//!   twice within a second (Workers KV's write rate per key), and keys the
//!   edge defers are sent again when it says. Failed pushes are retried with
//!   backoff; a push that is lost anyway is repaired by the feed;
//! - the **change feed** ([`Changes::feed`], served at
//!   [`CHANGES_PATH`](prefold_core::publish::CHANGES_PATH)) lists keys by
//!   version after a cursor. The edge's Cron Trigger reads it from a cursor
//!   kept in KV. Versions are the origin's clock in microseconds, so a
//!   cursor stays meaningful across restarts: the index is seeded from the
//!   warm load, and whatever changed after the cursor — pushed or not — is
//!   listed. The feed stops short of the last [`--feed-horizon-ms`] so a
//!   write that took its version just before a feed read, but was recorded
//!   just after, cannot fall behind a cursor.
//!
//! [`--feed-horizon-ms`]: crate::config::Config::feed_horizon_ms

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt, HashSet};
use prefold_core::auth::mint_cluster;
use prefold_core::publish::{
    BatchWriter, PushReply, KV_MIN_WRITE_INTERVAL_MS, MAX_BATCH_BYTES, MAX_BATCH_ITEMS,
    PUBLISH_PATH,
};
use prefold_core::Key;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Secret;
use crate::engine::Engine;
use crate::object::Object;

/// Publication counters, for `/metrics`.
#[derive(Debug, Default)]
pub struct PublishStats {
    /// Objects the edge wrote to KV from pushes.
    pub pushed: AtomicU64,
    /// Pushed objects KV already held.
    pub unchanged: AtomicU64,
    /// Pushed objects the edge deferred (written less than a second ago).
    pub deferred: AtomicU64,
    /// Push requests that failed (retried).
    pub failures: AtomicU64,
    /// Pushes lost to fault injection.
    pub dropped: AtomicU64,
    /// Change feed pages served.
    pub feed_pages: AtomicU64,
    /// Objects listed by the change feed.
    pub feed_items: AtomicU64,
}

/// Every key's latest version, ordered by version, and the keys waiting to
/// be pushed.
pub struct Changes {
    inner: Mutex<Index>,
    /// Wakes the pusher.
    changed: Notify,
    /// Whether anything pushes (without an edge URL only the feed reads).
    push: bool,
    /// Counters.
    pub stats: PublishStats,
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
pub struct FeedPage {
    /// Keys with the versions they were listed at, oldest first.
    pub keys: Vec<(u64, Key)>,
    /// Whether more changes wait before the horizon.
    pub more: bool,
}

impl Changes {
    /// An empty index; `push` says whether a pusher runs.
    pub fn new(push: bool) -> Changes {
        Changes {
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
    pub fn seed(&self, entries: impl IntoIterator<Item = (Key, u64)>) {
        let mut index = self.lock();
        index
            .by_version
            .extend(entries.into_iter().map(|(k, v)| (v, k)));
    }

    /// Records a new version of a key, replacing `previous` (called by the
    /// partition worker that applied it, the only writer of the key).
    pub fn record(&self, key: &Key, previous: Option<u64>, version: u64) {
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
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Keys whose latest version is in `(after, horizon]`, oldest first:
    /// `limit` of them, or a few more so that a page never ends between two
    /// keys of one version (the cursor is a version, so the next page starts
    /// after all of them).
    pub fn feed(&self, after: u64, horizon: u64, limit: usize) -> FeedPage {
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

    fn take_pending(&self) -> Vec<Key> {
        self.lock().pending.drain().collect()
    }

    fn requeue(&self, keys: impl IntoIterator<Item = Key>) {
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

/// Sends changed objects to the edge.
pub struct Pusher {
    /// The change index.
    pub changes: Arc<Changes>,
    /// Where objects are read.
    pub engine: Arc<Engine>,
    /// The edge's base URL.
    pub edge_url: String,
    /// Signs the pushes.
    pub cluster_secret: Secret,
    /// How long changes gather into one push.
    pub interval: Duration,
    /// Longest wait for one push.
    pub timeout: Duration,
    /// `push=drop` in this file loses pushes (tests and drills).
    pub fault_file: Option<PathBuf>,
}

/// The longest pause between retries of a failing edge.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl Pusher {
    /// Pushes until `stop` is cancelled. Every wait races `stop`; what is
    /// still pending then is left to the edge's scheduled pull.
    pub async fn run(self, stop: CancellationToken) {
        let client = match reqwest::Client::builder().timeout(self.timeout).build() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the publication client; not pushing");
                return;
            }
        };
        let url = format!("{}{PUBLISH_PATH}", self.edge_url.trim_end_matches('/'));
        // When each key was last written to KV by a push, and keys the edge
        // asked us to hold back: both only for the last second or so.
        let mut last_sent: HashMap<Key, Instant> = HashMap::new();
        let mut hold: HashMap<Key, Instant> = HashMap::new();
        let mut backoff = Duration::ZERO;
        let min_gap = Duration::from_millis(KV_MIN_WRITE_INTERVAL_MS);
        loop {
            let wake = self.changes.changed.notified();
            let next_due = hold.values().min().copied();
            tokio::select! {
                () = wake => {}
                () = sleep_until_opt(next_due) => {}
                () = stop.cancelled() => return,
            }
            // Gather: a burst becomes one batch, each key at its latest.
            tokio::select! {
                () = tokio::time::sleep(self.interval.max(backoff)) => {}
                () = stop.cancelled() => return,
            }
            let now = Instant::now();
            last_sent.retain(|_, t| now.duration_since(*t) < min_gap);
            let mut due = Vec::new();
            for key in self.changes.take_pending() {
                let not_before = [
                    last_sent.get(&key).map(|t| *t + min_gap),
                    hold.get(&key).copied(),
                ]
                .into_iter()
                .flatten()
                .max();
                match not_before {
                    Some(t) if t > now => {
                        hold.insert(key, t);
                    }
                    _ => {
                        hold.remove(&key);
                        due.push(key);
                    }
                }
            }
            // Held keys wait in `hold` and go back to pending when due.
            let ripe: Vec<Key> = hold
                .iter()
                .filter(|(_, t)| **t <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for k in ripe {
                hold.remove(&k);
                due.push(k);
            }
            let mut failed = false;
            let mut rest = due.as_slice();
            while !rest.is_empty() && !stop.is_cancelled() {
                let (batch, keys) = self.build(rest).await;
                rest = &rest[keys.len()..];
                if batch.is_empty() {
                    continue;
                }
                if self
                    .fault_file
                    .as_deref()
                    .is_some_and(crate::faults::drops_pushes)
                {
                    self.changes
                        .stats
                        .dropped
                        .fetch_add(keys.len() as u64, Ordering::Relaxed);
                    continue;
                }
                match self.send(&client, &url, batch.finish(None, false)).await {
                    Ok(reply) => {
                        let sent_at = Instant::now();
                        let s = &self.changes.stats;
                        s.pushed
                            .fetch_add(u64::from(reply.written), Ordering::Relaxed);
                        s.unchanged
                            .fetch_add(u64::from(reply.unchanged), Ordering::Relaxed);
                        s.deferred
                            .fetch_add(reply.deferred.len() as u64, Ordering::Relaxed);
                        for k in &keys {
                            last_sent.insert(k.clone(), sent_at);
                        }
                        for d in reply.deferred {
                            if let Ok(k) = Key::parse(&d.k) {
                                let after = Duration::from_millis(d.after_ms.min(60_000));
                                hold.insert(k, sent_at + after);
                            }
                        }
                        backoff = Duration::ZERO;
                    }
                    Err(e) => {
                        self.changes.stats.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, keys = keys.len(), "push to the edge failed; retrying");
                        self.changes.requeue(keys.iter().cloned());
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                self.changes.requeue(rest.iter().cloned());
                backoff =
                    (backoff * 2).clamp(self.interval.max(Duration::from_millis(100)), MAX_BACKOFF);
                // Come back for the requeued keys even if nothing changes.
                self.changes.changed.notify_one();
            } else if self.changes.pending() > 0 {
                self.changes.changed.notify_one();
            }
        }
    }

    /// Builds one batch from the front of `keys`: at most
    /// [`MAX_BATCH_ITEMS`] and about [`MAX_BATCH_BYTES`]. Returns it with the
    /// keys it covered (keys that no longer exist are covered but absent).
    async fn build(&self, keys: &[Key]) -> (BatchWriter, Vec<Key>) {
        let mut batch = BatchWriter::default();
        let mut covered = Vec::new();
        for key in keys {
            if batch.len() >= MAX_BATCH_ITEMS
                || (!batch.is_empty() && batch.bytes() >= MAX_BATCH_BYTES)
            {
                break;
            }
            covered.push(key.clone());
            match self.engine.read_slot(key).await {
                Ok(Some(o)) => add_to_batch(&mut batch, key, &o),
                Ok(None) => {}
                Err(e) => {
                    // The feed lists it again; the pull will carry it.
                    tracing::warn!(%key, error = %e, "cannot read a changed object to push it");
                }
            }
        }
        (batch, covered)
    }

    async fn send(
        &self,
        client: &reqwest::Client,
        url: &str,
        body: Vec<u8>,
    ) -> Result<PushReply, String> {
        let token = mint_cluster(self.cluster_secret.bytes(), unix_secs());
        let resp = client
            .post(url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("the edge answered {status}"));
        }
        resp.json::<PushReply>().await.map_err(|e| e.to_string())
    }
}

/// Adds an object's current version to a batch (a deletion as such): the
/// one encoding of pushes and feed pages.
pub fn add_to_batch(batch: &mut BatchWriter, key: &Key, object: &Object) {
    if object.tombstone {
        batch.push(key.as_str(), object.version, "", None);
    } else {
        batch.push(
            key.as_str(),
            object.version,
            object.content_type_str(),
            Some(&object.body),
        );
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Seconds since the Unix epoch (token expiry).
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::dirty::{Dirty, Limits};
    use crate::engine::{Durability, Options, Write};
    use crate::hot::HotTier;
    use crate::ops::Op;
    use bytes::Bytes;
    use prefold_core::publish::{Batch, Deferred};
    use prefold_core::Preconditions;

    fn key(s: &str) -> Key {
        Key::parse(s).unwrap()
    }

    /// An engine that records into `changes`, over an in-memory store.
    fn engine(changes: &Arc<Changes>) -> Arc<Engine> {
        Arc::new(Engine::start(
            vec![Default::default()],
            Arc::new(HotTier::new(1 << 24)),
            Arc::new(Dirty::new(Limits {
                max_keys: 1000,
                max_bytes: 1 << 24,
            })),
            None,
            Arc::new(object_store::memory::InMemory::new()),
            Options {
                load_timeout: Duration::from_secs(5),
                max_body_bytes: 1 << 20,
                check: None,
                derived_flush_delay: Duration::ZERO,
                changes: Some(changes.clone()),
            },
        ))
    }

    async fn put(engine: &Engine, k: &str, n: u32) -> u64 {
        let w = Write {
            key: key(k),
            op: Op::Put {
                content_type: "application/json".into(),
                body: Bytes::from(format!("{{\"n\":{n}}}")),
            },
            preconditions: Preconditions::default(),
            durability: Durability::Memory,
        };
        engine.write(w).await.unwrap().object.version
    }

    /// A stand-in for the edge (the pusher is what is tested): it records
    /// each batch as (key, version) pairs with the time it came, and defers
    /// `hold/1` once, for 1.5 s.
    async fn fake_edge() -> (String, Arc<Mutex<Vec<Sent>>>) {
        use axum::routing::post;
        let seen: Arc<Mutex<Vec<Sent>>> = Arc::default();
        let log = seen.clone();
        let app = axum::Router::new().route(
            PUBLISH_PATH,
            post(move |body: Bytes| {
                let log = log.clone();
                async move {
                    let batch = Batch::parse(&body).unwrap();
                    let items: Vec<(String, u64)> =
                        batch.items.iter().map(|i| (i.k.to_string(), i.v)).collect();
                    let mut log = log.lock().unwrap();
                    let first_hold = !log
                        .iter()
                        .any(|(_, b)| b.iter().any(|(k, _)| k == "hold/1"));
                    let mut reply = PushReply::default();
                    for (k, _) in &items {
                        if k == "hold/1" && first_hold {
                            reply.deferred.push(Deferred {
                                k: k.clone(),
                                after_ms: 1_500,
                            });
                        } else {
                            reply.written += 1;
                        }
                    }
                    log.push((Instant::now(), items));
                    axum::Json(reply)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, seen)
    }

    /// One batch as the fake edge saw it.
    type Sent = (Instant, Vec<(String, u64)>);

    /// Polls the fake edge's log (10 s at most).
    async fn wait_for(seen: &Mutex<Vec<Sent>>, pred: impl Fn(&[Sent]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if pred(&seen.lock().unwrap()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out: {:?}",
                seen.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn pushes_carry_the_latest_version_once_and_honour_deferrals() {
        let changes = Arc::new(Changes::new(true));
        let engine = engine(&changes);
        let (edge_url, seen) = fake_edge().await;
        let stop = CancellationToken::new();
        let pusher = Pusher {
            changes: changes.clone(),
            engine: engine.clone(),
            edge_url,
            cluster_secret: "c".repeat(32).parse().unwrap(),
            interval: Duration::from_millis(50),
            timeout: Duration::from_secs(5),
            fault_file: None,
        };
        // Five writes before the pusher runs: one item, the last version.
        let mut last = 0;
        for n in 0..5 {
            last = put(&engine, "page/1", n).await;
        }
        put(&engine, "hold/1", 0).await;
        let task = tokio::spawn(pusher.run(stop.clone()));
        let has = |log: &[Sent], k: &str| {
            log.iter()
                .flat_map(|(_, b)| b)
                .filter(|(kk, _)| kk == k)
                .count()
        };
        wait_for(&seen, |log| {
            has(log, "page/1") >= 1 && has(log, "hold/1") >= 1
        })
        .await;
        {
            let log = seen.lock().unwrap();
            let page: Vec<u64> = log
                .iter()
                .flat_map(|(_, b)| b)
                .filter(|(k, _)| k == "page/1")
                .map(|(_, v)| *v)
                .collect();
            assert_eq!(page, [last], "one push, latest version");
        }
        // The deferred key comes again, no sooner than the edge allowed,
        // with the version that is newest by then.
        let newer = put(&engine, "hold/1", 1).await;
        wait_for(&seen, |log| has(log, "hold/1") >= 2).await;
        let log = seen.lock().unwrap().clone();
        let holds: Vec<(Instant, u64)> = log
            .iter()
            .flat_map(|(t, b)| {
                b.iter()
                    .filter(|(k, _)| k == "hold/1")
                    .map(move |(_, v)| (*t, *v))
            })
            .collect();
        // Longer than the pusher's own one-second gap, so only the
        // deferral explains it.
        assert!(holds[1].0.duration_since(holds[0].0) >= Duration::from_millis(1_500));
        assert_eq!(holds[1].1, newer);
        assert_eq!(has(&log, "page/1"), 1, "a key written once is pushed once");
        stop.cancel();
        task.await.unwrap();
    }

    #[test]
    fn the_feed_lists_each_key_once_at_its_latest_version() {
        let c = Changes::new(true);
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
