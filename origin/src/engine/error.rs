//! Why the engine refused or failed a write or a load.

use std::sync::Arc;

use thiserror::Error;

use crate::storage::StoreError;

/// Why the storage engine refused or failed a write or a load.
#[derive(Debug, Error)]
pub(crate) enum EngineError {
    /// `If-Match` / `If-None-Match` did not hold.
    #[error("precondition failed")]
    PreconditionFailed,
    /// `PATCH` or `DELETE` of a missing object.
    #[error("no such object")]
    NotFound,
    /// The operation does not fit the current object.
    #[error("{0}")]
    Conflict(String),
    /// The write-behind backlog is at its bound.
    #[error("the write-behind backlog is full")]
    Overloaded,
    /// The write is applied in memory (and will be stored) but the log
    /// could not make it durable in time: the outcome, for the client, is
    /// unknown, as after a timeout.
    #[error("the write-ahead log failed")]
    LogFailed,
    /// A `store`-durability write was applied but the store did not confirm
    /// it within the store timeout.
    #[error("the object store did not confirm version {0} in time")]
    Unconfirmed(u64),
    /// A merge patch, append or increment made the object larger than the
    /// body limit.
    #[error("the result would be {size} bytes; the limit is {limit}")]
    ResultTooLarge {
        /// The result's size.
        size: usize,
        /// The configured limit.
        limit: u32,
    },
    /// The new version does not fit the model (an entity's type).
    #[error("{0}")]
    Invalid(String),
    /// The engine is shutting down.
    #[error("the storage engine has stopped")]
    Stopped,
    /// Loading from the store failed. Shared: one failed load answers every
    /// request parked behind it.
    #[error(transparent)]
    Store(Arc<StoreError>),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> EngineError {
        EngineError::Store(Arc::new(e))
    }
}
