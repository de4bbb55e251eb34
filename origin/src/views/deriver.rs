//! The deriver: the worker that owns every view's state, takes change and
//! derivation messages in batches, and materializes the targets they
//! changed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use foldhash::{HashMap, HashMapExt};
use prefold_core::{Key, Model};
use tokio::sync::{mpsc, oneshot};

use super::collector::{Job, Stale};
use super::state::{Derivation, Source, ViewState};
use super::{Courier, Msg, Query, ViewStats};
use crate::base::{Shutdown, Worker};
use crate::engine::Engine;

/// Messages taken per batch.
const BATCH: usize = 4096;

/// The worker that owns every view's state.
pub(super) struct Deriver {
    state: ViewState,
    engine: Arc<Engine>,
    courier: Box<dyn Courier>,
    stats: Arc<ViewStats>,
    rx: mpsc::UnboundedReceiver<Msg>,
    /// Where materializations go to be waited for.
    jobs: mpsc::UnboundedSender<Job>,
}

impl Deriver {
    pub(super) fn new(
        model: Arc<Model>,
        engine: Arc<Engine>,
        courier: Box<dyn Courier>,
        stats: Arc<ViewStats>,
        rx: mpsc::UnboundedReceiver<Msg>,
        jobs: mpsc::UnboundedSender<Job>,
    ) -> Deriver {
        Deriver {
            state: ViewState::new(model),
            engine,
            courier,
            stats,
            rx,
            jobs,
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
                        let e = stale
                            .entry(d.target.clone())
                            .or_insert(Stale { at, changed: false });
                        e.at = e.at.min(at);
                        e.changed |= effect.changed && !d.force;
                    }
                }
                Msg::Orphan(key) => {
                    if !self.state.has_target(&key) {
                        stale.entry(key).or_insert(Stale {
                            at: Instant::now(),
                            changed: false,
                        });
                    }
                }
                Msg::Render(key) => {
                    stale.entry(key).or_insert(Stale {
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
        self.materialize(stale).await;
        barriers
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
            .map(|k| (k.clone(), self.state.render_bytes(k).map(Bytes::from)))
            .collect();
        let replies = self.engine.write_derived(items).await;
        // The collection counts as pending work, so `settle` waits for it.
        self.stats.pending.fetch_add(1, Ordering::Relaxed);
        if self.jobs.send(Job { stale, replies }).is_err() {
            self.stats.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
