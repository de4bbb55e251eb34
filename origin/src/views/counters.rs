//! Counter views: high-rate counters that take increments without contention
//! and publish at most once per period.
//!
//! The seeds shard a hot counter so that increments do not serialize on one
//! entity. Here an increment never touches the counter's object: it adds to
//! an atomic in memory (a read lock and a `fetch_add`; the write lock is
//! taken only the first time a key is seen). Once per period the publisher
//! swaps each atomic to zero and applies the sum as one `increment` of the
//! published object `{"count": N}`, which the write-behind coalesces toward
//! the store and which reaches the edge at most once per period — Workers KV
//! takes one write per second per key.
//!
//! An increment is acknowledged from memory: increments not yet published
//! when the process dies are lost (at most one period's worth). A graceful
//! shutdown publishes them first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prefold_core::model::ViewKind;
use prefold_core::{Key, Model, Preconditions};
use serde_json::Number;
use tokio_util::sync::CancellationToken;

use crate::engine::{Durability, Engine, Write};
use crate::ops::Op;

/// Shards of the pending map: distinct keys rarely share a lock.
const SHARDS: usize = 64;

/// One shard: counter key → its pending sum.
type Shard = RwLock<HashMap<Key, Arc<AtomicI64>>>;

/// Pending increments of every counter view.
#[derive(Debug)]
pub struct Counters {
    shards: Box<[Shard]>,
    /// Publication period per counter view.
    periods: HashMap<String, Duration>,
    /// Increments taken.
    pub increments: AtomicU64,
    /// Publications written.
    pub publications: AtomicU64,
}

impl Counters {
    /// Counters for the model's counter views.
    pub fn new(model: &Model) -> Counters {
        Counters {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            periods: model
                .views()
                .filter_map(|v| match &v.kind {
                    ViewKind::Counter(c) => {
                        Some((v.name.clone(), Duration::from_millis(c.publish_ms)))
                    }
                    _ => None,
                })
                .collect(),
            increments: AtomicU64::new(0),
            publications: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &Key) -> &Shard {
        let h = xxhash_rust::xxh3::xxh3_64(key.as_str().as_bytes());
        // The remainder is below SHARDS.
        &self.shards[(h % SHARDS as u64) as usize]
    }

    /// Adds `by` to a counter (`key` must name a counter view).
    pub fn add(&self, key: &Key, by: i64) {
        self.increments.fetch_add(1, Ordering::Relaxed);
        self.pend(key, by);
    }

    /// Adds to a counter's unpublished sum.
    fn pend(&self, key: &Key, by: i64) {
        let shard = self.shard(key);
        if let Ok(map) = shard.read() {
            if let Some(c) = map.get(key) {
                c.fetch_add(by, Ordering::Relaxed);
                return;
            }
        }
        if let Ok(mut map) = shard.write() {
            map.entry(key.clone())
                .or_default()
                .fetch_add(by, Ordering::Relaxed);
        }
    }

    /// Takes every pending sum of the views `due` accepts.
    fn take(&self, due: impl Fn(&str) -> bool) -> Vec<(Key, i64)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let Ok(map) = shard.read() else { continue };
            for (k, c) in map.iter().filter(|(k, _)| due(k.kind())) {
                let n = c.swap(0, Ordering::Relaxed);
                if n != 0 {
                    out.push((k.clone(), n));
                }
            }
        }
        out
    }

    /// Publishes each view's pending sums once per its period until `stop`,
    /// then everything once more.
    pub async fn publish(self: Arc<Self>, engine: Arc<Engine>, stop: CancellationToken) {
        let Some(tick) = self.periods.values().min().copied() else {
            return;
        };
        let start = tokio::time::Instant::now();
        let mut last: HashMap<&str, tokio::time::Instant> =
            self.periods.keys().map(|v| (v.as_str(), start)).collect();
        loop {
            let stopped = tokio::select! {
                () = tokio::time::sleep(tick) => false,
                () = stop.cancelled() => true,
            };
            let now = tokio::time::Instant::now();
            let due: Vec<&str> = self
                .periods
                .iter()
                .filter(|(v, p)| {
                    stopped
                        || last
                            .get(v.as_str())
                            .is_none_or(|t| now + tick / 2 >= *t + **p)
                })
                .map(|(v, _)| v.as_str())
                .collect();
            for v in &due {
                last.insert(v, now);
            }
            for (key, n) in self.take(|kind| due.contains(&kind)) {
                let write = Write {
                    key: key.clone(),
                    op: Op::Increment {
                        pointer: "/count".into(),
                        delta: Number::from(n),
                    },
                    preconditions: Preconditions::default(),
                    durability: Durability::Memory,
                };
                match engine.write(write).await {
                    Ok(_) => {
                        self.publications.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        // Put back, to be published next period.
                        tracing::warn!(%key, error = %e, "publishing a counter failed");
                        self.pend(&key, n);
                    }
                }
            }
            if stopped {
                return;
            }
        }
    }
}
