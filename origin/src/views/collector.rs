//! The collector: waits for the engine's outcomes of each materialization,
//! writes evicted targets the slow way, counts publications, lag and
//! divergences, and sends failed targets back to the deriver after a pause.
//!
//! It is a worker of its own so that the deriver never waits for the
//! engine, and so that no wait is left behind detached: at shutdown it
//! stops with the view engine's other workers.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use foldhash::HashMap;
use futures::StreamExt;
use prefold_core::Key;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::mpsc;

use super::{send_counted, Msg, ViewStats};
use crate::base::{sleep_until_opt, Shutdown, Worker};
use crate::engine::{derived_write, DerivedOutcome, DerivedReplies, Engine, EngineError};

/// Evicted targets written at once.
const SLOW_CONCURRENCY: usize = 256;
/// How long a failed target waits before it is materialized again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Why a target needs materializing in this batch.
pub(super) struct Stale {
    /// The earliest write that caused it.
    pub(super) at: Instant,
    /// Whether a change (not only the sweep) caused it.
    pub(super) changed: bool,
    /// Whether a message from another origin caused it.
    pub(super) remote: bool,
}

/// One batch's materialization, for the collector to wait for.
pub(super) struct Job {
    pub(super) stale: HashMap<Key, Stale>,
    pub(super) replies: DerivedReplies,
}

/// The worker that collects materializations' outcomes.
pub(super) struct Collector {
    engine: Arc<Engine>,
    stats: Arc<ViewStats>,
    lag: Histogram,
    remote_lag: Histogram,
    /// Back to the deriver, for retries.
    deriver: mpsc::UnboundedSender<Msg>,
    jobs: mpsc::UnboundedReceiver<Job>,
}

impl Collector {
    /// A collector, and where the deriver sends it jobs.
    pub(super) fn new(
        engine: Arc<Engine>,
        stats: Arc<ViewStats>,
        lag: Histogram,
        remote_lag: Histogram,
        deriver: mpsc::UnboundedSender<Msg>,
    ) -> (Collector, mpsc::UnboundedSender<Job>) {
        let (tx, jobs) = mpsc::unbounded_channel();
        let collector = Collector {
            engine,
            stats,
            lag,
            remote_lag,
            deriver,
            jobs,
        };
        (collector, tx)
    }
}

impl Worker for Collector {
    fn name(&self) -> &'static str {
        "view collector"
    }

    async fn run(mut self, shutdown: Shutdown) {
        // Failed targets waiting for their retry, with when it is due. Each
        // batch of them still counts as pending work, so `settle` does not
        // report stale views as done.
        let mut retries: VecDeque<(tokio::time::Instant, Vec<Key>)> = VecDeque::new();
        loop {
            let next_retry = retries.front().map(|(t, _)| *t);
            let woke = shutdown
                .or(async {
                    tokio::select! {
                        job = self.jobs.recv() => Some(job),
                        () = sleep_until_opt(next_retry) => None,
                    }
                })
                .await;
            match woke {
                None | Some(Some(None)) => return,
                Some(Some(Some(job))) => {
                    let Some(failed) = shutdown.or(self.account(job)).await else {
                        return;
                    };
                    if failed.is_empty() {
                        self.stats.pending.fetch_sub(1, Ordering::Relaxed);
                    } else {
                        retries.push_back((tokio::time::Instant::now() + RETRY_PAUSE, failed));
                    }
                }
                Some(None) => {
                    let Some((_, keys)) = retries.pop_front() else {
                        continue;
                    };
                    for k in keys {
                        send_counted(&self.deriver, &self.stats, Msg::Render(k));
                    }
                    self.stats.pending.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }
}

impl Collector {
    /// Waits for a materialization's outcomes, writes evicted objects the
    /// slow way, and counts: materializations, lag, divergences. Returns
    /// the targets to retry.
    async fn account(&self, job: Job) -> Vec<Key> {
        let Job { stale, replies } = job;
        let engine = self.engine.as_ref();
        let mut outcomes: Vec<(Key, Result<bool, EngineError>)> = Vec::new();
        let mut evicted = Vec::new();
        for p in replies.wait().await {
            match p {
                DerivedOutcome::Unchanged(k) => outcomes.push((k, Ok(false))),
                DerivedOutcome::Written(k) => outcomes.push((k, Ok(true))),
                DerivedOutcome::Failed(k, e) => outcomes.push((k, Err(e))),
                DerivedOutcome::NeedsLoad(k, b) => evicted.push((k, b)),
            }
        }
        // Evicted objects go the slow way, which loads them once.
        let slow: Vec<(Key, Result<bool, EngineError>)> = futures::stream::iter(evicted)
            .map(|(key, body)| async move {
                let r = materialize_one(engine, &key, body).await;
                (key, r)
            })
            .buffer_unordered(SLOW_CONCURRENCY)
            .collect()
            .await;
        outcomes.extend(slow);
        let now = Instant::now();
        let mut failed = Vec::new();
        for (key, outcome) in outcomes {
            let Some(d) = stale.get(&key) else { continue };
            match outcome {
                Ok(false) => {}
                Ok(true) => {
                    self.stats.materialized.fetch_add(1, Ordering::Relaxed);
                    if d.changed {
                        let lag = now.duration_since(d.at).as_secs_f64();
                        self.lag.observe(lag);
                        if d.remote {
                            self.remote_lag.observe(lag);
                        }
                    } else {
                        self.stats.divergences.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(%key, "regeneration repaired a view object");
                    }
                }
                Err(e) => {
                    self.stats
                        .materialize_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%key, error = %e, "writing a view object failed; retrying");
                    failed.push(key);
                }
            }
        }
        failed
    }
}

/// Writes one derived object; returns whether anything was written.
async fn materialize_one(
    engine: &Engine,
    key: &Key,
    body: Option<Bytes>,
) -> Result<bool, EngineError> {
    let current = engine.read(key).await?;
    let Some(write) = derived_write(key, body, current.as_deref()) else {
        return Ok(false);
    };
    match engine.write(write).await {
        Ok(_) => Ok(true),
        // Deleted meanwhile: nothing to delete.
        Err(EngineError::NotFound) => Ok(false),
        Err(e) => Err(e),
    }
}
