//! Starting, serving and stopping an origin.
//!
//! [`Origin::run`] serves until its shutdown future resolves, then drains in
//! order: stop accepting and finish in-flight requests (axum's graceful
//! shutdown), then stop the flusher, which stores every pending write or gives
//! up at the configured deadline. It returns how many writes were left
//! unstored, so `main` can exit non-zero when that is not zero.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use object_store::path::Path;
use object_store::ObjectStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{app, AppState};
use crate::config::Config;
use crate::error::StoreError;
use crate::flush::{Dirty, FlushStats, Flusher};
use crate::hot::HotTier;
use crate::store;

/// A configured origin, ready to run.
pub struct Origin {
    state: AppState,
    flusher: Flusher,
    store: Arc<dyn ObjectStore>,
    shutdown_timeout: Duration,
}

impl Origin {
    /// Opens the configured store and builds the origin.
    pub fn new(config: &Config) -> Result<Origin, StoreError> {
        Ok(Origin::with_store(config, store::open(config)?))
    }

    /// Builds an origin over a given store (tests wrap stores for faults).
    pub fn with_store(config: &Config, store: Arc<dyn ObjectStore>) -> Origin {
        let dirty = Arc::new(Dirty::default());
        let stats = Arc::new(FlushStats::default());
        let hot = HotTier::new(config.cache_bytes, store.clone(), dirty.clone());
        let state = AppState::new(hot, dirty.clone(), stats.clone(), config.max_body_bytes);
        let flusher = Flusher {
            dirty,
            store: store.clone(),
            interval: config.flush_interval(),
            concurrency: usize::from(config.flush_concurrency),
            stats,
        };
        Origin {
            state,
            flusher,
            store,
            shutdown_timeout: config.shutdown_timeout(),
        }
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
            shutdown_timeout,
        } = self;
        let stop_flusher = CancellationToken::new();
        let flusher = tokio::spawn(flusher.run(stop_flusher.clone(), shutdown_timeout));

        // Ready once the store answers; until then /readyz says 503.
        let stopping = CancellationToken::new();
        let ready_task = tokio::spawn(become_ready(state.clone(), store, stopping.clone()));

        let serving_state = state.clone();
        let stopping_signal = stopping.clone();
        // Responses are written whole; Nagle's algorithm would only hold back
        // the tail of a large body waiting for an ACK.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        axum::serve(listener, app(state))
            .with_graceful_shutdown(async move {
                shutdown.await;
                tracing::info!("shutting down: no new connections; finishing requests");
                stopping_signal.cancel();
                serving_state.set_ready(false);
            })
            .await?;
        stopping.cancel();
        ready_task.abort();

        tracing::info!("requests finished; storing pending writes");
        stop_flusher.cancel();
        let left = flusher.await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "flusher task failed");
            usize::MAX
        });
        if left == 0 {
            tracing::info!("all writes stored; bye");
        }
        Ok(left)
    }
}

/// Probes the store until it answers, then marks the origin ready. Each wait
/// races the shutdown signal.
async fn become_ready(state: AppState, store: Arc<dyn ObjectStore>, stop: CancellationToken) {
    let mut pause = Duration::from_millis(100);
    loop {
        match store.list_with_delimiter(Some(&Path::from("o"))).await {
            Ok(_) => {
                state.set_ready(true);
                tracing::info!("store reachable; ready");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "store not reachable yet"),
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => return,
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}
