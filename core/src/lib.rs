//! prefold-core: everything the edge (Wasm) and the origin (native) must agree on.
//!
//! The edge and the origin are two programs built for two targets. Wherever they
//! must give the same answer — which keys are valid, which origin owns a key,
//! how an object is stored, what the configuration means, how an HTTP
//! precondition is evaluated, what an error looks like on the wire — the answer
//! is computed here, once.
//!
//! The crate is pure on purpose: no I/O, no clocks, no randomness, no tokio.
//! It builds for `wasm32-unknown-unknown`, and its routing is checked against
//! committed golden vectors on both targets (`testdata/routing-v1.json`).
//!
//! Layout:
//! - [`auth`]: bearer tokens (HS256 JWTs) for writes and cluster calls;
//! - [`publish`]: the publication wire format, KV metadata and its rules;
//! - [`fence`]: read-your-writes fences carried by a client;
//! - [`key`]: the key grammar and its validation (the only place keys are checked);
//! - [`routing`]: rendezvous hashing of a key's routing part over the origin list;
//! - [`envelope`]: the versioned on-store record of one object;
//! - [`config`]: the configuration both sides read (origin list, limits, timeouts);
//! - [`http`]: ETags, `If-None-Match`, media types and RFC 9457 problem bodies;
//! - [`model`]: the declared entities and views, and checks of entity documents.

pub mod auth;
pub mod config;
pub mod envelope;
pub mod fence;
pub mod http;
pub mod key;
pub mod model;
pub mod publish;
pub mod routing;

pub use config::{ConfigError, EdgeConfig};
pub use envelope::{Envelope, EnvelopeError};
pub use http::{Preconditions, Problem, ProblemKind};
pub use key::{Key, KeyError};
pub use model::{Model, ModelError, Violation};
pub use routing::{Origin, OriginList, RoutingError};
