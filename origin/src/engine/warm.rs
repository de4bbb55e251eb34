//! Start-up: load every object this origin owns into the hot tier, then
//! re-apply the log, before the origin reports ready.
//!
//! This makes the cache deterministic (warmed before serving): once
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
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use object_store::path::Path;
use object_store::ObjectStore;
use prefold_core::envelope::key_from_object_path;
use prefold_core::Key;
use tokio::time::Instant;

use super::hot::HotTier;
use super::{partition_of, Directory, Stamp};
use crate::base::Object;
use crate::storage::read::{decode, read_record};
use crate::storage::{Backlog, Replayed, StoreError};

/// What the warm-up produced.
pub(crate) struct Warmed {
    /// One directory per partition.
    pub(crate) directories: Vec<Directory>,
    /// Objects loaded from the store.
    pub(crate) loaded: u64,
    /// Log records newer than the store, re-applied.
    pub(crate) replayed: u64,
    /// Stored records that did not decode (skipped, logged).
    pub(crate) corrupt: u64,
}

/// Which keys this origin owns.
pub(crate) type Owns = Arc<dyn Fn(&Key) -> bool + Send + Sync>;

/// Where the warm load reads the objects from.
pub(crate) enum WarmSource {
    /// Any object store, through `object_store`.
    Store(Arc<dyn ObjectStore>),
    /// The embedded filesystem store's root directory, read directly.
    ///
    /// `object_store`'s `LocalFileSystem` makes two blocking-pool hops per
    /// object (open, then read); reading each prefix directory in one
    /// blocking task is several times faster for a million small files.
    /// The layout is the same (`o/{hh}/{name}`), so the result is too.
    Dir(PathBuf),
}

/// One object read by the warm load: its key, and the record decoded.
type WarmRecord = (Key, Result<Object, StoreError>);

/// Loads the owned objects from `source` into `hot`, then applies `replay`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn warm(
    source: &WarmSource,
    hot: &HotTier,
    backlog: &Backlog,
    replay: Replayed,
    partitions: usize,
    owns: &Owns,
    concurrency: usize,
    progress: &AtomicU64,
) -> Result<Warmed, StoreError> {
    let started = Instant::now();
    let mut directories = vec![Directory::default(); partitions.max(1)];
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} warming: {pos} objects ({per_sec}) {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    let mut fetched = match source {
        WarmSource::Store(store) => from_store(store.clone(), owns.clone(), concurrency),
        WarmSource::Dir(root) => from_dir(root.clone(), owns.clone(), concurrency),
    };

    let (mut loaded, mut corrupt) = (0u64, 0u64);
    let mut last_log = Instant::now();
    while let Some(chunk) = fetched.next().await {
        for (key, object) in chunk? {
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
                Stamp {
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
            backlog.insert(key, Arc::new(object), segment);
            handed_over += 1;
            continue;
        }
        let dir = &mut directories[partition_of(&key, partitions.max(1))];
        if dir.get(&key).is_some_and(|e| e.version >= object.version) {
            continue;
        }
        dir.insert(
            key.clone(),
            Stamp {
                version: object.version,
                tombstone: object.tombstone,
            },
        );
        let object = Arc::new(object);
        backlog.insert(key.clone(), object.clone(), segment);
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

/// Chunks of objects read through `object_store`.
fn from_store(
    store: Arc<dyn ObjectStore>,
    owns: Owns,
    concurrency: usize,
) -> BoxStream<'static, Result<Vec<WarmRecord>, StoreError>> {
    let prefix = Path::from("o");
    store
        .list(Some(&prefix))
        .filter_map(move |meta| {
            futures::future::ready(match meta {
                Ok(m) => key_from_object_path(m.location.as_ref())
                    .filter(|k| owns(k))
                    .map(|k| Ok((k, m.location))),
                Err(e) => Some(Err(StoreError::from(e))),
            })
        })
        .map(move |item| {
            let store = store.clone();
            async move {
                let (key, location) = item?;
                // Listed a moment ago; deleted since means nothing to load.
                let loaded = match read_record(store.as_ref(), &location).await? {
                    Some(record) => vec![(key.clone(), record.decode(&key))],
                    None => Vec::new(),
                };
                Ok::<_, StoreError>(loaded)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .boxed()
}

/// Chunks of objects read straight from the filesystem store's directory,
/// one prefix directory per blocking task.
fn from_dir(
    root: PathBuf,
    owns: Owns,
    concurrency: usize,
) -> BoxStream<'static, Result<Vec<WarmRecord>, StoreError>> {
    let top = root.join("o");
    let prefixes: Result<Vec<(String, PathBuf)>, StoreError> = match std::fs::read_dir(&top) {
        Ok(entries) => entries
            .map(|e| {
                let e = e.map_err(StoreError::io("listing", &top))?;
                Ok((e.file_name().to_string_lossy().into_owned(), e.path()))
            })
            .collect(),
        // An empty store has no `o/` yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(StoreError::io("listing", &top)(e)),
    };
    let prefixes = match prefixes {
        Ok(p) => p,
        Err(e) => return stream::once(async move { Err(e) }).boxed(),
    };
    // Blocking tasks, at most a few per core: the work is system calls.
    let parallel = concurrency.clamp(
        1,
        4 * std::thread::available_parallelism().map_or(2, |n| n.get()),
    );
    stream::iter(prefixes)
        .map(move |(hh, dir)| {
            let owns = owns.clone();
            async move { tokio::task::spawn_blocking(move || read_prefix(&hh, &dir, &owns)).await? }
        })
        .buffer_unordered(parallel)
        .boxed()
}

/// Every owned object in one prefix directory (`o/{hh}`).
fn read_prefix(
    hh: &str,
    dir: &std::path::Path,
    owns: &Owns,
) -> Result<Vec<WarmRecord>, StoreError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(StoreError::io("listing", dir))? {
        let entry = entry.map_err(StoreError::io("listing", dir))?;
        let name = entry.file_name();
        // Anything that is not one of our records (a half-written temporary
        // file of the store client, say) has no key and is skipped.
        let Some(key) = name
            .to_str()
            .and_then(|n| key_from_object_path(&format!("o/{hh}/{n}")))
        else {
            continue;
        };
        if !owns(&key) {
            continue;
        }
        let path = entry.path();
        let bytes = Bytes::from(std::fs::read(&path).map_err(StoreError::io("reading", &path))?);
        let object = decode(&key, bytes);
        out.push((key, object));
    }
    Ok(out)
}
