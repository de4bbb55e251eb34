//! The view engine: write-time derivation of denormalized objects.
//!
//! A write of an entity (an object whose type the model declares) is followed
//! by a *change* message. The [`deriver`] looks up which targets the change
//! concerns (the reverse index, plus what the new document names) and sends
//! each a [`Derivation`], addressed by the target's key, through a
//! [`Courier`]. On one origin the courier delivers locally; the cluster work
//! routes the same messages to the owner of each target. Handling a
//! derivation updates the target's state ([`state::ViewState`]) and, if its
//! content changed, *materializes* the new object: writes it into the
//! engine, from where it is served at `/o/{view}/{id}`, stored by the
//! write-behind and published to the edge like any object. The
//! [`collector`] waits for those writes and retries the ones that fail.
//!
//! Derivation runs beside the write path, not in it: a write is acknowledged
//! once applied, and views follow within the derivation lag (a histogram at
//! `/metrics`). One worker owns all view state and takes messages in
//! batches, so a fan-out of 100,000 targets reads the changed entity once
//! per batch and materializes each target once per batch.
//!
//! State lives in memory and is rebuilt at start from the entities the warm
//! load brought in; stored view objects that disagree are rewritten, and
//! stored view objects without state are deleted. The rolling regeneration
//! ([`sweep`]) repeats that over `--regen-period-secs`, repairing and
//! counting divergences.
//!
//! Counter views ([`counters`]) take increments outside the deriver and
//! fold them into their objects once per period. What the model says about
//! a write before the engine applies it is in [`admit`].
//!
//! Views sit on the engine and never on publication: the engine's
//! [`Observer`](crate::engine::Observer) tells publication about
//! materialized objects like any other.

mod admit;
mod collector;
pub(crate) mod counters;
mod deriver;
pub(crate) mod state;
mod sweep;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prefold_core::{Key, Model};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

pub(crate) use admit::Refusal;
pub(crate) use counters::Counters;
pub(crate) use state::{Derivation, PageQuery, QueryError};

use crate::base::metrics::{counters, Scrape};
use crate::base::Tasks;
use crate::engine::{Engine, EngineError, Stamp};
use crate::storage::faults;
use collector::Collector;
use deriver::Deriver;
use sweep::Sweep;

/// Delivers a derivation to the owner of its target.
pub(crate) trait Courier: Send + Sync {
    /// Sends `d`, caused by a write at `at`. Delivery is at most once:
    /// the rolling regeneration repairs what is lost.
    fn deliver(&self, d: Derivation, at: Instant);
}

/// A message to the deriver.
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
    /// Materialize a target again (after a failed write).
    Render(Key),
    Query(Query, oneshot::Sender<Result<Value, QueryError>>),
    Barrier(oneshot::Sender<()>),
}

/// A read of view state that the materialized objects do not answer.
#[derive(Debug, Clone)]
pub(crate) enum Query {
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

counters! {
    /// Counters of the view engine, for `/metrics`.
    pub(crate) struct ViewStats {
        changes: counter("view_changes", "Entity changes the view engine handled (writes and sweep visits)"),
        derivations: counter("view_derivations", "Derivation messages handled"),
        skipped: counter("view_derivations_skipped", "Derivations skipped by their version stamp (repeats)"),
        materialized: counter("view_published", "Derived objects written or deleted"),
        materialize_failures: counter("view_publish_failures", "Derived objects whose write failed (retried)"),
        divergences: counter("view_divergences", "Derived objects the rolling regeneration found wrong and repaired"),
        dropped: counter("view_derivations_dropped", "Derivations lost to fault injection"),
        sweeps: counter("view_sweeps", "Completed rolling regeneration sweeps"),
        pending: gauge("view_pending", "View engine messages not yet handled"),
        targets: gauge("view_targets", "Derived objects with state on this origin"),
    }
}

/// How the view engine runs.
#[derive(Debug, Clone, Default)]
pub(crate) struct ViewSettings {
    /// `derive=drop` in this file loses derivations (tests and drills).
    pub(crate) fault_file: Option<PathBuf>,
    /// The rolling regeneration's period (`None`: never).
    pub(crate) regen_period: Option<Duration>,
}

/// The view engine's handle: cheap to clone.
#[derive(Clone)]
pub(crate) struct Views {
    model: Arc<Model>,
    tx: mpsc::UnboundedSender<Msg>,
    stats: Arc<ViewStats>,
    /// Seconds from an entity write to the materialization of a derived
    /// object it changed (clones share one histogram).
    lag: Histogram,
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
        if faults::drops_derivations(&self.control) {
            self.inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.inner.deliver(d, at);
    }
}

impl Views {
    /// A view engine for `model`; it does nothing until [`Views::start`].
    pub(crate) fn new(model: Arc<Model>) -> Views {
        let (tx, rx) = mpsc::unbounded_channel();
        Views {
            counters: Arc::new(Counters::new(&model)),
            model,
            tx,
            stats: Arc::new(ViewStats::default()),
            // 50 µs to ~26 s, doubling.
            lag: Histogram::new(exponential_buckets(0.000_05, 2.0, 20)),
            rx: Arc::new(std::sync::Mutex::new(Some(rx))),
        }
    }

    /// The model.
    pub(crate) fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The counter views' pending increments.
    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The view engine's numbers, for `/metrics`.
    pub(crate) fn report(&self, s: &mut Scrape) {
        self.stats.report(s);
        self.counters.stats.report(s);
        s.histogram(
            "view_derivation_lag_seconds",
            "From an entity write to the publication of a derived object it changed",
            &self.lag,
        );
    }

    fn send(&self, msg: Msg) {
        send_counted(&self.tx, &self.stats, msg);
    }

    /// Tells the view engine that an entity was written (version `version`).
    pub(crate) fn changed(&self, source: Key, version: u64) {
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
    pub(crate) async fn query(&self, q: Query) -> Result<Value, QueryError> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Query(q, tx));
        rx.await
            .map_err(|_| QueryError::Unsupported("the view engine has stopped".into()))?
    }

    /// Waits until every message sent so far, and everything it caused, is
    /// handled and materialized (or `timeout` passes; returns whether
    /// settled).
    pub(crate) async fn settle(&self, timeout: Duration) -> bool {
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

    /// Starts the deriver and its collector over `engine` in `tasks`,
    /// rebuilds every view from the entities the engine holds, and starts
    /// the rolling regeneration and the counter folder. Returns when the
    /// rebuild is materialized.
    pub(crate) async fn start(
        &self,
        engine: Arc<Engine>,
        settings: ViewSettings,
        tasks: &mut Tasks,
    ) -> Result<(), EngineError> {
        let Some(rx) = self.rx.lock().ok().and_then(|mut g| g.take()) else {
            return Ok(());
        };
        let local = Local {
            tx: self.tx.clone(),
            stats: self.stats.clone(),
        };
        let courier: Box<dyn Courier> = match settings.fault_file {
            Some(control) => Box::new(Faulty {
                inner: local,
                control,
            }),
            None => Box::new(local),
        };
        let (collector, jobs) = Collector::new(
            engine.clone(),
            self.stats.clone(),
            self.lag.clone(),
            self.tx.clone(),
        );
        tasks.spawn(collector);
        tasks.spawn(Deriver::new(
            self.model.clone(),
            engine.clone(),
            courier,
            self.stats.clone(),
            rx,
            jobs,
        ));
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
        if let Some(period) = settings.regen_period {
            tasks.spawn(Sweep::new(self.clone(), engine.clone(), period));
        }
        tasks.spawn(counters::Folder::new(self.counters.clone(), engine));
        Ok(())
    }

    /// Sends a change for every entity and an orphan check for every stored
    /// view object. Returns how many of each.
    async fn visit_all(&self, engine: &Engine, force: bool) -> Result<(usize, usize), EngineError> {
        let mut entities = 0;
        let mut views = 0;
        for (key, stamp) in engine.keys().await? {
            self.visit(key, stamp, force, &mut entities, &mut views);
        }
        Ok((entities, views))
    }

    fn visit(&self, key: Key, stamp: Stamp, force: bool, entities: &mut usize, views: &mut usize) {
        if self.model.entity(key.kind()).is_some() {
            *entities += 1;
            self.send(Msg::Changed {
                source: key,
                version: stamp.version,
                at: Instant::now(),
                force,
            });
        } else if !stamp.tombstone
            && self
                .model
                .view(key.kind())
                .is_some_and(|v| v.kind.from().is_some())
        {
            *views += 1;
            self.send(Msg::Orphan(key));
        }
    }
}
