//! The deriver: the worker that owns this origin's view state, takes
//! change and derivation messages in batches, sends what they cause through
//! the courier, and materializes the targets they changed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use foldhash::{HashMap, HashMapExt, HashSet};
use prefold_core::{Key, Model};
use tokio::sync::{mpsc, oneshot};

use super::collector::{Job, Stale};
use super::node::{refresh, Node, Out};
use super::state::Source;
use super::{Courier, Msg, Query, ViewStats};
use crate::base::{Shutdown, Worker};
use crate::engine::Engine;

/// Messages taken per batch.
const BATCH: usize = 4096;

/// The worker that owns this origin's view state.
pub(super) struct Deriver {
    node: Node,
    engine: Arc<Engine>,
    courier: Arc<dyn Courier>,
    stats: Arc<ViewStats>,
    rx: mpsc::UnboundedReceiver<Msg>,
    /// Where materializations go to be waited for.
    jobs: mpsc::UnboundedSender<Job>,
    /// Origins whose answer to this origin's resync has not arrived:
    /// until it has, a stored view without state here may still be
    /// waiting for its members, so orphans are not deleted.
    awaiting: HashSet<String>,
    orphans: Vec<Key>,
}

impl Deriver {
    pub(super) fn new(
        model: Arc<Model>,
        engine: Arc<Engine>,
        courier: Arc<dyn Courier>,
        stats: Arc<ViewStats>,
        rx: mpsc::UnboundedReceiver<Msg>,
        jobs: mpsc::UnboundedSender<Job>,
    ) -> Deriver {
        Deriver {
            node: Node::new(model),
            awaiting: courier.peers().into_iter().collect(),
            engine,
            courier,
            stats,
            rx,
            jobs,
            orphans: Vec::new(),
        }
    }
}

impl Worker for Deriver {
    fn name(&self) -> &'static str {
        "deriver"
    }

    async fn run(mut self, shutdown: Shutdown) {
        loop {
            let Some(Some(first)) = shutdown.or(self.rx.recv()).await else {
                break;
            };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match self.rx.try_recv() {
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
}

impl Deriver {
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

    /// The source's current state, read once per batch (and again if a
    /// message needs a newer version than the one read).
    async fn current(&self, cache: &mut HashMap<Key, Source>, key: &Key, at_least: u64) -> Source {
        if let Some(s) = cache.get(key).filter(|s| s.version >= at_least) {
            return s.clone();
        }
        let s = self.fetch(key).await;
        cache.insert(key.clone(), s.clone());
        s
    }

    fn send_all(&self, outs: impl IntoIterator<Item = Out>, at: Instant) {
        for out in outs {
            self.courier.deliver(out, at);
        }
    }

    async fn process(&mut self, batch: Vec<Msg>) -> Vec<oneshot::Sender<()>> {
        let mut cache: HashMap<Key, Source> = HashMap::new();
        let mut stale: HashMap<Key, Stale> = HashMap::new();
        let mut barriers = Vec::new();
        for msg in batch {
            match msg {
                Msg::Changed {
                    source,
                    version,
                    at,
                    force,
                    only,
                } => {
                    self.stats.changes.fetch_add(1, Ordering::Relaxed);
                    let now = self.current(&mut cache, &source, version).await;
                    let courier = self.courier.clone();
                    let to_only = |t: &Key| courier.owner(t) == only.as_deref();
                    let filter: Option<&dyn Fn(&Key) -> bool> = match &only {
                        Some(_) => Some(&to_only),
                        None => None,
                    };
                    let ds = self.node.changed(&source, &now, force, filter);
                    self.send_all(ds.into_iter().map(Out::Derive), at);
                }
                Msg::Out(out, at, remote) => {
                    if remote && self.courier.owner(out.address()).is_some() {
                        // Sent here under another layout: on to the owner.
                        self.courier.deliver(out, at);
                        continue;
                    }
                    self.handle(out, at, remote, &mut cache, &mut stale).await;
                }
                Msg::Orphan(key) => {
                    if !self.awaiting.is_empty() {
                        self.orphans.push(key);
                    } else if !self.node.state.has_target(&key) {
                        stale.entry(key).or_insert(Stale {
                            at: Instant::now(),
                            changed: false,
                            remote: false,
                        });
                    }
                }
                Msg::Verify(key) => {
                    let courier = self.courier.clone();
                    let outs = self
                        .node
                        .verify(&key, &|s: &Key| courier.owner(s).is_some());
                    self.send_all(outs, Instant::now());
                }
                Msg::Render(key) => {
                    stale.entry(key).or_insert(Stale {
                        at: Instant::now(),
                        changed: true,
                        remote: false,
                    });
                }
                Msg::Resubscribe(origin) => {
                    let courier = self.courier.clone();
                    let outs = self
                        .node
                        .resubscribe(&|e: &Key| courier.owner(e) == Some(origin.as_str()));
                    self.send_all(outs, Instant::now());
                    // Last on the ordered link, after everything the resync sent.
                    self.courier.resync_done(&origin);
                }
                Msg::Resynced(origin) => {
                    self.awaiting.remove(&origin);
                    if self.awaiting.is_empty() {
                        for key in std::mem::take(&mut self.orphans) {
                            if !self.node.state.has_target(&key) {
                                stale.entry(key).or_insert(Stale {
                                    at: Instant::now(),
                                    changed: false,
                                    remote: false,
                                });
                            }
                        }
                    }
                }
                Msg::Query(q, reply) => {
                    let state = &self.node.state;
                    let answer = match &q {
                        Query::Page(t, pq) => state.page(t, pq),
                        Query::Member(t, id) => state
                            .is_member(t, id)
                            .map(|m| serde_json::json!({"id": id, "member": m})),
                        Query::SearchParts { view, terms } => {
                            serde_json::to_value(state.search_parts(view, terms))
                                .map_err(|e| super::QueryError::Unsupported(e.to_string()))
                        }
                    };
                    let _ = reply.send(answer);
                }
                Msg::Barrier(tx) => barriers.push(tx),
            }
        }
        self.stats
            .targets
            .store(self.node.state.target_count() as u64, Ordering::Relaxed);
        self.materialize(stale).await;
        barriers
    }

    /// Handles a message addressed to a key this origin owns.
    async fn handle(
        &mut self,
        out: Out,
        at: Instant,
        remote: bool,
        cache: &mut HashMap<Key, Source>,
        stale: &mut HashMap<Key, Stale>,
    ) {
        match out {
            Out::Derive(d) => {
                self.stats.derivations.fetch_add(1, Ordering::Relaxed);
                let (effect, outs) = self.node.derive(&d);
                self.send_all(outs, at);
                if effect.skipped {
                    self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                }
                if effect.changed || d.repair {
                    let e = stale.entry(d.target.clone()).or_insert(Stale {
                        at,
                        changed: false,
                        remote,
                    });
                    e.at = e.at.min(at);
                    e.changed |= effect.changed && !d.repair;
                    e.remote |= remote;
                }
            }
            Out::Subscribe(s) => {
                let now = self.current(cache, &s.entity, 0).await;
                if let Some(d) = self.node.subscribe(&s, &now) {
                    self.courier.deliver(Out::Derive(d), at);
                }
            }
            Out::Refresh { source, target } => {
                let now = self.current(cache, &source, 0).await;
                self.courier
                    .deliver(Out::Derive(refresh(&source, &target, &now)), at);
            }
        }
    }

    /// Queues every stale target's object for the engine (which skips it
    /// if unchanged), then hands the outcomes to the collector while the
    /// next batch is derived: deriving and applying overlap on two cores.
    /// The queueing itself keeps each partition's order, so a later batch's
    /// version of a target is applied after this one's.
    async fn materialize(&mut self, stale: HashMap<Key, Stale>) {
        if stale.is_empty() {
            return;
        }
        let items: Vec<(Key, Option<Bytes>)> = stale
            .keys()
            .map(|k| (k.clone(), self.node.state.render_bytes(k).map(Bytes::from)))
            .collect();
        let replies = self.engine.write_derived(items).await;
        // The collection counts as pending work, so `settle` waits for it.
        self.stats.pending.fetch_add(1, Ordering::Relaxed);
        if self.jobs.send(Job { stale, replies }).is_err() {
            self.stats.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
