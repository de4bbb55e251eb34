//! Starting, serving and stopping an origin: the top of the crate's layers.
//!
//! [`Server::new`] opens the store and replays the write-ahead log.
//! [`Server::run`] starts serving at once (so `/healthz` answers and
//! `/readyz` says 503) while the warm load fills the hot tier; then it
//! starts the partition workers, the flusher, the view engine and the
//! pusher, each group of background workers in its own [`Tasks`], and
//! reports ready. When its shutdown future resolves it drains in order (see
//! [`Server::run`]) and returns how many writes were left unstored, so
//! `main` can exit non-zero when that is not zero (they are still in the
//! log and will be replayed at the next start).

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use object_store::ObjectStore;
use prefold_core::Model;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::base::{Backoff, Clock, Tasks};
use crate::config::Config;
use crate::engine::warm::{warm, Owns, WarmSource};
use crate::engine::{Engine, HotTier};
use crate::http::{app, AppState, Parts};
use crate::publication::{ChangeIndex, Pusher};
use crate::storage::{
    self, Backlog, FlushStats, Flusher, LogWriter, Replayed, StoreError, StoreKind, Wal,
};
use crate::views::Views;

/// Pauses between warm loads while the store is unreachable.
const WARM_RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// A configured origin, ready to run.
pub struct Server {
    state: AppState,
    flusher: Flusher,
    log_writer: LogWriter,
    store: Arc<dyn ObjectStore>,
    replay: Replayed,
    config: Config,
    clock: Clock,
}

/// An origin started in this process without a listener (tests).
#[cfg(test)]
pub(crate) struct InProcess {
    /// The handlers' state: `crate::http::app(state)` is the router.
    pub(crate) state: AppState,
    started: Started,
    log: Tasks,
    drain: Duration,
}

#[cfg(test)]
impl InProcess {
    /// Stops as [`Server::run`] does once requests are finished; returns
    /// the writes left unstored.
    pub(crate) async fn stop(self) -> usize {
        drain_in_order(&self.state, self.started, self.log, self.drain).await
    }
}

/// The groups of background workers the start-up started, stopped in the
/// order of [`Server::run`].
#[derive(Default)]
struct Started {
    views: Option<Tasks>,
    engine: Option<Tasks>,
    storage: Option<Tasks>,
}

impl Server {
    /// Opens the configured store and log, and builds the origin.
    pub fn new(config: &Config) -> Result<Server, StoreError> {
        Server::with_store(config, storage::open::open(&config.store_settings())?)
    }

    /// Builds an origin over a given store (tests use an in-memory one).
    pub(crate) fn with_store(
        config: &Config,
        store: Arc<dyn ObjectStore>,
    ) -> Result<Server, StoreError> {
        let clock = Clock::system();
        let (wal, log_writer, replay) = Wal::open(&config.wal_dir(), config.wal_segment_bytes)?;
        if replay.read > 0 {
            tracing::info!(
                segments = replay.segments,
                records = replay.read,
                keys = replay.records.len(),
                "read the write-ahead log"
            );
        }
        let backlog = Arc::new(Backlog::new(config.limits()));
        let flush_stats = Arc::new(FlushStats::default());
        let state = AppState::new(
            config.http_settings(&clock),
            Parts {
                hot: Arc::new(HotTier::new(config.cache_bytes)),
                backlog: backlog.clone(),
                flush_stats: flush_stats.clone(),
                wal: Some(wal.clone()),
                changes: Arc::new(ChangeIndex::new(config.edge_url.is_some())),
                store: store.clone(),
            },
        );
        let flusher = Flusher::new(
            backlog,
            store.clone(),
            Some(wal),
            config.flush_settings(),
            flush_stats,
        );
        Ok(Server {
            state,
            flusher,
            log_writer,
            store,
            replay: replay.records,
            config: config.clone(),
            clock,
        })
    }

    /// Derives the views of `model` (see [`crate::views`]).
    pub fn with_model(self, model: Model) -> Server {
        if self
            .state
            .inner()
            .views
            .set(Views::new(
                Arc::new(model),
                Arc::new(self.config.cluster(&self.clock)),
            ))
            .is_err()
        {
            tracing::error!("a model was set twice");
        }
        self
    }

    /// Starts everything but the listener, for the in-process tests: they
    /// drive the router with `oneshot` and stop it with
    /// [`InProcess::stop`], in the order [`Server::run`] uses.
    #[cfg(test)]
    pub(crate) async fn start_in_process(self) -> InProcess {
        let drain = self.config.shutdown_timeout();
        let mut log = Tasks::new("log");
        log.spawn(self.log_writer);
        let started = start(
            self.state.clone(),
            self.store,
            self.replay,
            self.config,
            self.clock,
            self.flusher,
            CancellationToken::new(),
        )
        .await;
        InProcess {
            state: self.state,
            started,
            log,
            drain,
        }
    }

    /// Serves on `listener` until `shutdown` resolves, then drains in this
    /// order:
    ///
    /// 1. stop accepting connections and finish the requests in flight (for
    ///    at most the shutdown timeout: a stalled client must not keep the
    ///    flusher from storing what was acknowledged);
    /// 2. let the view engine derive and materialize what those requests
    ///    caused (what it sends other origins drains with step 3);
    /// 3. stop the view engine and the pusher (the counter folder folds its
    ///    last sums into the engine on the way out; what the pusher had not
    ///    sent, the edge's scheduled pull carries);
    /// 4. stop the partition workers;
    /// 5. stop the flusher, which stores every pending write or gives up at
    ///    the shutdown timeout;
    /// 6. close the log once everything appended is on disk.
    ///
    /// Returns the number of writes that could not be stored.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<usize> {
        let Server {
            state,
            flusher,
            log_writer,
            store,
            replay,
            config,
            clock,
        } = self;
        let drain = config.shutdown_timeout();
        let mut log = Tasks::new("log");
        log.spawn(log_writer);
        let stopping = CancellationToken::new();
        let starter = tokio::spawn(start(
            state.clone(),
            store,
            replay,
            config.clone(),
            clock,
            flusher,
            stopping.clone(),
        ));

        // 1. Stop accepting; finish the requests in flight.
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
        let deadline = async {
            stopping.cancelled().await;
            tokio::time::sleep(drain).await;
        };
        tokio::select! {
            r = serve => r?,
            () = deadline => tracing::warn!(
                "requests still open after the shutdown timeout; closing them"
            ),
        }
        stopping.cancel();
        let started = starter.await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "start-up task failed");
            Started::default()
        });

        Ok(drain_in_order(&state, started, log, drain).await)
    }
}

/// Steps 2 to 6 of [`Server::run`]'s shutdown; returns the writes left
/// unstored.
async fn drain_in_order(state: &AppState, started: Started, log: Tasks, drain: Duration) -> usize {
    // 2. Let the view engine settle.
    if let (Some(views), Some(_)) = (state.inner().views.get(), &started.views) {
        tracing::info!("requests finished; deriving what they changed");
        if !views.settle_here(drain).await {
            tracing::warn!("view derivation did not settle before the shutdown timeout");
        }
    }
    // 3. Stop the view engine and the pusher. Finished or not in time, the
    // rest follows: a stuck view worker must not keep acknowledged writes
    // from the store.
    if let Some(views) = started.views {
        views.stop(drain).await;
    }
    // 4. Stop the partition workers.
    if let Some(engine) = started.engine {
        engine.stop(drain).await;
    }
    // 5. Drain the flusher. Stopped before the warm load finished, nothing
    // was accepted, and the log still holds everything it held at start.
    let left = match started.storage {
        Some(storage) => {
            tracing::info!("storing pending writes");
            storage.stop(drain).await;
            state.inner().backlog.len()
        }
        None => 0,
    };
    // 6. Close the log.
    log.stop(drain).await;
    if left == 0 {
        tracing::info!("all writes stored; bye");
    }
    left
}

/// Warms the hot tier (retrying while the store is unreachable), then starts
/// the engine, the flusher, the view engine and the pusher, and marks the
/// origin ready. Returns the groups it started. Every wait races `stopping`.
async fn start(
    state: AppState,
    store: Arc<dyn ObjectStore>,
    replay: Replayed,
    config: Config,
    clock: Clock,
    flusher: Flusher,
    stopping: CancellationToken,
) -> Started {
    let mut started = Started::default();
    let inner = state.inner();
    let partitions = config.partitions();
    let ownership = config.ownership();
    let owns: Owns = Arc::new(move |k: &prefold_core::Key| ownership.owns(k));
    let source = match (config.store, &config.fault_file) {
        // Read the embedded store's files directly (much faster); not when
        // faults are injected, which only the object_store path obeys.
        (StoreKind::Fs, None) => WarmSource::Dir(config.store_root()),
        _ => WarmSource::Store(store.clone()),
    };
    let mut retry = WARM_RETRY.retry();
    let warmed = loop {
        let attempt = warm(
            &source,
            &inner.hot,
            &inner.backlog,
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
            _ = stopping.cancelled() => return started,
        }
        tokio::select! {
            _ = tokio::time::sleep(retry.next_delay()) => {}
            _ = stopping.cancelled() => return started,
        }
    };
    // The change feed lists what the warm load found, so an edge whose
    // cursor is behind catches up across restarts.
    inner.changes.seed(
        warmed
            .directories
            .iter()
            .flat_map(|d| d.iter().map(|(k, e)| (k.clone(), e.version))),
    );
    let mut settings = config.engine_settings(&clock);
    settings.check = inner.views.get().map(Views::entity_check);
    settings.observer = Some(inner.changes.clone());
    let mut engine_tasks = Tasks::new("engine");
    let engine = Arc::new(Engine::start(
        warmed.directories,
        inner.hot.clone(),
        inner.backlog.clone(),
        inner.wal.clone(),
        store,
        settings,
        &mut engine_tasks,
    ));
    started.engine = Some(engine_tasks);
    if inner.engine.set(engine.clone()).is_err() {
        tracing::error!("the engine was started twice");
    }
    let mut storage_tasks = Tasks::new("storage");
    storage_tasks.spawn(flusher);
    started.storage = Some(storage_tasks);
    let mut view_tasks = Tasks::new("views");
    if let Some(push) = config.push_settings(&clock) {
        view_tasks.spawn(Pusher::new(inner.changes.clone(), engine.clone(), push));
    }
    if let Some(views) = inner.views.get() {
        let build = views.start(engine, config.view_settings(), &mut view_tasks);
        tokio::select! {
            r = build => if let Err(e) = r {
                tracing::error!(error = %e, "the view rebuild failed");
            },
            _ = stopping.cancelled() => {}
        }
    }
    started.views = Some(view_tasks);
    if !stopping.is_cancelled() {
        state.set_ready(true);
        tracing::info!(
            objects = warmed.loaded,
            replayed = warmed.replayed,
            corrupt = warmed.corrupt,
            partitions,
            "ready"
        );
    }
    started
}
