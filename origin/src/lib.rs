//! prefold-origin: the server that owns objects.
//!
//! An origin holds its share of the objects in memory and answers every read
//! from there. A write is applied in memory by the key's partition worker,
//! logged, acknowledged at the durability the client asked for, and written
//! behind to S3-compatible object storage, which is the backup rather than
//! the serving tier ("memory holds everything, the store is a backup").
//!
//! Layout:
//! - [`config`]: flags and `PREFOLD_*` environment variables;
//! - [`store`]: opening the object store (local filesystem, S3, in-memory);
//! - [`faults`]: a fault-injecting store wrapper for tests and drills;
//! - [`object`]: one immutable version of one object;
//! - [`ops`]: the write operations (replace, merge patch, delete, append,
//!   increment) as pure functions;
//! - [`engine`]: partition workers, the only writers of their keys;
//! - [`hot`]: the moka hot tier;
//! - [`wal`]: the group-committed write-ahead log;
//! - [`dirty`]: the bounded write-behind backlog;
//! - [`flush`]: the flusher that stores the backlog (coalesced, conditional,
//!   retried with jittered backoff) and trims the log;
//! - [`warm`]: loading the owned objects and replaying the log at start;
//! - [`publication`]: the change index, the change feed and the pusher that
//!   publish changed objects to the edge's KV;
//! - [`views`]: the view engine, deriving denormalized objects from the
//!   model's entities at write time;
//! - [`metrics`]: `/metrics` in the Prometheus text format;
//! - [`api`]: the HTTP surface (`app(state) -> Router`) and error mapping;
//! - [`server`]: `run(listener, shutdown)`, readiness and orderly shutdown.

pub mod api;
pub mod config;
pub mod dirty;
pub mod engine;
pub mod error;
pub mod faults;
pub mod flush;
pub mod hot;
pub mod metrics;
pub mod object;
pub mod ops;
pub mod publication;
pub mod server;
pub mod store;
pub mod views;
pub mod wal;
pub mod warm;

pub use api::{app, AppState};
pub use config::Config;
pub use server::Origin;
