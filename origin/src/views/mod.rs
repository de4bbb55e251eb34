//! The view engine: write-time derivation of denormalized objects.
//!
//! A write of an entity (an object whose type the model declares) is followed
//! by a *change* message. The deriver looks up which targets the change
//! concerns (the reverse index, plus what the new document names) and sends
//! each a [`Derivation`], addressed by the target's key, through a
//! [`Courier`]. On one origin the courier delivers locally; the cluster work
//! routes the same messages to the owner of each target. Handling a
//! derivation updates the target's state ([`state::ViewState`]) and, if its
//! content changed, publishes the new object into the storage engine, from
//! where it is served at `/o/{view}/{id}`, stored by the write-behind and
//! (later) pushed to the edge.
//!
//! Derivation runs beside the write path, not in it: a write is acknowledged
//! once applied, and views follow within the derivation lag (a histogram at
//! `/metrics`). One task owns all view state and takes messages in batches,
//! so a fan-out of 100,000 targets reads the changed entity once per batch
//! and publishes each target once per batch.
//!
//! State lives in memory and is rebuilt at start from the entities the warm
//! load brought in; stored view objects that disagree are rewritten, and
//! stored view objects without state are deleted. A rolling sweep repeats
//! that over `--regen-period-secs`, repairing and counting divergences.
//!
//! Counter views ([`counters`]) take increments outside the deriver and
//! publish them once per period.

pub mod counters;
pub mod state;
#[cfg(test)]
mod tests;

use foldhash::{HashMap, HashMapExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use prefold_core::{Key, Model};
use prometheus_client::metrics::histogram::Histogram;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::engine::{derived_write, Engine, Published};
use crate::error::EngineError;
pub use counters::Counters;
pub use state::{Derivation, PageQuery, QueryError, Source, ViewState};

/// Messages taken per batch.
const BATCH: usize = 4096;
/// Derived objects published at once.
const PUBLISH_CONCURRENCY: usize = 256;

/// Delivers a derivation to the owner of its target.
pub trait Courier: Send + Sync {
    /// Sends `d`, caused by a write at `at`. Delivery is at most once:
    /// the rolling regeneration repairs what is lost.
    fn deliver(&self, d: Derivation, at: Instant);
}

enum Msg {
    Changed {
        source: Key,
        version: u64,
        at: Instant,
        force: bool,
    },
    Derive(Derivation, Instant),
    /// A stored view object: delete it if no state backs it.
    Orphan(Key),
    /// Publish a target again (after a failed publication).
    Render(Key),
    Query(Query, oneshot::Sender<Result<Value, QueryError>>),
    Barrier(oneshot::Sender<()>),
}

/// A read of view state that the published objects do not answer.
#[derive(Debug, Clone)]
pub enum Query {
    /// A page of a list, index or text target.
    Page(Key, PageQuery),
    /// Whether an id is in a set target.
    Member(Key, String),
    /// A text view query.
    Search {
        /// The text view.
        view: String,
        /// The words.
        q: String,
        /// At most this many matches.
        limit: Option<u32>,
    },
}

/// Counters of the view engine, for `/metrics`.
#[derive(Debug)]
pub struct ViewStats {
    /// Change messages handled (entity writes and sweep visits).
    pub changes: AtomicU64,
    /// Derivation messages handled.
    pub derivations: AtomicU64,
    /// Derivations skipped by their version stamp (repeats).
    pub skipped: AtomicU64,
    /// Derived objects written or deleted.
    pub published: AtomicU64,
    /// Publications that failed (retried).
    pub publish_failures: AtomicU64,
    /// Targets the rolling regeneration found wrong and repaired.
    pub divergences: AtomicU64,
    /// Derivations dropped by fault injection.
    pub dropped: AtomicU64,
    /// Messages sent and not yet handled.
    pub pending: AtomicU64,
    /// Completed sweeps.
    pub sweeps: AtomicU64,
    /// Targets with state.
    pub targets: AtomicU64,
    /// Seconds from an entity write to its derived object's publication.
    pub lag: Histogram,
}

impl Default for ViewStats {
    fn default() -> Self {
        ViewStats {
            changes: AtomicU64::new(0),
            derivations: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            published: AtomicU64::new(0),
            publish_failures: AtomicU64::new(0),
            divergences: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            sweeps: AtomicU64::new(0),
            targets: AtomicU64::new(0),
            // 50 µs to ~26 s, doubling.
            lag: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.000_05, 2.0, 20,
            )),
        }
    }
}

/// The view engine's handle: cheap to clone.
#[derive(Clone)]
pub struct Views {
    model: Arc<Model>,
    tx: mpsc::UnboundedSender<Msg>,
    stats: Arc<ViewStats>,
    counters: Arc<Counters>,
    rx: Arc<std::sync::Mutex<Option<mpsc::UnboundedReceiver<Msg>>>>,
}

/// The local courier: the target is owned here, so the message goes to this
/// origin's deriver.
struct Local {
    tx: mpsc::UnboundedSender<Msg>,
    stats: Arc<ViewStats>,
}

impl Courier for Local {
    fn deliver(&self, d: Derivation, at: Instant) {
        send_counted(&self.tx, &self.stats, Msg::Derive(d, at));
    }
}

/// Queues a message for the deriver, counted as pending until handled
/// (`settle` waits for the count to reach zero).
fn send_counted(tx: &mpsc::UnboundedSender<Msg>, stats: &ViewStats, msg: Msg) {
    stats.pending.fetch_add(1, Ordering::Relaxed);
    if tx.send(msg).is_err() {
        stats.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Loses messages while the fault control file says `derive=drop`.
struct Faulty {
    inner: Local,
    control: PathBuf,
}

impl Courier for Faulty {
    fn deliver(&self, d: Derivation, at: Instant) {
        if crate::faults::drops_derivations(&self.control) {
            self.inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.inner.deliver(d, at);
    }
}

impl Views {
    /// A view engine for `model`; it does nothing until [`Views::start`].
    pub fn new(model: Arc<Model>) -> Views {
        let (tx, rx) = mpsc::unbounded_channel();
        Views {
            counters: Arc::new(Counters::new(&model)),
            model,
            tx,
            stats: Arc::new(ViewStats::default()),
            rx: Arc::new(std::sync::Mutex::new(Some(rx))),
        }
    }

    /// The model.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The counters of the view engine.
    pub fn stats(&self) -> &ViewStats {
        &self.stats
    }

    /// The counter views' pending increments.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    fn send(&self, msg: Msg) {
        send_counted(&self.tx, &self.stats, msg);
    }

    /// Tells the view engine that an entity was written (version `version`).
    pub fn changed(&self, source: Key, version: u64) {
        if self.model.entity(source.kind()).is_none() {
            return;
        }
        self.send(Msg::Changed {
            source,
            version,
            at: Instant::now(),
            force: false,
        });
    }

    /// Answers a query from view state.
    pub async fn query(&self, q: Query) -> Result<Value, QueryError> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Query(q, tx));
        rx.await
            .map_err(|_| QueryError::Unsupported("the view engine has stopped".into()))?
    }

    /// Waits until every message sent so far, and everything it caused, is
    /// handled and published (or `timeout` passes; returns whether settled).
    pub async fn settle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (tx, rx) = oneshot::channel();
            self.send(Msg::Barrier(tx));
            if tokio::time::timeout_at(deadline, rx).await.is_err() {
                return false;
            }
            if self.stats.pending.load(Ordering::Relaxed) == 0 {
                return true;
            }
        }
    }

    /// Starts the deriver over `engine`, rebuilds every view from the
    /// entities the engine holds, and starts the sweep and the counter
    /// publisher. Returns when the rebuild is published; the tasks stop when
    /// `stop` is cancelled.
    pub async fn start(
        &self,
        engine: Arc<Engine>,
        fault_file: Option<PathBuf>,
        regen_period: Option<Duration>,
        stop: CancellationToken,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>, EngineError> {
        let Some(rx) = self.rx.lock().ok().and_then(|mut g| g.take()) else {
            return Ok(Vec::new());
        };
        let local = Local {
            tx: self.tx.clone(),
            stats: self.stats.clone(),
        };
        let courier: Box<dyn Courier> = match fault_file {
            Some(control) => Box::new(Faulty {
                inner: local,
                control,
            }),
            None => Box::new(local),
        };
        let deriver = Deriver {
            state: ViewState::new(self.model.clone()),
            engine: engine.clone(),
            courier,
            stats: self.stats.clone(),
            tx: self.tx.clone(),
            stop: stop.clone(),
        };
        let mut tasks = vec![tokio::spawn(deriver.run(rx))];
        let started = Instant::now();
        let (entities, views) = self.visit_all(&engine, false).await?;
        if !self.settle(Duration::from_secs(3600)).await {
            tracing::warn!("the view rebuild did not settle");
        }
        if entities > 0 || views > 0 {
            tracing::info!(
                entities,
                stored_views = views,
                targets = self.stats.targets.load(Ordering::Relaxed),
                seconds = started.elapsed().as_secs_f64(),
                "views rebuilt"
            );
        }
        if let Some(period) = regen_period {
            tasks.push(tokio::spawn(self.clone().sweep(
                engine.clone(),
                period,
                stop.clone(),
            )));
        }
        tasks.push(tokio::spawn(self.counters.clone().publish(engine, stop)));
        Ok(tasks)
    }

    /// Sends a change for every entity and an orphan check for every stored
    /// view object. Returns how many of each.
    async fn visit_all(&self, engine: &Engine, force: bool) -> Result<(usize, usize), EngineError> {
        let mut entities = 0;
        let mut views = 0;
        for (key, entry) in engine.keys().await? {
            self.visit(key, entry, force, &mut entities, &mut views);
        }
        Ok((entities, views))
    }

    fn visit(
        &self,
        key: Key,
        entry: crate::engine::Entry,
        force: bool,
        entities: &mut usize,
        views: &mut usize,
    ) {
        if self.model.entity(key.kind()).is_some() {
            *entities += 1;
            self.send(Msg::Changed {
                source: key,
                version: entry.version,
                at: Instant::now(),
                force,
            });
        } else if !entry.tombstone
            && self
                .model
                .view(key.kind())
                .is_some_and(|v| v.kind.from().is_some())
        {
            *views += 1;
            self.send(Msg::Orphan(key));
        }
    }

    /// The rolling regeneration: visits every entity and view object once per
    /// `period`, evenly spread, forcing recomputation.
    async fn sweep(self, engine: Arc<Engine>, period: Duration, stop: CancellationToken) {
        // Paced in chunks so that the sleeps stay coarse; each chunk waits
        // first, so the pass that follows the start-up rebuild does not
        // repeat it at once.
        const CHUNK: usize = 256;
        loop {
            let keys = match engine.keys().await {
                Ok(k) => k,
                Err(_) => return,
            };
            let chunks = keys.len().div_ceil(CHUNK).max(1);
            let pause = period / u32::try_from(chunks).unwrap_or(u32::MAX);
            let mut keys = keys.into_iter().peekable();
            let (mut e, mut v) = (0, 0);
            for _ in 0..chunks {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = stop.cancelled() => return,
                }
                for (key, entry) in keys.by_ref().take(CHUNK) {
                    self.visit(key, entry, true, &mut e, &mut v);
                }
            }
            self.stats.sweeps.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The task that owns every view's state.
struct Deriver {
    state: ViewState,
    engine: Arc<Engine>,
    courier: Box<dyn Courier>,
    stats: Arc<ViewStats>,
    tx: mpsc::UnboundedSender<Msg>,
    stop: CancellationToken,
}

/// Why a target needs publishing in this batch.
struct Dirty {
    /// The earliest write that caused it.
    at: Instant,
    /// Whether a change (not only the sweep) caused it.
    changed: bool,
}

impl Deriver {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        loop {
            let first = tokio::select! {
                m = rx.recv() => m,
                () = self.stop.cancelled() => None,
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let n = batch.len() as u64;
            let barriers = self.process(batch).await;
            // Handled before the barriers answer, so that a settled engine
            // reads zero pending.
            self.stats.pending.fetch_sub(n, Ordering::Relaxed);
            for b in barriers {
                let _ = b.send(());
            }
        }
    }

    async fn fetch(&self, key: &Key) -> Source {
        match self.engine.read_slot(key).await {
            Ok(Some(o)) => Source {
                version: o.version,
                doc: if o.tombstone {
                    None
                } else {
                    // Entities were checked to be JSON when written.
                    serde_json::from_slice(&o.body).ok().map(Arc::new)
                },
            },
            Ok(None) => Source {
                version: 0,
                doc: None,
            },
            Err(e) => {
                tracing::warn!(%key, error = %e, "view engine could not read a source");
                Source {
                    version: 0,
                    doc: None,
                }
            }
        }
    }

    async fn process(&mut self, batch: Vec<Msg>) -> Vec<oneshot::Sender<()>> {
        let mut cache: HashMap<Key, Source> = HashMap::new();
        let mut dirty: HashMap<Key, Dirty> = HashMap::new();
        let mut barriers = Vec::new();
        for msg in batch {
            match msg {
                Msg::Changed {
                    source,
                    version,
                    at,
                    force,
                } => {
                    self.stats.changes.fetch_add(1, Ordering::Relaxed);
                    if cache.get(&source).is_none_or(|s| s.version < version) {
                        let s = self.fetch(&source).await;
                        cache.insert(source.clone(), s);
                    }
                    let doc = cache.get(&source).and_then(|s| s.doc.clone());
                    for target in self.state.targets_of(&source, doc.as_deref()) {
                        self.courier.deliver(
                            Derivation {
                                target,
                                source: source.clone(),
                                version,
                                force,
                            },
                            at,
                        );
                    }
                }
                Msg::Derive(d, at) => {
                    self.stats.derivations.fetch_add(1, Ordering::Relaxed);
                    let effect = loop {
                        // The changed source must be read at (at least) the
                        // version that sent the message.
                        let lookup = |k: &Key| {
                            cache
                                .get(k)
                                .filter(|s| *k != d.source || s.version >= d.version)
                                .cloned()
                        };
                        match self.state.derive(&d, &lookup) {
                            Ok(effect) => break effect,
                            Err(missing) => {
                                for k in missing {
                                    let s = self.fetch(&k).await;
                                    // A source that never reaches the version
                                    // (not possible with one writer) must not
                                    // loop forever: accept what is there.
                                    let s = if k == d.source && s.version < d.version {
                                        Source {
                                            version: d.version,
                                            ..s
                                        }
                                    } else {
                                        s
                                    };
                                    cache.insert(k, s);
                                }
                            }
                        }
                    };
                    if effect.skipped {
                        self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                    }
                    if effect.changed || d.force {
                        let e = dirty
                            .entry(d.target.clone())
                            .or_insert(Dirty { at, changed: false });
                        e.at = e.at.min(at);
                        e.changed |= effect.changed && !d.force;
                    }
                }
                Msg::Orphan(key) => {
                    if !self.state.has_target(&key) {
                        dirty.entry(key).or_insert(Dirty {
                            at: Instant::now(),
                            changed: false,
                        });
                    }
                }
                Msg::Render(key) => {
                    dirty.entry(key).or_insert(Dirty {
                        at: Instant::now(),
                        changed: true,
                    });
                }
                Msg::Query(q, reply) => {
                    let answer = match &q {
                        Query::Page(t, pq) => self.state.page(t, pq),
                        Query::Member(t, id) => self
                            .state
                            .is_member(t, id)
                            .map(|m| serde_json::json!({"id": id, "member": m})),
                        Query::Search { view, q, limit } => self.state.search(view, q, *limit),
                    };
                    let _ = reply.send(answer);
                }
                Msg::Barrier(tx) => barriers.push(tx),
            }
        }
        self.stats
            .targets
            .store(self.state.target_count() as u64, Ordering::Relaxed);
        self.publish(dirty).await;
        barriers
    }

    /// Queues every dirty target's object for the engine (which skips it
    /// if unchanged), then lets a task collect the outcomes while the next
    /// batch is derived: deriving and applying overlap on two cores. The
    /// queueing itself keeps each partition's order, so a later batch's
    /// version of a target is applied after this one's.
    async fn publish(&mut self, dirty: HashMap<Key, Dirty>) {
        if dirty.is_empty() {
            return;
        }
        let items: Vec<(Key, Option<Bytes>)> = dirty
            .keys()
            .map(|k| (k.clone(), self.state.render_bytes(k).map(Bytes::from)))
            .collect();
        let replies = self.engine.publish(items).await;
        // The collection counts as pending work, so `settle` waits for it.
        self.stats.pending.fetch_add(1, Ordering::Relaxed);
        let engine = self.engine.clone();
        let stats = self.stats.clone();
        let tx = self.tx.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let failed = account(&engine, &stats, &dirty, replies).await;
            if !failed.is_empty() {
                // Retried after a pause (the engine refused or is stopping);
                // the pause races shutdown. The work stays pending all the
                // while, so `settle` does not report stale views as done.
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {
                        for k in failed {
                            send_counted(&tx, &stats, Msg::Render(k));
                        }
                    }
                    () = stop.cancelled() => {}
                }
            }
            stats.pending.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Waits for a publication's outcomes, writes evicted objects the slow way,
/// and counts: publications, lag, divergences. Returns the targets to retry.
async fn account(
    engine: &Engine,
    stats: &ViewStats,
    dirty: &HashMap<Key, Dirty>,
    replies: crate::engine::PublishReplies,
) -> Vec<Key> {
    let mut outcomes: Vec<(Key, Result<bool, EngineError>)> = Vec::new();
    let mut evicted = Vec::new();
    for p in replies.wait().await {
        match p {
            Published::Unchanged(k) => outcomes.push((k, Ok(false))),
            Published::Written(k) => outcomes.push((k, Ok(true))),
            Published::Failed(k, e) => outcomes.push((k, Err(e))),
            Published::NeedsLoad(k, b) => evicted.push((k, b)),
        }
    }
    // Evicted objects go the slow way, which loads them once.
    let slow: Vec<(Key, Result<bool, EngineError>)> = futures::stream::iter(evicted)
        .map(|(key, body)| async move {
            let r = publish_one(engine, &key, body).await;
            (key, r)
        })
        .buffer_unordered(PUBLISH_CONCURRENCY)
        .collect()
        .await;
    outcomes.extend(slow);
    let now = Instant::now();
    let mut failed = Vec::new();
    for (key, outcome) in outcomes {
        let Some(d) = dirty.get(&key) else { continue };
        match outcome {
            Ok(false) => {}
            Ok(true) => {
                stats.published.fetch_add(1, Ordering::Relaxed);
                if d.changed {
                    stats.lag.observe(now.duration_since(d.at).as_secs_f64());
                } else {
                    stats.divergences.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%key, "regeneration repaired a view object");
                }
            }
            Err(e) => {
                stats.publish_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%key, error = %e, "publishing a view object failed; retrying");
                failed.push(key);
            }
        }
    }
    failed
}

/// Publishes one derived object; returns whether anything was written.
async fn publish_one(engine: &Engine, key: &Key, body: Option<Bytes>) -> Result<bool, EngineError> {
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
