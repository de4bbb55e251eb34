//! The view engine: write-time derivation of denormalized objects.
//!
//! A write of an entity (an object whose type the model declares) is followed
//! by a *change* message. The [`deriver`] looks up which targets the change
//! concerns (the reverse index, plus what the new document names) and sends
//! each a [`Derivation`], addressed by the target's key, through a
//! [`Courier`], which hands it to the deriver of the target's owner: this
//! origin's, or another's over a cluster link ([`wire`] is the format). A
//! derivation carries the source's document, since only the source's owner
//! can read it; an embed target subscribes to the entities it embeds at
//! their owners ([`node`]), and a `ref:` check asks the referenced key's
//! owner. Handling a
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
//! load brought in, and from what the other origins send when asked (a
//! *resync*: every origin sends a starting one the derivations of its
//! entities for the targets the starter owns, and takes up again the
//! subscriptions its targets held there). Stored view objects that disagree
//! are rewritten, and, once every other origin has answered, stored view
//! objects without state are deleted. The rolling regeneration ([`sweep`])
//! repeats that over `--regen-period-secs`, and asks the owners of a
//! target's remote members for their documents, repairing and counting
//! divergences.
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
mod courier;
mod deriver;
mod node;
pub(crate) mod state;
mod sweep;
#[cfg(test)]
mod tests;
mod wire;

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
use state::TermPart;
pub(crate) use state::{PageQuery, QueryError};

use crate::base::metrics::{counters, Scrape};
use crate::base::Tasks;
use crate::cluster::link::{Delivered, Link};
use crate::cluster::{Cluster, PeerError};
use crate::engine::{Engine, EngineError, Stamp};
use collector::Collector;
pub(crate) use courier::DERIVE_PATH;
use courier::{LinkReport, Routed};
use deriver::Deriver;
use node::Out;
use sweep::Sweep;
pub(crate) use wire::Batch;
use wire::Received;

/// Delivers a message to the owner of its address.
pub(crate) trait Courier: Send + Sync {
    /// Sends `out`, caused by a write at `at`, to the owner of its address:
    /// this origin's deriver or another origin's.
    fn deliver(&self, out: Out, at: Instant);
    /// The owner of a key, when it is another origin.
    fn owner(&self, key: &Key) -> Option<&str>;
    /// The other origins.
    fn peers(&self) -> Vec<String>;
    /// Asks another origin for a resync.
    fn resync(&self, origin: &str);
    /// Tells another origin that its resync's answer is complete.
    fn resync_done(&self, origin: &str);
}

/// How often [`Views::settle`] looks at the links once the deriver is idle.
const LINK_POLL: Duration = Duration::from_millis(10);

/// A message to the deriver.
enum Msg {
    /// An entity this origin owns was written (or is visited): send its
    /// document to its targets; with `only`, just to those of that origin.
    Changed {
        source: Key,
        version: u64,
        at: Instant,
        force: bool,
        only: Option<String>,
    },
    /// A message addressed to a key of this origin (`true`: it came from
    /// another origin).
    Out(Out, Instant, bool),
    /// A stored view object: delete it if no state backs it.
    Orphan(Key),
    /// A target: ask the owners of its remote members for their documents.
    Verify(Key),
    /// Materialize a target again (after a failed write).
    Render(Key),
    /// Take up again the subscriptions held on entities of that origin,
    /// then tell it its resync is answered.
    Resubscribe(String),
    /// That origin has answered this origin's resync.
    Resynced(String),
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
    /// This origin's part of a text view query (see
    /// [`state::ViewState::search_parts`]).
    SearchParts {
        /// The text view.
        view: String,
        /// The normalized terms.
        terms: Vec<String>,
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
        remote_sent: counter("view_remote_messages_sent", "View engine messages other origins acknowledged"),
        remote_received: counter("view_remote_messages_received", "View engine messages received from other origins"),
        remote_abandoned: counter("view_remote_messages_abandoned", "View engine messages for other origins given up at shutdown"),
        remote_malformed: counter("view_remote_messages_malformed", "View engine messages from other origins whose keys did not parse"),
        sweeps: counter("view_sweeps", "Completed rolling regeneration sweeps"),
        pending: gauge("view_pending", "View engine messages not yet handled"),
        outbound: gauge("view_outbound", "View engine messages queued for other origins, not yet acknowledged"),
        targets: gauge("view_targets", "Derived objects with state on this origin"),
    }
}

/// The path origins answer their part of a text query at.
pub(crate) const SEARCH_PATH: &str = "/_prefold/search";

/// The body of a `POST /_prefold/search`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SearchAsk {
    /// The text view.
    pub(crate) view: String,
    /// The normalized terms.
    pub(crate) terms: Vec<String>,
}

/// Why a text query has no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SearchError {
    /// The query itself is wrong.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// Another origin could not be asked for its part.
    #[error(transparent)]
    Unreachable(#[from] PeerError),
    /// Another origin's part did not parse.
    #[error("another origin's part of a search did not parse")]
    Garbled,
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
    /// The same, for derivations that crossed from another origin.
    remote_lag: Histogram,
    counters: Arc<Counters>,
    cluster: Arc<Cluster>,
    rx: Arc<std::sync::Mutex<Option<mpsc::UnboundedReceiver<Msg>>>>,
}

/// Queues a message for the deriver, counted as pending until handled
/// (`settle` waits for the count to reach zero).
fn send_counted(tx: &mpsc::UnboundedSender<Msg>, stats: &ViewStats, msg: Msg) {
    stats.pending.fetch_add(1, Ordering::Relaxed);
    if tx.send(msg).is_err() {
        stats.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Views {
    /// A view engine for `model` on one origin of `cluster`; it does
    /// nothing until [`Views::start`].
    pub(crate) fn new(model: Arc<Model>, cluster: Arc<Cluster>) -> Views {
        let (tx, rx) = mpsc::unbounded_channel();
        Views {
            counters: Arc::new(Counters::new(&model)),
            model,
            tx,
            stats: Arc::new(ViewStats::default()),
            // 50 µs to ~26 s, doubling.
            lag: Histogram::new(exponential_buckets(0.000_05, 2.0, 20)),
            remote_lag: Histogram::new(exponential_buckets(0.000_05, 2.0, 20)),
            cluster,
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
        s.histogram(
            "view_remote_derivation_lag_seconds",
            "From an entity write on another origin to the publication of a derived object here it changed",
            &self.remote_lag,
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
            only: None,
        });
    }

    /// Takes a batch of messages from another origin (`POST
    /// /_prefold/derive`). They are queued, not yet applied, when this
    /// returns.
    pub(crate) async fn receive(&self, engine: &Engine, batch: Batch) -> Result<(), EngineError> {
        let n = batch.messages.len() as u64;
        self.stats.remote_received.fetch_add(n, Ordering::Relaxed);
        let clock = self.cluster.peers.clock();
        for w in batch.messages {
            match wire::parse(w) {
                None => {
                    self.stats.remote_malformed.fetch_add(1, Ordering::Relaxed);
                }
                Some(Received::Out(out, written)) => {
                    let age = written.map_or(0, |w| clock.now_micros().saturating_sub(w));
                    let at = Instant::now()
                        .checked_sub(Duration::from_micros(age))
                        .unwrap_or_else(Instant::now);
                    self.send(Msg::Out(out, at, true));
                }
                Some(Received::Resync) => {
                    for (key, stamp) in engine.keys().await? {
                        if self.model.entity(key.kind()).is_some() {
                            self.send(Msg::Changed {
                                source: key,
                                version: stamp.version,
                                at: Instant::now(),
                                force: true,
                                only: Some(batch.from.clone()),
                            });
                        }
                    }
                    self.send(Msg::Resubscribe(batch.from.clone()));
                }
                Some(Received::ResyncDone) => self.send(Msg::Resynced(batch.from.clone())),
            }
        }
        Ok(())
    }

    /// Answers a text query over the words of every origin: this origin's
    /// and each other's part, merged. Without an answer from every origin
    /// there is no answer (a partial one would silently miss matches).
    pub(crate) async fn search(
        &self,
        view: &str,
        q: &str,
        limit: Option<u32>,
    ) -> Result<Value, SearchError> {
        let (terms, limit) = state::search_terms(&self.model, view, q, limit)?;
        let local = self.query(Query::SearchParts {
            view: view.to_owned(),
            terms: terms.clone(),
        });
        let ask = SearchAsk {
            view: view.to_owned(),
            terms: terms.clone(),
        };
        let body = bytes::Bytes::from(serde_json::to_vec(&ask).unwrap_or_default());
        let peers = &self.cluster.peers;
        let remote = futures::future::join_all(
            self.cluster
                .membership
                .peers()
                .map(|o| peers.post(o, SEARCH_PATH, body.clone())),
        );
        let (local, remote) = tokio::join!(local, remote);
        let mut parts: Vec<Vec<TermPart>> =
            vec![serde_json::from_value(local?).unwrap_or_default()];
        for answer in remote {
            let answer = answer?;
            parts.push(serde_json::from_slice(&answer).map_err(|_| SearchError::Garbled)?);
        }
        Ok(state::merge_search(&terms, limit, parts))
    }

    /// Answers a query from view state.
    pub(crate) async fn query(&self, q: Query) -> Result<Value, QueryError> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Query(q, tx));
        rx.await
            .map_err(|_| QueryError::Unsupported("the view engine has stopped".into()))?
    }

    /// Waits until every message sent so far, and everything it caused, is
    /// handled and materialized, and what it sent other origins has reached
    /// them (or `timeout` passes; returns whether settled).
    #[cfg(test)]
    pub(crate) async fn settle(&self, timeout: Duration) -> bool {
        self.settle_until(timeout, true).await
    }

    /// [`Views::settle`] on this origin only: what is queued for other
    /// origins is left to the links, which keep sending it until their own
    /// drain deadline (shutdown does not wait twice for an origin that is
    /// down).
    pub(crate) async fn settle_here(&self, timeout: Duration) -> bool {
        self.settle_until(timeout, false).await
    }

    /// [`Views::settle`], waiting for messages to other origins only with
    /// `outbound` (start-up does not: the others may be starting too, and
    /// take messages once ready).
    async fn settle_until(&self, timeout: Duration, outbound: bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (tx, rx) = oneshot::channel();
            self.send(Msg::Barrier(tx));
            if tokio::time::timeout_at(deadline, rx).await.is_err() {
                return false;
            }
            if self.stats.pending.load(Ordering::Relaxed) == 0
                && (!outbound || self.stats.outbound.load(Ordering::Relaxed) == 0)
            {
                return true;
            }
            if self.stats.pending.load(Ordering::Relaxed) == 0 {
                // Only the links are busy, and no barrier passes through
                // them: look again shortly (still bounded by the deadline).
                if tokio::time::Instant::now() + LINK_POLL >= deadline {
                    return false;
                }
                tokio::time::sleep(LINK_POLL).await;
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
        let cluster = &self.cluster;
        let report: Arc<dyn Delivered> = Arc::new(LinkReport(self.stats.clone()));
        let mut links = foldhash::HashMap::default();
        if let Some(me) = cluster.membership.me() {
            for peer in cluster.membership.peers() {
                let (link, tx) = Link::new(
                    me.to_owned(),
                    peer.clone(),
                    DERIVE_PATH,
                    cluster.peers.clone(),
                    report.clone(),
                );
                tasks.spawn(link);
                links.insert(peer.name.clone(), tx);
            }
        }
        let courier: Arc<dyn Courier> = Arc::new(Routed {
            tx: self.tx.clone(),
            stats: self.stats.clone(),
            membership: cluster.membership.clone(),
            links,
            clock: cluster.peers.clock().clone(),
            faults: settings.fault_file,
        });
        let (collector, jobs) = Collector::new(
            engine.clone(),
            self.stats.clone(),
            self.lag.clone(),
            self.remote_lag.clone(),
            self.tx.clone(),
        );
        tasks.spawn(collector);
        tasks.spawn(Deriver::new(
            self.model.clone(),
            engine.clone(),
            courier.clone(),
            self.stats.clone(),
            rx,
            jobs,
        ));
        let started = Instant::now();
        // What the other origins hold for targets here arrives as they
        // answer; the local rebuild does not wait for them.
        for peer in courier.peers() {
            courier.resync(&peer);
        }
        let (entities, views) = self.visit_all(&engine, false).await?;
        if !self.settle_here(Duration::from_secs(3600)).await {
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
                only: None,
            });
        } else if !stamp.tombstone
            && self
                .model
                .view(key.kind())
                .is_some_and(|v| v.kind.from().is_some())
        {
            *views += 1;
            if force {
                self.send(Msg::Verify(key.clone()));
            }
            self.send(Msg::Orphan(key));
        }
    }
}
