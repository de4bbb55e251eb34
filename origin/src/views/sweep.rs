//! The rolling regeneration: the worker that visits every entity and view
//! object once per period, evenly spread, forcing recomputation, so that
//! whatever a lost derivation missed is repaired (and counted as a
//! divergence).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::Views;
use crate::base::{Shutdown, Worker};
use crate::engine::Engine;

/// Keys visited per pause: the pauses stay coarse however many keys there
/// are.
const CHUNK: usize = 256;

/// The rolling regeneration.
pub(super) struct Sweep {
    views: Views,
    engine: Arc<Engine>,
    period: Duration,
}

impl Sweep {
    pub(super) fn new(views: Views, engine: Arc<Engine>, period: Duration) -> Sweep {
        Sweep {
            views,
            engine,
            period,
        }
    }
}

impl Worker for Sweep {
    fn name(&self) -> &'static str {
        "rolling regeneration"
    }

    async fn run(self, shutdown: Shutdown) {
        loop {
            let keys = match shutdown.or(self.engine.keys()).await {
                Some(Ok(k)) => k,
                Some(Err(_)) | None => return,
            };
            let chunks = keys.len().div_ceil(CHUNK).max(1);
            let pause = self.period / u32::try_from(chunks).unwrap_or(u32::MAX);
            let mut keys = keys.into_iter();
            let (mut e, mut v) = (0, 0);
            for _ in 0..chunks {
                // Each chunk waits first, so the pass that follows the
                // start-up rebuild does not repeat it at once.
                if !shutdown.sleep(pause).await {
                    return;
                }
                for (key, stamp) in keys.by_ref().take(CHUNK) {
                    self.views.visit(key, stamp, true, &mut e, &mut v);
                }
            }
            self.views.stats.sweeps.fetch_add(1, Ordering::Relaxed);
        }
    }
}
