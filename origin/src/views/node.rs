//! One origin's part of the view engine, as a pure message handler: the
//! targets it owns ([`ViewState`]) and what it keeps as the owner of
//! entities, so that their changes reach every target, wherever it lives.
//!
//! The owner of an entity remembers which targets its last document named
//! (so that a move sends the old target a removal) and which embed targets
//! have subscribed to it (so that a rename reaches every page that embeds
//! it). Everything a handler decides to send comes back as [`Out`]
//! messages, each addressed by a key; the caller routes them to that key's
//! owner, which may be this origin. Nothing here knows where that is, which
//! is what lets the property test run a whole cluster in one thread.

use std::collections::BTreeSet;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};
use prefold_core::{Key, Model};

use super::state::{Derivation, Effect, Source, ViewState};

/// An embed target's interest in an entity it references: while `on`, the
/// entity's owner sends the target its changes. Ordered by `version`, the
/// version of the target's own entity that took it up or dropped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subscription {
    /// The referenced entity (the message is addressed to its owner).
    pub(crate) entity: Key,
    /// The embed target.
    pub(crate) target: Key,
    /// The version of the target's own entity.
    pub(crate) version: u64,
    /// Taken up or dropped.
    pub(crate) on: bool,
}

/// A message a handler sends, addressed to the owner of [`Out::address`].
#[derive(Debug, Clone)]
pub(crate) enum Out {
    /// To the target's owner.
    Derive(Derivation),
    /// To the referenced entity's owner.
    Subscribe(Subscription),
    /// To the source's owner: send `target` your current document.
    Refresh {
        /// The entity asked for.
        source: Key,
        /// Where to send it.
        target: Key,
    },
}

impl Out {
    /// The key whose owner handles the message.
    pub(crate) fn address(&self) -> &Key {
        match self {
            Out::Derive(d) => &d.target,
            Out::Subscribe(s) => &s.entity,
            Out::Refresh { source, .. } => source,
        }
    }
}

/// One origin's view engine state.
#[derive(Debug)]
pub(crate) struct Node {
    /// The targets owned here.
    pub(crate) state: ViewState,
    /// Entity owned here → the targets its last handled document named.
    sent: HashMap<Key, BTreeSet<Key>>,
    /// Entity owned here → embed targets (anywhere) and their latest
    /// subscription.
    subscribers: HashMap<Key, HashMap<Key, (u64, bool)>>,
}

impl Node {
    /// An empty node.
    pub(crate) fn new(model: Arc<Model>) -> Node {
        Node {
            state: ViewState::new(model),
            sent: HashMap::new(),
            subscribers: HashMap::new(),
        }
    }

    /// An entity owned here is now `now`: the derivations to send, to the
    /// targets its document names, those its previous document named, those
    /// subscribed to it and those here that hold it. With `only`, just the
    /// targets it accepts (a resync for one origin).
    pub(crate) fn changed(
        &mut self,
        source: &Key,
        now: &Source,
        force: bool,
        only: Option<&dyn Fn(&Key) -> bool>,
    ) -> Vec<Derivation> {
        let named = now
            .doc
            .as_deref()
            .map(|doc| self.state.named(source, doc))
            .unwrap_or_default();
        let mut targets: BTreeSet<Key> = named.clone();
        targets.extend(self.state.dependents(source).cloned());
        if let Some(before) = self.sent.get(source) {
            targets.extend(before.iter().cloned());
        }
        if let Some(subs) = self.subscribers.get(source) {
            targets.extend(
                subs.iter()
                    .filter(|(_, (_, on))| *on)
                    .map(|(t, _)| t.clone()),
            );
        }
        if named.is_empty() {
            self.sent.remove(source);
        } else {
            self.sent.insert(source.clone(), named);
        }
        targets
            .into_iter()
            .filter(|t| only.is_none_or(|f| f(t)))
            .map(|target| Derivation {
                target,
                source: source.clone(),
                version: now.version,
                doc: now.doc.clone(),
                force,
                repair: force,
            })
            .collect()
    }

    /// Applies a derivation to a target owned here: what it did, and the
    /// subscriptions it sends.
    pub(crate) fn derive(&mut self, d: &Derivation) -> (Effect, Vec<Out>) {
        let effect = self.state.derive(d);
        let version = self.state.own_version(&d.target);
        let outs = effect
            .subscriptions
            .iter()
            .map(|(entity, on)| {
                Out::Subscribe(Subscription {
                    entity: entity.clone(),
                    target: d.target.clone(),
                    version,
                    on: *on,
                })
            })
            .collect();
        (effect, outs)
    }

    /// Records a subscription to an entity owned here (now `now`); taking
    /// one up answers with the entity's document.
    pub(crate) fn subscribe(&mut self, s: &Subscription, now: &Source) -> Option<Derivation> {
        let subs = self.subscribers.entry(s.entity.clone()).or_default();
        if let Some((v, _)) = subs.get(&s.target) {
            if *v > s.version {
                return None;
            }
        }
        subs.insert(s.target.clone(), (s.version, s.on));
        s.on.then(|| Derivation {
            target: s.target.clone(),
            source: s.entity.clone(),
            version: now.version,
            doc: now.doc.clone(),
            // Asked for: the target applies it even at the version it holds.
            force: true,
            repair: false,
        })
    }

    /// Messages that check a target's members against their sources: each
    /// source that `remote` says lives elsewhere is asked for its document
    /// (sources here are checked by their own sweep).
    pub(crate) fn verify(&self, target: &Key, remote: &dyn Fn(&Key) -> bool) -> Vec<Out> {
        self.state
            .members_of(target)
            .into_iter()
            .filter(|(source, _)| remote(source))
            .map(|(source, _)| Out::Refresh {
                source,
                target: target.clone(),
            })
            .collect()
    }

    /// The subscriptions this origin's embed targets hold on entities that
    /// `only` accepts, taken up again (after their owner restarted).
    pub(crate) fn resubscribe(&self, only: &dyn Fn(&Key) -> bool) -> Vec<Out> {
        self.state
            .subscriptions()
            .filter(|(entity, _)| only(entity))
            .map(|(entity, target)| {
                Out::Subscribe(Subscription {
                    entity: entity.clone(),
                    target: target.clone(),
                    version: self.state.own_version(target),
                    on: true,
                })
            })
            .collect()
    }
}

/// The derivation that answers a refresh (the rolling regeneration's
/// check of a remote member): the source's current document, applied even
/// at the version the target holds.
pub(crate) fn refresh(source: &Key, target: &Key, now: &Source) -> Derivation {
    Derivation {
        target: target.clone(),
        source: source.clone(),
        version: now.version,
        doc: now.doc.clone(),
        force: true,
        repair: true,
    }
}
