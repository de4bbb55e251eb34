//! The local write-ahead log: what makes `log` durability survive `kill -9`.
//!
//! Every write is appended here by its partition worker. One writer thread
//! takes whatever has queued up, writes it with one `write`, and makes it
//! durable with one `fdatasync`: concurrent writers share that fsync (group
//! commit), so the log's throughput grows with the load instead of being one
//! fsync per write. A `log`-mode write is acknowledged once the fsync that
//! covers it returns; `memory` and `store` writes are logged too but do not
//! wait for it.
//!
//! The log is a directory of numbered segments (`{n:016}.log`). A segment is
//! closed when it passes the configured size; a closed segment is deleted
//! once every record in it is in the store or superseded by a newer record
//! of the same key in a later segment (see [`super::backlog`] and
//! [`super::flusher`]).
//! The writer thread is driven by a [`LogWriter`] worker, which closes it
//! once everything queued before shutdown is on disk.
//! At start every segment is replayed, oldest first; the newest record of
//! each key wins, and the engine re-applies those newer than the store.
//!
//! Record layout, integers little-endian:
//!
//! ```text
//! size  field
//! 4     payload length n
//! 4     CRC-32 (IEEE) of the payload
//! n     payload: key length (u16), key, stored envelope (see prefold_core::envelope)
//! ```
//!
//! A record whose length runs past the end of the file or whose CRC does not
//! match is a torn write from a crash: replay stops reading that segment
//! there. Such a record was never acknowledged, because its fsync never
//! returned.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use prefold_core::Key;
use tokio::sync::{mpsc, oneshot};

use super::StoreError;
use crate::base::metrics::Scrape;
use crate::base::{Object, Shutdown, Worker};

/// Records waiting for the writer thread; past this, workers wait (backpressure).
const QUEUE: usize = 8192;
/// Largest batch written with one fsync.
const MAX_BATCH_BYTES: usize = 8 << 20;

/// A handle to the log; clones share one writer thread.
#[derive(Clone)]
pub(crate) struct Wal {
    tx: mpsc::Sender<Queued>,
    segments: Arc<Segments>,
}

/// The log's directory and the numbers every handle and the writer share.
struct Segments {
    dir: PathBuf,
    /// Held for the process's lifetime: two processes on one log would
    /// delete each other's segments.
    _lock: File,
    segment: AtomicU64,
    fsyncs: AtomicU64,
    records: AtomicU64,
}

/// What waits for the writer thread.
enum Queued {
    /// A record, and who waits for its fsync.
    Record {
        record: Vec<u8>,
        done: Option<oneshot::Sender<bool>>,
    },
    /// Write what came before, then stop.
    Close,
}

/// The newest logged version of each key found at start, with the segment it
/// came from.
pub(crate) type Replayed = HashMap<Key, (u64, Object)>;

/// What [`Wal::open`] found.
pub(crate) struct Replay {
    /// Newest record per key.
    pub(crate) records: Replayed,
    /// Segments read.
    pub(crate) segments: usize,
    /// Records read (all versions).
    pub(crate) read: u64,
    /// Segments that ended in a torn record.
    pub(crate) torn: usize,
}

/// Waits for the fsync that covers one record.
pub(crate) struct Durable(oneshot::Receiver<bool>);

impl Durable {
    /// Resolves once the record is on disk; `false` if the log failed.
    pub(crate) async fn wait(self) -> bool {
        self.0.await.unwrap_or(false)
    }
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016}.log"))
}

fn segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut out: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    out.sort_unstable();
    Ok(out)
}

impl Wal {
    /// Replays the log in `dir` (creating it if needed) and starts a new
    /// segment for this run's writes. `segment_bytes` is the size at which a
    /// segment is closed. Records are written once the returned
    /// [`LogWriter`] runs.
    pub(crate) fn open(
        dir: &Path,
        segment_bytes: u64,
    ) -> Result<(Wal, LogWriter, Replay), StoreError> {
        fs::create_dir_all(dir).map_err(StoreError::io("creating", dir))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(StoreError::io("opening", &lock_path))?;
        if lock.try_lock().is_err() {
            return Err(StoreError::LogInUse {
                dir: dir.to_owned(),
            });
        }
        let existing = segments(dir).map_err(StoreError::io("listing", dir))?;
        let mut replay = Replay {
            records: HashMap::new(),
            segments: existing.len(),
            read: 0,
            torn: 0,
        };
        for &n in &existing {
            let path = segment_path(dir, n);
            let data = fs::read(&path).map_err(StoreError::io("reading", &path))?;
            let (read, torn) = replay_segment(n, &data, &mut replay.records);
            replay.read += read;
            if torn {
                replay.torn += 1;
                tracing::warn!(segment = %path.display(), "log segment ends in a torn record (crash during a write); the rest is ignored");
            }
        }
        let first = existing.last().map_or(1, |n| n + 1);
        let file = create_segment(dir, first)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let segments = Arc::new(Segments {
            dir: dir.to_owned(),
            _lock: lock,
            segment: AtomicU64::new(first),
            fsyncs: AtomicU64::new(0),
            records: AtomicU64::new(0),
        });
        let writer = Writer {
            rx,
            file,
            size: 0,
            broken: false,
            segment_bytes,
            segments: segments.clone(),
        };
        let log_writer = LogWriter {
            writer,
            tx: tx.clone(),
        };
        Ok((Wal { tx, segments }, log_writer, replay))
    }

    /// The segment new records go to.
    pub(crate) fn current_segment(&self) -> u64 {
        self.segments.segment.load(Ordering::SeqCst)
    }

    /// Appends a record. With `wait`, the returned [`Durable`] resolves when
    /// the record is on disk. Returns `None` if the writer has stopped.
    pub(crate) async fn append(
        &self,
        key: &Key,
        object: &Object,
        wait: bool,
    ) -> Option<Option<Durable>> {
        let record = encode(key, object)?;
        let (done, durable) = if wait {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(Durable(rx)))
        } else {
            (None, None)
        };
        self.tx.send(Queued::Record { record, done }).await.ok()?;
        Some(durable)
    }

    /// Deletes closed segments numbered below `below`; returns how many.
    pub(crate) fn trim_below(&self, below: u64) -> usize {
        let current = self.current_segment();
        let Ok(all) = segments(&self.segments.dir) else {
            return 0;
        };
        let mut removed = 0;
        for n in all.into_iter().filter(|&n| n < below && n < current) {
            match fs::remove_file(segment_path(&self.segments.dir, n)) {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(segment = n, error = %e, "cannot delete a log segment"),
            }
        }
        removed
    }

    /// fsyncs so far (each covers a group of records).
    pub(crate) fn fsyncs(&self) -> u64 {
        self.segments.fsyncs.load(Ordering::Relaxed)
    }

    /// Records written so far.
    pub(crate) fn records(&self) -> u64 {
        self.segments.records.load(Ordering::Relaxed)
    }

    /// The log's numbers, for `/metrics`.
    pub(crate) fn report(&self, s: &mut Scrape) {
        s.counter(
            "wal_fsyncs",
            "Write-ahead log fsyncs (each covers a group of writes)",
            self.fsyncs(),
        );
        s.counter(
            "wal_records",
            "Write-ahead log records written",
            self.records(),
        );
    }
}

/// The worker that runs the log's writer thread.
///
/// The writer is a thread of its own, not a task: it blocks in `write` and
/// `fdatasync`, and a named thread shows in a profile as the log's. The
/// worker starts it, and at shutdown queues a close behind everything
/// already appended and waits for the thread to write it all and end.
pub(crate) struct LogWriter {
    writer: Writer,
    tx: mpsc::Sender<Queued>,
}

impl Worker for LogWriter {
    fn name(&self) -> &'static str {
        "log writer"
    }

    async fn run(self, shutdown: Shutdown) {
        let LogWriter { writer, tx } = self;
        let (ended_tx, mut ended) = oneshot::channel::<()>();
        let started = std::thread::Builder::new()
            .name("prefold-wal".into())
            .spawn(move || {
                writer.run();
                let _ = ended_tx.send(());
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the log writer thread; logged writes will fail");
            return;
        }
        if shutdown.or(&mut ended).await.is_some() {
            return;
        }
        let _ = tx.send(Queued::Close).await;
        drop(tx);
        let _ = ended.await;
    }
}

fn encode(key: &Key, object: &Object) -> Option<Vec<u8>> {
    let envelope = object.encode().ok()?;
    let key = key.as_str().as_bytes();
    let key_len = u16::try_from(key.len()).ok()?;
    let mut payload = Vec::with_capacity(2 + key.len() + envelope.len());
    payload.extend_from_slice(&key_len.to_le_bytes());
    payload.extend_from_slice(key);
    payload.extend_from_slice(&envelope);
    let mut record = Vec::with_capacity(8 + payload.len());
    record.extend_from_slice(&u32::try_from(payload.len()).ok()?.to_le_bytes());
    record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    record.extend_from_slice(&payload);
    Some(record)
}

/// Reads one segment into `out`; returns (records read, ended torn).
fn replay_segment(n: u64, data: &[u8], out: &mut Replayed) -> (u64, bool) {
    let mut at = 0;
    let mut read = 0;
    while at < data.len() {
        let Some(header) = data.get(at..at + 8) else {
            return (read, true);
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        // A zero length is a zero-filled tail (a crash after the file grew
        // but before the data reached it), not an empty record.
        let Some(payload) = data.get(at + 8..at + 8 + len).filter(|_| len > 0) else {
            return (read, true);
        };
        if crc32fast::hash(payload) != crc {
            return (read, true);
        }
        at += 8 + len;
        let Some((key, object)) = decode_payload(payload) else {
            tracing::warn!(
                segment = n,
                "log record with a valid checksum does not decode; skipped"
            );
            continue;
        };
        read += 1;
        match out.get(&key) {
            Some((_, have)) if have.version >= object.version => {}
            _ => {
                out.insert(key, (n, object));
            }
        }
    }
    (read, false)
}

fn decode_payload(payload: &[u8]) -> Option<(Key, Object)> {
    let key_len = usize::from(u16::from_le_bytes([*payload.first()?, *payload.get(1)?]));
    let key = std::str::from_utf8(payload.get(2..2 + key_len)?).ok()?;
    let key = Key::parse(key).ok()?;
    let envelope = Bytes::copy_from_slice(payload.get(2 + key_len..)?);
    let object = Object::decode(envelope).ok()?;
    Some((key, object))
}

fn create_segment(dir: &Path, n: u64) -> Result<File, StoreError> {
    let path = segment_path(dir, n);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(StoreError::io("creating", &path))?;
    // The new name must survive a crash too.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("syncing", dir))?;
    Ok(file)
}

struct Writer {
    rx: mpsc::Receiver<Queued>,
    file: File,
    /// Bytes in the current segment that are known to be good.
    size: u64,
    /// The last write failed and no new segment could be started.
    broken: bool,
    segment_bytes: u64,
    segments: Arc<Segments>,
}

impl Writer {
    fn run(mut self) {
        let mut buf = Vec::with_capacity(MAX_BATCH_BYTES);
        let mut waiters = Vec::new();
        let mut closing = false;
        // Ends at a close, or when every handle is dropped and the queue is
        // empty.
        while let Some(first) = self.rx.blocking_recv() {
            buf.clear();
            let mut count = 0u64;
            let mut next = Some(first);
            while let Some(q) = next.take() {
                match q {
                    Queued::Record { record, done } => {
                        buf.extend_from_slice(&record);
                        count += 1;
                        if let Some(done) = done {
                            waiters.push(done);
                        }
                    }
                    Queued::Close => closing = true,
                }
                if buf.len() < MAX_BATCH_BYTES && !closing {
                    next = self.rx.try_recv().ok();
                }
            }
            if closing && buf.is_empty() && waiters.is_empty() {
                break;
            }
            let ok = self.write_batch(&buf);
            self.segments.fsyncs.fetch_add(1, Ordering::Relaxed);
            if ok {
                self.segments.records.fetch_add(count, Ordering::Relaxed);
            }
            // Rotating before answering keeps `current_segment` in step with
            // what writers have seen acknowledged.
            if ok && self.size >= self.segment_bytes {
                self.rotate();
            }
            for w in waiters.drain(..) {
                let _ = w.send(ok);
            }
            if closing {
                break;
            }
        }
    }

    /// Writes and fsyncs one batch. On failure the file is cut back to
    /// where the batch began and a new segment is started, so nothing is
    /// ever appended after a torn record (replay stops reading a segment at
    /// its first bad record). Until a new segment exists, every batch fails.
    fn write_batch(&mut self, buf: &[u8]) -> bool {
        if self.broken && !self.rotate() {
            return false;
        }
        match self
            .file
            .write_all(buf)
            .and_then(|()| self.file.sync_data())
        {
            Ok(()) => {
                self.size += buf.len() as u64;
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "write-ahead log write failed");
                if let Err(e) = self.file.set_len(self.size) {
                    tracing::error!(error = %e, "cannot cut the log back after a failed write");
                }
                self.broken = !self.rotate();
                false
            }
        }
    }

    fn rotate(&mut self) -> bool {
        let next = self.segments.segment.load(Ordering::SeqCst) + 1;
        match create_segment(&self.segments.dir, next) {
            Ok(file) => {
                self.file = file;
                self.size = 0;
                self.broken = false;
                self.segments.segment.store(next, Ordering::SeqCst);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start a new log segment");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::base::Tasks;
    use std::time::Duration;

    fn obj(version: u64, body: &'static [u8]) -> Object {
        Object::new(version, "application/json", Bytes::from_static(body))
    }

    /// Opens the log in `dir` with its writer running.
    fn open(dir: &Path, segment_bytes: u64) -> (Wal, Tasks, Replay) {
        let (wal, writer, replay) = Wal::open(dir, segment_bytes).unwrap();
        let mut tasks = Tasks::new("log");
        tasks.spawn(writer);
        (wal, tasks, replay)
    }

    /// Stops the writer once everything queued is on disk, and lets go of
    /// the log's lock.
    async fn close(wal: Wal, tasks: Tasks) {
        assert!(tasks.stop(Duration::from_secs(10)).await);
        drop(wal);
    }

    #[tokio::test]
    async fn replays_the_newest_version_per_key() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Key::parse("t/a").unwrap(), Key::parse("t/b").unwrap());
        {
            let (wal, tasks, replay) = open(dir.path(), 1 << 20);
            assert!(replay.records.is_empty());
            wal.append(&a, &obj(1, b"1"), false).await.unwrap();
            wal.append(&a, &obj(2, b"2"), false).await.unwrap();
            wal.append(&b, &Object::tombstone(5), false).await.unwrap();
            let last = wal.append(&b, &obj(4, b"old"), true).await.unwrap();
            assert!(last.unwrap().wait().await);
            assert!(wal.fsyncs() >= 1);
            close(wal, tasks).await;
        }
        let (w, tasks, replay) = open(dir.path(), 1 << 20);
        close(w, tasks).await;
        assert_eq!(replay.read, 4);
        assert_eq!(replay.records[&a].1, obj(2, b"2"));
        assert!(replay.records[&b].1.tombstone, "older version does not win");
    }

    #[tokio::test]
    async fn a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let k = Key::parse("t/torn").unwrap();
        {
            let (wal, tasks, _) = open(dir.path(), 1 << 20);
            let d = wal.append(&k, &obj(1, b"\"ok\""), true).await.unwrap();
            assert!(d.unwrap().wait().await);
            close(wal, tasks).await;
        }
        let seg = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&seg).unwrap();
        let whole = bytes.len();
        // A second record cut short, then one with a bad checksum.
        let mut next = encode(&k, &obj(2, b"\"cut\"")).unwrap();
        bytes.extend_from_slice(&next[..next.len() - 3]);
        fs::write(&seg, &bytes).unwrap();
        let (w, tasks, replay) = open(dir.path(), 1 << 20);
        close(w, tasks).await;
        assert_eq!((replay.read, replay.torn), (1, 1));
        assert_eq!(replay.records[&k].1.version, 1);
        bytes.truncate(whole);
        next[9] ^= 0xff;
        bytes.extend_from_slice(&next);
        fs::write(&seg, &bytes).unwrap();
        let (w, tasks, replay) = open(dir.path(), 1 << 20);
        close(w, tasks).await;
        assert_eq!(replay.records[&k].1.version, 1);
    }

    #[tokio::test]
    async fn rotates_and_trims_closed_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _tasks, _) = open(dir.path(), 64);
        let k = Key::parse("t/r").unwrap();
        for v in 1..=5 {
            let body = b"\"0123456789abcdef0123456789abcdef0123456789\"";
            let d = wal.append(&k, &obj(v, body), true).await.unwrap();
            assert!(d.unwrap().wait().await);
        }
        let current = wal.current_segment();
        assert_eq!(
            current, 6,
            "each record passes 64 bytes and closes its segment"
        );
        assert_eq!(
            wal.trim_below(u64::MAX),
            usize::try_from(current - 1).unwrap()
        );
        assert_eq!(segments(dir.path()).unwrap(), vec![current]);
    }

    #[tokio::test]
    async fn records_queued_together_share_one_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let file = create_segment(dir.path(), 1).unwrap();
        let (tx, rx) = mpsc::channel(QUEUE);
        let segments = Arc::new(Segments {
            dir: dir.path().to_owned(),
            _lock: File::open(dir.path()).unwrap(),
            segment: AtomicU64::new(1),
            fsyncs: AtomicU64::new(0),
            records: AtomicU64::new(0),
        });
        let wal = Wal {
            tx,
            segments: segments.clone(),
        };
        // 200 writers queue their records while the writer is busy (here:
        // not started yet); it then makes them durable with one fsync.
        let mut durable = Vec::new();
        for i in 0..200 {
            let k = Key::parse(&format!("t/{i}")).unwrap();
            durable.push(wal.append(&k, &obj(1, b"{}"), true).await.unwrap().unwrap());
        }
        let writer = Writer {
            rx,
            file,
            size: 0,
            broken: false,
            segment_bytes: 1 << 30,
            segments,
        };
        std::thread::spawn(move || writer.run());
        for d in durable {
            assert!(d.wait().await);
        }
        assert_eq!((wal.records(), wal.fsyncs()), (200, 1));
    }

    #[test]
    fn one_process_per_log() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Wal::open(dir.path(), 1 << 20).unwrap();
        assert!(matches!(
            Wal::open(dir.path(), 1 << 20),
            Err(StoreError::LogInUse { .. })
        ));
    }

    #[test]
    fn a_zero_filled_tail_is_torn() {
        let mut out = Replayed::new();
        assert_eq!(replay_segment(1, &[0u8; 64], &mut out), (0, true));
        assert!(out.is_empty());
    }
}
