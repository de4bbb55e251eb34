//! The origin's error type: one enum, mapped to HTTP only in [`crate::api`].

use prefold_core::{EnvelopeError, KeyError};
use thiserror::Error;

/// Failures of the store layer.
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
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Open(String),
    /// The store did not answer in time.
    #[error("object store did not answer within {0:?}")]
    Timeout(std::time::Duration),
}

/// Why the storage engine refused or failed a write or a load.
#[derive(Debug, Error)]
pub enum EngineError {
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
    /// Loading from the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Every way an API request fails.
#[derive(Debug, Error)]
pub enum ApiError {
    /// The key breaks the grammar.
    #[error(transparent)]
    BadKey(#[from] KeyError),
    /// Not a JSON media type.
    #[error("content type {0:?} is not JSON")]
    UnsupportedMediaType(String),
    /// Body over the limit.
    #[error("body exceeds {limit} bytes")]
    TooLarge {
        /// The configured limit.
        limit: u32,
    },
    /// Body is not valid JSON.
    #[error("{0}")]
    MalformedJson(String),
    /// No such object.
    #[error("not found")]
    NotFound,
    /// No such route.
    #[error("no such resource")]
    NoRoute,
    /// Method not supported on this path (with the allowed ones).
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    /// Starting or stopping.
    #[error("not ready")]
    NotReady,
    /// The request body could not be read.
    #[error("reading the request body: {0}")]
    Body(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine refused or failed the operation.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A header or query parameter the server cannot use.
    #[error("{0}")]
    InvalidRequest(String),
    /// A malformed `If-Match` / `If-None-Match`.
    #[error(transparent)]
    InvalidPrecondition(#[from] prefold_core::http::PreconditionError),
    /// Missing or invalid credentials (401), or a scope that does not cover
    /// the request (403).
    #[error(transparent)]
    Auth(#[from] prefold_core::auth::AuthError),
    /// The key belongs to another origin.
    #[error("key {key} is owned by origin {owner} ({url})")]
    NotOwner {
        /// The key.
        key: String,
        /// The owner's name.
        owner: String,
        /// The owner's URL.
        url: String,
    },
    /// Writes of this key type must carry a precondition.
    #[error("writes to `{0}/…` need If-Match or If-None-Match")]
    PreconditionRequired(String),
    /// The write breaks the model (422).
    #[error(transparent)]
    Violation(#[from] prefold_core::Violation),
    /// Views are derived: only reads (and counter increments) reach them.
    #[error("`{view}` is a view; it is derived from the model's entities and cannot be written")]
    ReadOnlyView {
        /// The view.
        view: String,
        /// The methods it answers.
        allow: &'static str,
    },
    /// A view query that cannot be answered.
    #[error(transparent)]
    Query(#[from] crate::views::QueryError),
    /// An object could not be encoded (a bug).
    #[error("encoding: {0}")]
    Encode(#[from] EnvelopeError),
}
