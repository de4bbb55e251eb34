//! One partition worker: the only writer of its keys.
//!
//! It takes [`Command`]s in order, so every write of a key sees the one
//! before it. An evicted key is loaded beside the loop (one load for every
//! request that waits for it), and the requests for that key are parked
//! until the load is back; the worker's other keys are served meanwhile.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use prefold_core::Key;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::{
    derived_write, Applied, Context, DerivedOutcome, Directory, EngineError, Stamp, Write,
    WriteReply,
};
use crate::base::ops::{OpError, Outcome};
use crate::base::{Durability, Object, Shutdown, Slot, Worker};
use crate::storage::read::read_object;
use crate::storage::{within, StoreError, Wal};

/// A message to a partition worker.
pub(super) enum Command {
    Write(Write, oneshot::Sender<WriteReply>),
    Load(Key, oneshot::Sender<Result<Slot, EngineError>>),
    /// Every key of the partition's directory (deleted ones too).
    Keys(oneshot::Sender<Vec<(Key, Stamp)>>),
    /// Derived objects to replace (or delete, with `None`) unless equal.
    Derived(
        Vec<(Key, Option<Bytes>)>,
        oneshot::Sender<Vec<DerivedOutcome>>,
    ),
}

impl Command {
    fn key(&self) -> Option<&Key> {
        match self {
            Command::Write(w, _) => Some(&w.key),
            Command::Load(k, _) => Some(k),
            Command::Keys(_) | Command::Derived(..) => None,
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
            Command::Keys(_) | Command::Derived(..) => {}
        }
    }
}

/// A load from the store, finished (or failed).
type LoadDone = (Key, Result<Slot, Arc<StoreError>>);

/// One partition's worker.
pub(super) struct Partition {
    context: Arc<Context>,
    directory: Directory,
    rx: mpsc::Receiver<Command>,
    /// Keys being loaded, with the requests parked behind each load.
    loading: HashMap<Key, Vec<Command>>,
    /// The loads themselves: owned here, so none outlives the worker.
    loads: JoinSet<LoadDone>,
}

impl Worker for Partition {
    fn name(&self) -> &'static str {
        "partition"
    }

    async fn run(mut self, shutdown: Shutdown) {
        loop {
            tokio::select! {
                // Finished loads first: they unblock parked requests.
                biased;
                Some(joined) = self.loads.join_next(), if !self.loads.is_empty() => {
                    // A load never panics out (it is caught below); only an
                    // abort, at drop, fails the join.
                    if let Ok((key, result)) = joined {
                        self.loaded(key, result).await;
                    }
                }
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => break,
                },
                () = shutdown.fired() => break,
            }
        }
        // Stopping: answer whatever is still parked.
        for (_, parked) in self.loading.drain() {
            for cmd in parked {
                cmd.fail(|| EngineError::Stopped);
            }
        }
    }
}

impl Partition {
    pub(super) fn new(
        context: Arc<Context>,
        directory: Directory,
        rx: mpsc::Receiver<Command>,
    ) -> Partition {
        Partition {
            context,
            directory,
            rx,
            loading: HashMap::new(),
            loads: JoinSet::new(),
        }
    }

    async fn handle(&mut self, cmd: Command) {
        let Some(key) = cmd.key().cloned() else {
            if let Command::Derived(items, reply) = cmd {
                let mut done = Vec::with_capacity(items.len());
                for (key, body) in items {
                    done.push(self.write_derived(key, body).await);
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
        let current = match self.context.hot.get(&key).await {
            Some(slot) => slot,
            None => match self.directory.get(&key) {
                // Not in the directory: the key does not exist. Absence is
                // not cached: the directory already answers it, and caching
                // it would let reads of random keys evict real objects.
                None => None,
                Some(_) => match self.context.backlog.get(&key) {
                    Some(pending) => {
                        self.context.hot.insert(key, Some(pending.clone())).await;
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
        let context = self.context.clone();
        self.loads.spawn(async move {
            let timeout = context.settings.load_timeout;
            // A panic in the load is caught, so that the requests parked
            // behind it are still answered.
            let load = within(timeout, load(&context, &key));
            let result = AssertUnwindSafe(load)
                .catch_unwind()
                .await
                .unwrap_or(Err(StoreError::LoadPanicked));
            (key, result.map_err(Arc::new))
        });
    }

    async fn loaded(&mut self, key: Key, result: Result<Slot, Arc<StoreError>>) {
        let parked = self.loading.remove(&key).unwrap_or_default();
        match result {
            Ok(slot) => {
                if slot.is_some() {
                    self.context.hot.insert(key, slot.clone()).await;
                }
                let mut current = slot;
                for cmd in parked {
                    current = self.run_command(cmd, current).await;
                }
            }
            Err(e) => {
                tracing::error!(%key, error = %e, "loading from the store failed");
                for cmd in parked {
                    cmd.fail(|| EngineError::Store(e.clone()));
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
            Command::Keys(_) | Command::Derived(..) => current,
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

    async fn write_derived(&mut self, key: Key, body: Option<Bytes>) -> DerivedOutcome {
        if self.loading.contains_key(&key) {
            return DerivedOutcome::NeedsLoad(key, body);
        }
        let current = match self.context.hot.get(&key).await {
            Some(slot) => slot,
            None if !self.directory.contains_key(&key) => None,
            None => match self.context.backlog.get(&key) {
                Some(pending) => Some(pending),
                None => return DerivedOutcome::NeedsLoad(key, body),
            },
        };
        let live = current.as_deref().and_then(Object::live);
        let Some(write) = derived_write(&key, body, live) else {
            return DerivedOutcome::Unchanged(key);
        };
        match self.apply(write, &current).await {
            Ok(_) => DerivedOutcome::Written(key),
            Err(e) => DerivedOutcome::Failed(key, e),
        }
    }

    async fn apply(&mut self, write: Write, current: &Slot) -> WriteReply {
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
        let version = self.next_version(previous);
        let (object, result) = match outcome {
            Outcome::Live {
                content_type,
                body,
                result,
            } => {
                let limit = self.context.settings.max_body_bytes;
                if body.len() > usize::try_from(limit).unwrap_or(usize::MAX) {
                    return Err(EngineError::ResultTooLarge {
                        size: body.len(),
                        limit,
                    });
                }
                if let Some(check) = &self.context.settings.check {
                    check(&write.key, &body).map_err(EngineError::Invalid)?;
                }
                (Object::new(version, &content_type, body), result)
            }
            Outcome::Deleted => (Object::tombstone(version), None),
        };
        let object = Arc::new(object);
        let key = write.key;
        let segment = self.context.wal.as_ref().map_or(0, Wal::current_segment);
        // The flusher owns the write from here on; eviction cannot lose it.
        // Past the backlog's bounds nothing is changed and the client is
        // told to come back.
        if write.durability == Durability::Derived {
            self.context.backlog.insert_derived(
                key.clone(),
                object.clone(),
                segment,
                self.context.settings.derived_flush_delay,
            );
        } else if !self
            .context
            .backlog
            .try_insert(key.clone(), object.clone(), segment)
        {
            return Err(EngineError::Overloaded);
        }
        self.context
            .hot
            .insert(key.clone(), Some(object.clone()))
            .await;
        self.directory.insert(
            key.clone(),
            Stamp {
                version,
                tombstone: object.tombstone,
            },
        );
        if let Some(observer) = &self.context.settings.observer {
            observer.applied(&key, previous, version);
        }
        let durable = match &self.context.wal {
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

    /// A new version: the clock in microseconds, or one more than the
    /// previous version if the clock is behind it. Versions thus stay
    /// unique across restarts even if the last writes before a crash never
    /// reached the store.
    fn next_version(&self, previous: Option<u64>) -> u64 {
        let now = self.context.settings.clock.now_micros();
        previous.map_or(now, |p| now.max(p.saturating_add(1)))
    }
}

/// Reads a key past the cache: the backlog's pending version wins over the
/// store's, which may be older.
async fn load(context: &Context, key: &Key) -> Result<Slot, StoreError> {
    if let Some(pending) = context.backlog.get(key) {
        return Ok(Some(pending));
    }
    context.loads.fetch_add(1, Ordering::Relaxed);
    read_object(context.store.as_ref(), key).await
}
