//! Starting, serving and stopping an origin.
//!
//! [`Origin::new`] opens the store and replays the write-ahead log.
//! [`Origin::run`] starts serving at once (so `/healthz` answers and
//! `/readyz` says 503) while the warm load fills the hot tier; then it starts
//! the partition workers and the flusher and reports ready. When its shutdown
//! future resolves it drains in order: stop accepting and finish in-flight
//! requests (axum's graceful shutdown, for at most the shutdown timeout),
//! let the view engine publish what those requests derived and the counters
//! publish their pending increments, then let the flusher store every
//! pending write or give up after the shutdown timeout again. It returns how many
//! writes were left unstored, so `main` can exit non-zero when that is not
//! zero (they are still in the log and will be replayed at the next start).

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use object_store::ObjectStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{app, AppState};
use crate::config::Config;
use crate::config::StoreKind;
use crate::dirty::{Dirty, Limits};
use crate::engine::{Check, Engine, Options};
use crate::error::StoreError;
use crate::flush::{FlushStats, Flusher};
use crate::hot::HotTier;
use crate::publication::Pusher;
use crate::store;
use crate::views::Views;
use crate::wal::{Replayed, Wal};
use crate::warm::{warm, Owns, Source};
use prefold_core::Model;

/// A configured origin, ready to run.
pub struct Origin {
    state: AppState,
    flusher: Flusher,
    store: Arc<dyn ObjectStore>,
    replay: Replayed,
    config: Config,
}

impl Origin {
    /// Opens the configured store and log, and builds the origin.
    pub fn new(config: &Config) -> Result<Origin, StoreError> {
        Origin::with_store(config, store::open(config)?)
    }

    /// Builds an origin over a given store (tests wrap stores for faults).
    pub fn with_store(config: &Config, store: Arc<dyn ObjectStore>) -> Result<Origin, StoreError> {
        let (wal, replay) = Wal::open(&config.wal_dir(), config.wal_segment_bytes)?;
        if replay.read > 0 {
            tracing::info!(
                segments = replay.segments,
                records = replay.read,
                keys = replay.records.len(),
                "read the write-ahead log"
            );
        }
        let dirty = Arc::new(Dirty::new(Limits {
            max_keys: config.max_backlog_keys,
            max_bytes: config.max_backlog_bytes,
        }));
        let stats = Arc::new(FlushStats::default());
        let hot = Arc::new(HotTier::new(config.cache_bytes));
        let state = AppState::new(
            config.clone(),
            hot,
            dirty.clone(),
            stats.clone(),
            Some(wal.clone()),
            store.clone(),
        );
        let flusher = Flusher::new(
            dirty,
            store.clone(),
            Some(wal),
            config.flush_interval(),
            usize::from(config.flush_concurrency),
            config.store_timeout(),
            config.conditional(),
            stats,
        );
        Ok(Origin {
            state,
            flusher,
            store,
            replay: replay.records,
            config: config.clone(),
        })
    }

    /// Derives the views of `model` (see [`crate::views`]).
    pub fn with_model(self, model: Model) -> Origin {
        if self
            .state
            .inner()
            .views
            .set(Views::new(Arc::new(model)))
            .is_err()
        {
            tracing::error!("a model was set twice");
        }
        self
    }

    /// The handlers' state (for in-process tests).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves on `listener` until `shutdown` resolves, then drains. Returns the
    /// number of writes that could not be stored before the deadline.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<usize> {
        let Origin {
            state,
            flusher,
            store,
            replay,
            config,
        } = self;
        let stopping = CancellationToken::new();
        let stop_flusher = CancellationToken::new();
        let stop_views = CancellationToken::new();
        let starter = tokio::spawn(start(
            state.clone(),
            store,
            replay,
            config.clone(),
            flusher,
            Stops {
                flusher: stop_flusher.clone(),
                views: stop_views.clone(),
                stopping: stopping.clone(),
            },
        ));

        let serving_state = state.clone();
        let stopping_signal = stopping.clone();
        // Responses are written whole; Nagle's algorithm would only hold back
        // the tail of a large body waiting for an ACK.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        let serve = axum::serve(listener, app(state.clone()))
            .with_graceful_shutdown(async move {
                shutdown.await;
                tracing::info!("shutting down: no new connections; finishing requests");
                stopping_signal.cancel();
                serving_state.set_ready(false);
            })
            .into_future();
        // Requests get the shutdown timeout to finish: a stalled client must
        // not keep the flusher from storing what was acknowledged.
        let deadline = async {
            stopping.cancelled().await;
            tokio::time::sleep(config.shutdown_timeout()).await;
        };
        tokio::select! {
            r = serve => r?,
            () = deadline => tracing::warn!(
                "requests still open after the shutdown timeout; closing them"
            ),
        }
        stopping.cancel();

        let started = starter.await;
        let started = match started {
            Ok(Some((flusher, view_tasks))) => {
                if let Some(views) = state.inner().views.get() {
                    tracing::info!("requests finished; publishing derived views and counters");
                    if !views.settle(config.shutdown_timeout()).await {
                        tracing::warn!(
                            "view derivation did not settle before the shutdown timeout"
                        );
                    }
                }
                stop_views.cancel();
                // Finished or not, the flusher comes next: a stuck view task
                // must not keep acknowledged writes from the store.
                let all = futures::future::join_all(view_tasks);
                if tokio::time::timeout(config.shutdown_timeout(), all)
                    .await
                    .is_err()
                {
                    tracing::warn!("view tasks did not stop before the shutdown timeout");
                }
                Ok(Some(flusher))
            }
            other => {
                stop_views.cancel();
                other.map(|o| o.map(|(f, _)| f))
            }
        };
        tracing::info!("storing pending writes");
        stop_flusher.cancel();
        let left = match started {
            Ok(Some(flusher)) => flusher.await.unwrap_or_else(|e| {
                tracing::error!(error = %e, "flusher task failed");
                usize::MAX
            }),
            // Stopped before the warm load finished: nothing was accepted,
            // and the log still holds everything it held at start.
            Ok(None) => 0,
            Err(e) => {
                tracing::error!(error = %e, "start-up task failed");
                usize::MAX
            }
        };
        if let Some(wal) = &state.inner().wal {
            wal.barrier().await;
        }
        if left == 0 {
            tracing::info!("all writes stored; bye");
        }
        Ok(left)
    }
}

/// The signals of the start-up task: stop the flusher, stop the view
/// engine's tasks, and "shutting down" (every wait races it).
struct Stops {
    flusher: CancellationToken,
    views: CancellationToken,
    stopping: CancellationToken,
}

/// Warms the hot tier (retrying while the store is unreachable), then starts
/// the engine and the flusher and marks the origin ready. Returns the
/// flusher's task, or `None` if stopped first. Every wait races `stopping`.
async fn start(
    state: AppState,
    store: Arc<dyn ObjectStore>,
    replay: Replayed,
    config: Config,
    flusher: Flusher,
    stops: Stops,
) -> Option<(
    tokio::task::JoinHandle<usize>,
    Vec<tokio::task::JoinHandle<()>>,
)> {
    let Stops {
        flusher: stop_flusher,
        views: stop_views,
        stopping,
    } = stops;
    let inner = state.inner();
    let partitions = config.partitions();
    let owner_config = config.clone();
    let owns: Owns = Arc::new(move |k: &prefold_core::Key| owner_config.owns(k));
    let source = match (config.store, &config.fault_file) {
        // Read the embedded store's files directly (much faster); not when
        // faults are injected, which only the object_store path obeys.
        (StoreKind::Fs, None) => Source::Dir(config.data.join("store")),
        _ => Source::Store(store.clone()),
    };
    let mut pause = Duration::from_millis(100);
    let warmed = loop {
        let attempt = warm(
            &source,
            &inner.hot,
            &inner.dirty,
            replay.clone(),
            partitions,
            &owns,
            config.warm_concurrency,
            &inner.warm_progress,
        );
        tokio::select! {
            r = attempt => match r {
                Ok(w) => break w,
                Err(e) => tracing::warn!(error = %e, "warm load failed (store unreachable?); retrying"),
            },
            _ = stopping.cancelled() => return None,
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stopping.cancelled() => return None,
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    };
    let check: Option<Check> = inner.views.get().map(|views| {
        let model = views.model().clone();
        let check: Check = Arc::new(move |key, body| {
            let Some(entity) = model.entity(key.kind()) else {
                return Ok(());
            };
            let doc = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            model.check(entity, key, &doc).map_err(|v| v.to_string())
        });
        check
    });
    // The change feed lists what the warm load found, so an edge whose
    // cursor is behind catches up across restarts.
    inner.changes.seed(
        warmed
            .directories
            .iter()
            .flat_map(|d| d.iter().map(|(k, e)| (k.clone(), e.version))),
    );
    let engine = Arc::new(Engine::start(
        warmed.directories,
        inner.hot.clone(),
        inner.dirty.clone(),
        inner.wal.clone(),
        store,
        Options {
            load_timeout: config.store_timeout(),
            max_body_bytes: config.max_body_bytes,
            check,
            derived_flush_delay: Duration::from_millis(config.view_flush_delay_ms),
            changes: Some(inner.changes.clone()),
        },
    ));
    if inner.engine.set(engine.clone()).is_err() {
        tracing::error!("the engine was started twice");
    }
    let flusher = tokio::spawn(flusher.run(stop_flusher, config.shutdown_timeout()));
    let mut view_tasks = Vec::new();
    if let (Some(edge_url), Some(secret)) = (&config.edge_url, &config.cluster_secret) {
        let pusher = Pusher {
            changes: inner.changes.clone(),
            engine: engine.clone(),
            edge_url: edge_url.clone(),
            cluster_secret: secret.clone(),
            interval: Duration::from_millis(config.publish_interval_ms),
            timeout: Duration::from_secs(10),
            fault_file: config.fault_file.clone(),
        };
        // Stops with the view tasks: after the last requests' views are
        // published (what is left then, the edge's pull carries).
        view_tasks.push(tokio::spawn(pusher.run(stop_views.clone())));
    }
    if let Some(views) = inner.views.get() {
        let regen =
            (config.regen_period_secs > 0).then(|| Duration::from_secs(config.regen_period_secs));
        let build = views.start(engine, config.fault_file.clone(), regen, stop_views);
        tokio::select! {
            r = build => match r {
                Ok(tasks) => view_tasks.extend(tasks),
                Err(e) => tracing::error!(error = %e, "the view rebuild failed"),
            },
            _ = stopping.cancelled() => {}
        }
    }
    if !stopping.is_cancelled() {
        state.set_ready(true);
        tracing::info!(
            objects = warmed.loaded,
            replayed = warmed.replayed,
            partitions,
            "ready"
        );
    }
    Some((flusher, view_tasks))
}
