//! The courier: routes each view engine message to the owner of its
//! address, this origin's deriver or another origin's over a cluster link.
//!
//! Messages queued on a link count as outbound (so `settle` waits for
//! them) until the other origin acknowledges them. Fault injection (`derive=drop`
//! in the control file) loses derivations here, wherever they were going.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use foldhash::HashMap;
use tokio::sync::mpsc;

use super::node::Out;
use super::wire::Wire;
use super::{send_counted, Courier, Msg, ViewStats};
use crate::base::Clock;
use crate::cluster::link::{Delivered, LinkTx};
use crate::cluster::Membership;
use crate::storage::faults;
use prefold_core::Key;

/// The path other origins take view engine messages at.
pub(crate) const DERIVE_PATH: &str = "/_prefold/derive";

/// The courier of one origin.
pub(super) struct Routed {
    pub(super) tx: mpsc::UnboundedSender<Msg>,
    pub(super) stats: Arc<ViewStats>,
    pub(super) membership: Membership,
    pub(super) links: HashMap<String, LinkTx>,
    pub(super) clock: Clock,
    /// `derive=drop` in this file loses derivations (tests and drills).
    pub(super) faults: Option<PathBuf>,
}

impl Routed {
    fn send_to(&self, origin: &str, w: &Wire) {
        let Some(link) = self.links.get(origin) else {
            tracing::warn!(origin, "no link to an origin of the layout");
            return;
        };
        let Ok(bytes) = serde_json::to_vec(w) else {
            return;
        };
        self.stats.outbound.fetch_add(1, Ordering::Relaxed);
        if !link.send(Bytes::from(bytes)) {
            self.stats.outbound.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Courier for Routed {
    fn deliver(&self, out: Out, at: Instant) {
        if matches!(out, Out::Derive(_))
            && self
                .faults
                .as_deref()
                .is_some_and(faults::drops_derivations)
        {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.membership.other_owner(out.address()) {
            None => send_counted(&self.tx, &self.stats, Msg::Out(out, at, false)),
            Some(owner) => {
                let age = u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX);
                let written = self.clock.now_micros().saturating_sub(age);
                self.send_to(&owner.name, &Wire::of(&out, written));
            }
        }
    }

    fn owner(&self, key: &Key) -> Option<&str> {
        self.membership.other_owner(key).map(|o| o.name.as_str())
    }

    fn peers(&self) -> Vec<String> {
        self.membership.peers().map(|o| o.name.clone()).collect()
    }

    fn resync(&self, origin: &str) {
        self.send_to(origin, &Wire::Resync);
    }

    fn resync_done(&self, origin: &str) {
        self.send_to(origin, &Wire::ResyncDone);
    }
}

/// Counts what a link delivered or gave up.
pub(super) struct LinkReport(pub(super) Arc<ViewStats>);

impl Delivered for LinkReport {
    fn delivered(&self, n: u64) {
        self.0.remote_sent.fetch_add(n, Ordering::Relaxed);
        self.0.outbound.fetch_sub(n, Ordering::Relaxed);
    }

    fn abandoned(&self, n: u64) {
        self.0.remote_abandoned.fetch_add(n, Ordering::Relaxed);
        self.0.outbound.fetch_sub(n, Ordering::Relaxed);
    }
}
