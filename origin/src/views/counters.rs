//! Counter views: high-rate counters that take increments without contention
//! and fold them into their objects at most once per period.
//!
//! A hot counter is usually sharded so that increments do not serialize on one
//! entity. Here an increment never touches the counter's object: it adds to
//! an atomic in memory (a read lock and a `fetch_add`; the write lock is
//! taken only the first time a key is seen). Once per period the [`Folder`]
//! swaps each atomic to zero and applies the sum as one `increment` of the
//! counter's object `{"count": N}`, which the write-behind coalesces toward
//! the store and which reaches the edge at most once per period — Workers KV
//! takes one write per second per key.
//!
//! An increment is acknowledged from memory: increments not yet folded
//! when the process dies are lost (at most one period's worth). A graceful
//! shutdown folds them first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prefold_core::model::ViewKind;
use prefold_core::{Key, Model, Preconditions};
use serde_json::Number;

use crate::base::metrics::counters;
use crate::base::{Durability, Op, Shutdown, Worker};
use crate::engine::{Engine, Write};

/// Shards of the pending map: distinct keys rarely share a lock.
const SHARDS: usize = 64;

/// One shard: counter key → its pending sum.
type Shard = RwLock<HashMap<Key, Arc<AtomicI64>>>;

counters! {
    /// What the counter views did, for `/metrics`.
    pub(crate) struct CounterStats {
        increments: counter("counter_increments", "Increments taken by counter views"),
        folds: counter("counter_publications", "Counter values published"),
    }
}

/// Pending increments of every counter view.
#[derive(Debug)]
pub(crate) struct Counters {
    shards: Box<[Shard]>,
    /// Folding period per counter view.
    periods: HashMap<String, Duration>,
    /// Counts.
    pub(crate) stats: CounterStats,
}

impl Counters {
    /// Counters for the model's counter views.
    pub(crate) fn new(model: &Model) -> Counters {
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
            stats: CounterStats::default(),
        }
    }

    fn shard(&self, key: &Key) -> &Shard {
        let h = xxhash_rust::xxh3::xxh3_64(key.as_str().as_bytes());
        // The remainder is below SHARDS.
        &self.shards[(h % SHARDS as u64) as usize]
    }

    /// Adds `by` to a counter (`key` must name a counter view).
    pub(crate) fn add(&self, key: &Key, by: i64) {
        self.stats.increments.fetch_add(1, Ordering::Relaxed);
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
}

/// The worker that folds each counter view's pending sums into its objects
/// once per the view's period, and everything once more at shutdown.
pub(crate) struct Folder {
    counters: Arc<Counters>,
    engine: Arc<Engine>,
}

impl Folder {
    /// A folder of `counters` into `engine`.
    pub(crate) fn new(counters: Arc<Counters>, engine: Arc<Engine>) -> Folder {
        Folder { counters, engine }
    }
}

impl Worker for Folder {
    fn name(&self) -> &'static str {
        "counter folder"
    }

    async fn run(self, shutdown: Shutdown) {
        let counters = &self.counters;
        let Some(tick) = counters.periods.values().min().copied() else {
            return;
        };
        let start = tokio::time::Instant::now();
        let mut last: HashMap<&str, tokio::time::Instant> = counters
            .periods
            .keys()
            .map(|v| (v.as_str(), start))
            .collect();
        loop {
            let stopped = !shutdown.sleep(tick).await;
            let now = tokio::time::Instant::now();
            let due: Vec<&str> = counters
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
            for (key, n) in counters.take(|kind| due.contains(&kind)) {
                let write = Write {
                    key: key.clone(),
                    op: Op::Increment {
                        pointer: "/count".into(),
                        delta: Number::from(n),
                    },
                    preconditions: Preconditions::default(),
                    durability: Durability::Memory,
                };
                match self.engine.write(write).await {
                    Ok(_) => {
                        counters.stats.folds.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        // Put back, to be folded next period.
                        tracing::warn!(%key, error = %e, "folding a counter failed");
                        counters.pend(&key, n);
                    }
                }
            }
            if stopped {
                return;
            }
        }
    }
}
