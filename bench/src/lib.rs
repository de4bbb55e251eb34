//! `prefold-bench` as a library: what the benchmark binaries and the
//! `prefold-gen` demo loader share.
//!
//! - [`gen`]: a deterministic generator of demo data for the model in
//!   `scripts/demo/model.toml` (customers, products, orders, venues, users,
//!   events, comments, tags, friendships) at any scale, yielded in waves so
//!   that every reference points to an object written before it, and a loader
//!   that `PUT`s the waves to an origin.

pub mod gen;
