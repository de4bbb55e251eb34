//! The pusher: the worker that sends changed objects to the edge's
//! publication endpoint.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt};
use prefold_core::auth::mint_cluster;
use prefold_core::publish::{
    BatchWriter, PushReply, KV_MIN_WRITE_INTERVAL_MS, MAX_BATCH_BYTES, MAX_BATCH_ITEMS,
    PUBLISH_PATH,
};
use prefold_core::Key;
use thiserror::Error;

use super::{add_to_batch, ChangeIndex};
use crate::base::{sleep_until_opt, Backoff, Clock, Secret, Shutdown, Worker};
use crate::engine::Engine;
use crate::storage::faults;

/// The longest pause between retries of a failing edge.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Where and how the pusher publishes.
#[derive(Debug, Clone)]
pub(crate) struct PushSettings {
    /// The edge's base URL.
    pub(crate) edge_url: String,
    /// Signs the pushes.
    pub(crate) cluster_secret: Secret,
    /// How long changes gather into one push.
    pub(crate) interval: Duration,
    /// Longest wait for one push.
    pub(crate) timeout: Duration,
    /// `push=drop` in this file loses pushes (tests and drills).
    pub(crate) fault_file: Option<PathBuf>,
    /// Token timestamps.
    pub(crate) clock: Clock,
}

/// Sends changed objects to the edge.
pub(crate) struct Pusher {
    changes: Arc<ChangeIndex>,
    engine: Arc<Engine>,
    settings: PushSettings,
}

/// Why one push failed (it is retried).
#[derive(Debug, Error)]
enum PushError {
    /// The request did not get an answer, or the answer did not decode.
    #[error(transparent)]
    Request(#[from] reqwest::Error),
    /// The edge refused the batch.
    #[error("the edge answered {0}")]
    Status(reqwest::StatusCode),
}

impl Pusher {
    /// A pusher of `changes`, reading objects from `engine`.
    pub(crate) fn new(
        changes: Arc<ChangeIndex>,
        engine: Arc<Engine>,
        settings: PushSettings,
    ) -> Pusher {
        Pusher {
            changes,
            engine,
            settings,
        }
    }
}

impl Worker for Pusher {
    fn name(&self) -> &'static str {
        "pusher"
    }

    /// Pushes until shutdown. What is still pending then is left to the
    /// edge's scheduled pull.
    async fn run(self, shutdown: Shutdown) {
        let client = match reqwest::Client::builder()
            .timeout(self.settings.timeout)
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the publication client; not pushing");
                return;
            }
        };
        let url = format!(
            "{}{PUBLISH_PATH}",
            self.settings.edge_url.trim_end_matches('/')
        );
        let interval = self.settings.interval;
        // When each key was last written to KV by a push, and keys the edge
        // asked us to hold back: both only for the last second or so.
        let mut last_sent: HashMap<Key, Instant> = HashMap::new();
        let mut hold: HashMap<Key, Instant> = HashMap::new();
        let mut retry = Backoff::new(interval.max(Duration::from_millis(100)), MAX_BACKOFF).retry();
        let mut backoff = Duration::ZERO;
        let min_gap = Duration::from_millis(KV_MIN_WRITE_INTERVAL_MS);
        loop {
            let wake = self.changes.changed.notified();
            let next_due = hold.values().min().copied();
            let woke = shutdown
                .or(async {
                    tokio::select! {
                        () = wake => {}
                        () = sleep_until_opt(next_due.map(Into::into)) => {}
                    }
                })
                .await;
            // Gather: a burst becomes one batch, each key at its latest.
            if woke.is_none() || !shutdown.sleep(interval.max(backoff)).await {
                return;
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
            while !rest.is_empty() && !shutdown.is_fired() {
                let (batch, keys) = self.build(rest).await;
                rest = &rest[keys.len()..];
                if batch.is_empty() {
                    continue;
                }
                if self
                    .settings
                    .fault_file
                    .as_deref()
                    .is_some_and(faults::drops_pushes)
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
                        retry.reset();
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
                backoff = retry.next_delay();
                // Come back for the requeued keys even if nothing changes.
                self.changes.changed.notify_one();
            } else if self.changes.pending() > 0 {
                self.changes.changed.notify_one();
            }
        }
    }
}

impl Pusher {
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
    ) -> Result<PushReply, PushError> {
        let secret = self.settings.cluster_secret.bytes();
        let token = mint_cluster(secret, self.settings.clock.unix_secs());
        let resp = client
            .post(url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(PushError::Status(status));
        }
        Ok(resp.json::<PushReply>().await?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::base::{Durability, Op, Tasks};
    use crate::engine::{EngineSettings, HotTier, Write};
    use crate::storage::{Backlog, Limits};
    use bytes::Bytes;
    use prefold_core::publish::{Batch, Deferred};
    use prefold_core::Preconditions;
    use std::sync::Mutex;

    fn key(s: &str) -> Key {
        Key::parse(s).unwrap()
    }

    /// An engine that records into `changes`, over an in-memory store.
    fn engine(changes: &Arc<ChangeIndex>, tasks: &mut Tasks) -> Arc<Engine> {
        Arc::new(Engine::start(
            vec![Default::default()],
            Arc::new(HotTier::new(1 << 24)),
            Arc::new(Backlog::new(Limits {
                max_keys: 1000,
                max_bytes: 1 << 24,
            })),
            None,
            Arc::new(object_store::memory::InMemory::new()),
            EngineSettings {
                load_timeout: Duration::from_secs(5),
                max_body_bytes: 1 << 20,
                check: None,
                derived_flush_delay: Duration::ZERO,
                observer: Some(changes.clone()),
                clock: Clock::system(),
            },
            tasks,
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
        let changes = Arc::new(ChangeIndex::new(true));
        let mut partitions = Tasks::new("engine");
        let engine = engine(&changes, &mut partitions);
        let (edge_url, seen) = fake_edge().await;
        let pusher = Pusher::new(
            changes.clone(),
            engine.clone(),
            PushSettings {
                edge_url,
                cluster_secret: "c".repeat(32).parse().unwrap(),
                interval: Duration::from_millis(50),
                timeout: Duration::from_secs(5),
                fault_file: None,
                clock: Clock::system(),
            },
        );
        // Five writes before the pusher runs: one item, the last version.
        let mut last = 0;
        for n in 0..5 {
            last = put(&engine, "page/1", n).await;
        }
        put(&engine, "hold/1", 0).await;
        let mut tasks = Tasks::new("publication");
        tasks.spawn(pusher);
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
        assert!(tasks.stop(Duration::from_secs(5)).await);
    }
}
