//! What the model says about a write before and while the engine applies
//! it: views are read-only (a counter takes increments), an entity's key
//! shape, fields and references must fit its type, and every new version of
//! an entity is checked again inside its partition worker, where the result
//! of a merge patch or an increment is first known.

use std::collections::BTreeMap;
use std::sync::Arc;

use prefold_core::model::ViewKind;
use prefold_core::{Key, Violation};
use serde_json::Value;
use thiserror::Error;

use super::Views;
use crate::base::Op;
use crate::cluster::PeerError;
use crate::engine::{Check, Engine, EngineError};

/// Why the model refuses a write.
#[derive(Debug, Error)]
pub(crate) enum Refusal {
    /// Views are derived: only reads (and counter increments) reach them.
    #[error("`{view}` is a view; it is derived from the model's entities and cannot be written")]
    ReadOnlyView {
        /// The view.
        view: String,
        /// The methods it answers.
        allow: &'static str,
    },
    /// The body of an entity's `PUT` is not JSON.
    #[error("{0}")]
    Malformed(String),
    /// The document breaks its type, or names a reference that does not
    /// exist.
    #[error(transparent)]
    Violation(#[from] Violation),
    /// Looking a reference up failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The owner of a referenced key could not be asked.
    #[error(transparent)]
    Unreachable(#[from] PeerError),
}

impl Views {
    /// Whether `key` names a counter view (whose `POST` is an increment).
    pub(crate) fn is_counter(&self, key: &Key) -> bool {
        matches!(
            self.model.view(key.kind()).map(|v| &v.kind),
            Some(ViewKind::Counter(_))
        )
    }

    /// Whether `key` is a text view's query (`/o/{text_view}/_search`).
    pub(crate) fn is_search(&self, key: &Key) -> bool {
        key.routing_part() == "_search"
            && matches!(
                self.model.view(key.kind()).map(|v| &v.kind),
                Some(ViewKind::Text(_))
            )
    }

    /// Checks a write against the model before the engine sees it.
    /// References must exist when written (`ref:`; `weakref:` may dangle);
    /// they are checked here, before the write, because another partition
    /// (or origin) holds the referenced entity, so a delete racing this
    /// write can still leave a dangling reference, which views render as
    /// null. A reference another origin owns is asked of that origin, one
    /// call per origin for all the write's references there; when it
    /// cannot be reached the write is refused as unavailable (503, retry).
    pub(crate) async fn admit(&self, engine: &Engine, key: &Key, op: &Op) -> Result<(), Refusal> {
        let model = &self.model;
        if let Some(view) = model.view(key.kind()) {
            return Err(Refusal::ReadOnlyView {
                view: view.name.clone(),
                allow: if matches!(view.kind, ViewKind::Counter(_)) {
                    "GET, HEAD, POST"
                } else {
                    "GET, HEAD"
                },
            });
        }
        let Some(entity) = model.entity(key.kind()) else {
            return Ok(());
        };
        // The document, or the part of it a merge patch sets.
        let doc: Value = match op {
            Op::Put { body, .. } => {
                let doc: Value =
                    serde_json::from_slice(body).map_err(|e| Refusal::Malformed(e.to_string()))?;
                model.check(entity, key, &doc)?;
                doc
            }
            Op::Patch(patch) => patch.clone(),
            _ => return Ok(()),
        };
        let dangling = |field: String, target: &Key| -> Refusal {
            Violation::Dangling {
                entity: entity.name.clone(),
                field,
                target: target.to_string(),
            }
            .into()
        };
        let membership = &self.cluster.membership;
        let mut remote: BTreeMap<&str, Vec<(String, Key)>> = BTreeMap::new();
        for (field, target) in model.references(entity, &doc) {
            match membership.other_owner(&target) {
                Some(owner) => remote.entry(&owner.name).or_default().push((field, target)),
                None if engine.read(&target).await?.is_none() => {
                    return Err(dangling(field, &target))
                }
                None => {}
            }
        }
        for (owner, refs) in remote {
            let Some(origin) = membership.origin(owner) else {
                continue;
            };
            let keys: Vec<Key> = refs.iter().map(|(_, k)| k.clone()).collect();
            let exists = self.cluster.exists(origin, &keys).await?;
            if let Some(((field, target), _)) = refs.into_iter().zip(exists).find(|(_, e)| !e) {
                return Err(dangling(field, &target));
            }
        }
        Ok(())
    }

    /// The check the engine applies to every new version: an entity's
    /// fields must fit its type (other objects pass).
    pub(crate) fn entity_check(&self) -> Check {
        let model = self.model.clone();
        Arc::new(move |key, body| {
            let Some(entity) = model.entity(key.kind()) else {
                return Ok(());
            };
            let doc = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            model.check(entity, key, &doc).map_err(|v| v.to_string())
        })
    }
}
