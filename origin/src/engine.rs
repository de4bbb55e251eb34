//! The storage engine: per-key serialized writes through partition workers.
//!
//! Keys hash to a fixed set of partitions; each partition is one task, the
//! only writer of its keys (the seeds' "hashing resources to queues keeps
//! per-item serialization"). A write is a message to that task, which reads
//! the current version, checks the preconditions, applies the operation
//! ([`crate::ops`]), puts the new version in the backlog, the hot tier and
//! the log, and answers. Because nothing else writes those keys, `If-Match`
//! loops, merge patches, appends and increments never lose an update, and
//! versions increase strictly.
//!
//! Each worker also keeps the directory of the keys it owns (key → version).
//! It is what makes the hot tier deterministic: after the warm load the
//! directory knows every key, so a key missing from the cache and from the
//! directory does not exist and nobody asks the store. Only an evicted key
//! is loaded, and it is loaded once: the worker starts the load in the
//! background, parks every later request for that key until it finishes,
//! and keeps serving its other keys meanwhile.
//!
//! Reads do not go through the worker when the cache has the key, which is
//! the steady state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use prefold_core::envelope::object_path;
use prefold_core::{Key, Preconditions};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::dirty::Dirty;
use crate::error::{EngineError, StoreError};
use crate::hot::{HotTier, Slot};
use crate::object::Object;
use crate::ops::{Op, OpError, Outcome};
use crate::publication::Changes;
use crate::wal::{Durable, Wal};

/// Requests waiting for one partition before senders wait.
const QUEUE: usize = 1024;

/// What must hold before a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// In memory (and queued for the log and the store): the seeds' design.
    Memory,
    /// In the local write-ahead log, fsynced: survives a killed process.
    Log,
    /// In the object store.
    Store,
    /// Derived objects: in memory and the write-behind, never in the log,
    /// because the view engine rebuilds them from the (logged) entities at
    /// start. Not a client's choice.
    #[value(skip)]
    Derived,
}

impl Durability {
    /// The name used in headers and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Memory => "memory",
            Durability::Log => "log",
            Durability::Store => "store",
            Durability::Derived => "derived",
        }
    }

    /// Parses a header value.
    pub fn parse(s: &str) -> Option<Durability> {
        match s.trim() {
            "memory" => Some(Durability::Memory),
            "log" => Some(Durability::Log),
            "store" => Some(Durability::Store),
            _ => None,
        }
    }
}

/// Where a key's version stands in its partition's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The current version (of the object or its tombstone).
    pub version: u64,
    /// Whether the current version is a deletion.
    pub tombstone: bool,
}

/// One partition's directory.
pub type Directory = foldhash::HashMap<Key, Entry>;

/// A write, as the API hands it to the engine.
#[derive(Debug)]
pub struct Write {
    /// Which object.
    pub key: Key,
    /// What to do.
    pub op: Op,
    /// What must hold first.
    pub preconditions: Preconditions,
    /// What must hold before the answer.
    pub durability: Durability,
}

/// A write that was applied.
#[derive(Debug)]
pub struct Applied {
    /// The new version (a tombstone for a delete).
    pub object: Arc<Object>,
    /// Whether there was no live object before.
    pub created: bool,
    /// The operation's result (the new number, the new length).
    pub result: Option<Value>,
}

enum Command {
    Write(
        Write,
        oneshot::Sender<Result<(Applied, Option<Durable>), EngineError>>,
    ),
    Load(Key, oneshot::Sender<Result<Slot, EngineError>>),
    /// Every key of the partition's directory (deleted ones too).
    Keys(oneshot::Sender<Vec<(Key, Entry)>>),
    /// Derived objects to replace (or delete, with `None`) unless equal.
    Publish(Vec<(Key, Option<Bytes>)>, oneshot::Sender<Vec<Published>>),
}

/// The outcomes of an [`Engine::publish`], once its partitions answer.
#[derive(Debug, Default)]
pub struct PublishReplies {
    waits: Vec<(Vec<Key>, oneshot::Receiver<Vec<Published>>)>,
    done: Vec<Published>,
}

impl PublishReplies {
    /// Waits for every partition's answer.
    pub async fn wait(self) -> Vec<Published> {
        let mut out = self.done;
        for (keys, rx) in self.waits {
            match rx.await {
                Ok(done) => out.extend(done),
                Err(_) => out.extend(
                    keys.into_iter()
                        .map(|k| Published::Failed(k, EngineError::Stopped)),
                ),
            }
        }
        out
    }
}

/// What [`Engine::publish`] did with one derived object.
#[derive(Debug)]
pub enum Published {
    /// Already what is there.
    Unchanged(Key),
    /// Written (or deleted).
    Written(Key),
    /// Refused or failed.
    Failed(Key, EngineError),
    /// Evicted from the hot tier: write it with [`Engine::write`], which
    /// loads it first.
    NeedsLoad(Key, Option<Bytes>),
}

/// A check of every new version of an object before it is applied (the
/// model's entity types): `Err` refuses the write with its reason.
pub type Check = Arc<dyn Fn(&Key, &[u8]) -> Result<(), String> + Send + Sync>;

impl Command {
    fn key(&self) -> Option<&Key> {
        match self {
            Command::Write(w, _) => Some(&w.key),
            Command::Load(k, _) => Some(k),
            Command::Keys(_) | Command::Publish(..) => None,
        }
    }

    fn fail(self, e: impl Fn() -> EngineError) {
        match self {
            Command::Write(_, reply) => {
                let _ = reply.send(Err(e()));
            }
            Command::Load(_, reply) => {
                let _ = reply.send(Err(e()));
            }
            Command::Keys(_) | Command::Publish(..) => {}
        }
    }
}

/// What every partition worker shares.
struct Shared {
    hot: Arc<HotTier>,
    dirty: Arc<Dirty>,
    wal: Option<Wal>,
    store: Arc<dyn ObjectStore>,
    /// Longest wait for one store request (a load, a `store` confirmation,
    /// a log fsync).
    load_timeout: Duration,
    /// Largest object a write may produce.
    max_body_bytes: u32,
    check: Option<Check>,
    derived_flush_delay: Duration,
    changes: Option<Arc<Changes>>,
    loads: AtomicU64,
}

/// How the engine treats writes and loads.
#[derive(Clone)]
pub struct Options {
    /// Longest wait for one store request (a load, a `store` confirmation,
    /// a log fsync).
    pub load_timeout: Duration,
    /// Largest object a write may produce.
    pub max_body_bytes: u32,
    /// Checks every new version before it is applied.
    pub check: Option<Check>,
    /// How long a derived object waits in the backlog before its first PUT.
    pub derived_flush_delay: Duration,
    /// Where every applied version is recorded for publication.
    pub changes: Option<Arc<Changes>>,
}

/// The partitioned storage engine.
pub struct Engine {
    parts: Box<[mpsc::Sender<Command>]>,
    shared: Arc<Shared>,
}

/// The partition of a key among `n`.
pub fn partition_of(key: &Key, n: usize) -> usize {
    // `n` fits in u64, and the remainder is below `n`.
    (xxhash_rust::xxh3::xxh3_64(key.as_str().as_bytes()) % n as u64) as usize
}

impl Engine {
    /// Starts one worker per directory (the warm load fills them, one per
    /// partition, split by [`partition_of`]).
    pub fn start(
        directories: Vec<Directory>,
        hot: Arc<HotTier>,
        dirty: Arc<Dirty>,
        wal: Option<Wal>,
        store: Arc<dyn ObjectStore>,
        options: Options,
    ) -> Engine {
        let shared = Arc::new(Shared {
            hot,
            dirty,
            wal,
            store,
            load_timeout: options.load_timeout,
            max_body_bytes: options.max_body_bytes,
            check: options.check,
            derived_flush_delay: options.derived_flush_delay,
            changes: options.changes,
            loads: AtomicU64::new(0),
        });
        let parts = directories
            .into_iter()
            .map(|directory| {
                let (tx, rx) = mpsc::channel(QUEUE);
                let (loaded_tx, loaded_rx) = mpsc::unbounded_channel();
                let worker = Worker {
                    shared: shared.clone(),
                    directory,
                    loading: HashMap::new(),
                    loaded_tx,
                };
                tokio::spawn(worker.run(rx, loaded_rx));
                tx
            })
            .collect();
        Engine { parts, shared }
    }

    /// Misses that went to the store (after an eviction).
    pub fn store_loads(&self) -> u64 {
        self.shared.loads.load(Ordering::Relaxed)
    }

    fn part(&self, key: &Key) -> &mpsc::Sender<Command> {
        &self.parts[partition_of(key, self.parts.len())]
    }

    /// The live object under a key (`None` if absent or deleted).
    pub async fn read(&self, key: &Key) -> Result<Option<Arc<Object>>, EngineError> {
        Ok(self.read_slot(key).await?.filter(|o| !o.tombstone))
    }

    /// The current version under a key, deleted or not (`None` if never
    /// written).
    pub async fn read_slot(&self, key: &Key) -> Result<Slot, EngineError> {
        let slot = match self.shared.hot.get(key).await {
            Some(slot) => slot,
            None => {
                let (tx, rx) = oneshot::channel();
                self.part(key)
                    .send(Command::Load(key.clone(), tx))
                    .await
                    .map_err(|_| EngineError::Stopped)?;
                rx.await.map_err(|_| EngineError::Stopped)??
            }
        };
        Ok(slot)
    }

    /// Publishes derived objects in one message per partition: each is
    /// replaced by its new body (deleted for `None`) unless it already is
    /// that, with [`Durability::Derived`] and no preconditions. A fan-out to
    /// many thousands of objects thus costs one message per partition
    /// instead of one per object. Returns once the messages are queued (so
    /// a later publication of the same key is applied after this one); the
    /// outcomes come from [`PublishReplies::wait`].
    pub async fn publish(&self, items: Vec<(Key, Option<Bytes>)>) -> PublishReplies {
        let mut per_part: Vec<Vec<(Key, Option<Bytes>)>> = vec![Vec::new(); self.parts.len()];
        for (k, b) in items {
            per_part[partition_of(&k, self.parts.len())].push((k, b));
        }
        let mut replies = PublishReplies::default();
        for (part, items) in self.parts.iter().zip(per_part) {
            if items.is_empty() {
                continue;
            }
            let keys: Vec<Key> = items.iter().map(|(k, _)| k.clone()).collect();
            let (tx, rx) = oneshot::channel();
            if part.send(Command::Publish(items, tx)).await.is_err() {
                replies.done.extend(
                    keys.into_iter()
                        .map(|k| Published::Failed(k, EngineError::Stopped)),
                );
                continue;
            }
            replies.waits.push((keys, rx));
        }
        replies
    }

    /// Every key the engine knows, with its version (deleted keys too).
    pub async fn keys(&self) -> Result<Vec<(Key, Entry)>, EngineError> {
        let mut out = Vec::new();
        for part in self.parts.iter() {
            let (tx, rx) = oneshot::channel();
            part.send(Command::Keys(tx))
                .await
                .map_err(|_| EngineError::Stopped)?;
            out.extend(rx.await.map_err(|_| EngineError::Stopped)?);
        }
        Ok(out)
    }

    /// Applies a write and waits for the durability it asks for.
    pub async fn write(&self, write: Write) -> Result<Applied, EngineError> {
        let durability = write.durability;
        let key = write.key.clone();
        let (tx, rx) = oneshot::channel();
        self.part(&key)
            .send(Command::Write(write, tx))
            .await
            .map_err(|_| EngineError::Stopped)?;
        let (applied, durable) = rx.await.map_err(|_| EngineError::Stopped)??;
        match durability {
            Durability::Memory | Durability::Derived => {}
            Durability::Log => {
                let ok = match durable {
                    Some(d) => tokio::time::timeout(self.shared.load_timeout, d.wait())
                        .await
                        .unwrap_or(false),
                    None => false,
                };
                if !ok {
                    return Err(EngineError::LogFailed);
                }
            }
            Durability::Store => {
                // Bounded, so that a dead store cannot hold a request (and
                // with it a graceful shutdown) forever. The write stays
                // applied and will be stored; only its confirmation failed.
                let stored = self.shared.dirty.wait_stored(&key, applied.object.version);
                if tokio::time::timeout(self.shared.load_timeout, stored)
                    .await
                    .is_err()
                {
                    return Err(EngineError::Unconfirmed(applied.object.version));
                }
            }
        }
        Ok(applied)
    }
}

struct Worker {
    shared: Arc<Shared>,
    directory: Directory,
    /// Keys being loaded, with the requests parked behind each load.
    loading: HashMap<Key, Vec<Command>>,
    loaded_tx: mpsc::UnboundedSender<(Key, Result<Slot, StoreError>)>,
}

impl Worker {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut loaded_rx: mpsc::UnboundedReceiver<(Key, Result<Slot, StoreError>)>,
    ) {
        loop {
            tokio::select! {
                // Finished loads first: they unblock parked requests.
                biased;
                Some((key, result)) = loaded_rx.recv() => self.loaded(key, result).await,
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => break,
                },
            }
        }
        // Every sender is gone: answer whatever is still parked.
        for (_, parked) in self.loading.drain() {
            for cmd in parked {
                cmd.fail(|| EngineError::Stopped);
            }
        }
    }

    async fn handle(&mut self, cmd: Command) {
        let Some(key) = cmd.key().cloned() else {
            if let Command::Publish(items, reply) = cmd {
                let mut done = Vec::with_capacity(items.len());
                for (key, body) in items {
                    done.push(self.publish(key, body).await);
                }
                let _ = reply.send(done);
                return;
            }
            if let Command::Keys(reply) = cmd {
                let _ = reply.send(
                    self.directory
                        .iter()
                        .map(|(k, e)| (k.clone(), *e))
                        .collect(),
                );
            }
            return;
        };
        if let Some(parked) = self.loading.get_mut(&key) {
            parked.push(cmd);
            return;
        }
        let current = match self.shared.hot.get(&key).await {
            Some(slot) => slot,
            None => match self.directory.get(&key) {
                // Not in the directory: the key does not exist. Absence is
                // not cached: the directory already answers it, and caching
                // it would let reads of random keys evict real objects.
                None => None,
                Some(_) => match self.shared.dirty.get(&key) {
                    Some(pending) => {
                        self.shared.hot.insert(key, Some(pending.clone())).await;
                        Some(pending)
                    }
                    None => {
                        self.start_load(key, cmd);
                        return;
                    }
                },
            },
        };
        self.run_command(cmd, current).await;
    }

    fn start_load(&mut self, key: Key, cmd: Command) {
        self.loading.insert(key.clone(), vec![cmd]);
        let shared = self.shared.clone();
        let done = self.loaded_tx.clone();
        tokio::spawn(async move {
            let timeout = shared.load_timeout;
            let load_key = key.clone();
            // Its own task, so that even a panic in the load reports back
            // and the requests parked behind it are answered.
            let task = tokio::spawn(async move {
                match tokio::time::timeout(timeout, load(&shared, &load_key)).await {
                    Ok(r) => r,
                    Err(_) => Err(StoreError::Timeout(timeout)),
                }
            });
            let result = task
                .await
                .unwrap_or_else(|e| Err(StoreError::Open(format!("the load failed: {e}"))));
            let _ = done.send((key, result));
        });
    }

    async fn loaded(&mut self, key: Key, result: Result<Slot, StoreError>) {
        let parked = self.loading.remove(&key).unwrap_or_default();
        match result {
            Ok(slot) => {
                if slot.is_some() {
                    self.shared.hot.insert(key, slot.clone()).await;
                }
                let mut current = slot;
                for cmd in parked {
                    current = self.run_command(cmd, current).await;
                }
            }
            Err(e) => {
                tracing::error!(%key, error = %e, "loading from the store failed");
                let msg = e.to_string();
                for cmd in parked {
                    cmd.fail(|| EngineError::Store(StoreError::Open(msg.clone())));
                }
            }
        }
    }

    /// Runs one command against the key's current slot; returns the slot
    /// after it.
    async fn run_command(&mut self, cmd: Command, current: Slot) -> Slot {
        match cmd {
            Command::Load(_, reply) => {
                let _ = reply.send(Ok(current.clone()));
                current
            }
            // Answered by `handle` before any key is looked up.
            Command::Keys(_) | Command::Publish(..) => current,
            Command::Write(write, reply) => match self.apply(write, &current).await {
                Ok((applied, durable)) => {
                    let next = Some(applied.object.clone());
                    let _ = reply.send(Ok((applied, durable)));
                    next
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                    current
                }
            },
        }
    }

    async fn publish(&mut self, key: Key, body: Option<Bytes>) -> Published {
        if self.loading.contains_key(&key) {
            return Published::NeedsLoad(key, body);
        }
        let current = match self.shared.hot.get(&key).await {
            Some(slot) => slot,
            None if !self.directory.contains_key(&key) => None,
            None => match self.shared.dirty.get(&key) {
                Some(pending) => Some(pending),
                None => return Published::NeedsLoad(key, body),
            },
        };
        let live = current.as_deref().and_then(Object::live);
        let Some(write) = derived_write(&key, body, live) else {
            return Published::Unchanged(key);
        };
        match self.apply(write, &current).await {
            Ok(_) => Published::Written(key),
            Err(e) => Published::Failed(key, e),
        }
    }

    async fn apply(
        &mut self,
        write: Write,
        current: &Slot,
    ) -> Result<(Applied, Option<Durable>), EngineError> {
        let live = current.as_deref().and_then(Object::live);
        let current_etag = live.map(Object::etag);
        if !write.preconditions.allow(current_etag.as_deref()) {
            return Err(EngineError::PreconditionFailed);
        }
        let outcome = write.op.apply(live).map_err(|e| match e {
            OpError::NotFound => EngineError::NotFound,
            OpError::Conflict(d) => EngineError::Conflict(d),
        })?;
        let previous = current
            .as_ref()
            .map(|o| o.version)
            .or_else(|| self.directory.get(&write.key).map(|e| e.version));
        let version = next_version(previous);
        let (object, result) = match outcome {
            Outcome::Live {
                content_type,
                body,
                result,
            } => {
                let limit = self.shared.max_body_bytes;
                if body.len() > usize::try_from(limit).unwrap_or(usize::MAX) {
                    return Err(EngineError::ResultTooLarge {
                        size: body.len(),
                        limit,
                    });
                }
                if let Some(check) = &self.shared.check {
                    check(&write.key, &body).map_err(EngineError::Invalid)?;
                }
                (Object::new(version, &content_type, body), result)
            }
            Outcome::Deleted => (Object::tombstone(version), None),
        };
        let object = Arc::new(object);
        let key = write.key;
        let segment = self.shared.wal.as_ref().map_or(0, Wal::current_segment);
        // The flusher owns the write from here on; eviction cannot lose it.
        // Past the backlog's bounds nothing is changed and the client is
        // told to come back.
        if write.durability == Durability::Derived {
            self.shared.dirty.insert_derived(
                key.clone(),
                object.clone(),
                segment,
                self.shared.derived_flush_delay,
            );
        } else if !self
            .shared
            .dirty
            .try_insert(key.clone(), object.clone(), segment)
        {
            return Err(EngineError::Overloaded);
        }
        self.shared
            .hot
            .insert(key.clone(), Some(object.clone()))
            .await;
        self.directory.insert(
            key.clone(),
            Entry {
                version,
                tombstone: object.tombstone,
            },
        );
        if let Some(changes) = &self.shared.changes {
            changes.record(&key, previous, version);
        }
        let durable = match &self.shared.wal {
            Some(_) if write.durability == Durability::Derived => None,
            Some(wal) => {
                let wait = write.durability == Durability::Log;
                match wal.append(&key, &object, wait).await {
                    Some(d) => d,
                    None if wait => return Err(EngineError::LogFailed),
                    None => None,
                }
            }
            None => None,
        };
        Ok((
            Applied {
                object,
                created: live.is_none(),
                result,
            },
            durable,
        ))
    }
}

/// The write that makes a derived object's current live version
/// (`live`) into `body` (`None`: deleted), or `None` when it already is.
pub fn derived_write(key: &Key, body: Option<Bytes>, live: Option<&Object>) -> Option<Write> {
    let op = match (body, live) {
        (Some(b), Some(cur)) if cur.body == b => return None,
        (Some(body), _) => Op::Put {
            content_type: "application/json".into(),
            body,
        },
        (None, Some(_)) => Op::Delete,
        (None, None) => return None,
    };
    Some(Write {
        key: key.clone(),
        op,
        preconditions: Preconditions::default(),
        durability: Durability::Derived,
    })
}

/// A new version: the clock in microseconds, or one more than the previous
/// version if the clock is behind it. Versions thus stay unique across
/// restarts even if the last writes before a crash never reached the store.
fn next_version(previous: Option<u64>) -> u64 {
    let now = clock_micros();
    previous.map_or(now, |p| now.max(p.saturating_add(1)))
}

/// The clock versions come from: microseconds since the Unix epoch (the
/// change feed's horizon is measured on it too).
pub fn clock_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Reads a key past the cache: the backlog's pending version wins over the
/// store's, which may be older.
async fn load(shared: &Shared, key: &Key) -> Result<Slot, StoreError> {
    if let Some(pending) = shared.dirty.get(key) {
        return Ok(Some(pending));
    }
    shared.loads.fetch_add(1, Ordering::Relaxed);
    stored(shared.store.as_ref(), key).await
}

/// The version of a key the store holds, tombstone or not (`None` if it
/// holds none).
pub async fn stored(store: &dyn ObjectStore, key: &Key) -> Result<Slot, StoreError> {
    let path = Path::from(object_path(key));
    match store.get(&path).await {
        Ok(result) => {
            let record: Bytes = result.bytes().await?;
            Ok(Some(Arc::new(Object::decode(key, record)?)))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::dirty::Limits;
    use object_store::memory::InMemory;
    use object_store::PutPayload;
    use serde_json::json;

    struct Rig {
        engine: Arc<Engine>,
        hot: Arc<HotTier>,
        dirty: Arc<Dirty>,
        store: Arc<InMemory>,
    }

    fn rig(directories: Vec<Directory>, max_keys: usize) -> Rig {
        let hot = Arc::new(HotTier::new(1 << 24));
        let dirty = Arc::new(Dirty::new(Limits {
            max_keys,
            max_bytes: 1 << 24,
        }));
        let store = Arc::new(InMemory::new());
        let engine = Arc::new(Engine::start(
            directories,
            hot.clone(),
            dirty.clone(),
            None,
            store.clone(),
            Options {
                load_timeout: Duration::from_secs(5),
                max_body_bytes: 1 << 20,
                check: None,
                derived_flush_delay: Duration::ZERO,
                changes: None,
            },
        ));
        Rig {
            engine,
            hot,
            dirty,
            store,
        }
    }

    fn put(key: &Key, body: &str) -> Write {
        write(
            key,
            Op::Put {
                content_type: "application/json".into(),
                body: Bytes::from(body.to_owned()),
            },
        )
    }

    fn write(key: &Key, op: Op) -> Write {
        Write {
            key: key.clone(),
            op,
            preconditions: Preconditions::default(),
            durability: Durability::Memory,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_increments_lose_nothing() {
        let r = rig(vec![Directory::default(); 4], 100);
        let key = Key::parse("n/1").unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let (engine, key) = (r.engine.clone(), key.clone());
                tokio::spawn(async move {
                    engine
                        .write(write(
                            &key,
                            Op::Increment {
                                pointer: "/n".into(),
                                delta: 1.into(),
                            },
                        ))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut versions = Vec::new();
        for t in tasks {
            versions.push(t.await.unwrap().object.version);
        }
        versions.sort_unstable();
        versions.dedup();
        assert_eq!(versions.len(), 200, "every write has its own version");
        let o = r.engine.read(&key).await.unwrap().unwrap();
        let v: Value = serde_json::from_slice(&o.body).unwrap();
        assert_eq!(v, json!({"n": 200}));
    }

    #[tokio::test]
    async fn preconditions_and_tombstones() {
        let r = rig(vec![Directory::default(); 2], 100);
        let key = Key::parse("p/1").unwrap();
        let mut create = put(&key, "1");
        create.preconditions = Preconditions::parse(None, Some("*")).unwrap();
        let first = r.engine.write(create).await.unwrap();
        assert!(first.created);
        let mut again = put(&key, "2");
        again.preconditions = Preconditions::parse(None, Some("*")).unwrap();
        assert!(matches!(
            r.engine.write(again).await,
            Err(EngineError::PreconditionFailed)
        ));
        let mut stale = put(&key, "3");
        stale.preconditions = Preconditions::parse(Some("\"1\""), None).unwrap();
        assert!(matches!(
            r.engine.write(stale).await,
            Err(EngineError::PreconditionFailed)
        ));
        let deleted = r.engine.write(write(&key, Op::Delete)).await.unwrap();
        assert!(deleted.object.tombstone);
        assert!(deleted.object.version > first.object.version);
        assert!(r.engine.read(&key).await.unwrap().is_none());
        assert!(matches!(
            r.engine.write(write(&key, Op::Delete)).await,
            Err(EngineError::NotFound)
        ));
        // The tombstone is what the flusher will store.
        assert!(r.dirty.get(&key).unwrap().tombstone);
        let back = r.engine.write(put(&key, "4")).await.unwrap();
        assert!(back.created && back.object.version > deleted.object.version);
    }

    #[tokio::test]
    async fn the_backlog_bound_refuses_new_keys_and_changes_nothing() {
        let r = rig(vec![Directory::default()], 2);
        let (a, b, c) = (
            Key::parse("o/a").unwrap(),
            Key::parse("o/b").unwrap(),
            Key::parse("o/c").unwrap(),
        );
        r.engine.write(put(&a, "1")).await.unwrap();
        r.engine.write(put(&b, "1")).await.unwrap();
        assert!(matches!(
            r.engine.write(put(&c, "1")).await,
            Err(EngineError::Overloaded)
        ));
        assert!(r.engine.read(&c).await.unwrap().is_none());
        r.engine.write(put(&a, "2")).await.unwrap();
    }

    #[tokio::test]
    async fn an_evicted_key_is_loaded_once_and_unknown_keys_never_are() {
        let key = Key::parse("e/1").unwrap();
        let mut dir = Directory::default();
        dir.insert(
            key.clone(),
            Entry {
                version: 7,
                tombstone: false,
            },
        );
        let r = rig(vec![dir], 100);
        let o = Object::new(7, "application/json", Bytes::from_static(b"[7]"));
        r.store
            .put(
                &Path::from(object_path(&key)),
                PutPayload::from(o.encode().unwrap()),
            )
            .await
            .unwrap();
        let reads: Vec<_> = (0..50)
            .map(|_| {
                let (engine, key) = (r.engine.clone(), key.clone());
                tokio::spawn(async move { engine.read(&key).await.unwrap().unwrap().version })
            })
            .collect();
        for t in reads {
            assert_eq!(t.await.unwrap(), 7);
        }
        assert_eq!(
            r.engine.store_loads(),
            1,
            "one load for 50 concurrent misses"
        );
        // A key the directory does not know is absent without a store read,
        // even though the store has a (foreign) object under it.
        let foreign = Key::parse("e/2").unwrap();
        r.store
            .put(
                &Path::from(object_path(&foreign)),
                PutPayload::from(o.encode().unwrap()),
            )
            .await
            .unwrap();
        assert!(r.engine.read(&foreign).await.unwrap().is_none());
        assert_eq!(r.engine.store_loads(), 1);
        r.hot.clear();
        // After eviction, a write needs the current version: loaded, then bumped.
        let w = r.engine.write(put(&key, "8")).await.unwrap();
        assert!(w.object.version > 7 && !w.created);
    }
}
