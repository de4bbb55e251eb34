//! The base layer: what every other layer of the origin shares and nothing
//! in it depends on — one version of an object ([`object`]), the write
//! operations as pure functions ([`ops`]), durability levels
//! ([`durability`]), the one clock ([`clock`]), secrets ([`secret`]), the
//! retry schedule ([`backoff`]), the contract of background work
//! ([`background`]) and the metrics vocabulary ([`metrics`]).
//!
//! It imports nothing from the rest of the crate.

pub(crate) mod background;
pub(crate) mod backoff;
pub(crate) mod clock;
pub(crate) mod durability;
pub(crate) mod metrics;
pub(crate) mod object;
pub(crate) mod ops;
pub(crate) mod secret;

pub(crate) use background::{sleep_until_opt, Shutdown, Tasks, Worker};
pub(crate) use backoff::Backoff;
pub use clock::Clock;
pub use durability::Durability;
pub(crate) use object::{Object, Slot};
pub(crate) use ops::{Op, OpKind};
pub use secret::Secret;
