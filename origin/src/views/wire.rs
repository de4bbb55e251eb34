//! The view engine's messages between origins, as JSON: what a [`Link`]
//! carries to `POST /_prefold/derive`.
//!
//! A batch is `{"from": "origin-2", "messages": [...]}`; each message names
//! its kind in `"m"`. Keys travel as strings and are parsed again on
//! arrival, like any key a client sends. A derivation carries the wall-clock
//! time of the write that caused it, so that the receiver can measure the
//! lag across origins.
//!
//! [`Link`]: crate::cluster::link::Link

use std::sync::Arc;

use prefold_core::Key;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::node::{Out, Subscription};
use super::state::Derivation;

/// One message between origins.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "m", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Wire {
    /// A derivation for a target the receiver owns.
    Derive {
        /// The target.
        target: String,
        /// The entity.
        source: String,
        /// The entity's version.
        version: u64,
        /// Its document (`null`: deleted or absent).
        doc: Option<Arc<Value>>,
        /// Apply even at the version held.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
        /// Sent by a repair (sweep or resync).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        repair: bool,
        /// When the causing write happened, microseconds since the epoch.
        written: u64,
    },
    /// A subscription to an entity the receiver owns.
    Subscribe {
        /// The entity.
        entity: String,
        /// The embed target.
        target: String,
        /// The version of the target's own entity.
        version: u64,
        /// Taken up or dropped.
        on: bool,
    },
    /// "Send `target` the current document of `source`", which the
    /// receiver owns.
    Refresh {
        /// The entity.
        source: String,
        /// The target.
        target: String,
    },
    /// "I have started: send me everything of yours that my targets hold,
    /// and take up again the subscriptions my targets held on your
    /// entities."
    Resync,
    /// The answer to a resync is complete (it follows the answer's
    /// messages on the same ordered link).
    ResyncDone,
}

/// A batch of messages from one origin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Batch {
    /// The sender's name.
    pub(crate) from: String,
    /// The messages, in the order sent.
    pub(crate) messages: Vec<Wire>,
}

impl Wire {
    /// The wire form of an addressed message.
    pub(crate) fn of(out: &Out, written: u64) -> Wire {
        match out {
            Out::Derive(d) => Wire::Derive {
                target: d.target.to_string(),
                source: d.source.to_string(),
                version: d.version,
                doc: d.doc.clone(),
                force: d.force,
                repair: d.repair,
                written,
            },
            Out::Subscribe(s) => Wire::Subscribe {
                entity: s.entity.to_string(),
                target: s.target.to_string(),
                version: s.version,
                on: s.on,
            },
            Out::Refresh { source, target } => Wire::Refresh {
                source: source.to_string(),
                target: target.to_string(),
            },
        }
    }
}

/// What a received message is, once its keys have parsed.
pub(crate) enum Received {
    /// An addressed message, with its write time if it has one.
    Out(Out, Option<u64>),
    /// A resync request.
    Resync,
    /// A resync answer is complete.
    ResyncDone,
}

/// Parses a received message's keys; `None` if one does not parse.
pub(crate) fn parse(w: Wire) -> Option<Received> {
    let key = |s: &str| Key::parse(s).ok();
    Some(match w {
        Wire::Derive {
            target,
            source,
            version,
            doc,
            force,
            repair,
            written,
        } => Received::Out(
            Out::Derive(Derivation {
                target: key(&target)?,
                source: key(&source)?,
                version,
                doc,
                force,
                repair,
            }),
            Some(written),
        ),
        Wire::Subscribe {
            entity,
            target,
            version,
            on,
        } => Received::Out(
            Out::Subscribe(Subscription {
                entity: key(&entity)?,
                target: key(&target)?,
                version,
                on,
            }),
            None,
        ),
        Wire::Refresh { source, target } => Received::Out(
            Out::Refresh {
                source: key(&source)?,
                target: key(&target)?,
            },
            None,
        ),
        Wire::Resync => Received::Resync,
        Wire::ResyncDone => Received::ResyncDone,
    })
}
