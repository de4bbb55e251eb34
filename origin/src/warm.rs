//! Start-up: load every object this origin owns into the hot tier, then
//! re-apply the log, before the origin reports ready.
//!
//! This is the seeds' deterministic cache ("warmed before serving"): once
//! ready, the origin answers every read from memory and knows every key it
//! owns, so a missing key is a 404 without a trip to the store.
//!
//! Objects are listed under the store's `o/` prefix and fetched with bounded
//! concurrency. Progress goes to the log every second, and to a progress bar
//! when standard error is a terminal. Then the log's newest record per key is
//! applied wherever it is newer than the store's version; those writes enter
//! the backlog so the flusher stores them (they were acknowledged before the
//! crash or restart, and may never have reached the store). Records of keys
//! this origin no longer owns (the origin list changed while it was down)
//! are stored too, but not served.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use prefold_core::envelope::key_from_object_path;
use prefold_core::Key;
use tokio::time::Instant;

use crate::dirty::Dirty;
use crate::engine::{partition_of, Directory, Entry};
use crate::error::StoreError;
use crate::hot::HotTier;
use crate::object::Object;
use crate::wal::Replayed;

/// What the warm-up produced.
pub struct Warmed {
    /// One directory per partition.
    pub directories: Vec<Directory>,
    /// Objects loaded from the store.
    pub loaded: u64,
    /// Log records newer than the store, re-applied.
    pub replayed: u64,
    /// Stored records that did not decode (skipped, logged).
    pub corrupt: u64,
}

/// Loads the owned objects of `store` into `hot`, then applies `replay`.
#[allow(clippy::too_many_arguments)]
pub async fn warm(
    store: &Arc<dyn ObjectStore>,
    hot: &HotTier,
    dirty: &Dirty,
    replay: Replayed,
    partitions: usize,
    owns: &(dyn Fn(&Key) -> bool + Sync),
    concurrency: usize,
    progress: &AtomicU64,
) -> Result<Warmed, StoreError> {
    let started = Instant::now();
    let mut directories = vec![Directory::new(); partitions.max(1)];
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} warming: {pos} objects ({per_sec}) {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    let prefix = Path::from("o");
    let fetched = store
        .list(Some(&prefix))
        .filter_map(|meta| {
            futures::future::ready(match meta {
                Ok(m) => key_from_object_path(m.location.as_ref())
                    .filter(|k| owns(k))
                    .map(|k| Ok((k, m.location))),
                Err(e) => Some(Err(StoreError::from(e))),
            })
        })
        .map(|item| {
            // An owned handle: the futures must not borrow across the spawn
            // boundary of the caller.
            let store = store.clone();
            async move {
                let (key, location) = item?;
                let bytes = store.get(&location).await?.bytes().await?;
                let object = Object::decode(&key, bytes);
                Ok::<_, StoreError>((key, object))
            }
        })
        .buffer_unordered(concurrency.max(1));
    let mut fetched = std::pin::pin!(fetched);

    let (mut loaded, mut corrupt) = (0u64, 0u64);
    let mut last_log = Instant::now();
    while let Some(item) = fetched.next().await {
        let (key, object) = item?;
        let object = match object {
            Ok(o) => o,
            Err(e) => {
                corrupt += 1;
                tracing::error!(%key, error = %e, "skipping a stored object that does not decode");
                continue;
            }
        };
        directories[partition_of(&key, partitions.max(1))].insert(
            key.clone(),
            Entry {
                version: object.version,
                tombstone: object.tombstone,
            },
        );
        hot.insert(key, Some(Arc::new(object))).await;
        loaded += 1;
        progress.store(loaded, Ordering::Relaxed);
        if let Some(bar) = &bar {
            bar.set_position(loaded);
        }
        if last_log.elapsed() >= Duration::from_secs(1) {
            last_log = Instant::now();
            let rate = loaded as f64 / started.elapsed().as_secs_f64();
            tracing::info!(loaded, rate = rate as u64, "warming the hot tier");
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }

    let mut replayed = 0;
    let mut handed_over = 0;
    for (key, (segment, object)) in replay {
        if !owns(&key) {
            // Acknowledged here before the origin list changed: store it
            // (the flusher never overwrites a newer version) but do not
            // serve it; the key's new owner does.
            dirty.insert(key, Arc::new(object), segment);
            handed_over += 1;
            continue;
        }
        let dir = &mut directories[partition_of(&key, partitions.max(1))];
        if dir.get(&key).is_some_and(|e| e.version >= object.version) {
            continue;
        }
        dir.insert(
            key.clone(),
            Entry {
                version: object.version,
                tombstone: object.tombstone,
            },
        );
        let object = Arc::new(object);
        dirty.insert(key.clone(), object.clone(), segment);
        hot.insert(key, Some(object)).await;
        replayed += 1;
    }
    hot.sync().await;
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        loaded,
        replayed,
        handed_over,
        corrupt,
        seconds = format!("{secs:.2}"),
        rate = (loaded as f64 / secs.max(1e-9)) as u64,
        evictions = hot.evictions(),
        "hot tier warm"
    );
    if hot.evictions() > 0 {
        tracing::warn!(
            evictions = hot.evictions(),
            "the owned objects do not fit in --cache-bytes; evicted ones will be loaded on demand"
        );
    }
    Ok(Warmed {
        directories,
        loaded,
        replayed,
        corrupt,
    })
}
