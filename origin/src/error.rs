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
    /// Method not supported on this path.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Starting or stopping.
    #[error("not ready")]
    NotReady,
    /// The request body could not be read.
    #[error("reading the request body: {0}")]
    Body(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An object could not be encoded (a bug).
    #[error("encoding: {0}")]
    Encode(#[from] EnvelopeError),
}
