//! The storage layer: everything between the engine and the bytes on disk
//! or in the object store.
//!
//! - [`open`]: opening the configured object store (local filesystem, S3,
//!   in-memory), wrapped by [`faults`] for tests and drills;
//! - [`read`]: the one way a stored record is read and decoded;
//! - [`wal`]: the group-committed local write-ahead log and its writer;
//! - [`backlog`]: writes acknowledged but not yet in the store, bounded;
//! - [`flusher`]: the worker that stores the backlog (coalesced,
//!   conditional, retried) and trims the log.
//!
//! It knows objects ([`crate::base`]) and nothing above: not the engine's
//! partitions, not views, not HTTP. Its failures are [`StoreError`].

pub(crate) mod backlog;
pub(crate) mod faults;
pub(crate) mod flusher;
pub(crate) mod open;
pub(crate) mod read;
pub(crate) mod wal;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use prefold_core::EnvelopeError;
use thiserror::Error;

pub(crate) use backlog::{Backlog, Limits};
pub use flusher::Conditional;
pub(crate) use flusher::{FlushSettings, FlushStats, Flusher};
pub use open::StoreKind;
pub(crate) use open::StoreSettings;
pub(crate) use wal::{Durable, LogWriter, Replayed, Wal};

/// Failures of the storage layer.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The object store failed (I/O, network, service error).
    #[error("object store: {0}")]
    Backend(#[from] object_store::Error),
    /// A stored record that cannot be decoded.
    #[error("stored object {key} is corrupt: {source}")]
    Corrupt {
        /// The key whose record is bad.
        key: String,
        /// Why it does not decode.
        source: EnvelopeError,
    },
    /// A local file or directory (the embedded store's, the log's) failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done: "creating", "reading", "syncing", …
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
    /// Another process holds the write-ahead log.
    #[error("the write-ahead log in {} is in use by another process (give each process its own --wal-dir)", dir.display())]
    LogInUse {
        /// The log's directory.
        dir: PathBuf,
    },
    /// The store did not answer in time.
    #[error("object store did not answer within {0:?}")]
    Timeout(Duration),
    /// A load of an evicted key panicked (a bug; the requests waiting for
    /// it get this instead of hanging).
    #[error("the load from the store panicked")]
    LoadPanicked,
    /// A blocking read of the embedded store's files did not finish (it
    /// panicked or was cancelled).
    #[error("reading the store's files: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Runs a store operation, failing it with [`StoreError::Timeout`] once
/// `limit` has passed: no store request may hold a load, a flush or a
/// failover read forever.
pub(crate) async fn within<T>(
    limit: Duration,
    op: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, op)
        .await
        .map_err(|_| StoreError::Timeout(limit))?
}

impl StoreError {
    /// An I/O failure on `path` while doing `action`.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io {
            action,
            path,
            source,
        }
    }
}
