//! The HTTP layer's one error type, and the one place where every failure
//! of every layer becomes a status and an RFC 9457 problem body.
//!
//! Internal errors are logged in full and answered with a bare 500 (or 503
//! for a store that failed a load), so nothing internal leaks into a
//! response; the problem catalogue is `prefold_core::http`'s, shared with
//! the edge.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use prefold_core::auth::AuthError;
use prefold_core::http::{PreconditionError, OWNER_HEADER, PROBLEM_CONTENT_TYPE, VERSION_HEADER};
use prefold_core::{EnvelopeError, KeyError, Problem, ProblemKind, Violation};
use thiserror::Error;

use crate::cluster::PeerError;
use crate::engine::EngineError;
use crate::storage::StoreError;
use crate::views::{QueryError, Refusal, SearchError};

/// Every way an API request fails.
#[derive(Debug, Error)]
pub(crate) enum ApiError {
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
    InvalidPrecondition(#[from] PreconditionError),
    /// Missing or invalid credentials (401), or a scope that does not cover
    /// the request (403).
    #[error(transparent)]
    Auth(#[from] AuthError),
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
    /// The key's owner, to which the request was forwarded, could not be
    /// reached or did not answer in time.
    #[error("forwarding to origin {owner}: {reason}")]
    OwnerUnreachable {
        /// The owner's name.
        owner: String,
        /// Whether the request may have reached it (not a connect failure),
        /// so that a write may have been applied.
        sent: bool,
        /// What failed, for the log only.
        reason: String,
    },
    /// Writes of this key type must carry a precondition.
    #[error("writes to `{0}/…` need If-Match or If-None-Match")]
    PreconditionRequired(String),
    /// The write breaks the model (422).
    #[error(transparent)]
    Violation(#[from] Violation),
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
    Query(#[from] QueryError),
    /// Another origin this request needs could not be reached.
    #[error(transparent)]
    PeerUnavailable(#[from] PeerError),
    /// An object could not be encoded (a bug).
    #[error("encoding: {0}")]
    Encode(#[from] EnvelopeError),
}

impl From<SearchError> for ApiError {
    fn from(e: SearchError) -> ApiError {
        match e {
            SearchError::Query(q) => ApiError::Query(q),
            SearchError::Unreachable(p) => ApiError::PeerUnavailable(p),
            SearchError::Garbled => ApiError::InvalidRequest(
                "another origin's part of the search could not be read".into(),
            ),
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        match r {
            Refusal::ReadOnlyView { view, allow } => ApiError::ReadOnlyView { view, allow },
            Refusal::Malformed(d) => ApiError::MalformedJson(d),
            Refusal::Violation(v) => ApiError::Violation(v),
            Refusal::Engine(e) => ApiError::Engine(e),
            Refusal::Unreachable(e) => ApiError::PeerUnavailable(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (kind, detail) = match &self {
            ApiError::BadKey(e) => (ProblemKind::InvalidKey, Some(e.to_string())),
            ApiError::UnsupportedMediaType(ct) => (
                ProblemKind::UnsupportedMediaType,
                Some(format!(
                    "content type {ct:?} is not JSON; send application/json"
                )),
            ),
            ApiError::TooLarge { limit } => (
                ProblemKind::PayloadTooLarge,
                Some(format!("the body exceeds the limit of {limit} bytes")),
            ),
            ApiError::MalformedJson(d) => (ProblemKind::MalformedJson, Some(d.clone())),
            ApiError::Body(_) => (
                ProblemKind::MalformedJson,
                Some("the request body could not be read".to_owned()),
            ),
            ApiError::NotFound | ApiError::Engine(EngineError::NotFound) => {
                (ProblemKind::NotFound, None)
            }
            ApiError::InvalidRequest(d) => (ProblemKind::InvalidRequest, Some(d.clone())),
            ApiError::InvalidPrecondition(e) => {
                (ProblemKind::InvalidPrecondition, Some(e.to_string()))
            }
            ApiError::NotOwner { .. } => (ProblemKind::Misdirected, Some(self.to_string())),
            ApiError::OwnerUnreachable { owner, sent, .. } => {
                tracing::warn!(error = %self, "a forwarded request failed");
                let detail = if *sent {
                    format!("origin {owner}, which owns this key, did not answer (a write may have been applied); retry later")
                } else {
                    format!("origin {owner}, which owns this key, could not be reached; retry later")
                };
                (ProblemKind::OriginUnavailable, Some(detail))
            }
            ApiError::Auth(e @ AuthError::Scope(_)) => (ProblemKind::Forbidden, Some(e.to_string())),
            ApiError::Auth(e) => (ProblemKind::Unauthorized, Some(e.to_string())),
            ApiError::Engine(EngineError::ResultTooLarge { .. }) => {
                (ProblemKind::PayloadTooLarge, Some(self.to_string()))
            }
            ApiError::PreconditionRequired(_) => {
                (ProblemKind::PreconditionRequired, Some(self.to_string()))
            }
            ApiError::Engine(EngineError::PreconditionFailed) => (
                ProblemKind::PreconditionFailed,
                Some("the object's current ETag does not satisfy If-Match / If-None-Match".into()),
            ),
            ApiError::Engine(EngineError::Conflict(d)) => (ProblemKind::Conflict, Some(d.clone())),
            ApiError::Engine(EngineError::Unconfirmed(_)) => (
                ProblemKind::StoreTimeout,
                Some("the write is applied and will be stored, but the object store did not confirm it in time".into()),
            ),
            ApiError::Engine(EngineError::Overloaded) => (
                ProblemKind::Overloaded,
                Some("too many writes are waiting for the object store; retry later".into()),
            ),
            ApiError::NoRoute => (ProblemKind::NotFound, Some("no such resource".to_owned())),
            ApiError::MethodNotAllowed(allow) => (
                ProblemKind::MethodNotAllowed,
                Some(format!("allowed: {allow}")),
            ),
            ApiError::NotReady => (ProblemKind::NotReady, None),
            ApiError::PeerUnavailable(e) => {
                tracing::warn!(error = %e, "another origin could not be reached");
                (
                    ProblemKind::OriginUnavailable,
                    Some("an origin this request needs could not be reached; retry".into()),
                )
            }
            ApiError::Violation(v) => (ProblemKind::ModelViolation, Some(v.to_string())),
            ApiError::Engine(EngineError::Invalid(d)) => {
                (ProblemKind::ModelViolation, Some(d.clone()))
            }
            ApiError::ReadOnlyView { .. } => {
                (ProblemKind::MethodNotAllowed, Some(self.to_string()))
            }
            ApiError::Query(e) => (ProblemKind::InvalidRequest, Some(e.to_string())),
            ApiError::Engine(EngineError::Store(e)) => {
                tracing::error!(error = %e, "a load from the object store failed");
                (ProblemKind::StoreUnavailable, None)
            }
            ApiError::Store(_)
            | ApiError::Encode(_)
            | ApiError::Engine(EngineError::LogFailed | EngineError::Stopped) => {
                tracing::error!(error = %self, "request failed");
                (ProblemKind::Internal, None)
            }
        };
        let status =
            StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, Problem::new(kind, detail).to_json()).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            ApiError::MethodNotAllowed(allow) | ApiError::ReadOnlyView { allow, .. } => {
                h.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::NotReady
            | ApiError::PeerUnavailable(_)
            | ApiError::OwnerUnreachable { .. }
            | ApiError::Engine(EngineError::Overloaded | EngineError::Store(_)) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Engine(EngineError::Unconfirmed(version)) => {
                // The write is applied: say which version it made.
                h.insert(VERSION_HEADER, HeaderValue::from(version));
            }
            ApiError::NotOwner { owner, .. } => {
                if let Ok(v) = HeaderValue::from_str(&owner) {
                    h.insert(OWNER_HEADER, v);
                }
            }
            ApiError::Auth(e) => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(e.challenge()),
                );
            }
            _ => {}
        }
        resp
    }
}
