//! The engine: per-key serialized writes through partition workers, over
//! the hot tier, warmed before it serves.
//!
//! Keys hash to a fixed set of partitions; each partition is one worker
//! ([`partition`]), the only writer of its keys (hashing keys to queues keeps
//! each key's writes in order). A write is a message
//! to that worker, which reads the current version, checks the
//! preconditions, applies the operation ([`crate::base::ops`]), puts the new
//! version in the backlog, the hot tier ([`hot`]) and the log, and answers.
//! Because nothing else writes those keys, `If-Match` loops, merge patches,
//! appends and increments never lose an update, and versions increase
//! strictly.
//!
//! Each worker also keeps the directory of the keys it owns (key →
//! [`Stamp`]). It is what makes the hot tier deterministic: after the warm
//! load ([`warm`]) the directory knows every key, so a key missing from the
//! cache and from the directory does not exist and nobody asks the store.
//! Only an evicted key is loaded, and it is loaded once: the worker starts
//! the load beside its loop, parks every later request for that key until
//! it finishes, and keeps serving its other keys meanwhile.
//!
//! Reads do not go through the worker when the cache has the key, which is
//! the steady state. Every applied version is reported to an [`Observer`]
//! (publication implements it), so the engine knows nothing above it.

mod error;
pub(crate) mod hot;
mod partition;
pub(crate) mod warm;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::ObjectStore;
use prefold_core::{Key, Preconditions};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

pub(crate) use error::EngineError;
pub(crate) use hot::HotTier;
use partition::{Command, Partition};

use crate::base::metrics::Scrape;
use crate::base::{Clock, Durability, Object, Op, Slot, Tasks};
use crate::storage::{Backlog, Durable, Wal};

/// Requests waiting for one partition before senders wait.
const QUEUE: usize = 1024;

/// Where a key's version stands in its partition's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// The current version (of the object or its tombstone).
    pub(crate) version: u64,
    /// Whether the current version is a deletion.
    pub(crate) tombstone: bool,
}

/// One partition's directory.
pub(crate) type Directory = foldhash::HashMap<Key, Stamp>;

/// A write, as the HTTP layer hands it to the engine.
#[derive(Debug)]
pub(crate) struct Write {
    /// Which object.
    pub(crate) key: Key,
    /// What to do.
    pub(crate) op: Op,
    /// What must hold first.
    pub(crate) preconditions: Preconditions,
    /// What must hold before the answer.
    pub(crate) durability: Durability,
}

/// A write that was applied.
#[derive(Debug)]
pub(crate) struct Applied {
    /// The new version (a tombstone for a delete).
    pub(crate) object: Arc<Object>,
    /// Whether there was no live object before.
    pub(crate) created: bool,
    /// The operation's result (the new number, the new length).
    pub(crate) result: Option<Value>,
}

/// What [`Engine::write_derived`] did with one derived object.
#[derive(Debug)]
pub(crate) enum DerivedOutcome {
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

/// The outcomes of an [`Engine::write_derived`], once its partitions answer.
#[derive(Debug, Default)]
pub(crate) struct DerivedReplies {
    waits: Vec<(Vec<Key>, oneshot::Receiver<Vec<DerivedOutcome>>)>,
    done: Vec<DerivedOutcome>,
}

impl DerivedReplies {
    /// Waits for every partition's answer.
    pub(crate) async fn wait(self) -> Vec<DerivedOutcome> {
        let mut out = self.done;
        for (keys, rx) in self.waits {
            match rx.await {
                Ok(done) => out.extend(done),
                Err(_) => out.extend(stopped(keys)),
            }
        }
        out
    }
}

fn stopped(keys: Vec<Key>) -> impl Iterator<Item = DerivedOutcome> {
    keys.into_iter()
        .map(|k| DerivedOutcome::Failed(k, EngineError::Stopped))
}

/// A check of every new version of an object before it is applied (the
/// model's entity types): `Err` refuses the write with its reason.
pub(crate) type Check = Arc<dyn Fn(&Key, &[u8]) -> Result<(), String> + Send + Sync>;

/// Hears of every version the engine applies, from the key's partition
/// worker (the only writer of the key), in order per key.
pub(crate) trait Observer: Send + Sync {
    /// `key` is now at `version`, replacing `previous` (`None`: the key was
    /// not known).
    fn applied(&self, key: &Key, previous: Option<u64>, version: u64);
}

/// How the engine treats writes and loads.
#[derive(Clone)]
pub(crate) struct EngineSettings {
    /// Longest wait for one store request (a load, a `store` confirmation,
    /// a log fsync).
    pub(crate) load_timeout: Duration,
    /// Largest object a write may produce.
    pub(crate) max_body_bytes: u32,
    /// Checks every new version before it is applied.
    pub(crate) check: Option<Check>,
    /// How long a derived object waits in the backlog before its first PUT.
    pub(crate) derived_flush_delay: Duration,
    /// Hears of every applied version.
    pub(crate) observer: Option<Arc<dyn Observer>>,
    /// Where versions come from.
    pub(crate) clock: Clock,
}

/// What every partition worker shares.
struct Context {
    hot: Arc<HotTier>,
    backlog: Arc<Backlog>,
    wal: Option<Wal>,
    store: Arc<dyn ObjectStore>,
    settings: EngineSettings,
    loads: AtomicU64,
}

/// The partitioned storage engine.
pub(crate) struct Engine {
    parts: Box<[mpsc::Sender<Command>]>,
    context: Arc<Context>,
}

/// The engine's numbers, for `/metrics` (zero before the engine starts).
pub(crate) fn report(engine: Option<&Engine>, s: &mut Scrape) {
    s.counter(
        "store_loads",
        "Reads that missed the hot tier and went to the store",
        engine.map_or(0, Engine::store_loads),
    );
}

/// The partition of a key among `n`.
pub(crate) fn partition_of(key: &Key, n: usize) -> usize {
    // `n` fits in u64, and the remainder is below `n`.
    (xxhash_rust::xxh3::xxh3_64(key.as_str().as_bytes()) % n as u64) as usize
}

impl Engine {
    /// Starts one partition worker per directory in `tasks` (the warm load
    /// fills the directories, one per partition, split by [`partition_of`]).
    pub(crate) fn start(
        directories: Vec<Directory>,
        hot: Arc<HotTier>,
        backlog: Arc<Backlog>,
        wal: Option<Wal>,
        store: Arc<dyn ObjectStore>,
        settings: EngineSettings,
        tasks: &mut Tasks,
    ) -> Engine {
        let context = Arc::new(Context {
            hot,
            backlog,
            wal,
            store,
            settings,
            loads: AtomicU64::new(0),
        });
        let parts = directories
            .into_iter()
            .map(|directory| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tasks.spawn(Partition::new(context.clone(), directory, rx));
                tx
            })
            .collect();
        Engine { parts, context }
    }

    /// Misses that went to the store (after an eviction).
    pub(crate) fn store_loads(&self) -> u64 {
        self.context.loads.load(Ordering::Relaxed)
    }

    fn part(&self, key: &Key) -> &mpsc::Sender<Command> {
        &self.parts[partition_of(key, self.parts.len())]
    }

    /// The live object under a key (`None` if absent or deleted).
    pub(crate) async fn read(&self, key: &Key) -> Result<Option<Arc<Object>>, EngineError> {
        Ok(self.read_slot(key).await?.filter(|o| !o.tombstone))
    }

    /// The current version under a key, deleted or not (`None` if never
    /// written).
    pub(crate) async fn read_slot(&self, key: &Key) -> Result<Slot, EngineError> {
        let slot = match self.context.hot.get(key).await {
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

    /// Writes derived objects in one message per partition: each is
    /// replaced by its new body (deleted for `None`) unless it already is
    /// that, with [`Durability::Derived`] and no preconditions. A fan-out to
    /// many thousands of objects thus costs one message per partition
    /// instead of one per object. Returns once the messages are queued (so
    /// a later write of the same key is applied after this one); the
    /// outcomes come from [`DerivedReplies::wait`].
    pub(crate) async fn write_derived(&self, items: Vec<(Key, Option<Bytes>)>) -> DerivedReplies {
        let mut per_part: Vec<Vec<(Key, Option<Bytes>)>> = vec![Vec::new(); self.parts.len()];
        for (k, b) in items {
            per_part[partition_of(&k, self.parts.len())].push((k, b));
        }
        let mut replies = DerivedReplies::default();
        for (part, items) in self.parts.iter().zip(per_part) {
            if items.is_empty() {
                continue;
            }
            let keys: Vec<Key> = items.iter().map(|(k, _)| k.clone()).collect();
            let (tx, rx) = oneshot::channel();
            if part.send(Command::Derived(items, tx)).await.is_err() {
                replies.done.extend(stopped(keys));
                continue;
            }
            replies.waits.push((keys, rx));
        }
        replies
    }

    /// Every key the engine knows, with its version (deleted keys too).
    pub(crate) async fn keys(&self) -> Result<Vec<(Key, Stamp)>, EngineError> {
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
    pub(crate) async fn write(&self, write: Write) -> Result<Applied, EngineError> {
        let durability = write.durability;
        let key = write.key.clone();
        let (tx, rx) = oneshot::channel();
        self.part(&key)
            .send(Command::Write(write, tx))
            .await
            .map_err(|_| EngineError::Stopped)?;
        let (applied, durable) = rx.await.map_err(|_| EngineError::Stopped)??;
        let timeout = self.context.settings.load_timeout;
        match durability {
            Durability::Memory | Durability::Derived => {}
            Durability::Log => {
                let ok = match durable {
                    Some(d) => tokio::time::timeout(timeout, d.wait())
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
                let stored = self
                    .context
                    .backlog
                    .wait_stored(&key, applied.object.version);
                if tokio::time::timeout(timeout, stored).await.is_err() {
                    return Err(EngineError::Unconfirmed(applied.object.version));
                }
            }
        }
        Ok(applied)
    }
}

/// The write that makes a derived object's current live version
/// (`live`) into `body` (`None`: deleted), or `None` when it already is.
pub(crate) fn derived_write(
    key: &Key,
    body: Option<Bytes>,
    live: Option<&Object>,
) -> Option<Write> {
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

/// The reply a partition sends for a write: the write, and the wait for its
/// log record's fsync when the log has one.
type WriteReply = Result<(Applied, Option<Durable>), EngineError>;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::storage::Limits;
    use object_store::memory::InMemory;
    use object_store::path::Path;
    use object_store::{ObjectStoreExt, PutPayload};
    use prefold_core::envelope::object_path;
    use serde_json::json;

    struct EngineRig {
        engine: Arc<Engine>,
        hot: Arc<HotTier>,
        backlog: Arc<Backlog>,
        store: Arc<InMemory>,
        _tasks: Tasks,
    }

    fn rig(directories: Vec<Directory>, max_keys: usize) -> EngineRig {
        rig_with_clock(directories, max_keys, Clock::system())
    }

    fn rig_with_clock(directories: Vec<Directory>, max_keys: usize, clock: Clock) -> EngineRig {
        let hot = Arc::new(HotTier::new(1 << 24));
        let backlog = Arc::new(Backlog::new(Limits {
            max_keys,
            max_bytes: 1 << 24,
        }));
        let store = Arc::new(InMemory::new());
        let mut tasks = Tasks::new("engine");
        let engine = Arc::new(Engine::start(
            directories,
            hot.clone(),
            backlog.clone(),
            None,
            store.clone(),
            EngineSettings {
                load_timeout: Duration::from_secs(5),
                max_body_bytes: 1 << 20,
                check: None,
                derived_flush_delay: Duration::ZERO,
                observer: None,
                clock,
            },
            &mut tasks,
        ));
        EngineRig {
            engine,
            hot,
            backlog,
            store,
            _tasks: tasks,
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
        assert!(r.backlog.get(&key).unwrap().tombstone);
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
            Stamp {
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

    #[tokio::test]
    async fn versions_come_from_the_clock_and_still_increase_when_it_stands_still() {
        let clock = Clock::manual(1_000_000);
        let r = rig_with_clock(vec![Directory::default()], 100, clock.clone());
        let k = Key::parse("v/1").unwrap();
        let version = |a: Applied| a.object.version;
        assert_eq!(
            version(r.engine.write(put(&k, "1")).await.unwrap()),
            1_000_000
        );
        assert_eq!(
            version(r.engine.write(put(&k, "2")).await.unwrap()),
            1_000_001
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            version(r.engine.write(put(&k, "3")).await.unwrap()),
            2_000_000
        );
    }
}
