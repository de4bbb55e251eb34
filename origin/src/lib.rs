//! prefold-origin: the server that owns objects.
//!
//! An origin holds its share of the objects in memory and answers every read
//! from there. A write is applied in memory, acknowledged, and written behind
//! to S3-compatible object storage, which is the backup rather than the
//! serving tier (the "memory holds everything, the store is a backup" design).
//!
//! Layout:
//! - [`config`]: flags and `PREFOLD_*` environment variables;
//! - [`store`]: opening the object store (local filesystem, S3, in-memory);
//! - [`hot`]: the moka hot tier, per-key write serialization and miss loading;
//! - [`flush`]: the write-behind flusher that owns dirty objects until stored;
//! - [`api`]: the HTTP surface (`app(state) -> Router`) and error mapping;
//! - [`server`]: `run(listener, state, shutdown)`, readiness and orderly shutdown.

pub mod api;
pub mod config;
pub mod error;
pub mod flush;
pub mod hot;
pub mod server;
pub mod store;

pub use api::{app, AppState};
pub use config::Config;
pub use server::Origin;
