//! prefold-origin: the server that owns objects.
//!
//! An origin holds its share of the objects in memory and answers every read
//! from there. A write is applied in memory by the key's partition worker,
//! logged, acknowledged at the durability the client asked for, and written
//! behind to S3-compatible object storage, which is the backup rather than
//! the serving tier ("memory holds everything, the store is a backup").
//!
//! # Layers
//!
//! The crate is cut into layers that import only downward; `make lint`
//! checks it (`origin/tests/layers.rs`). Lowest first:
//!
//! | layer | what it holds |
//! |-------|---------------|
//! | [`base`] | one version of an object, the write operations, durability levels, the clock, secrets, the retry schedule, the background-work contract, the metrics vocabulary |
//! | `storage` | opening the object store, the fault-injecting wrapper, the write-ahead log, the backlog, the flusher, reading stored records; `StoreError` |
//! | `engine` | partition workers (one writer per key), the hot tier, the warm load; `EngineError`; the `Observer` trait through which it reports applied versions |
//! | `publication`, `views` | peers on the engine, never on each other: the change index, feed and pusher to the edge; the view engine (deriver, collector, regeneration, counters, model checks) |
//! | `http` | `app(state) -> Router`, one file per surface (objects, views, cluster calls, metrics), and the one error type mapped to problem+json |
//! | `config`, `server` | flags split into each layer's settings; start-up and the shutdown order |
//! | `tests` (test builds only) | the whole origin in process: the router driven with `oneshot` over an in-memory store |
//!
//! Only what `main` and the `prefold-token` binary need is public.

mod base;
mod cluster;
mod config;
mod engine;
mod http;
mod publication;
mod server;
mod storage;
#[cfg(test)]
mod tests;
mod views;

pub use base::Clock;
pub use config::Config;
pub use server::Server;
pub use storage::StoreError;
